"""The main job end to end at tiny size, as a user runs it: `python -m pgvt_jax.main ...`.

One uninterrupted reference run; a run killed with SIGKILL, then preempted with SIGTERM (exit
code 143), then finished, must end bitwise identical to it (CPU), with every step logged once;
8 fake devices and 2 processes give the same losses. Reliability through the CLI, on copies of
the reference workdir: a damaged latest checkpoint and a torn metrics row are survived
(fallback, still bitwise identical); a diverging run saves nothing non-finite and the advice in
its message works (lower lr / change clipping, then restore_step back to the reference); config
changes on resume are named and refused or need a flag; a locked workdir is refused.
"""

from __future__ import annotations

import json
import os
import shutil
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

pytestmark = pytest.mark.e2e  # subprocess runs of pgvt_jax.main
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


def _train_steps(workdir: Path) -> list[int]:
  """The steps of metrics.jsonl's training rows, in file order (duplicates kept)."""
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["step"] for r in rows if "train/loss" in r]


def _copy(reference: Path, dst: Path) -> Path:
  shutil.copytree(reference, dst, ignore=shutil.ignore_patterns(".lock"))
  return dst


def _assert_same_final_state(a: Path, b: Path) -> None:
  for x, y in zip(jax.tree_util.tree_leaves(_final_state(a)),
                  jax.tree_util.tree_leaves(_final_state(b))):
    np.testing.assert_array_equal(x, y)


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
  # The killed run's lock is left behind, naming it; the next run takes it over (stale).
  assert json.loads((workdir / ".lock").read_text())["pid"] == proc.pid
  proc = _start(workdir, data_dir)
  _interrupt_after(proc, workdir, 9, signal.SIGTERM)
  out = _finish(proc)
  assert proc.returncode == 143, out[-3000:]  # preempted: saved, but not done
  assert "Preempted at step" in out
  _run(workdir, data_dir)
  assert _train_steps(workdir) == list(range(1, STEPS + 1))  # redone steps logged once
  assert _losses(workdir) == _losses(reference)  # exact float equality, every step
  ref_final = json.loads((reference / "final_metrics.json").read_text())
  assert json.loads((workdir / "final_metrics.json").read_text()) == ref_final
  _assert_same_final_state(reference, workdir)


def test_sigkill_in_the_middle_of_a_save_then_resume_is_bitwise_identical(reference, tmp_path,
                                                                          data_dir):
  workdir = tmp_path / "midsave"
  every = "--config.checkpoint_every=1"  # bookkeeping only: the trajectory is the same
  proc = _start(workdir, data_dir, every)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    ckpts = workdir / "checkpoints"
    # Orbax writes a step into "<step>.orbax-checkpoint-tmp-*" and renames it when complete.
    if ckpts.is_dir() and any(".orbax-checkpoint-tmp" in p.name and int(p.name.split(".")[0]) > 3
                              for p in ckpts.iterdir()):
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.002)
  _finish(proc)
  assert proc.returncode == -signal.SIGKILL, "the run ended before a save could be interrupted"
  _run(workdir, data_dir, every)
  assert _train_steps(workdir) == list(range(1, STEPS + 1))
  assert _losses(workdir) == _losses(reference)
  _assert_same_final_state(reference, workdir)


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


