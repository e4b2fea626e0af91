"""TimeSformer family end to end: parameter accounting against `transformers`, and training on
the built-in synthetic dataset through `python -m pgvt_jax.main` (tiny size, a couple of steps)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgvt_jax.models import common, factory
from pgvt_jax.models.config import model_config
from pgvt_jax.tools import model_stats

ROOT = Path(__file__).resolve().parents[1]


def _hf_param_count(**kw) -> int:
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  with torch.device("meta"):  # shapes only, no memory, no init
    model = transformers.TimesformerModel(transformers.TimesformerConfig(**kw))
  return sum(p.numel() for p in model.parameters())


def test_model_stats_backbone_count_equals_transformers():
  stats = model_stats.model_stats(model_config(
      family="timesformer", variant="video_only", backbone="B/16", video_frames=8,
      num_classes=400))
  head = 768 * 400 + 400
  assert stats["family"] == "timesformer"
  assert stats["total_params"] - head == _hf_param_count()
  assert stats["tunable_params"] == stats["total_params"] and stats["frozen_params"] == 0
  assert stats["tunable_by_group"]["head"] == head
  # 16 frames: one more time-embedding row per extra frame, nothing else.
  shapes16 = factory.param_shapes(factory.create_model(model_config(
      family="timesformer", variant="video_only", backbone="B/16", video_frames=16,
      num_classes=400)))
  assert common.count(shapes16) - stats["total_params"] == 8 * 768


def _train(tmp_path: Path, name: str, *overrides: str) -> dict:
  """2 training steps + eval of configs/demo.py as a TimeSformer, in a fresh process."""
  workdir = tmp_path / name
  cmd = [sys.executable, "-m", "pgvt_jax.main", "--config=configs/demo.py:video_only",
         f"--workdir={workdir}", "--config.model.family=timesformer",
         "--config.freeze_backbone=False", "--config.total_steps=2",
         f"--config.synthetic_data.data_dir={tmp_path / 'synthetic'}",
         "--config.synthetic_data.num_train=8", "--config.synthetic_data.num_test=4",
         "--config.data.train_batch_size=4", "--config.data.eval_batch_size=4",
         "--config.async_checkpoints=False", "--config.log_every=1", *overrides]
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == 2 and all(l == l and l < 1e4 for l in losses)  # finite
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"]["pixel_mean"] == [0.45] * 3  # the family's statistics reached the data
  assert (workdir / "checkpoints" / "2").is_dir()
  return {"rows": rows, "config": config}


def test_timesformer_baseline_trains_through_main(tmp_path):
  _train(tmp_path, "baseline")
