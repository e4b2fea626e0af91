"""Tiny trained runs shared by the predict and visualize tests (trained once per session).

`tiny_config` learns three coarse synthetic classes (which limbs rotate) in ~150 steps: a
pose-only model reading PoseC3D-style joint heatmaps (its conv patch embedding gets a strong
signal from the start; the coordinate MLP of the demo needs several hundred steps to leave its
plateau on a random backbone).
"""

from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np
import pytest

NUM_CLASSES = 3


def tiny_config(data_dir: str, variant: str = "pose_only", *, steps: int = 150,
                pose_format: str = "heatmap") -> ml_collections.ConfigDict:
  from pgvt_jax.experiment import trainer_config  # pylint: disable=g-import-not-at-top
  from pgvt_jax.models.config import model_config  # pylint: disable=g-import-not-at-top
  c = trainer_config()
  c.synthetic_data = ml_collections.ConfigDict(dict(
      enabled=True, data_dir=data_dir, num_train=192, num_test=24, num_classes=NUM_CLASSES,
      class_set="coarse", num_frames=16, image_size=32, seed=0))
  c.model = model_config(
      variant=variant, backbone="Ti/8", image_size=32, video_frames=4, pose_frames=8,
      num_classes=NUM_CLASSES, joints_per_person=17, num_persons=1, drop_path=0.0, dropout=0.0,
      pose_format=pose_format, heatmap_size=32, heatmap_patch_size=8)
  d = c.data
  d.num_frames, d.pose_frames, d.image_size, d.short_side = 4, 8, 32, 0
  d.pose_format, d.heatmap_size = pose_format, 32
  d.crop_area, d.crop_aspect, d.flip = (1.0, 1.0), (1.0, 1.0), False
  d.eval_clips, d.eval_crops = 1, 1
  d.train_batch_size, d.eval_batch_size = 16, 24
  d.num_workers, d.num_threads = 0, 0
  c.optim.lr = 3e-3
  c.optim.warmup_epochs = 0.5
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 1.0
  c.total_steps = steps
  c.log_every = 50
  c.eval_every = 0
  c.checkpoint_every = steps
  c.async_checkpoints = False
  return c


def train_run(config, workdir: Path, evaluate: bool = True) -> dict:
  from pgvt_jax import train  # pylint: disable=g-import-not-at-top
  return train.train_and_evaluate(config, str(workdir), run_evals=evaluate)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synthetic_dir):
  """(workdir, final eval metrics) of the pose-only heatmap model."""
  workdir = tmp_path_factory.mktemp("run_pose_only")
  metrics = train_run(tiny_config(synthetic_dir), workdir)
  return workdir, metrics


@pytest.fixture(scope="session")
def short_runs(tmp_path_factory, synthetic_dir):
  """{variant: workdir} of 2-step video_only and pgvt (coords) runs: pose-free prediction and
  the Fig. 2 rows (their numbers do not matter, only that the paths run)."""
  out = {}
  for variant in ("video_only", "pgvt"):
    workdir = tmp_path_factory.mktemp(f"run_{variant}")
    train_run(tiny_config(synthetic_dir, variant, steps=2, pose_format="coords"), workdir,
              evaluate=False)
    out[variant] = workdir
  return out


@pytest.fixture(scope="session")
def pose_aware_runs(tmp_path_factory, synthetic_dir):
  """{name: workdir} of 2-step video runs of the other families and of PAAB, for their
  figures: "timesformer" (the TimeSformer family) and "paab" (CLIP video model with a PAAB
  after block 2, which reads keypoints at inference)."""
  out = {}
  for name, model in (("timesformer", dict(family="timesformer")),
                      ("paab", dict(paab_layers=(2,)))):
    workdir = tmp_path_factory.mktemp(f"run_{name}")
    config = tiny_config(synthetic_dir, "video_only", steps=2, pose_format="coords")
    config.model.update(model)
    config.freeze_backbone = name != "timesformer"  # the TimeSformer family fine-tunes all
    train_run(config, workdir, evaluate=False)
    out[name] = workdir
  return out


def render_mp4(path: Path, label: int, seed: int) -> np.ndarray:
  """A fresh synthetic clip of class `label` written to `path`; returns its keypoints (T, 17, 2)."""
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  from data_prep import video as video_lib  # pylint: disable=g-import-not-at-top
  label_def = synthetic.class_definitions(NUM_CLASSES, "coarse")[label]
  clip, keypoints = synthetic.render_clip(label_def, (12345, seed), num_frames=16, size=32)
  video_lib.write_video(path, clip.frames, fps=16)
  return keypoints
