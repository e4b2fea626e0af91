"""The shared TFDS builder: dataset files -> (video, poses) items -> records.

Each dataset module only lists its videos (`VideoItem`: id, label, video path,
a function loading its poses) and its class names; this base class decodes,
aligns, encodes and writes them as ArrayRecord, in a few threads, with a tqdm
bar and a `BuildSummary` of what was written, skipped (and why) and repaired.
The per-video step is `data_prep.process` (shared with the Beam workers of
`data_prep.beam_build`); its `BuildOptions` and `VideoItem` are used from here.

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
from typing import Any, Iterable, Iterator

import tensorflow_datasets as tfds
import tqdm
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from data_prep import beam_build
from data_prep import records
from data_prep import skeletons
from data_prep.process import (BuildOptions, SkipVideo, VideoItem, check_label, process_item,
                               select_items)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


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
