"""Trainable pieces added to the frozen CLIP blocks: the AIM Adapter and PGVT's Refining Adapter.

Token tensors are `(B, T, N, D)`: batch, frames, tokens per frame (CLS first), width.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pgvt_jax.models import layers

Array = jax.Array


# AIM initialises every new Linear with timm's trunc_normal_(std=.02) and zero bias.
trunc_normal = layers.trunc_normal(0.02)


class Adapter(nn.Module):
  """AIM Adapter (Fig. 1 "Adapter"): D_fc1 (D -> D*ratio), exact GELU, D_fc2 (-> D).

  `skip=True` returns x + adapter(x) (AIM's S-Adapter), else adapter(x) (T- and MLP-Adapter).
  D_fc2 is zero-initialised, so at initialisation the adapter is the identity (skip) or zero.
  Names follow the official AIM code (D_fc1/D_fc2) so its checkpoints map one to one.
  """
  ratio: float = 0.25
  skip: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = layers.mlp(x, int(x.shape[-1] * self.ratio), activation="gelu",
                   names=("D_fc1", "D_fc2"), kernel_init=trunc_normal,
                   out_kernel_init=nn.initializers.zeros, dtype=self.dtype)
    return x + h if self.skip else h


def segment_of_frame(t_high: int, t_low: int) -> np.ndarray:
  """(T_h,) int: the low-rate frame (video segment) each high-rate pose frame belongs to."""
  return (np.arange(t_high) * t_low) // t_high


def fc_down_init(key, shape, dtype=jnp.float32):
  """(T_h, T_l) kernel = average over each video segment's pose frames."""
  del key
  t_high, t_low = shape
  onehot = segment_of_frame(t_high, t_low)[:, None] == np.arange(t_low)[None]
  return jnp.asarray(onehot / onehot.sum(0, keepdims=True), dtype)


def fc_up_init(key, shape, dtype=jnp.float32):
  """(T_l, T_h) kernel = copy each video segment's value to its pose frames."""
  del key
  t_low, t_high = shape
  onehot = np.arange(t_low)[:, None] == segment_of_frame(t_high, t_low)[None]
  return jnp.asarray(onehot, dtype)


class TimeLinear(nn.Module):
  """A Linear layer over the time axis: `(B, T_in, N, D) -> (B, T_out, N, D)`.

  FC_down / FC_up of the Refining Adapter: y[:, s] = sum_t x[:, t] kernel[t, s] + bias[s].
  kernel `(T_in, T_out)`, bias `(T_out,)`.
  """
  frames: int
  kernel_init: Any = trunc_normal
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[1], self.frames))
    bias = self.param("bias", nn.initializers.zeros, (self.frames,))
    dtype = self.dtype or x.dtype
    y = jnp.einsum("btnd,ts->bsnd", x.astype(dtype), kernel.astype(dtype))
    return y + bias.astype(dtype)[:, None, None]


def cross_attention(module: nn.Module, q: Array, k: Array, v: Array, record: str,
                    impl: str = "auto") -> Array:
  """Softmax(Q K^T / sqrt(d_k)) V within each frame.

  q `(B, T, Nq, H, d_k)`, k/v `(B, T, Nk, H, d_k)` -> `(B, T, Nq, H, d_k)`; the weights
  `(B*T, Nq, Nk)` are recorded as `record` when asked (`layers.attend`).
  """
  b, t = q.shape[:2]
  flat = lambda x: x.reshape((b * t,) + x.shape[2:])
  return layers.attend(module, flat(q), flat(k), flat(v), record=record,
                       impl=impl).reshape(q.shape)


class RefiningAdapter(nn.Module):
  """The R-Adapter (Sec. 3.3, Fig. 1 "Refining Adapter"): cross-modal attention, Eq. 2-3.

  Inputs are the outputs of the spatial attention stage, x_P `(B, T_h, N_P, D)` and
  x_Z `(B, T_l, N_Z, D)`. Pose tokens are first mapped to T_l frames by FC_down; then within
  each of the T_l frames pose queries attend to that frame's video tokens and video queries to
  that frame's pose tokens (all tokens, CLS included). Multi-head with `heads` heads,
  d_k = D / heads. W^O is zero-initialised so the block starts as two independent streams.

  Parameters (eight D x D linears with bias when both streams are refined):
    fc_down (T_h, T_l); pose_query, video_key, video_value, pose_out, fc_up (T_l, T_h)
    [refine_pose]; video_query, pose_key, pose_value, video_out [refine_video].
  """
  pose_frames: int
  video_frames: int
  heads: int
  refine_pose: bool = True
  refine_video: bool = True
  dtype: Any = None
  attention_impl: str = "auto"  # config.model.attention_impl

  @nn.compact
  def __call__(self, x_p: Array, x_z: Array) -> tuple[Array, Array]:
    d = x_p.shape[-1]
    # HeadsDense: nn.DenseGeneral's params and init, one 2-D matmul (no per-step relayout).
    proj = lambda name: layers.HeadsDense(d // self.heads, self.heads, kernel_init=trunc_normal,
                                          dtype=self.dtype, name=name)
    out = lambda name: layers.HeadsDense(d, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                                         name=name)
    # x_hat_P = FC_down(x_P): (B, T_l, N_P, D).
    x_hat = TimeLinear(self.video_frames, kernel_init=fc_down_init, dtype=self.dtype,
                       name="fc_down")(x_p)
    new_p, new_z = x_p, x_z
    if self.refine_pose:
      # Eq. 2 (Q_P, K_Z, V_Z); Eq. 3 top: P^R = x_P + FC_up(W_P^O softmax(Q_P K_Z^T/sqrt(d_k)) V_Z)
      a = cross_attention(self, proj("pose_query")(x_hat), proj("video_key")(x_z),
                          proj("video_value")(x_z), "pose_to_video", self.attention_impl)
      a = out("pose_out")(a)  # (B, T_l, N_P, D)
      new_p = x_p + TimeLinear(self.pose_frames, kernel_init=fc_up_init, dtype=self.dtype,
                               name="fc_up")(a)
    if self.refine_video:
      # Eq. 2 (Q_Z, K_P, V_P); Eq. 3 bottom: Z^R = x_Z + W_Z^O softmax(Q_Z K_P^T/sqrt(d_k)) V_P
      a = cross_attention(self, proj("video_query")(x_z), proj("pose_key")(x_hat),
                          proj("pose_value")(x_hat), "video_to_pose", self.attention_impl)
      new_z = x_z + out("video_out")(a)
    return new_p, new_z
