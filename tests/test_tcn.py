"""Time-contrastive losses and the alignment error against loop-by-loop NumPy references
written from the definitions (Sermanet et al. TCN; alignment error of the TCN paper)."""

from __future__ import annotations

import numpy as np
import pytest

from pgvt_jax import tcn


def _ref_loss(z, times, window, kind, margin, temperature):
  """One anchor at a time: anchor view v at time t, positive the other view at t, negatives
  the anchor's view at |t' - t| > window."""
  terms = []
  for b in range(z.shape[0]):
    for v in (0, 1):
      for k in range(z.shape[2]):
        a, p = z[b, v, k], z[b, 1 - v, k]
        negs = [z[b, v, j] for j in range(z.shape[2]) if abs(times[b, j] - times[b, k]) > window]
        dp = float(np.sum((a - p) ** 2))
        dn = [float(np.sum((a - n) ** 2)) for n in negs]
        if kind == "triplet":
          terms += [max(0.0, dp - d + margin) for d in dn]
        elif dn:
          logits = np.array([-dp] + [-d for d in dn]) / temperature
          m = logits.max()
          terms.append(-(logits[0] - m - np.log(np.exp(logits - m).sum())))
  return float(np.mean(terms))


@pytest.mark.parametrize("kind", ["triplet", "infonce"])
def test_loss_matches_numpy_reference(kind):
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 2, 6, 5)).astype(np.float32)
  times = np.stack([np.sort(rng.choice(20, 6, replace=False)) for _ in range(3)])
  got, metrics = tcn.time_contrastive_loss(z, times, window=2, kind=kind, margin=4.0,
                                           temperature=2.0)
  want = _ref_loss(z, times, 2, kind, 4.0, 2.0)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  assert float(metrics["dist_pos"]) > 0


def test_triplet_is_zero_when_views_agree_and_time_separates():
  # Both views identical, frames spread on a line far apart: every hinge is inactive.
  t = np.arange(6)
  z = np.repeat((10.0 * t[:, None] * np.ones((1, 4)))[None, None], 2, axis=1)
  loss, _ = tcn.time_contrastive_loss(z.astype(np.float32), t[None], window=0, margin=1.0)
  assert float(loss) == 0.0
  # Collapsed embeddings: every term is exactly the margin.
  loss, _ = tcn.time_contrastive_loss(np.zeros_like(z, np.float32), t[None], window=0,
                                      margin=1.0)
  np.testing.assert_allclose(float(loss), 1.0)


def test_loss_rejects_bad_shapes_and_kind():
  with pytest.raises(ValueError, match=r"\(B, 2, K, E\)"):
    tcn.time_contrastive_loss(np.zeros((2, 3, 4, 5)), np.zeros((2, 4)), window=1)
  with pytest.raises(ValueError, match="kind"):
    tcn.time_contrastive_loss(np.zeros((2, 2, 4, 5)), np.zeros((2, 4)), window=1, kind="x")


def _ref_alignment_error(z1, z2):
  t = len(z1)
  err = 0.0
  for i in range(t):
    d = [float(np.sum((z1[i] - z2[j]) ** 2)) for j in range(t)]
    err += abs(int(np.argmin(d)) - i) / t
  return err / t


def test_alignment_error_matches_numpy_reference():
  rng = np.random.default_rng(1)
  z1 = rng.normal(size=(17, 8))
  z2 = z1[rng.permutation(17)] + 0.01 * rng.normal(size=(17, 8))
  np.testing.assert_allclose(tcn.alignment_error(z1, z2), _ref_alignment_error(z1, z2))
  z3 = rng.normal(size=(17, 8))
  np.testing.assert_allclose(tcn.alignment_error(z1, z3), _ref_alignment_error(z1, z3))
  assert tcn.alignment_error(z1, z1 + 1e-3) == 0.0   # perfectly aligned views
  v = np.stack([z1, z2, z3])
  want = np.mean([_ref_alignment_error(v[i], v[j]) for i, j in ((0, 1), (0, 2), (1, 2))])
  np.testing.assert_allclose(tcn.episode_alignment_error(v), want)


def test_alignment_error_of_reversed_video():
  # View B is view A played backwards: frame t matches T-1-t, error = mean |T-1-2t| / T.
  z = np.arange(10, dtype=np.float64)[:, None] * np.ones((1, 3))
  want = np.mean(np.abs(9 - 2 * np.arange(10)) / 10)
  np.testing.assert_allclose(tcn.alignment_error(z, z[::-1]), want)
  with pytest.raises(ValueError, match="synchronised"):
    tcn.alignment_error(z, z[:5])
