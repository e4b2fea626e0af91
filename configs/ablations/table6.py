r"""PGVT Table 6 (pose input forms, Diving48, ViT-B/16 pose-only model with 48 pose frames).

  form=coords    2D joint coordinates through a trainable MLP (default)
  form=heatmap   PoseC3D-style 112x112 per-joint heatmaps, patchified by a trainable
                 16x16 conv embedding (7x7 patches + CLS per frame)
  form=heatmap_rgb  the same heatmaps drawn as one RGB image per frame and patchified by
                 CLIP's frozen conv1 (no trainable projection): the reading that fits the
                 paper's 11M tunable params / 311 GFLOPs

Other arguments as in configs/diving48.py (backbone, variant, runlocal).

  python -m pgvt_jax.tools.model_stats --config=configs/ablations/table6.py:form=heatmap
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, form="coords", backbone="vit_b16", variant="pose_only",
                         runlocal=False)
  arg.pose_format = arg.form
  return common.get_base_config(arg, dataset="diving48", num_classes=48, pose_frames=48,
                                video_frames=16)
