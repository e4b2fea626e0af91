"""Multi-view episodes for the alignment task: records -> in-memory episodes -> TCN batches.

Records (data_prep/datasets/multiview.py) hold one video per (episode, view), `video_id`
"<episode>/view_<k>". `load_episodes` regroups them, resizes frames to the model input
(S x S, keypoints scaled alike) and keeps them in memory (the synthetic world and the 3DTRL
datasets are small: 3 views x 40 frames x 64^2 x 3 bytes = 1.5 MB an episode).

A training batch is a pure function of (seed, step) (`sample_batch`), so a resumed run draws
exactly the batches an uninterrupted one draws without any iterator state in the checkpoint:

    frames     (B, 2, K, S, S, 3) uint8 (DeiT normalises on the device) two views, K times each
    pose       (B, 2, K, J, 2)    float32 model-input pixels
    pose_mask  (B, 2, K, J)       float32
    times      (B, K)             int32 sorted, distinct
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from pgvt_jax.models import deit


@dataclasses.dataclass
class Episode:
  """One episode: frames (V, T, S, S, 3) uint8, pose (V, T, J, 2), pose_mask (V, T, J)."""
  name: str
  frames: np.ndarray
  pose: np.ndarray
  pose_mask: np.ndarray

  @property
  def num_views(self) -> int:
    return self.frames.shape[0]

  @property
  def num_frames(self) -> int:
    return self.frames.shape[1]


def _resize(frames: np.ndarray, kp: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Squashes (T, H, W, 3) frames to (T, S, S, 3); keypoints scaled by (S/W, S/H)."""
  t, h, w, _ = frames.shape
  if (h, w) == (size, size):
    return frames, kp
  out = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR))
                  for f in frames])
  return out, kp * np.array([size / w, size / h], np.float32)


def load_episodes(builder_dir: str | Path, split: str, image_size: int,
                  num_joints: int) -> list[Episode]:
  """All episodes of `split`, views in index order (records -> memory)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from data_prep import records  # pylint: disable=g-import-not-at-top  # imports TFDS too
  builder = tfds.builder_from_directory(str(builder_dir))
  if split not in builder.info.splits:
    raise ValueError(f"{builder_dir} has no split {split!r} (splits: "
                     f"{sorted(builder.info.splits)})")
  src = builder.as_data_source(split)
  views: dict[str, dict[int, tuple]] = collections.defaultdict(dict)
  for i in range(len(src)):
    ex = records.decode_example(src[i])
    ep, _, view = ex["video_id"].rpartition("/view_")
    if not ep:
      raise ValueError(f"{builder_dir} [{split}]: video_id {ex['video_id']!r} is not "
                       "'<episode>/view_<k>' (build it with data_prep.datasets.multiview)")
    kp, score = ex["keypoints"], ex["keypoint_score"]          # (T, M, J, 2), (T, M, J)
    t = len(ex["frames"])
    if kp.shape[1] == 0:
      kp, score = np.zeros((t, 1, num_joints, 2), np.float32), np.zeros((t, 1, num_joints))
    if kp.shape[2] != num_joints:
      raise ValueError(f"{builder_dir}: {ex['video_id']} has {kp.shape[2]} keypoints per "
                       f"frame, config.model.joints_per_person is {num_joints}")
    frames, kp0 = _resize(ex["frames"], kp[:, 0], image_size)
    views[ep][int(view)] = (frames, kp0.astype(np.float32), (score[:, 0] > 0).astype(np.float32))
  episodes = []
  for ep in sorted(views):
    vs = [views[ep][k] for k in sorted(views[ep])]
    lengths = {len(v[0]) for v in vs}
    if len(vs) < 2 or len(lengths) != 1:
      raise ValueError(f"{builder_dir} [{split}] episode {ep!r}: needs >= 2 synchronised views "
                       f"of equal length, got {len(vs)} views of lengths {sorted(lengths)}")
    episodes.append(Episode(ep, *(np.stack([v[i] for v in vs]) for i in range(3))))
  if not episodes:
    raise ValueError(f"{builder_dir} [{split}] holds no episodes")
  return episodes


MEAN = np.array(deit.IMAGENET_MEAN, np.float32)
STD = np.array(deit.IMAGENET_STD, np.float32)


def normalize(frames: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) -> float32 (x / 255 - mean) / std (ImageNet, as 3DTRL/DeiT): on the host,
  for the raw-pixel baseline; the model's batches stay uint8 (DeiT normalises them)."""
  return (frames.astype(np.float32) / 255.0 - MEAN) / STD


def sample_batch(episodes: list[Episode], *, seed: int, step: int, batch_size: int,
                 frames_per_sample: int) -> dict[str, np.ndarray]:
  """B samples: a random episode, two distinct random views, K distinct sorted frame times."""
  rng = np.random.default_rng((seed, step))
  k = frames_per_sample
  out = collections.defaultdict(list)
  for _ in range(batch_size):
    ep = episodes[rng.integers(len(episodes))]
    if ep.num_frames < k:
      raise ValueError(f"episode {ep.name} has {ep.num_frames} frames < "
                       f"frames_per_sample={k}")
    views = rng.choice(ep.num_views, 2, replace=False)
    times = np.sort(rng.choice(ep.num_frames, k, replace=False))
    idx = np.ix_(views, times)
    out["frames"].append(ep.frames[idx])
    out["pose"].append(ep.pose[idx])
    out["pose_mask"].append(ep.pose_mask[idx])
    out["times"].append(times.astype(np.int32))
  return {key: np.stack(v) for key, v in out.items()}
