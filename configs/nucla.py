r"""Northwestern-UCLA Multiview Action 3D (10 classes): PAAB / PAAT / baseline.

Protocols: cs, cv1, cv2, cv3 (cvN: train on the two other views, test on view N); the paper
reports CS, CV3 and the average of cv1..cv3 (three runs). 18 OpenPose joints. Records:
`python -m data_prep.build --dataset=nucla --config=cv3 ...` (see docs/data.md). Arguments
and recipe: configs/adl_common.py.

  python -m pgvt_jax.main --config=configs/nucla.py:paat,protocol=cv3 --workdir=/tmp/nucla

Paper (Appendix B) vs the public PoseAwareVT configs: 8 frames here (the paper) where the
public configs say 16 for NTU and NUCLA (a comment of the Smarthome yaml; there is no N-UCLA
config file); rate 1/4 and batch 64 in both. `:public` takes 16 frames and the public code's
other settings (configs/adl_common.py PUBLIC).
"""

from configs import adl_common


def get_config(arg=None):
  return adl_common.get_adl_config(arg, "nucla")
