"""Host-to-device prefetch (pgvt_jax/data/prefetch.py) and the training loop that uses it.

The thread reads ahead of the step; checkpoints must hold the position of the batches the step
consumed. Shown on grain iterators (save/restore through the real Checkpointer) and end to end:
a run preempted by SIGTERM with batches staged ahead, then resumed, consumes exactly the batches
(and ends in exactly the state) of an uninterrupted run without prefetch; evals match; no
thread is left behind; a producer error reaches the caller with its message.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from data_prep import skeletons

from pgvt_jax import checkpointing, data, train
from pgvt_jax import experiment as experiment_lib
from tests import predict_fixtures

THREAD = "pgvt-device-prefetch"


def _threads() -> list[threading.Thread]:
  return [t for t in threading.enumerate() if t.name == THREAD]


def _records(n: int) -> list[dict]:
  rng = np.random.default_rng(0)
  return [{"video_id": f"v{i}".encode(), "label": i % 3,
           "frames": rng.integers(0, 256, (6, 12, 16, 3), dtype=np.uint8),
           "keypoints": (rng.random((6, 1, 17, 2)) * (16, 12)).astype(np.float32),
           "keypoint_score": rng.random((6, 1, 17)).astype(np.float32)} for i in range(n)]


def _iterator(source):
  cfg = data.get_config()
  cfg.update(dict(num_frames=2, pose_frames=4, image_size=8, max_persons=1,
                  train_batch_size=2, num_threads=1, prefetch=1, seed=1))
  return data.make_train_iterator(cfg, source, process_index=0, process_count=1)


@pytest.fixture(scope="module")
def source():
  return data.Source(_records(5), skeletons.COCO17, 3)


def _mesh_sharding():
  return data.batch_sharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)))


def _key(batch) -> tuple:
  """What identifies a batch: its records and its random augmentation draws."""
  return (tuple(np.asarray(batch["video_index"]).tolist()),
          float(np.asarray(batch["pose"]).sum()))


@pytest.mark.parametrize("depth", [0, 3])
def test_checkpoint_saves_the_consumed_position_not_the_read_ahead(source, tmp_path, depth):
  reference = _iterator(source)
  expected = [_key(next(reference)) for _ in range(9)]
  it = _iterator(source)
  batches = data.DevicePrefetcher(it, _mesh_sharding(), depth=depth)
  got = [_key(next(batches)) for _ in range(4)]
  assert got == expected[:4]
  if depth:  # the thread has read ahead: saving the live iterator would skip batches
    deadline = time.time() + 30
    while it.get_state() == batches.consumed_state().state() and time.time() < deadline:
      time.sleep(0.01)
    assert it.get_state() != batches.consumed_state().state()
  ckpt = checkpointing.Checkpointer(tmp_path, async_save=True)
  ckpt.save(4, {"x": jnp.zeros(2)}, batches.consumed_state(), {}, force=True)
  got += [_key(next(batches)) for _ in range(2)]  # the loop goes on while the save runs
  batches.close()
  ckpt.close()
  assert got == expected[:6]

  fresh = _iterator(source)
  ckpt = checkpointing.Checkpointer(tmp_path, async_save=False)
  ckpt.restore(checkpointing.abstract_like({"x": jnp.zeros(2)}), fresh)
  ckpt.close()
  assert [_key(b) for b in data.DevicePrefetcher(fresh, _mesh_sharding(), depth=depth,
                                                 limit=5)] == expected[4:9]
  assert not _threads()


class _Failing:
  """A grain-like iterator whose third batch fails."""

  def __init__(self):
    self.n = 0

  def get_state(self):
    return {"n": self.n}

  def __next__(self):
    self.n += 1
    if self.n == 3:
      raise ValueError("record 17 of /data/train.array_record: frames field is empty")
    return {"x": np.full((2, 3), self.n, np.float32)}


def test_a_producer_error_reaches_the_caller_with_its_message():
  batches = data.DevicePrefetcher(_Failing(), _mesh_sharding(), depth=2)
  assert float(next(batches)["x"][0, 0]) == 1
  assert float(next(batches)["x"][0, 0]) == 2
  with pytest.raises(ValueError, match="record 17 of /data/train.array_record"):
    next(batches)
  with pytest.raises(StopIteration):
    next(batches)
  batches.close()
  assert not _threads()


def test_the_thread_stops_at_the_limit_and_on_close_with_a_full_queue(source):
  batches = data.DevicePrefetcher(_iterator(source), _mesh_sharding(), depth=2, limit=3)
  assert len(list(batches)) == 3
  batches._thread.join(10)  # pylint: disable=protected-access
  assert not _threads()
  with data.DevicePrefetcher(_iterator(source), _mesh_sharding(), depth=2) as batches:
    next(batches)
    time.sleep(0.2)  # the producer blocks on the full queue
    assert len(_threads()) == 1
  assert not _threads()
  with pytest.raises(ValueError, match="depth"):
    data.DevicePrefetcher(_iterator(source), _mesh_sharding(), depth=-1)


# ----------------------------------------------------------------------------- training loop
STEPS = 8


def _config(data_dir, workdir_prefetch: int):
  c = predict_fixtures.tiny_config(str(data_dir), "pose_only", steps=STEPS, pose_format="coords")
  c.synthetic_data.num_train, c.synthetic_data.num_test = 24, 6
  c.data.train_batch_size, c.data.eval_batch_size = 4, 6
  c.data.num_threads, c.data.device_prefetch = 1, workdir_prefetch
  c.log_every, c.checkpoint_every, c.eval_every = 1, 4, 4
  c.async_checkpoints = True
  return c


@pytest.fixture
def recorded(monkeypatch):
  """Records every batch the train step consumes; `sigterm_after[0] = k` preempts after k."""
  seen: list = []
  sigterm_after = [None]
  setup = experiment_lib.setup_experiment

  def recording_setup(*args, **kwargs):
    exp = setup(*args, **kwargs)
    step_fn = exp.train_step

    def step(state, frozen, batch):
      seen.append(_key(batch))
      out = step_fn(state, frozen, batch)
      if sigterm_after[0] is not None and len(seen) == sigterm_after[0]:
        os.kill(os.getpid(), signal.SIGTERM)  # sets train._PREEMPTED in this (main) thread
      return out
    return dataclasses.replace(exp, train_step=step)

  monkeypatch.setattr(train, "setup_experiment", recording_setup)
  monkeypatch.setattr(train, "_PREEMPTED", False)
  return seen, sigterm_after


def _evals(workdir) -> list:
  from pgvt_jax import metric_writer  # pylint: disable=g-import-not-at-top
  return [(r["step"], r["eval/top1"]) for r in metric_writer.read_metrics(workdir)
          if "eval/top1" in r]


@pytest.mark.e2e  # a whole training run (20-40 s)
def test_preempted_prefetching_run_resumes_onto_the_uninterrupted_batches(
    tmp_path, recorded, fast_compiles):
  del fast_compiles
  seen, sigterm_after = recorded
  data_dir = tmp_path / "synthetic"
  ref_dir, run_dir = tmp_path / "reference", tmp_path / "run"
  train.train_and_evaluate(_config(data_dir, 0), str(ref_dir))  # no prefetch at all
  reference = list(seen)
  assert len(reference) == STEPS and len(set(reference)) > 1
  seen.clear()

  sigterm_after[0] = 3  # 2 more batches are staged on device when SIGTERM arrives
  out = train.train_and_evaluate(_config(data_dir, 2), str(run_dir))
  assert out == {"preempted_at_step": 3}
  assert not _threads(), "the prefetch thread outlived the preempted run"
  assert signal.getsignal(signal.SIGTERM) is not train._on_sigterm  # handler restored
  sigterm_after[0] = None
  train._PREEMPTED = False  # pylint: disable=protected-access  # a new process in real life
  train.train_and_evaluate(_config(data_dir, 2), str(run_dir))
  assert not _threads()

  assert seen == reference  # steps 1-3, then 4-8 after the resume: nothing skipped or repeated
  for x, y in zip(jax.tree.leaves(_final_state(ref_dir)), jax.tree.leaves(_final_state(run_dir))):
    np.testing.assert_array_equal(x, y)
  assert _evals(run_dir) == _evals(ref_dir) and len(_evals(ref_dir)) == 2  # steps 4 and 8


def _final_state(workdir):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(workdir / "checkpoints" / str(step) / "state")
