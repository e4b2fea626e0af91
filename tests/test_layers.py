"""The shared layers (pgvt_jax/models/layers.py): one attention in two parameter layouts, the
key mask, stochastic depth's draws, and timm's initialiser on the TimeSformer family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgvt_jax.models import layers, timesformer


def test_fused_and_separate_qkv_layouts_compute_the_same_attention():
  """TimeSformer's qkv/proj and CLIP/PAAB's query/key/value/out hold the same maps."""
  d, h = 32, 4
  x = jax.random.normal(jax.random.key(0), (2, 3, 7, d))
  fused = layers.Attention(h, fused_qkv=True)
  pf = fused.init(jax.random.key(1), x)["params"]
  sep = {n: {"kernel": pf["qkv"]["kernel"][:, i * d:(i + 1) * d].reshape(d, h, d // h),
             "bias": pf["qkv"]["bias"][i * d:(i + 1) * d].reshape(h, d // h)}
         for i, n in enumerate(("query", "key", "value"))}
  sep["out"] = {"kernel": pf["proj"]["kernel"].reshape(h, d // h, d), "bias": pf["proj"]["bias"]}
  np.testing.assert_allclose(layers.Attention(h).apply({"params": sep}, x),
                             fused.apply({"params": pf}, x), atol=1e-5)


def test_key_mask_gives_masked_keys_no_weight():
  x = jax.random.normal(jax.random.key(0), (3, 6, 16))
  keys = jnp.array([[1, 1, 0, 0, 1, 0]] * 3, bool)
  attn = layers.Attention(2)
  params = attn.init(jax.random.key(1), x)
  fused = attn.apply(params, x, key_mask=keys)
  recorded, state = attn.apply(params, x, key_mask=keys, record="w", mutable=[layers.ATTENTION])
  w = state[layers.ATTENTION]["w"][0]                                  # (3, 6, 6)
  np.testing.assert_array_equal(w[..., ~np.asarray(keys[0])], 0.0)
  np.testing.assert_allclose(recorded, fused, atol=1e-5)
  # The kept tokens' outputs are those of attention over the kept tokens alone.
  idx = np.flatnonzero(keys[0])
  np.testing.assert_allclose(fused[:, idx], attn.apply(params, x[:, idx]), atol=1e-5)


def test_drop_path_draws_per_sample_shared_and_per_row():
  class Host(layers.nn.Module):
    axes: tuple

    @layers.nn.compact
    def __call__(self, xs):
      return layers.drop_path(self, xs, 0.5, train=True, axes=self.axes)

  rngs = {"drop_path": jax.random.key(0)}
  cls, patches = jnp.ones((16, 1, 4)), jnp.ones((16, 3, 5, 4))
  a, b = Host((0,)).apply({}, (cls, patches), rngs=rngs)
  assert set(np.unique(b)) == {0.0, 2.0}
  np.testing.assert_array_equal(a[:, 0, 0], b[:, 0, 0, 0])       # one draw per sample, shared
  assert (b == b[:, :1, :1, :1]).all()
  (c,) = Host((0, 1)).apply({}, (patches,), rngs=rngs)            # per (sample, row)
  assert (c == c[:, :, :1, :1]).all() and len(np.unique(c[:, :, 0, 0])) == 2
  np.testing.assert_array_equal(
      layers.drop_path(None, patches, 0.5, train=False), patches)


def test_timesformer_init_is_timms_trunc_normal():
  """Official `_init_weights`: trunc_normal_(std=.02), i.e. std 0.02 (flax's would be 0.0176)."""
  cfg = timesformer.get_config("Ti/16")
  frames = jnp.zeros((1, cfg.num_frames, cfg.image_size, cfg.image_size, 3))
  params = jax.jit(timesformer.TimeSformer(cfg).init)(jax.random.key(0), frames)["params"]
  w = np.concatenate([np.ravel(params[f"blocks_{i}"][n][m]["kernel"])
                      for i in range(cfg.layers) for n, m in (("attn", "qkv"), ("mlp", "fc1"),
                                                              ("mlp", "fc2"))])
  assert w.size > 300_000
  assert abs(w.std() / 0.02 - 1) < 0.01, w.std()
  assert np.abs(w).max() > 2 * 0.02  # not cut at 2 sigma


def test_drop_path_module_names_an_unknown_mode():
  with pytest.raises(ValueError, match="drop_path_mode='sample'"):
    layers.DropPath(0.5, "sample").apply({}, jnp.ones((2, 3, 4, 5)), deterministic=False,
                                         rngs={"drop_path": jax.random.key(0)})
