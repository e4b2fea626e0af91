"""TimeSformer family end to end: parameter accounting against `transformers` (with PAAB/PAAT),
and baseline, PAAB and PAAT training on the built-in synthetic dataset through
`python -m pgvt_jax.main` (tiny size, a couple of steps)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pgvt_jax.models import common, factory
from pgvt_jax.models.config import model_config
from pgvt_jax.tools import model_stats
from tests.test_train import _env

ROOT = Path(__file__).resolve().parents[1]


def _hf_param_count(**kw) -> int:
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  with torch.device("meta"):  # shapes only, no memory, no init
    model = transformers.TimesformerModel(transformers.TimesformerConfig(**kw))
  return sum(p.numel() for p in model.parameters())


def _hf_vit_layer_count(d: int) -> int:
  """Params of one plain ViT block (what a PAAB is), counted by transformers' ViTLayer."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from transformers.models.vit import modeling_vit  # pylint: disable=g-import-not-at-top
  with torch.device("meta"):
    layer = modeling_vit.ViTLayer(transformers.ViTConfig(hidden_size=d, intermediate_size=4 * d,
                                                         num_attention_heads=d // 64))
  return sum(p.numel() for p in layer.parameters())


def test_model_stats_counts_equal_transformers_with_paab_and_paat():
  """TimeSformer-B/16 8x224 + PAAB after block 12 + PAAT after block 1 (the paper's setting)."""
  stats = model_stats.model_stats(model_config(
      family="timesformer", variant="video_only", backbone="B/16", video_frames=8,
      pose_frames=8, num_classes=400, paab_layers=(12,), paat_layer=1))
  d, head = 768, 768 * 400 + 400
  paab, paat = stats["pose_aware_params"]["paab_12"], stats["pose_aware_params"]["paat_head"]
  assert paab == _hf_vit_layer_count(d)
  assert paat == d * 256 + 256 + 256 * 17 + 17  # Linear(D, 256) -> Linear(256, K=17 joints)
  assert stats["family"] == "timesformer"
  assert stats["total_params"] - head - paab - paat == _hf_param_count()
  assert stats["tunable_params"] == stats["total_params"] and stats["frozen_params"] == 0
  assert stats["tunable_by_group"]["head"] == head
  assert stats["inference_params"] == stats["total_params"] - paat
  # 16 frames: one more time-embedding row per extra frame, nothing else.
  shapes16 = factory.param_shapes(factory.create_model(model_config(
      family="timesformer", variant="video_only", backbone="B/16", video_frames=16,
      pose_frames=16, num_classes=400, paab_layers=(12,), paat_layer=1)))
  assert common.count(shapes16) - stats["total_params"] == 8 * d


METHODS = {
    "baseline": [],
    "paab": ["--config.model.paab_layers=(2,)"],
    "paat": ["--config.model.paat_layer=1", "--config.aux_losses.paat=1.6"],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("synthetic_timesformer")


@pytest.mark.e2e
@pytest.mark.parametrize("method", list(METHODS))
def test_timesformer_trains_through_main(method, data_dir, tmp_path):
  """configs/demo.py as a tiny TimeSformer (random init, full fine-tuning): 2 steps + eval."""
  o = {"model.family": "timesformer", "freeze_backbone": False,
       "synthetic_data.data_dir": data_dir, "synthetic_data.num_train": 8,
       "synthetic_data.num_test": 4, "synthetic_data.num_frames": 8,
       "data.num_frames": 2, "data.pose_frames": 2, "data.train_batch_size": 4,
       "data.eval_batch_size": 4, "data.num_threads": 1, "data.prefetch": 1,
       "model.video_frames": 2, "model.pose_frames": 2, "total_steps": 2, "log_every": 1,
       "checkpoint_every": 2, "eval_every": 0, "async_checkpoints": False}
  cmd = [sys.executable, "-m", "pgvt_jax.main", "--config=configs/demo.py:video_only",
         f"--workdir={tmp_path}", *[f"--config.{k}={v}" for k, v in o.items()],
         *METHODS[method]]
  env = dict(_env(), JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train/loss" in r]
  assert len(train_rows) == 2 and all(np.isfinite(r["train/loss"]) for r in train_rows)
  assert any("eval/top1" in r for r in rows)
  if method == "paat":  # loss = ce + 1.6 * PAAT (Eq. 8)
    for r in train_rows:
      assert r["train/aux_paat"] > 0
      assert r["train/loss"] == pytest.approx(r["train/ce"] + 1.6 * r["train/aux_paat"], rel=1e-4)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["model"]["family"] == "timesformer"
  assert config["data"]["pixel_mean"] == [0.45] * 3  # the family's statistics reached the data
  assert config["model"]["paab_layers"] == ([2] if method == "paab" else [])
