r"""Toyota Smarthome (trimmed): PAAB / PAAT / baseline, the PAAB/PAAT paper's recipe.

Protocols: cs (31 classes), cv1, cv2 (19 classes); metric: mean class accuracy. 13 LCR-Net++
joints per person. Records: `python -m data_prep.build --dataset=smarthome --config=cs ...`
(see docs/data.md). Arguments and recipe: configs/adl_common.py.

  python -m pgvt_jax.main --config=configs/smarthome.py:paat,protocol=cv1 --workdir=/tmp/sh

Paper (Appendix B) vs the public config `configs/PAAB_SH_CS.yaml` of dominickrei/PoseAwareVT:
batch 32 here (the paper) where the public config has 64; 8 frames at rate 1/32 in both.
"""

from configs import adl_common


def get_config(arg=None):
  return adl_common.get_adl_config(arg, "smarthome")
