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
realised as a boolean key mask of `layers.Attention`). CLS is always a key, so every
query row has at least one key: a frame without any pose token gives CLS-only attention, never
NaN. The rows of non-pose queries are computed but discarded: non-pose patch tokens leave the
block with their input values (Eq. 5/6: alpha = 0 for them; "MLP" included), pose tokens and CLS
are updated. With one CLS per clip (C == 1) the CLS is copied into every frame for PA-SA and the
per-frame results are averaged (TimeSformer's convention); with one CLS per frame (C == T) each
frame keeps its own.

Parameters (pa_sa / joint_pa_sta: exactly one ViT block, 12 D^2 + 13 D):
  ln_1, attn/{query,key,value,out}, ln_2, mlp/{fc1,fc2}
  fact_pa_sta adds temporal_norm, temporal_attn/{query,key,value,out}, temporal_fc.
Stochastic depth (`drop_path_mode`, config.model.paab_drop_path):
  sample   one draw per clip for each residual branch; fact_pa_sta drops its temporal branch
           after temporal_fc (the default).
  public   as the public code's pose blocks (dominickrei/PoseAwareVT
           timesformer/models/vit_poseblock.py, timm DropPath = one draw per row of the batch
           it runs on): the PA-SA branch per (clip, frame) on the per-frame outputs, CLS rows
           included, before the frame mean; the temporal branch per (clip, patch position) on
           the attention output, before temporal_fc (so a dropped row still adds its bias);
           joint PA-STA and the MLP per clip, as `sample`.
Layers (attention, MLP, stochastic depth, init) are `layers.py`'s. Applied with
`mutable=["attention"]`, the masked attention is recorded (visualize.py): `attn/spatial`
`(B*T, 1+N, 1+N)` (PA-SA), `attn/joint` `(B, C+T*N, C+T*N)`, `temporal_attn/temporal`
`(B*N, T, T)`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from pgvt_jax.models import layers

Array = jax.Array
VARIANTS = ("pa_sa", "fact_pa_sta", "joint_pa_sta")
DROP_PATH_MODES = ("sample", "public")


