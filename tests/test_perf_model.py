"""Model-side performance switches (issue 13): no per-step relayout of frozen kernels, remat
policies, the attention implementation, and the bf16 compute dtype."""

from __future__ import annotations

import contextlib
import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from benchmarks import train_step as bench
from configs import diving48
from pgvt_jax import accelerators, fitting, steps
from pgvt_jax.models import common, layers, pgvt
from pgvt_jax.models.config import ModelConfig, auto_dtype
from tests.test_models_variants import random_batch, random_params, tiny

LAYOUT_OPS = {"parameter", "transpose", "copy", "bitcast", "reshape"}


def frozen_relayouts(hlo: str, marker: str = "frozen") -> tuple[int, list[str]]:
  """(number of frozen entry params, relayouts): instructions of the compiled entry computation
  that read a parameter whose name contains `marker` and only move its elements (a transpose or
  copy, or a fusion made of nothing but layout ops with a transpose/copy in it)."""
  comps, entry, cur = {}, None, None
  for line in hlo.splitlines():
    head = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      cur = head.group(2)
      comps[cur] = []
      entry = cur if head.group(1) else entry
    elif cur and line.startswith("  "):
      comps[cur].append(line.strip())
  op_of = lambda l: (re.match(r"(?:ROOT )?%\S+ = .*? ([a-z][\w\-]*)\(", l) or [None, None])[1]
  params = [m.group(1) for l in comps[entry]
            if (m := re.match(r"%([\w.\-]+) = \S+ parameter\(", l)) and marker in m.group(1)]
  found = []
  for l in comps[entry]:
    op = op_of(l)
    args = l.split(op + "(", 1)[1] if op else ""
    if not any(re.search(rf"%{re.escape(p)}\b", args) for p in params):
      continue
    if op == "fusion":
      called = re.search(r"calls=%([\w.\-]+)", l).group(1)
      ops = {op_of(b) for b in comps[called]}
      if ops <= LAYOUT_OPS and ops & {"transpose", "copy"}:
        found.append(l[:160])
    elif op in ("transpose", "copy"):
      found.append(l[:160])
  return len(params), found


def _compiled_train_step(config, batch: int = 1):
  model, _, trainable, frozen, tx, schedule = bench.setup(config, batch)
  state = steps.init_state(trainable, tx, 0)
  host = bench.synthetic_batch(config.model, batch, config.model.num_classes)
  fn = jax.jit(steps.make_train_step(model, tx, fitting.fixed(config), schedule), donate_argnums=(0,))
  return fn.lower(state, frozen, host).compile()


@contextlib.contextmanager
def _unoptimised():
  """XLA passes off while a test compiles a tiny step it only runs (the relayout and memory
  tests need them on: the relayouts and the buffer plan are what the passes make)."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", old)


def _tiny_config(variant: str, **model):
  config = diving48.get_config(f"tiny,runlocal,variant={variant}")
  for k, v in model.items():
    config.model[k] = v
  return config


# ------------------------------------------------------------------ 1. frozen kernel relayouts
def test_counter_catches_a_relayout_of_a_frozen_kernel():
  # The bad case: nn.DenseGeneral's two-axis kernel, differentiated w.r.t. its input, makes
  # XLA:CPU copy a transposed kernel per call (what clip_vit's attention did before HeadsDense).
  dense = nn.DenseGeneral((2, 32))
  x = jnp.ones((4, 9, 64))
  kernel = dense.init(jax.random.key(0), x)

  def step(frozen, x):
    return jax.grad(lambda x: (dense.apply(frozen, x) ** 2).sum())(x)

  n, found = frozen_relayouts(jax.jit(step).lower(kernel, x).compile().as_text())
  assert n == 2 and found, found
  new = layers.HeadsDense(32, 2)
  n, found = frozen_relayouts(jax.jit(lambda frozen, x: jax.grad(
      lambda x: (new.apply(frozen, x) ** 2).sum())(x)).lower(kernel, x).compile().as_text())
  assert n == 2 and not found, found


def test_train_step_does_not_relayout_frozen_weights():
  # Ti/16 has 2 heads, so (D, H, d) kernels are truly 3-D. (PGVT's extra attention, the
  # R-Adapter, is trainable; its frozen attention is this one.)
  config = _tiny_config("video_only", backbone="Ti/16", image_size=32)
  n, found = frozen_relayouts(_compiled_train_step(config).as_text())
  assert n >= 10, "no frozen params found in the compiled step: the counter would see nothing"
  assert not found, "\n".join(found)


def test_heads_dense_has_dense_generals_params_and_values():
  x = jax.random.normal(jax.random.key(1), (3, 5, 64))
  y = jax.random.normal(jax.random.key(2), (3, 5, 4, 16))
  init = nn.initializers.normal(0.3)
  for old, new, inp in [(nn.DenseGeneral((4, 16), bias_init=init),
                         layers.HeadsDense(16, 4, bias_init=init), x),
                        (nn.DenseGeneral(64, axis=(-2, -1), bias_init=init),
                         layers.HeadsDense(64, bias_init=init), y)]:
    p_old, p_new = old.init(jax.random.key(0), inp), new.init(jax.random.key(0), inp)
    jax.tree.map(np.testing.assert_array_equal, p_old, p_new)  # same shapes, same init
    np.testing.assert_allclose(new.apply(p_new, inp), old.apply(p_old, inp), atol=1e-5)


# ------------------------------------------------------------------ 2. remat
def test_remat_policies_are_validated():
  assert ModelConfig(remat=True).remat == "full" and ModelConfig(remat=False).remat == "none"
  with pytest.raises(ValueError, match=r"config.model.remat='dots'"):
    ModelConfig(remat="dots")


@pytest.mark.slow
@pytest.mark.e2e  # three whole train-step compiles (~40 s)
def test_remat_needs_less_temp_memory():
  """memory_analysis is the compiled program's buffer plan: deterministic, load-free."""
  temp = {}
  for policy in ("none", "save_dots", "full"):
    config = _tiny_config("video_only", remat=policy)
    temp[policy] = _compiled_train_step(config).memory_analysis().temp_size_in_bytes
  # (2 blocks only: block outputs are a large part of what "full" keeps, so the gap is small.)
  assert temp["full"] < temp["none"] and temp["save_dots"] < temp["none"], temp


