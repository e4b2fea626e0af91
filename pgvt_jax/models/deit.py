"""DeiT image backbone (Touvron et al. 2021; a ViT with one CLS token, no distillation token) in
flax.linen, with PAAB / PAAT (pgvt_jax/models/paab.py, paat.py) plugged in: an image is a
one-frame video (T = 1, one CLS). The PAAB/PAAT paper uses it, trained from scratch with a
time-contrastive loss, for multi-view robot video alignment (Sec. 4, Table 5).

    model = DeiT(get_config("S/16", image_size=224, paab_layers=(12,)))
    emb, out = model.apply({"params": p}, {"frames": x, "pose": kp, "pose_mask": m}, train=True)
    # frames (B, S, S, 3) uint8 (normalised inside, ImageNet statistics) or float (already
    # normalised); pose (B, J, 2) model-input pixels; pose_mask (B, J)
    # emb (B, D): the final-LayerNorm CLS token (the frame embedding 3DTRL/TCN train on)

Parameter tree (timm / Hugging Face `ViTModel` layout, see `convert_hf_vit`):
    patch_embed/{kernel (p, p, 3, D), bias}   cls_token (1, 1, D)   pos_embed (1, 1 + N, D)
    blocks_{i}/{norm1, attn/{query,key,value (D, H, hd), out (H, hd, D)}, norm2, mlp/{fc1, fc2}}
    norm/{scale, bias}   [paab_{l}/...]   [paat_head/...]  (train-time only)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pgvt_jax.models import layers
from pgvt_jax.models import paab as paab_lib
from pgvt_jax.models import paat as paat_lib
from pgvt_jax.models import pixels
from pgvt_jax.models import pose_maps as pose_maps_lib

Array = jax.Array
# ImageNet statistics: DeiT's and 3DTRL's input normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DeitConfig:
  """Architecture + PAAB/PAAT switches (same meaning as ModelConfig's paab_*/paat_* fields)."""
  width: int
  depth: int
  heads: int
  patch_size: int = 16
  image_size: int = 224
  mlp_ratio: float = 4.0
  ln_eps: float = 1e-6          # timm DeiT (HF ViT's default is 1e-12: set it in parity tests)
  drop_path: float = 0.0        # stochastic depth, linear over depth (DeiT: 0.1)
  num_keypoints: int = 4        # K joints per frame (PAAT P3D classes)
  paab_layers: tuple[int, ...] = ()   # PAAB after block l (1-indexed); paper: after the last
  paab_variant: str = "pa_sa"
  pose_map_dilation: int = 1
  paat_layer: int = 0           # PAAT head on patch tokens after block l; 0 = off (paper: 1)
  paat_target: str = "p3d"
  paat_hidden: int = 256

  def __post_init__(self):
    if self.width % self.heads:
      raise ValueError(f"DeitConfig: width {self.width} not divisible by heads {self.heads}")
    if self.image_size % self.patch_size:
      raise ValueError(f"DeitConfig: image_size {self.image_size} is not a multiple of "
                       f"patch_size {self.patch_size}")
    bad = [l for l in self.paab_layers if not 1 <= l <= self.depth]
    if bad:
      raise ValueError(f"DeitConfig.paab_layers {self.paab_layers}: layers must be in "
                       f"1..{self.depth}")
    if not 0 <= self.paat_layer <= self.depth:
      raise ValueError(f"DeitConfig.paat_layer={self.paat_layer}: expected 0..{self.depth}")
    if self.paat_target not in ("p3d", "p2d"):
      raise ValueError(f"DeitConfig.paat_target={self.paat_target!r}; expected p3d or p2d")
    if self.paab_variant not in paab_lib.VARIANTS:
      raise ValueError(f"DeitConfig.paab_variant={self.paab_variant!r}; expected one of "
                       f"{paab_lib.VARIANTS}")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  def replace(self, **kw) -> "DeitConfig":
    return dataclasses.replace(self, **kw)


# DeiT-Ti/S/B of Touvron et al. Table 1; "test" is a seconds-on-CPU size with the same code path.
PRESETS = {
    "Ti/16": DeitConfig(width=192, depth=12, heads=3),
    "S/16": DeitConfig(width=384, depth=12, heads=6),
    "B/16": DeitConfig(width=768, depth=12, heads=12),
    "test": DeitConfig(width=64, depth=2, heads=2, patch_size=8, image_size=32),
}


def get_config(size: str, **overrides) -> DeitConfig:
  if size not in PRESETS:
    raise ValueError(f"unknown DeiT size {size!r}; expected one of {sorted(PRESETS)}")
  return PRESETS[size].replace(**overrides)


class Block(nn.Module):
  """Pre-LN ViT block: x + DropPath(attn(norm1 x)); x + DropPath(mlp(norm2 x)). `(B, L, D)`."""
  heads: int
  mlp_ratio: float
  ln_eps: float
  drop_path: float = 0.0

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    ln = lambda name: nn.LayerNorm(epsilon=self.ln_eps, name=name)
    drop = lambda y: layers.drop_path(self, y, self.drop_path, train=train)  # per sample
    attn = layers.Attention(self.heads, kernel_init=layers.trunc_normal(), name="attn")
    x = x + drop(attn(ln("norm1")(x), record="spatial"))
    mlp = layers.Mlp(int(x.shape[-1] * self.mlp_ratio), "gelu",
                     kernel_init=layers.trunc_normal(), name="mlp")
    return x + drop(mlp(ln("norm2")(x)))


class DeiT(nn.Module):
  """`(batch, *, train) -> (embedding (B, D), out)`; out holds PAAT logits/targets in train."""
  config: DeitConfig

  def pose_maps(self, batch: Mapping[str, Array]) -> tuple[Array, Array]:
    """p2d `(B, 1, N)`, p3d `(B, 1, N, K)` from pose `(B, J, 2)` / pose_mask `(B, J)`."""
    c = self.config
    return pose_maps_lib.pose_maps(batch["pose"][:, None], batch["pose_mask"][:, None],
                                   image_size=c.image_size, patch_size=c.patch_size,
                                   dilation=c.pose_map_dilation)

  @nn.compact
  def __call__(self, batch: Mapping[str, Array], *, train: bool = False
               ) -> tuple[Array, dict[str, Any]]:
    c = self.config
    # uint8 pixels (the alignment batches) normalised here; float frames: already normalised.
    x = pixels.model_frames(batch["frames"], IMAGENET_MEAN, IMAGENET_STD, jnp.float32)
    if x.ndim != 4 or x.shape[1:] != (c.image_size, c.image_size, 3):
      raise ValueError(f"DeiT: frames {x.shape}, expected (B, {c.image_size}, "
                       f"{c.image_size}, 3)")
    b = x.shape[0]
    init = layers.trunc_normal()
    x = nn.Conv(c.width, (c.patch_size,) * 2, strides=(c.patch_size,) * 2, padding="VALID",
                kernel_init=init, name="patch_embed")(x)
    x = x.reshape(b, -1, c.width)                                          # (B, N, D) row-major
    cls = self.param("cls_token", init, (1, 1, c.width))
    pos = self.param("pos_embed", init, (1, 1 + x.shape[1], c.width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c.width)), x], axis=1) + pos
    need_pose = bool(c.paab_layers) or (train and c.paat_layer > 0)
    p2d = p3d = None
    if need_pose:
      if "pose" not in batch or "pose_mask" not in batch:
        raise ValueError("DeiT with paab_layers/paat_layer needs batch['pose'] (B, J, 2) and "
                         "batch['pose_mask'] (B, J)")
      p2d, p3d = self.pose_maps(batch)
    out: dict[str, Any] = {}
    for i in range(1, c.depth + 1):
      rate = c.drop_path * (i - 1) / max(c.depth - 1, 1)
      x = Block(c.heads, c.mlp_ratio, c.ln_eps, rate, name=f"blocks_{i - 1}")(x, train=train)
      if i in c.paab_layers:   # image = one-frame video: (B, 1, D) CLS, (B, 1, N, D) patches
        cls_t, patches = paab_lib.PAAB(c.heads, c.mlp_ratio, c.paab_variant, ln_eps=c.ln_eps,
                                       name=f"paab_{i}")(x[:, :1], x[:, None, 1:], p2d,
                                                          train=train)
        x = jnp.concatenate([cls_t, patches[:, 0]], axis=1)
      if train and i == c.paat_layer:
        k = c.num_keypoints if c.paat_target == "p3d" else 1
        out["paat_logits"] = paat_lib.PAATHead(k, c.paat_hidden, name="paat_head")(
            x[:, None, 1:])
        out["paat_targets"] = p3d if c.paat_target == "p3d" else p2d[..., None]
    x = nn.LayerNorm(epsilon=c.ln_eps, name="norm")(x)
    return x[:, 0], out


