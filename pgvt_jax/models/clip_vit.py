"""CLIP vision transformer (image tower) in flax.linen, weight-compatible with OpenAI CLIP.

Parameter tree (names follow OpenAI/open_clip so the converter's name map stays readable):

    conv1/kernel                  (p, p, 3, D)   patch embedding, no bias
    class_embedding               (D,)
    positional_embedding          (1 + g*g, D)
    ln_pre/{scale,bias}
    resblocks_{i}/ln_1, attn/{query,key,value}/{kernel (D,H,hd), bias (H,hd)},
                  attn/out/{kernel (H,hd,D), bias (D,)}, ln_2, mlp/{c_fc,c_proj}
    ln_post/{scale,bias}
    proj                          (D, E)         absent when output_dim is None

The pieces (`embed_tokens`, `ResidualAttentionBlock.attention`/`.feed_forward`) are public so the
adapter models (AIM, PGVT) can run the *same frozen weights* over other token sets: over time for
each spatial position, or over pose tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pgvt_jax import accelerators
from pgvt_jax.models import attention as attention_lib

Array = jax.Array

# CLIP's LayerNorm eps is PyTorch's default (1e-5), not Flax's (1e-6).
LN_EPS = 1e-5
# Pixel normalisation every CLIP release was trained with (RGB, on [0, 1] images).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def quick_gelu(x: Array) -> Array:
  """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: Array) -> Array:
  """PyTorch `nn.GELU()` (erf form), used by open_clip's non-quickgelu models and AIM adapters."""
  return jax.nn.gelu(x, approximate=False)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": exact_gelu}


