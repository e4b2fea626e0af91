"""The alignment task gets what the one training loop (pgvt_jax/train.py) gives every task:
the workdir lock, config checks before anything is built and on resume, SIGTERM -> checkpoint
-> exact resume (with device prefetch), the best checkpoint by the lowest alignment error, and
micro-batches "auto" fitted to the devices. In-process, tiny DeiT ("micro": width 32, depth 2)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from configs import alignment as alignment_config
from pgvt_jax import alignment, metric_writer, planner, targets, train
from pgvt_jax import workdir as workdir_lib

STEPS = 6


def _config(world, steps: int = STEPS):
  c = alignment_config.get_config("baseline,runlocal")
  w = c.synthetic_world
  w.data_dir = str(world)
  w.num_train, w.num_test, w.num_frames, w.image_size = 4, 2, 12, 32
  m = c.model
  m.image_size, m.backbone = 32, "micro"  # DeiT width 32, depth 2, 2 heads, patch 8
  c.data.train_batch_size, c.alignment.eval_batch_size = 4, 8
  c.total_steps, c.log_every, c.eval_every, c.checkpoint_every = steps, 1, 3, steps
  c.async_checkpoints = False
  return c


def _rows(workdir):
  return metric_writer.read_metrics(workdir)


def _losses(workdir) -> dict[int, float]:
  return {r["step"]: r["train/loss"] for r in _rows(workdir) if "train/loss" in r}


def _evals(workdir) -> list:
  return [(r["step"], r["eval/alignment_error"]) for r in _rows(workdir)
          if "eval/alignment_error" in r]


def _final_state(workdir):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(workdir / "checkpoints" / str(step) / "state")


def _history(workdir) -> list[dict]:
  path = workdir / workdir_lib.HISTORY_FILE
  return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- before setup
@pytest.mark.parametrize("case", ["locked", "bad_value"])
def test_refused_before_anything_is_built_or_written(tmp_path, case):
  c = _config(tmp_path / "world")
  workdir = tmp_path / "run"
  if case == "bad_value":
    c.alignment.eval_batch_size = 0
    with pytest.raises(workdir_lib.ConfigError, match=r"config\.alignment\.eval_batch_size=0"):
      train.train_and_evaluate(c, str(workdir))
    assert not workdir.exists()
  else:
    with workdir_lib.WorkdirLock(workdir, "test"):
      with pytest.raises(workdir_lib.WorkdirLockedError, match=f"in use by pid {os.getpid()}"):
        train.train_and_evaluate(c, str(workdir))
      with pytest.raises(workdir_lib.WorkdirLockedError):  # --mode=evaluate too
        (workdir / "checkpoints" / "6").mkdir(parents=True)
        train.evaluate(c, str(workdir))
    assert sorted(p.name for p in workdir.iterdir()) == [".lock", "checkpoints"]
  assert not (tmp_path / "world").exists()  # not even the synthetic world was rendered


# ----------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tmp_path_factory.mktemp("world")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, world, fast_compiles):  # pylint: disable=unused-argument
  """An uninterrupted 6-step run (evals at steps 3 and 6) and what it returned."""
  workdir = tmp_path_factory.mktemp("reference")
  out = train.train_and_evaluate(_config(world), str(workdir))
  return workdir, out


@pytest.mark.e2e  # a tiny training run (~30 s on 2 cores)
def test_reference_run_keeps_the_best_checkpoint_and_fits_micro_batches(reference, world,
                                                                        tmp_path):
  workdir, out = reference
  assert out["step"] == STEPS and 0 <= out["eval/alignment_error"] <= 1
  assert "eval/alignment_error_untrained" in out  # the references, as before the shared loop
  assert sorted(_losses(workdir)) == list(range(1, STEPS + 1))
  evals = _evals(workdir)
  assert [s for s, _ in evals] == [3, 6]
  best_error = min(e for _, e in evals)  # lower is better
  (kept,) = [int(p.name) for p in (workdir / "best").iterdir() if p.name.isdigit()]
  assert dict(evals)[kept] == best_error
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert final["best"]["eval/alignment_error"] == best_error
  assert (workdir / "alignment_pairs.png").stat().st_size > 1000
  # optim.micro_batches "auto" (the default) was decided by compiling for this device.
  run = _history(workdir)[0]
  assert run["mode"] == "train" and run["config"]["optim.micro_batches"] == "auto"
  assert run["fit"]["remat"] == "none" and run["fit"]["micro_batches"] == 1
  # --mode=evaluate reads the best checkpoint (of a copy: the other tests compare with this).
  workdir = tmp_path / "evaluated"
  shutil.copytree(reference[0], workdir, ignore=shutil.ignore_patterns(".lock"))
  got = train.evaluate(_config(world), str(workdir))
  assert got["step"] == kept and got["eval/alignment_error"] == best_error
  assert json.loads((workdir / "eval_metrics.json").read_text()) == got
  assert _history(workdir)[-1]["mode"] == "evaluate"


@pytest.mark.e2e
def test_sigterm_saves_and_the_resumed_run_continues_exactly(reference, world, tmp_path,
                                                             monkeypatch):
  """SIGTERM after step 2 (two more batches staged on the device by the prefetcher): a
  checkpoint at step 2, {"preempted_at_step": 2}; the rerun ends bitwise where the
  uninterrupted run did, every step logged once, the same evals and references."""
  ref_dir, ref_out = reference
  setup = train.setup_experiment
  sigterm_after = [2]

  def preempting_setup(*args, **kwargs):
    exp = setup(*args, **kwargs)
    step_fn, seen = exp.train_step, []

    def step(state, frozen, batch):
      out = step_fn(state, frozen, batch)
      seen.append(1)
      if len(seen) == sigterm_after[0]:
        os.kill(os.getpid(), signal.SIGTERM)  # sets train._PREEMPTED in this (main) thread
      return out
    return dataclasses.replace(exp, train_step=step)

  monkeypatch.setattr(train, "setup_experiment", preempting_setup)
  monkeypatch.setattr(train, "_PREEMPTED", False)
  workdir = tmp_path / "run"
  assert train.train_and_evaluate(_config(world), str(workdir)) == {"preempted_at_step": 2}
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit()) == ["2"]
  assert signal.getsignal(signal.SIGTERM) is not train._on_sigterm  # pylint: disable=protected-access
  sigterm_after[0] = None
  monkeypatch.setattr(train, "_PREEMPTED", False)  # a new process in real life
  out = train.train_and_evaluate(_config(world), str(workdir))

  steps = [r["step"] for r in _rows(workdir) if "train/loss" in r]
  assert steps == list(range(1, STEPS + 1))
  assert _losses(workdir) == _losses(ref_dir)      # exact float equality, every step
  assert _evals(workdir) == _evals(ref_dir)
  for x, y in zip(jax.tree.leaves(_final_state(ref_dir)), jax.tree.leaves(_final_state(workdir))):
    np.testing.assert_array_equal(x, y)
  assert out == ref_out  # references included: carried in the checkpoint's meta
  assert [r["start_step"] for r in _history(workdir)] == [0, 2]


@pytest.mark.e2e
def test_a_changed_config_on_resume_is_named(reference, world, tmp_path):
  workdir = tmp_path / "changed"
  shutil.copytree(reference[0], workdir, ignore=shutil.ignore_patterns(".lock"))
  before = (workdir / "metrics.jsonl").read_text()

  c = _config(world)
  c.optim.lr, c.alignment.window = 1e-4, 3
  with pytest.raises(workdir_lib.ConfigError) as err:
    train.train_and_evaluate(c, str(workdir))
  msg = str(err.value)
  assert "optim.lr: 0.001 -> 0.0001" in msg and "alignment.window: 2 -> 3" in msg
  assert "--config.allow_config_changes=True" in msg

  c = _config(world)
  c.model.backbone = "test"  # width 64: the params' shapes: refused even with the flag
  c.allow_config_changes = True
  with pytest.raises(workdir_lib.ConfigError,
                     match=r"model\.backbone: 'micro' -> 'test'.*new --workdir"):
    train.train_and_evaluate(c, str(workdir))
  assert (workdir / "metrics.jsonl").read_text() == before  # nothing was touched

  c = _config(world)
  c.log_every, c.alignment.eval_batch_size = 2, 4  # bookkeeping: free
  out = train.train_and_evaluate(c, str(workdir))
  assert out["step"] == STEPS
  assert set(_history(workdir)[-1]["changed_on_resume"]) == {"log_every",
                                                             "alignment.eval_batch_size"}


@pytest.mark.e2e
def test_micro_batches_auto_splits_the_batch_when_one_pass_does_not_fit(reference, world,
                                                                        tmp_path, monkeypatch):
  """Less memory than one pass needs: the fit picks 2 passes per step, whose losses are the
  one-pass run's (InfoNCE with 6 frames and window 2: every anchor has negatives, so each
  micro-batch's mean has equal weight)."""
  c = _config(world)
  p = planner.Planner(c, planner.target("local", devices=jax.devices()[:1]),
                      build=alignment.build)
  one, two = (p.report("train", None, "none", k).total_bytes for k in (1, 2))
  assert two < one
  monkeypatch.setattr(targets, "_local_limit", lambda device: (one + two) // 2)
  workdir = tmp_path / "split"
  train.train_and_evaluate(c, str(workdir), run_evals=False)
  (run,) = _history(workdir)
  assert run["fit"]["micro_batches"] == 2 and run["fit"]["remat"] == "none"
  ref, got = _losses(reference[0]), _losses(workdir)
  assert sorted(got) == sorted(ref)
  for step, loss in got.items():
    assert loss == pytest.approx(ref[step], rel=1e-4)
