"""Reliability pieces in-process (fast): config validation, evaluate on an empty workdir, the
workdir lock, metrics.jsonl repair, checkpoint integrity + fallback, config fingerprints,
optimizer-state structure. The same guarantees through the real CLI: tests/test_train.py."""

from __future__ import annotations

import json
import logging
import os
import socket

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import demo
from pgvt_jax import checkpointing, metric_writer, optim, train
from pgvt_jax import workdir as workdir_lib


@pytest.fixture
def config(tmp_path):
  c = demo.get_config()
  c.synthetic_data.data_dir = str(tmp_path / "never_built")
  return c


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("field,value", [
    ("data.train_batch_size", 0), ("data.eval_batch_size", 0), ("checkpoint_every", 0),
    ("log_every", 0), ("total_steps", -5), ("keep_checkpoints", 0)])
def test_bad_values_are_config_errors_before_anything_runs(config, tmp_path, field, value):
  node = config
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  workdir = tmp_path / "wd"
  with pytest.raises(workdir_lib.ConfigError, match=rf"config\.{field}={value}"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()  # nothing created, nothing compiled
  assert not (tmp_path / "never_built").exists()  # not even the synthetic data


@pytest.mark.parametrize("exists", [False, True])
def test_evaluate_on_an_empty_workdir_fails_cleanly_and_writes_nothing(config, tmp_path,
                                                                      exists):
  workdir = tmp_path / "empty"
  if exists:
    workdir.mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*empty"):
    train.evaluate(config, str(workdir))
  assert workdir.exists() == exists
  if exists:
    assert not list(workdir.iterdir())
  assert not (tmp_path / "never_built").exists()


# ----------------------------------------------------------------------------- lock
def test_second_holder_is_refused_naming_pid_and_host(tmp_path):
  with workdir_lib.WorkdirLock(tmp_path, "train"):
    with pytest.raises(workdir_lib.WorkdirLockedError) as err:
      workdir_lib.WorkdirLock(tmp_path, "evaluate").acquire()
    msg = str(err.value)
    assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg and str(tmp_path) in msg
  # Released: the next run gets it.
  with workdir_lib.WorkdirLock(tmp_path, "train"):
    pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  (tmp_path / workdir_lib.LOCK_FILE).write_text(
      json.dumps({"pid": 999999, "host": "gone-host", "mode": "train"}) + "\n")
  with caplog.at_level(logging.WARNING):
    with workdir_lib.WorkdirLock(tmp_path, "train"):
      holder = json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())
      assert holder["pid"] == os.getpid()
  assert "stale lock" in caplog.text and "999999" in caplog.text


# ----------------------------------------------------------------------------- metrics
def test_torn_metrics_tail_is_repaired_and_tolerated(tmp_path):
  path = tmp_path / metric_writer.METRICS_FILE
  path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/loss": 1.5}\n'
                  '{"step": 3, "train/lo')
  assert [r["step"] for r in metric_writer.read_metrics(tmp_path)] == [1, 2]  # tolerated
  writer = metric_writer.MetricWriter(tmp_path, enabled=True)  # repairs on open
  writer.write(3, {"train/loss": 1.25})
  writer.close()
  rows = [json.loads(l) for l in path.read_text().splitlines()]  # every line parses
  assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["train/loss"] == 1.25


def test_resume_drops_rows_of_redone_steps(tmp_path):
  writer = metric_writer.MetricWriter(tmp_path, enabled=True)
  for step in range(1, 7):
    writer.write(step, {"train/loss": float(step)})
  writer.write(4, {"eval/top1": 0.5})
  assert writer.drop_after(4) == 2
  assert [r["step"] for r in metric_writer.read_metrics(tmp_path)] == [1, 2, 3, 4, 4]
  writer.close()


# ----------------------------------------------------------------------------- checkpoints
def _state(value: float, step: int) -> dict:
  return {"params": {"w": jnp.full((64, 64), value, jnp.float32)},
          "opt": {"mu": jnp.full((64,), value, jnp.float32)}, "step": jnp.int32(step)}


@pytest.fixture
def two_steps(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path, keep=3, async_save=False)
  for step in (1, 2):
    ckpt.save(step, _state(float(step), step), None, {"step": step}, force=True)
  ckpt.wait()
  ckpt.close()
  return tmp_path


