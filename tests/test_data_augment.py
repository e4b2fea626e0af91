"""Spatial transforms: keypoints follow the crop and flip of the frames."""

import numpy as np
import pytest
from data_prep import skeletons

from pgvt_jax import data
from pgvt_jax.data import augment

RED, BLUE = (255, 0, 0), (0, 0, 255)
LW, RW = skeletons.COCO17.index("left_wrist"), skeletons.COCO17.index(
    "right_wrist")


def _dot_record(t=6, h=48, w=64):
  """Grey frames with a red dot (left wrist) and a blue dot (right wrist)."""
  frames = np.full((t, h, w, 3), 128, np.uint8)
  kp = np.zeros((t, 1, 17, 2), np.float32)
  score = np.zeros((t, 1, 17), np.float32)
  rng = np.random.default_rng(0)
  for i in range(t):
    for joint, colour in ((LW, RED), (RW, BLUE)):
      x, y = rng.integers(6, w - 6), rng.integers(6, h - 6)
      frames[i, y - 3:y + 4, x - 3:x + 4] = colour
      kp[i, 0, joint] = (x + 0.5, y + 0.5)  # centre of pixel (x, y)
      score[i, 0, joint] = 1.0
  return {"video_id": "dots", "label": 1, "frames": frames, "keypoints": kp,
          "keypoint_score": score}


def _config(**kw):
  cfg = data.get_config()
  cfg.update(dict(num_frames=6, pose_frames=6, image_size=32, short_side=40,
                  crop_area=(0.3, 1.0), max_persons=1))
  cfg.update(kw)
  return cfg


def _pixel(frames, t, point, size):
  """RGB uint8 at the output pixel a normalised keypoint names."""
  col, row = (np.asarray(point) * size).astype(int)
  return frames[t][row, col].astype(np.float64)  # batches carry uint8 pixels


def test_keypoints_land_on_their_dots_through_crop_and_flip():
  proc = data.ClipProcessor(_config(), skeletons.COCO17)
  rec = _dot_record()
  seen_flip = seen_plain = 0
  for seed in range(30):
    ex = proc.train(rec, 0, np.random.default_rng(seed))
    for t in range(6):
      lw_ok, rw_ok = ex["pose_mask"][t, [LW, RW]]
      if not (lw_ok and rw_ok):
        continue
      lw = _pixel(ex["frames"], t, ex["pose"][t, LW], 32)
      rw = _pixel(ex["frames"], t, ex["pose"][t, RW], 32)
      # After a flip the joint labelled left wrist is the mirrored right
      # wrist (blue dot): labels swap with the image.
      flipped = np.allclose(lw, BLUE, atol=40)
      if flipped:
        np.testing.assert_allclose(rw, RED, atol=40)
        seen_flip += 1
      else:
        np.testing.assert_allclose(lw, RED, atol=40)
        np.testing.assert_allclose(rw, BLUE, atol=40)
        seen_plain += 1
  assert seen_flip > 10 and seen_plain > 10


@pytest.mark.parametrize("crops", [1, 3])
def test_eval_views_keypoints_on_dots(crops):
  cfg = _config(eval_crops=crops, eval_clips=2, short_side=32)
  proc = data.ClipProcessor(cfg, skeletons.COCO17)
  rec = _dot_record()
  checked = 0
  for view in range(proc.num_views):
    ex = proc.view(rec, 3, view)
    assert ex["view_index"] == view and ex["video_index"] == 3
    for t in range(6):
      if ex["pose_mask"][t, LW]:
        np.testing.assert_allclose(
            _pixel(ex["frames"], t, ex["pose"][t, LW], 32), RED, atol=40)
        checked += 1
  assert checked > 0


def test_short_side_zero_means_image_size():
  rec = _dot_record()
  a = data.ClipProcessor(_config(short_side=0), skeletons.COCO17).view(rec, 0, 1)
  b = data.ClipProcessor(_config(short_side=32), skeletons.COCO17).view(rec, 0, 1)
  c = data.ClipProcessor(_config(short_side=64), skeletons.COCO17).view(rec, 0, 1)
  np.testing.assert_array_equal(a["frames"], b["frames"])
  assert not np.array_equal(a["frames"], c["frames"])  # a tighter crop


