"""Pose files as published, read into one in-memory form, then aligned to frames.

Every reader returns a `PoseSequence`: keypoints (M, P, V, 2) in the pixel
coordinates of `image_size` (h, w), scores (M, P, V), pose frame p belonging to
source-video frame p. `align.align_to_video` turns it into the record's arrays
for the stored frames.

Formats (FACTS.md, "mmaction2 / PoseC3D pose files" and "PAAB / PAAT"):
  * mmaction2 annotation dict: keypoint (M, T, V, 2), keypoint_score (M, T, V),
    img_shape (h, w), total_frames.
  * mmaction2/pyskl Kinetics-400 index (frame_inds, box_score) + kpfile rows
    (N, V, 3) = x, y, score, one row per detected person-frame.
  * PAAB/PAAT per-video JSON {"njts", "frames": [[{"pose2d": [x0..xn, y0..yn]}]]}
    (-1 = missing joint, [] = nobody in the frame).
  * NTU RGB+D `.skeleton` text files (Kinect colour-space joints) and their
    `.skeleton.npy` conversions (`rgb_body{i}` (T, 25, 2)).
  * `.npz` with keypoint (M, T, V, 2) [+ keypoint_score, img_shape] (custom data).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

import numpy as np

from data_prep import safe_pickle


class PoseFormatError(ValueError):
  """A pose file/entry does not have the published layout."""


@dataclasses.dataclass
class PoseSequence:
  """Poses of one video, before alignment to the stored frames.

  Attributes:
    keypoint: (M, P, V, 2) float32 pixel x, y in `image_size` coordinates.
    score: (M, P, V) float32 confidence; 0 = missing.
    image_size: (h, w) of the coordinate space; None = the source video's size.
    source: where the poses came from (for messages).
  """
  keypoint: np.ndarray
  score: np.ndarray
  image_size: tuple[int, int] | None
  source: str

  def __post_init__(self):
    kp, sc = self.keypoint, self.score
    if kp.ndim != 4 or kp.shape[-1] != 2:
      raise PoseFormatError(
          f"{self.source}: keypoint must be (M, T, V, 2) 2D pixel coordinates, "
          f"got shape {kp.shape}")
    if sc.shape != kp.shape[:3]:
      raise PoseFormatError(
          f"{self.source}: keypoint_score shape {sc.shape} does not match "
          f"keypoint {kp.shape} (expected (M, T, V))")
    self.keypoint = kp.astype(np.float32, copy=False)
    self.score = sc.astype(np.float32, copy=False)

  @property
  def num_frames(self) -> int:
    return self.keypoint.shape[1]


def _shape2(value, source: str, field: str) -> tuple[int, int] | None:
  if value is None:
    return None
  try:
    h, w = (int(v) for v in value)
  except (TypeError, ValueError):
    raise PoseFormatError(
        f"{source}: {field} must be (h, w), got {value!r}") from None
  if h <= 0 or w <= 0:
    raise PoseFormatError(f"{source}: {field} must be positive, got {(h, w)}")
  return h, w


# ----------------------------------------------------------------- mmaction2


def load_mmaction_pickle(path: str | os.PathLike) -> dict:
  """Loads an mmaction2 pose pickle (allow-listed) and checks its layout.

  Returns:
    {'split': {name: [frame_dir, ...]}, 'annotations': [dict, ...]}.
  """
  data = safe_pickle.load(path)
  if not isinstance(data, dict) or "annotations" not in data:
    raise PoseFormatError(
        f"{path}: expected a dict with 'split' and 'annotations' (mmaction2 "
        f"pose pickle), got {type(data).__name__}"
        + (f" with keys {sorted(data)}" if isinstance(data, dict) else ""))
  anns = data["annotations"]
  if not isinstance(anns, list) or not all(
      isinstance(a, dict) and "frame_dir" in a for a in anns):
    raise PoseFormatError(
        f"{path}: 'annotations' must be a list of dicts with 'frame_dir'")
  data.setdefault("split", {})
  return data


def from_mmaction(ann: dict, source: str) -> PoseSequence:
  """One mmaction2 annotation (keypoint (M,T,V,2), keypoint_score) -> poses."""
  if "keypoint" not in ann:
    raise PoseFormatError(
        f"{source}: annotation {ann.get('frame_dir')!r} has no 'keypoint' "
        f"(keys: {sorted(ann)})")
  kp = np.asarray(ann["keypoint"], dtype=np.float32)
  if kp.ndim == 4 and kp.shape[-1] == 3 and "keypoint_score" not in ann:
    # Some converters store (x, y, score) in the last axis.
    kp, score = kp[..., :2], kp[..., 2]
  elif "keypoint_score" in ann:
    score = np.asarray(ann["keypoint_score"], dtype=np.float32)
  else:
    score = np.ones(kp.shape[:3], np.float32)
  return PoseSequence(
      keypoint=kp, score=score, source=source,
      image_size=_shape2(ann.get("img_shape"), source, "img_shape"))


def load_kinetics_kpfile(path: str | os.PathLike, frame_dir: str) -> np.ndarray:
  """Keypoint rows (N, V, 3) of one K400 video from its kpfile.

  Two published layouts: mmaction2's `LoadKineticsPose` reads a pickle holding
  the array itself; pyskl's kpfiles are dicts {frame_dir: {'keypoint': array}}.
  """
  data = safe_pickle.load(path)
  if isinstance(data, dict):
    if frame_dir not in data:
      raise PoseFormatError(f"{path}: no entry for {frame_dir!r}")
    data = data[frame_dir]
    if isinstance(data, dict):
      data = data.get("keypoint")
  kp = np.asarray(data, dtype=np.float32) if data is not None else None
  if kp is None or kp.ndim != 3 or kp.shape[-1] != 3:
    raise PoseFormatError(
        f"{path}: expected keypoint rows (N, V, 3) for {frame_dir!r}, got "
        f"{None if kp is None else kp.shape}")
  return kp


def from_kinetics_compressed(ann: dict, rows: np.ndarray, source: str,
                             box_thr: float = 0.5,
                             frame_inds_base: int = 1) -> PoseSequence:
  """K400 index entry + kpfile rows -> dense poses (M, total_frames, V, 2).

  Each row is one detected person in frame `frame_inds[i]`; persons of a frame
  fill slots 0, 1, ... in row order (as mmaction2's `LoadKineticsPose`, without
  its `squeeze`, which would drop the link to video frames). Rows with
  `box_score < box_thr` are dropped (pyskl's `box_thr`).

  `frame_inds` in the published index are 1-based: in mmaction2's sample index
  all are odd, the smallest is 1, and 10 of 100 videos have
  max(frame_inds) == total_frames.
  """
  for key in ("frame_inds", "total_frames"):
    if key not in ann:
      raise PoseFormatError(f"{source}: K400 index entry lacks {key!r}")
  frame_inds = np.asarray(ann["frame_inds"], np.int64) - frame_inds_base
  if len(frame_inds) != len(rows):
    raise PoseFormatError(
        f"{source}: {len(frame_inds)} frame_inds but {len(rows)} keypoint rows")
  keep = np.ones(len(rows), bool)
  if "box_score" in ann and box_thr is not None:
    keep = np.asarray(ann["box_score"], np.float32) >= box_thr
  total = int(ann["total_frames"])
  frame_inds, rows = frame_inds[keep], rows[keep]
  in_range = (frame_inds >= 0) & (frame_inds < total)
  frame_inds, rows = frame_inds[in_range], rows[in_range]
  v = rows.shape[1]
  counts = np.bincount(frame_inds, minlength=total) if len(rows) else np.zeros(
      total, np.int64)
  m = int(counts.max()) if len(rows) else 0
  kp = np.zeros((m, total, v, 2), np.float32)
  score = np.zeros((m, total, v), np.float32)
  slot = np.zeros(total, np.int64)
  for f, row in zip(frame_inds, rows):
    kp[slot[f], f] = row[:, :2]
    score[slot[f], f] = row[:, 2]
    slot[f] += 1
  return PoseSequence(kp, score, _shape2(ann.get("img_shape"), source,
                                         "img_shape"), source)


# ---------------------------------------------------------------- PAAB JSON


def from_paab_json(path: str | os.PathLike,
                   num_joints: int | None = None) -> PoseSequence:
  """Smarthome / N-UCLA per-video JSON -> poses in source-video pixels.

  `pose2d` is [x0..x{V-1}, y0..y{V-1}]; -1 marks a missing joint; an empty
  frame list means nobody was detected.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise PoseFormatError(f"{path}: unreadable pose JSON ({e})") from e
  if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
    raise PoseFormatError(f"{path}: expected {{'njts': V, 'frames': [...]}}")
  v = int(data.get("njts") or num_joints or 0)
  if num_joints is not None and v != num_joints:
    raise PoseFormatError(f"{path}: njts={v}, expected {num_joints}")
  frames = data["frames"]
  m = max((len(p) for p in frames if isinstance(p, list)), default=0)
  kp = np.zeros((m, len(frames), v, 2), np.float32)
  score = np.zeros((m, len(frames), v), np.float32)
  for t, persons in enumerate(frames):
    if not isinstance(persons, list):
      raise PoseFormatError(f"{path}: frame {t} is not a list of persons")
    for i, person in enumerate(persons):
      xy = np.asarray(person.get("pose2d", ()), np.float32)
      if xy.shape != (2 * v,):
        raise PoseFormatError(
            f"{path}: frame {t} person {i}: pose2d has {xy.size} values, "
            f"expected 2*njts={2 * v}")
      xy = xy.reshape(2, v).T  # [x..., y...] -> (V, 2)
      present = (xy != -1).all(-1)
      kp[i, t] = np.where(present[:, None], xy, 0.0)
      score[i, t] = present
  return PoseSequence(kp, score, None, path)


# ---------------------------------------------------------------------- NTU


def from_ntu_skeleton(path: str | os.PathLike) -> PoseSequence:
  """NTU RGB+D `.skeleton` text -> (M, T, 25, 2) colour-space (1920x1080) joints.

  Bodies are tracked by their Kinect body id (slot = order of first
  appearance). Score = 1 tracked, 0.5 inferred, 0 not tracked (trackingState).
  """
  path = os.fspath(path)
  try:
    with open(path) as f:
      tokens = f.read().split("\n")
  except OSError as e:
    raise PoseFormatError(f"{path}: unreadable ({e})") from e
  it = iter(line.strip() for line in tokens)
  bodies: dict[str, dict[int, np.ndarray]] = collections.OrderedDict()
  try:
    num_frames = int(next(it))
    for t in range(num_frames):
      for _ in range(int(next(it))):
        body_id = next(it).split()[0]
        nj = int(next(it))
        joints = np.array([next(it).split() for _ in range(nj)], np.float64)
        # Columns: x y z depthX depthY colorX colorY orientWXYZ trackingState.
        bodies.setdefault(body_id, {})[t] = joints[:, [5, 6, 11]]
  except (StopIteration, ValueError, IndexError) as e:
    raise PoseFormatError(f"{path}: malformed .skeleton file ({e!r})") from e
  kp = np.zeros((len(bodies), num_frames, 25, 2), np.float32)
  score = np.zeros((len(bodies), num_frames, 25), np.float32)
  for m, per_frame in enumerate(bodies.values()):
    for t, j in per_frame.items():
      if j.shape[0] != 25:
        raise PoseFormatError(f"{path}: frame {t} has {j.shape[0]} joints")
      kp[m, t] = j[:, :2]
      score[m, t] = np.select([j[:, 2] == 2, j[:, 2] == 1], [1.0, 0.5], 0.0)
  return PoseSequence(kp, score, (1080, 1920), path)


def from_ntu_npy(path: str | os.PathLike) -> PoseSequence:
  """NTU `.skeleton.npy` (shahroudy/NTURGB-D txt2npy) -> rgb_body* joints."""
  data = safe_pickle.load_npy_object(path)
  if not isinstance(data, dict) or "rgb_body0" not in data:
    raise PoseFormatError(f"{path}: expected a dict with 'rgb_body0'")
  bodies = [np.asarray(data[f"rgb_body{i}"], np.float32)
            for i in range(8) if f"rgb_body{i}" in data]
  t = max(b.shape[0] for b in bodies)
  kp = np.zeros((len(bodies), t, 25, 2), np.float32)
  for m, b in enumerate(bodies):
    if b.ndim != 3 or b.shape[1:] != (25, 2):
      raise PoseFormatError(f"{path}: rgb_body{m} shape {b.shape}, "
                            f"expected (T, 25, 2)")
    kp[m, :len(b)] = b
  # txt2npy leaves frames without the body at (0, 0).
  score = (np.abs(kp).sum(-1) > 0).astype(np.float32)
  return PoseSequence(kp, score, (1080, 1920), os.fspath(path))


# ---------------------------------------------------------------------- npz


def from_npz(path: str | os.PathLike) -> PoseSequence:
  """`.npz` with keypoint (M, T, V, 2) [, keypoint_score (M, T, V), img_shape]."""
  with np.load(path, allow_pickle=False) as z:
    if "keypoint" not in z:
      raise PoseFormatError(f"{path}: .npz lacks 'keypoint' (M, T, V, 2)")
    kp = z["keypoint"]
    score = z["keypoint_score"] if "keypoint_score" in z else np.ones(
        kp.shape[:3], np.float32)
    size = tuple(z["img_shape"]) if "img_shape" in z else None
  return PoseSequence(kp, score, _shape2(size, os.fspath(path), "img_shape"),
                      os.fspath(path))


def load_pose_file(path: str | os.PathLike, num_joints: int,
                   frame_dir: str | None = None) -> PoseSequence:
  """Reads a per-video pose file by extension (.json, .npz, .pkl, .skeleton)."""
  p = os.fspath(path)
  if p.endswith(".json"):
    return from_paab_json(p, num_joints)
  if p.endswith(".npz"):
    return from_npz(p)
  if p.endswith(".skeleton"):
    return from_ntu_skeleton(p)
  if p.endswith(".skeleton.npy"):
    return from_ntu_npy(p)
  if p.endswith(".pkl"):
    data = safe_pickle.load(p)
    if isinstance(data, dict) and "annotations" in data:
      anns = data["annotations"]
      match = [a for a in anns if a.get("frame_dir") == frame_dir]
      if not match and len(anns) == 1:
        match = anns
      if not match:
        raise PoseFormatError(f"{p}: no annotation with frame_dir "
                              f"{frame_dir!r}")
      return from_mmaction(match[0], p)
    if isinstance(data, dict):
      return from_mmaction(data, p)
    raise PoseFormatError(f"{p}: expected an mmaction2 annotation dict")
  raise PoseFormatError(
      f"{p}: unknown pose file type (expected .json, .npz, .pkl, .skeleton, "
      f".skeleton.npy)")
