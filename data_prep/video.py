"""Video decoding (PyAV) and the JPEG frame encoding stored in the records.

Frames are decoded in order, counted from 0 (the index that pose files use:
mmaction2's `total_frames` counts the same decoded frames), resized so that the
short side is `short_side` by FFmpeg's swscale (area filter when shrinking),
and temporally subsampled to at most `max_frames` by taking the centre frame of
`max_frames` equal segments.

  video = decode_video("rgb/abc.mp4", short_side=256, max_frames=None)
  video.frames         # (T, H, W, 3) uint8, min(H, W) == 256
  video.frame_indices  # (T,) int32 source frame of each stored frame
"""

from __future__ import annotations

import dataclasses
import io
import os

import av
import numpy as np
from PIL import Image


class VideoDecodeError(Exception):
  """The video cannot be decoded (missing, unreadable, truncated, empty)."""


@dataclasses.dataclass(frozen=True)
class DecodedVideo:
  """Frames of one video as stored in a record.

  Attributes:
    frames: (T, H, W, 3) uint8 RGB, resized.
    frame_indices: (T,) int32, source-video index of each stored frame.
    fps: frame rate of the stored frames (source fps x T / num_source_frames).
    source_fps: frame rate of the source video.
    num_source_frames: frames decoded from the source video.
    original_size: (h, w) of the source video.
  """
  frames: np.ndarray
  frame_indices: np.ndarray
  fps: float
  source_fps: float
  num_source_frames: int
  original_size: tuple[int, int]

  @property
  def size(self) -> tuple[int, int]:
    """(H, W) of the stored frames."""
    return self.frames.shape[1], self.frames.shape[2]


def resized_size(h: int, w: int, short_side: int | None) -> tuple[int, int]:
  """(h, w) scaled so that min(h, w) == short_side (aspect kept, rounded)."""
  if not short_side:
    return h, w
  s = short_side / min(h, w)
  if h <= w:
    return short_side, max(1, round(w * s))
  return max(1, round(h * s)), short_side


def uniform_indices(n: int, max_frames: int | None) -> np.ndarray:
  """(min(n, max_frames),) int32: centre frame of each of `max_frames` segments."""
  if not max_frames or n <= max_frames:
    return np.arange(n, dtype=np.int32)
  return np.floor((np.arange(max_frames) + 0.5) * n / max_frames).astype(
      np.int32)


def subsample(video: DecodedVideo, max_frames: int | None) -> DecodedVideo:
  """Keeps at most `max_frames` frames, evenly spread (see `uniform_indices`)."""
  keep = uniform_indices(len(video.frames), max_frames)
  if len(keep) == len(video.frames):
    return video
  return dataclasses.replace(
      video, frames=video.frames[keep],
      frame_indices=video.frame_indices[keep],
      fps=video.source_fps * len(keep) / max(video.num_source_frames, 1))


def decode_video(path: str | os.PathLike, short_side: int | None = 256,
                 max_frames: int | None = None,
                 min_decoded_fraction: float = 0.9) -> DecodedVideo:
  """Decodes every frame of `path`, resized, then subsampled to `max_frames`.

  Args:
    path: a video file FFmpeg can read (mp4/avi/mkv/webm...).
    short_side: target short side in pixels; None/0 keeps the source size.
    max_frames: cap on stored frames (None: all).
    min_decoded_fraction: a stream that declares N frames but yields fewer than
      this fraction of N is treated as truncated.

  Raises:
    VideoDecodeError: missing/unreadable file, no video stream, decode error,
      truncated stream or zero frames. The message names the file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VideoDecodeError(f"{path}: video file not found")
  try:
    container = av.open(path)
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise VideoDecodeError(f"{path}: unreadable video ({e})") from e
  frames = []
  with container:
    if not container.streams.video:
      raise VideoDecodeError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    source_fps = float(rate) if rate else 0.0
    declared = int(stream.frames or 0)
    h0 = w0 = 0
    try:
      for frame in container.decode(stream):
        if not frames:
          h0, w0 = frame.height, frame.width
          h, w = resized_size(h0, w0, short_side)
          # Area averaging when shrinking (no aliasing), bilinear otherwise.
          interp = "AREA" if h < h0 else "BILINEAR"
        frames.append(frame.reformat(
            width=w, height=h, format="rgb24",
            interpolation=interp).to_ndarray())
    except (av.error.FFmpegError, OSError, ValueError) as e:
      raise VideoDecodeError(
          f"{path}: decode error after {len(frames)} frames "
          f"(truncated or corrupt): {e}") from e
  if not frames:
    raise VideoDecodeError(f"{path}: no decodable frames")
  if declared and len(frames) < min_decoded_fraction * declared:
    raise VideoDecodeError(
        f"{path}: truncated, decoded {len(frames)} of {declared} declared "
        f"frames")
  n = len(frames)
  if not source_fps:
    source_fps = 25.0  # Containers without timing: the common default.
  video = DecodedVideo(
      frames=np.stack(frames), frame_indices=np.arange(n, dtype=np.int32),
      fps=source_fps, source_fps=source_fps, num_source_frames=n,
      original_size=(h0, w0))
  return subsample(video, max_frames)


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
  """(H, W, 3) uint8 -> JPEG bytes (4:2:0, libjpeg-turbo through Pillow)."""
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
  """JPEG bytes -> (H, W, 3) uint8."""
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 25.0,
                codec: str = "libx264", crf: int = 18) -> None:
  """Encodes (T, H, W, 3) uint8 frames to `path` (tests, demos, exports).

  H and W must be even for yuv420p codecs.
  """
  t, h, w, _ = frames.shape
  with av.open(os.fspath(path), mode="w") as container:
    stream = container.add_stream(codec, rate=round(fps))
    stream.width, stream.height = w, h
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
      stream.options = {"crf": str(crf), "preset": "veryfast"}
    for i in range(t):
      frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
