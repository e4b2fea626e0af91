"""Scaled dot-product attention whose backward pass keeps no `(B, H, Lq, Lk)` tensor.

    y = attention.dot_product_attention(q, k, v, bias=None, mask=None, implementation="xla")

q `(B, Lq, H, d)`, k/v `(B, Lk, H, d)` -> `(B, Lq, H, d)`; `bias` (float) is added to the
logits and `mask` (bool, True = attend) selects keys, both broadcasting to `(B, H, Lq, Lk)`.
The arithmetic is `jax.nn.dot_product_attention`'s XLA path: logits accumulated in float32,
softmax in float32, probabilities cast to v's dtype for the second matmul.

Why a custom VJP: differentiated through autodiff, that XLA path saves the float32
exponentials and the cast probabilities of every attention call for the backward pass:
6 bytes x H x Lq x Lk per image and layer, the largest residuals of a ViT-B/16 train step
(197 tokens, 12 heads: ~2.8 MB per frame and layer). Here the forward saves q, k, v (which
the matmuls' backward needs anyway) and the float32 log-sum-exp of each row `(B, H, Lq)`; the
backward recomputes the probabilities from them (FlashAttention's recipe in one block: CLIP's
sequences are short) at the cost of one more q k^T matmul, ~1% of a ViT block's FLOPs.

Implementations (`config.model.attention_impl` after `layers.resolve_attention_impl`):
  "xla"        this module's custom-VJP attention (the default on CPU, TPU and GPUs without
               cuDNN flash attention).
  "xla_saved"  `jax.nn.dot_product_attention(implementation="xla")`: the same forward, the
               probabilities saved by autodiff (more memory; no recompute).
  "cudnn"      `jax.nn.dot_product_attention(implementation="cudnn")` (fused flash kernel).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# jax.nn.dot_product_attention's fill for masked logits (finite, so a fully masked row
# is uniform rather than NaN, as there).
_MASKED = -0.7 * float(np.finfo(np.float32).max)


def _precision(dtype):
  """Half-precision inputs, float32 accumulation: jax.nn's choice (jax issue 24047)."""
  if dtype == jnp.bfloat16:
    return jax.lax.DotAlgorithmPreset.BF16_BF16_F32
  if dtype == jnp.float16:
    return jax.lax.DotAlgorithmPreset.F16_F16_F32
  return None


def _logits(q: Array, k: Array, bias: Optional[Array], mask: Optional[Array],
            scale: float) -> Array:
  """float32 `(B, H, Lq, Lk)` scaled, biased, masked logits (as jax.nn computes them)."""
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=_precision(q.dtype),
                 preferred_element_type=jnp.float32)
  s = s * jnp.float32(scale)
  if bias is not None:
    s = (s + bias).astype(jnp.float32)
  if mask is not None:
    s = jnp.where(mask, s, jnp.float32(_MASKED))
  return s


def _forward(q, k, v, bias, mask, scale):
  s = _logits(q, k, bias, mask, scale)
  m = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.exp(s - m)
  total = jnp.sum(e, axis=-1, keepdims=True)
  p = (e / total).astype(v.dtype)
  y = jnp.einsum("bhqk,bkhd->bqhd", p, v)
  return y, m + jnp.log(total)  # log-sum-exp (B, H, Lq, 1) float32


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _lean_attention(q, k, v, bias, mask, scale):
  return _forward(q, k, v, bias, mask, scale)[0]


def _lean_fwd(q, k, v, bias, mask, scale):
  y, lse = _forward(q, k, v, bias, mask, scale)
  return y, (q, k, v, bias, mask, lse)


def _unbroadcast(x: Array, shape: tuple[int, ...]) -> Array:
  """Sums `x` over the axes a `shape`-shaped operand was broadcast along."""
  lead = x.ndim - len(shape)
  axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                    if n == 1 and x.shape[lead + i] != 1)
  return jnp.sum(x, axis=axes, keepdims=True).reshape(shape)


def _lean_bwd(scale, res, g):
  # The barrier makes the recomputed logits a new value: without it XLA's CSE merges them
  # with the forward's and keeps those alive until here (seen on TPU: more memory, not less).
  q, k, v, bias, mask, lse = jax.lax.optimization_barrier(res)
  p = jnp.exp(_logits(q, k, bias, mask, scale) - lse)             # (B, H, Lq, Lk) float32
  dv = jnp.einsum("bhqk,bqhd->bkhd", p.astype(v.dtype), g.astype(v.dtype))
  dp = jnp.einsum("bqhd,bkhd->bhqk", g.astype(v.dtype), v, precision=_precision(v.dtype),
                  preferred_element_type=jnp.float32)
  ds = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))         # softmax VJP, float32
  dbias = None if bias is None else _unbroadcast(ds, bias.shape).astype(bias.dtype)
  ds = (ds * jnp.float32(scale)).astype(q.dtype)
  dq = jnp.einsum("bhqk,bkhd->bqhd", ds, k, precision=_precision(q.dtype),
                  preferred_element_type=jnp.float32).astype(q.dtype)
  dk = jnp.einsum("bhqk,bqhd->bkhd", ds, q, precision=_precision(k.dtype),
                  preferred_element_type=jnp.float32).astype(k.dtype)
  return dq, dk, dv.astype(v.dtype), dbias, None


_lean_attention.defvjp(_lean_fwd, _lean_bwd)

IMPLEMENTATIONS = ("xla", "xla_saved", "cudnn")


def attention_weights(q: Array, k: Array, bias: Optional[Array] = None,
                      mask: Optional[Array] = None) -> Array:
  """The probabilities `(B, H, Lq, Lk)` float32 the paths below never keep (for figures):
  softmax of the same logits, q `(B, Lq, H, d)`, k `(B, Lk, H, d)`."""
  return jax.nn.softmax(_logits(q, k, bias, mask, float(1.0 / np.sqrt(q.shape[-1]))), axis=-1)


def dot_product_attention(q: Array, k: Array, v: Array, bias: Optional[Array] = None,
                          mask: Optional[Array] = None, implementation: str = "xla") -> Array:
  """softmax(q k^T / sqrt(d) + bias, keys where mask) v: `(B, Lq, H, d)` (see module doc)."""
  if implementation == "xla":
    if mask is not None:
      mask = jnp.asarray(mask, jnp.bool_)
    return _lean_attention(q, k, v, bias, mask, float(1.0 / np.sqrt(q.shape[-1])))
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r}; expected one of "
                     f"{list(IMPLEMENTATIONS)}")
  jax_impl = "xla" if implementation == "xla_saved" else implementation
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=jax_impl)
