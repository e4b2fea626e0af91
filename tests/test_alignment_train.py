"""The alignment task end to end through `pgvt_jax.main`'s trainer: synthetic world -> records
-> jitted TCN steps -> held-out alignment error + PNG; a trained baseline beats chance."""

from __future__ import annotations

import json

import pytest

from configs import alignment as alignment_config
from pgvt_jax import train


def _tiny(arg: str, tmp_path, steps: int):
  c = alignment_config.get_config(arg + ",runlocal")
  c.synthetic_world.data_dir = str(tmp_path / "data")
  c.synthetic_world.num_train, c.synthetic_world.num_test = 8, 3
  c.total_steps, c.log_every, c.checkpoint_every = steps, steps, steps
  c.async_checkpoints = False
  return c


@pytest.mark.e2e
@pytest.mark.slow  # ~1 min on 2 free cores (200 training steps)
def test_trained_baseline_beats_random_embedding(tmp_path):
  c = _tiny("baseline", tmp_path, steps=200)
  c.optim.lr = 1e-3
  out = train.train_and_evaluate(c, str(tmp_path / "run"))
  chance = out["eval/alignment_error_random_vectors"]
  assert 0.2 < chance < 0.45     # i.i.d. embeddings: about 1/3
  # Measured: 0.20 vs chance 0.29 (untrained DeiT 0.38) at dfa8ab8; 0.247 vs 0.294 (untrained
  # 0.350) since the attention refactor 97cf483 (DeiT parity unchanged: a different but
  # equally valid trajectory). Over 3 seeds the baseline is 0.241 +- 0.053 vs random vectors
  # 0.330 +- 0.032 (docs/alignment.md), so a single seed is held to 0.9 x chance, not tighter.
  assert out["eval/alignment_error"] < 0.9 * chance, out
  assert out["eval/alignment_error"] < out["eval/alignment_error_untrained"], out
  assert (tmp_path / "run" / "alignment_pairs.png").stat().st_size > 1000
  final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
  assert final["step"] == 200


@pytest.mark.e2e  # a whole training run (20-40 s)
@pytest.mark.parametrize("variant", ["paab", "paat"])
def test_pose_aware_variants_run(variant, tmp_path):
  c = _tiny(variant, tmp_path, steps=4)
  out = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert 0.0 <= out["eval/alignment_error"] <= 1.0
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train/loss" in r]
  if variant == "paat":   # the PAAT term is part of the loss
    assert train_rows[-1]["train/aux_paat"] > 0
    assert train_rows[-1]["train/loss"] > train_rows[-1]["train/tcn_loss"]
  else:
    assert "train/aux_paat" not in train_rows[-1]
  # Rerunning resumes at the end and only evaluates.
  again = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert again["step"] == 4


def test_config_arguments():
  assert alignment_config.get_config("paab").model.paab_layers == (2,)
  paper = alignment_config.get_config("paat,paper")
  assert paper.model.backbone == "Ti/16" and paper.model.paat_layer == 1
  assert paper.aux_losses.paat == 1.6 and paper.optim.lr == 1e-6
  assert not paper.synthetic_world.enabled
  with pytest.raises(ValueError, match="arguments"):
    alignment_config.get_config("paab,paat")