# ------------------------------------------------------------------ 3. attention
def _reference_attention(q, k, v, bias=None):
  """NumPy softmax(QK^T/sqrt(d) + bias) V, float64."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", w, v)


@pytest.mark.parametrize("impl", ["auto", "xla"])
def test_attention_impl_matches_einsum_attention(impl):
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 7, 3, 16)).astype(np.float32) for _ in range(3))
  bias = rng.normal(size=(2, 3, 7, 7)).astype(np.float32)

  class Attn(nn.Module):
    @nn.compact
    def __call__(self, q, k, v, bias, record=None):
      return layers.attend(self, q, k, v, bias, record, impl)

  fused = Attn().apply({}, q, k, v, bias)
  explicit, _ = Attn().apply({}, q, k, v, bias, "x", mutable=["attention"])  # einsum path
  np.testing.assert_allclose(fused, _reference_attention(q, k, v, bias), atol=1e-5)
  np.testing.assert_allclose(fused, explicit, atol=1e-5)


def test_cudnn_attention_without_a_gpu_is_a_clear_error():
  if jax.default_backend() == "gpu":
    pytest.skip("a GPU is present")
  m = tiny("video_only", attention_impl="cudnn")
  with pytest.raises(ValueError, match=r"config.model.attention_impl='cudnn' needs an NVIDIA"):
    pgvt.PoseVideoTransformer(m).apply({"params": random_params(pgvt.PoseVideoTransformer(m))},
                                       random_batch(m))
  with pytest.raises(ValueError, match=r"config.model.attention_impl='flash'"):
    ModelConfig(attention_impl="flash")


def test_auto_attention_picks_cudnn_only_where_cudnn_runs():
  # Per device kind and call shape: tests/test_accelerators.py (fake T4/A100/H100/TPU/CPU).
  resolve = layers.resolve_attention_impl
  want = accelerators.choose().attention  # this host's devices
  assert resolve("auto", jnp.bfloat16, 64) == want
  assert want == "xla" or jax.default_backend() == "gpu"


# ------------------------------------------------------------------ 4. compute dtype
def test_auto_dtype_follows_the_devices():
  assert ModelConfig().dtype == "auto"
  assert auto_dtype() == accelerators.choose().dtype
  assert ModelConfig().compute_dtype == jnp.dtype(auto_dtype())
  if jax.default_backend() == "cpu":
    assert ModelConfig().compute_dtype == jnp.float32
  with pytest.raises(ValueError, match=r"config.model.dtype='bf16'"):
    ModelConfig(dtype="bf16")


def test_bfloat16_keeps_layernorm_and_softmax_in_float32():
  m = tiny("pgvt", dtype="bfloat16")
  model = pgvt.PoseVideoTransformer(m)
  params, batch = random_params(model), random_batch(m)
  jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, batch))(params)
  seen = {}

  def walk(jpr):
    for eqn in jpr.eqns:
      if eqn.primitive.name in ("exp", "rsqrt"):  # softmax / LayerNorm statistics
        seen.setdefault(eqn.primitive.name, set()).add(str(eqn.invars[0].aval.dtype))
      if eqn.primitive.name == "dot_general":
        seen.setdefault("dot_general", set()).add(str(eqn.invars[0].aval.dtype))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  assert seen["exp"] == {"float32"} and seen["rsqrt"] == {"float32"}, seen
  assert "bfloat16" in seen["dot_general"], seen  # the matmuls do run in bf16


def test_bfloat16_train_step_keeps_float32_params_and_a_finite_loss():
  config = _tiny_config("video_only", dtype="bfloat16")
  model, _, trainable, frozen, tx, schedule = bench.setup(config, 2)
  state = steps.init_state(trainable, tx, 0)
  host = bench.synthetic_batch(config.model, 2, config.model.num_classes)
  with _unoptimised():
    step = jax.jit(steps.make_train_step(model, tx, fitting.fixed(config), schedule))
    state, metrics = step(state, frozen, host)
    state, metrics = step(state, frozen, host)
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
  dtypes = {str(x.dtype) for x in jax.tree.leaves((state["params"], frozen))}
  assert dtypes == {"float32"}, dtypes
  # Against float32 on the same params and batch: within bf16 rounding, not equal.
  params, inputs = common.merge_params(state["params"], frozen), steps.model_inputs(host)
  model32 = pgvt.create_model(ModelConfig.from_config(config.model).replace(dtype="float32"))
  with _unoptimised():
    logits16, _ = jax.jit(model.apply)({"params": params}, inputs)
    logits32, _ = jax.jit(model32.apply)({"params": params}, inputs)
  err = float(jnp.abs(logits16 - logits32).max())
  assert 0 < err < 0.05 * float(jnp.abs(logits32).max()) + 1e-3, err
