r"""Diving48 (V2, 48 classes): PGVT and baselines on a frozen CLIP ViT, 48 pose + 16 video frames.

Arguments (after the file name, comma-separated): a backbone (vit_b16 default, vit_l14, tiny),
variant=<pgvt|video_only|pose_only|late_fusion|pgvt_no_temporal|pgvt_two_adapters|
pgvt_no_refined_pose|pgvt_no_refined_video>, pose_format=<coords|heatmap|heatmap_rgb>,
val=<percent>: select the best checkpoint on the last <percent>% of train (Diving48 has no
validation split) and measure the final and best checkpoints on test at the end; runlocal.

Parameters and GFLOPs per view (no weights needed):
  python -m pgvt_jax.tools.model_stats --config=configs/diving48.py
  python -m pgvt_jax.tools.model_stats --config=configs/diving48.py:vit_l14 --json
  python -m pgvt_jax.tools.model_stats --config=configs/diving48.py \
      --config.model.variant=video_only --config.model.video_frames=32
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, backbone="vit_b16", variant="pgvt", pose_format="coords",
                         lr_recipe="aim", val=0, runlocal=False)
  return common.get_base_config(arg, dataset="diving48", num_classes=48, pose_frames=48,
                                video_frames=16)
