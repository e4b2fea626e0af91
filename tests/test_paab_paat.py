"""PAAB (Eq. 5-6) and PAAT (Eq. 7-8) against NumPy references written from the paper."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from pgvt_jax import losses
from pgvt_jax.models import layers, paab, paat

EPS = 1e-6
pytestmark = pytest.mark.usefixtures("fast_compiles")


# ------------------------------------------------------------------ NumPy reference (paper)
def _ln(x, p):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + EPS) * p["scale"] + p["bias"]


def _softmax_rows(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _attend(p, x, queries, keys):
  """Multi-head attention of rows `queries` of x over rows `keys` of x only: keys outside the
  pose set get alpha = 0 (Eq. 5/6), i.e. are simply not in the softmax. Returns (len(q), D)."""
  q = np.einsum("ld,dhk->lhk", x[queries], p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("ld,dhk->lhk", x[keys], p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("ld,dhk->lhk", x[keys], p["value"]["kernel"]) + p["value"]["bias"]
  a = _softmax_rows(np.einsum("qhk,shk->hqs", q, k) / math.sqrt(q.shape[-1]))
  y = np.einsum("hqs,shk->qhk", a, v)
  return np.einsum("qhk,hkd->qd", y, p["out"]["kernel"]) + p["out"]["bias"]


def _mlp(p, x):
  h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
  return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def reference_paab(params, cls, patches, p2d, variant):
  """One sample at a time, token by token: only CLS and pose tokens are queried and keyed."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  cls, patches = np.asarray(cls, np.float64), np.asarray(patches, np.float64)
  b, t, n, d = patches.shape
  c = cls.shape[1]
  out_cls, out_patches = cls.copy(), patches.copy()
  for bi in range(b):
    x = patches[bi].copy()                                            # (T, N, D)
    if variant == "fact_pa_sta":                                      # Eq. 2 alpha^time, all
      for ni in range(n):
        seq = _ln(x[:, ni], p["temporal_norm"])
        y = _attend(p["temporal_attn"], seq, np.arange(t), np.arange(t))
        x[:, ni] = x[:, ni] + y @ p["temporal_fc"]["kernel"] + p["temporal_fc"]["bias"]
    pose = [np.flatnonzero(p2d[bi, ti] > 0) for ti in range(t)]
    if variant == "joint_pa_sta":                                     # Eq. 5
      seq = np.concatenate([cls[bi], x.reshape(t * n, d)])            # (C + T N, D)
      active = np.concatenate([np.arange(c)] + [c + ti * n + pose[ti] for ti in range(t)])
      y = np.zeros_like(seq)
      y[active] = _attend(p["attn"], _ln(seq, p["ln_1"]), active, active)
      h_cls, h = cls[bi] + y[:c], x + y[c:].reshape(t, n, d)
    else:                                                             # Eq. 6, per frame
      h, cls_per_frame = x.copy(), []
      for ti in range(t):
        seq = np.concatenate([cls[bi, ti if c == t else 0][None], x[ti]])  # (1 + N, D)
        active = np.concatenate([[0], 1 + pose[ti]])
        y = _attend(p["attn"], _ln(seq, p["ln_1"]), active, active)
        cls_per_frame.append(y[0])
        h[ti, pose[ti]] += y[1:]
      y_cls = np.stack(cls_per_frame)
      h_cls = cls[bi] + (y_cls.mean(0, keepdims=True) if c == 1 else y_cls)
    h_cls = h_cls + _mlp(p["mlp"], _ln(h_cls, p["ln_2"]))
    h = h + _mlp(p["mlp"], _ln(h, p["ln_2"]))
    out_cls[bi] = h_cls
    for ti in range(t):                                               # pose tokens updated,
      out_patches[bi, ti, pose[ti]] = h[ti, pose[ti]]                 # the rest keep input
  return out_cls, out_patches


def _inputs(seed, b=2, t=3, n=16, d=16, c=1):
  r = np.random.default_rng(seed)
  cls = r.normal(size=(b, c, d)).astype(np.float32)
  patches = r.normal(size=(b, t, n, d)).astype(np.float32)
  p2d = (r.random((b, t, n)) < 0.3).astype(np.float32)
  p2d[0, 1] = 0.0                  # a frame with no pose token at all
  p2d[1, 0] = 1.0                  # a frame that is all pose
  return cls, patches, p2d


