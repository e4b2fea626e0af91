"""PGVT Eq. 1, 3, 4, 5 re-implemented in NumPy from the paper, against the Flax modules.

The references below are written from Sec. 3.3 of the paper (and AIM's adapter definition),
not from pgvt_jax: plain NumPy loops over frames and heads. They share only the parameter
values (every leaf randomised, so zero-initialised adapters/W^O do not hide terms).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgvt_jax.models import clip_vit
from pgvt_jax.models.adapters import RefiningAdapter
from pgvt_jax.models.config import ModelConfig
from pgvt_jax.models.pgvt import PoseVideoBlock

B, T_H, T_L, N_P, N_Z = 2, 6, 3, 4, 5
CLIP = clip_vit.get_config("Ti/8", heads=4)    # D = 64, 4 heads in the frozen attention
D = CLIP.width
R_HEADS = 2                                     # R-Adapter heads (d_k = 32)
ATOL = 1e-5


# ------------------------------------------------------------------ NumPy reference pieces
def ln(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def softmax(a):
  a = a - a.max(-1, keepdims=True)
  e = np.exp(a)
  return e / e.sum(-1, keepdims=True)


def linear_heads(x, p):
  """x (L, D) @ kernel (D, H, dk) + bias (H, dk) -> (L, H, dk)."""
  return np.einsum("ld,dhk->lhk", x, p["kernel"]) + p["bias"]


def attend(q, k, v):
  """Multi-head softmax(q k^T / sqrt(d_k)) v for one sequence: (Lq, H, dk) -> (Lq, H, dk)."""
  out = np.zeros_like(q)
  for h in range(q.shape[1]):
    a = softmax(q[:, h] @ k[:, h].T / math.sqrt(q.shape[-1]))
    out[:, h] = a @ v[:, h]
  return out


def out_proj(a, p):
  return np.einsum("lhk,hkd->ld", a, p["kernel"]) + p["bias"]


def frozen_attn(x, p):
  """Attn = LayerNorm + MSA of the frozen CLIP block, over the rows of x (L, D)."""
  xn = ln(x, p["ln_1"])
  q, k, v = (linear_heads(xn, p["attn"][n]) for n in ("query", "key", "value"))
  return out_proj(attend(q, k, v), p["attn"]["out"])


def gelu(x):
  return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def adapter(x, p, skip):
  """AIM Adapter: fc2(GELU(fc1(x))), plus x if skip."""
  h = gelu(x @ p["D_fc1"]["kernel"] + p["D_fc1"]["bias"]) @ p["D_fc2"]["kernel"]
  h = h + p["D_fc2"]["bias"]
  return x + h if skip else h


def mlp(x, p):
  h = x @ p["c_fc"]["kernel"] + p["c_fc"]["bias"]
  h = h / (1 + np.exp(-1.702 * h))  # QuickGELU
  return h @ p["c_proj"]["kernel"] + p["c_proj"]["bias"]


# -------------------------------------------------------------------- paper equations
def eq1(P, p):
  """P^T = P + Adapter(T-Attn(P)): T-Attn over the T_h frames of each pose token."""
  out = P.copy()
  for b in range(P.shape[0]):
    for n in range(P.shape[2]):
      out[b, :, n] += adapter(frozen_attn(P[b, :, n], p), p["T_Adapter_pose"], skip=False)
  return out


def eq3(x_p, x_z, r, refine_pose=True, refine_video=True):
  """R-Adapter: FC_down over time, per-frame cross attention, W^O, FC_up, skips."""
  x_hat = np.einsum("btnd,ts->bsnd", x_p, r["fc_down"]["kernel"])
  x_hat = x_hat + r["fc_down"]["bias"][:, None, None]
  p_r, z_r = x_p.copy(), x_z.copy()
  if refine_pose:
    att = np.zeros(x_hat.shape)
    for b in range(x_p.shape[0]):
      for t in range(x_z.shape[1]):
        q = linear_heads(x_hat[b, t], r["pose_query"])
        k = linear_heads(x_z[b, t], r["video_key"])
        v = linear_heads(x_z[b, t], r["video_value"])
        att[b, t] = out_proj(attend(q, k, v), r["pose_out"])
    up = np.einsum("bsnd,st->btnd", att, r["fc_up"]["kernel"])
    p_r = x_p + up + r["fc_up"]["bias"][:, None, None]
  if refine_video:
    for b in range(x_z.shape[0]):
      for t in range(x_z.shape[1]):
        q = linear_heads(x_z[b, t], r["video_query"])
        k = linear_heads(x_hat[b, t], r["pose_key"])
        v = linear_heads(x_hat[b, t], r["pose_value"])
        z_r[b, t] = x_z[b, t] + out_proj(attend(q, k, v), r["video_out"])
  return p_r, z_r


def eq4(P_T, Z, p):
  """P^S = P^T + P^R, Z^S = Z + Z^R with x_P = S_Adapter(S-Attn(P^T)), x_Z likewise."""
  per_frame = lambda X, name: np.stack([np.stack([adapter(frozen_attn(X[b, t], p), p[name], True)
                                                  for t in range(X.shape[1])])
                                        for b in range(X.shape[0])])
  x_p, x_z = per_frame(P_T, "S_Adapter_pose"), per_frame(Z, "S_Adapter")
  p_r, z_r = eq3(x_p, x_z, p["R_Adapter"])
  return P_T + p_r, Z + z_r


def eq5(X, p, name, s=0.5):
  """X + MLP(LN(X)) + s * Adapter(LN(X))."""
  xn = ln(X, p["ln_2"])
  return X + mlp(xn, p["mlp"]) + s * adapter(xn, p[name], skip=False)


# ------------------------------------------------------------------------------ fixtures
# Tiny models compile several times faster without XLA's optimisation passes.
pytestmark = pytest.mark.usefixtures("fast_compiles")


def _randomise(params, seed):
  """Every leaf random (std 0.1; LayerNorm scales 1 +- 0.1): activations stay O(1)."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  rng = np.random.default_rng(seed)
  new = [(0.1 * rng.normal(size=x.shape) + (path[-1].key == "scale")).astype(np.float32)
         for path, x in leaves]
  return jax.tree_util.tree_unflatten(tree, new)


