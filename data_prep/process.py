"""One listed video -> one record, or the reason it is skipped: the per-video step of a build.

`VideoItem`s (what a dataset module lists) and `BuildOptions` (how videos become records) go
in, `process_item` returns (example, warnings, counts) or a `SkipVideo`. A function of its
arguments only, so that the local builder's threads (`data_prep.builder`) and Apache Beam's
workers (`data_prep.beam_build`) run the same code.
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
from typing import Any, Callable

import numpy as np

from data_prep import align as align_lib
from data_prep import poses as poses_lib
from data_prep import records
from data_prep import safe_pickle
from data_prep import skeletons
from data_prep import video as video_lib

MISSING_POSE_POLICIES = ("keep", "skip", "extract")


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  """How videos become records (stored in the dataset's metadata).

  Attributes:
    short_side: stored frames' short side in pixels (None: source size).
    jpeg_quality: JPEG quality of stored frames (1-95).
    max_frames: cap on stored frames per video, evenly subsampled (None: all).
    max_persons: keep at most this many persons per video, by mean score.
    missing_pose: a video without pose entry is kept with M=0 persons
      ("keep", for pose-free models), skipped ("skip"), or its poses are
      extracted with `extractor` ("extract").
    clamp_tolerance: see `poses.align_to_video`.
    num_workers: videos processed concurrently (threads; decode and JPEG
      release the GIL).
    limit: build only the first N videos of each split (smoke tests).
    progress: show a tqdm bar per split.
    extractor: a `data_prep.extractors.PoseExtractor` for "extract".
  """
  short_side: int | None = 256
  jpeg_quality: int = 90
  max_frames: int | None = None
  max_persons: int | None = None
  missing_pose: str = "keep"
  clamp_tolerance: int = 2
  num_workers: int = 2
  limit: int | None = None
  progress: bool = True
  extractor: Any = None

  def __post_init__(self):
    if self.missing_pose not in MISSING_POSE_POLICIES:
      raise ValueError(f"missing_pose={self.missing_pose!r}, expected one of "
                       f"{MISSING_POSE_POLICIES}")
    if self.missing_pose == "extract" and self.extractor is None:
      raise ValueError("missing_pose='extract' needs an extractor")
    if not 1 <= self.jpeg_quality <= 95:
      raise ValueError(f"jpeg_quality={self.jpeg_quality}, expected 1..95")

  def metadata(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    for k in ("extractor", "progress", "num_workers", "limit"):
      d.pop(k)
    d["extractor"] = getattr(self.extractor, "name", None)
    return d


@dataclasses.dataclass(frozen=True)
class VideoItem:
  """One video to write.

  Attributes:
    video_id: record key, unique in its split.
    label: class index.
    video_path: file to decode; None when `frames` is given.
    pose: loads this video's poses; None = no pose entry for this video.
    frames: returns already-decoded frames (in-memory sources: synthetic).
    error: set when the listing itself is bad (e.g. a malformed split entry):
      the video is skipped with this reason.
  """
  video_id: str
  label: int
  video_path: str | None
  pose: Callable[[], poses_lib.PoseSequence] | None = None
  frames: Callable[[], video_lib.DecodedVideo] | None = None
  error: str | None = None


class SkipVideo(Exception):
  """Raised while processing a video that must not be written."""


def select_items(items: list[VideoItem], limit: int | None
                ) -> tuple[list[VideoItem], list[VideoItem]]:
  """(first `limit` items without repeated ids, the repeats)."""
  items = items[:limit] if limit is not None else items
  seen, unique, duplicates = set(), [], []
  for item in items:
    (duplicates if item.video_id in seen else unique).append(item)
    seen.add(item.video_id)
  return unique, duplicates


def check_label(label, num_classes: int) -> str | None:
  """Why `label` cannot be written, or None.

  Checked here for every dataset: TFDS's ClassLabel writes -1 silently and
  fails the whole build (dumping the example) on a label >= num_classes.
  """
  if isinstance(label, (bool, np.bool_)) or not isinstance(
      label, (int, np.integer)):
    return f"label {label!r} is not an integer class index"
  if not 0 <= label < num_classes:
    return f"label {label} outside 0..{num_classes - 1}"
  return None


def process_item(item: VideoItem, opts: BuildOptions, joint_layout: str,
                 num_classes: int):
  """VideoItem -> (example, warnings, counts), or a SkipVideo (returned).

  Errors are returned, not raised: one bad video never stops a build; an
  unexpected error is reported with its type in the summary. A function of
  its arguments only, so that Beam workers can run it.
  """
  try:
    return _process_or_raise(item, opts, joint_layout, num_classes)
  except Exception as e:  # pylint: disable=broad-except
    return SkipVideo(f"error: {type(e).__name__}: {e}")


def _process_or_raise(item: VideoItem, opts: BuildOptions, joint_layout: str,
                      num_classes: int):
  if item.error:
    return SkipVideo(f"listing: {item.error}")
  label_error = check_label(item.label, num_classes)
  if label_error:
    return SkipVideo(f"listing: {label_error}")
  num_joints = skeletons.get(joint_layout).num_joints
  try:
    if item.frames is not None:
      video = video_lib.subsample(item.frames(), opts.max_frames)
    else:
      video = video_lib.decode_video(item.video_path, opts.short_side,
                                     opts.max_frames)
  except video_lib.VideoDecodeError as e:
    return SkipVideo(f"video: {e}")

  counts, warns = collections.Counter(), []
  pose, pose_error = None, None
  if item.pose is not None:
    try:
      pose = item.pose()
    except (poses_lib.PoseFormatError, safe_pickle.UnsafePickleError,
            pickle.UnpicklingError, EOFError, OSError, KeyError) as e:
      pose_error = f"{type(e).__name__}: {e}"
  if pose is None:
    why = pose_error or "no pose entry"
    if opts.missing_pose == "skip":
      return SkipVideo(f"pose: {why}")
    if opts.missing_pose == "extract":
      pose, video_for_pose = _extract(opts.extractor, video), _identity_frames(
          video)
      counts["poses_extracted"] += 1
    else:
      counts["kept_without_pose"] += 1
      warns.append(f"{why}; kept with 0 persons")
      kp, sc = align_lib.empty_pose(len(video.frames), num_joints)
      return (records.make_example(item.video_id, item.label, video, kp, sc,
                                   opts.jpeg_quality), warns, counts)
  else:
    video_for_pose = video
  try:
    aligned = align_lib.align_to_video(pose, video_for_pose, num_joints,
                                       opts.max_persons,
                                       opts.clamp_tolerance)
  except poses_lib.PoseFormatError as e:
    return SkipVideo(f"pose: {e}")
  counts.update(aligned.counts)
  example = records.make_example(item.video_id, item.label, video,
                                 aligned.keypoint, aligned.score,
                                 opts.jpeg_quality)
  return example, warns + aligned.warnings, counts


def _extract(extractor, video: video_lib.DecodedVideo
            ) -> poses_lib.PoseSequence:
  kp, score = extractor(video.frames)
  # Extractors see the stored frames: (T, M, V, 2) -> (M, T, V, 2).
  return poses_lib.PoseSequence(
      np.moveaxis(kp, 0, 1), np.moveaxis(score, 0, 1), video.size,
      f"extractor {getattr(extractor, 'name', '?')}")


def _identity_frames(video: video_lib.DecodedVideo) -> video_lib.DecodedVideo:
  """`video` seen as its own source (poses computed on the stored frames)."""
  t = len(video.frames)
  return dataclasses.replace(video, frame_indices=np.arange(t, dtype=np.int32),
                             num_source_frames=t, original_size=video.size)
