"""Multi-view episodes (one record per episode and view) and the synthetic multi-view world.

Records use the shared schema (data_prep/records.py): `video_id` = "<episode>/view_<k>",
`label` = the view index k (class names view_0..view_{V-1}), keypoints (T, 1, J, 2) of the arm
in stored-frame pixels. `pgvt_jax.alignment_data` regroups the views of each episode.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

import numpy as np

from data_prep import builder as builder_lib
from data_prep import multiview
from data_prep import poses as poses_lib
from data_prep import video as video_lib

SPLITS = ("train", "validation", "test")
_VIEW_FILE = re.compile(r"^view_(\d+)\.(mp4|avi|mkv|webm|mov|m4v)$")


def _pose_from_json(path: str) -> poses_lib.PoseSequence:
  try:
    kp, score, size = multiview.read_keypoints(path)
  except ValueError as e:
    raise poses_lib.PoseFormatError(str(e)) from None
  return poses_lib.PoseSequence(kp[None], score[None], size, path)


class MultiViewEpisodes(builder_lib.VideoPoseBuilder):
  """Synchronised multi-view videos with per-view arm keypoints (see data_prep/multiview.py)."""

  name = "multiview_episodes"
  BUILDER_CONFIGS = [
      builder_lib.DatasetConfig(name=f"arm{j}", joint_layout=f"arm{j}", num_classes=4,
                                description=f"{j} keypoints per frame (base .. tip)")
      for j in (3, 4, 5)
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  manual_dir/<split>/<episode>/view_<k>.mp4 + view_<k>_keypoints.json, split in
  train | validation | test; every episode has the same views k = 0..V-1 (V <= 4),
  videos of one episode synchronised (same frame count). Keypoint JSON:
  {"width": W, "height": H, "keypoints": [[[x, y] or null, ...J], ...T]} in pixels
  of a W x H image (the video's own size when it was rendered at that size).
  """

  def _read_dataset(self, manual_dir):
    names = [f"view_{k}" for k in range(4)]
    splits = {}
    for split in SPLITS:
      root = os.path.join(manual_dir, split)
      if not os.path.isdir(root):
        continue
      items = []
      for ep in sorted(os.listdir(root)):
        folder = os.path.join(root, ep)
        if not os.path.isdir(folder):
          continue
        views = sorted((int(m.group(1)), f) for f in os.listdir(folder)
                       if (m := _VIEW_FILE.match(f)))
        if len(views) < 2:
          items.append(builder_lib.VideoItem(ep, 0, None, error=(
              f"{folder}: an episode needs >= 2 view_<k>.mp4 files, found {len(views)}")))
          continue
        for k, fname in views:
          kp_path = os.path.join(folder, f"view_{k}_keypoints.json")
          pose = functools.partial(_pose_from_json, kp_path) if os.path.isfile(kp_path) else None
          items.append(builder_lib.VideoItem(f"{ep}/view_{k}", k, os.path.join(folder, fname),
                                             pose=pose))
      splits[split] = items
    if not splits:
      raise FileNotFoundError(f"no {'/'.join(SPLITS)} folders in {manual_dir} (see "
                              "MultiViewEpisodes.MANUAL_DOWNLOAD_INSTRUCTIONS)")
    return names, splits


@dataclasses.dataclass(eq=False)
class WorldDatasetConfig(builder_lib.DatasetConfig):
  """Episode counts and the world's parameters (data_prep.multiview.WorldConfig)."""
  num_train: int = 24
  num_test: int = 8
  num_views: int = 3
  num_links: int = 3
  num_frames: int = 40
  image_size: int = 64
  seed: int = 0
  background: str = "shared"

  @classmethod
  def make(cls, **kw) -> "WorldDatasetConfig":
    c = cls(name="tmp", **kw)
    name = (f"v{c.num_views}_l{c.num_links}_n{c.num_train}-{c.num_test}_t{c.num_frames}"
            f"_s{c.image_size}_seed{c.seed}")
    if c.background != "shared":
      name += "_bg_" + c.background
    return dataclasses.replace(c, name=name, joint_layout=f"arm{c.num_links + 1}",
                               num_classes=c.num_views,
                               description="synthetic multi-view robot arm")

  def world(self) -> multiview.WorldConfig:
    return multiview.WorldConfig(num_views=self.num_views, num_links=self.num_links,
                                 num_frames=self.num_frames, image_size=self.image_size,
                                 seed=self.seed, background=self.background)


class SyntheticMultiView(builder_lib.VideoPoseBuilder):
  """The built-in synthetic multi-view world (data_prep/multiview.py) as records."""

  name = "synthetic_multiview"
  BUILDER_CONFIGS = [WorldDatasetConfig.make()]

  def _info(self):
    info = super()._info()
    cfg = self.builder_config
    info.metadata.update(horizontal_flip_safe=False, world=dataclasses.asdict(cfg.world()))
    return info

  def _read_dataset(self, manual_dir):
    cfg = self.builder_config
    world = cfg.world()
    splits = {}
    for split_id, (split, n) in enumerate((("train", cfg.num_train), ("test", cfg.num_test))):
      items = []
      for i in range(n):
        ep = _Episode(world, (cfg.seed, split_id, i))
        for k in range(cfg.num_views):
          items.append(builder_lib.VideoItem(
              f"{split}_{i:05d}/view_{k}", k, None, frames=functools.partial(ep.frames, k),
              pose=functools.partial(ep.pose, k)))
      splits[split] = items
    return [f"view_{k}" for k in range(cfg.num_views)], splits


class _Episode:
  """Renders an episode's views on first use (all views at once: they share the motion)."""

  def __init__(self, world: multiview.WorldConfig, seed):
    self._world, self._seed, self._data = world, seed, None

  def _get(self):
    if self._data is None:
      frames, kps, _ = multiview.render_episode(self._world, self._seed)
      self._data = frames, kps
    return self._data

  def frames(self, k: int) -> video_lib.DecodedVideo:
    frames = self._get()[0][k]
    t, w = len(frames), self._world
    return video_lib.DecodedVideo(frames=frames, frame_indices=np.arange(t, dtype=np.int32),
                                  fps=w.fps, source_fps=w.fps, num_source_frames=t,
                                  original_size=(w.image_size, w.image_size))

  def pose(self, k: int) -> poses_lib.PoseSequence:
    kps = self._get()[1][k]
    s = self._world.image_size
    return poses_lib.PoseSequence(kps[None], np.ones((1,) + kps.shape[:2], np.float32),
                                  (s, s), "synthetic multiview")


def build_synthetic(data_dir: str, num_workers: int = 1, progress: bool = False, **world
                    ) -> str:
  """Builds (or reuses) the synthetic multi-view records; returns the dataset directory."""
  config = WorldDatasetConfig.make(**world)
  if config.name in SyntheticMultiView.builder_configs:
    config = config.name  # TFDS refuses a new object named like a built-in.
  b = SyntheticMultiView(data_dir=data_dir, config=config, options=builder_lib.BuildOptions(
      short_side=None, num_workers=num_workers, progress=progress, jpeg_quality=95))
  b.download_and_prepare()
  return str(b.data_dir)
