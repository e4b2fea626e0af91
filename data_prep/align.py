"""Poses -> the record's arrays for the stored frames, with every repair counted.

`align_to_video(pose, video, V)` cleans NaN/negative values, picks at most
`max_persons`, maps each stored frame to its pose frame (tolerating a small
frame-count mismatch) and rescales to the stored frame size. What it changed
is returned as warnings and counts for the build summary.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from data_prep.poses import PoseFormatError, PoseSequence
from data_prep.video import DecodedVideo


@dataclasses.dataclass
class Aligned:
  """Record arrays for the stored frames plus what was repaired.

  Attributes:
    keypoint: (T, M, V, 2) float32 in stored-frame pixels.
    score: (T, M, V) float32, 0 = missing.
    warnings: human-readable notes for the build summary.
    counts: event -> number (e.g. "nan_or_negative_joints").
  """
  keypoint: np.ndarray
  score: np.ndarray
  warnings: list[str]
  counts: collections.Counter


def empty_pose(num_frames: int, num_joints: int) -> tuple[np.ndarray,
                                                            np.ndarray]:
  """(T, 0, V, 2) / (T, 0, V): the arrays of a record without persons."""
  return (np.zeros((num_frames, 0, num_joints, 2), np.float32),
          np.zeros((num_frames, 0, num_joints), np.float32))


def align_to_video(pose: PoseSequence, video: DecodedVideo, num_joints: int,
                   max_persons: int | None = None,
                   clamp_tolerance: int = 2) -> Aligned:
  """Cleans `pose`, picks its frames for `video`'s stored frames and rescales.

  * NaN/inf/negative coordinates and NaN/negative scores -> coordinate 0,
    score 0 (counted).
  * More than `max_persons` persons -> the ones with highest mean score, in
    their original slot order.
  * Pose frame p belongs to source frame p. When the pose has a different
    frame count P than the video, stored frames past the pose's end reuse pose
    frame P-1 if they are at most `clamp_tolerance` frames past it (decoders
    disagree by a frame or two at the end), otherwise they are marked missing
    (score 0). Both are warned.
  * Coordinates are scaled from the pose's image size to the stored frames.

  Raises:
    PoseFormatError: wrong joint count.
  """
  kp, score = pose.keypoint, pose.score
  m, p, v, _ = kp.shape
  if v != num_joints:
    raise PoseFormatError(
        f"{pose.source}: {v} joints per person, the dataset's layout has "
        f"{num_joints}")
  warnings, counts = [], collections.Counter()

  bad = (~np.isfinite(kp).all(-1) | (kp < 0).any(-1) | ~np.isfinite(score)
         | (score < 0))
  if bad.any():
    counts["nan_or_negative_joints"] += int(bad.sum())
    warnings.append(f"{int(bad.sum())} joints with NaN/negative coordinates "
                    f"or scores set to missing")
    kp = np.where(bad[..., None], 0.0, kp)
    score = np.where(bad, 0.0, score)

  if max_persons is not None and m > max_persons:
    order = np.argsort(-score.mean(axis=(1, 2)), kind="stable")
    keep = np.sort(order[:max_persons])
    counts["persons_dropped"] += m - max_persons
    kp, score, m = kp[keep], score[keep], max_persons

  src = video.frame_indices.astype(np.int64)
  n = video.num_source_frames
  if p != n:
    counts["frame_count_mismatch"] += 1
    msg = f"pose has {p} frames, video has {n}"
    past = src > p - 1
    clamped = past & (src <= p - 1 + clamp_tolerance)
    lost = past & ~clamped
    if clamped.any():
      msg += f"; {int(clamped.sum())} stored frames reuse pose frame {p - 1}"
    if lost.any():
      counts["frames_without_pose"] += int(lost.sum())
      msg += f"; {int(lost.sum())} stored frames have no pose (score 0)"
    warnings.append(msg)
  else:
    lost = np.zeros(len(src), bool)
  idx = np.clip(src, 0, max(p - 1, 0))
  if p == 0:
    kp_t = np.zeros((len(src), m, v, 2), np.float32)
    score_t = np.zeros((len(src), m, v), np.float32)
  else:
    kp_t = kp[:, idx].transpose(1, 0, 2, 3)
    score_t = score[:, idx].transpose(1, 0, 2)
    score_t[lost] = 0.0
    kp_t[lost] = 0.0

  h_src, w_src = pose.image_size or video.original_size
  h_dst, w_dst = video.size
  if pose.image_size is not None:
    h_o, w_o = video.original_size
    if abs(h_src / w_src - h_o / w_o) > 0.02 * (h_o / w_o):
      warnings.append(f"pose image size {(h_src, w_src)} has a different "
                      f"aspect ratio than the video {(h_o, w_o)}")
      counts["aspect_mismatch"] += 1
  scale = np.array([w_dst / w_src, h_dst / h_src], np.float32)
  kp_t = np.where(score_t[..., None] > 0, kp_t * scale, 0.0).astype(np.float32)

  if m > 1:
    present = (score_t > 0).any(-1)  # (T, M)
    partial = present.any(-1) & ~present.all(-1)
    if partial.any():
      counts["frames_with_missing_persons"] += int(partial.sum())
  empty = int((~(score_t > 0).any((-1, -2))).sum())
  if empty and m:
    counts["frames_without_persons"] += empty
  return Aligned(kp_t, score_t.astype(np.float32), warnings, counts)
