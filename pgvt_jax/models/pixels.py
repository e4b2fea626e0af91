"""Pixel normalisation on the device: batches carry frames as uint8, models normalise them.

Why on the device: a uint8 frame is a quarter of the float32 one the host used to send
(16 x 224 x 224 x 3 frames: 2.4 MB instead of 9.6 MB per clip), and the normalisation is
one fused multiply-add inside the step.

    x = pixels.model_frames(batch["frames"], mean, std, dtype)   # at the top of a model
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def normalize(frames: Array, mean: Sequence[float], std: Sequence[float],
              dtype=jnp.float32) -> Array:
  """uint8 RGB `(..., 3)` -> `dtype` `(x / 255 - mean) / std`, per channel.

  Computed in float32 as `x * (1 / (255 std)) - mean / std` (the constants rounded to
  float32 once, as the host pipeline did), then cast to `dtype`.
  """
  std = np.asarray(std, np.float64)
  scale = jnp.asarray((1.0 / (255.0 * std)).astype(np.float32))
  offset = jnp.asarray((np.asarray(mean, np.float64) / std).astype(np.float32))
  return (frames.astype(jnp.float32) * scale - offset).astype(dtype)


def model_frames(frames: Array, mean: Sequence[float], std: Sequence[float], dtype) -> Array:
  """Frames as a model reads them: uint8 pixels are normalised (`normalize`); float frames
  are taken as already normalised (tests, parity checks, callers with their own
  preprocessing) and returned unchanged."""
  if frames.dtype == jnp.uint8:
    return normalize(frames, mean, std, dtype)
  return frames
