"""PyTorch reference of AIM's ViT-CLIP video backbone (= pgvt_jax's `video_only`), for timing.

A comparison tool only (benchmarks/, never imported by pgvt_jax): the same block structure as
AIM's `ViT_CLIP` (taoyang1122/adapt-image-models, mmaction/models/backbones/vit_clip.py, as
summarised in /work/shared/FACTS.md "AIM", which was checked against that file by running it)
plus its I3D-style head, written here from the paper and those facts:

    frames (B, 3, T, S, S) -> conv1 patches (no bias) -> [CLS; patches] + positional_embedding
    -> + temporal_embedding (1, T, D) on every token -> ln_pre -> tokens-first (N, B*T, D)
    -> blocks (below) -> ln_post on each frame's CLS -> mean over T -> dropout -> head

    block:  xt = x over time (T, B*N, D);  x += drop_path(T_Adapter(attn(ln_1(xt))))
            x += S_Adapter(attn(ln_1(x)))                       (S_Adapter with skip)
            xn = ln_2(x);  x += mlp(xn) + drop_path(scale * MLP_Adapter(xn))

`attn` is CLIP's frozen `nn.MultiheadAttention` (tokens-first, as OpenAI CLIP and AIM call it),
reused over time for the temporal branch, CLS included. LayerNorm eps 1e-5; MLP activation
QuickGELU (OpenAI weights); adapters D -> D/4 -> D with exact GELU. Frozen: every CLIP weight;
trainable: adapters, temporal_embedding, ln_post, head (AIM's name rule, `freeze_backbone`).

`state_dict_from_flax` maps a pgvt_jax video_only param tree onto this module, so the parity
test (tests/test_torch_aim.py) runs both on the same weights.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-5  # CLIP's LayerNorm eps (torch's default)
# AIM's trainable-name rule (everything else in the backbone is frozen).
TRAINABLE_NAMES = ("temporal_embedding", "ln_post", "Adapter", "head")
# AIM's Diving48 paramwise_cfg: no weight decay for these (substring match, as mmcv).
NO_DECAY_NAMES = ("class_embedding", "positional_embedding", "ln_1", "ln_2", "ln_pre",
                  "ln_post")


@dataclasses.dataclass(frozen=True)
class AimConfig:
  """Architecture of the reference (every field has a pgvt_jax `config.model` counterpart)."""
  width: int
  layers: int
  patch_size: int
  image_size: int
  frames: int
  num_classes: int
  heads: int
  adapter_ratio: float = 0.25
  adapter_scale: float = 0.5
  drop_path: float = 0.2
  dropout: float = 0.5
  activation: str = "quick_gelu"   # or "gelu" (exact)
  drop_path_mode: str = "frame"    # "frame" (pgvt_jax default) | "aim" (per token position)


class QuickGELU(nn.Module):
  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class Adapter(nn.Module):
  """Linear(D, D*ratio) -> exact GELU -> Linear(-> D), optional skip; fc2 zero-initialised."""

  def __init__(self, width: int, ratio: float, skip: bool):
    super().__init__()
    self.skip = skip
    self.D_fc1 = nn.Linear(width, int(width * ratio))
    self.D_fc2 = nn.Linear(int(width * ratio), width)
    nn.init.trunc_normal_(self.D_fc1.weight, std=0.02)
    nn.init.zeros_(self.D_fc1.bias)
    nn.init.zeros_(self.D_fc2.weight)
    nn.init.zeros_(self.D_fc2.bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.D_fc2(F.gelu(self.D_fc1(x)))
    return x + h if self.skip else h


class DropPath(nn.Module):
  """Stochastic depth on a tokens-first branch (N, B*T, D), scaled by 1/keep in training.

  "frame": one draw per clip and frame (axis 1); "aim": one draw per token position (axis 0),
  which is what timm's DropPath does on AIM's tokens-first tensors.
  """

  def __init__(self, rate: float, mode: str):
    super().__init__()
    if mode not in ("frame", "aim"):
      raise ValueError(f"drop_path_mode={mode!r}; expected 'frame' or 'aim'")
    self.rate, self.mode = rate, mode

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if not self.training or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (1, x.shape[1], 1) if self.mode == "frame" else (x.shape[0], 1, 1)
    mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class AimBlock(nn.Module):
  """CLIP's residual attention block with AIM's three adapters; tokens-first (N, B*T, D)."""

  def __init__(self, cfg: AimConfig, drop_path: float):
    super().__init__()
    d = cfg.width
    self.frames, self.scale = cfg.frames, cfg.adapter_scale
    self.attn = nn.MultiheadAttention(d, cfg.heads)
    self.ln_1 = nn.LayerNorm(d, eps=LN_EPS)
    act = QuickGELU() if cfg.activation == "quick_gelu" else nn.GELU()
    self.mlp = nn.Sequential(collections.OrderedDict(
        [("c_fc", nn.Linear(d, 4 * d)), ("gelu", act), ("c_proj", nn.Linear(4 * d, d))]))
    self.ln_2 = nn.LayerNorm(d, eps=LN_EPS)
    self.T_Adapter = Adapter(d, cfg.adapter_ratio, skip=False)
    self.S_Adapter = Adapter(d, cfg.adapter_ratio, skip=True)
    self.MLP_Adapter = Adapter(d, cfg.adapter_ratio, skip=False)
    self.drop_path = DropPath(drop_path, cfg.drop_path_mode)

  def attention(self, x: torch.Tensor) -> torch.Tensor:
    return self.attn(x, x, x, need_weights=False)[0]

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    n, bt, d = x.shape
    t = self.frames
    b = bt // t
    # Temporal adaptation: (N, (B T), D) -> (T, (B N), D), frozen attention over time.
    xt = x.reshape(n, b, t, d).permute(2, 1, 0, 3).reshape(t, b * n, d)
    xt = self.T_Adapter(self.attention(self.ln_1(xt)))
    xt = xt.reshape(t, b, n, d).permute(2, 1, 0, 3).reshape(n, bt, d)
    x = x + self.drop_path(xt)
    # Spatial adaptation (S_Adapter has the skip), then joint adaptation beside the MLP.
    x = x + self.S_Adapter(self.attention(self.ln_1(x)))
    xn = self.ln_2(x)
    return x + self.mlp(xn) + self.drop_path(self.scale * self.MLP_Adapter(xn))


class AimVideoClip(nn.Module):
  """AIM ViT-CLIP backbone + head: `forward(frames (B, 3, T, S, S)) -> logits (B, C)`."""

  def __init__(self, cfg: AimConfig):
    super().__init__()
    self.cfg = cfg
    d, p = cfg.width, cfg.patch_size
    grid = cfg.image_size // p
    scale = d ** -0.5
    self.conv1 = nn.Conv2d(3, d, kernel_size=p, stride=p, bias=False)
    self.class_embedding = nn.Parameter(scale * torch.randn(d))
    self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, d))
    self.ln_pre = nn.LayerNorm(d, eps=LN_EPS)
    self.temporal_embedding = nn.Parameter(torch.zeros(1, cfg.frames, d))
    rates = np.linspace(0.0, cfg.drop_path, cfg.layers)  # linear in depth, as AIM/timm
    self.resblocks = nn.ModuleList([AimBlock(cfg, float(r)) for r in rates])
    self.ln_post = nn.LayerNorm(d, eps=LN_EPS)
    self.dropout = nn.Dropout(cfg.dropout)
    self.head = nn.Linear(d, cfg.num_classes)
    nn.init.normal_(self.head.weight, std=0.01)
    nn.init.zeros_(self.head.bias)

  def forward(self, frames: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = frames.shape
    x = self.conv1(frames.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))  # (BT, D, g, g)
    x = x.flatten(2).transpose(1, 2)                                        # (BT, g*g, D)
    cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
    n, d = x.shape[1], x.shape[2]
    x = x.reshape(b, t, n, d) + self.temporal_embedding[:, :, None]  # every token of frame t
    x = self.ln_pre(x.reshape(b * t, n, d)).permute(1, 0, 2)          # (N, BT, D)
    for block in self.resblocks:
      x = block(x)
    cls = self.ln_post(x[0]).reshape(b, t, d).mean(1)                  # per-frame CLS, mean
    return self.head(self.dropout(cls))


def freeze_backbone(model: nn.Module) -> None:
  """AIM's rule: only names containing one of TRAINABLE_NAMES keep requires_grad."""
  for name, p in model.named_parameters():
    p.requires_grad_(any(k in name for k in TRAINABLE_NAMES))


