"""The layers every backbone (CLIP ViT, PGVT/AIM blocks, TimeSformer, DeiT) and PAAB are built
from: one attention, one MLP, one stochastic depth, one timm initialiser (timm's
`timm/layers/` in Flax). Each is parameterised by what differs between the papers' reference
codes (parameter names, init, fused qkv, key mask, drop-path granularity), never copied.

    attn = Attention(heads=12, fused_qkv=False, kernel_init=trunc_normal(), name="attn")
    y = attn(x, key_mask=keys, record="video_spatial")       # (..., L, D) -> (..., L, D)
    y = Mlp(4 * d, "gelu", names=("fc1", "fc2"), name="mlp")(x)
    y = drop_path(self, y, rate, train=train, axes=(0,))      # in the caller's RNG scope

Recording attention for figures (`visualize.py`): apply a model with `mutable=["attention"]`
and every call that names itself (`record=`) sows its weights, averaged over heads, under
`attention/<module path>/<record>`: `(B', Lq, Lk)`. Without that collection nothing is
recorded and the fused kernel runs.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from pgvt_jax import accelerators
from pgvt_jax.models import attention as attention_lib

Array = jax.Array
Initializer = Callable[..., Array]

# ------------------------------------------------------------------ initialisers, activations


def trunc_normal(std: float = 0.02, lower: float = -2.0, upper: float = 2.0) -> Initializer:
  """timm's `trunc_normal_(std=std)`: N(0, std^2) truncated at ABSOLUTE bounds [lower, upper].

  With std 0.02 the bounds sit at +-100 sigma, so the result is a plain N(0, 0.02^2).
  (`nn.initializers.truncated_normal(0.02)` truncates at +-2 sigma and rescales: std 0.0176,
  12% lower, and no value beyond 0.04.)
  """
  def init(key, shape, dtype=jnp.float32):
    x = jax.random.truncated_normal(key, lower / std, upper / std, shape, jnp.float32)
    return (x * std).astype(dtype)
  return init


def quick_gelu(x: Array) -> Array:
  """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: Array) -> Array:
  """PyTorch `nn.GELU()` (erf form): open_clip's non-quickgelu models, AIM, timm, TimeSformer."""
  return jax.nn.gelu(x, approximate=False)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": exact_gelu}

# ------------------------------------------------------------------ attention

ATTENTION = "attention"  # the collection recorded attention weights are sown into
ATTENTION_IMPLS = ("auto",) + attention_lib.IMPLEMENTATIONS  # "xla", "xla_saved", "cudnn"


