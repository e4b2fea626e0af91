r"""Kinetics-400 (400 classes): PGVT on a frozen CLIP ViT, 32 pose + 32 video frames (Table 3).

Arguments as in configs/diving48.py (backbone, variant=..., pose_format=..., runlocal), plus
persons=<n>: persons per frame, J = 17 * n joints. Default 1: the paper's K400 GFLOPs (850 for
B/16, 3832 for L/14) are only approached with J = 17 (see docs/models.md).

Parameters and GFLOPs per view:
  python -m pgvt_jax.tools.model_stats --config=configs/k400.py
  python -m pgvt_jax.tools.model_stats --config=configs/k400.py:vit_l14,persons=2 --json
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, backbone="vit_b16", variant="pgvt", pose_format="coords",
                         lr_recipe="aim", persons=1, runlocal=False)
  return common.get_base_config(arg, dataset="k400", num_classes=400, pose_frames=32,
                                video_frames=32, num_persons=arg.persons, eval_clips=3,
                                eval_crops=1, num_epochs=30,  # AIM's K400 recipe
                                eval_sampling="dense")
