"""What each way of combining two streams can reach on a class set, from its factor table.

A factor table is `joint[p, v, c]`, the probability of (pose factor p, video factor v, class
c): p is what the keypoints depend on, v what the frames depend on (`data_prep.synthetic.
factor_table` derives it from a synthetic class set). Four figures follow from it:

  chance(joint)               max_c P(c): the best constant answer
  stream_accuracy(joint, s)   sum_x max_c P(x, c) over the factor x of stream s (0 pose,
                              1 video): the best any single-stream model can do
  bayes_accuracy(joint)       sum_{p,v} max_c P(p, v, c): both factors, any fusion
  additive_accuracy(joint)    the best classifier argmax_c f_c(p) + g_c(v): late fusion

Why "additive" is late fusion's ceiling: late fusion (PGVT Table 4 row 3) puts a linear head on
[pose feature; video feature], so its logits are W_p phi(X_p) + W_v psi(X_v) + b, where X_p
(keypoints) is a function of (p, N) and X_v (frames) of (v, N), N being the clip's nuisance
(position, timing, background...), drawn independently of (p, v, c). Given N the logits are
f_c(p) + g_c(v) for some f, g, so the accuracy given N is at most additive_accuracy(joint), and
so is its expectation over clips (a finite test set scatters around it binomially). This needs
the frames not to depend on p and the keypoints not on v: `data_prep.synthetic`'s
"interaction" set is built that way and its tests check it pixel for pixel.
"""

from __future__ import annotations

import numpy as np


def _check(joint: np.ndarray) -> np.ndarray:
  joint = np.asarray(joint, np.float64)
  if joint.ndim != 3 or (joint < 0).any() or not np.isclose(joint.sum(), 1.0):
    raise ValueError(f"joint must be a (P, V, C) probability table, got shape {joint.shape} "
                     f"and sum {joint.sum():.6g}")
  return joint


def chance(joint: np.ndarray) -> float:
  return float(_check(joint).sum((0, 1)).max())


def stream_accuracy(joint: np.ndarray, stream: int) -> float:
  """Best accuracy from one factor alone (stream 0: pose, 1: video)."""
  marginal = _check(joint).sum(1 - stream)          # (X, C)
  return float(marginal.max(-1).sum())


def bayes_accuracy(joint: np.ndarray) -> float:
  return float(_check(joint).max(-1).sum())


def _realisable(cells: list[tuple[int, int, int]], shape: tuple[int, int, int]):
  """Logits (f (P, C), g (V, C)) with f[p, k] + g[v, k] >= f[p, c] + g[v, c] + 1 for every
  (p, v, k) in `cells` and c != k, or None if there are none (a linear feasibility problem)."""
  from scipy import optimize  # a dependency of jax; only this function needs it
  num_p, num_v, num_c = shape
  n = (num_p + num_v) * num_c
  f_at = lambda p, c: p * num_c + c
  g_at = lambda v, c: num_p * num_c + v * num_c + c
  rows = []
  for p, v, k in cells:
    for c in range(num_c):
      if c != k:  # -(f[p,k] - f[p,c] + g[v,k] - g[v,c]) <= -1
        row = np.zeros(n)
        row[f_at(p, k)] -= 1
        row[f_at(p, c)] += 1
        row[g_at(v, k)] -= 1
        row[g_at(v, c)] += 1
        rows.append(row)
  if not rows:
    return np.zeros((num_p, num_c)), np.zeros((num_v, num_c))
  res = optimize.linprog(np.zeros(n), A_ub=np.array(rows), b_ub=-np.ones(len(rows)),
                         bounds=[(None, None)] * n, method="highs")
  if res.status == 2:  # infeasible
    return None
  if res.status != 0:
    raise RuntimeError(f"linprog failed: {res.message}")
  x = res.x
  return x[:num_p * num_c].reshape(num_p, num_c), x[num_p * num_c:].reshape(num_v, num_c)


def additive_accuracy(joint: np.ndarray, max_cells: int = 64
                      ) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
  """Exact best accuracy of a classifier argmax_c f_c(p) + g_c(v), and its logits (f, g).

  Method (exact, not a relaxation): a classifier is an assignment h of a class to every cell
  (p, v); it is additive iff some f, g make h(p, v) the strict argmax of f_c(p) + g_c(v) in
  every cell (ties broken by any fixed class order are the same set: subtract eps * c from g
  for eps small enough). The strict inequalities are homogeneous in (f, g), so they hold iff
  the same inequalities with margin 1 are feasible: a linear program (`_realisable`). The
  accuracy of h is sum joint[p, v, h(p, v)]. A cell given a class of zero mass there adds
  nothing and only constrains, so the search gives each cell a class of positive mass or
  leaves it free: every additive h has such a partial assignment of equal value, and every
  feasible partial assignment extends (by its logits' argmax) to an additive h at least as
  good. Depth-first search over cells, with two exact cuts: an infeasible prefix stays
  infeasible when extended (more constraints), and a prefix that cannot beat the best found
  even if every remaining cell got its largest mass is dropped.
  """
  joint = _check(joint)
  num_p, num_v, num_c = joint.shape
  cells = [(p, v) for p in range(num_p) for v in range(num_v) if joint[p, v].sum() > 0]
  if len(cells) > max_cells:
    raise ValueError(f"{len(cells)} cells with mass: the exact search is exponential in that, "
                     f"max_cells={max_cells}")
  cells.sort(key=lambda pv: -joint[pv].max())      # heavy cells first: good answers early
  rest = np.cumsum([joint[pv].max() for pv in cells][::-1])[::-1].tolist() + [0.0]
  best = {"value": -1.0, "cells": []}

  def search(i: int, chosen: list, value: float):
    if value + rest[i] <= best["value"] + 1e-12:
      return
    if i == len(cells):
      best.update(value=value, cells=list(chosen))
      return
    p, v = cells[i]
    for k in np.argsort(-joint[p, v], kind="stable"):
      if joint[p, v, k] <= 0:
        break
      trial = chosen + [(p, v, int(k))]
      if _realisable(trial, joint.shape) is not None:
        search(i + 1, trial, value + joint[p, v, k])
    search(i + 1, chosen, value)                   # the cell left free

  search(0, [], 0.0)
  f, g = _realisable(best["cells"], joint.shape)
  pred = np.argmax(f[:, None] + g[None], -1)       # (P, V); margin 1, so no ties on chosen cells
  value = float(np.take_along_axis(joint, pred[..., None], -1).sum())
  if value < best["value"] - 1e-9:                 # the logits must achieve what was found
    raise AssertionError(f"witness reaches {value}, search found {best['value']}")
  return value, (f, g)


def summary(joint: np.ndarray) -> dict[str, float]:
  """chance, pose_only, video_only, additive (late fusion's ceiling), bayes."""
  return dict(chance=chance(joint), pose_only=stream_accuracy(joint, 0),
              video_only=stream_accuracy(joint, 1), additive=additive_accuracy(joint)[0],
              bayes=bayes_accuracy(joint))
