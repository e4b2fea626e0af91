"""PAAB/PAAT input recipe: fixed-rate frame sampling and the person-centred crop."""

from fractions import Fraction

import numpy as np
import pytest
from data_prep import skeletons

from pgvt_jax import data
from pgvt_jax.data import augment, sampling

RED = (255, 0, 0)
GREEN = (0, 255, 0)


def _slowfast_reference(n, t, span, start):
  """TimeSformer's temporal_sampling: linspace(start, start + span - 1, t), clamped to the
  video, then truncated to int (written from decoder.py), in exact rational arithmetic."""
  start, span = Fraction(start), Fraction(span)
  out = []
  for i in range(t):
    pos = start + (span - 1) * i / (t - 1) if t > 1 else start
    out.append(int(min(max(pos, 0), n - 1)))
  return np.array(out)


@pytest.mark.parametrize("n,t,span", [(300, 8, 256.0), (100, 16, 64.0), (40, 8, 170.7),
                                      (1, 4, 8.0), (64, 16, 64.0)])
def test_fixed_rate_matches_reference(n, t, span):
  rng = np.random.default_rng(n)
  delta = max(n - span, 0)
  for clip in range(10):  # test clip c of 10 starts at delta * c / 10
    v, p = sampling.sample_fixed_rate(n, t, 2 * t, span, clip=clip, num_clips=10)
    np.testing.assert_array_equal(v, _slowfast_reference(n, t, span, Fraction(delta) * clip / 10))
    np.testing.assert_array_equal(p, _slowfast_reference(n, 2 * t, span, Fraction(delta) * clip / 10))
  for _ in range(5):  # training: the start is one draw of uniform(0, delta)
    seed = int(rng.integers(1 << 30))
    v, _ = sampling.sample_fixed_rate(n, t, t, span, rng=np.random.default_rng(seed))
    want = _slowfast_reference(n, t, span, np.random.default_rng(seed).uniform(0, delta))
    np.testing.assert_array_equal(v, want)


def test_fixed_rate_stride_and_short_videos():
  v, _ = sampling.sample_fixed_rate(1000, 8, 8, 8 * 32, clip=0, num_clips=1)
  assert v[0] == 0 and v[-1] == 255  # the window's first and last frames
  assert set(np.diff(v)) <= {36, 37}  # 255 / 7 apart: ~rate
  v, _ = sampling.sample_fixed_rate(5, 8, 8, 32.0)  # shorter than the window
  assert v.min() >= 0 and v.max() == 4 and np.all(np.diff(v) >= 0)
  with pytest.raises(ValueError, match="window"):
    sampling.sample_fixed_rate(5, 8, 8, 0.0)


def test_processor_fixed_rate_uses_record_fps():
  cfg = data.get_config()
  cfg.update(dict(num_frames=4, pose_frames=4, image_size=16, sampling="fixed_rate",
                  sampling_rate=8, target_fps=30.0, eval_clips=1, eval_crops=1))
  proc = data.ClipProcessor(cfg, skeletons.COCO17)
  t = 200
  frames = np.zeros((t, 20, 20, 3), np.uint8)
  frames[:, 0, 0, 0] = np.arange(t)  # the frame index, readable after decoding
  rec = {"video_id": "v", "label": 0, "frames": frames,
         "keypoints": np.zeros((t, 1, 17, 2), np.float32),
         "keypoint_score": np.zeros((t, 1, 17), np.float32)}
  for fps, span in ((30.0, 32.0), (15.0, 16.0)):
    vidx, _ = proc._sample({**rec, "fps": np.float32(fps)}, t, clip=0)
    want = _slowfast_reference(t, 4, span, (t - span) * 0 / 1)
    np.testing.assert_array_equal(vidx, want)
  vidx, _ = proc._sample(rec, t, clip=0)  # no fps stored: target_fps
  np.testing.assert_array_equal(vidx, _slowfast_reference(t, 4, 32.0, 0.0))


