"""models/attention.py: the custom-VJP attention equals jax.nn's XLA attention (values and
gradients, float32) and keeps no (B, H, L, L) tensor for the backward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgvt_jax.models import attention, pgvt
from pgvt_jax.models.config import ModelConfig

B, L, H, D = 2, 11, 3, 16


def _inputs(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(B, L, H, D)), dtype) for _ in range(3))
  bias = jnp.asarray(rng.normal(size=(1, H, L, L)), jnp.float32)   # broadcast over B
  mask = jnp.asarray(rng.random((B, 1, 1, L)) > 0.3).at[..., 0].set(True)  # key mask
  return q, k, v, bias, mask


@pytest.mark.parametrize("with_bias,with_mask", [(False, False), (True, False), (False, True),
                                                 (True, True)])
def test_values_and_gradients_equal_jax_nn_in_float32(with_bias, with_mask):
  q, k, v, bias, mask = _inputs()
  mask = mask if with_mask else None

  def loss(impl):
    def f(q, k, v, bias):
      y = attention.dot_product_attention(q, k, v, bias=bias if with_bias else None,
                                          mask=mask, implementation=impl)
      return jnp.sum(jnp.sin(y)), y  # a non-linear loss: every output gets its own cotangent
    return f

  (_, y), grads = jax.value_and_grad(loss("xla"), argnums=(0, 1, 2, 3), has_aux=True)(
      q, k, v, bias)
  (_, y_ref), grads_ref = jax.value_and_grad(loss("xla_saved"), argnums=(0, 1, 2, 3),
                                             has_aux=True)(q, k, v, bias)
  np.testing.assert_allclose(y, y_ref, atol=1e-6)
  for name, g, g_ref in zip("qkvb", grads, grads_ref):
    assert g.shape == g_ref.shape and g.dtype == g_ref.dtype, name
    np.testing.assert_allclose(g, g_ref, atol=1e-5, err_msg=name)
  if with_bias:
    assert float(jnp.abs(grads[3]).max()) > 1e-3  # the bias gradient is not silently zero


def test_backward_keeps_no_attention_matrix():
  q, k, v, _, _ = _inputs(jnp.bfloat16)
  f = lambda impl: lambda q, k, v: attention.dot_product_attention(q, k, v, implementation=impl)
  square = lambda fn: [x.shape for x in jax.tree.leaves(jax.vjp(fn, q, k, v)[1])
                       if x.shape[-2:] == (L, L)]
  assert square(f("xla_saved"))          # jax.nn's path saves the probabilities ...
  assert not square(f("xla"))            # ... ours only q, k, v and the log-sum-exp
  residuals = jax.tree.leaves(jax.vjp(f("xla"), q, k, v)[1])
  assert sum(x.nbytes for x in residuals) <= 3 * q.nbytes + B * H * L * 4 + 64


def test_bfloat16_gradients_close_to_jax_nn():
  q, k, v, _, _ = _inputs(jnp.bfloat16)
  loss = lambda impl: lambda q, k, v: jnp.sum(attention.dot_product_attention(
      q, k, v, implementation=impl).astype(jnp.float32) ** 2)
  grads = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  grads_ref = jax.grad(loss("xla_saved"), argnums=(0, 1, 2))(q, k, v)
  for g, g_ref in zip(grads, grads_ref):
    assert g.dtype == jnp.bfloat16
    scale = float(jnp.abs(g_ref.astype(jnp.float32)).max())
    np.testing.assert_allclose(g.astype(np.float32), g_ref.astype(np.float32),
                               atol=0.02 * scale)


def test_unknown_implementation_is_an_error():
  q, k, v, _, _ = _inputs()
  with pytest.raises(ValueError, match="'flash'"):
    attention.dot_product_attention(q, k, v, implementation="flash")


def test_model_gradients_equal_with_saved_and_recomputed_probabilities():
  # A whole PGVT (CLIP blocks, R-Adapter, PAAB's masked attention) in float32.
  m = ModelConfig(variant="pgvt", backbone="Ti/8", image_size=32, pose_frames=4,
                  video_frames=2, num_classes=5, dtype="float32", drop_path=0.0, dropout=0.0,
                  paab_layers=(1,))
  model = pgvt.PoseVideoTransformer(m)
  params = pgvt.init_params(model, jax.random.key(0))
  rng = np.random.default_rng(1)
  batch = {k: jnp.asarray(rng.random(s.shape), s.dtype) if s.dtype != jnp.uint8 else
           jnp.asarray(rng.integers(0, 256, s.shape), s.dtype)
           for k, s in pgvt.input_spec(m, 2).items()}
  batch["pose_mask"] = jnp.ones_like(batch["pose_mask"])

  def loss(impl):
    mod = pgvt.PoseVideoTransformer(m.replace(attention_impl=impl))
    return lambda p: jnp.sum(mod.apply({"params": p}, batch, train=False)[0] ** 2)

  g = jax.grad(loss("xla"))(params)
  g_ref = jax.grad(loss("xla_saved"))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), g, g_ref)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g)) > 0


def test_benchmark_reports_less_temp_memory_with_recomputed_probabilities(tmp_path):
  from benchmarks import attention_memory  # pylint: disable=g-import-not-at-top
  out = attention_memory.main(["--config=tiny,runlocal", "--batch=2",
                               f"--json={tmp_path / 'r.json'}"])
  before, after = out["results"]["xla_saved"], out["results"]["xla"]
  assert before["fits"] and after["fits"]
  assert after["temp_bytes"] < before["temp_bytes"]
  assert after["argument_bytes"] == before["argument_bytes"]
  assert (tmp_path / "r.json").is_file()


def test_recomputation_is_fenced_from_common_subexpression_elimination():
  # Inside one jit, the backward's q k^T is the forward's expression again: XLA:TPU merged
  # the two and kept the float32 logits alive (compile-only v5e, benchmarks/RESULTS.md), so
  # the backward reads its residuals through an optimization barrier. XLA:CPU does not merge
  # them, so the memory effect is visible only on TPU; this checks the fence is there.
  q, k, v, _, _ = _inputs(jnp.bfloat16)
  loss = lambda impl: lambda q: jnp.sum(attention.dot_product_attention(
      q, k, v, implementation=impl).astype(jnp.float32))
  assert "optimization_barrier" in jax.jit(jax.grad(loss("xla"))).lower(q).as_text()
  assert "optimization_barrier" not in jax.jit(jax.grad(loss("xla_saved"))).lower(q).as_text()
