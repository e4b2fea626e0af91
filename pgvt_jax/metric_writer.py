"""Metrics a person can read: JSON lines, TensorBoard event files, a training-curve PNG.

Only process 0 writes; other processes get a writer that does nothing. Each metrics.jsonl row is
appended with one O_APPEND write; a row torn by a crash mid-write is dropped when the next run
opens the workdir (`repair`), readers skip unparsable rows, and a resumed run drops the rows of
the steps it is about to redo (`drop_after`), so every step appears once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping

import jax
import numpy as np
from absl import logging

from pgvt_jax import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """`write(step, {"train/loss": 0.3, ...})` -> workdir/metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str | Path, enabled: bool | None = None):
    self.workdir = Path(workdir)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    if self.enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      repair(self.workdir)
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
      except ImportError:  # TensorBoard files are a convenience; JSONL is the record.
        self._tb = None

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    workdir_lib.append_line(self.workdir / METRICS_FILE, json.dumps(
        {"step": int(step), **{k: _json_float(v) for k, v in scalars.items()}}))
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))

  def write_json(self, name: str, obj) -> None:
    if self.enabled:  # written aside and renamed: never a half file
      tmp = self.workdir / f".{name}.tmp"
      tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
      os.replace(tmp, self.workdir / name)

  def drop_after(self, step: int) -> int:
    """Drops rows of steps > `step` (a resumed run redoes them); returns how many."""
    return drop_after(self.workdir, step) if self.enabled else 0

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _json_float(v: float):
  return v if math.isfinite(v) else str(v)


def _parse(lines: list[str], path: Path) -> list[dict]:
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      logging.warning("%s:%d is not a JSON row (torn by a crash?); skipped", path, i + 1)
      continue
    if isinstance(row, dict) and isinstance(row.get("step"), int):
      rows.append(row)
  return rows


def read_metrics(workdir: str | Path) -> list[dict]:
  """The rows of metrics.jsonl; unparsable (torn) rows are skipped with a warning."""
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return _parse(path.read_text(errors="replace").splitlines(), path)


def _rewrite(path: Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def repair(workdir: str | Path) -> bool:
  """Cuts a torn last row (no final newline) off metrics.jsonl; returns whether it did."""
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return False
  data = path.read_bytes()
  if not data or data.endswith(b"\n"):
    return False
  keep = data[:data.rfind(b"\n") + 1]
  logging.warning("%s ends with a torn row (a crash mid-write): dropping %r", path,
                  data[len(keep):][:200])
  _rewrite(path, keep.decode(errors="replace"))
  return True


def drop_after(workdir: str | Path, step: int) -> int:
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return 0
  lines = path.read_text(errors="replace").splitlines()
  keep = [l for l in lines if not _after(l, step)]
  if len(keep) != len(lines):
    _rewrite(path, "".join(l + "\n" for l in keep))
  return len(lines) - len(keep)


def _after(line: str, step: int) -> bool:
  try:
    return int(json.loads(line)["step"]) > step
  except (ValueError, KeyError, TypeError):
    return False


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
