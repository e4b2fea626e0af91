r"""FineGym Gym99 (99 classes): PGVT on a frozen CLIP ViT, 48 pose + 16 video frames (Table 2).

Arguments as in configs/diving48.py (backbone, variant=..., pose_format=..., runlocal).

Parameters and GFLOPs per view:
  python -m pgvt_jax.tools.model_stats --config=configs/gym99.py
  python -m pgvt_jax.tools.model_stats --config=configs/gym99.py:vit_l14 --json
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, backbone="vit_b16", variant="pgvt", pose_format="coords",
                         lr_recipe="aim", runlocal=False)
  return common.get_base_config(arg, dataset="gym99", num_classes=99, pose_frames=48,
                                video_frames=16)