class PAAB(nn.Module):
  """Pose-Aware Attention Block. `__call__(cls (B, C, D), patches (B, T, N, D), p2d (B, T, N),
  *, train) -> (cls (B, C, D), patches (B, T, N, D))`, C in {1, T}, patches row-major per frame.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  variant: str = "pa_sa"
  dtype: Any = None
  drop_path: float = 0.0      # stochastic depth rate of the residual branches
  drop_path_mode: str = "sample"  # DROP_PATH_MODES, see the module docstring
  ln_eps: float = 1e-6        # timm/TimeSformer's LayerNorm eps (CLIP backbones pass 1e-5)
  attention_impl: str = "auto"  # config.model.attention_impl

  def _ln(self, name: str, x: Array) -> Array:
    return nn.LayerNorm(epsilon=self.ln_eps, name=name)(x).astype(self.dtype or x.dtype)

  def _attention(self, name: str) -> layers.Attention:
    """Query/key/value/out projections, timm's init; `key_mask` = CLS + pose tokens."""
    return layers.Attention(self.num_heads, kernel_init=layers.trunc_normal(), dtype=self.dtype,
                            attention_impl=self.attention_impl, name=name)

  def _drop(self, train: bool, *xs: Array) -> tuple[Array, ...]:
    """One keep/drop decision per sample, shared by CLS and patches (timm DropPath)."""
    return layers.drop_path(self, xs, self.drop_path, train=train)

  def temporal(self, patches: Array, train: bool) -> Array:
    """Unmasked temporal attention (Eq. 2 alpha^time) of each patch position over T frames."""
    xt = jnp.swapaxes(patches, 1, 2)                                   # (B, N, T, D)
    b, n, t, d = xt.shape
    y = self._attention("temporal_attn")(self._ln("temporal_norm", xt).reshape(b * n, t, d),
                                         record="temporal")
    fc = nn.Dense(d, kernel_init=layers.trunc_normal(), dtype=self.dtype, name="temporal_fc")
    if self.drop_path_mode == "public":  # per (b, n) row of (B*N, T, D), then temporal_fc
      y = layers.drop_path(self, y, self.drop_path, train=train, axes=(0,))
      return patches + jnp.swapaxes(fc(y).reshape(b, n, t, d), 1, 2)
    (y,) = self._drop(train, jnp.swapaxes(fc(y).reshape(b, n, t, d), 1, 2))
    return patches + y

  def spatial_attention(self, cls: Array, patches: Array, pose: Array,
                        train: bool = False) -> tuple[Array, Array]:
    """Eq. 6 (PA-SA): per frame, [CLS_t, patches_t] with keys masked to CLS + pose tokens.

    Returns the attention branch for CLS `(B, C, D)` (averaged over frames when C == 1) and
    for the patches `(B, T, N, D)`; drop_path_mode "public" drops it here, per (b, t).
    """
    b, t, n, d = patches.shape
    cls_t = jnp.broadcast_to(cls[:, :, None], (b, t, 1, d))           # C == 1: one copy/frame
    seq = jnp.concatenate([cls_t, patches], axis=2).reshape(b * t, n + 1, d)
    keys = jnp.concatenate([jnp.ones((b, t, 1), bool), pose], axis=2).reshape(b * t, n + 1)
    y = self._attention("attn")(self._ln("ln_1", seq), key_mask=keys, record="spatial")
    y = y.reshape(b, t, n + 1, d)
    if self.drop_path_mode == "public":  # before the CLS mean, as vit_poseblock.py
      y = layers.drop_path(self, y, self.drop_path, train=train, axes=(0, 1))
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
    y = self._attention("attn")(self._ln("ln_1", seq), key_mask=keys, record="joint")
    return y[:, :c], y[:, c:].reshape(b, t, n, d)

  @nn.compact
  def __call__(self, cls: Array, patches: Array, p2d: Array, *, train: bool = False
               ) -> tuple[Array, Array]:
    if self.variant not in VARIANTS:
      raise ValueError(f"PAAB variant {self.variant!r}; expected one of {list(VARIANTS)}")
    if self.drop_path_mode not in DROP_PATH_MODES:
      raise ValueError(f"config.model.paab_drop_path={self.drop_path_mode!r}; expected one of "
                       f"{list(DROP_PATH_MODES)}")
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
    if self.variant == "joint_pa_sta":
      y_cls, y = self.joint_attention(cls, patches, pose)             # Eq. 5
      y_cls, y = self._drop(train, y_cls, y)
    elif self.drop_path_mode == "public":                             # Eq. 6, dropped per frame
      y_cls, y = self.spatial_attention(cls, patches, pose, train)
    else:                                                             # Eq. 6
      y_cls, y = self.spatial_attention(cls, patches, pose)
      y_cls, y = self._drop(train, y_cls, y)
    cls, patches = cls + y_cls, patches + y
    # The block's MLP over CLS and patches together (one set of weights).
    x = jnp.concatenate([cls, patches.reshape(b, t * n, d)], axis=1)
    x = layers.Mlp(int(d * self.mlp_ratio), "gelu", kernel_init=layers.trunc_normal(),
                   dtype=self.dtype, name="mlp")(self._ln("ln_2", x))
    y_cls, y = jnp.split(x, [cls.shape[1]], axis=1)
    y_cls, y = self._drop(train, y_cls, y.reshape(b, t, n, d))
    cls, patches = cls + y_cls, patches + y
    # Non-pose tokens leave with their input values (alpha = 0 rows of Eq. 5/6).
    patches = jnp.where(pose[..., None], patches, patches_in.astype(patches.dtype))
    return cls.astype(cls_in.dtype), patches.astype(patches_in.dtype)