def resolve_attention_impl(impl: str, dtype, head_dim: int, masked: bool = False,
                           devices=None) -> str:
  """`config.model.attention_impl` -> the `implementation=` of `attention.dot_product_attention`.

  "auto": "cudnn" (fused flash attention) on NVIDIA GPUs of compute capability >= 8.0
  (accelerators.choose) when cuDNN takes the call (float16/bfloat16, head dim a multiple of 8
  and <= 128, no boolean mask), else "xla" (XLA attention whose backward recomputes the
  probabilities instead of saving them, models/attention.py). "xla_saved" (jax.nn's XLA path,
  probabilities saved for the backward) and "xla" are honoured as asked. "cudnn" is honoured
  as asked and raises on a platform without cuDNN (CPU, TPU) rather than silently falling
  back. `devices` default to `jax.devices()`: pass the target devices when compiling for others.
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"config.model.attention_impl={impl!r}; expected one of "
                     f"{list(ATTENTION_IMPLS)}")
  platform = accelerators.platform(devices)
  if impl == "cudnn" and platform != "gpu":
    raise ValueError(f"config.model.attention_impl='cudnn' needs an NVIDIA GPU; the devices' "
                     f"platform is {platform!r}. Use 'auto' (cuDNN where available, else XLA) "
                     "or 'xla'.")
  if impl == "auto":
    ok = (accelerators.choose(devices).attention == "cudnn"
          and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
          and head_dim % 8 == 0 and head_dim <= 128 and not masked)
    return "cudnn" if ok else "xla"
  return impl


def attend(module: nn.Module, q: Array, k: Array, v: Array, bias: Optional[Array] = None,
           record: Optional[str] = None, impl: str = "auto", mask: Optional[Array] = None
           ) -> Array:
  """softmax(Q K^T / sqrt(d) + bias, keys where mask) V: `(B, Lq, H, d)` -> `(B, Lq, H, d)`.

  `bias` (float) and `mask` (bool, True = attend) broadcast to `(B, H, Lq, Lk)`. The fast path
  is `attention.dot_product_attention` with `impl` (`resolve_attention_impl`), which returns no
  weights. Only when the model is applied (not initialised) with `mutable=["attention"]` and
  the call is named (`record`), the weights are computed explicitly
  (`attention.attention_weights`, float32 softmax) and sown, averaged over heads:
  `module.sow("attention", record, (B, Lq, Lk))`. The two paths agree to float32 rounding
  (tests/test_visualize.py, tests/test_perf_model.py).
  """
  if mask is not None:
    mask = jnp.asarray(mask, jnp.bool_)
  if module.is_initializing():
    # init makes every collection mutable, yet should return params only; and it may build
    # the params of another platform's model (cuDNN configs on a CPU host): plain XLA here.
    return attention_lib.dot_product_attention(q, k, v, bias=bias, mask=mask)
  if record is None or not module.is_mutable_collection(ATTENTION):
    implementation = resolve_attention_impl(impl, q.dtype, q.shape[-1], masked=mask is not None)
    return attention_lib.dot_product_attention(q, k, v, bias=bias, mask=mask,
                                               implementation=implementation)
  w = attention_lib.attention_weights(q, k, bias, mask)
  module.sow(ATTENTION, record, w.mean(axis=1))
  return jnp.einsum("bhqk,bkhd->bqhd", w.astype(v.dtype), v)


class HeadsDense(nn.Module):
  """`nn.DenseGeneral`'s params (same names, shapes and init values) for the per-head
  projections of attention, computed as ONE 2-D matmul on the kernel viewed as a matrix.

    heads given:  (..., D) -> (..., H, d)   kernel (D, H, d), bias (H, d)   (query/key/value)
    heads None:   (..., H, d) -> (..., D)   kernel (H, d, D), bias (D,)     (out)

  Why not DenseGeneral: it contracts (or produces) two kernel axes, and in the backward pass
  XLA:CPU lays such a kernel out again, a transposed copy per kernel per step (frozen ones
  included: 4 per CLIP block, ~0.06 s per ViT-B/16 step). The row-major kernel *is* the
  (D, H*d) / (H*d, D) matrix, so the reshape is free and the matmul reads it in place
  (tests/test_perf_model.py counts these copies in the compiled train step).
  """
  features: int
  heads: Optional[int] = None
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.heads is None:  # (..., H, d) -> (..., D)
      lead, k_shape, b_shape = x.shape[:-2], x.shape[-2:] + (self.features,), (self.features,)
      rows, cols = x.shape[-2] * x.shape[-1], self.features
    else:                   # (..., D) -> (..., H, d)
      lead, k_shape = x.shape[:-1], (x.shape[-1], self.heads, self.features)
      b_shape = (self.heads, self.features)
      rows, cols = x.shape[-1], self.heads * self.features
    # DenseGeneral initialises the flat (rows, cols) matrix and reshapes it: same values.
    kernel = self.param("kernel", lambda key, shape, dtype=jnp.float32: jnp.reshape(
        self.kernel_init(key, (rows, cols), dtype), shape), k_shape)
    bias = self.param("bias", lambda key, shape, dtype=jnp.float32: jnp.reshape(
        self.bias_init(key, (cols,), dtype), shape), b_shape)
    dtype = self.dtype or jnp.result_type(x, kernel)
    y = x.reshape(lead + (rows,)).astype(dtype) @ kernel.reshape((rows, cols)).astype(dtype)
    return y.reshape(lead + b_shape) + bias.astype(dtype)


class Attention(nn.Module):
  """Multi-head self-attention over the second-to-last axis: `(..., L, D) -> (..., L, D)`.

  Parameter layouts (the reference code's names, so converters map one to one):
    fused_qkv=False  query/key/value {kernel (D, H, d), bias (H, d)}, out {kernel (H, d, D),
                     bias (D,)}: OpenAI CLIP (in_proj split), HF ViT/DeiT, PAAB
    fused_qkv=True   qkv {kernel (D, 3D), bias (3D,)} (q | k | v blocks, heads inside each),
                     proj {kernel (D, D), bias (D,)}: official TimeSformer / timm `Attention`
  `kernel_init` applies to every projection (lecun_normal = DenseGeneral's default for CLIP;
  `trunc_normal()` for the timm-initialised models); biases start at zero.

  Call: `bias` (float, added to the logits) broadcasts to `(B', H, L, L)`, B' the flattened
  leading axes; `key_mask` `(..., L)` bool, False = this key is masked for every query (PAAB);
  `record` names the call's weights in the "attention" collection (`attend`). The dtype
  policy: projections and matmuls in `dtype` (None: the input's), softmax in float32.
  """
  heads: int
  fused_qkv: bool = False
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = None
  attention_impl: str = "auto"  # config.model.attention_impl, see resolve_attention_impl

  @nn.compact
  def __call__(self, x: Array, bias: Optional[Array] = None, key_mask: Optional[Array] = None,
               record: Optional[str] = None) -> Array:
    *batch, length, width = x.shape
    if width % self.heads:
      raise ValueError(f"Attention: width {width} is not divisible by heads={self.heads}")
    hd = width // self.heads
    x2 = x.reshape((-1, length, width))
    if self.fused_qkv:
      qkv = nn.Dense(3 * width, dtype=self.dtype, kernel_init=self.kernel_init, name="qkv")(x2)
      # torch: reshape(B, N, 3, H, hd): q | k | v blocks of the 3D output, heads inside each.
      qkv = qkv.reshape((-1, length, 3, self.heads, hd))
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]            # (B', L, H, hd)
    else:
      dense = lambda name: HeadsDense(hd, self.heads, kernel_init=self.kernel_init,
                                      dtype=self.dtype, name=name)
      q, k, v = dense("query")(x2), dense("key")(x2), dense("value")(x2)
    mask = None if key_mask is None else key_mask.reshape((-1, 1, 1, length))  # (B',1,1,L)
    y = attend(self, q, k, v, bias, record, self.attention_impl, mask)
    if self.fused_qkv:
      out = nn.Dense(width, dtype=self.dtype, kernel_init=self.kernel_init,
                     name="proj")(y.reshape((-1, length, width)))
    else:
      out = HeadsDense(width, kernel_init=self.kernel_init, dtype=self.dtype, name="out")(y)
    return out.reshape((*batch, length, width))


# ------------------------------------------------------------------ MLP


def mlp(x: Array, hidden: int, *, activation: str = "gelu",
        names: Sequence[str] = ("fc1", "fc2"), kernel_init: Initializer = None,
        out_kernel_init: Initializer = None, dtype: Any = None) -> Array:
  """Linear (D -> hidden), activation, Linear (hidden -> D): `(..., D) -> (..., D)`.

  Declares its two Dense layers on the module whose compact method calls it, so the params
  sit directly under that module (`names`: CLIP ("c_fc", "c_proj"), timm ("fc1", "fc2"), AIM's
  adapter ("D_fc1", "D_fc2")). `kernel_init` None: Dense's default (lecun_normal);
  `out_kernel_init` None: the same as the first layer's.
  """
  first = {} if kernel_init is None else {"kernel_init": kernel_init}
  second = first if out_kernel_init is None else {"kernel_init": out_kernel_init}
  h = nn.Dense(hidden, dtype=dtype, name=names[0], **first)(x)
  return nn.Dense(x.shape[-1], dtype=dtype, name=names[1], **second)(ACTIVATIONS[activation](h))


class Mlp(nn.Module):
  """The transformer block's MLP as a module (`mlp` with its params under this module)."""
  hidden: int
  activation: str = "gelu"
  names: tuple[str, str] = ("fc1", "fc2")
  kernel_init: Any = None
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return mlp(x, self.hidden, activation=self.activation, names=self.names,
               kernel_init=self.kernel_init, dtype=self.dtype)


# ------------------------------------------------------------------ stochastic depth

# Axes that get independent keep/drop draws on a `(B, T, N, D)` branch, per config mode
# (config.model.drop_path_mode); every other axis shares the draw.
DROP_PATH_MODES = {
    "frame": (0, 1),  # one draw per clip and frame (timm's per-sample DropPath, frames as samples)
    "aim": (2,),      # one draw per token position n for the whole batch: AIM's code, whose
                      # blocks hold tokens-first (N, B*T, D) tensors that timm draws along axis 0
}


def drop_path(module: nn.Module, xs, rate: float, *, train: bool,
              axes: Sequence[int] = (0,)):
  """Stochastic depth (Huang et al. 2016) on residual branches, drawn in `module`'s RNG scope.

  One keep/drop draw per index of `axes` of the first array of `xs` (an array or a tuple of
  arrays), shared by every array of `xs` (their `axes` must be leading axes of the same
  sizes: PAAB's CLS and patches of one sample); kept values are scaled by 1 / (1 - rate).
  `axes=(0,)`: per sample (timm DropPath: DeiT, PAAB, TimeSformer's MLP branch); `(0, 1)`:
  per row of a `(B, R, ...)` batch (TimeSformer: per (clip, patch position) in the temporal
  branch, per (clip, frame) in the spatial one). The rng stream is "drop_path".
  """
  if not train or rate == 0.0:
    return xs
  leaves, tree = jax.tree_util.tree_flatten(xs)
  axes = tuple(a % leaves[0].ndim for a in axes)
  keep = 1.0 - rate
  mask = jax.random.bernoulli(module.make_rng("drop_path"), keep,
                              tuple(leaves[0].shape[a] for a in axes))

  def apply(x):
    shape = [1] * x.ndim
    for a, n in zip(axes, mask.shape):
      shape[a] = n
    return jnp.where(mask.reshape(shape), x / keep, jnp.zeros_like(x))  # as nn.Dropout
  return jax.tree_util.tree_unflatten(tree, [apply(x) for x in leaves])


class DropPath(nn.Module):
  """Stochastic depth as a submodule (the PGVT/AIM blocks'): `(B, T, N, D)`, draws per `mode`
  (DROP_PATH_MODES). It is flax's Dropout broadcast over the shared axes, exactly the draw and
  scaling of `drop_path`; kept as a Dropout child (`drop_path/Dropout_0`) so the blocks' random
  streams are those of every earlier run."""
  rate: float = 0.0
  mode: str = "frame"

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    if self.mode not in DROP_PATH_MODES:
      raise ValueError(f"config.model.drop_path_mode={self.mode!r}; expected one of "
                       f"{tuple(DROP_PATH_MODES)}")
    dims = tuple(i for i in range(x.ndim) if i not in DROP_PATH_MODES[self.mode])
    return nn.Dropout(self.rate, broadcast_dims=dims, rng_collection="drop_path")(
        x, deterministic=deterministic)


# ------------------------------------------------------------------ blocks

REMAT_POLICIES = ("none", "full", "save_dots")


def remat_block(block_cls, policy: str, static_argnums: tuple[int, ...] = ()):
  """`config.model.remat` applied to one transformer block class.

  "none":      keep every activation the backward pass needs (fastest, most memory).
  "full":      keep only each block's input; the backward pass recomputes the whole block
               (`nothing_saveable`). With a frozen backbone the step does forward + input
               gradients (~2 F), so recomputing the forward costs ~+50% of the step's FLOPs.
  "save_dots": keep the outputs of matmuls against weights (q/k/v/out projections, MLP) and
               recompute the rest: LayerNorm, GELU, softmax and the attention matmuls
               (`dots_with_no_batch_dims_saveable`). Those carry batch dims and include the
               (L x L) per-head logits/probabilities, the largest activations of a ViT block,
               while the projections are the expensive FLOPs. `dots_saveable` would keep the
               attention logits too, and so save little memory.
  "auto":      the trainer replaces it by what fits the devices before it builds a train step
               (planner.Planner.fit); a forward pass (evaluation, predict) keeps nothing for a
               backward pass anyway, so here it means "none".
  """
  if policy == "auto":
    return block_cls
  if policy not in REMAT_POLICIES:
    raise ValueError(f"config.model.remat={policy!r}; expected one of {list(REMAT_POLICIES)}")
  if policy == "none":
    return block_cls
  checkpoint_policy = (jax.checkpoint_policies.nothing_saveable if policy == "full"
                       else jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  return nn.remat(block_cls, policy=checkpoint_policy, static_argnums=static_argnums)
