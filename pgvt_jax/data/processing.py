"""One record -> one model example (one clip, one crop): sampling, crop/flip,
pose selection and (optionally) heatmaps. Frames stay uint8: the model normalises them on
the device (models/pixels.py), a quarter of float32's host-to-device bytes.

A record is a dict in the data contract's format (docs in `pgvt_jax.data`):
frames (T, H, W, 3) uint8 -- or a length-T sequence of per-frame uint8 arrays
or of JPEG bytes, decoded here only for the sampled frames --, keypoints
(T, M, V, 2) stored-frame pixels, keypoint_score (T, M, V), label, video_id.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import ml_collections
import numpy as np
from PIL import Image

from data_prep import skeletons
from pgvt_jax.data import augment
from pgvt_jax.data import sampling

Example = dict[str, np.ndarray]


def _video_id(record: Mapping[str, Any]) -> str:
  vid = record.get("video_id", "?")
  return vid.decode() if isinstance(vid, bytes) else str(vid)


def example_spec(cfg: ml_collections.ConfigDict, num_joints: int,
                 eval_rows: bool = True) -> dict[str, tuple]:
  """{key: (shape, dtype)} of one example (a batch adds a leading B).

  Args:
    cfg: `config.data`.
    num_joints: V of the layout; J = V * max_persons.
    eval_rows: include the eval-only keys view_index and valid.
  """
  j = num_joints * cfg.max_persons
  s = cfg.image_size
  spec = {
      "frames": ((cfg.num_frames, s, s, 3), np.uint8),   # pixels; normalised on device
      "pose": ((cfg.pose_frames, j, 2), np.float32),
      "pose_mask": ((cfg.pose_frames, j), np.float32),
      "label": ((), np.int32),
      "video_index": ((), np.int32),
  }
  if cfg.pose_format in ("heatmap", "heatmap_rgb"):
    hh = cfg.heatmap_size
    spec["pose_heatmap"] = ((cfg.pose_frames, hh, hh, j), np.float32)
  if eval_rows:
    spec["view_index"] = ((), np.int32)
    spec["valid"] = ((), np.bool_)
  return spec


# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic).
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                  0xCE, 0xCF))


def jpeg_header(data: bytes) -> tuple[int, int] | None:
  """(width, height) of a plain 3-component JPEG from its markers, else None.

  None (the caller then uses PIL's full parser) for anything else: not a JPEG,
  grey or CMYK, an Adobe APP14 segment (colour transform), a truncated header.
  """
  if data[:2] != b"\xff\xd8":
    return None
  i, n = 2, len(data)
  while i + 4 <= n:
    if data[i] != 0xFF:
      return None
    marker = data[i + 1]
    if marker == 0xFF:  # fill byte
      i += 1
      continue
    if marker == 0xEE:  # Adobe: PIL's parser handles its transform flag
      return None
    if marker in _SOF:
      if i + 10 > n:
        return None
      height = (data[i + 5] << 8) | data[i + 6]
      width = (data[i + 7] << 8) | data[i + 8]
      return (width, height) if data[i + 9] == 3 and width and height else None
    if marker == 0xDA:  # start of scan before any frame header
      return None
    i += 2 + ((data[i + 2] << 8) | data[i + 3])
  return None


def decode_jpeg(data: bytes) -> Image.Image:
  """An RGB JPEG decoded by libjpeg directly (PIL's Image.open parses every
  marker in Python first: half the CPU of a small frame); others via open."""
  size = jpeg_header(data)
  if size is None:
    return Image.open(io.BytesIO(data))
  return Image.frombuffer("RGB", size, data, "jpeg", "RGB", "")


class _Frames:
  """Random access to a record's frames as PIL images, decoding lazily."""

  def __init__(self, frames: Any, video_id: str):
    self._frames = frames
    self._video_id = video_id
    self.count = len(frames)
    if self.count == 0:
      raise ValueError(f"record {video_id!r}: no frames")
    first = frames[0]
    size = jpeg_header(first) if isinstance(first, (bytes, np.bytes_)) else None
    # The size without decoding a frame when the header says it.
    self.width, self.height = size or self.image(0).size

  def image(self, i: int) -> Image.Image:
    f = self._frames[i]
    if isinstance(f, (bytes, np.bytes_)):
      return decode_jpeg(f)
    f = np.asarray(f)
    if f.dtype != np.uint8 or f.ndim != 3 or f.shape[-1] != 3:
      raise ValueError(f"record {self._video_id!r}: frame {i} has shape "
                       f"{f.shape} {f.dtype}, expected (H, W, 3) uint8")
    return Image.fromarray(f)


class ClipProcessor:
  """Builds training examples and test-time views from records.

  Args:
    cfg: `config.data` (see config.py).
    skeleton: the records' joint layout.
  """

  def __init__(self, cfg: ml_collections.ConfigDict,
               skeleton: skeletons.Skeleton):
    self.cfg = cfg
    self.skeleton = skeleton
    self.num_views = cfg.eval_clips * cfg.eval_crops

  # -- public -----------------------------------------------------------------

  def train(self, record: Mapping[str, Any], index: int,
            rng: np.random.Generator) -> Example:
    """A randomly sampled, cropped and flipped clip (draws only from `rng`)."""
    cfg = self.cfg
    frames, kp, score = self._parse(record)
    vidx, pidx = self._sample(record, frames.count, rng=rng)
    rx, ry, rw, rh = self._region(frames, score, kp)
    x0, y0, w, h = augment.random_resized_crop_box(
        rng, rh, rw, cfg.crop_area, cfg.crop_aspect)
    box = (rx + x0, ry + y0, w, h)
    flip = bool(cfg.flip) and rng.random() < 0.5
    return self._example(record, index, frames, kp, score, vidx, pidx, box,
                         flip)

  def view(self, record: Mapping[str, Any], index: int, view: int) -> Example:
    """Test-time view `view` = clip * eval_crops + crop, deterministic."""
    cfg = self.cfg
    clip, crop = divmod(view, cfg.eval_crops)
    frames, kp, score = self._parse(record)
    if cfg.get("eval_sampling", "segment") == "dense":  # AIM's K400 test views
      # The span (AIM: 8 frames x 16 = 16 x 8 source frames at ~30 fps) scaled to the
      # stored frame rate.
      fps = float(np.asarray(record.get("fps", 0.0) or 0.0))
      rate = fps / cfg.dense_source_fps if fps > 0 else 1.0
      stride = max(cfg.dense_span / cfg.num_frames * rate, 1e-6)
      vidx, pidx = sampling.dense_indices(frames.count, cfg.num_frames, cfg.pose_frames,
                                          stride, clip=clip, num_clips=cfg.eval_clips)
    else:  # as in training: segments (AIM's Diving48 test, frame_uniform) or a fixed rate
      vidx, pidx = self._sample(record, frames.count, clip=clip)
    rx, ry, rw, rh = self._region(frames, score, kp)
    x0, y0, w, h = augment.eval_crop_boxes(rh, rw,
                                           cfg.short_side or cfg.image_size,
                                           cfg.image_size, cfg.eval_crops)[crop]
    box = (rx + x0, ry + y0, w, h)
    ex = self._example(record, index, frames, kp, score, vidx, pidx, box,
                       False)
    ex["view_index"] = np.int32(view)
    ex["valid"] = np.bool_(True)
    return ex

  def padding(self) -> Example:
    """An all-zero eval row with valid=False and indices/label -1."""
    ex = {k: np.zeros(s, d) for k, (s, d) in self.example_spec().items()}
    for k in ("label", "video_index", "view_index"):
      ex[k] = np.int32(-1)
    ex["valid"] = np.bool_(False)
    return ex

  def example_spec(self, eval_rows: bool = True) -> dict[str, tuple]:
    return example_spec(self.cfg, self.skeleton.num_joints, eval_rows)

  # -- internals --------------------------------------------------------------

  def _sample(self, record, num_stored: int, rng=None, clip: int = 0):
    """Video and pose frame indices: segments (default) or a fixed rate."""
    cfg = self.cfg
    mode = cfg.get("sampling", "segments")
    if mode == "segments":
      return sampling.sample_aligned(num_stored, cfg.num_frames, cfg.pose_frames,
                                     rng=rng, clip=clip, num_clips=cfg.eval_clips)
    # "fixed_rate": a window of rate * T frames at target_fps, in stored frames
    # at the record's own frame rate (records without one: target_fps).
    fps = float(np.asarray(record.get("fps", 0) or 0)) or cfg.target_fps
    span = cfg.sampling_rate * cfg.num_frames * fps / cfg.target_fps
    return sampling.sample_fixed_rate(num_stored, cfg.num_frames, cfg.pose_frames,
                                      span, rng=rng, clip=clip,
                                      num_clips=cfg.eval_clips)

  def _region(self, frames, score, kp) -> augment.Box:
    """The area crops are drawn from: the whole frame, or with
    config.data.person_crop the person-centred square (see augment)."""
    if not self.cfg.get("person_crop", False):
      return (0.0, 0.0, float(frames.width), float(frames.height))
    persons = augment.select_persons(score, self.cfg.max_persons)
    return augment.person_box(kp[:, persons], score[:, persons],
                              frames.height, frames.width,
                              self.cfg.score_threshold,
                              self.cfg.person_crop_margin)

  def _parse(self, record):
    vid = _video_id(record)
    frames = _Frames(record["frames"], vid)
    v = self.skeleton.num_joints
    if record.get("keypoints") is None:  # a pose-free record
      kp = np.zeros((frames.count, 0, v, 2), np.float32)
      score = np.zeros((frames.count, 0, v), np.float32)
    else:
      kp = np.asarray(record["keypoints"], np.float32)
      score = np.asarray(record["keypoint_score"], np.float32)
    if (kp.ndim != 4 or kp.shape[0] != frames.count or kp.shape[2] != v
        or kp.shape[3] != 2 or score.shape != kp.shape[:3]):
      raise ValueError(
          f"record {vid!r}: keypoints {kp.shape} / keypoint_score "
          f"{score.shape} do not match (T={frames.count}, M, "
          f"V={v} [{self.skeleton.name}], 2) / (T, M, V)")
    tracking = self.cfg.get("person_tracking", "iou")
    if tracking == "iou":  # slot m = one person over the clip (untracked pickles)
      kp, score = augment.link_persons(kp, score)
    elif tracking != "none":
      raise ValueError(f"config.data.person_tracking={tracking!r}: expected 'iou' or 'none'")
    return frames, kp, score

  def _example(self, record, index, frames, kp, score, vidx, pidx, box, flip):
    cfg = self.cfg
    s = cfg.image_size
    # Decode each distinct sampled frame once (short videos repeat indices).
    uniq, inverse = np.unique(vidx, return_inverse=True)
    # PIL resamples uint8 images to uint8 (its bilinear filter rounds to the nearest
    # integer), so these are exactly the pixels the float32 pipeline used to normalise.
    pixels = np.stack([augment.crop_resize(frames.image(int(i)), box, s)
                       for i in uniq])[inverse]
    if flip:  # a view; batching makes the one copy
      pixels = pixels[:, :, ::-1]
    persons = augment.select_persons(score, cfg.max_persons)
    pose, mask = augment.transform_keypoints(
        kp[pidx], score[pidx], persons, box, flip,
        self.skeleton.flip_permutation, cfg.score_threshold)
    ex = {
        "frames": pixels,
        "pose": pose,
        "pose_mask": mask,
        "label": np.int32(record["label"]),
        "video_index": np.int32(index),
    }
    if cfg.pose_format in ("heatmap", "heatmap_rgb"):
      ex["pose_heatmap"] = augment.gaussian_heatmaps(
          pose, mask, cfg.heatmap_size, cfg.heatmap_sigma)
    return ex
