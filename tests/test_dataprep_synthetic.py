"""The synthetic demo dataset: classes in motion only, exact keypoints, build."""

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import records
from data_prep import synthetic
from data_prep.datasets import synthetic as synthetic_records

tfds.disable_progress_bar()
_LIMB = {"left_arm": (5, 7), "right_arm": (6, 8), "left_leg": (11, 13),
         "right_leg": (12, 14)}


def _turns(pts, limb):
  """Signed turns of a limb's upper segment, angle from straight down towards
  +x (independent reference: arctan2 + unwrap)."""
  root, mid = _LIMB[limb]
  d = pts[:, mid] - pts[:, root]
  a = np.unwrap(np.arctan2(d[:, 0], d[:, 1]))
  return (a[-1] - a[0]) / (2 * np.pi)


def test_class_order_and_count():
  defs = synthetic.class_definitions(192)
  assert len(set(defs)) == 192
  first8 = defs[:8]
  assert {r.limb for d in first8 for r in d} == {"left_arm", "right_arm"}
  assert {r.count for d in first8 for r in d} == {1}
  assert len(set(synthetic.class_names(8))) == 8
  with pytest.raises(ValueError):
    synthetic.class_definitions(193)


@pytest.mark.parametrize("label", [0, 3, 6, 13, 40])
def test_motion_rotates_the_named_limbs(label):
  r1, r2 = synthetic.class_definitions(64)[label]
  pts = synthetic.motion((r1, r2), 64, 128, np.random.default_rng(label),
                         pose_noise_px=0.0)
  for rot in (r1, r2):
    assert _turns(pts, rot.limb) == pytest.approx(rot.direction * rot.count,
                                                  abs=0.02)
  for limb in set(_LIMB) - {r1.limb, r2.limb}:
    assert abs(_turns(pts, limb)) < 0.02
  # Order: the first limb finishes turning before the second starts.
  def progress(limb):
    root, mid = _LIMB[limb]
    d = pts[:, mid] - pts[:, root]
    a = np.unwrap(np.arctan2(d[:, 0], d[:, 1]))
    return np.abs(a - a[0])
  moving1 = np.nonzero(progress(r1.limb) > 0.05)[0]
  moving2 = np.nonzero(progress(r2.limb) > 0.05)[0]
  assert moving1[0] < moving2[0]


def _limb_angles(pts):
  out = []
  for limb in ("left_arm", "right_arm", "left_leg", "right_leg"):
    root, mid = _LIMB[limb]
    d = pts[:, mid] - pts[:, root]
    a = np.unwrap(np.arctan2(d[:, 0], d[:, 1]))
    out.append(a - a[0])
  return np.stack(out, -1)


def test_learnable_from_motion_not_from_one_frame():
  """1-NN on limb-angle trajectories separates the 8 classes; 1-NN on the
  (normalised) joints of a single random frame is near chance (1/8)."""
  defs = synthetic.class_definitions(8)
  seq, frame, y = [], [], []
  for c in range(8):
    for i in range(24):
      pts = synthetic.motion(defs[c], 32, 128, np.random.default_rng([c, i]))
      seq.append(_limb_angles(pts)[::4].ravel())
      t = np.random.default_rng([c, i, 1]).integers(32)
      centre = (pts[t, 11] + pts[t, 12]) / 2
      frame.append(((pts[t] - centre) / np.ptp(pts[t, :, 1])).ravel())
      y.append(c)
  seq, frame, y = np.array(seq), np.array(frame), np.array(y)
  train = np.arange(len(y)) % 3 != 0

  def nn_accuracy(x):
    d = ((x[~train][:, None] - x[train][None]) ** 2).sum(-1)
    return (y[train][d.argmin(1)] == y[~train]).mean()

  assert nn_accuracy(seq) > 0.9
  assert nn_accuracy(frame) < 0.35


def test_keypoints_are_on_the_drawn_figure_and_deterministic():
  label_def = synthetic.class_definitions(8)[5]
  video, kps = synthetic.render_clip(label_def, (0, 0, 7), num_frames=16,
                                     size=96)
  assert video.frames.shape == (16, 96, 96, 3) and kps.shape == (16, 17, 2)
  xy = np.floor(kps).astype(int)
  inside = ((xy >= 0) & (xy < 96)).all(-1)
  assert inside.mean() > 0.95
  t, j = np.nonzero(inside)
  colors = video.frames[t, xy[t, j, 1], xy[t, j, 0]]
  # The two commonest colours under the keypoints: the figure's fill and
  # outline; the noisy background gradient almost never repeats exactly.
  figure = {c for c, _ in collections.Counter(map(tuple, colors)).most_common(2)}
  assert np.mean([tuple(c) in figure for c in colors]) > 0.95
  again, kps2 = synthetic.render_clip(label_def, (0, 0, 7), 16, 96)
  np.testing.assert_array_equal(again.frames, video.frames)
  np.testing.assert_array_equal(kps2, kps)
  other, _ = synthetic.render_clip(label_def, (0, 0, 8), 16, 96)
  assert not np.array_equal(other.frames, video.frames)


def test_build_through_the_tfds_builder(tmp_path):
  path = synthetic_records.build(str(tmp_path), num_train=16, num_test=8,
                         num_classes=4, seed=3, num_frames=8, image_size=64)
  b = tfds.builder_from_directory(path)
  assert b.info.metadata["joint_layout"] == "coco17"
  assert b.info.metadata["horizontal_flip_safe"] is False
  assert b.info.features["label"].names == synthetic.class_names(4)
  train = b.as_data_source("train")
  assert len(train) == 16 and len(b.as_data_source("test")) == 8
  labels = collections.Counter(int(train[i]["label"]) for i in range(16))
  assert labels == {0: 4, 1: 4, 2: 4, 3: 4}
  ex = records.decode_example(train[0])
  assert ex["frames"].shape == (8, 64, 64, 3)
  assert ex["keypoints"].shape == (8, 1, 17, 2)
  assert (ex["keypoint_score"] == 1).all()
  # Same arguments: the same directory, reused.
  assert synthetic_records.build(str(tmp_path), num_train=16, num_test=8,
                         num_classes=4, seed=3, num_frames=8,
                         image_size=64) == path
