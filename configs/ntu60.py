r"""NTU RGB+D 60 with the cross-view-subject protocols: PAAB / PAAT / baseline.

Protocols: cvs1, cvs2, cvs3 (Varol et al.: train on the 0 degree view of the cross-subject
training split, test on the 0 / 45 / 90 degree views of its test split; the paper's), xsub,
xview (standard). 25 Kinect joints in RGB pixel coordinates. Records: `python -m
data_prep.build --dataset=ntu60 --config=cvs ...` (see docs/data.md). Arguments and recipe:
configs/adl_common.py.

  python -m pgvt_jax.main --config=configs/ntu60.py:paab,protocol=cvs3 --workdir=/tmp/ntu

Paper (Appendix B) and the public PoseAwareVT configs agree: 16 frames at rate 1/4, batch 64
(there is no NTU config file; the Smarthome yaml's comments give "16 for NTU", rate 4).
`:public` takes the public code's other settings (configs/adl_common.py PUBLIC).
"""

from configs import adl_common


def get_config(arg=None):
  return adl_common.get_adl_config(arg, "ntu60")