def test_person_box_contains_the_person_and_is_square():
  rng = np.random.default_rng(0)
  kp = rng.uniform([30, 20], [50, 60], size=(5, 1, 13, 2)).astype(np.float32)
  score = np.ones((5, 1, 13), np.float32)
  score[0, 0, 0] = 0  # a hidden joint far away does not count
  kp[0, 0, 0] = (1, 1)
  x0, y0, w, h = augment.person_box(kp, score, 100, 160, 0.1, margin=0.1)
  assert w == h
  pts = kp[score > 0.1]
  assert x0 <= pts[:, 0].min() and pts[:, 0].max() <= x0 + w
  assert y0 <= pts[:, 1].min() and pts[:, 1].max() <= y0 + h
  lo, hi = pts.min(0), pts.max(0)
  np.testing.assert_allclose(w, (hi - lo).max() * 1.2, rtol=1e-5)
  np.testing.assert_allclose([x0 + w / 2, y0 + h / 2], (lo + hi) / 2, rtol=1e-5)
  # At the border the square shifts inside the frame; without joints: the centred square.
  kp2 = np.array([[[[150.0, 90.0], [158.0, 98.0]]]], np.float32)
  x0, y0, w, h = augment.person_box(kp2, np.ones((1, 1, 2)), 100, 160, 0.1, 0.5)
  assert x0 + w <= 160 and y0 + h <= 100 and x0 <= 150 and y0 <= 90
  assert augment.person_box(kp2, np.zeros((1, 1, 2)), 100, 160, 0.1, 0.5) == (30, 0, 100, 100)


def test_person_crop_views_show_only_the_person_and_keypoints_follow():
  """Green background, grey person area with red dots at the (left wrist) keypoints: with
  person_crop the crops never reach the green, and every keypoint lands on its dot."""
  t, h, w = 6, 96, 128
  frames = np.zeros((t, h, w, 3), np.uint8)
  frames[:] = GREEN
  frames[:, 30:70, 60:100] = 128
  kp = np.zeros((t, 1, 17, 2), np.float32)
  score = np.zeros((t, 1, 17), np.float32)
  rng = np.random.default_rng(1)
  lw = skeletons.COCO17.index("left_wrist")
  for i in range(t):
    x, y = rng.integers(66, 94), rng.integers(36, 64)
    frames[i, y - 2:y + 3, x - 2:x + 3] = RED
    kp[i, 0, lw] = (x + 0.5, y + 0.5)
    score[i, 0, lw] = 1.0
  for j, (x, y) in ((skeletons.COCO17.index("nose"), (60, 30)),
                    (skeletons.COCO17.index("left_ankle"), (100, 70))):
    kp[:, 0, j], score[:, 0, j] = (x, y), 1.0  # the person's extent
  rec = {"video_id": "p", "label": 0, "frames": frames, "keypoints": kp,
         "keypoint_score": score}
  cfg = data.get_config()
  cfg.update(dict(num_frames=6, pose_frames=6, image_size=32, short_side=36, max_persons=1,
                  person_crop=True, person_crop_margin=0.0, crop_area=(0.5, 0.8),
                  crop_aspect=(1.0, 1.0), eval_clips=1, eval_crops=1))
  proc = data.ClipProcessor(cfg, skeletons.COCO17)
  rgb = lambda ex: ex["frames"].astype(np.float32)  # uint8 pixels
  exs = [proc.view(rec, 0, 0)] + [proc.train(rec, 0, np.random.default_rng(s))
                                  for s in range(8)]
  for ex in exs:
    img = rgb(ex)
    green = np.all(np.abs(img - GREEN) < 60, axis=-1)
    assert green.mean() < 0.02  # resampling may blur one edge row in
    for i in range(t):
      if ex["pose_mask"][i, lw]:
        col, row = (ex["pose"][i, lw] * 32).astype(int)
        if ex["pose"][i, lw].max() < 1:
          np.testing.assert_allclose(img[i, row, col], RED, atol=60)
  # Without the person crop the same eval view shows mostly green.
  cfg.person_crop = False
  plain = rgb(data.ClipProcessor(cfg, skeletons.COCO17).view(rec, 0, 0))
  assert np.all(np.abs(plain - GREEN) < 60, axis=-1).mean() > 0.3
