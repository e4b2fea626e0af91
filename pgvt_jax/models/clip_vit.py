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

from pgvt_jax.models import arch, layers
from pgvt_jax.models.layers import ACTIVATIONS

Array = jax.Array

# CLIP's LayerNorm eps is PyTorch's default (1e-5), not Flax's (1e-6).
LN_EPS = 1e-5
# Pixel normalisation every CLIP release was trained with (RGB, on [0, 1] images).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ClipVitConfig(arch.ViTArch):
  """Architecture of a CLIP image tower (heads: width // 64 in every CLIP release)."""
  output_dim: Optional[int] = None  # size of `proj`; None: no projection
  activation: str = "quick_gelu"    # "quick_gelu" (OpenAI weights) | "gelu" (exact erf)
  mlp_ratio: int = 4

  def __post_init__(self):
    super().__post_init__()
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"ClipVitConfig.activation={self.activation!r}; expected one of "
                       f"{sorted(ACTIVATIONS)}")

  @property
  def num_tokens(self) -> int:
    """Tokens per image, CLS included: 1 + (S/p)^2."""
    return 1 + self.num_patches


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
  return arch.preset("CLIP ViT variant", PRESETS, variant, **overrides)


def layer_norm(name: str, dtype=None) -> nn.LayerNorm:
  """LayerNorm with CLIP's eps; statistics in fp32 even under bf16 compute."""
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


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
    self.attn = layers.Attention(heads=cfg.heads, dtype=self.dtype,
                                 attention_impl=self.attention_impl)
    self.ln_2 = layer_norm("ln_2")
    self.mlp = layers.Mlp(cfg.width * cfg.mlp_ratio, cfg.activation, names=("c_fc", "c_proj"),
                          dtype=self.dtype)

  def attention(self, x: Array, bias: Optional[Array] = None, record: Optional[str] = None
                ) -> Array:
    return self.attn(self.ln_1(x).astype(self.dtype or x.dtype), bias, record=record)

  def feed_forward(self, x: Array) -> Array:
    return self.mlp(self.ln_2(x).astype(self.dtype or x.dtype))

  def __call__(self, x: Array) -> Array:
    x = x + self.attention(x, record="spatial")
    return x + self.feed_forward(x)


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
  remat: str = "none"           # see layers.remat_block
  attention_impl: str = "auto"  # see layers.resolve_attention_impl

  @nn.compact
  def __call__(self, images: Array) -> dict[str, Array]:
    cfg = self.config
    x = patch_embed_and_pos(self, cfg, images.astype(self.dtype or images.dtype), self.dtype)
    x = layer_norm("ln_pre")(x)
    block = layers.remat_block(ResidualAttentionBlock, self.remat)
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
