"""Metrics a person can read: JSON lines, TensorBoard event files, a training-curve PNG.

Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """`write(step, {"train/loss": 0.3, ...})` -> workdir/metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str | Path, enabled: bool | None = None):
    self.workdir = Path(workdir)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    if self.enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
      except ImportError:  # TensorBoard files are a convenience; JSONL is the record.
        self._tb = None

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    with open(self.workdir / METRICS_FILE, "a") as f:
      f.write(json.dumps({"step": int(step), **{k: _json_float(v) for k, v in
                                                scalars.items()}}) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))

  def write_json(self, name: str, obj) -> None:
    if self.enabled:
      (self.workdir / name).write_text(json.dumps(obj, indent=2, default=str) + "\n")

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _json_float(v: float):
  return v if math.isfinite(v) else str(v)


def read_metrics(workdir: str | Path) -> list[dict]:
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(workdir: str | Path, out: str | Path | None = None) -> Path | None:
  """Training loss / learning rate and eval accuracy against step, from metrics.jsonl."""
  rows = read_metrics(workdir)
  if not rows:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  def series(key):
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return list(zip(*pts)) if pts else ([], [])

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, keys, title in ((axes[0], ("train/loss",), "training loss"),
                          (axes[1], ("train/lr",), "learning rate"),
                          (axes[2], ("eval/top1", "eval/top5", "eval/mean_class_accuracy"),
                           "eval accuracy")):
    for key in keys:
      xs, ys = series(key)
      if xs:
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=key)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend()
  fig.tight_layout()
  out = Path(out) if out else Path(workdir) / "training_curves.png"
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