def _randomize(params, seed):
  """Non-trivial LayerNorm/bias values so the reference checks every parameter's role."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [l + 0.1 * jax.random.normal(k, l.shape)
                                   for l, k in zip(leaves, keys)])


@pytest.mark.parametrize("variant", paab.VARIANTS)
@pytest.mark.parametrize("c", [1, 3])
def test_paab_equals_numpy_reference(variant, c):
  cls, patches, p2d = _inputs(0, c=c)
  block = paab.PAAB(num_heads=4, variant=variant)
  params = block.init(jax.random.key(1), cls, patches, p2d)["params"]
  params = _randomize(params, 2)
  out_cls, out = block.apply({"params": params}, cls, patches, p2d)
  ref_cls, ref = reference_paab(params, cls, patches, p2d, variant)
  assert out_cls.shape == (2, c, 16) and out.shape == patches.shape
  np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(np.asarray(out_cls), ref_cls, atol=2e-5, rtol=2e-5)
  # Non-pose tokens leave bit-identical; pose tokens do change.
  nonpose = p2d == 0
  np.testing.assert_array_equal(np.asarray(out)[nonpose], patches[nonpose])
  assert np.abs(np.asarray(out)[~nonpose] - patches[~nonpose]).min() > 0


def test_paab_masks_non_pose_keys():
  """Changing a non-pose token changes no output (it is neither queried nor keyed), except
  through the unmasked temporal attention of the factorized variant."""
  cls, patches, p2d = _inputs(3)
  other = patches.copy()
  other[p2d == 0] += 5.0
  for variant in paab.VARIANTS:
    block = paab.PAAB(num_heads=4, variant=variant)
    params = {"params": _randomize(block.init(jax.random.key(0), cls, patches, p2d)["params"], 1)}
    a_cls, a = block.apply(params, cls, patches, p2d)
    b_cls, b = block.apply(params, cls, other, p2d)
    pose = p2d > 0
    same = variant != "fact_pa_sta"
    assert np.array_equal(np.asarray(a)[pose], np.asarray(b)[pose]) == same, variant
    assert np.array_equal(np.asarray(a_cls), np.asarray(b_cls)) == same, variant


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_paab_never_nan(dtype):
  """No pose token anywhere / in some frames, large logits, low precision: finite values and
  finite gradients (CLS is always a key, so no softmax row is empty)."""
  cls, patches, p2d = _inputs(4, c=3)
  p2d = np.stack([np.zeros_like(p2d[0]), p2d[1]])                    # sample 0: no pose at all
  for variant in paab.VARIANTS:
    block = paab.PAAB(num_heads=4, variant=variant, dtype=dtype)
    params = block.init(jax.random.key(0), cls, patches, p2d)
    out_cls, out = jax.jit(block.apply)(params, cls * 30, patches * 30, p2d)  # large logits
    assert np.isfinite(np.asarray(out, np.float32)).all()
    assert np.isfinite(np.asarray(out_cls, np.float32)).all()
    if dtype == jnp.float32:  # gradients too (one compile per variant is enough)
      grads = jax.jit(jax.grad(lambda pr: block.apply(pr, cls, patches, p2d)[0].sum()))(params)
      assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in jax.tree.leaves(grads))


def test_paab_params_are_one_vit_block_and_timm_init():
  d = 64
  cls, patches = jnp.zeros((1, 1, d)), jnp.zeros((1, 2, 4, d))
  p2d = jnp.ones((1, 2, 4))
  count = lambda v: sum(x.size for x in jax.tree.leaves(jax.eval_shape(
      paab.PAAB(num_heads=4, variant=v).init, jax.random.key(0), cls, patches, p2d)))
  vit_block = 12 * d * d + 13 * d   # qkv + proj + fc1 + fc2 (+ biases) + 2 LayerNorms
  assert count("pa_sa") == count("joint_pa_sta") == vit_block
  assert count("fact_pa_sta") == vit_block + 4 * (d * d + d) + 2 * d + (d * d + d)
  # timm trunc_normal_(std=.02): truncation at +-2 absolute (never reached), so the sample std
  # is 0.02 and values beyond 2 sigma occur (~4.6%), unlike flax's truncated_normal(0.02).
  w = np.asarray(layers.trunc_normal()(jax.random.key(0), (400, 500)))
  assert abs(w.std() - 0.02) < 3e-4 and abs(w.mean()) < 3e-4
  assert 0.04 < np.mean(np.abs(w) > 0.04) < 0.052
  flax_w = np.asarray(jax.nn.initializers.truncated_normal(0.02)(jax.random.key(0), (400, 500)))
  assert np.abs(flax_w).max() <= 2 * 0.02 / 0.87962566 + 1e-6


def test_paab_drop_path_and_shape_errors():
  cls, patches, p2d = _inputs(5)
  block = paab.PAAB(num_heads=4, drop_path=0.5)
  params = block.init(jax.random.key(0), cls, patches, p2d)
  ev = block.apply(params, cls, patches, p2d)
  tr = block.apply(params, cls, patches, p2d, train=True, rngs={"drop_path": jax.random.key(1)})
  assert not np.allclose(np.asarray(ev[1]), np.asarray(tr[1]))
  nonpose = p2d == 0
  np.testing.assert_array_equal(np.asarray(tr[1])[nonpose], patches[nonpose])
  with pytest.raises(ValueError, match="p2d"):
    block.apply(params, cls, patches, p2d[:, :2])
  with pytest.raises(ValueError, match=r"\(B, 1, D\) or \(B, T, D\)"):
    block.apply(params, jnp.zeros((2, 2, 16)), patches, p2d)
  with pytest.raises(ValueError, match="variant"):
    paab.PAAB(num_heads=4, variant="spatial").init(jax.random.key(0), cls, patches, p2d)


# --------------------------------------------------------------------------------- PAAT
def test_paat_head_and_loss_equal_numpy():
  r = np.random.default_rng(0)
  patches = r.normal(size=(2, 3, 16, 32)).astype(np.float32)
  targets = (r.random((2, 3, 16, 5)) < 0.2).astype(np.float32)
  head = paat.PAATHead(num_keypoints=5, hidden=8)
  params = head.init(jax.random.key(0), patches)["params"]
  assert {k: v["kernel"].shape for k, v in params.items()} == {"fc1": (32, 8), "fc2": (8, 5)}
  # Neither linear is zero: the backbone gets a PAAT gradient from the first step.
  assert all(np.abs(np.asarray(v["kernel"])).min() >= 0 and np.asarray(v["kernel"]).std() > 0.01
             for v in params.values())
  params = _randomize(params, 1)
  logits = head.apply({"params": params}, patches)
  p = jax.tree.map(np.asarray, params)
  ref_logits = (patches @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"] \
      + p["fc2"]["bias"]                                                 # Eq. 7, no activation
  np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=1e-5, atol=1e-5)
  prob = 1 / (1 + np.exp(-ref_logits.astype(np.float64)))
  bce = -np.mean(targets * np.log(prob) + (1 - targets) * np.log(1 - prob))   # Eq. 8
  assert float(paat.paat_loss(logits, targets)) == pytest.approx(bce, rel=1e-5)
  # Through the registered aux loss (what the trainer calls).
  aux = losses.get_aux_loss("paat")({"paat_logits": logits, "paat_targets": targets}, {})
  assert float(aux) == pytest.approx(bce, rel=1e-5)
  # Extreme logits stay finite (log-sigmoid form).
  assert np.isfinite(float(paat.paat_loss(jnp.full((4, 1), 200.0), jnp.zeros((4, 1)))))
  with pytest.raises(ValueError, match="differ"):
    paat.paat_loss(logits, targets[..., :1])
  with pytest.raises(ValueError, match="paat_layer"):
    losses.get_aux_loss("paat")({"logits": logits}, {})


def test_strip_training_only():
  params = {"paat_head": {"fc1": {}}, "head": {"kernel": 1}, "paab_12": {"x": 2}}
  assert paat.strip_training_only(params) == {"head": {"kernel": 1}, "paab_12": {"x": 2}}
