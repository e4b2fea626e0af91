"""grain pipelines: records -> per-host batches (train: infinite, eval: one pass).

  train: MapDataset.range(num_records) -> seed, shuffle, repeat (one global
         order) -> random_map(read record, ClipProcessor.train) -> this
         host's slice of each global batch -> batch -> to_iter_dataset
         (threads) -> mp_prefetch (processes, optional) -> DatasetIterator
  eval:  MapDataset.range(this host's rows) -> map(row -> (video, view) or
         padding) -> batch -> to_iter_dataset -> mp_prefetch

Everything before `to_iter_dataset` is a MapDataset, so global batch b is a
pure function of (seed, b): the same global batches come out for any number of
threads, worker processes or hosts (a 2-host run trains on exactly the batches
of a 1-host run), and the iterator state (get_state/set_state, or orbax
`grain.checkpoint.CheckpointSave/Restore`) is just a position.
"""

from __future__ import annotations

import dataclasses

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from pgvt_jax.data import config as config_lib
from pgvt_jax.data import processing
from pgvt_jax.data import sources


def _process_index_count(process_index, process_count):
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  return process_index, process_count


class _TrainMap(grain.transforms.RandomMap):
  """Record index -> augmented training example."""

  def __init__(self, processor: processing.ClipProcessor, records):
    self.processor = processor
    self.records = records

  def random_map(self, index: int, rng: np.random.Generator):
    index = int(index)
    return self.processor.train(self.records[index], index, rng)


@dataclasses.dataclass(frozen=True)
class _HostRow(grain.transforms.Map):
  """k-th row of host p -> global row (host p's slice of each global batch)."""
  per_host: int
  global_batch: int
  process_index: int

  def map(self, k: int) -> int:
    b, j = divmod(int(k), self.per_host)
    return b * self.global_batch + self.process_index * self.per_host + j


class _EvalRow(grain.transforms.Map):
  """Global row r -> view (r % V) of video (r // V), or padding past the end."""

  def __init__(self, processor, records, num_rows: int):
    self.processor = processor
    self.records = records
    self.num_rows = num_rows

  def map(self, row: int):
    if row >= self.num_rows:
      return self.processor.padding()
    video, view = divmod(int(row), self.processor.num_views)
    return self.processor.view(self.records[video], video, view)


def _finish(ds: grain.MapDataset, cfg) -> grain.IterDataset:
  """Threads within this process, then optionally worker processes."""
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch))
  if cfg.num_workers > 0:
    # grain's workers read its absl flags; outside an absl app (tests,
    # notebooks) nothing has parsed them, so take the defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=cfg.num_workers,
        per_worker_buffer_size=max(cfg.prefetch, 1)))
  return it


def _prepare(cfg, source, split):
  config_lib.validate(cfg)
  if source is None:
    source = sources.open_source(cfg, split)
  config_lib.check_num_joints(cfg, source.skeleton.num_joints,
                              source.skeleton.name)
  if len(source) == 0:
    raise ValueError(f"split {split!r} has no records")
  return source, processing.ClipProcessor(cfg, source.skeleton)