@dataclasses.dataclass(frozen=True)
class ClipVitConfig:
  """Architecture of a CLIP image tower. Heads are width // 64 in every CLIP release."""
  width: int
  layers: int
  patch_size: int
  image_size: int
  output_dim: Optional[int] = None  # size of `proj`; None: no projection
  heads: Optional[int] = None       # default width // 64
  activation: str = "quick_gelu"    # "quick_gelu" (OpenAI weights) | "gelu" (exact erf)
  mlp_ratio: int = 4

  def __post_init__(self):
    if self.heads is None:
      object.__setattr__(self, "heads", max(1, self.width // 64))
    if self.width % self.heads:
      raise ValueError(f"ClipVitConfig.width={self.width} not divisible by heads={self.heads}")
    if self.image_size % self.patch_size:
      raise ValueError(f"ClipVitConfig.image_size={self.image_size} is not a multiple of "
                       f"patch_size={self.patch_size}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"ClipVitConfig.activation={self.activation!r}; expected one of "
                       f"{sorted(ACTIVATIONS)}")

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    """Tokens per image, CLS included: 1 + (S/p)^2."""
    return 1 + self.grid_size ** 2

  def replace(self, **kw) -> "ClipVitConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


PRESETS: dict[str, ClipVitConfig] = {
    "B/32": ClipVitConfig(width=768, layers=12, patch_size=32, image_size=224, output_dim=512),
    "B/16": ClipVitConfig(width=768, layers=12, patch_size=16, image_size=224, output_dim=512),
    "L/14": ClipVitConfig(width=1024, layers=24, patch_size=14, image_size=224, output_dim=768),
    "L/14@336": ClipVitConfig(width=1024, layers=24, patch_size=14, image_size=336,
                              output_dim=768),
    # Test sizes: same code path, seconds on CPU.
    "Ti/16": ClipVitConfig(width=128, layers=2, patch_size=16, image_size=64, output_dim=64),
    "Ti/8": ClipVitConfig(width=64, layers=2, patch_size=8, image_size=32, output_dim=32),
}


def get_config(variant: str, **overrides) -> ClipVitConfig:
  """`get_config("B/16", activation="gelu")`; unknown names list the presets."""
  if variant not in PRESETS:
    raise ValueError(f"Unknown CLIP ViT variant {variant!r}; expected one of {sorted(PRESETS)}")
  return PRESETS[variant].replace(**overrides)



def layer_norm(name: str, dtype=None) -> nn.LayerNorm:
  """LayerNorm with CLIP's eps; statistics in fp32 even under bf16 compute."""
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


ATTENTION = "attention"  # the collection recorded attention weights are sown into


def attention_weights(q: Array, k: Array, bias: Optional[Array] = None) -> Array:
  """softmax(Q K^T / sqrt(d) + bias) in float32: q `(B, Lq, H, d)`, k `(B, Lk, H, d)` ->
  `(B, H, Lq, Lk)`."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  return jax.nn.softmax(logits, axis=-1)


ATTENTION_IMPLS = ("auto",) + attention_lib.IMPLEMENTATIONS  # "xla", "xla_saved", "cudnn"


def resolve_attention_impl(impl: str, dtype, head_dim: int, masked: bool = False,
                           devices=None) -> str:
  """`config.model.attention_impl` -> the `implementation=` of `attention.dot_product_attention`.

  "auto": "cudnn" (fused flash attention) on NVIDIA GPUs of compute capability >= 8.0
  (accelerators.choose) when cuDNN takes the call (float16/bfloat16, head dim a multiple of 8
  and <= 128, no boolean mask), else "xla" (XLA attention whose backward recomputes the
  probabilities instead of saving them, models/attention.py). "xla_saved" (jax.nn's XLA path,
  probabilities saved for the backward) and "xla" are honoured as asked. "cudnn" is honoured as asked and raises on a
  platform without cuDNN (CPU, TPU) rather than silently falling back. `devices` default to
  `jax.devices()`: pass the target devices when compiling for others.
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
           record: Optional[str] = None, impl: str = "auto") -> Array:
  """Scaled dot-product attention `(B, Lq, H, d)` -> `(B, Lq, H, d)`.

  The fast path is `attention.dot_product_attention` with `impl` (`resolve_attention_impl`: cuDNN
  flash attention on GPU under "auto", else XLA without saved probabilities), which returns no
  weights. Only when the caller applies
  the model with `mutable=["attention"]` and names the call (`record`), the weights are
  computed explicitly (einsum, float32 softmax) and sown, averaged over heads:
  `module.sow("attention", record, (B, Lq, Lk))`. The two paths agree to float32 rounding
  (tests/test_visualize.py, tests/test_perf_model.py).
  """
  if record is None or not module.is_mutable_collection(ATTENTION):
    implementation = resolve_attention_impl(impl, q.dtype, q.shape[-1])
    return attention_lib.dot_product_attention(q, k, v, bias=bias, implementation=implementation)
  w = attention_weights(q, k, bias)
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


class MultiHeadAttention(nn.Module):
  """Multi-head self-attention over the second-to-last axis.

  Works on any leading batch shape: `(..., L, D) -> (..., L, D)`. `bias`, if given, is added to
  the attention logits and must broadcast to `(B', H, L, L)` where B' is the flattened batch.
  """
  heads: int
  dtype: Any = None
  attention_impl: str = "auto"  # see resolve_attention_impl

  @nn.compact
  def __call__(self, x: Array, bias: Optional[Array] = None, record: Optional[str] = None
               ) -> Array:
    """`record` names this call's weights in the "attention" collection (see `attend`)."""
    *batch, length, width = x.shape
    head_dim = width // self.heads
    dense = lambda name: HeadsDense(head_dim, self.heads, dtype=self.dtype, name=name)
    x2 = x.reshape((-1, length, width))
    q, k, v = dense("query")(x2), dense("key")(x2), dense("value")(x2)  # (B', L, H, hd)
    y = attend(self, q, k, v, bias, record, self.attention_impl)
    out = HeadsDense(width, dtype=self.dtype, name="out")(y)
    return out.reshape((*batch, length, width))


class Mlp(nn.Module):
  """CLIP MLP: c_fc (D -> 4D), activation, c_proj (4D -> D)."""
  hidden: int
  activation: str = "quick_gelu"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, name="c_fc")(x)
    x = ACTIVATIONS[self.activation](x)
    return nn.Dense(width, dtype=self.dtype, name="c_proj")(x)


class ResidualAttentionBlock(nn.Module):
  """Pre-LN transformer block of CLIP. The two branches are separate methods for reuse.

  `attention(x)`   = attn(ln_1(x)) over the second-to-last axis of x: `(..., L, D)`.
  `feed_forward(x)` = mlp(ln_2(x)):  `(..., D)`.
  `__call__(x)`    = the original CLIP block.
  """
  config: ClipVitConfig
  dtype: Any = None
  attention_impl: str = "auto"

  def setup(self):
    cfg = self.config
    self.ln_1 = layer_norm("ln_1")
    self.attn = MultiHeadAttention(heads=cfg.heads, dtype=self.dtype,
                                   attention_impl=self.attention_impl)
    self.ln_2 = layer_norm("ln_2")
    self.mlp = Mlp(hidden=cfg.width * cfg.mlp_ratio, activation=cfg.activation, dtype=self.dtype)

  def attention(self, x: Array, bias: Optional[Array] = None, record: Optional[str] = None
                ) -> Array:
    return self.attn(self.ln_1(x).astype(self.dtype or x.dtype), bias, record)

  def feed_forward(self, x: Array) -> Array:
    return self.mlp(self.ln_2(x).astype(self.dtype or x.dtype))

  def __call__(self, x: Array) -> Array:
    x = x + self.attention(x, record="spatial")
    return x + self.feed_forward(x)


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


