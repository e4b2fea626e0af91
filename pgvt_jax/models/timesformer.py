"""TimeSformer (divided space-time attention) in flax.linen, weight-compatible with the official
facebookresearch/TimeSformer `timesformer/models/vit.py` and Hugging Face `TimesformerModel`.

The backbone of the PAAB/PAAT paper (Reilly et al.): ViT-B/16, 8 frames at 224, fine-tuned end
to end. Parameter tree (official names, so the converter's table reads one-to-one):

    patch_embed/proj/{kernel (p, p, 3, D), bias}
    cls_token (1, 1, D)   pos_embed (1, 1 + N, D)   time_embed (1, T, D)
    blocks_{i}/temporal_norm1, temporal_attn/{qkv, proj}, temporal_fc,
               norm1, attn/{qkv, proj}, norm2, mlp/{fc1, fc2}
    norm/{scale, bias}

Token layout (the hooks every backbone family exposes, see docs/models.md): one CLS per clip
`(B, 1, D)` and patch tokens `(B, T, N, D)`, row-major per frame (index (y//p)*(S//p) + x//p).
The official code keeps one sequence `[CLS, patches in (h w t) order]`; token
`1 + (h*W + w)*T + t` there is `patches[:, t, h*W + w]` here, so the computation is the same
and no rearrangement is needed. A plug-in (PAAB, PAAT head) goes between blocks:

    cls, patches = backbone.embed(frames)
    for i in range(layers): cls, patches = backbone.block(i, cls, patches, train)
    pooled = backbone.norm(cls[:, 0])

Divided block (official `Block.forward`, `attention_type="divided_space_time"`):
  temporal  xt = x + temporal_fc(DropPath(temporal_attn(temporal_norm1(x))))  over t, patches only
  spatial   per frame, [CLS, xt_t] -> attn(norm1(.)); per-frame CLS outputs averaged
            x = [cls, xt] + [mean_t cls_res_t, spatial_res]
  mlp       x = x + DropPath(mlp(norm2(x)))     (LayerNorm eps 1e-6, exact GELU)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pgvt_jax.models import arch, layers

Array = jax.Array

LN_EPS = 1e-6  # norm_layer=partial(nn.LayerNorm, eps=1e-6) in the official vit.py
# Pixel statistics of the official training code (SlowFast defaults `_C.DATA.MEAN/STD` in
# timesformer/config/defaults.py), on [0, 1] RGB frames. Not CLIP's.
MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)


@dataclasses.dataclass(frozen=True)
class TimeSformerConfig(arch.ViTArch):
  """Architecture of a divided space-time TimeSformer over T = num_frames frames."""
  num_frames: int = 8
  mlp_ratio: int = 4

  def __post_init__(self):
    super().__post_init__()
    if not isinstance(self.num_frames, int) or self.num_frames <= 0:
      raise ValueError(f"TimeSformerConfig.num_frames={self.num_frames!r}: must be a positive "
                       "int")


PRESETS: dict[str, TimeSformerConfig] = {
    # TimeSformer_divST_8x32_224 (K400/K600/SSv2 releases, HF facebook/timesformer-base-*).
    "B/16": TimeSformerConfig(width=768, layers=12, heads=12, patch_size=16, image_size=224,
                              num_frames=8),
    # Test sizes: same code path, seconds on CPU.
    "Ti/16": TimeSformerConfig(width=128, layers=2, heads=4, patch_size=16, image_size=64,
                               num_frames=4),
    "Ti/8": TimeSformerConfig(width=64, layers=2, heads=4, patch_size=8, image_size=32,
                              num_frames=4),
}


def get_config(variant: str, **overrides) -> TimeSformerConfig:
  """`get_config("B/16", num_frames=16)`; unknown names list the presets."""
  return arch.preset("TimeSformer variant", PRESETS, variant, **overrides)


# timm trunc_normal_(std=.02), bias 0: the official `_init_weights` (plain N(0, 0.02^2), see
# layers.trunc_normal; flax's truncated_normal(0.02) would give std 0.0176).
TRUNC_NORMAL = layers.trunc_normal(0.02)


def layer_norm(name: str) -> nn.LayerNorm:
  """LayerNorm with the official eps; statistics in fp32 even under bf16 compute."""
  return nn.LayerNorm(epsilon=LN_EPS, name=name)


class DividedBlock(nn.Module):
  """One divided space-time block on `cls (B, 1, D)`, `patches (B, T, N, D)`."""
  config: TimeSformerConfig
  drop_path_rate: float = 0.0
  zero_temporal_fc: bool = False
  dtype: Any = None
  attention_impl: str = "auto"

  def setup(self):
    cfg = self.config
    self.temporal_norm1 = layer_norm("temporal_norm1")
    # Official `Attention`: fused qkv with bias, proj; timm init.
    attention = lambda: layers.Attention(cfg.heads, fused_qkv=True, kernel_init=TRUNC_NORMAL,
                                         dtype=self.dtype, attention_impl=self.attention_impl)
    self.temporal_attn = attention()
    zeros = nn.initializers.zeros
    self.temporal_fc = nn.Dense(cfg.width, dtype=self.dtype,
                                kernel_init=zeros if self.zero_temporal_fc else TRUNC_NORMAL)
    self.norm1 = layer_norm("norm1")
    self.attn = attention()
    self.norm2 = layer_norm("norm2")
    self.mlp = layers.Mlp(cfg.width * cfg.mlp_ratio, "gelu", kernel_init=TRUNC_NORMAL,
                          dtype=self.dtype)

  def _drop(self, x: Array, train: bool, axes: tuple[int, ...]) -> Array:
    """The official DropPath draws per row of the batch each branch runs on (`axes`)."""
    return layers.drop_path(self, x, self.drop_path_rate, train=train, axes=axes)

  def _cast(self, x: Array) -> Array:
    return x.astype(self.dtype or x.dtype)

  def temporal(self, patches: Array, train: bool) -> Array:
    """x + temporal_fc(DropPath(T-Attn(x))): each patch position attends over its T frames."""
    xt = jnp.swapaxes(patches, 1, 2)                                   # (B, N, T, D)
    res = self.temporal_attn(self._cast(self.temporal_norm1(xt)), record="video_temporal")
    res = self._drop(res, train, (0, 1))                               # per (b, h, w)
    return patches + self.temporal_fc(jnp.swapaxes(res, 1, 2)).astype(patches.dtype)

  def spatial(self, cls: Array, patches: Array, train: bool) -> tuple[Array, Array]:
    """CLS copied to every frame, S-Attn within each frame, per-frame CLS outputs averaged."""
    b, t = patches.shape[:2]
    cls_t = jnp.broadcast_to(cls[:, None], (b, t, 1, cls.shape[-1]))
    xs = jnp.concatenate([cls_t, patches], axis=2)                     # (B, T, 1 + N, D)
    res = self.attn(self._cast(self.norm1(xs)), record="video_spatial")
    res = self._drop(res, train, (0, 1)).astype(patches.dtype)        # per (b, t)
    return cls + res[:, :, 0].mean(axis=1, keepdims=True), patches + res[:, :, 1:]

  def feed_forward(self, cls: Array, patches: Array, train: bool) -> tuple[Array, Array]:
    """x + DropPath(MLP(norm2(x))), one draw per clip for CLS and patches alike."""
    b = cls.shape[0]
    flat = jnp.concatenate([cls, patches.reshape((b, -1, patches.shape[-1]))], axis=1)
    res = self._drop(self.mlp(self._cast(self.norm2(flat))), train, (0,))  # per b
    flat = flat + res.astype(flat.dtype)
    return flat[:, :1], flat[:, 1:].reshape(patches.shape)

  def __call__(self, cls: Array, patches: Array, train: bool = False) -> tuple[Array, Array]:
    patches = self.temporal(patches, train)
    cls, patches = self.spatial(cls, patches, train)
    return self.feed_forward(cls, patches, train)


class TimeSformer(nn.Module):
  """The TimeSformer backbone. `__call__(frames (B, T, S, S, 3), train)` returns a dict:

    pooled   `(B, D)`       norm(CLS): what the official `forward_features` returns
    cls      `(B, 1, D)`    last block's CLS, before `norm`
    patches  `(B, T, N, D)` last block's patch tokens, before `norm`

  Frames are normalised with this backbone's statistics (MEAN/STD), NHWC per frame.
  """
  config: TimeSformerConfig
  drop_path: float = 0.0     # stochastic depth, linear 0 -> drop_path over blocks (official 0.1)
  dtype: Any = None
  remat: str = "none"           # layers.remat_block policy
  attention_impl: str = "auto"  # layers.resolve_attention_impl

  def setup(self):
    cfg = self.config
    self.patch_embed = _PatchEmbed(cfg, dtype=self.dtype)
    init = TRUNC_NORMAL
    self.cls_token = self.param("cls_token", init, (1, 1, cfg.width))
    self.pos_embed = self.param("pos_embed", init, (1, cfg.num_patches + 1, cfg.width))
    self.time_embed = self.param("time_embed", nn.initializers.zeros, (1, cfg.num_frames,
                                                                        cfg.width))
    rates = np.linspace(0.0, self.drop_path, cfg.layers)  # official dpr: linspace(0, rate, depth)
    block = layers.remat_block(DividedBlock, self.remat, static_argnums=(3,))
    # Official init: temporal_fc zero in every block but the first.
    self.blocks = [block(cfg, drop_path_rate=float(rates[i]), zero_temporal_fc=i > 0,
                         dtype=self.dtype, attention_impl=self.attention_impl,
                         name=f"blocks_{i}") for i in range(cfg.layers)]
    self.norm = layer_norm("norm")

  def embed(self, frames: Array) -> tuple[Array, Array]:
    """frames `(B, T, S, S, 3)` -> cls `(B, 1, D)`, patches `(B, T, N, D)` (pos + time emb.)."""
    cfg = self.config
    want = (cfg.num_frames, cfg.image_size, cfg.image_size, 3)
    if frames.ndim != 5 or frames.shape[1:] != want:
      raise ValueError(f"frames have shape {frames.shape}; expected (B, "
                       f"{', '.join(map(str, want))}) for this TimeSformer config "
                       "(num_frames, image_size)")
    b = frames.shape[0]
    x = self.patch_embed(frames.astype(self.dtype or frames.dtype))   # (B, T, N, D)
    pos = self.pos_embed[0].astype(x.dtype)
    cls = jnp.broadcast_to(self.cls_token.astype(x.dtype) + pos[:1], (b, 1, cfg.width))
    patches = x + pos[1:] + self.time_embed[0].astype(x.dtype)[:, None]
    return cls, patches

  def block(self, i: int, cls: Array, patches: Array, train: bool = False):
    """Block i (0-indexed) -> (cls, patches)."""
    return self.blocks[i](cls, patches, train)

  def final_norm(self, x: Array) -> Array:
    return self.norm(x)

  def __call__(self, frames: Array, train: bool = False) -> dict[str, Array]:
    cls, patches = self.embed(frames)
    for i in range(self.config.layers):
      cls, patches = self.block(i, cls, patches, train)
    return {"pooled": self.norm(cls[:, 0]), "cls": cls, "patches": patches}


class _PatchEmbed(nn.Module):
  """`patch_embed/proj`: Conv2d(3, D, p, stride p) per frame; `(B, T, S, S, 3) -> (B, T, N, D)`."""
  config: TimeSformerConfig
  dtype: Any = None

  @nn.compact
  def __call__(self, frames: Array) -> Array:
    cfg, p = self.config, self.config.patch_size
    b, t = frames.shape[:2]
    x = nn.Conv(cfg.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                kernel_init=TRUNC_NORMAL, name="proj")(
                    frames.reshape((b * t,) + frames.shape[2:]))
    return x.reshape((b, t, -1, cfg.width))  # row-major patches, as torch's flatten(2)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
  """torch F.interpolate(mode="nearest") source index: floor(dst * n_in / n_out)."""
  return np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)


def resize_time_embed(time_embed: np.ndarray, num_frames: int) -> np.ndarray:
  """`(1, T, D) -> (1, num_frames, D)`, nearest, as the official forward does for other T."""
  time_embed = np.asarray(time_embed)
  return time_embed[:, _nearest_index(time_embed.shape[1], num_frames)]


def resize_pos_embed(pos_embed: np.ndarray, grid: int) -> np.ndarray:
  """`(1, 1 + g*g, D) -> (1, 1 + grid^2, D)`: patch rows resized nearest (official forward for
  other image sizes), the CLS row untouched."""
  pos_embed = np.asarray(pos_embed)
  g = int(round((pos_embed.shape[1] - 1) ** 0.5))
  patches = pos_embed[0, 1:].reshape(g, g, -1)
  idx = _nearest_index(g, grid)
  patches = patches[idx][:, idx].reshape(grid * grid, -1)
  return np.concatenate([pos_embed[:, :1], patches[None]], axis=1)


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
