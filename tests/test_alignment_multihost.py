"""The alignment task through the CLI at tiny size, its arrays sharded over two devices: in one
process, then over two processes (one device each), which must train and evaluate to the same
figures. Across processes a sharded embedding cannot be fetched (`np.asarray` raises), so the
evaluation reads replicated outputs, and batches are placed without device_put's per-call
cross-host equality check."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e  # subprocess runs of pgvt_jax.main (~55 s on 2 cores)
REPO = Path(__file__).resolve().parents[1]
STEPS = 2


def _env(devices: int) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
  # XLA optimisations off: the programs are tiny and compiling dominates the run time.
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", PGVT_JAX_MALLOC_TUNING="0",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return env


def _start(workdir: Path, data_dir: Path, *extra: str, devices: int = 1) -> subprocess.Popen:
  o = {"synthetic_world.data_dir": data_dir, "synthetic_world.num_train": 4,
       "synthetic_world.num_test": 2, "synthetic_world.num_frames": 12,
       "synthetic_world.image_size": 32, "model.image_size": 32, "model.backbone": "micro",
       "data.train_batch_size": 4, "alignment.eval_batch_size": 8,
       "total_steps": STEPS, "log_every": 1, "checkpoint_every": STEPS,
       "async_checkpoints": False}
  cmd = [sys.executable, "-m", "pgvt_jax.main", "--config=configs/alignment.py:baseline,runlocal",
         f"--workdir={workdir}", *[f"--config.{k}={v}" for k, v in o.items()], *extra]
  return subprocess.Popen(cmd, cwd=REPO, env=_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen]) -> None:
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]


def _figures(workdir: Path) -> tuple[list[float], dict]:
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  final = json.loads((workdir / "final_metrics.json").read_text())
  return losses, {k: v for k, v in final.items() if k.startswith("eval/")}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_with_the_same_two_devices(tmp_path):
  data_dir = tmp_path / "world"
  # One process, its arrays sharded over 2 fake devices (this run also builds the records).
  _finish([_start(tmp_path / "one", data_dir, devices=2)])
  ref_losses, ref_evals = _figures(tmp_path / "one")
  assert len(ref_losses) == STEPS and "eval/alignment_error" in ref_evals

  port = _free_port()
  _finish([_start(tmp_path / "two", data_dir, f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}") for i in range(2)])
  losses, evals = _figures(tmp_path / "two")
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert evals.keys() == ref_evals.keys()
  np.testing.assert_allclose([evals[k] for k in ref_evals], list(ref_evals.values()), atol=1e-6)
  assert (tmp_path / "two" / "alignment_pairs.png").stat().st_size > 1000
