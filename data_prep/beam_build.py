"""Apache Beam execution of a build: TFDS's own Beam support, our per-video step.

`python -m data_prep.build ... --beam_options="--runner=DirectRunner"` (or
DataflowRunner / FlinkRunner / SparkRunner with their options) passes a
`DownloadConfig(beam_options=...)`; the builder's `_split_generators` then
returns, per split, the PTransform below instead of a Python generator. TFDS
writes its output (shuffling by key and sharding exactly as it does for a
local build), so the records are the same as a local build's.

The listing (dataset files -> VideoItems) runs where the command is started
and, once, on each worker (the pipeline carries only video ids); each worker
runs `process.process_item` on its videos. Every video's outcome
(skip reason, or warnings and counts) is gathered into one JSON report per
split, written next to the records while they are built and merged into the
build summary afterwards. Needs the `[beam]` extra.
"""

from __future__ import annotations

import json
from typing import Any

from etils import epath

from data_prep import process as process_lib

_REPORT = "{split}.beam_report.json"


def report_path(data_path, split: str) -> str:
  return str(epath.Path(data_path) / _REPORT.format(split=split))


class _ProcessVideos:
  """video id -> (index, id, process_item result), on a Beam worker.

  The worker lists the dataset once (`setup`) from the pickled builder
  (data_dir, config, options; manual_dir must be readable there) instead of
  receiving every item's pose data through the pipeline.
  """

  def __init__(self, builder, manual_dir, split, args):
    self._builder, self._manual_dir, self._split = builder, manual_dir, split
    self._args, self._items = args, None

  def setup(self):
    if self._items is None:
      items = self._builder.list_split(self._manual_dir, self._split)
      self._items = {item.video_id: (i, item) for i, item in enumerate(items)}

  def __call__(self, video_id):
    self.setup()
    index, item = self._items[video_id]
    return index, video_id, process_lib.process_item(item, *self._args)


def _example(row):
  _, video_id, result = row
  if isinstance(result, process_lib.SkipVideo):
    return []
  return [(video_id, result[0])]


def _report_row(row) -> list[Any]:
  index, video_id, result = row
  if isinstance(result, process_lib.SkipVideo):
    return [index, video_id, str(result)]
  _, warnings, counts = result
  return [index, video_id, [list(warnings), dict(counts)]]


def _write_report(rows, path: str) -> None:
  epath.Path(path).write_text(json.dumps(sorted(rows)))


def read_report(data_path, split: str) -> list[tuple[str, Any]]:
  """[(video_id, SkipVideo | (None, warnings, counts))] in listing order;
  the report file is removed."""
  path = epath.Path(report_path(data_path, split))
  rows = json.loads(path.read_text())
  path.unlink()
  out = []
  for _, video_id, result in rows:
    if isinstance(result, str):
      out.append((video_id, process_lib.SkipVideo(result)))
    else:
      out.append((video_id, (None, result[0], result[1])))
  return out


def split_transform(builder, manual_dir: str | None, split: str,
                    items: list[process_lib.VideoItem], report: str):
  """The PTransform of one split: PBegin -> PCollection[(key, example)].

  `items` (listed here) only give the video ids; workers list them again.
  """
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  process = _ProcessVideos(builder, manual_dir, split, builder._process_args())  # pylint: disable=protected-access

  class _Split(beam.PTransform):

    def expand(self, pbegin):
      rows = (pbegin
              | "ListVideos" >> beam.Create([item.video_id for item in items])
              | "Reshuffle" >> beam.Reshuffle()  # spread videos over workers
              | "Process" >> beam.Map(process))
      _ = (rows
           | "ReportRow" >> beam.Map(_report_row)
           | "Gather" >> beam.combiners.ToList()
           | "WriteReport" >> beam.Map(_write_report, report))
      return rows | "Examples" >> beam.FlatMap(_example)

  return _Split()
