"""PyAV decoding: resize, frame indices, subsampling, bad files."""

import numpy as np
import pytest

from data_prep import video
from tests.dataprep_fixtures import (H, W, dot_frames, dot_xy, realdata,
                                     write_dot_video)


def test_resized_size_keeps_aspect():
  assert video.resized_size(480, 640, 256) == (256, 341)
  assert video.resized_size(1080, 1920, 256) == (256, 455)
  assert video.resized_size(640, 480, 256) == (341, 256)  # portrait
  assert video.resized_size(240, 320, 256) == (256, 341)  # upscaled
  assert video.resized_size(240, 320, None) == (240, 320)


def test_uniform_indices_are_segment_centres():
  np.testing.assert_array_equal(video.uniform_indices(5, None), np.arange(5))
  np.testing.assert_array_equal(video.uniform_indices(5, 8), np.arange(5))
  # 10 frames in 4 segments of 2.5: centres 1.25, 3.75, 6.25, 8.75.
  np.testing.assert_array_equal(video.uniform_indices(10, 4), [1, 3, 6, 8])


def test_decode_resizes_and_counts(tmp_path):
  path = write_dot_video(tmp_path / "a.mp4", 12, fps=25)
  v = video.decode_video(path, short_side=48)
  assert v.frames.shape == (12, 48, 64, 3) and v.frames.dtype == np.uint8
  np.testing.assert_array_equal(v.frame_indices, np.arange(12))
  assert v.original_size == (H, W) and v.num_source_frames == 12
  assert v.fps == pytest.approx(25.0)
  # The dot of frame 7 is where it was drawn, at half scale.
  x, y = dot_xy(7) * 0.5
  assert v.frames[7, int(y), int(x)].mean() > 150
  assert v.frames[7, int(y), int(x) + 10].mean() < 60


def test_decode_max_frames_subsamples_and_scales_fps(tmp_path):
  path = write_dot_video(tmp_path / "a.mp4", 20, fps=20)
  v = video.decode_video(path, short_side=None, max_frames=5)
  np.testing.assert_array_equal(v.frame_indices, [2, 6, 10, 14, 18])
  assert v.fps == pytest.approx(5.0) and v.source_fps == pytest.approx(20.0)
  ref = dot_frames(20)[v.frame_indices].astype(int)
  assert np.abs(v.frames.astype(int) - ref).mean() < 4  # lossy codec


def test_bad_files_raise_with_the_path(tmp_path):
  missing = tmp_path / "missing.mp4"
  with pytest.raises(video.VideoDecodeError, match="not found"):
    video.decode_video(missing)
  junk = tmp_path / "junk.mp4"
  junk.write_bytes(np.random.default_rng(0).bytes(5000))
  with pytest.raises(video.VideoDecodeError, match="junk.mp4"):
    video.decode_video(junk)
  good = write_dot_video(tmp_path / "t.mp4", 30)
  data = open(good, "rb").read()
  truncated = tmp_path / "truncated.mp4"
  truncated.write_bytes(data[:len(data) // 2])
  with pytest.raises(video.VideoDecodeError, match="truncated.mp4"):
    video.decode_video(truncated)


def test_jpeg_round_trip():
  frame = dot_frames(1)[0]
  out = video.decode_jpeg(video.encode_jpeg(frame, 95))
  assert out.shape == frame.shape and np.abs(
      out.astype(int) - frame).mean() < 2


@pytest.mark.parametrize("name,size,frames,fps", [
    ("mmaction2_test_mpeg4.avi", (240, 320), 164, 25.0),
    ("k400_tai_chi.mp4", (256, 340), 300, 29.97),
])
def test_real_clips(name, size, frames, fps):
  v = video.decode_video(realdata(name), short_side=128, max_frames=32)
  assert v.original_size == size and v.num_source_frames == frames
  assert v.frames.shape[0] == 32 and min(v.frames.shape[1:3]) == 128
  assert v.source_fps == pytest.approx(fps, rel=1e-3)
