r"""Demo: tiny PGVT on the built-in synthetic pose-action dataset; minutes on a laptop CPU.

    python -m pgvt_jax.main --config=configs/demo.py --workdir=/tmp/demo

The synthetic clips (a stick figure whose classes differ only in the order and direction of
limb rotations) are generated into `synthetic_data.data_dir` on first use. The backbone is a
tiny randomly initialised ViT (no CLIP weights exist at this size), so the demo shows the whole
pipeline (records -> grain -> sharded jit steps -> orbax checkpoints -> multi-view eval) rather
than transfer learning. Arguments: `configs/demo.py:video_only` etc. picks another variant.
"""

import ml_collections

from pgvt_jax.experiment import trainer_config
from pgvt_jax.models.config import model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "pgvt"
  c = trainer_config()
  c.seed = 0

  c.synthetic_data = ml_collections.ConfigDict(dict(
      enabled=True, data_dir="~/.cache/pgvt_jax/synthetic", num_train=640, num_test=96,
      num_classes=6, class_set="coarse", num_frames=32, image_size=64, seed=0))

  c.data.num_frames = 8           # T_l
  c.data.pose_frames = 16         # T_h = 2 * T_l
  c.data.image_size = 32
  c.data.short_side = 32
  c.data.crop_area = (1.0, 1.0)   # the generator already varies position, scale and lean
  c.data.crop_aspect = (1.0, 1.0)
  c.data.flip = False             # a flip turns one synthetic class into another
  c.data.eval_clips, c.data.eval_crops = 1, 1
  c.data.train_batch_size = 16
  c.data.eval_batch_size = 16
  c.data.num_workers = 0
  c.data.num_threads = 2

  c.model = model_config(
      variant=variant, backbone="Ti/8", image_size=32, video_frames=8, pose_frames=16,
      num_classes=6, joints_per_person=17, num_persons=1, drop_path=0.0, dropout=0.0)

  c.optim.lr = 2e-3
  c.optim.warmup_epochs = 1.0
  c.optim.weight_decay = 0.01
  c.optim.grad_clip_norm = 1.0
  c.num_epochs = 15               # 40 steps per epoch at batch 16
  c.log_every = 10
  c.eval_every = 100
  c.checkpoint_every = 100
  return c