def clip_conv1(cfg: ClipVitConfig, dtype=None) -> nn.Module:
  """CLIP's patch projection (declare it in a compact method to share it between calls)."""
  p = cfg.patch_size
  return nn.Conv(cfg.width, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                 dtype=dtype, name="conv1")


def patch_embed_and_pos(module: nn.Module, cfg: ClipVitConfig, images: Array, dtype=None,
                        conv: nn.Module | None = None) -> Array:
  """CLIP input layer declared on `module`: conv1 patches, CLS, positional embedding.

  images `(B, S, S, 3)` (CLIP-normalised) -> tokens `(B, 1 + g*g, D)`, row-major patch order.
  `ln_pre` is *not* applied: AIM adds its temporal embedding between the two.
  conv: a `clip_conv1` already declared on `module` (when another input shares it).
  """
  d = cfg.width
  if images.shape[-3:] != (cfg.image_size, cfg.image_size, 3):
    raise ValueError(f"images have shape {images.shape}; expected (..., {cfg.image_size}, "
                     f"{cfg.image_size}, 3) for this CLIP config")
  x = (conv or clip_conv1(cfg, dtype))(images)
  x = x.reshape((x.shape[0], -1, d))  # (B, g*g, D), row-major like torch's flatten(2)
  scale = d ** -0.5
  cls = module.param("class_embedding", nn.initializers.normal(scale), (d,))
  pos = module.param("positional_embedding", nn.initializers.normal(scale), (cfg.num_tokens, d))
  cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, d))
  return jnp.concatenate([cls, x], axis=1) + pos.astype(x.dtype)


class ClipVisionTransformer(nn.Module):
  """The CLIP image tower.

  `__call__(images (B, S, S, 3))` returns a dict:
    embedding  `(B, E)`        projected CLS (what PyTorch `encode_image` returns; `(B, D)` if no proj)
    pooled     `(B, D)`        ln_post(CLS)
    tokens     `(B, 1+N, D)`   last block's output, before ln_post (HF `last_hidden_state`)
  """
  config: ClipVitConfig
  dtype: Any = None
  remat: str = "none"           # see remat_block
  attention_impl: str = "auto"  # see resolve_attention_impl

  @nn.compact
  def __call__(self, images: Array) -> dict[str, Array]:
    cfg = self.config
    x = patch_embed_and_pos(self, cfg, images.astype(self.dtype or images.dtype), self.dtype)
    x = layer_norm("ln_pre")(x)
    block = remat_block(ResidualAttentionBlock, self.remat)
    for i in range(cfg.layers):
      x = block(cfg, dtype=self.dtype, attention_impl=self.attention_impl,
                name=f"resblocks_{i}")(x)
    pooled = layer_norm("ln_post")(x[:, 0])
    embedding = pooled
    if cfg.output_dim is not None:
      proj = self.param("proj", nn.initializers.normal(cfg.width ** -0.5),
                        (cfg.width, cfg.output_dim))
      embedding = pooled @ proj.astype(pooled.dtype)
    return {"embedding": embedding, "pooled": pooled, "tokens": x}


def resize_pos_embed(pos: Array | np.ndarray, new_grid: int) -> Array:
  """Bicubic resize of the patch rows of a positional embedding; the CLS row is untouched.

  `(1 + g*g, D) -> (1 + new_grid^2, D)`. Antialiased bicubic, as open_clip's `resize_pos_embed`
  (F.interpolate(..., mode="bicubic", antialias=True)) does.
  """
  pos = jnp.asarray(pos, jnp.float32)
  grid = int(round((pos.shape[0] - 1) ** 0.5))
  if grid * grid + 1 != pos.shape[0]:
    raise ValueError(f"positional_embedding has {pos.shape[0]} rows; expected 1 + g*g")
  if grid == new_grid:
    return pos
  patches = pos[1:].reshape(grid, grid, -1)
  patches = jax.image.resize(patches, (new_grid, new_grid, patches.shape[-1]), "bicubic",
                             antialias=True)
  return jnp.concatenate([pos[:1], patches.reshape(new_grid * new_grid, -1)], axis=0)


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