def _np(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)


@pytest.fixture(scope="module")
def block_and_params():
  model = ModelConfig(variant="pgvt", backbone="Ti/8", pose_frames=T_H, video_frames=T_L,
                      refine_heads=R_HEADS, drop_path=0.0)
  block = PoseVideoBlock(CLIP, model=model)
  rng = np.random.default_rng(0)
  P = rng.normal(size=(B, T_H, N_P, D)).astype(np.float32)
  Z = rng.normal(size=(B, T_L, N_Z, D)).astype(np.float32)
  params = jax.jit(block.init)(jax.random.key(0), P, Z)["params"]
  params = _randomise(params, 1)
  return block, params, P, Z


def test_eq1_pose_temporal_attention(block_and_params):
  block, params, P, _ = block_and_params
  got = jax.jit(functools.partial(
      block.apply, method=lambda m, x: m.temporal(x, m.T_Adapter_pose, False)))(
          {"params": params}, P)
  np.testing.assert_allclose(got, eq1(P.astype(np.float64), _np(params)), atol=ATOL)


@pytest.mark.parametrize("refine_pose,refine_video", [(True, True), (False, True), (True, False)])
def test_eq3_refining_adapter(refine_pose, refine_video):
  rng = np.random.default_rng(1)
  x_p = rng.normal(size=(B, T_H, N_P, D)).astype(np.float32)
  x_z = rng.normal(size=(B, T_L, N_Z, D)).astype(np.float32)
  mod = RefiningAdapter(T_H, T_L, heads=R_HEADS, refine_pose=refine_pose,
                        refine_video=refine_video)
  params = _randomise(jax.jit(mod.init)(jax.random.key(0), x_p, x_z)["params"], 2)
  got_p, got_z = jax.jit(mod.apply)({"params": params}, x_p, x_z)
  want_p, want_z = eq3(x_p.astype(np.float64), x_z.astype(np.float64), _np(params),
                       refine_pose, refine_video)
  np.testing.assert_allclose(got_p, want_p, atol=ATOL)
  np.testing.assert_allclose(got_z, want_z, atol=ATOL)
  # A stream that is not refined passes through untouched (Table 4 rows 6i / 6ii).
  if not refine_pose:
    np.testing.assert_array_equal(got_p, x_p)
  if not refine_video:
    np.testing.assert_array_equal(got_z, x_z)


def test_eq4_pose_video_spatial_attention(block_and_params):
  block, params, P, Z = block_and_params
  got_p, got_z = jax.jit(functools.partial(block.apply, method=lambda m, p, z: m.spatial(p, z)))(
      {"params": params}, P, Z)
  want_p, want_z = eq4(P.astype(np.float64), Z.astype(np.float64), _np(params))
  np.testing.assert_allclose(got_p, want_p, atol=ATOL)
  np.testing.assert_allclose(got_z, want_z, atol=ATOL)


def test_eq5_block_output(block_and_params):
  block, params, P, Z = block_and_params
  for x, name in ((P, "MLP_Adapter_pose"), (Z, "MLP_Adapter")):
    got = jax.jit(functools.partial(
        block.apply, method=lambda m, x: m.output(x, getattr(m, name), False)))(
            {"params": params}, x)
    np.testing.assert_allclose(got, eq5(x.astype(np.float64), _np(params), name), atol=ATOL)


def test_full_block_is_eq1_then_eq4_then_eq5(block_and_params):
  block, params, P, Z = block_and_params
  got_p, got_z = jax.jit(block.apply)({"params": params}, P, Z)
  p64, q = _np(params), P.astype(np.float64)
  p_s, z_s = eq4(eq1(q, p64), Z.astype(np.float64), p64)
  np.testing.assert_allclose(got_p, eq5(p_s, p64, "MLP_Adapter_pose"), atol=ATOL)
  np.testing.assert_allclose(got_z, eq5(z_s, p64, "MLP_Adapter"), atol=ATOL)
