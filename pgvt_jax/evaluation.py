"""Multi-view evaluation metrics: per-video score combination, top-k, mean class accuracy.

Eval batches carry one row per (video, view) plus padding rows (`valid == False`); the scores
of a video's views are combined before any metric is computed: averaged ("mean": softmax
probabilities, as mmaction2's `average_clips="prob"` and AIM do) or their element-wise maximum
("max": TimeSformer's `ENSEMBLE_METHOD: max`, the PAAB/PAAT recipe).
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np

from pgvt_jax import paths


COMBINE = ("mean", "max")


@dataclasses.dataclass
class ViewAccumulator:
  """Combines per-view class probabilities by video ("mean" or "max"). Feed it host numpy
  arrays."""
  num_videos: int
  num_classes: int
  combine: str = "mean"

  def __post_init__(self):
    if self.combine not in COMBINE:
      raise ValueError(f"eval_combine={self.combine!r}; expected one of {COMBINE}")
    fill = -np.inf if self.combine == "max" else 0.0
    self.scores = np.full((self.num_videos, self.num_classes), fill, np.float64)
    self.views = np.zeros((self.num_videos,), np.int64)
    self.labels = np.full((self.num_videos,), -1, np.int64)

  def add(self, probs: np.ndarray, label: np.ndarray, video_index: np.ndarray,
          valid: np.ndarray) -> None:
    """probs `(B, C)`, label/video_index/valid `(B,)`; rows with valid=False are ignored."""
    keep = np.asarray(valid, bool)
    vid, lab = np.asarray(video_index)[keep], np.asarray(label)[keep]
    reduce = np.maximum if self.combine == "max" else np.add
    reduce.at(self.scores, vid, np.asarray(probs, np.float64)[keep])
    np.add.at(self.views, vid, 1)
    seen = self.labels[vid]
    if np.any((seen >= 0) & (seen != lab)):
      raise ValueError("eval views of one video carry different labels")
    self.labels[vid] = lab

  def result(self, expected_views: int | None = None) -> dict:
    missing = np.flatnonzero(self.views == 0)
    if missing.size:
      raise ValueError(f"{missing.size} eval videos received no view (e.g. {missing[:5]})")
    if expected_views is not None and np.any(self.views != expected_views):
      bad = np.flatnonzero(self.views != expected_views)
      raise ValueError(f"videos {bad[:5]} got {self.views[bad[:5]]} views, expected "
                       f"{expected_views}")
    scores = self.scores if self.combine == "max" else self.scores / self.views[:, None]
    return classification_metrics(scores, self.labels)


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """`(C, C)` counts, rows = true class, columns = predicted class."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, pred), 1)
  return cm


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
  """scores `(N, C)`, labels `(N,)` -> top1, top5, mean class accuracy, per class, confusion."""
  num_classes = scores.shape[1]
  order = np.argsort(-scores, axis=1, kind="stable")
  pred = order[:, 0]
  k = min(5, num_classes)
  top5 = np.any(order[:, :k] == labels[:, None], axis=1)
  cm = confusion_matrix(pred, labels, num_classes)
  support = cm.sum(axis=1)
  per_class = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
  return {
      "top1": float(np.mean(pred == labels)),
      "top5": float(np.mean(top5)),
      # Mean over classes present in the split (FineGym's "Mean" column).
      "mean_class_accuracy": float(np.nanmean(per_class)) if np.any(support) else float("nan"),
      "per_class_accuracy": per_class,
      "confusion_matrix": cm,
      "num_videos": int(len(labels)),
  }


def save_confusion(cm: np.ndarray, out_prefix: str | os.PathLike, class_names=None) -> list:
  """Writes `<prefix>.npy` and a row-normalised heat map `<prefix>.png`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  out_prefix = paths.as_path(out_prefix)  # may be a bucket: files written through epath
  out_prefix.parent.mkdir(parents=True, exist_ok=True)
  with out_prefix.with_suffix(".npy").open("wb") as f:
    np.save(f, cm)
  norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  n = cm.shape[0]
  size = min(4 + n * 0.12, 24)
  fig, ax = plt.subplots(figsize=(size, size))
  im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(f"confusion (row-normalised), top-1 {np.trace(cm) / max(cm.sum(), 1):.3f}")
  if class_names is not None and n <= 60:
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=6)
    ax.set_yticks(range(n), class_names, fontsize=6)
  fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  png = out_prefix.with_suffix(".png")
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  png.write_bytes(buf.getvalue())
  return [out_prefix.with_suffix(".npy"), png]
