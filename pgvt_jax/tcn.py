"""Time-contrastive losses (multi-view TCN, Sermanet et al. 2018) and the alignment error.

The PAAB/PAAT paper's third task (Sec. 4, Table 5) trains a DeiT on frames of multi-view
robot videos with TCN losses and reports the alignment error of [51]. Training batches hold,
per sample, K frames of one episode seen from two synchronised viewpoints:

    z      (B, 2, K, E)   embeddings, view 0 / view 1, K frame times each
    times  (B, K)         the frame times (the same for both views: the videos are synchronised)

Multi-view TCN (Sermanet et al., Sec. 3.1): the anchor is view v at time t, the positive the
*other* view at the same time t, a negative the *same* view as the anchor at a time t' with
|t' - t| > window (temporally distant). Every (anchor, negative) pair of the batch that
satisfies this is used, both views take the anchor role, and the loss is the mean over them:

    triplet  max(0, ||a - p||^2 - ||a - n||^2 + margin)                       (TCN Eq. 1)
    infonce  -log softmax over {p} U {n} of -||a - .||^2 / temperature at p   (n-pairs form)

`alignment_error` is the metric of the TCN paper as 3DTRL computes it: nearest neighbour in
squared Euclidean distance of each frame of view A among view B's frames, mean |t_nn - t| / T.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
LOSSES = ("triplet", "infonce")


def pairwise_sq_dist(a: Array, b: Array) -> Array:
  """`(..., K, E), (..., L, E) -> (..., K, L)` squared Euclidean distances (float32)."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  diff = a[..., :, None, :] - b[..., None, :, :]
  return jnp.sum(diff * diff, axis=-1)


def negative_mask(times: Array, window: int) -> Array:
  """`(B, K) -> (B, K, K)` bool: True where frame k' is a negative of anchor k,
  i.e. |t_k' - t_k| > window (temporally distant; never k' = k)."""
  gap = jnp.abs(times[:, :, None] - times[:, None, :])
  return gap > window


def time_contrastive_loss(z: Array, times: Array, *, window: int, kind: str = "triplet",
                          margin: float = 1.0, temperature: float = 0.1,
                          normalize: bool = False) -> tuple[Array, dict[str, Array]]:
  """Multi-view TCN loss of `z (B, 2, K, E)` at frame `times (B, K)` -> (scalar, metrics).

  Args:
    window: frames within +-window of the anchor are neither positives nor negatives.
    kind: "triplet" (margin, TCN Eq. 1) or "infonce" (softmax over positive and negatives).
    margin: alpha of the triplet loss (in squared-distance units).
    temperature: InfoNCE temperature.
    normalize: L2-normalise embeddings first (TCN normalises; 3DTRL does not).
  """
  if kind not in LOSSES:
    raise ValueError(f"time_contrastive_loss: kind={kind!r}; expected one of {LOSSES}")
  if z.ndim != 4 or z.shape[1] != 2 or times.shape != (z.shape[0], z.shape[2]):
    raise ValueError(f"time_contrastive_loss: z {z.shape} must be (B, 2, K, E) and times "
                     f"{times.shape} (B, K)")
  z = z.astype(jnp.float32)
  if normalize:
    z = z / jnp.sqrt(jnp.sum(z * z, -1, keepdims=True) + 1e-12)
  neg = negative_mask(times, window)                                   # (B, K, K)
  terms, counts, pos_d, neg_d = [], [], [], []
  for v in (0, 1):
    anchor, other = z[:, v], z[:, 1 - v]
    d_ap = jnp.sum((anchor - other) ** 2, -1)                          # (B, K) same time
    d_an = pairwise_sq_dist(anchor, anchor)                            # (B, K, K) same view
    if kind == "triplet":
      hinge = jnp.maximum(d_ap[:, :, None] - d_an + margin, 0.0)
      terms.append(jnp.sum(jnp.where(neg, hinge, 0.0)))
      counts.append(jnp.sum(neg))
    else:
      # logits: column 0 the positive, then every frame of the anchor's view (masked to negs).
      logits = jnp.concatenate([-d_ap[:, :, None], -d_an], -1) / temperature
      valid = jnp.concatenate([jnp.ones_like(neg[:, :, :1]), neg], -1)
      logits = jnp.where(valid, logits, -jnp.inf)
      nll = -jax.nn.log_softmax(logits, -1)[..., 0]                    # (B, K)
      has_neg = jnp.any(neg, -1)  # an anchor without any negative teaches nothing
      terms.append(jnp.sum(jnp.where(has_neg, nll, 0.0)))
      counts.append(jnp.sum(has_neg))
    pos_d.append(jnp.mean(d_ap))
    neg_d.append(jnp.sum(jnp.where(neg, d_an, 0.0)) / jnp.maximum(jnp.sum(neg), 1))
  loss = sum(terms) / jnp.maximum(sum(counts), 1).astype(jnp.float32)
  metrics = {"tcn_loss": loss, "dist_pos": sum(pos_d) / 2, "dist_neg": sum(neg_d) / 2}
  return loss, metrics


def nearest_neighbours(z1: np.ndarray, z2: np.ndarray) -> np.ndarray:
  """`(T1, E), (T2, E) -> (T1,)` index in z2 of each z1 frame's nearest neighbour (sq. L2)."""
  z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
  d = (z1 * z1).sum(-1)[:, None] - 2 * z1 @ z2.T + (z2 * z2).sum(-1)[None, :]
  return np.argmin(d, axis=1)


def alignment_error(z1: np.ndarray, z2: np.ndarray) -> float:
  """TCN's alignment error of two synchronised views `(T, E)` each: mean |nn(t) - t| / T."""
  z1, z2 = np.asarray(z1), np.asarray(z2)
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError(f"alignment_error: embeddings {z1.shape} and {z2.shape} must both be "
                     "(T, E) of synchronised views")
  t = len(z1)
  nn_idx = nearest_neighbours(z1, z2)
  return float(np.mean(np.abs(nn_idx - np.arange(t)) / t))


def episode_alignment_error(z: np.ndarray) -> float:
  """`(V, T, E)` one episode's views -> mean alignment error over view pairs i < j (3DTRL)."""
  v = len(z)
  if v < 2:
    raise ValueError(f"episode_alignment_error: need >= 2 views, got {v}")
  return float(np.mean([alignment_error(z[i], z[j]) for i in range(v)
                        for j in range(i + 1, v)]))