def make_optimizer(model: nn.Module, lr: float = 3e-4, weight_decay: float = 0.05,
                   betas=(0.9, 0.999), eps: float = 1e-8,
                   no_decay=NO_DECAY_NAMES) -> torch.optim.AdamW:
  """AdamW over the trainable params only, decay off for `no_decay` names (AIM's groups)."""
  decay, plain = [], []
  for name, p in model.named_parameters():
    if p.requires_grad:
      (plain if any(k in name for k in no_decay) else decay).append(p)
  return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                            {"params": plain, "weight_decay": 0.0}], lr=lr, betas=betas,
                           eps=eps)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, frames: torch.Tensor,
               labels: torch.Tensor, label_smoothing: float = 0.0,
               clip_norm: float = 0.0) -> torch.Tensor:
  """Forward, cross-entropy, backward, AdamW step (model in train mode). Returns the loss."""
  opt.zero_grad(set_to_none=True)
  loss = F.cross_entropy(model(frames).float(), labels, label_smoothing=label_smoothing)
  loss.backward()
  if clip_norm > 0:
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                   clip_norm)
  opt.step()
  return loss.detach()


# ------------------------------------------------------------------ flax -> torch weights
class _Recorder(dict):
  """A dict that remembers which keys were read (to name the params a mapping skipped)."""

  def __init__(self, flat: Mapping[str, Any]):
    super().__init__(flat)
    self.read: set[str] = set()

  def __getitem__(self, key: str) -> Any:
    if key not in self:
      raise KeyError(f"pgvt_jax param {key!r} expected by the torch reference's mapping; "
                     f"have e.g. {sorted(self)[:8]}")
    self.read.add(key)
    return super().__getitem__(key)


