"""DeiT image backbone (Touvron et al. 2021; a ViT with one CLS token, no distillation token):
its architecture presets, its block and the converter of Hugging Face / timm weights. The model
of the "deit" family (PAAB / PAAT plugged in, a video as frames) is `deit_model.DeiT`; the
PAAB/PAAT paper trains it from scratch with a time-contrastive loss for multi-view robot video
alignment (Sec. 4, Table 5).

Parameter tree (timm / Hugging Face `ViTModel` layout, see `convert_hf_vit`):
    patch_embed/{kernel (p, p, 3, D), bias}   cls_token (1, 1, D)   pos_embed (1, 1 + N, D)
    blocks_{i}/{norm1, attn/{query,key,value (D, H, hd), out (H, hd, D)}, norm2, mlp/{fc1, fc2}}
    norm/{scale, bias}   [paab_{l}/...]   [paat_head/...]  (train-time only)   [head/...]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np
from flax import linen as nn

from pgvt_jax.models import arch, layers

Array = jax.Array
# ImageNet statistics: DeiT's and 3DTRL's input normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DeitConfig(arch.ViTArch):
  """Architecture of a DeiT / ViT image tower (PAAB / PAAT: config.model's fields)."""
  ln_eps: float = 1e-6          # timm DeiT (HF ViT's default is 1e-12: set it in parity tests)
  mlp_ratio: float = 4.0


# DeiT-Ti/S/B of Touvron et al. Table 1; "test" and "micro" are seconds-on-CPU sizes with the
# same code path ("micro": the CPU-sized alignment world of configs/alignment.py).
PRESETS = {
    "Ti/16": DeitConfig(width=192, layers=12, heads=3),
    "S/16": DeitConfig(width=384, layers=12, heads=6),
    "B/16": DeitConfig(width=768, layers=12, heads=12),
    "test": DeitConfig(width=64, layers=2, heads=2, patch_size=8, image_size=32),
    "micro": DeitConfig(width=32, layers=2, heads=2, patch_size=8, image_size=32),
}


def get_config(size: str, **overrides) -> DeitConfig:
  return arch.preset("DeiT size", PRESETS, size, **overrides)


class Block(nn.Module):
  """Pre-LN ViT block: x + DropPath(attn(norm1 x)); x + DropPath(mlp(norm2 x)). `(B, L, D)`."""
  heads: int
  mlp_ratio: float
  ln_eps: float
  drop_path: float = 0.0
  dtype: Any = None
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    ln = lambda name: nn.LayerNorm(epsilon=self.ln_eps, name=name)
    cast = lambda y: y.astype(self.dtype or y.dtype)
    drop = lambda y: layers.drop_path(self, y, self.drop_path, train=train)  # per sample
    attn = layers.Attention(self.heads, kernel_init=layers.trunc_normal(), dtype=self.dtype,
                            attention_impl=self.attention_impl, name="attn")
    x = x + drop(attn(cast(ln("norm1")(x)), record="video_spatial"))  # as every family
    mlp = layers.Mlp(int(x.shape[-1] * self.mlp_ratio), "gelu",
                     kernel_init=layers.trunc_normal(), dtype=self.dtype, name="mlp")
    return x + drop(mlp(cast(ln("norm2")(x))))


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
  for i in range(config.layers):
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