def _damage(step_dir, how):
  files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  victim = files[-1]  # the biggest file holds the array bytes
  data = bytearray(victim.read_bytes())
  if how == "flip":
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
  elif how == "truncate":
    victim.write_bytes(bytes(data[:len(data) // 3]))
  else:
    victim.unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_damaged_latest_falls_back_to_the_previous_step(two_steps, how, caplog):
  _damage(two_steps / "checkpoints" / "2", how)
  ckpt = checkpointing.Checkpointer(two_steps, keep=3, async_save=False)
  abstract = jax.eval_shape(lambda: _state(0.0, 0))
  with caplog.at_level(logging.WARNING):
    state, meta = ckpt.restore(abstract, None)
  ckpt.close()
  assert int(state["step"]) == 1 and meta == {"step": 1}
  np.testing.assert_array_equal(state["params"]["w"], 1.0)
  assert "step 2 is damaged" in caplog.text and "falling back" in caplog.text
  assert not (two_steps / "checkpoints" / "2").exists()  # out of the way of the redo
  assert len(list((two_steps / checkpointing.CORRUPT_DIR).iterdir())) == 1


def test_a_step_without_checksums_is_restored_unverified(two_steps, caplog):
  (two_steps / "checkpoints" / "2" / checkpointing.CHECKSUMS_FILE).unlink()
  ckpt = checkpointing.Checkpointer(two_steps, keep=3, async_save=False)
  with caplog.at_level(logging.WARNING):
    state, _ = ckpt.restore(jax.eval_shape(lambda: _state(0.0, 0)), None)
  ckpt.close()
  assert int(state["step"]) == 2 and "unverified" in caplog.text


def test_nothing_usable_is_a_clear_error(two_steps):
  for step in ("1", "2"):
    _damage(two_steps / "checkpoints" / step, "flip")
  ckpt = checkpointing.Checkpointer(two_steps, keep=3, async_save=False)
  with pytest.raises(checkpointing.CheckpointIntegrityError, match="no usable"):
    ckpt.restore(jax.eval_shape(lambda: _state(0.0, 0)), None)
  ckpt.close()


def test_a_non_finite_state_is_never_saved(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path, keep=3, async_save=False)
  with pytest.raises(FloatingPointError, match="step 3"):
    ckpt.save(3, _state(float("nan"), 3), None, {}, force=True)
  ckpt.close()
  assert not (tmp_path / "checkpoints" / "3").exists()


def test_restore_params_for_inference(two_steps):
  _damage(two_steps / "checkpoints" / "2", "flip")
  params, meta, step = checkpointing.restore_params(two_steps, which="latest")
  assert step == 1 and meta == {"step": 1}
  np.testing.assert_array_equal(params["w"], np.ones((64, 64), np.float32))
  with pytest.raises(FileNotFoundError):
    checkpointing.restore_params(two_steps / "nothing")


# ----------------------------------------------------------------------------- fingerprint
def test_resume_names_changed_fields_and_sorts_them(config, tmp_path):
  saved = {"config": workdir_lib.flat_config(config)}
  same = workdir_lib.check_resume(config, saved, 8, tmp_path)
  assert same == []
  changed = ml_collections.ConfigDict(config.to_dict())
  changed.log_every, changed.mesh.fsdp = 7, 2  # bookkeeping: free
  assert workdir_lib.check_resume(changed, saved, 8, tmp_path) == ["log_every", "mesh.fsdp"]
  changed.optim.lr, changed.data.train_batch_size = 1e-5, 4
  with pytest.raises(workdir_lib.ConfigError) as err:
    workdir_lib.check_resume(changed, saved, 8, tmp_path)
  msg = str(err.value)
  assert "optim.lr" in msg and "data.train_batch_size" in msg and "allow_config_changes" in msg
  assert "step 8" in msg
  changed.allow_config_changes = True
  assert set(workdir_lib.check_resume(changed, saved, 8, tmp_path)) >= {
      "optim.lr", "data.train_batch_size"}
  changed.model.video_frames = 2
  with pytest.raises(workdir_lib.ConfigError, match=r"model\.video_frames.*new --workdir"):
    workdir_lib.check_resume(changed, saved, 8, tmp_path)  # even with the flag


def test_resume_from_the_runs_own_config_json(config, tmp_path):
  """config.json holds the derived fields (J, pixel statistics) that the checkpoint's config
  left unset: compared after deriving both sides, it resumes; a real change is still named."""
  from pgvt_jax.models import factory  # pylint: disable=g-import-not-at-top
  saved = {"config": workdir_lib.flat_config(config)}
  written = ml_collections.ConfigDict(config.to_dict())
  factory.configure_data(written)   # what config.json holds
  assert written.data.num_joints != config.data.num_joints
  with pytest.raises(workdir_lib.ConfigError, match="data.num_joints"):
    workdir_lib.check_resume(written, saved, 8, tmp_path)  # without deriving: refused
  assert workdir_lib.check_resume(written, saved, 8, tmp_path,
                                  derive=factory.configure_data) == []
  written.data.pixel_mean = (0.5, 0.5, 0.5)  # a real change to what the model computes
  with pytest.raises(workdir_lib.ConfigError, match="pixel_mean"):
    workdir_lib.check_resume(written, saved, 8, tmp_path, derive=factory.configure_data)


def test_clipping_on_or_off_keeps_the_optimizer_state_structure(config):
  params = {"w": jnp.ones((3, 3))}
  structures = []
  for norm in (0.0, 1.0):
    config.optim.grad_clip_norm = norm
    tx = optim.make_optimizer(config.optim, optax_schedule := (lambda s: 1e-3))
    structures.append(jax.tree.structure(tx.init(params)))
    del optax_schedule
  assert structures[0] == structures[1]


@pytest.mark.e2e  # a whole training run (20-40 s)
def test_the_same_config_object_runs_twice(tmp_path, synthetic_dir):
  """A notebook's resume cell reruns train_and_evaluate with the config it already used: setup
  must not write derived fields (pixel statistics, joints) into it, or the resume is refused
  as a changed config."""
  from tests import predict_fixtures  # pylint: disable=g-import-not-at-top
  config = predict_fixtures.tiny_config(synthetic_dir, steps=2)
  before = config.to_dict()
  predict_fixtures.train_run(config, tmp_path / "run", evaluate=False)
  assert config.to_dict() == before
  config.total_steps = 3
  config.allow_config_changes = True  # total_steps is a training field: named, then accepted
  predict_fixtures.train_run(config, tmp_path / "run", evaluate=False)
