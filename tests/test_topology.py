"""A run survives a change of machine (issue 19), the parts that run in one process.

The data position is global (the same for every process count): `data.seek` must put a fresh
iterator exactly where reading would have. Checkpoints are moved aside only when damaged, every
host agreeing first; an intact step that does not restore stops the run naming the cause and
touches nothing; a workdir whose steps were all quarantined refuses to restart from step 0.
Consumers read through one function (`checkpointing.find_step` + `read`), also from relative
paths, and a save killed mid-write is never taken for a step. The multi-process runs (2 x 4 ->
1 x 1 -> 1 x 8 -> 2 x 4) are in tests/test_train.py (e2e).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from data_prep import skeletons

from pgvt_jax import checkpointing, data, init_from
from tests.test_device_prefetch import _iterator, _key, _records  # one tiny pipeline
from tests.test_reliability import _damage, _state, two_steps  # noqa: F401  (the fixture)


@pytest.fixture(scope="module")
def source():
  return data.Source(_records(7), skeletons.COCO17, 3)


@pytest.mark.parametrize("k", [0, 1, 3, 5, 11])
def test_seek_puts_a_fresh_iterator_where_reading_would(source, k):
  read = _iterator(source)
  for _ in range(k):
    next(read)
  assert data.position(read.get_state()) == k
  expected = [_key(next(read)) for _ in range(3)]
  sought = _iterator(source)
  data.seek(sought, k)
  assert [_key(next(sought)) for _ in range(3)] == expected


def test_seek_refuses_an_unknown_state_and_a_negative_position(source):
  class Odd:
    def get_state(self):
      return {"cursor": 3}
  with pytest.raises(ValueError, match="cannot seek"):
    data.seek(Odd(), 2)
  with pytest.raises(ValueError, match="< 0"):
    data.seek(_iterator(source), -1)


# ----------------------------------------------------------------------------- quarantine
def _listing(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root)
                for f in fs)


def test_an_intact_step_that_does_not_fit_is_an_error_and_nothing_moves(two_steps):
  before = _listing(two_steps)
  wrong = {**_state(0.0, 0), "extra": jnp.zeros(3)}  # a tree this checkpoint does not hold
  ckpt = checkpointing.Checkpointer(two_steps, keep=3, async_save=False)
  with pytest.raises(checkpointing.CheckpointRestoreError, match="intact.*Nothing was moved"):
    ckpt.restore(jax.eval_shape(lambda: wrong), None)
  ckpt.close()
  assert _listing(two_steps) == before
  assert not (two_steps / checkpointing.CORRUPT_DIR).exists()


def test_a_transient_storage_error_moves_nothing(two_steps, monkeypatch):
  ckpt = checkpointing.Checkpointer(two_steps, keep=3, async_save=False)
  def flaky(*a, **k):
    raise OSError("connection reset by peer")
  monkeypatch.setattr(ckpt.latest, "restore", flaky)
  with pytest.raises(checkpointing.CheckpointRestoreError,
                     match="connection reset.*storage problem"):
    ckpt.restore(jax.eval_shape(lambda: _state(0.0, 0)), None)
  ckpt.close()
  assert sorted(int(p.name) for p in (two_steps / "checkpoints").iterdir()) == [1, 2]


def _flip(step_dir):
  _damage(step_dir, "flip")


def test_only_the_damaged_step_is_moved(two_steps):
  _flip(two_steps / "checkpoints" / "2")
  ckpt = checkpointing.Checkpointer(two_steps, keep=3, async_save=False)
  state, _ = ckpt.restore(jax.eval_shape(lambda: _state(0.0, 0)), None)
  ckpt.close()
  assert int(state["step"]) == 1
  assert [p.name for p in (two_steps / "checkpoints").iterdir()] == ["1"]
  assert [p.name.split("-")[:2] for p in (two_steps / checkpointing.CORRUPT_DIR).iterdir()] == [
      ["checkpoints", "2"]]


def test_a_workdir_emptied_by_quarantine_refuses_to_restart_from_zero(two_steps):
  for s in ("1", "2"):
    _flip(two_steps / "checkpoints" / s)
  ckpt = checkpointing.Checkpointer(two_steps, keep=3, async_save=False)
  with pytest.raises(checkpointing.CheckpointIntegrityError, match="no usable"):
    ckpt.restore(jax.eval_shape(lambda: _state(0.0, 0)), None)
  ckpt.close()
  again = checkpointing.Checkpointer(two_steps, keep=3, async_save=False)
  with pytest.raises(checkpointing.CheckpointIntegrityError, match="would lose the run"):
    again.check_not_emptied()  # what the next start calls before anything else
  (two_steps / checkpointing.CORRUPT_DIR).rename(two_steps / "inspected")
  again.check_not_emptied()  # the user moved them away: a fresh start is allowed
  again.close()


def test_hosts_agree_before_moving_anything(two_steps, monkeypatch):
  """Another host saw step 2 damaged (this one did not): all move it and fall back together;
  another host failing a restore stops this one too, moving nothing."""
  calls = []
  def other_host_saw_damage(flag):
    calls.append(flag)
    return len(calls) == 1 or bool(flag)  # first verdict (step 2's checksums): damaged there
  monkeypatch.setattr(checkpointing, "_any_host", other_host_saw_damage)
  ckpt = checkpointing.Checkpointer(two_steps, keep=3, async_save=False)
  state, _ = ckpt.restore(jax.eval_shape(lambda: _state(0.0, 0)), None)
  assert int(state["step"]) == 1 and calls[0] is False  # this host saw it intact
  verdicts = iter([False, True])  # step 1: intact on every host; its restore failed elsewhere
  monkeypatch.setattr(checkpointing, "_any_host", lambda flag: next(verdicts))
  with pytest.raises(checkpointing.CheckpointRestoreError):
    ckpt.restore(jax.eval_shape(lambda: _state(0.0, 0)), None, step=1)
  ckpt.close()
  assert [p.name for p in (two_steps / "checkpoints").iterdir()] == ["1"]


# ----------------------------------------------------------------------------- one reader
def test_a_save_killed_mid_write_is_not_a_step(two_steps, monkeypatch):
  (two_steps / "checkpoints" / "3.orbax-checkpoint-tmp-1765000000").mkdir()
  assert checkpointing.finished_steps(two_steps / "checkpoints") == [1, 2]
  empty = two_steps / "stage1"
  (empty / "checkpoints" / "4.orbax-checkpoint-tmp-1765000000").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
    init_from.read_trained(str(empty), "pose")
  params, meta = init_from.read_trained(str(two_steps), "pose")
  np.testing.assert_array_equal(params["w"], np.full((64, 64), 2.0, np.float32))


def test_readers_accept_relative_paths_and_never_move_anything(two_steps, monkeypatch):
  _flip(two_steps / "checkpoints" / "2")
  monkeypatch.chdir(two_steps.parent)
  params, meta, step = checkpointing.restore_params(two_steps.name, which="latest")
  assert step == 1 and meta == {"step": 1}
  np.testing.assert_array_equal(params["w"], np.ones((64, 64), np.float32))
  assert (two_steps / "checkpoints" / "2").is_dir()  # skipped, not quarantined
  assert not (two_steps / checkpointing.CORRUPT_DIR).exists()
  with pytest.raises(FileNotFoundError, match="no checkpoint at step 5"):
    checkpointing.find_step(two_steps.name, step=5)


def test_read_places_every_leaf_on_the_current_devices(two_steps):
  ref = checkpointing.find_step(two_steps, which="latest")
  state = checkpointing.read(ref)
  assert state["params"]["w"].sharding.is_fully_replicated
  assert int(state["step"]) == 2
  with pytest.raises(checkpointing.CheckpointRestoreError, match="could not be restored"):
    checkpointing.read(ref, {**jax.eval_shape(lambda: _state(0.0, 0)),
                             "params": {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}})


@pytest.mark.e2e  # starts grain worker processes (a few seconds)
def test_seek_with_worker_processes_puts_the_iterator_where_reading_would(source):
  def workers():
    cfg = data.get_config()
    cfg.update(dict(num_frames=2, pose_frames=4, image_size=8, max_persons=1,
                    train_batch_size=2, num_threads=1, prefetch=1, seed=1, num_workers=2))
    return data.make_train_iterator(cfg, source, process_index=0, process_count=1)
  reference = [_key(b) for b, _ in zip(_iterator(source), range(8))]  # threads only
  for k in (0, 3, 4):
    read = workers()
    for _ in range(k):
      next(read)
    assert data.position(read.get_state()) == k
    sought = workers()
    data.seek(sought, k)
    assert [_key(next(sought)) for _ in range(3)] == reference[k:k + 3]
