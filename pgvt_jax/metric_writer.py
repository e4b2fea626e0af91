"""Metrics a person can read: JSON lines, TensorBoard event files, a training-curve PNG.

Only process 0 writes; other processes get a writer that does nothing. Each metrics.jsonl row is
appended with one O_APPEND write; a row torn by a crash mid-write is dropped when the next run
opens the workdir (`repair`), readers skip unparsable rows, and a resumed run drops the rows of
the steps it is about to redo (`drop_after`), so every step appears once.

In a bucket (`gs://` workdir) an object cannot be appended to, so the writer keeps the file's
text in memory and uploads it whole (an object write is all-or-nothing) at most every
`upload_every_s` seconds and on `flush`/`close`: a crash loses at most the rows of the last
`upload_every_s` seconds, never tears one. TensorBoard files go to the bucket through
tensorboardX's own gs:// / s3:// writers (which need google-cloud-storage / boto3); where they
cannot, TensorBoard is skipped with a warning (metrics.jsonl is the record).
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from typing import Mapping

import jax
import numpy as np
from absl import logging

from pgvt_jax import paths
from pgvt_jax import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """`write(step, {"train/loss": 0.3, ...})` -> workdir/metrics.jsonl and TensorBoard."""

  upload_every_s = 10.0  # a bucket's metrics.jsonl is re-uploaded at most this often

  def __init__(self, workdir: str | os.PathLike, enabled: bool | None = None):
    self.workdir = paths.as_path(workdir)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._local = paths.is_local(self.workdir)
    self._text: str | None = None       # a bucket's metrics.jsonl, as uploaded + new rows
    self._dirty, self._uploaded_at = False, 0.0
    if self.enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      repair(self.workdir)
      if not self._local:
        path = self.workdir / METRICS_FILE
        self._text = path.read_bytes().decode(errors="replace") if path.exists() else ""
      self._tb = _tensorboard(self.workdir)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    row = json.dumps({"step": int(step), **{k: _json_float(v) for k, v in scalars.items()}})
    if self._local:
      workdir_lib.append_line(self.workdir / METRICS_FILE, row)
    else:
      self._text += row + "\n"
      self._dirty = True
      if time.monotonic() - self._uploaded_at >= self.upload_every_s:
        self._upload()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))

  def _upload(self) -> None:
    if self._dirty:
      (self.workdir / METRICS_FILE).write_text(self._text)
      self._dirty, self._uploaded_at = False, time.monotonic()

  def write_json(self, name: str, obj) -> None:
    if self.enabled:  # never a half file
      paths.write_atomic(self.workdir / name, json.dumps(obj, indent=2, default=str) + "\n")

  def drop_after(self, step: int) -> int:
    """Drops rows of steps > `step` (a resumed run redoes them); returns how many."""
    if not self.enabled:
      return 0
    if self._local:
      return drop_after(self.workdir, step)
    lines = self._text.splitlines()
    keep = [l for l in lines if not _after(l, step)]
    if len(keep) != len(lines):
      self._text, self._dirty = "".join(l + "\n" for l in keep), True
      self._upload()
    return len(lines) - len(keep)

  def flush(self) -> None:
    if self.enabled and not self._local:
      self._upload()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()


def _tensorboard(workdir):
  """A tensorboardX SummaryWriter on workdir/tensorboard, or None (with a warning) if none can
  be made there: TensorBoard files are a convenience, metrics.jsonl is the record."""
  logdir = os.fspath(workdir / "tensorboard")
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if not paths.is_local(workdir):
    scheme = logdir.split("://", 1)[0]
    # tensorboardX writes gs:// with google-cloud-storage and s3:// with boto3; any other
    # scheme it would treat as a local directory named e.g. "az:".
    client = {"gs": ("GCS_ENABLED", "google-cloud-storage"), "s3": ("S3_ENABLED", "boto3")}
    if scheme not in client or not getattr(record_writer, client[scheme][0], False):
      logging.warning("no TensorBoard files for %s: tensorboardX cannot write %s:// paths%s "
                      "(metrics.jsonl is still written)", workdir, scheme,
                      f" without {client[scheme][1]}" if scheme in client else "")
      return None
  try:
    return SummaryWriter(logdir)
  except Exception as e:  # pylint: disable=broad-except  # e.g. no google-cloud-storage
    logging.warning("no TensorBoard files in %s (%s: %s); metrics.jsonl is still written",
                    logdir, type(e).__name__, e)
    return None


def _json_float(v: float):
  return v if math.isfinite(v) else str(v)


def _parse(lines: list[str], path) -> list[dict]:
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


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """The rows of metrics.jsonl; unparsable (torn) rows are skipped with a warning."""
  path = paths.as_path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return _parse(path.read_bytes().decode(errors="replace").splitlines(), path)


def repair(workdir: str | os.PathLike) -> bool:
  """Cuts a torn last row (no final newline) off metrics.jsonl; returns whether it did."""
  path = paths.as_path(workdir) / METRICS_FILE
  if not path.exists():
    return False
  data = path.read_bytes()
  if not data or data.endswith(b"\n"):
    return False
  keep = data[:data.rfind(b"\n") + 1]
  logging.warning("%s ends with a torn row (a crash mid-write): dropping %r", path,
                  data[len(keep):][:200])
  paths.write_atomic(path, keep.decode(errors="replace"))
  return True


def drop_after(workdir: str | os.PathLike, step: int) -> int:
  path = paths.as_path(workdir) / METRICS_FILE
  if not path.exists():
    return 0
  lines = path.read_bytes().decode(errors="replace").splitlines()
  keep = [l for l in lines if not _after(l, step)]
  if len(keep) != len(lines):
    paths.write_atomic(path, "".join(l + "\n" for l in keep))
  return len(lines) - len(keep)


def _after(line: str, step: int) -> bool:
  try:
    return int(json.loads(line)["step"]) > step
  except (ValueError, KeyError, TypeError):
    return False


def plot_curves(workdir: str | os.PathLike, out: str | os.PathLike | None = None):
  """Training loss / learning rate and eval accuracy (or alignment error) against step, from
  metrics.jsonl."""
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
  accuracy = ("eval/top1", "eval/top5", "eval/mean_class_accuracy")
  evals = (accuracy, "eval accuracy") if any(k in r for r in rows for k in accuracy) else (
      ("eval/alignment_error",), "eval alignment error")  # the alignment task's
  for ax, keys, title in ((axes[0], ("train/loss",), "training loss"),
                          (axes[1], ("train/lr",), "learning rate"),
                          (axes[2], *evals)):
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
  out = paths.as_path(out) if out else paths.as_path(workdir) / "training_curves.png"
  png = io.BytesIO()  # matplotlib writes local files only; the bytes go through epath
  fig.savefig(png, format="png", dpi=100)
  plt.close(fig)
  out.write_bytes(png.getvalue())
  return out
