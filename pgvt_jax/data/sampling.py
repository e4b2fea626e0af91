"""Temporal sampling: T_l video frames and T_h = k * T_l pose frames, aligned.

Segment sampling (TSN; AIM's `SampleFrames` with `frame_uniform`) splits the
n stored frames into T equal segments [i n/T, (i+1) n/T) and takes one frame
per segment, at a random offset in training and at the centre at test time.

mmaction2 samples RGB and pose indices independently. Here the pose frames
are segment-sampled with T_h = k * T_l segments over the same [0, n) axis, so
pose segments k*i .. k*(i+1)-1 tile video segment i exactly: every pose frame
of video segment i lies in that segment's time span (ALIGNED). Videos shorter
than T repeat frames (segments narrower than one frame).
"""

from __future__ import annotations

import numpy as np


def segment_indices(num_stored: int, num_segments: int,
                    offsets: np.ndarray | float) -> np.ndarray:
  """Frame index per segment: floor((i + offset_i) * n / T), in [0, n).

  Args:
    num_stored: n, the number of stored frames (>= 1).
    num_segments: T.
    offsets: (T,) or scalar in [0, 1): position inside each segment
      (0.5 = centre).

  Returns:
    (T,) int32 indices, non-decreasing.
  """
  if num_stored < 1:
    raise ValueError(f"cannot sample from a video with {num_stored} frames")
  # Multiply before dividing: segment starts (offset 0) then come out exact,
  # so the floor cannot slip one frame back into the previous segment.
  pos = (np.arange(num_segments) + offsets) * num_stored / num_segments
  return np.clip(np.floor(pos), 0, num_stored - 1).astype(np.int32)


def sample_aligned(num_stored: int, num_frames: int, pose_frames: int,
                   rng: np.random.Generator | None = None,
                   clip: int = 0, num_clips: int = 1
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Video and pose frame indices for one clip.

  Args:
    num_stored: n stored frames of the record.
    num_frames: T_l video frames.
    pose_frames: T_h = k * T_l pose frames.
    rng: training: random offset in every segment (independent draws for the
      video frame and for each pose sub-segment). None: test time.
    clip, num_clips: test time, clip c of C takes offset (c + 1/2) / C in
      every segment, so C clips interleave evenly (C = 1: segment centres).

  Returns:
    video_idx (T_l,), pose_idx (T_h,), int32 indices into the stored frames;
    pose_idx[k*i : k*(i+1)] and video_idx[i] lie in video segment i.
  """
  if pose_frames % num_frames:
    raise ValueError(f"pose_frames={pose_frames} is not a multiple of "
                     f"num_frames={num_frames}")
  if rng is not None:
    v_off = rng.random(num_frames)
    p_off = rng.random(pose_frames)
  else:
    v_off = p_off = (clip + 0.5) / num_clips
  return (segment_indices(num_stored, num_frames, v_off),
          segment_indices(num_stored, pose_frames, p_off))


def sample_fixed_rate(num_stored: int, num_frames: int, pose_frames: int,
                      span: float, rng: np.random.Generator | None = None,
                      clip: int = 0, num_clips: int = 1
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Frames at a fixed rate: T evenly spaced frames in a window of `span` frames.

  TimeSformer / SlowFast's dense sampling (`decoder.get_start_end_idx` and
  `temporal_sampling`), the PAAB/PAAT recipe: a window of span = rate * T *
  fps / target_fps stored frames starts at a uniform random position in
  [0, n - span] (training) or at (n - span) * clip / num_clips (test clip
  `clip` of `num_clips`); its first and last frames and T - 2 in between are
  taken (consecutive samples `rate` frames apart at target_fps). Videos
  shorter than the window repeat their last frame.

  Args:
    num_stored: n stored frames.
    num_frames: T_l video frames.
    pose_frames: T_h = k * T_l pose frames, spread over the same window.
    span: window length in stored frames (> 0).
    rng: training draws the start; None: test clip `clip` of `num_clips`.

  Returns:
    video_idx (T_l,), pose_idx (T_h,) int32 in [0, n), non-decreasing.
  """
  if num_stored < 1:
    raise ValueError(f"cannot sample from a video with {num_stored} frames")
  if span <= 0:
    raise ValueError(f"sampling window of {span} frames, expected > 0")
  delta = max(num_stored - span, 0.0)
  start = rng.uniform(0.0, delta) if rng is not None else delta * clip / num_clips

  def take(t):
    # linspace(start, start + span - 1, t), multiplied before dividing; the
    # 1e-6 keeps positions that are whole numbers from flooring one frame
    # back (torch's .long() truncates; positions are >= 0, so floor).
    pos = start + (span - 1) * np.arange(t) / max(t - 1, 1)
    return np.clip(np.floor(pos + 1e-6), 0, num_stored - 1).astype(np.int32)

  return take(num_frames), take(pose_frames)


def dense_indices(num_stored: int, num_frames: int, pose_frames: int, stride: float,
                  clip: int = 0, num_clips: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Test-time dense sampling (mmaction2 `SampleFrames(test_mode=True)`, AIM's K400 test).

  Clip c of C starts at int(avg / 2 + c * avg), avg = (n - T_l * stride + 1) / C (0 when the
  video is shorter than one clip), and takes T_l frames `stride` apart; indices past the end
  wrap around (mmaction2's "loop"). The T_h = k * T_l pose frames are `stride / k` apart from
  the same start, so pose frames k*i .. k*i+k-1 fall in [video_i, video_i + stride).

  Returns:
    video_idx (T_l,), pose_idx (T_h,) int32 indices into the n stored frames.
  """
  if pose_frames % num_frames:
    raise ValueError(f"pose_frames={pose_frames} is not a multiple of "
                     f"num_frames={num_frames}")
  if num_stored < 1:
    raise ValueError(f"cannot sample from a video with {num_stored} frames")
  span = num_frames * stride
  avg = (num_stored - span + 1) / num_clips
  start = int(avg / 2 + clip * avg) if num_stored > span - 1 else 0
  k = pose_frames // num_frames
  video = start + np.floor(np.arange(num_frames) * stride)
  pose = start + np.floor(np.arange(pose_frames) * stride / k)
  return (np.mod(video, num_stored).astype(np.int32),
          np.mod(pose, num_stored).astype(np.int32))
