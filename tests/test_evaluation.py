"""Multi-view eval metrics against direct NumPy computations."""

import os

import numpy as np
import pytest

from pgvt_jax import evaluation


def _rows(rng, num_videos, num_views, num_classes, pad):
  """Video-major rows (as the eval pipeline emits them) plus `pad` padding rows."""
  probs = rng.dirichlet(np.ones(num_classes), size=num_videos * num_views)
  labels = rng.integers(0, num_classes, num_videos)
  vid = np.repeat(np.arange(num_videos), num_views)
  valid = np.ones(len(vid), bool)
  probs = np.concatenate([probs, rng.dirichlet(np.ones(num_classes), size=pad)])
  return (probs, np.concatenate([labels[vid], -np.ones(pad, int)]),
          np.concatenate([vid, -np.ones(pad, int)]), np.concatenate([valid, np.zeros(pad, bool)]),
          labels)


def test_views_are_averaged_and_padding_ignored():
  rng = np.random.default_rng(0)
  nv, views, nc = 23, 3, 7
  probs, lab, vid, valid, labels = _rows(rng, nv, views, nc, pad=5)
  acc = evaluation.ViewAccumulator(nv, nc)
  for i in range(0, len(probs), 8):  # batches of 8, like the eval loop
    acc.add(probs[i:i + 8], lab[i:i + 8], vid[i:i + 8], valid[i:i + 8])
  res = acc.result(expected_views=views)
  mean = probs[:nv * views].reshape(nv, views, nc).mean(1)
  pred = mean.argmax(1)
  assert res["top1"] == pytest.approx(np.mean(pred == labels))
  top5 = [labels[i] in np.argsort(-mean[i])[:5] for i in range(nv)]
  assert res["top5"] == pytest.approx(np.mean(top5))
  per_class = [np.mean(pred[labels == c] == c) for c in range(nc) if np.any(labels == c)]
  assert res["mean_class_accuracy"] == pytest.approx(np.mean(per_class))
  cm = res["confusion_matrix"]
  assert cm.sum() == nv and np.trace(cm) == np.sum(pred == labels)
  assert cm[labels[0], pred[0]] >= 1


def test_missing_views_and_label_conflicts_are_errors():
  acc = evaluation.ViewAccumulator(2, 3)
  acc.add(np.eye(3)[:1], np.array([0]), np.array([0]), np.array([True]))
  with pytest.raises(ValueError, match="received no view"):
    acc.result()
  acc.add(np.eye(3)[:1], np.array([1]), np.array([1]), np.array([True]))
  with pytest.raises(ValueError, match="expected 3"):
    acc.result(expected_views=3)
  with pytest.raises(ValueError, match="different labels"):
    acc.add(np.eye(3)[:1], np.array([2]), np.array([1]), np.array([True]))


def test_confusion_png_written(tmp_path):
  cm = np.array([[3, 1], [0, 4]])
  files = evaluation.save_confusion(cm, tmp_path / "eval_confusion", ["a", "b"])
  assert [f.suffix for f in files] == [".npy", ".png"]
  np.testing.assert_array_equal(np.load(files[0]), cm)
  assert os.path.getsize(files[1]) > 1000  # an epath.Path: its stat() has no st_size


def test_max_combine_against_numpy():
  from pgvt_jax import evaluation as ev  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  videos, views, classes = 5, 4, 6
  probs = rng.dirichlet(np.ones(classes), size=(videos, views))
  labels = rng.integers(0, classes, videos)
  acc = ev.ViewAccumulator(videos, classes, combine="max")
  order = rng.permutation(videos * views)  # rows in any order, plus padding rows
  vid, view = np.divmod(order, views)
  acc.add(np.concatenate([probs[vid, view], np.ones((2, classes))]),
          np.concatenate([labels[vid], [0, 0]]), np.concatenate([vid, [0, 0]]),
          np.concatenate([np.ones(len(order), bool), [False, False]]))
  got = acc.result(expected_views=views)
  want = ev.classification_metrics(probs.max(axis=1), labels)
  assert got["top1"] == want["top1"]
  np.testing.assert_array_equal(got["confusion_matrix"], want["confusion_matrix"])
  # "max" and "mean" choose differently on a crafted video: one confident view vs. consensus.
  p = np.array([[[0.9, 0.1, 0.0], [0.0, 0.55, 0.45], [0.0, 0.55, 0.45]]])
  for combine, pred in (("max", 0), ("mean", 1)):
    a = ev.ViewAccumulator(1, 3, combine=combine)
    a.add(p[0], np.zeros(3, int), np.zeros(3, int), np.ones(3, bool))
    assert a.result()["top1"] == float(pred == 0)
  with pytest.raises(ValueError, match="eval_combine='median'"):
    ev.ViewAccumulator(1, 3, combine="median")
