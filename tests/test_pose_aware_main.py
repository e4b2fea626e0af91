"""Baseline, PAAB and PAAT train through `python -m pgvt_jax.main` on the synthetic demo data
(configs/demo.py with overrides, frozen random CLIP Ti/8 + AIM, T_h = 2 T_l pose frames)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.test_train import REPO, _env

pytestmark = pytest.mark.e2e  # subprocess runs of pgvt_jax.main

STEPS = 2
METHODS = {
    "baseline": [],
    "paab": ["--config.model.paab_layers=(2,)"],
    "paat": ["--config.model.paat_layer=1", "--config.aux_losses.paat=1.6"],
}


def _overrides(data_dir) -> list[str]:
  o = {"synthetic_data.data_dir": data_dir, "synthetic_data.num_train": 8,
       "synthetic_data.num_test": 4, "synthetic_data.num_frames": 8,
       "data.num_frames": 2, "data.pose_frames": 4, "data.train_batch_size": 4,
       "data.eval_batch_size": 4, "data.num_threads": 1, "data.prefetch": 1,
       "model.video_frames": 2, "model.pose_frames": 4, "total_steps": STEPS, "log_every": 1,
       "checkpoint_every": STEPS, "eval_every": 0, "async_checkpoints": False}
  return [f"--config.{k}={v}" for k, v in o.items()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("synthetic_pose_aware")


@pytest.mark.parametrize("method", list(METHODS))
def test_main_trains_baseline_paab_paat(method, data_dir, tmp_path):
  cmd = [sys.executable, "-m", "pgvt_jax.main", "--config=configs/demo.py:video_only",
         f"--workdir={tmp_path}", *_overrides(data_dir), *METHODS[method]]
  proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train/loss" in r]
  assert len(train_rows) == STEPS and all(np.isfinite(r["train/loss"]) for r in train_rows)
  assert any("eval/top1" in r for r in rows)
  if method == "paat":
    for r in train_rows:   # loss = ce + 1.6 * PAAT (Eq. 8)
      assert r["train/aux_paat"] > 0
      assert r["train/loss"] == pytest.approx(r["train/ce"] + 1.6 * r["train/aux_paat"], rel=1e-4)
  else:
    assert not any("train/aux_paat" in r for r in train_rows)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["model"]["paab_layers"] == ([2] if method == "paab" else [])