def test_transform_keypoints_reference():
  kp = np.array([[[[10., 20.], [70., 5.], [30., 30.]]]], np.float32)  # T,M,V
  score = np.array([[[0.9, 0.9, 0.05]]], np.float32)
  box = (5.0, 10.0, 40.0, 20.0)
  pose, mask = augment.transform_keypoints(
      kp, score, np.array([0, -1]), box, False, np.arange(3), 0.1)
  assert pose.shape == (1, 6, 2) and mask.shape == (1, 6)
  # Joint 0: ((10 - 5) / 40, (20 - 10) / 20); joint 1 out of crop;
  # joint 2 low score; person 1 absent.
  np.testing.assert_allclose(pose[0, 0], [5 / 40, 10 / 20])
  np.testing.assert_array_equal(mask[0], [1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(pose[0, 1:], 0)
  # Flip: x -> 1 - x and joints 0 <-> 2 swap labels.
  pose_f, mask_f = augment.transform_keypoints(
      kp, score, np.array([0]), box, True, np.array([2, 1, 0]), 0.1)
  np.testing.assert_allclose(pose_f[0, 2], [1 - 5 / 40, 10 / 20])
  np.testing.assert_array_equal(mask_f[0], [0, 0, 1])


def test_persons_chosen_by_mean_score_person_major():
  score = np.zeros((4, 3, 17), np.float32)
  score[:, 0], score[:, 1], score[:, 2] = 0.3, 0.2, 0.9
  np.testing.assert_array_equal(augment.select_persons(score, 2), [2, 0])
  np.testing.assert_array_equal(augment.select_persons(score[:, :0], 2),
                                [-1, -1])
  kp = np.zeros((4, 3, 17, 2), np.float32)
  kp[:, 2] = 7.0  # the best person
  pose, mask = augment.transform_keypoints(
      kp, score, np.array([2, 0]), (0., 0., 16., 16.), False,
      np.arange(17), 0.1)
  np.testing.assert_allclose(pose[:, :17], 7 / 16)  # person 2 first
  np.testing.assert_array_equal(mask[:, :17], 1)


def test_random_resized_crop_box_within_frame_and_area():
  rng = np.random.default_rng(0)
  for _ in range(200):
    x0, y0, w, h = augment.random_resized_crop_box(
        rng, 256, 340, (0.08, 1.0), (3 / 4, 4 / 3))
    assert x0 >= 0 and y0 >= 0 and x0 + w <= 340 + 1e-6 and y0 + h <= 256 + 1e-6
    assert 0.08 * 256 * 340 * 0.999 <= w * h <= 256 * 340 * 1.001
    assert 3 / 4 - 1e-6 <= w / h <= 4 / 3 + 1e-6 or (w, h) == (340, 256)


def test_eval_three_crops_cover_long_side():
  boxes = augment.eval_crop_boxes(256, 340, 224, 224, 3)
  side = 224 * 256 / 224
  np.testing.assert_allclose([b[0] for b in boxes],
                             [0, (340 - side) / 2, 340 - side])
  assert all(b[2] == b[3] == side for b in boxes)
  tall = augment.eval_crop_boxes(300, 200, 100, 50, 1)[0]
  np.testing.assert_allclose(tall, (50, 100, 100, 100))


def test_heatmap_peak_at_keypoint():
  pose = np.array([[[0.33, 0.72], [0.91, 0.12], [0.5, 0.5]]], np.float32)
  mask = np.array([[1, 1, 0]], np.float32)
  hm = augment.gaussian_heatmaps(pose, mask, 20, 1.0)
  assert hm.shape == (1, 20, 20, 3) and hm.dtype == np.float32
  for j in range(2):
    row, col = np.unravel_index(hm[0, :, :, j].argmax(), (20, 20))
    assert (col, row) == tuple((pose[0, j] * 20).astype(int))
    assert 0.5 < hm[0, row, col, j] <= 1.0
  assert hm[..., 2].max() == 0  # masked joint: empty map
  # Reference: direct 2-D Gaussian.
  yy, xx = np.mgrid[0:20, 0:20]
  cx, cy = pose[0, 0] * 20 - 0.5
  ref = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 2.0)
  np.testing.assert_allclose(hm[0, :, :, 0], ref, atol=1e-6)


def test_normalize_matches_clip_preprocessing():
  from pgvt_jax.models import clip_vit
  x = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  ref = (x / 255.0 - np.array(clip_vit.CLIP_MEAN)) / np.array(clip_vit.CLIP_STD)
  np.testing.assert_allclose(augment.normalize_frames(x), ref, atol=1e-5)
