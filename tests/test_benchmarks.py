"""The benchmark harness (benchmarks/train_step.py) and the frozen-backbone FLOPs guarantee."""

from __future__ import annotations

import jax
import pytest

from benchmarks import train_step as bench
from configs import diving48
from pgvt_jax import fitting, optim, steps
from pgvt_jax.models import clip_family, pgvt
from pgvt_jax.tools import flops


def _tiny(variant: str = "pgvt"):
  return diving48.get_config(f"tiny,runlocal,variant={variant}")  # Ti/8, 32 px, 4+8 frames


def _step_and_forward_macs(config) -> tuple[int, int]:
  """MACs of the trainer's train step and of one forward (eval) pass, shapes only."""
  model = pgvt.create_model(config.model)
  shapes = pgvt.param_shapes(model)
  if config.freeze_backbone:
    trainable, frozen = clip_family.split_params(shapes)
  else:
    trainable, frozen = shapes, {}
  schedule = optim.make_schedule(config.optim, 100, 10)
  tx = optim.make_optimizer(config.optim, schedule,
                            labels=clip_family.param_labels if config.freeze_backbone else None)
  state = jax.eval_shape(lambda p: steps.init_state(p, tx, 0), trainable)
  batch = {**pgvt.input_spec(config.model, 1),
           "label": jax.ShapeDtypeStruct((1,), "int32")}
  train = flops.count_macs(steps.make_train_step(model, tx, fitting.fixed(config), schedule),
                           state, frozen, batch)["total"]
  forward = flops.count_macs(steps.make_eval_step(model), trainable, frozen, batch)["total"]
  return train, forward


def test_train_step_does_no_weight_gradient_work_for_frozen_weights():
  # Forward F; input gradients ~F; weight gradients of a layer cost its forward again. With
  # the backbone frozen only the small adapters/head get weight gradients (~2.0x F); if
  # gradients of the frozen CLIP weights were computed the step would cost ~3x F, which the
  # full fine-tuning run below shows this measure detects.
  config = _tiny("video_only")
  train, forward = _step_and_forward_macs(config)
  assert 1.9 < train / forward < 2.2, train / forward
  config.freeze_backbone = False
  train_all, forward_all = _step_and_forward_macs(config)
  assert forward_all == forward
  assert train_all / forward > 2.8, train_all / forward


@pytest.fixture(scope="module")
def jax_result(fast_compiles):
  del fast_compiles
  peak = bench.measured_matmul_peak(n=256, repeats=2)
  assert peak > 1e7  # any CPU does 10 MFLOP/s
  return bench.benchmark(_tiny("pgvt"), batch=2, mode="both", n_steps=3, warmup=1,
                         peak=(peak, "test"))


@pytest.mark.e2e  # the harness on a whole config (~21 s of fixture)
def test_harness_reports_sane_fields(jax_result):
  config = _tiny("pgvt")
  r = jax_result
  peak = r["peak_flops_per_s"]
  assert r["impl"] == "jax" and r["threads"] >= 1
  assert r["batch"] == 2 and r["backend"] == jax.default_backend()
  assert r["peak_memory_bytes"] > 2**20
  for mode in ("train", "inference"):
    s = r[mode]
    assert s["timed_steps"] == 3
    assert 0 < s["step_s_min"] <= s["step_s"] <= s["step_s_max"]
    assert len(s["step_s_each"]) == len(s["minor_faults_each_step"]) == 3
    assert min(s["step_s_each"]) == s["step_s_min"] and max(s["step_s_each"]) == s["step_s_max"]
    peaks = s["peak_rss_each_step_bytes"]
    assert peaks == sorted(peaks) and 2**20 < peaks[-1] <= r["peak_memory_bytes"]  # a running peak
    assert s["clips_per_s"] == pytest.approx(2 / s["step_s"])
    assert s["compile_s"] > 0 and s["minor_faults_per_step"] >= 0
    assert s["mfu"] == pytest.approx(s["model_flops"] / s["step_s"] / peak)
    # The jaxpr count (dots only) and XLA's count (dots + element-wise) agree on the bulk.
    assert 0.5 < s["model_flops"] / s["hlo_flops"] < 1.5, (mode, s)
  views = config.data.eval_clips * config.data.eval_crops
  assert r["inference"]["views_per_video"] == views
  # A train step costs about 2.2x the forward of one view (above); inference runs `views`.
  ratio = r["train"]["model_flops"] / (r["inference"]["model_flops"] / views)
  assert 1.9 < ratio < 2.6, ratio


def _keys(r: dict) -> dict:
  return {k: sorted(v) if isinstance(v, dict) and k != "config" else None
          for k, v in r.items()}


@pytest.mark.e2e  # needs jax_result (above)
def test_torch_impl_emits_the_jax_fields(jax_result):
  pytest.importorskip("torch")
  from benchmarks import step_flops, torch_step  # pylint: disable=g-import-not-at-top
  config = _tiny("video_only")
  r = torch_step.benchmark(config, batch=2, mode="both", n_steps=2, warmup=1,
                           peak_tflops=1.0)
  assert _keys(r) == _keys(jax_result)
  assert r["impl"] == "torch" and r["config"]["variant"] == "video_only"
  assert r["peak_flops_per_s"] == 1e12 and r["peak_memory_bytes"] > 2**20
  counts = step_flops.jaxpr_flops(config, 2, "both")
  for mode in ("train", "inference"):
    s = r[mode]
    assert s["timed_steps"] == 2 and 0 < s["step_s_min"] <= s["step_s"] <= s["step_s_max"]
    assert s["model_flops"] == counts[mode]
    assert s["mfu"] == pytest.approx(s["model_flops"] / s["step_s"] / 1e12)
    # torch's own FLOP counter on the reference agrees with the jaxpr count of pgvt_jax's
    # model: the same work (and no weight gradients of frozen weights on either side).
    assert 0.8 < s["hlo_flops"] / s["model_flops"] < 1.25, (mode, s)
  views = config.data.eval_clips * config.data.eval_crops
  ratio = r["train"]["hlo_flops"] / (r["inference"]["hlo_flops"] / views)
  assert 1.9 < ratio < 2.3, ratio


def test_torch_impl_refuses_other_variants():
  from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="config.model.variant='pgvt'"):
    torch_step.spec_from_config(_tiny("pgvt"))


@pytest.mark.e2e  # subprocesses: JAX and torch harness runs
def test_compare_runs_interleaved_rounds(monkeypatch):
  pytest.importorskip("torch")
  from benchmarks import compare  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # the JAX child compiles faster
  args = compare.parse_args(["--config=configs/diving48.py:tiny,runlocal,variant=video_only",
                             "--batch=1", "--rounds=1", "--steps=2", "--warmup=0",
                             "--mode=train", "--peak_tflops=1"])
  order = []
  result = compare.run(args, log=order.append)
  assert [o.split(":")[1].strip() for o in order if o.startswith("round")] == [
      "jax ...", "torch ..."]
  (r,) = result["rounds"]
  assert r["jax"]["impl"] == "jax" and r["torch"]["impl"] == "torch"
  s = result["summary"]
  assert s["train_ratio"] == pytest.approx(r["jax"]["train"]["step_s"]
                                          / r["torch"]["train"]["step_s"])
  assert "inference_ratio" not in s  # --mode=train: no forward columns
  table = result["markdown"]
  assert f"**{s['train_ratio']:.2f}**" in table
  assert table.count("\n| 1 |") == 1 and "| median |" in table
