"""Pose-Aware Attention Block (PAAB; Reilly et al., Sec. 3.2, Eq. 5-6), written against a token
layout, not a backbone: it plugs into TimeSformer (one CLS per clip) and CLIP + AIM (one CLS per
frame) alike.

    cls, patches = PAAB(num_heads=12)(cls, patches, p2d, train=train)

A new, fully trainable pre-LN transformer block (masked MSA + MLP, timm's trunc_normal(.02)
init) whose attention is restricted to *pose tokens*, the patches with P^2D = 1 (pose_maps.py):
  pa_sa         PA-SA, Eq. 6: within each frame, [CLS, patches] attend, keys masked to CLS +
                pose tokens (the paper's default and best variant).
  fact_pa_sta   factorized PA-STA: unmasked temporal attention of each patch position over the
                frames (TimeSformer's temporal_norm/attn/fc), then PA-SA.
  joint_pa_sta  joint PA-STA, Eq. 5: [CLS..., all T*N patches] attend, keys masked to CLS + the
                pose tokens of every frame.
The mask adds "-inf" to the logits of non-pose keys (the paper's infinity(P^2D - 1) addend,
realised as a boolean mask in `attention.dot_product_attention`). CLS is always a key, so every
query row has at least one key: a frame without any pose token gives CLS-only attention, never
NaN. The rows of non-pose queries are computed but discarded: non-pose patch tokens leave the
block with their input values (Eq. 5/6: alpha = 0 for them; "MLP" included), pose tokens and CLS
are updated. With one CLS per clip (C == 1) the CLS is copied into every frame for PA-SA and the
per-frame results are averaged (TimeSformer's convention); with one CLS per frame (C == T) each
frame keeps its own.

Parameters (pa_sa / joint_pa_sta: exactly one ViT block, 12 D^2 + 13 D):
  ln_1, attn/{query,key,value,out}, ln_2, mlp/{fc1,fc2}
  fact_pa_sta adds temporal_norm, temporal_attn/{query,key,value,out}, temporal_fc.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from pgvt_jax.models import attention, clip_vit

Array = jax.Array
VARIANTS = ("pa_sa", "fact_pa_sta", "joint_pa_sta")


def trunc_normal_init(std: float = 0.02, bound: float = 2.0):
  """timm's `trunc_normal_(std=.02)`: N(0, std^2) truncated at +-`bound` in *absolute* units.

  (flax's `truncated_normal(0.02)` truncates at 2 standard deviations instead.)
  """
  def init(key, shape, dtype=jnp.float32):
    x = jax.random.truncated_normal(key, -bound / std, bound / std, shape, jnp.float32)
    return (x * std).astype(dtype)
  return init


class MaskedSelfAttention(nn.Module):
  """Multi-head self-attention over axis -2 with a key mask. `(B', L, D), (B', L) -> (B', L, D)`.

  Params query/key/value `(D, H, D/H)` + bias, out `(H, D/H, D)` + bias (timm's qkv/proj).
  """
  num_heads: int
  dtype: Any = None
  attention_impl: str = "auto"  # clip_vit.resolve_attention_impl ("auto": XLA when masked)

  @nn.compact
  def __call__(self, x: Array, key_mask: Array | None = None) -> Array:
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"PAAB: width {d} is not divisible by num_heads={self.num_heads}")
    # HeadsDense: DenseGeneral's params, one 2-D matmul (no per-step kernel relayout).
    dense = lambda name: clip_vit.HeadsDense(d // self.num_heads, self.num_heads,
                                             kernel_init=trunc_normal_init(), dtype=self.dtype,
                                             name=name)
    q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)   # (B', L, H, hd)
    mask = None if key_mask is None else key_mask[:, None, None, :]   # (B', 1, 1, L)
    impl = clip_vit.resolve_attention_impl(self.attention_impl, q.dtype, q.shape[-1],
                                           masked=mask is not None)
    y = attention.dot_product_attention(q, k, v, mask=mask, implementation=impl)
    return clip_vit.HeadsDense(d, kernel_init=trunc_normal_init(), dtype=self.dtype,
                               name="out")(y)


class Mlp(nn.Module):
  """timm's ViT MLP: fc1 (D -> ratio * D), exact GELU, fc2 (-> D)."""
  ratio: float = 4.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    h = nn.Dense(int(d * self.ratio), kernel_init=trunc_normal_init(), dtype=self.dtype,
                 name="fc1")(x)
    return nn.Dense(d, kernel_init=trunc_normal_init(), dtype=self.dtype,
                    name="fc2")(jax.nn.gelu(h, approximate=False))


class PAAB(nn.Module):
  """Pose-Aware Attention Block. `__call__(cls (B, C, D), patches (B, T, N, D), p2d (B, T, N),
  *, train) -> (cls (B, C, D), patches (B, T, N, D))`, C in {1, T}, patches row-major per frame.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  variant: str = "pa_sa"
  dtype: Any = None
  drop_path: float = 0.0      # stochastic depth of the two residual branches, per sample
  ln_eps: float = 1e-6        # timm/TimeSformer's LayerNorm eps (CLIP backbones pass 1e-5)
  attention_impl: str = "auto"  # config.model.attention_impl

  def _ln(self, name: str, x: Array) -> Array:
    return nn.LayerNorm(epsilon=self.ln_eps, name=name)(x).astype(self.dtype or x.dtype)

  def _drop(self, train: bool, *xs: Array) -> list[Array]:
    """One keep/drop decision per sample, shared by CLS and patches (timm DropPath)."""
    if not train or not self.drop_path:
      return list(xs)
    b = xs[0].shape[0]
    keep = jax.random.bernoulli(self.make_rng("drop_path"), 1.0 - self.drop_path, (b,))
    scale = keep.astype(jnp.float32) / (1.0 - self.drop_path)
    return [x * scale.reshape((b,) + (1,) * (x.ndim - 1)).astype(x.dtype) for x in xs]

  def temporal(self, patches: Array, train: bool) -> Array:
    """Unmasked temporal attention (Eq. 2 alpha^time) of each patch position over T frames."""
    xt = jnp.swapaxes(patches, 1, 2)                                   # (B, N, T, D)
    b, n, t, d = xt.shape
    y = MaskedSelfAttention(self.num_heads, self.dtype, self.attention_impl,
                            name="temporal_attn")(
        self._ln("temporal_norm", xt).reshape(b * n, t, d))
    y = nn.Dense(d, kernel_init=trunc_normal_init(), dtype=self.dtype, name="temporal_fc")(y)
    (y,) = self._drop(train, jnp.swapaxes(y.reshape(b, n, t, d), 1, 2))
    return patches + y

  def spatial_attention(self, cls: Array, patches: Array, pose: Array) -> tuple[Array, Array]:
    """Eq. 6 (PA-SA): per frame, [CLS_t, patches_t] with keys masked to CLS + pose tokens.

    Returns the attention branch for CLS `(B, C, D)` (averaged over frames when C == 1) and
    for the patches `(B, T, N, D)`.
    """
    b, t, n, d = patches.shape
    cls_t = jnp.broadcast_to(cls[:, :, None], (b, t, 1, d))           # C == 1: one copy/frame
    seq = jnp.concatenate([cls_t, patches], axis=2).reshape(b * t, n + 1, d)
    keys = jnp.concatenate([jnp.ones((b, t, 1), bool), pose], axis=2).reshape(b * t, n + 1)
    y = MaskedSelfAttention(self.num_heads, self.dtype, self.attention_impl, name="attn")(
        self._ln("ln_1", seq), keys)
    y = y.reshape(b, t, n + 1, d)
    y_cls = y[:, :, 0]
    if cls.shape[1] == 1:
      y_cls = y_cls.mean(1, keepdims=True)
    return y_cls, y[:, :, 1:]

  def joint_attention(self, cls: Array, patches: Array, pose: Array) -> tuple[Array, Array]:
    """Eq. 5 (joint PA-STA): [CLS..., all T*N patches], keys masked to CLS + pose tokens."""
    b, t, n, d = patches.shape
    c = cls.shape[1]
    seq = jnp.concatenate([cls, patches.reshape(b, t * n, d)], axis=1)
    keys = jnp.concatenate([jnp.ones((b, c), bool), pose.reshape(b, t * n)], axis=1)
    y = MaskedSelfAttention(self.num_heads, self.dtype, self.attention_impl, name="attn")(
        self._ln("ln_1", seq), keys)
    return y[:, :c], y[:, c:].reshape(b, t, n, d)

  @nn.compact
  def __call__(self, cls: Array, patches: Array, p2d: Array, *, train: bool = False
               ) -> tuple[Array, Array]:
    if self.variant not in VARIANTS:
      raise ValueError(f"PAAB variant {self.variant!r}; expected one of {list(VARIANTS)}")
    b, t, n, d = patches.shape
    if cls.ndim != 3 or cls.shape[0] != b or cls.shape[1] not in (1, t) or cls.shape[2] != d:
      raise ValueError(f"PAAB: cls {cls.shape} must be (B, 1, D) or (B, T, D) for patches "
                       f"{patches.shape} (B, T, N, D)")
    if p2d.shape != (b, t, n):
      raise ValueError(f"PAAB: p2d {p2d.shape} must be (B, T, N) = {(b, t, n)}")
    pose = p2d > 0
    cls_in, patches_in = cls, patches
    if self.variant == "fact_pa_sta":
      patches = self.temporal(patches, train)
    attend = self.joint_attention if self.variant == "joint_pa_sta" else self.spatial_attention
    y_cls, y = attend(cls, patches, pose)                             # Eq. 5 / Eq. 6
    y_cls, y = self._drop(train, y_cls, y)
    cls, patches = cls + y_cls, patches + y
    # The block's MLP over CLS and patches together (one set of weights).
    x = jnp.concatenate([cls, patches.reshape(b, t * n, d)], axis=1)
    x = Mlp(self.mlp_ratio, self.dtype, name="mlp")(self._ln("ln_2", x))
    y_cls, y = jnp.split(x, [cls.shape[1]], axis=1)
    y_cls, y = self._drop(train, y_cls, y.reshape(b, t, n, d))
    cls, patches = cls + y_cls, patches + y
    # Non-pose tokens leave with their input values (alpha = 0 rows of Eq. 5/6).
    patches = jnp.where(pose[..., None], patches, patches_in.astype(patches.dtype))
    return cls.astype(cls_in.dtype), patches.astype(patches_in.dtype)
