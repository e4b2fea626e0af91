"""The shared TFDS builder: dataset files -> (video, poses) items -> records.

Each dataset module only lists its videos (`VideoItem`: id, label, video path,
a function loading its poses) and its class names; this base class decodes,
aligns, encodes and writes them as ArrayRecord, in a few threads, with a tqdm
bar and a `BuildSummary` of what was written, skipped (and why) and repaired.

  builder = Diving48(data_dir=..., options=BuildOptions(short_side=256))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=...))           # file_format is array_record by default here
  print(builder.summary.format())
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import inspect
import os
import pickle
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from data_prep import align as align_lib
from data_prep import poses as poses_lib
from data_prep import records
from data_prep import safe_pickle
from data_prep import video as video_lib
from pgvt_jax import skeletons

MISSING_POSE_POLICIES = ("keep", "skip", "extract")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


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


@dataclasses.dataclass(eq=False)
class DatasetConfig(tfds.core.BuilderConfig):
  """A dataset/protocol: joint layout and class count (None: from the files)."""
  joint_layout: str = "coco17"
  num_classes: int | None = None


def index_videos(root: str | os.PathLike) -> dict[str, str]:
  """{file stem: path} of every video file under `root` (first wins)."""
  found = {}
  for dirpath, _, files in os.walk(root):
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if ext.lower() in VIDEO_EXTENSIONS:
        found.setdefault(stem, os.path.join(dirpath, name))
  return found


def read_lines(path: str | os.PathLike) -> list[str]:
  """Non-empty stripped lines of a text file (clear error when absent)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"expected file {path} (see the dataset's "
                            f"MANUAL_DOWNLOAD_INSTRUCTIONS)")
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


def unique_names(names: list[str], tags: list[str]) -> list[str]:
  """Appends ` (tag)` to names that occur more than once (ClassLabel needs
  unique names; FineGym's category lists repeat some element names)."""
  dup = {n for n, c in collections.Counter(names).items() if c > 1}
  return [f"{n} ({t})" if n in dup else n for n, t in zip(names, tags)]


class VideoPoseBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of all pgvt_jax record builders (abstract: not registered)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Frames (JPEG) + aligned 2D keypoints."}

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default resolves package files through `importlib_resources`,
    # which is not installed here; the file path of the class is the answer.
    return epath.Path(inspect.getfile(cls))

  # Constructor arguments of a subclass that a pickled builder (Beam workers)
  # must keep; TFDS pickles only data_dir, config and version.
  PICKLED_ARGS: tuple[str, ...] = ()

  def __init__(self, *, options: BuildOptions | None = None, **kwargs):
    self.options = options or BuildOptions()
    self.summary = records.BuildSummary(dataset=self.name)
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
    self._original_state.update(
        options=self.options,
        **{k: getattr(self, k) for k in self.PICKLED_ARGS})

  # ------------------------------------------------------------ subclasses

  @abc.abstractmethod
  def _read_dataset(self, manual_dir: str | None
                   ) -> tuple[list[str], dict[str, list[VideoItem]]]:
    """Returns (class names, {split: [VideoItem]}) from the dataset files."""

  def _description(self) -> str:
    return (self.__doc__ or "").strip()

  # ------------------------------------------------------------ tfds hooks

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    layout = skeletons.get(cfg.joint_layout)
    return tfds.core.DatasetInfo(
        builder=self,
        description=self._description(),
        features=records.features(layout.num_joints,
                                  num_classes=cfg.num_classes),
        metadata=tfds.core.MetadataDict(
            joint_layout=layout.name, build_options=self.options.metadata()),
    )

  def _split_generators(self, dl_manager):
    extractor = self.options.extractor
    layout = self.builder_config.joint_layout
    if extractor is not None and getattr(extractor, "layout", None) != layout:
      raise ValueError(
          f"extractor {getattr(extractor, 'name', extractor)!r} produces "
          f"{getattr(extractor, 'layout', '?')} joints, config "
          f"{self.builder_config.name!r} stores {layout}")
    manual = (os.fspath(dl_manager.manual_dir)
              if self.MANUAL_DOWNLOAD_INSTRUCTIONS else None)
    names, splits = self._read_dataset(manual)
    label = self.info.features["label"]
    label.names = list(names)
    self._num_classes = label.num_classes
    self.info.metadata["build_summary"] = {}
    for name in [k for k, v in splits.items() if not v]:
      # TFDS cannot write a split without examples.
      del splits[name]
      self.summary.split(name).counts["split_dropped: no videos listed"] = 1
    if not splits:
      raise ValueError(f"{self.name}: the dataset files list no videos")
    if getattr(self, "_beam", False):
      from data_prep import beam_build  # pylint: disable=g-import-not-at-top
      return {name: beam_build.split_transform(
          self, manual, name, self._unique(name, items),
          beam_build.report_path(self.data_path, name))
              for name, items in splits.items()}
    return {name: self._generate_examples(name, items)
            for name, items in splits.items()}

  def _download_and_prepare(self, dl_manager, download_config):
    # Beam (`DownloadConfig(beam_runner=... or beam_options=...)`): videos are
    # processed by the pipeline's workers; their reports are gathered here,
    # before TFDS writes the dataset info.
    self._beam = bool(download_config.beam_runner or
                      download_config.beam_options)
    super()._download_and_prepare(dl_manager, download_config)
    if self._beam:
      from data_prep import beam_build  # pylint: disable=g-import-not-at-top
      for split in list(self.info.splits):
        rows = beam_build.read_report(self.data_path, split)
        summary = self.summary.split(split)
        for vid, result in rows:
          self._count(summary, vid, result)
        self._record_summary(split)

  def _unique(self, split: str, items: list[VideoItem]) -> list[VideoItem]:
    """Items after --limit, duplicates skipped (counted in the summary)."""
    summary = self.summary.split(split)
    unique, duplicates = select_items(items, self.options.limit)
    for item in duplicates:
      summary.skip(item.video_id, "duplicate video id in split")
    summary.listed = len(unique) + len(duplicates)
    return unique

  def list_split(self, manual_dir: str | None, split: str
                ) -> list[VideoItem]:
    """The split's items as `_split_generators` writes them (Beam workers
    list the dataset again rather than receive every item's data)."""
    return select_items(self._read_dataset(manual_dir)[1][split],
                        self.options.limit)[0]

  def _process_args(self) -> tuple[BuildOptions, str, int]:
    return self.options, self.builder_config.joint_layout, self._num_classes

  def _count(self, summary: records.SplitSummary, video_id: str,
             result) -> bool:
    """Adds one processed video to the summary; True if it is written."""
    if isinstance(result, SkipVideo):
      summary.skip(video_id, str(result))
      return False
    _, aligned_warnings, counts = result
    summary.warn(video_id, aligned_warnings)
    summary.counts.update(counts)
    summary.written += 1
    return True

  def _record_summary(self, split: str) -> None:
    s = self.summary.split(split)
    self.info.metadata["build_summary"][split] = {
        "listed": s.listed, "written": s.written,
        "skipped": dict(s.skipped), "counts": dict(s.counts)}

  def _generate_examples(self, split: str, items: list[VideoItem]
                        ) -> Iterator[tuple[str, dict[str, Any]]]:
    opts = self.options
    summary = self.summary.split(split)
    unique = self._unique(split, items)
    bar = tqdm.tqdm(total=len(unique), desc=f"{self.name} {split}",
                    unit="video", disable=not opts.progress, leave=False)
    with concurrent.futures.ThreadPoolExecutor(max(opts.num_workers, 1)) as ex:
      for item, result in _ordered_map(ex, self._process, unique,
                                       window=4 * max(opts.num_workers, 1)):
        bar.update(1)
        if not self._count(summary, item.video_id, result):
          bar.set_postfix(skipped=len(summary.skipped))
          continue
        yield item.video_id, result[0]
    bar.close()
    self._record_summary(split)

  # ------------------------------------------------------------ per video

  def _process(self, item: VideoItem):
    return process_item(item, *self._process_args())

  def _check_label(self, label) -> str | None:
    n = getattr(self, "_num_classes", None)
    return check_label(label, self.info.features["label"].num_classes
                       if n is None else n)


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


def _ordered_map(executor, fn, items: Iterable, window: int):
  """Yields (item, fn(item)) in order with at most `window` calls in flight."""
  pending = collections.deque()
  for item in items:
    pending.append((item, executor.submit(fn, item)))
    if len(pending) >= window:
      done_item, fut = pending.popleft()
      yield done_item, fut.result()
  while pending:
    done_item, fut = pending.popleft()
    yield done_item, fut.result()