def _t(x: Any) -> torch.Tensor:
  return torch.from_numpy(np.array(x, dtype=np.float32))


def _linear(flat: Mapping[str, Any], src: str, dst: str) -> dict[str, torch.Tensor]:
  return {f"{dst}.weight": _t(flat[f"{src}/kernel"]).T, f"{dst}.bias": _t(flat[f"{src}/bias"])}


def _norm(flat: Mapping[str, Any], src: str, dst: str) -> dict[str, torch.Tensor]:
  return {f"{dst}.weight": _t(flat[f"{src}/scale"]), f"{dst}.bias": _t(flat[f"{src}/bias"])}


def _attention(flat: Mapping[str, Any], src: str, dst: str, width: int
               ) -> dict[str, torch.Tensor]:
  """pgvt_jax's per-head q/k/v/out DenseGeneral kernels -> nn.MultiheadAttention's packed ones.

  query/key/value kernel (D, H, hd) -> in_proj_weight rows q|k|v = kernel.reshape(D, D).T;
  out kernel (H, hd, D) -> out_proj.weight = kernel.reshape(D, D).T (FACTS.md "CLIP weights").
  """
  w = [_t(flat[f"{src}/{n}/kernel"]).reshape(width, width).T for n in ("query", "key", "value")]
  b = [_t(flat[f"{src}/{n}/bias"]).reshape(width) for n in ("query", "key", "value")]
  return {f"{dst}.in_proj_weight": torch.cat(w), f"{dst}.in_proj_bias": torch.cat(b),
          f"{dst}.out_proj.weight": _t(flat[f"{src}/out/kernel"]).reshape(width, width).T,
          f"{dst}.out_proj.bias": _t(flat[f"{src}/out/bias"])}


def state_dict_from_flax(flat: Mapping[str, Any], cfg: AimConfig) -> dict[str, torch.Tensor]:
  """A torch state dict for `AimVideoClip(cfg)` from a pgvt_jax video_only param tree.

  flat: {"a/b/c": array} (`pgvt_jax.models.common.flatten(params)`). Raises naming every flax
  param it did not use, so a layout change in pgvt_jax fails loudly instead of half-loading.
  """
  d, flat = cfg.width, _Recorder(flat)
  sd = {"conv1.weight": _t(flat["conv1/kernel"]).permute(3, 2, 0, 1),  # HWIO -> OIHW
        "class_embedding": _t(flat["class_embedding"]),
        "positional_embedding": _t(flat["positional_embedding"]),
        "temporal_embedding": _t(flat["temporal_embedding"])[None],
        **_norm(flat, "ln_pre", "ln_pre"), **_norm(flat, "ln_post", "ln_post"),
        **_linear(flat, "head", "head")}
  for i in range(cfg.layers):
    src, dst = f"resblocks_{i}", f"resblocks.{i}"
    sd.update(_attention(flat, f"{src}/attn", f"{dst}.attn", d))
    sd.update(_norm(flat, f"{src}/ln_1", f"{dst}.ln_1"))
    sd.update(_norm(flat, f"{src}/ln_2", f"{dst}.ln_2"))
    sd.update(_linear(flat, f"{src}/mlp/c_fc", f"{dst}.mlp.c_fc"))
    sd.update(_linear(flat, f"{src}/mlp/c_proj", f"{dst}.mlp.c_proj"))
    for a in ("T_Adapter", "S_Adapter", "MLP_Adapter"):
      for fc in ("D_fc1", "D_fc2"):
        sd.update(_linear(flat, f"{src}/{a}/{fc}", f"{dst}.{a}.{fc}"))
  left = sorted(set(flat) - flat.read)
  if left:
    raise ValueError(f"state_dict_from_flax: pgvt_jax params with no place in the torch "
                     f"reference (a video_only tree was expected): {left}")
  return sd


def load_flax_params(model: AimVideoClip, flat: Mapping[str, Any]) -> None:
  """Copies a flattened pgvt_jax video_only tree into `model` (strict: every key, shape)."""
  sd = state_dict_from_flax(flat, model.cfg)
  own = model.state_dict()
  bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
         if k in own and v.shape != own[k].shape]
  if bad:
    raise ValueError(f"load_flax_params: shape mismatches: {bad}")
  model.load_state_dict(sd, strict=True)
