"""Pose extraction for videos that come without pose files.

Any callable with this signature plugs into the builders
(`BuildOptions(missing_pose="extract", extractor=...)`):

  extractor(frames)  # (T, H, W, 3) uint8 stored frames
    -> keypoints (T, M, V, 2) float32 pixels of those frames,
       scores    (T, M, V)    float32, 0 = not detected

plus attributes `name` (stored in the dataset metadata) and `layout` (the joint
layout name, which must match the builder config's).

`MediaPipePose` runs BlazePose (full) from mediapipe 0.10.21, the last release
with `mp.solutions.pose` and whose wheel ships the model, fully offline. That
release pins numpy<2, so it lives in its own virtualenv and runs as a
subprocess (`mediapipe_worker.py`, which imports only numpy and mediapipe):

  python3.11 -m venv ~/mp311 && ~/mp311/bin/pip install mediapipe==0.10.21 "numpy<2"
  extractor = MediaPipePose(python="~/mp311/bin/python")
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Protocol, runtime_checkable

import numpy as np

# BlazePose-33 landmark index of each COCO-17 joint.
BLAZEPOSE_TO_COCO17 = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26,
                       27, 28)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "mediapipe_worker.py")


@runtime_checkable
class PoseExtractor(Protocol):
  """frames (T, H, W, 3) uint8 -> (keypoints (T, M, V, 2), scores (T, M, V))."""

  name: str
  layout: str

  def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ...


class MediaPipePose:
  """BlazePose full through a mediapipe-0.10.21 interpreter; one person, COCO-17.

  Attributes:
    python: the interpreter of the virtualenv where mediapipe is installed.
    min_visibility: landmarks below this visibility get score 0.
    timeout_s: per-video limit for the subprocess.
  """

  name = "mediapipe_0.10.21_blazepose_full"
  layout = "coco17"

  def __init__(self, python: str, min_visibility: float = 0.0,
               timeout_s: float = 600.0):
    self.python = os.path.expanduser(python)
    if not os.path.isfile(self.python):
      raise FileNotFoundError(
          f"{self.python}: no such interpreter; create a venv with "
          f"mediapipe==0.10.21 'numpy<2' (see data_prep/extractors.py)")
    self.min_visibility = min_visibility
    self.timeout_s = timeout_s

  def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, h, w, _ = frames.shape
    with tempfile.TemporaryDirectory() as tmp:
      src, dst = os.path.join(tmp, "frames.npy"), os.path.join(tmp, "out.npy")
      np.save(src, np.ascontiguousarray(frames, np.uint8))
      proc = subprocess.run([self.python, WORKER, src, dst],
                            capture_output=True, text=True,
                            timeout=self.timeout_s, check=False)
      if proc.returncode != 0:
        raise RuntimeError(f"mediapipe worker failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
      out = np.load(dst, allow_pickle=False)  # (T, 33, 4) x, y, z, visibility
    if out.shape != (t, 33, 4):
      raise RuntimeError(f"mediapipe worker returned {out.shape}, expected "
                         f"{(t, 33, 4)}")
    return blazepose_to_coco17(out, h, w, self.min_visibility)


def blazepose_to_coco17(landmarks: np.ndarray, h: int, w: int,
                        min_visibility: float = 0.0
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(T, 33, 4) normalised landmarks (NaN = no person) -> COCO-17 pixels.

  Returns:
    keypoints (T, 1, 17, 2), scores (T, 1, 17) = visibility (0 if undetected).
  """
  lm = landmarks[:, BLAZEPOSE_TO_COCO17]
  found = np.isfinite(lm).all(-1)
  kp = np.where(found[..., None], lm[..., :2] * np.array([w, h], np.float32),
                0.0).astype(np.float32)
  score = np.where(found, lm[..., 3], 0.0).astype(np.float32)
  score = np.where(score >= min_visibility, score, 0.0)
  return kp[:, None], score[:, None]


def null_extractor(layout: str = "coco17", num_joints: int = 17):
  """An extractor finding nobody (pipelines without a pose model installed)."""

  def extract(frames: np.ndarray):
    t = len(frames)
    return (np.zeros((t, 0, num_joints, 2), np.float32),
            np.zeros((t, 0, num_joints), np.float32))

  extract.name, extract.layout = "none", layout
  return extract


def from_spec(spec: str) -> PoseExtractor:
  """CLI spec -> extractor: "mediapipe:/path/to/venv/bin/python" or "none"."""
  kind, _, arg = spec.partition(":")
  if kind == "mediapipe":
    return MediaPipePose(arg or "python")
  if kind == "none":
    return null_extractor()
  raise ValueError(f"unknown extractor {spec!r}; expected "
                   f"'mediapipe:<python of a mediapipe-0.10.21 venv>' or 'none'")
