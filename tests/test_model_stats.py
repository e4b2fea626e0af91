"""Parameter / GFLOPs accounting: the MAC counter, exact counts, and the paper's figures."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from pgvt_jax.models.config import model_config
from pgvt_jax.tools import flops
from pgvt_jax.tools.model_stats import model_stats

REPO = Path(__file__).resolve().parents[1]
f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)


def test_count_macs_matmul_einsum_conv_scan_cond():
  dense = flops.count_macs(lambda x, w: x @ w, f32(3, 5), f32(5, 7))
  assert dense == {"dot_general": 3 * 5 * 7, "conv_general_dilated": 0, "total": 105}
  attn = flops.count_macs(lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k),
                          f32(2, 4, 6, 8), f32(2, 4, 10, 8))
  assert attn["total"] == 2 * 4 * 6 * 10 * 8
  conv = flops.count_macs(
      lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), "VALID",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC")),
      f32(1, 8, 8, 3), f32(2, 2, 3, 16))
  assert conv["total"] == (4 * 4 * 16) * (2 * 2 * 3)
  grouped = flops.count_macs(
      lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=4,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC")),
      f32(1, 5, 5, 8), f32(3, 3, 2, 8))
  assert grouped["total"] == (5 * 5 * 8) * (3 * 3 * 2)

  def scanned(x, w):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=6)[0]
  assert flops.count_macs(scanned, f32(2, 4), f32(4, 4))["total"] == 6 * 2 * 4 * 4

  def branchy(p, x, w):
    return jax.lax.cond(p, lambda: x @ w @ w, lambda: x @ w)
  pred = jax.ShapeDtypeStruct((), jnp.bool_)
  assert flops.count_macs(branchy, pred, f32(2, 4), f32(4, 4))["total"] == 2 * 2 * 4 * 4
  # Under jit, remat and grad the forward MACs are still found (nested jaxprs are walked).
  jitted = flops.count_macs(jax.jit(jax.checkpoint(lambda x, w: x @ w)), f32(3, 5), f32(5, 7))
  assert jitted["total"] == 105


def adapter(d):  # AIM adapter: d -> d/4 -> d, biases included
  return d * (d // 4) + d // 4 + (d // 4) * d + d


def test_tunable_counts_follow_the_documented_formula():
  """Exact counts (docs/models.md): 5 adapters + 8 dxd linears per PGVT block, etc."""
  from pgvt_jax.models import clip_family, common, pgvt

  def stats(**kw):  # param counts only (no FLOPs tracing)
    shapes = pgvt.param_shapes(pgvt.create_model(model_config(**kw)))
    trainable, frozen = clip_family.split_params(shapes)
    return {"tunable_params": common.count(trainable), "frozen_params": common.count(frozen),
            "total_params": common.count(shapes)}

  d, layers, c = 768, 12, 48
  video = stats(variant="video_only")
  assert video["tunable_params"] == (layers * 3 * adapter(d) + 16 * d  # temporal embedding
                                     + 2 * d + d * c + c)               # ln_post, head
  # MLP, missing-joint and CLS embeddings, positional (J + 1), temporal (T_h)
  pose_embed = (2 * d + d) + (d * d + d) + d + d + 18 * d + 48 * d
  fc = (48 * 16 + 16) + (16 * 48 + 48)                                  # FC_down, FC_up
  full = stats(variant="pgvt")
  assert full["tunable_params"] == (layers * (5 * adapter(d) + 8 * (d * d + d) + fc)
                                    + pose_embed + 16 * d + 2 * 2 * d + 2 * d * c + c)
  assert full["frozen_params"] == 85_797_888       # CLIP B/16 tower without proj
  assert full["total_params"] == full["tunable_params"] + full["frozen_params"]


@pytest.mark.parametrize("overrides,paper_tunable_m,tol,paper_gflops,gtol", [
    (dict(variant="pgvt"), 75, 0.03, 495, 0.15),
    (dict(variant="video_only", video_frames=16), 11, 0.03, 405, 0.10),
    (dict(variant="pose_only"), 11, 0.10, 108, 0.10),
])
def test_acceptance_vit_b16_diving48(overrides, paper_tunable_m, tol, paper_gflops, gtol):
  s = model_stats(model_config(**overrides))        # B/16, 48 + 16 frames, 48 classes
  assert s["tunable_params"] / 1e6 == pytest.approx(paper_tunable_m, rel=tol)
  assert s["gflops"] == pytest.approx(paper_gflops, rel=gtol)


def test_acceptance_vit_l14_pgvt_tunable():
  from pgvt_jax.models import clip_family, common, pgvt
  model = pgvt.create_model(model_config(variant="pgvt", backbone="L/14"))
  trainable, _ = clip_family.split_params(pgvt.param_shapes(model))
  assert common.count(trainable) / 1e6 == pytest.approx(265, rel=0.03)


def test_cli_json():
  out = subprocess.run(
      [sys.executable, "-m", "pgvt_jax.tools.model_stats",
       "--config=configs/diving48.py:runlocal", "--config.model.variant=video_only", "--json"],
      cwd=REPO, capture_output=True, text=True, check=True, timeout=120)
  stats = json.loads(out.stdout)
  assert stats["variant"] == "video_only" and stats["backbone"] == "Ti/8"
  assert {"tunable_params", "total_params", "frozen_params", "gflops"} <= set(stats)
  assert stats["total_params"] == stats["tunable_params"] + stats["frozen_params"]
  assert stats["gflops"] > 0


VIT_B_BLOCK = 7_087_872  # one timm/CLIP ViT-B block: 12 D^2 + 13 D at D = 768


@pytest.mark.slow
def test_paab_adds_one_vit_block_per_insertion_and_paat_is_training_only():
  base = model_stats(model_config(variant="video_only", video_frames=8, pose_frames=8))
  one = model_stats(model_config(variant="video_only", video_frames=8, pose_frames=8,
                                 paab_layers=(12,)))
  two = model_stats(model_config(variant="video_only", video_frames=8, pose_frames=8,
                                 paab_layers=(6, 12), paat_layer=1))
  assert one["pose_aware_params"] == {"paab_12": VIT_B_BLOCK}
  assert one["tunable_params"] - base["tunable_params"] == VIT_B_BLOCK
  assert one["frozen_params"] == base["frozen_params"]
  paat_head = 768 * 256 + 256 + 256 * 17 + 17          # Linear(D, 256) -> Linear(256, K=17)
  assert two["tunable_params"] - base["tunable_params"] == 2 * VIT_B_BLOCK + paat_head
  assert two["training_only_params"] == paat_head
  assert two["inference_params"] == base["total_params"] + 2 * VIT_B_BLOCK
  # PAAB's MACs per view: Q/K/V/O + MLP over 8 x (1 + 196) tokens, plus the masked attention
  # over 197 keys per frame; PAAT adds none at inference.
  tokens, d = 8 * 197, 768
  macs = tokens * 12 * d * d + 2 * 8 * 197 * 197 * d
  assert (one["gflops"] - base["gflops"]) * 1e9 == pytest.approx(macs, rel=1e-6)
  assert (two["gflops"] - base["gflops"]) * 1e9 == pytest.approx(2 * macs, rel=1e-6)
