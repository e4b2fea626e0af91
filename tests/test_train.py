"""The main job end to end at tiny size, as a user runs it: `python -m pgvt_jax.main ...`.

One uninterrupted reference run; a run killed with SIGKILL, then preempted with SIGTERM, then
finished, must end bitwise identical to it (CPU); 8 fake devices and 2 processes give the same
losses; a NaN stops the run naming the step and leaves the last good checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = 12


def _overrides(data_dir: Path) -> list[str]:
  o = {
      "synthetic_data.data_dir": data_dir, "synthetic_data.num_train": 48,
      "synthetic_data.num_test": 16, "synthetic_data.num_frames": 16,
      "synthetic_data.image_size": 32,
      "data.num_frames": 4, "data.pose_frames": 8, "data.train_batch_size": 8,
      "data.eval_batch_size": 8, "data.num_threads": 1, "data.prefetch": 1,
      "model.video_frames": 4, "model.pose_frames": 8,
      "total_steps": STEPS, "log_every": 1, "checkpoint_every": 4, "eval_every": 0,
      "keep_checkpoints": 3, "async_checkpoints": True,
  }
  return [f"--config.{k}={v}" for k, v in o.items()]


# The runs compile the same programs: share a persistent compilation cache between them.
_CACHE = Path(os.environ.get("PGVT_TEST_COMPILE_CACHE", "/tmp/pgvt_jax_test_compile_cache"))


def _env(devices: int = 1) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_COMPILATION_CACHE_DIR=str(_CACHE),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _start(workdir: Path, data_dir: Path, *extra: str, devices: int = 1) -> subprocess.Popen:
  # pose_only: the trainer is under test, not the model (the demo's default is PGVT).
  cmd = [sys.executable, "-m", "pgvt_jax.main", "--config=configs/demo.py:pose_only",
         f"--workdir={workdir}", *_overrides(data_dir), *extra]
  return subprocess.Popen(cmd, cwd=REPO, env=_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
  out, _ = proc.communicate(timeout=timeout)
  return out


def _run(workdir: Path, data_dir: Path, *extra: str, devices: int = 1) -> str:
  proc = _start(workdir, data_dir, *extra, devices=devices)
  out = _finish(proc)
  assert proc.returncode == 0, out[-4000:]
  return out


def _losses(workdir: Path) -> dict[int, float]:
  """Step -> training loss; a step logged twice (re-run after a kill) keeps its last value."""
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _interrupt_after(proc: subprocess.Popen, workdir: Path, step: int, sig: int) -> None:
  """Sends `sig` once metrics.jsonl shows `step` (the process may be a few steps further)."""
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if (workdir / "metrics.jsonl").exists() and max(_losses(workdir), default=0) >= step:
      proc.send_signal(sig)
      return
    time.sleep(0.05)
  raise AssertionError(f"run never reached step {step}: {proc.communicate()[0][-3000:]}")


def _final_state(workdir: Path) -> dict:
  step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(workdir / "checkpoints" / str(step) / "state")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("reference")
  _run(workdir, data_dir)
  return workdir


def test_reference_run_writes_everything(reference):
  for name in ("metrics.jsonl", "config.json", "final_metrics.json", "training_curves.png",
               "eval_confusion.npy", "eval_confusion.png", "eval_per_class_accuracy.json"):
    assert (reference / name).exists(), name
  losses = _losses(reference)
  assert sorted(losses) == list(range(1, STEPS + 1))
  assert all(np.isfinite(list(losses.values())))
  final = json.loads((reference / "final_metrics.json").read_text())
  assert final["step"] == STEPS and 0 <= final["eval/top1"] <= 1
  assert sorted(int(p.name) for p in (reference / "checkpoints").iterdir()
                if p.name.isdigit()) == [4, 8, 12]


def test_rerun_resumes_instead_of_restarting(reference, data_dir):
  before = (reference / "metrics.jsonl").read_text()
  out = _run(reference, data_dir)
  assert f"Resuming from step {STEPS}" in out
  after = (reference / "metrics.jsonl").read_text()
  assert after.startswith(before)  # appended to, not rewritten
  assert "train/loss" not in after[len(before):]  # no training step was run again


def test_sigkill_then_sigterm_then_resume_is_bitwise_identical(reference, tmp_path, data_dir):
  workdir = tmp_path / "interrupted"
  proc = _start(workdir, data_dir)
  _interrupt_after(proc, workdir, 5, signal.SIGKILL)
  _finish(proc)
  assert proc.returncode == -signal.SIGKILL
  proc = _start(workdir, data_dir)
  _interrupt_after(proc, workdir, 9, signal.SIGTERM)
  out = _finish(proc)
  assert proc.returncode == 0, out[-3000:]
  assert "Preempted at step" in out
  _run(workdir, data_dir)
  assert _losses(workdir) == _losses(reference)  # exact float equality, every step
  ref_final = json.loads((reference / "final_metrics.json").read_text())
  assert json.loads((workdir / "final_metrics.json").read_text()) == ref_final
  a, b = _final_state(reference), _final_state(workdir)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_eight_fake_devices_give_the_same_loss_curve(reference, tmp_path, data_dir):
  workdir = tmp_path / "eight"
  _run(workdir, data_dir, "--config.mesh.fsdp=2", "--config.mesh.fsdp_min_size=1024",
       devices=8)
  ref, got = _losses(reference), _losses(workdir)
  assert sorted(got) == sorted(ref)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)],
                             rtol=1e-4)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one(reference, tmp_path, data_dir):
  workdir = tmp_path / "two"
  port = _free_port()
  procs = [_start(workdir, data_dir, f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}") for i in range(2)]
  outs = [_finish(p) for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  ref, got = _losses(reference), _losses(workdir)
  assert sorted(got) == sorted(ref)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)],
                             rtol=1e-4)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  workdir = tmp_path / "nan"
  proc = _start(workdir, data_dir, "--config.optim.lr=1e30", "--config.optim.grad_clip_norm=0",
                "--config.optim.warmup_epochs=0", "--config.checkpoint_every=1")
  out = _finish(proc)
  assert proc.returncode != 0
  assert "non-finite training loss" in out and "at step" in out
  bad_step = int(out.split("at step ")[1].split(";")[0])
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and max(saved) < bad_step
  for leaf in jax.tree_util.tree_leaves(_final_state(workdir)["params"]):
    assert np.all(np.isfinite(leaf))
