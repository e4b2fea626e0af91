"""The built-in demo datasets (the worlds: `data_prep.worlds`) as a TFDS builder.

  path = build("/tmp/pgvt_data", num_train=256, num_test=64, num_classes=8)
  src = tfds.builder_from_directory(path).as_data_source("train")
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from data_prep import builder as builder_lib
from data_prep import poses as poses_lib
from data_prep import worlds

_SPLIT_SEEDS = {"train": 0, "test": 1}


@dataclasses.dataclass(eq=False)
class SyntheticConfig(builder_lib.DatasetConfig):
  """Clip counts, classes, seed and clip shape of one synthetic dataset."""
  num_train: int = 256
  num_test: int = 64
  seed: int = 0
  num_frames: int = 32
  image_size: int = 128
  class_set: str = "fine"

  @classmethod
  def make(cls, num_train: int, num_test: int, num_classes: int, seed: int,
           num_frames: int, image_size: int,
           class_set: str = "fine") -> "SyntheticConfig":
    """A config named after its parameters (one directory per dataset)."""
    name = (f"c{num_classes}_n{num_train}-{num_test}_t{num_frames}"
            f"_s{image_size}_seed{seed}")
    if class_set != "fine":  # keeps the names of existing fine datasets
      name += f"_{class_set}"
    return cls(name=name, joint_layout="coco17", num_classes=num_classes,
               num_train=num_train, num_test=num_test, seed=seed,
               num_frames=num_frames, image_size=image_size,
               class_set=class_set,
               description="synthetic COCO-17 stick-figure actions")


class SyntheticPoseActions(builder_lib.VideoPoseBuilder):
  """Stick-figure actions that differ only in motion (pgvt_jax's demo data)."""

  name = "synthetic_pose_actions"
  BUILDER_CONFIGS = [SyntheticConfig.make(256, 64, 8, 0, 32, 128)]

  def _info(self):
    info = super()._info()
    cfg = self.builder_config
    info.metadata.update(
        horizontal_flip_safe=False,  # A flip turns one class into another.
        generator=dict(num_train=cfg.num_train, num_test=cfg.num_test,
                       seed=cfg.seed, num_frames=cfg.num_frames,
                       image_size=cfg.image_size, class_set=cfg.class_set))
    return info

  def _read_dataset(self, manual_dir):
    cfg = self.builder_config
    # Clip i is cell i % len(cells): one cell per class except in "interaction" (2 each).
    cells = worlds.cells(cfg.num_classes, cfg.class_set)
    splits = {}
    for split, n in (("train", cfg.num_train), ("test", cfg.num_test)):
      items = []
      for i in range(n):
        cell = cells[i % len(cells)]
        seed = (cfg.seed, _SPLIT_SEEDS[split], i)
        clip = _Clip(functools.partial(cell.render, seed, cfg.num_frames, cfg.image_size),
                     cfg.image_size)
        items.append(builder_lib.VideoItem(
            f"{split}_{i:06d}", cell.label, None, frames=clip.frames,
            pose=clip.pose))
      splits[split] = items
    return worlds.class_names(cfg.num_classes, cfg.class_set), splits


def build(data_dir: str, num_train: int = 256, num_test: int = 64,
          num_classes: int = 8, seed: int = 0, num_frames: int = 32,
          image_size: int = 128, num_workers: int = 2,
          progress: bool = False, class_set: str = "fine") -> str:
  """Builds (or reuses) the synthetic records under `data_dir`.

  Returns:
    The dataset directory, for `tfds.builder_from_directory(path)`.
  """
  config = SyntheticConfig.make(
      num_train=num_train, num_test=num_test, num_classes=num_classes,
      seed=seed, num_frames=num_frames, image_size=image_size,
      class_set=class_set)
  if config.name in SyntheticPoseActions.builder_configs:
    config = config.name  # TFDS refuses a new object named like a built-in.
  b = SyntheticPoseActions(
      data_dir=data_dir, config=config,
      options=builder_lib.BuildOptions(short_side=None, num_workers=num_workers,
                                       progress=progress))
  b.download_and_prepare()
  return str(b.data_dir)


class _Clip:
  """Renders a clip once: `frames()` returns the video and keeps only the
  (small) keypoints for the `pose()` call that follows."""

  def __init__(self, render, size: int):
    self._render, self._size, self._kps = render, size, None

  def frames(self):
    video, self._kps = self._render()
    return video

  def pose(self) -> poses_lib.PoseSequence:
    kps = self._kps if self._kps is not None else self._render()[1]
    self._kps = None
    return poses_lib.PoseSequence(
        keypoint=kps[None], score=np.ones((1,) + kps.shape[:2], np.float32),
        image_size=(self._size, self._size), source="synthetic")
