r"""Demo: PAAB / PAAT vs the baseline (PAAB/PAAT paper Tables 1, 2) on a built-in world where
pose-aware attention has something to find; minutes on a CPU.

    python -m pgvt_jax.main --config=configs/demo_paab.py:paab --workdir=/tmp/demo_paab

The world (class set "held_ball", data_prep/clutter.py): 4 classes = the colour of the ball
the person holds (red, blue, green, yellow). Every frame also shows a second, unlabelled
figure of the same kind holding a ball of a random colour, and the keypoints are the
person's only. The keypoints alone carry no colour (chance, 0.25); the frames alone show both
balls but not whose is whose (at most 1/4 + 3/4 / 2 = 0.625, `clutter.ceilings`); reading the
frames where the keypoints are can reach 1.

The model is the AIM video stream (`variant="video_only"`) on the demo's tiny random frozen
CLIP Ti/8 (2 blocks, 32 px, 4 frames) with configs/demo.py's recipe (batch 16, AdamW 5e-3).
The keypoints never reach the classifier: they only make PAAB's pose maps (P^2D) and PAAT's
targets (P^3D). Rows (one bare-word argument, the paper's positions):

  baseline     AIM video_only, no PAAB/PAAT
  paab         + one PA-SA PAAB after the last block (2; Table 1a: "near the end")
  paat         + the PAAT head after block 1 (Table 1a: "at the beginning"), P^3D targets,
               loss weight lambda = 1.6 (Eq. 8, the paper's value)
  paab_paat    both (the paper's Sec. "Combining PAAB and PAAT": PAAB after the last block, PAAT
               after block 1, lambda 1.6)
  random_maps  paab with Table 2's random pose maps (`model.pose_map_random`: every keypoint
               at a uniform random pixel, so the maps no longer say where the person is)

`--config.seed=N` changes the model init and data order (the clips are fixed by
synthetic_data.seed). Measured (seeds 0-2, final top-1, 384 test clips, ~1 min per run on 2
CPU cores): baseline 0.52, paab 0.94, paat 0.52, paab_paat 0.95, random_maps 0.52; on new
clips (`--config.synthetic_data.seed=1`) 0.57 / 0.96 / 0.56 / 0.96 / 0.54. docs/models.md
"Demo: pose-aware attention" holds the table and its reading:

    for row in baseline paab paat paab_paat random_maps; do for s in 0 1 2; do
      python -m pgvt_jax.main --config=configs/demo_paab.py:$row \
          --workdir=/tmp/demo_paab/${row}_s$s --config.seed=$s
    done; done   # <workdir>/final_metrics.json: "eval/top1"
"""

import ml_collections

from configs import demo

ROWS = ("baseline", "paab", "paat", "paab_paat", "random_maps")
NUM_CLASSES = 4          # ball colours (data_prep.clutter.COLOURS)
PAAT_WEIGHT = 1.6        # lambda of Eq. 8 (the paper's)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  row = arg or "baseline"
  if row not in ROWS:
    raise ValueError(f"configs/demo_paab.py:{arg}: expected one of {', '.join(ROWS)}")
  c = demo.get_config("video_only")
  c.synthetic_data.update(class_set="held_ball", num_classes=NUM_CLASSES, num_train=768,
                          num_test=384, data_dir="~/.cache/pgvt_jax/synthetic")
  c.model.num_classes = NUM_CLASSES
  last = 2  # Ti/8 test size: 2 blocks
  if row in ("paab", "paab_paat", "random_maps"):
    c.model.paab_layers = (last,)
  if row in ("paat", "paab_paat"):
    c.model.paat_layer = 1
    c.aux_losses.paat = PAAT_WEIGHT
  c.model.pose_map_random = row == "random_maps"
  c.num_epochs = 10      # 48 steps per epoch at batch 16: 480 steps, as configs/demo.py
  return c
