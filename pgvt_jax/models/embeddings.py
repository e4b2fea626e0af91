"""Pose Embedding layer (Sec. 3.2, Fig. 1): pose input -> pose tokens `(B, T_h, N_P, D)`.

Two input forms (Table 6):
  coords   batch["pose"] (B, T_h, J, 2) in [0, 1] crop coordinates, batch["pose_mask"] (B, T_h, J)
           -> centred on the crop, 2 * pose - 1 in [-1, 1] (`centre_coordinates`)
           -> a trainable MLP (2 -> hidden -> D, exact GELU) per joint: N_P = J + 1 tokens.
           Masked joints (mask 0: not detected, low score, outside the crop) get a learned
           `missing_embedding` instead of the MLP of their (meaningless) coordinates, so the
           model can tell "no joint" from "a joint at (0, 0)"; their joint identity still comes
           from the positional embedding.
  heatmap  batch["pose_heatmap"] (B, T_h, Hh, Hh, J), one channel per joint (PoseC3D style)
           -> a trainable conv patch embedding (kernel = stride = p): N_P = (Hh/p)^2 + 1 tokens.
           pose_mask is not used: a missing joint already has an empty heatmap.
  heatmap_rgb  the same heatmaps drawn as one RGB image per frame (joint j in a fixed colour,
           `render_heatmaps_rgb`), CLIP-normalised and patchified by CLIP's FROZEN conv1
           (shared with the video stream): N_P = (Hh/p)^2 + 1 tokens, p = the backbone's
           patch size, no trainable projection. The reading of Table 6 that matches the
           paper's 11M tunable params / 311 GFLOPs.
Then, as for CLIP's image tokens: a learned CLS token is prepended to every frame, a learned
positional embedding (N_P, D) marks the joint (or patch), and AIM's temporal embedding (T_h, D),
zero-initialised, marks the frame.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pgvt_jax.models import clip_vit, layers
from pgvt_jax.models.adapters import trunc_normal

Array = jax.Array


def joint_palette(num_joints: int) -> np.ndarray:
  """(J, 3) fixed RGB in [0, 1]: joint j at hue j / J, full saturation and value."""
  hue = np.arange(num_joints) / num_joints
  k = (np.array([5.0, 3.0, 1.0])[None] + hue[:, None] * 6) % 6   # HSV -> RGB, S = V = 1
  return np.clip(1 - np.maximum(0, np.minimum(np.minimum(k, 4 - k), 1)), 0, 1).astype(
      np.float32)


def render_heatmaps_rgb(heatmaps: Array) -> Array:
  """Per-joint heatmaps `(..., H, W, J)` in [0, 1] -> CLIP-normalised RGB `(..., H, W, 3)`.

  Each joint is painted in its palette colour on black; overlaps add and saturate at 1.
  """
  rgb = jnp.clip(heatmaps @ jnp.asarray(joint_palette(heatmaps.shape[-1]), heatmaps.dtype),
                 0.0, 1.0)
  return (rgb - jnp.asarray(clip_vit.CLIP_MEAN, rgb.dtype)) / jnp.asarray(clip_vit.CLIP_STD,
                                                                          rgb.dtype)


def centre_coordinates(pose: Array) -> Array:
  """Crop coordinates in [0, 1] -> [-1, 1], the crop centre at 0: `(..., 2) -> (..., 2)`.

  Why: fc1 has no offset at init (zero bias), so on [0, 1] inputs every joint's token is
  dominated by the constant fc1(~0.5, ~0.5) and where the joint lies changes it by only ~10%
  (measured on the demo's clips); the pose stream then sits on a long loss plateau. Centred, a
  joint's position is most of its token at init.
  """
  return 2.0 * pose - 1.0


class PoseEmbedding(nn.Module):
  """Returns pose tokens `(B, T_h, N_P, D)`, CLS at index 0 of each frame (before ln_pre)."""
  width: int
  frames: int                 # T_h
  num_joints: int             # J = joints per person * persons
  pose_format: str = "coords"
  hidden: int = 0             # coordinate MLP hidden size; 0: width
  heatmap_size: int = 112
  patch_size: int = 16
  frozen_conv: Any = None     # heatmap_rgb: CLIP's conv1 module, declared by the parent
  dtype: Any = None

  @nn.compact
  def __call__(self, batch: Mapping[str, Array]) -> Array:
    d = self.width
    if self.pose_format == "coords":
      pose = centre_coordinates(batch["pose"].astype(self.dtype or jnp.float32))
      # fc1 sees raw coordinates (fan-in 2, values in [-1, 1]), not unit-variance features:
      # AIM's trunc_normal(0.02) would make the pose signal ~1e-4 of the token at init, so it
      # gets a fan-in-scaled init (LeCun normal, std 1/sqrt(2)) instead.
      h = nn.Dense(self.hidden or d, kernel_init=nn.initializers.lecun_normal(),
                   dtype=self.dtype, name="fc1")(pose)
      x = nn.Dense(d, kernel_init=trunc_normal, dtype=self.dtype, name="fc2")(layers.exact_gelu(h))
      missing = self.param("missing_embedding", trunc_normal, (d,))
      mask = batch.get("pose_mask")
      if mask is not None:
        x = jnp.where(mask[..., None] > 0, x, missing.astype(x.dtype))
    else:
      hm = batch["pose_heatmap"].astype(self.dtype or jnp.float32)  # (B, T_h, Hh, Hh, J)
      b, t = hm.shape[:2]
      hm = hm.reshape((b * t,) + hm.shape[2:])
      p = self.patch_size
      if self.pose_format == "heatmap_rgb":
        if self.frozen_conv is None:
          raise ValueError("pose_format='heatmap_rgb' needs CLIP's conv1 (frozen_conv)")
        x = self.frozen_conv(render_heatmaps_rgb(hm).astype(self.dtype or jnp.float32))
      else:
        x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    name="patch_embed")(hm)
      x = x.reshape((b, t, -1, d))  # (B, T_h, g*g, D), row-major patches
    b, t, n = x.shape[:3]
    cls = self.param("class_embedding", nn.initializers.normal(d ** -0.5), (d,))
    pos = self.param("positional_embedding", trunc_normal, (n + 1, d))
    temporal = self.param("temporal_embedding", nn.initializers.zeros, (self.frames, d))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, t, 1, d)), x], axis=2)
    return x + pos.astype(x.dtype) + temporal.astype(x.dtype)[:, None]