def test_damaged_checkpoint_and_torn_metrics_row_are_survived(reference, tmp_path, data_dir):
  workdir = _copy(reference, tmp_path / "damaged")
  files = sorted((p for p in (workdir / "checkpoints" / str(STEPS) / "state").rglob("*")
                  if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(files[-1].read_bytes())
  data[len(data) // 2] ^= 0x40  # one flipped bit in the array bytes
  files[-1].write_bytes(bytes(data))
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 13, "train/lo')  # a crash mid-append
  out = _run(workdir, data_dir)
  assert f"step {STEPS} is damaged" in out and "falling back" in out
  assert f"Resuming from step {STEPS - 4}" in out
  assert (workdir / "corrupt_checkpoints").is_dir()
  assert _train_steps(workdir) == list(range(1, STEPS + 1))  # every row parses, none twice
  assert _losses(workdir) == _losses(reference)
  _assert_same_final_state(reference, workdir)


def test_divergence_saves_nothing_non_finite_and_its_advice_works(reference, tmp_path,
                                                                  data_dir):
  workdir = _copy(reference, tmp_path / "nan")
  # lr=1e300 is inf in float32: the first update makes the params NaN while the loss computed
  # before it is finite (the case that used to be saved). Clipping off, as in the advice's case.
  proc = _start(workdir, data_dir, "--config.total_steps=16", "--config.optim.lr=1e300",
                "--config.optim.warmup_epochs=0", "--config.optim.grad_clip_norm=0",
                "--config.checkpoint_every=1", "--config.allow_config_changes=True")
  out = _finish(proc)
  assert proc.returncode == 1, out[-3000:]
  assert "non-finite" in out and f"at step {STEPS + 1}" in out and "Traceback" not in out
  assert "kept checkpoints: steps [4, 8, 12]" in out
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [4, 8, 12]
  for leaf in jax.tree_util.tree_leaves(_final_state(workdir)):
    assert np.all(np.isfinite(leaf))
  # The advice: lower lr (and a different clipping setting) resumes from the last kept step.
  out = _run(workdir, data_dir, "--config.total_steps=16", "--config.optim.lr=1e-3",
             "--config.optim.grad_clip_norm=0", "--config.allow_config_changes=True")
  assert f"Resuming from step {STEPS}" in out
  assert _train_steps(workdir)[-4:] == [13, 14, 15, 16]
  # ...and restore_step goes back further: from step 8 with the reference's config the run
  # ends exactly where the reference did; the later checkpoints and rows are redone.
  out = _run(workdir, data_dir, "--config.restore_step=8", "--config.allow_config_changes=True")
  assert "Resuming from step 8" in out
  assert _train_steps(workdir) == list(range(1, STEPS + 1))
  assert _losses(workdir) == _losses(reference)
  _assert_same_final_state(reference, workdir)


def test_changed_config_on_resume_is_named_and_a_locked_workdir_refused(reference, tmp_path,
                                                                        data_dir):
  from pgvt_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir = _copy(reference, tmp_path / "changed")
  metrics_before = (workdir / "metrics.jsonl").read_text()
  config_before = (workdir / "config.json").read_text()

  def refused(*extra):
    proc = _start(workdir, data_dir, *extra)
    out = _finish(proc)
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out
    return out

  out = refused("--config.model.video_frames=2", "--config.data.num_frames=2",
                "--config.allow_config_changes=True")
  assert "model.video_frames: 4 -> 2" in out and "data.num_frames: 4 -> 2" in out
  out = refused("--config.optim.lr=1e-4", "--config.data.train_batch_size=4")
  saved_lr = json.loads(config_before)["optim"]["lr"]  # the demo config's, whatever it is
  assert f"optim.lr: {saved_lr!r} -> 0.0001" in out and "data.train_batch_size: 8 -> 4" in out
  assert "--config.allow_config_changes=True" in out
  with workdir_lib.WorkdirLock(workdir, "test"):
    out = refused()
    assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in out
  assert (workdir / "metrics.jsonl").read_text() == metrics_before  # nothing was touched
  assert not (workdir / "corrupt_checkpoints").exists()
  # Evaluate with a different config: recorded in the history, config.json left alone.
  _run(workdir, data_dir, "--mode=evaluate", "--config.optim.lr=5.0")
  assert (workdir / "config.json").read_text() == config_before
  history = [json.loads(l) for l in (workdir / "config_history.jsonl").read_text().splitlines()]
  assert history[-1]["mode"] == "evaluate" and history[-1]["config"]["optim.lr"] == 5.0
  assert history[:-1] and {h["mode"] for h in history[:-1]} == {"train"}


# ----------------------------------------------------------------------------- topology
def _procs(workdir: Path, data_dir: Path, n: int, devices: int, *extra: str) -> str:
  """One run on `n` processes x `devices` devices each (localhost coordinator)."""
  if n == 1:
    return _run(workdir, data_dir, *extra, devices=devices)
  port = _free_port()
  procs = [_start(workdir, data_dir, f"--coordinator_address=127.0.0.1:{port}",
                  f"--num_processes={n}", f"--process_id={i}", *extra, devices=devices)
           for i in range(n)]
  outs = [_finish(p) for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return "\n".join(outs)


def _assert_continues(reference: Path, workdir: Path, after: int) -> None:
  ref, got = _losses(reference), _losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  steps = [s for s in sorted(got) if s > after]
  np.testing.assert_allclose([got[s] for s in steps], [ref[s] for s in steps], rtol=1e-4)
  assert not (workdir / "corrupt_checkpoints").exists()


def test_a_run_moves_between_topologies_and_every_consumer_reads_it(reference, tmp_path,
                                                                    data_dir, monkeypatch):
  """2 processes x 4 devices with FSDP -> 1 x 1 (from step 4) -> 1 x 8 (from 8) -> back on
  2 x 4 (from the 8 that 1 x 1 saved), and predict, retrieval, visualize and init_from read the 2 x 4 run on
  this process's one device. The data position is global: every leg continues the reference's
  loss curve (1 device vs 8 differ only by float rounding)."""
  fsdp = ("--config.mesh.fsdp=2", "--config.mesh.fsdp_min_size=1024")
  pod = tmp_path / "pod"
  _procs(pod, data_dir, 2, 4, *fsdp)
  _assert_continues(reference, pod, 0)
  leg = _copy(pod, tmp_path / "one")  # 2 x 4 -> 1 x 1
  out = _procs(leg, data_dir, 1, 1, "--config.restore_step=4")
  assert "Data position: global batch 4 (saved by 2 process(es), resumed on 1)" in out
  _assert_continues(reference, leg, 4)
  leg = _copy(leg, tmp_path / "eight")  # 1 x 1 -> 1 x 8 (grain's own state: same count)
  out = _procs(leg, data_dir, 1, 8, *fsdp, "--config.restore_step=8")
  assert "Resuming from step 8" in out and "Data position" not in out
  _assert_continues(reference, leg, 8)
  leg = _copy(leg, tmp_path / "back")  # -> 2 x 4 from step 8, which the 1 x 1 leg saved
  out = _procs(leg, data_dir, 2, 4, *fsdp, "--config.restore_step=8")
  assert "Data position: global batch 8 (saved by 1 process(es), resumed on 2)" in out
  _assert_continues(reference, leg, 8)

  # --mode=evaluate of the 2 x 4 run on 1 x 1 (its best step, restored into one device).
  evaluated = _copy(pod, tmp_path / "evaluated")
  _procs(evaluated, data_dir, 1, 1, "--mode=evaluate")
  final = json.loads((pod / "final_metrics.json").read_text())
  got = json.loads((evaluated / "eval_metrics.json").read_text())
  assert got["step"] == STEPS
  np.testing.assert_allclose(got["eval/top1"], final["eval/top1"], atol=1 / 16 + 1e-9)
  assert not (evaluated / "corrupt_checkpoints").exists()

  # The consumers, in this process (one CPU device), from a relative path.
  from pgvt_jax import checkpointing, init_from, predict, retrieval, visualize  # pylint: disable=g-import-not-at-top
  from tests.predict_fixtures import render_mp4  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  # The latest step's params (checkpoints/12), read on this one device; predict reads best/12.
  saved = checkpointing.restore_params(pod, which="latest")[0]
  pred = predict.load("pod")
  assert pred.step == STEPS
  for x, y in zip(jax.tree_util.tree_leaves(pred.trainable), jax.tree_util.tree_leaves(saved)):
    np.testing.assert_array_equal(x, y)  # the state carries over exactly
  trained, _ = init_from.read_trained("pod", "pose")
  for x, y in zip(jax.tree_util.tree_leaves(trained), jax.tree_util.tree_leaves(saved)):
    np.testing.assert_array_equal(x, y)
  records = json.loads((pod / "config.json").read_text())["data"]["builder_dir"]
  result = retrieval.run("pod", f"{records}:test", f"{records}:test", out_dir="ret")
  assert 0 <= result["R@1"] <= 1
  kp = render_mp4(tmp_path / "clip.mp4", 1, seed=3)
  np.savez(tmp_path / "clip.npz", keypoint=kp[None], keypoint_score=np.ones((1,) + kp.shape[:2]))
  assert predict.run(["predict", "--workdir=pod", "--video=clip.mp4",
                      "--keypoints=clip.npz"]) == 0
  assert visualize.run(["visualize", "--workdir=pod", "--video=clip.mp4",
                        "--keypoints=clip.npz", "--out=figs"]) == 0
  assert list((tmp_path / "figs").glob("*.png"))
  assert not (pod / checkpointing.CORRUPT_DIR).exists()
