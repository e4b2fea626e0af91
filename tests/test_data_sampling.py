"""Segment sampling: video frames and pose frames aligned per segment."""

import numpy as np
import pytest

from pgvt_jax.data import sampling


def _segment_bounds(n, t, i):
  """Integer frame range [lo, hi] that continuous segment i of t covers."""
  lo = int(np.floor(i * n / t))
  hi = max(lo, int(np.ceil((i + 1) * n / t)) - 1)
  return lo, hi


@pytest.mark.parametrize("n", [1, 5, 16, 17, 47, 48, 100, 823])
@pytest.mark.parametrize("t_l,k", [(16, 3), (8, 1), (4, 2)])
def test_pose_frames_lie_in_their_video_segment(n, t_l, k):
  rng = np.random.default_rng(n * 100 + t_l)
  for trial in range(5):
    vidx, pidx = sampling.sample_aligned(
        n, t_l, k * t_l, rng=rng if trial else None)
    assert vidx.shape == (t_l,) and pidx.shape == (k * t_l,)
    assert vidx.min() >= 0 and vidx.max() < n
    assert pidx.min() >= 0 and pidx.max() < n
    for i in range(t_l):
      lo, hi = _segment_bounds(n, t_l, i)
      assert lo <= vidx[i] <= hi
      seg = pidx[k * i:k * (i + 1)]
      assert np.all((seg >= lo) & (seg <= hi)), (n, i, seg, lo, hi)


def test_long_video_covers_whole_span_and_is_monotone():
  vidx, pidx = sampling.sample_aligned(160, 16, 48)
  np.testing.assert_array_equal(vidx, np.arange(16) * 10 + 5)  # centres
  np.testing.assert_array_equal(np.diff(pidx) > 0, True)
  assert pidx[0] < 10 and pidx[-1] >= 150


def test_short_video_repeats_frames():
  vidx, pidx = sampling.sample_aligned(3, 8, 24)
  assert set(vidx) == {0, 1, 2} and set(pidx) == {0, 1, 2}
  assert np.all(np.diff(vidx) >= 0)


def test_train_offsets_are_random_and_seeded():
  a = sampling.sample_aligned(300, 16, 48, rng=np.random.default_rng(1))
  b = sampling.sample_aligned(300, 16, 48, rng=np.random.default_rng(1))
  c = sampling.sample_aligned(300, 16, 48, rng=np.random.default_rng(2))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[1], c[1])


def test_multi_clip_views_interleave():
  clips = [sampling.sample_aligned(300, 10, 20, clip=c, num_clips=3)[0]
           for c in range(3)]
  # Segment i spans frames 30i..30i+29; clip c sits at (c + 1/2)/3 of it.
  np.testing.assert_array_equal(clips[0], np.arange(10) * 30 + 5)
  np.testing.assert_array_equal(clips[1], np.arange(10) * 30 + 15)
  np.testing.assert_array_equal(clips[2], np.arange(10) * 30 + 25)


def test_bad_arguments():
  with pytest.raises(ValueError, match="multiple"):
    sampling.sample_aligned(10, 4, 6)
  with pytest.raises(ValueError, match="0 frames"):
    sampling.sample_aligned(0, 4, 8)
