"""Pose maps (PAAB/PAAT paper Eq. 3-4) against a NumPy reference, and on the real pipeline's
cropped/flipped batches."""

import math

import jax
import numpy as np
import pytest
from data_prep import skeletons

from pgvt_jax import data
from pgvt_jax.models import pose_maps as pm


def reference_maps(kp, mask, size, patch, dilation=1, persons=1):
  """Eq. 3-4 by hand: keypoint set K, P_tkxy = 1 at its pixel, max-pooled per p x p patch."""
  *lead, t, j, _ = kp.shape
  kp, mask = kp.reshape(-1, t, j, 2), mask.reshape(-1, t, j)
  g, k = size // patch, j // persons
  p3d = np.zeros((kp.shape[0], t, g * g, k), np.float32)
  for b in range(kp.shape[0]):
    for ti in range(t):
      for ji in range(j):
        x, y = (float(v) for v in kp[b, ti, ji])
        if not mask[b, ti, ji] > 0 or not (math.isfinite(x) and math.isfinite(y)):
          continue
        if not (0 <= x < size and 0 <= y < size):
          continue
        px, py = int(math.floor(x)), int(math.floor(y))  # the pixel holding the keypoint
        p3d[b, ti, (py // patch) * g + px // patch, ji % k] = 1.0  # row-major patch index
  p2d = p3d.max(-1)
  if dilation > 1:
    r = dilation // 2
    grid = p2d.reshape(-1, g, g)
    out = np.zeros_like(grid)
    for i in range(g):
      for jj in range(g):
        out[:, i, jj] = grid[:, max(0, i - r):i + r + 1, max(0, jj - r):jj + r + 1].max((1, 2))
    p2d = out.reshape(p2d.shape)
  return p2d.reshape(*lead, t, g * g), p3d.reshape(*lead, t, g * g, k)


def _random_keypoints(rng, shape, size):
  kp = rng.uniform(-0.2 * size, 1.2 * size, shape + (2,)).astype(np.float32)
  mask = (rng.random(shape) > 0.2).astype(np.float32)
  kp.reshape(-1, 2)[:5] = [[8.0, 8.0], [15.999, 0.0], [0.0, 31.999], [32.0, 3.0], [-1e-4, 5]]
  kp.reshape(-1, 2)[5] = [np.nan, 4.0]
  kp.reshape(-1, 2)[6] = [np.inf, 4.0]
  mask.reshape(-1)[:7] = 1.0
  mask.reshape(-1)[7] = 0.0
  kp.reshape(-1, 2)[7] = [4.0, 4.0]  # masked, inside: must not count
  return kp, mask


@pytest.mark.parametrize("persons,dilation", [(1, 1), (2, 1), (1, 3), (2, 5)])
def test_pose_maps_match_numpy_reference(persons, dilation):
  rng = np.random.default_rng(persons * 10 + dilation)
  kp, mask = _random_keypoints(rng, (3, 4, 6), 32)
  p2d, p3d = pm.pose_maps(kp, mask, image_size=32, patch_size=8, dilation=dilation,
                          num_persons=persons)
  r2d, r3d = reference_maps(kp, mask, 32, 8, dilation, persons)
  assert p2d.shape == (3, 4, 16) and p3d.shape == (3, 4, 16, 6 // persons)
  assert p2d.dtype == np.float32 and p3d.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(p3d), r3d)
  np.testing.assert_array_equal(np.asarray(p2d), r2d)
  assert 0 < r3d.sum() < r3d.size  # not trivially empty or full


def test_pose_maps_border_outside_nan_masked_cases():
  s, p = 32, 8
  kp = np.array([[[8.0, 8.0],       # on a patch corner: patch (row 1, col 1) = 5
                  [7.999, 8.0],     # just left of the border: row 1, col 0 = 4
                  [31.5, 31.5],     # last patch 15
                  [32.0, 0.0],      # x == S: outside
                  [-0.5, 3.0],      # outside
                  [np.nan, 3.0],    # NaN
                  [3.0, 3.0]]],     # masked
                np.float32)
  mask = np.array([[1, 1, 1, 1, 1, 1, 0]], np.float32)
  p2d, p3d = pm.pose_maps(kp, mask, image_size=s, patch_size=p)
  p3d = np.asarray(p3d)
  assert np.flatnonzero(p3d[0, :, 0]).tolist() == [5]
  assert np.flatnonzero(p3d[0, :, 1]).tolist() == [4]
  assert np.flatnonzero(p3d[0, :, 2]).tolist() == [15]
  assert p3d[0, :, 3:].sum() == 0
  assert np.flatnonzero(np.asarray(p2d)[0]).tolist() == [4, 5, 15]
  # Row-major, not transposed: x = 20 (col 2), y = 4 (row 0) is patch 2, not patch 8.
  _, q = pm.pose_maps(np.array([[[20.0, 4.0]]]), np.ones((1, 1)), image_size=s, patch_size=p)
  assert np.flatnonzero(np.asarray(q)[0, :, 0]).tolist() == [2]


def test_pose_maps_jit_and_errors():
  kp, mask = _random_keypoints(np.random.default_rng(0), (2, 5), 32)
  f = jax.jit(lambda k, m: pm.pose_maps(k, m, image_size=32, patch_size=8, dilation=3))
  np.testing.assert_array_equal(np.asarray(f(kp, mask)[0]),
                                reference_maps(kp, mask, 32, 8, 3)[0])
  with pytest.raises(ValueError, match="dilation"):
    pm.pose_maps(kp, mask, image_size=32, patch_size=8, dilation=2)
  with pytest.raises(ValueError, match="multiple of num_persons"):
    pm.pose_maps(kp, mask, image_size=32, patch_size=8, num_persons=2)
  with pytest.raises(ValueError, match="not a multiple of patch_size"):
    pm.pose_maps(kp, mask, image_size=30, patch_size=8)
  with pytest.raises(ValueError, match=r"\(\.\.\., T, J, 2\)"):
    pm.pose_maps(kp, mask[..., :3], image_size=32, patch_size=8)


def test_ablation_perturbations():
  kp = np.full((2, 3, 4, 2), 10.0, np.float32)
  rnd = np.asarray(pm.random_keypoints(jax.random.key(0), kp, 32))
  assert rnd.shape == kp.shape and rnd.min() >= 0 and rnd.max() < 32 and rnd.std() > 5
  noisy = np.asarray(pm.jitter_keypoints(jax.random.key(1), kp, 3)) - kp
  assert set(np.unique(noisy).tolist()) == {0.0, 1.0, 2.0, 3.0}  # integers in [0, eps]
  np.testing.assert_array_equal(np.asarray(pm.jitter_keypoints(jax.random.key(1), kp, 0)), kp)


# ------------------------------------------------------------- through the real pipeline
RED, GREEN = (255, 0, 0), (0, 255, 0)


def _dot_record(rng, t=6, h=72, w=96):
  """Black frames with a red dot at the left wrist and a green dot at the right wrist."""
  sk = skeletons.COCO17
  lw, rw = sk.joints.index("left_wrist"), sk.joints.index("right_wrist")
  frames = np.zeros((t, h, w, 3), np.uint8)
  kp = np.zeros((t, 1, sk.num_joints, 2), np.float32)
  score = np.zeros((t, 1, sk.num_joints), np.float32)
  for ti in range(t):
    for joint, color in ((lw, RED), (rw, GREEN)):
      cx, cy = rng.integers(8, w - 8), rng.integers(8, h - 8)
      frames[ti, cy - 2:cy + 3, cx - 2:cx + 3] = color
      kp[ti, 0, joint] = (cx + 0.5, cy + 0.5)  # centre of the dot's centre pixel
      score[ti, 0, joint] = 1.0
  return {"frames": frames, "keypoints": kp, "keypoint_score": score, "label": 0,
          "video_id": b"dots"}, (lw, rw)


def test_maps_on_cropped_flipped_batches_find_the_drawn_joint():
  """The maps computed from a pipeline example's pose put each joint in the patch where its
  dot is drawn in the example's (cropped, resized, maybe flipped) frames; after a flip the
  pipeline relabels left/right, so the red dot (drawn as the left wrist) is a right wrist."""
  cfg = data.get_config()
  cfg.update(dict(num_frames=6, pose_frames=6, image_size=48, crop_area=(0.4, 1.0), flip=True,
                  score_threshold=0.5))
  proc = data.ClipProcessor(cfg, skeletons.COCO17)
  rng = np.random.default_rng(0)
  record, (lw, rw) = _dot_record(rng)
  s, patch, checked, flips = 48, 8, 0, set()
  for seed in range(12):
    ex = proc.train(record, 0, np.random.default_rng(seed))
    pixels = np.asarray(ex["frames"], np.float32) / 255.0            # uint8 -> [0, 1]
    _, p3d = pm.pose_maps(ex["pose"] * s, ex["pose_mask"], image_size=s, patch_size=patch)
    p3d = np.asarray(p3d)
    flipped = None
    for ti in range(6):
      for color, drawn_as in ((RED, lw), (GREEN, rw)):
        c = np.array(color) / 255.0
        score = -np.abs(pixels[ti] - c).sum(-1)                       # (S, S)
        if score.max() < -0.6:
          continue                                                    # cropped away
        ys, xs = np.nonzero(score > score.max() - 0.3)
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5                     # dot centroid, pixels
        if min(cx, cy, s - cx, s - cy) < 3:
          continue                                                    # dot cut by the crop
        labels = np.flatnonzero(p3d[ti].max(0))
        patch_of_dot = int(cy // patch) * (s // patch) + int(cx // patch)
        # Which joint label does the pipeline give the dot? Its own, or the mirror partner.
        near = [jj for jj in labels if np.abs(ex["pose"][ti, jj] * s - (cx, cy)).max() < 1.5]
        assert len(near) == 1, (seed, ti, color, labels)
        label = near[0]
        is_flipped = label != drawn_as
        assert label == (drawn_as if not is_flipped else (rw if drawn_as == lw else lw))
        assert flipped in (None, is_flipped)                          # one flip per clip
        flipped = is_flipped
        # The dot's patch is lit for that joint (unless the dot straddles a patch border).
        if min(cx % patch, patch - cx % patch, cy % patch, patch - cy % patch) > 1.5:
          assert p3d[ti, patch_of_dot, label] == 1.0, (seed, ti, color)
          checked += 1
    flips.add(flipped)
  assert checked > 20 and flips >= {True, False}
