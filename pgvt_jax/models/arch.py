"""What every ViT backbone's architecture has: width, depth, heads, patches.

Each backbone module subclasses `ViTArch` with its own fields (CLIP: output_dim, activation;
TimeSformer: num_frames; DeiT: ln_eps) and keeps a `PRESETS` table read by `preset`. The model
configuration (`config.model`, models/config.py) reaches any family's architecture as
`ModelConfig.arch`, so pose maps, planners and checks need no per-family code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, TypeVar

A = TypeVar("A", bound="ViTArch")


@dataclasses.dataclass(frozen=True)
class ViTArch:
  """Transformer over `(S/p)^2` patch tokens of an S x S image. Heads default to width // 64
  (d_k = 64, as every CLIP and ViT release)."""
  width: int
  layers: int
  heads: Optional[int] = None
  patch_size: int = 16
  image_size: int = 224
  mlp_ratio: float = 4

  def __post_init__(self):
    name = type(self).__name__
    if self.heads is None:
      object.__setattr__(self, "heads", max(1, self.width // 64))
    for f in ("width", "layers", "heads", "patch_size", "image_size"):
      if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
        raise ValueError(f"{name}.{f}={getattr(self, f)!r}: must be a positive int")
    if self.width % self.heads:
      raise ValueError(f"{name}.width={self.width} not divisible by heads={self.heads}")
    if self.image_size % self.patch_size:
      raise ValueError(f"{name}.image_size={self.image_size} is not a multiple of "
                       f"patch_size={self.patch_size}")

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    """N: patch tokens per image."""
    return self.grid_size ** 2

  def replace(self: A, **kw) -> A:
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def preset(kind: str, presets: Mapping[str, A], name: str, **overrides) -> A:
  """`presets[name]` with `overrides`; an unknown name lists the presets."""
  if name not in presets:
    raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(presets)}")
  return presets[name].replace(**overrides)