def dummy_batch(config: DeitConfig, batch_size: int = 1) -> dict[str, Array]:
  s, j = config.image_size, config.num_keypoints
  return {"frames": jnp.zeros((batch_size, s, s, 3), jnp.uint8),  # pixels, as alignment_data
          "pose": jnp.zeros((batch_size, j, 2), jnp.float32),
          "pose_mask": jnp.ones((batch_size, j), jnp.float32)}


def init_params(model: DeiT, rng: Array) -> Any:
  """Params incl. the train-only PAAT head (initialised through the train path)."""
  return model.init({"params": rng, "drop_path": rng}, dummy_batch(model.config),
                    train=True)["params"]


# ------------------------------------------------------------------ Hugging Face ViT weights


# Hugging Face hub files / transformers 4 name -> transformers 5 name (per-layer substrings).
_V5_NAMES = (("encoder.layer.", "layers."), ("attention.attention.query", "attention.q_proj"),
             ("attention.attention.key", "attention.k_proj"),
             ("attention.attention.value", "attention.v_proj"),
             ("attention.output.dense", "attention.o_proj"),
             ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"))


def convert_hf_vit(state: Mapping[str, Any], config: DeitConfig) -> dict[str, Any]:
  """A `transformers` ViTModel / timm-style DeiT (no distillation token) state dict -> params.

  Both key namings are read: hub files / transformers 4 (`encoder.layer.N.attention.attention.
  query`, ...) and transformers 5 (`layers.N.attention.q_proj`, ...; see `_V5_NAMES`).
  Strict: every backbone key must be used exactly once and every param must be filled
  (`pooler.*` is ignored: DeiT's embedding is the CLS token). Keys may carry a `vit.` prefix.
  """
  s = {k[len("vit."):] if k.startswith("vit.") else k: np.asarray(v, np.float32)
       for k, v in state.items()}
  s = {k: v for k, v in s.items() if not k.startswith("pooler.")}
  used: set[str] = set()
  d, h = config.width, config.heads

  def take(key: str) -> np.ndarray:
    """`key` in the v4/hub naming, or its transformers-5 name (`_V5_NAMES`)."""
    alt = key
    for old, new in _V5_NAMES:
      alt = alt.replace(old, new)
    for k in (key, alt):
      if k in s:
        used.add(k)
        return s[k]
    raise KeyError(f"convert_hf_vit: missing key {key!r} (transformers 5: {alt!r})")

  def dense(prefix: str) -> dict[str, np.ndarray]:
    return {"kernel": take(prefix + ".weight").T, "bias": take(prefix + ".bias")}

  def norm(prefix: str) -> dict[str, np.ndarray]:
    return {"scale": take(prefix + ".weight"), "bias": take(prefix + ".bias")}

  params: dict[str, Any] = {
      "patch_embed": {
          "kernel": take("embeddings.patch_embeddings.projection.weight").transpose(2, 3, 1, 0),
          "bias": take("embeddings.patch_embeddings.projection.bias")},
      "cls_token": take("embeddings.cls_token"),
      "pos_embed": take("embeddings.position_embeddings"),
      "norm": norm("layernorm"),
  }
  for i in range(config.depth):
    p = f"encoder.layer.{i}."
    attn = {n: {"kernel": take(p + f"attention.attention.{n}.weight").T.reshape(d, h, d // h),
                "bias": take(p + f"attention.attention.{n}.bias").reshape(h, d // h)}
            for n in ("query", "key", "value")}
    attn["out"] = {"kernel": take(p + "attention.output.dense.weight").T.reshape(h, d // h, d),
                   "bias": take(p + "attention.output.dense.bias")}
    params[f"blocks_{i}"] = {
        "norm1": norm(p + "layernorm_before"), "attn": attn, "norm2": norm(p + "layernorm_after"),
        "mlp": {"fc1": dense(p + "intermediate.dense"), "fc2": dense(p + "output.dense")}}
  unused = sorted(set(s) - used)
  if unused:
    raise KeyError(f"convert_hf_vit: unexpected keys {unused[:8]} (a DeiT with a distillation "
                   "token, or a different depth?)")
  return params