def train_dataset(cfg: ml_collections.ConfigDict,
                  source: sources.Source | None = None, *,
                  process_index: int | None = None,
                  process_count: int | None = None) -> grain.IterDataset:
  """Infinite training batches for this host (see `make_train_iterator`)."""
  source, processor = _prepare(cfg, source, cfg.train_split)
  pi, pc = _process_index_count(process_index, process_count)
  batch = config_lib.per_host_batch_size(cfg.train_batch_size, pc,
                                         "train_batch_size")
  if len(source) < pc:
    raise ValueError(f"{len(source)} training records cannot be shared by "
                     f"{pc} processes")
  if cfg.flip and not source.flip_safe:
    raise ValueError("config.data.flip=True, but this dataset's metadata says "
                     "a horizontal flip changes its labels "
                     "(horizontal_flip_safe=False); set config.data.flip=False")
  # Indices, not records, are shuffled: the record is read (and its frames
  # decoded) only inside the map, in the prefetch threads/workers.
  order = grain.MapDataset.range(len(source)).seed(cfg.seed).shuffle()
  # Draws depend only on (seed, position in the global repeated sequence).
  examples = order.repeat(None).random_map(
      _TrainMap(processor, source.records))
  # Host p reads rows p*B .. (p+1)*B-1 of every global batch of G = P*B rows:
  # disjoint across hosts, together exactly the 1-host batches.
  num_rows = (len(examples) // cfg.train_batch_size) * batch
  ds = grain.MapDataset.range(num_rows).map(
      _HostRow(batch, cfg.train_batch_size, pi)).map(examples.__getitem__)
  ds = ds.batch(batch, drop_remainder=True)
  return _finish(ds, cfg)


@dataclasses.dataclass(frozen=True)
class EvalInfo:
  """Shape of one evaluation pass.

  num_rows = num_videos * num_views real rows; num_batches global batches of
  config.data.eval_batch_size, the last padded with valid=False rows.
  """
  num_videos: int
  num_views: int
  num_rows: int
  num_batches: int


def eval_dataset(cfg: ml_collections.ConfigDict,
                 source: sources.Source | None = None, *,
                 process_index: int | None = None,
                 process_count: int | None = None
                 ) -> tuple[grain.IterDataset, EvalInfo]:
  """One pass over every (video, view) row, identically sized on all hosts.

  Global batch b holds rows b*B .. (b+1)*B-1 (B = eval_batch_size); host p
  produces its slice p*B/P .. (p+1)*B/P - 1 of each, so every host yields
  the same number of batches. Rows are video-major (the views of a video
  are adjacent).
  """
  source, processor = _prepare(cfg, source, cfg.eval_split)
  pi, pc = _process_index_count(process_index, process_count)
  gb = cfg.eval_batch_size
  batch = config_lib.per_host_batch_size(gb, pc, "eval_batch_size")
  num_rows = len(source) * processor.num_views
  num_batches = -(-num_rows // gb)

  rows = grain.MapDataset.range(num_batches * batch).map(
      _HostRow(batch, gb, pi))
  ds = rows.map(_EvalRow(processor, source.records, num_rows))
  ds = ds.batch(batch, drop_remainder=True)
  info = EvalInfo(len(source), processor.num_views, num_rows, num_batches)
  return _finish(ds, cfg), info


def make_train_iterator(cfg: ml_collections.ConfigDict,
                        source: sources.Source | None = None, *,
                        process_index: int | None = None,
                        process_count: int | None = None
                        ) -> grain.DatasetIterator:
  """This host's training batches, forever; checkpointable.

  Args:
    cfg: `config.data`.
    source: records to read; default `open_source(cfg, cfg.train_split)`.
    process_index, process_count: default jax.process_index()/count().

  Returns:
    A grain DatasetIterator of per-host batches (see `pgvt_jax.data` for the
    keys); `get_state()`/`set_state()` resume exactly, and it can be saved
    in an orbax Composite with `grain.checkpoint.CheckpointSave(it)`.
  """
  return iter(train_dataset(cfg, source, process_index=process_index,
                            process_count=process_count))


def position(state: dict) -> int:
  """Global batches consumed, from a train iterator's grain state (any process count)."""
  if "next_index" in state:            # threads only: one index over this host's batches
    return int(state["next_index"])
  if "iterators_in_use_states" in state:  # mp_prefetch: worker w produced batches w, w+W, ...
    return sum(int(s["next_index"]) for s in state["iterators_in_use_states"])
  raise ValueError(f"unknown grain iterator state (keys {sorted(state)}): cannot read its "
                   "position")


def seek(iterator: grain.DatasetIterator, global_batches: int) -> None:
  """Moves a fresh train iterator to global batch `global_batches`.

  Host p's k-th batch is its slice of global batch k (`train_dataset`), so the position in
  global batches is the same on every host and for every process count: this is how a run
  saved by N processes resumes on M. The state written is what grain's own iterator has after
  reading that many batches (checked against reading in tests/test_topology.py).
  """
  k = int(global_batches)
  if k < 0:
    raise ValueError(f"data position {k} < 0")
  state = iterator.get_state()
  if "next_index" in state:
    state = {**state, "next_index": k}
  elif "iterators_in_use_states" in state:
    workers = len(state["iterators_in_use_states"])
    state = {**state, "next_index_in_cycle": k % workers, "future_states": {},
             "exhausted": [0] * workers,
             "iterators_in_use_states": [
                 {**s, "next_index": -(-(k - w) // workers)}
                 for w, s in enumerate(state["iterators_in_use_states"])]}
  else:
    raise ValueError(f"unknown grain iterator state (keys {sorted(state)}): cannot seek")
  iterator.set_state(state)


def make_eval_iterator(cfg: ml_collections.ConfigDict,
                       source: sources.Source | None = None, *,
                       process_index: int | None = None,
                       process_count: int | None = None
                       ) -> tuple[grain.DatasetIterator, EvalInfo]:
  """A fresh one-pass iterator over this host's eval batches, and its size."""
  ds, info = eval_dataset(cfg, source, process_index=process_index,
                          process_count=process_count)
  return iter(ds), info


def batch_spec(cfg: ml_collections.ConfigDict, num_joints: int, *,
               train: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
  """Global batch shapes/dtypes (for `jax.eval_shape` / model init).

  Args:
    cfg: `config.data`.
    num_joints: V of the layout (J = V * max_persons).
    train: training batch (no view_index/valid) or eval batch.
  """
  spec = processing.example_spec(cfg, num_joints, eval_rows=not train)
  b = cfg.train_batch_size if train else cfg.eval_batch_size
  return {k: jax.ShapeDtypeStruct((b, *s), d) for k, (s, d) in spec.items()}
