r"""Toyota Smarthome (trimmed): PAAB / PAAT / baseline, the PAAB/PAAT paper's recipe.

Protocols: cs (31 classes), cv1, cv2 (19 classes); metric: mean class accuracy. 13 LCR-Net++
joints per person. Records: `python -m data_prep.build --dataset=smarthome --config=cs ...`
(see docs/data.md). Arguments and recipe: configs/adl_common.py.

  python -m pgvt_jax.main --config=configs/smarthome.py:paat,protocol=cv1 --workdir=/tmp/sh

Paper (Appendix B) vs the public configs `configs/PAA{B,T}_SH_CS.yaml` of dominickrei/PoseAwareVT
(the public run): batch 32 here (the paper) where they have 64; PAAB after block 12 here, after
block 1 there (POSE_BLOCK_POS [1]); 8 frames at rate 1/32 in both. `:public` takes theirs (and
the code-level differences, configs/adl_common.py PUBLIC):

  python -m pgvt_jax.main --config=configs/smarthome.py:paab,public --workdir=/tmp/sh_public
"""

from configs import adl_common


def get_config(arg=None):
  return adl_common.get_adl_config(arg, "smarthome")
