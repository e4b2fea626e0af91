"""Host-to-device prefetch: a background thread stages the next global batches during a step.

    with DevicePrefetcher(train_iter, batch_sharding, depth=2, limit=steps_left) as batches:
      for step in ...:
        batch = next(batches)                       # global jax.Arrays, already transferred
        state, metrics = train_step(state, frozen, batch)
        ckpt.save(step, state, batches.consumed_state(), meta)

The thread takes host batches from the grain iterator, assembles them into global sharded
arrays (`to_global`: `jax.make_array_from_process_local_data`) and queues up to `depth` of
them, so reading/decoding the next batch and its host-to-device copy overlap the running step.

Checkpoints must record the batches the loop CONSUMED, not the ones read ahead: the thread
captures the iterator's state right after taking each batch and queues it with the batch;
`consumed_state()` returns the state queued with the last batch handed out (a frozen
snapshot, safe to save asynchronously). Restoring that state and reading on gives exactly the
batches an uninterrupted run would have consumed next. The iterator itself is only touched by
the thread while it runs (restore it before creating the prefetcher).

An exception in the thread (a bad record, a decode error) is re-raised, unchanged, by the
`next()` that would have returned that batch; `close()` (or leaving the `with`) stops and
joins the thread. depth=0 reads synchronously in the caller's thread (no thread at all).
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any, Callable, Iterator, Optional

from absl import logging

from pgvt_jax.data import sharding as sharding_lib

_END = object()  # the iterator is exhausted, or `limit` batches were produced
_POLL_S = 0.1    # how often blocked puts/gets look at the stop flag / the thread


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


class IteratorState:
  """A frozen grain iterator state that orbax's grain handler saves like the iterator itself.

  `grain.checkpoint.CheckpointSave(item)` writes `item.get_state()` (bytes, for non-dataset
  iterators); the JSON written is what the live iterator would have written at that point,
  and `CheckpointRestore` into a real iterator reads it back.
  """

  def __init__(self, state: dict):
    self._json = json.dumps(state, indent=4)

  def get_state(self) -> bytes:
    return self._json.encode()

  def state(self) -> dict:
    return json.loads(self._json)


class DevicePrefetcher(Iterator[dict]):
  """Global batches from a per-host grain iterator, staged `depth` batches ahead.

  Args:
    iterator: per-host batches (a grain DatasetIterator: `get_state()` is captured per batch).
    sharding: the step's batch sharding (NamedSharding sharding dimension 0, or a Mesh).
    depth: batches staged ahead; 0 = read and transfer in `next()` itself.
    limit: produce at most this many batches (the steps left), then stop reading.
    put: host batch, sharding -> global arrays: `to_global` (each host its own rows) or
      `whole_to_global` (every host holds the whole global batch).
  """

  def __init__(self, iterator, sharding, *, depth: int = 2, limit: Optional[int] = None,
               put: Callable[[dict, Any], dict] = sharding_lib.to_global):
    if depth < 0:
      raise ValueError(f"prefetch depth must be >= 0, got {depth}")
    self._it = iterator
    self._sharding = sharding
    self._put_global = put
    self._depth = depth
    self._limit = limit
    self._consumed = IteratorState(iterator.get_state())
    self._done = False
    self._stop = threading.Event()
    self._thread = None
    if depth > 0:
      self._queue: queue.Queue = queue.Queue(maxsize=depth)
      self._thread = threading.Thread(target=self._produce, name="pgvt-device-prefetch",
                                      daemon=True)
      self._thread.start()

  # ------------------------------------------------------------------ producer (thread)
  def _read(self) -> tuple[dict, dict]:
    host = next(self._it)
    state = self._it.get_state()
    return self._put_global(dict(host), self._sharding), state

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=_POLL_S)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self) -> None:
    produced = 0
    try:
      while not self._stop.is_set():
        if self._limit is not None and produced >= self._limit:
          break
        try:
          item = self._read()
        except StopIteration:
          break
        if not self._put(item):
          return
        produced += 1
      self._put(_END)
    except BaseException as e:  # pylint: disable=broad-except  # re-raised in the consumer
      self._put(_Failure(e))

  # ------------------------------------------------------------------ consumer
  def __next__(self) -> dict:
    if self._done:
      raise StopIteration
    if self._thread is None:
      if self._limit is not None and self._limit <= 0:
        self._done = True
        raise StopIteration
      batch, state = self._read()
      if self._limit is not None:
        self._limit -= 1
    else:
      item = self._get()
      if item is _END:
        self._done = True
        raise StopIteration
      if isinstance(item, _Failure):
        self._done = True
        raise item.error
      batch, state = item
    self._consumed = IteratorState(state)
    return batch

  def _get(self):
    while True:
      try:
        return self._queue.get(timeout=_POLL_S)
      except queue.Empty:
        if not self._thread.is_alive() and self._queue.empty():
          self._done = True
          raise RuntimeError("the device prefetch thread stopped without a batch or an "
                             "error") from None

  def consumed_state(self) -> IteratorState:
    """The iterator state after the last batch `next()` returned: what a checkpoint saves
    (`grain.checkpoint.CheckpointSave` accepts it)."""
    return self._consumed

  def close(self, timeout: float = 60.0) -> None:
    """Stops the thread and joins it; batches staged but not consumed are dropped."""
    self._stop.set()
    if self._thread is None:
      return
    while True:  # unblock a producer waiting on a full queue, drop staged device arrays
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout)
    if self._thread.is_alive():
      logging.warning("the device prefetch thread did not stop within %.0f s (still reading "
                      "a batch); leaving it (daemon)", timeout)

  def __enter__(self) -> "DevicePrefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
