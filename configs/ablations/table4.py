r"""PGVT Table 4 (effectiveness of components, Diving48, ViT-B/16), one row per argument.

  row=1    pose only, 48 pose frames (AIM on pose tokens)
  row=2i   video only, 16 frames (AIM)            row=2ii  video only, 32 frames (AIM)
  row=3    late fusion, 48 + 16, two-stage        row=4    PGVT w/o T (Pose Temporal Attention)
  row=5    R-Adapter -> 2 Adapters                row=6i   PGVT w/o refined pose
  row=6ii  PGVT w/o refined video                 row=7    PGVT (default)

Other arguments as in configs/diving48.py (backbone, pose_format, runlocal).

Row 3 is trained as the paper does, in two stages: rows 1 and 2i first, then the fused model
starts from their final checkpoints (pgvt_jax/init_from.py) and is fine-tuned:

  python -m pgvt_jax.main --config=configs/ablations/table4.py:row=1  --workdir=runs/t4_row1
  python -m pgvt_jax.main --config=configs/ablations/table4.py:row=2i --workdir=runs/t4_row2i
  python -m pgvt_jax.main --config=configs/ablations/table4.py:row=3  --workdir=runs/t4_row3
  (other workdirs: --config.init_from.pose=... --config.init_from.video=...; both "" trains
  the fused model from scratch)

  python -m pgvt_jax.tools.model_stats --config=configs/ablations/table4.py:row=5
  python -m pgvt_jax.tools.paper_tables   # every row next to the paper's figures
"""

from configs import common

ROWS = {
    "1": dict(variant="pose_only"),
    "2i": dict(variant="video_only", video_frames=16),
    "2ii": dict(variant="video_only", video_frames=32),
    "3": dict(variant="late_fusion"),
    "4": dict(variant="pgvt_no_temporal"),
    "5": dict(variant="pgvt_two_adapters"),
    "6i": dict(variant="pgvt_no_refined_pose"),
    "6ii": dict(variant="pgvt_no_refined_video"),
    "7": dict(variant="pgvt"),
}


def get_config(arg=None):
  arg = common.parse_arg(arg, row="7", backbone="vit_b16", pose_format="coords",
                         lr_recipe="aim", runlocal=False)
  if arg.row not in ROWS:
    raise ValueError(f"config argument row={arg.row!r}; expected one of {list(ROWS)}")
  row = dict(ROWS[arg.row])
  arg.variant = row.pop("variant")
  config = common.get_base_config(arg, dataset="diving48", num_classes=48, pose_frames=48,
                                  video_frames=16)
  if not arg.runlocal:
    config.model.update(row)
    if arg.row == "3":  # two-stage: start from the trained row-1 and row-2i streams
      config.init_from.pose = "runs/t4_row1"
      config.init_from.video = "runs/t4_row2i"
  return config
