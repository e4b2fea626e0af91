"""Tiny dataset files in the published layouts, written by the data_prep tests.

Every fixture video shows one white dot on black that moves right by `STEP`
pixels a frame; its pose file puts every joint of person 0 on the dot, so a
test can check that stored keypoints land on the dot in the stored frames.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from data_prep import video as video_lib

REALDATA = (Path(__file__).resolve().parents[1] / "../shared/realdata").resolve()
H, W = 96, 128          # Source videos (even sizes for yuv420p).
STEP, X0, Y0, R = 3, 12.0, 40.0, 6


def realdata(name: str) -> Path:
  path = REALDATA / name
  if not path.exists():
    pytest.skip(f"{path} not available")
  return path


def dot_xy(t: np.ndarray | int) -> np.ndarray:
  """(..., 2) dot centre (x, y) in source pixels at frame t."""
  t = np.asarray(t, np.float32)
  return np.stack([X0 + STEP * t, np.full_like(t, Y0)], -1)


def dot_frames(num_frames: int, h: int = H, w: int = W) -> np.ndarray:
  """(T, h, w, 3) uint8 frames of the moving dot."""
  yy, xx = np.mgrid[0:h, 0:w] + 0.5  # Pixel centres.
  frames = np.zeros((num_frames, h, w, 3), np.uint8)
  for t in range(num_frames):
    x, y = dot_xy(t)
    frames[t][(xx - x) ** 2 + (yy - y) ** 2 <= R * R] = 255
  return frames


def write_dot_video(path: str | os.PathLike, num_frames: int,
                    fps: float = 25.0, h: int = H, w: int = W) -> str:
  """An H.264 (.mp4) or MPEG-4 part 2 (.avi) video of the moving dot."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  codec = "mpeg4" if os.fspath(path).endswith(".avi") else "libx264"
  video_lib.write_video(path, dot_frames(num_frames, h, w), fps=fps,
                        codec=codec)
  return os.fspath(path)


def dot_keypoints(num_frames: int, num_joints: int = 17,
                  persons: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """(M, T, V, 2) keypoints on the dot (extra persons at x+40), scores 0.9."""
  kp = np.zeros((persons, num_frames, num_joints, 2), np.float32)
  for m in range(persons):
    kp[m] = dot_xy(np.arange(num_frames))[:, None] + np.array([40.0 * m, 0])
  return kp, np.full(kp.shape[:3], 0.9, np.float32)


def mmaction_ann(frame_dir: str, label: int, num_frames: int,
                 persons: int = 1, num_joints: int = 17) -> dict:
  kp, score = dot_keypoints(num_frames, num_joints, persons)
  return dict(frame_dir=frame_dir, label=label, img_shape=(H, W),
              original_shape=(H, W), total_frames=num_frames, keypoint=kp,
              keypoint_score=score)


def write_pickle(path, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=2)


def write_json(path, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def write_text(path, lines) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def paab_json(num_frames: int, num_joints: int, missing_frame: int | None = None
             ) -> dict:
  """PAAB/PAAT pose JSON with every joint on the dot ([x..., y...] layout)."""
  frames = []
  for t in range(num_frames):
    if t == missing_frame:
      frames.append([])
      continue
    x, y = dot_xy(t)
    xs, ys = [float(x)] * num_joints, [float(y)] * num_joints
    xs[-1] = ys[-1] = -1  # Last joint missing.
    frames.append([{"pose2d": xs + ys}])
  return {"njts": num_joints, "K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
          "frames": frames}


def assert_on_dot(frames: np.ndarray, keypoints: np.ndarray,
                  scores: np.ndarray) -> int:
  """Every scored keypoint of person 0 lies on a bright pixel; returns count."""
  checked = 0
  for t in range(len(frames)):
    for v in range(keypoints.shape[2]):
      if scores[t, 0, v] <= 0:
        continue
      x, y = keypoints[t, 0, v]
      xi, yi = int(np.floor(x)), int(np.floor(y))
      assert 0 <= xi < frames.shape[2] and 0 <= yi < frames.shape[1], (t, x, y)
      assert frames[t, yi, xi].mean() > 150, (t, v, x, y, frames[t, yi, xi])
      checked += 1
  return checked
