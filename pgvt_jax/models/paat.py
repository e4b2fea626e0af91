"""Pose-Aware Auxiliary Task (PAAT; Reilly et al., Sec. 3.3, Eq. 7-8): a patch-keypoint
classifier on the patch tokens after block l, trained with BCE against the pose map P^3D (or
P^2D, Table 1d), used at training time only.

    logits = PAATHead(num_keypoints=K, name="paat_head")(patches)   # (B, T, N, K)
    out["paat_logits"], out["paat_targets"] = logits, p3d            # train mode only
    # losses.py "paat": L_total = L_primary + lambda * paat_loss(logits, targets)   (Eq. 8)

The head's params live under one top-level name (`PARAM_PREFIXES`); `strip_training_only`
removes them for export, and the inference path (train=False) never calls the head, so stripped
params apply fine and no keypoints are needed at inference.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from pgvt_jax.models import layers

Array = jax.Array
# Top-level param names that exist only for training (the PAAT head).
PARAM_PREFIXES = ("paat_head",)


class PAATHead(nn.Module):
  """Eq. 7 before the sigmoid: (z W1 + b1) W2 + b2. `(B, T, N, D) -> (B, T, N, K)` float32.

  Two linears without an activation in between (the paper's W1 (D x D_e), W2 (D_e x K),
  D_e = 256). Both get trunc_normal(.02) weights, as in the public code, whose constructor's
  zero init is overwritten by its model-wide `_init_weights` (measured std 0.020 in both codes;
  zero-initialising both would leave the backbone without any PAAT gradient at the start).
  """
  num_keypoints: int
  hidden: int = 256
  dtype: Any = None

  @nn.compact
  def __call__(self, patches: Array) -> Array:
    h = nn.Dense(self.hidden, kernel_init=layers.trunc_normal(), dtype=self.dtype,
                 name="fc1")(patches)
    logits = nn.Dense(self.num_keypoints, kernel_init=layers.trunc_normal(), dtype=self.dtype,
                      name="fc2")(h)
    return logits.astype(jnp.float32)


def paat_loss(logits: Array, targets: Array) -> Array:
  """Eq. 8 L_PAAT = BCE(P, sigmoid(logits)), mean over all elements, in float32.

  logits `(..., K)`; targets `(..., K)` in {0, 1} (P^3D, or P^2D[..., None] with K = 1).
  """
  if logits.shape != targets.shape:
    raise ValueError(f"paat_loss: logits {logits.shape} and targets {targets.shape} differ")
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                                     targets.astype(jnp.float32)))


def strip_training_only(params: Mapping[str, Any]) -> dict[str, Any]:
  """Params without the PAAT head (export / inference); the rest untouched."""
  return {k: v for k, v in params.items() if k not in PARAM_PREFIXES}
