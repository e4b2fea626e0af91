"""Spatial transforms applied identically to frames and keypoints.

Coordinate convention (one place, used by every function here): continuous
image coordinates in which pixel (col, row) covers [col, col+1) x [row, row+1),
so its centre is (col + 1/2, row + 1/2). Record keypoints and crop boxes
(x0, y0, w, h) are both in these units of the stored frame; resizing is then
a plain multiplication (as data_prep and mmaction2's PoseC3D transforms do).
Output keypoints are normalised to the crop, u = (x - x0) / w in [0, 1), and
lie in output pixel column floor(u * S); a flip maps u -> 1 - u, exactly what
mirroring the S columns does.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from pgvt_jax.models import clip_vit

Box = tuple[float, float, float, float]  # x0, y0, w, h (see above)

# CLIP's pixel statistics (RGB, on [0, 1] pixels), defined once in clip_vit.
CLIP_MEAN = np.array(clip_vit.CLIP_MEAN, np.float32)
CLIP_STD = np.array(clip_vit.CLIP_STD, np.float32)


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            area: Sequence[float], aspect: Sequence[float],
                            attempts: int = 10) -> Box:
  """Inception-style crop box (torchvision `RandomResizedCrop.get_params`).

  Area fraction ~ U(area), aspect w/h log-uniform in `aspect`; after
  `attempts` misses, the largest centred box with a clamped aspect.
  """
  frame_area = height * width
  log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
  for _ in range(attempts):
    target = frame_area * rng.uniform(area[0], area[1])
    ratio = math.exp(rng.uniform(log_lo, log_hi))
    w = math.sqrt(target * ratio)
    h = math.sqrt(target / ratio)
    if 0 < w <= width and 0 < h <= height:
      x0 = rng.uniform(0, width - w)
      y0 = rng.uniform(0, height - h)
      return (x0, y0, w, h)
  ratio = width / height
  if ratio < aspect[0]:
    w, h = width, width / aspect[0]
  elif ratio > aspect[1]:
    w, h = height * aspect[1], height
  else:
    w, h = width, height
  return ((width - w) / 2, (height - h) / 2, w, h)


def eval_crop_boxes(height: int, width: int, short_side: int, size: int,
                    num_crops: int) -> list[Box]:
  """Test-time boxes: resize short side to `short_side`, crop size x size.

  num_crops = 1: the centre crop; 3: mmaction2's ThreeCrop (start, centre,
  end of the long side). Returned in stored-frame coordinates.
  """
  side = size * min(height, width) / short_side  # crop side before resizing
  def box_at(frac):  # frac in {0, 1/2, 1} along the long side
    if width >= height:
      return ((width - side) * frac, (height - side) / 2, side, side)
    return ((width - side) / 2, (height - side) * frac, side, side)
  if num_crops == 1:
    return [box_at(0.5)]
  if num_crops == 3:
    return [box_at(0.0), box_at(0.5), box_at(1.0)]
  raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")


def person_box(kp: np.ndarray, score: np.ndarray, height: int, width: int,
               score_threshold: float, margin: float) -> Box:
  """The person-centred square crop region of a video (PAAB/PAAT Appendix B).

  Union box of every joint with score > score_threshold over all frames and
  the given persons, grown by `margin` x its longer side on every side,
  squared around its centre and shifted (then, if need be, shrunk) to lie in
  the frame. Without any visible joint: the largest centred square.

  Args:
    kp: (T, M, V, 2) stored-frame keypoints; score: (T, M, V).
    height, width: the stored frame size.
  """
  ok = (score > score_threshold) & np.all(np.isfinite(kp), axis=-1)
  side_max = float(min(height, width))
  if not np.any(ok):
    return ((width - side_max) / 2, (height - side_max) / 2, side_max, side_max)
  pts = kp[ok]
  lo = np.clip(pts.min(axis=0), 0, [width, height])
  hi = np.clip(pts.max(axis=0), 0, [width, height])
  side = float(np.max(hi - lo)) * (1 + 2 * margin)
  side = min(max(side, 1.0), side_max)
  cx, cy = (lo + hi) / 2
  x0 = min(max(cx - side / 2, 0.0), width - side)
  y0 = min(max(cy - side / 2, 0.0), height - side)
  return (float(x0), float(y0), side, side)


def crop_resize(image: Image.Image, box: Box, size: int) -> np.ndarray:
  """(size, size, 3) uint8: the box resampled bilinearly (antialiased)."""
  x0, y0, w, h = box
  if image.mode != "RGB":  # convert() copies even an RGB image
    image = image.convert("RGB")
  out = image.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + w, y0 + h))
  return np.asarray(out)


def normalize_frames(frames: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
  """uint8 (..., 3) -> float32 (x / 255 - mean) / std (RGB; default CLIP's statistics)."""
  # One fused multiply-subtract per pixel. Broadcasting a (3,) vector makes
  # numpy loop in strides of 3 (~10x slower); rows of (W*3,) tiled constants
  # keep the inner loop long.
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  width = frames.shape[-2] * 3
  scale = np.tile((1.0 / (255.0 * std)).astype(np.float32), width // 3)
  offset = np.tile((mean / std).astype(np.float32), width // 3)
  out = np.multiply(frames.reshape(-1, width), scale, dtype=np.float32)
  out -= offset
  return out.reshape(frames.shape)


def _boxes(keypoints: np.ndarray, score: np.ndarray) -> np.ndarray:
  """(M, 4) x0, y0, x1, y1 of each person's scored joints; NaN rows for absent persons."""
  out = np.full((keypoints.shape[0], 4), np.nan, np.float32)
  for m in range(keypoints.shape[0]):
    seen = keypoints[m][score[m] > 0]
    if len(seen):
      out[m] = (*seen.min(0), *seen.max(0))
  return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(Na, Nb) IoU of boxes (NaN boxes -> 0); zero-area boxes are padded by a pixel."""
  a, b = a[:, None], b[None]
  iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1
  ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1
  inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
  area = lambda x: (x[..., 2] - x[..., 0] + 1) * (x[..., 3] - x[..., 1] + 1)
  iou = inter / (area(a) + area(b) - inter)
  return np.nan_to_num(iou, nan=0.0)


def link_persons(keypoints: np.ndarray, score: np.ndarray, min_iou: float = 0.1
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Re-orders the person slots of every frame so that slot m follows one person (track).

  Pose pickles from per-frame detectors (mmaction2's Diving48/FineGym/K400 pickles) list the
  persons of each frame in detection order: slot 0 can be a different person in every frame.
  Frame by frame, each present person joins the track whose last box overlaps it most
  (greedy by IoU, at least `min_iou`); the rest start or take over free tracks.

  Args:
    keypoints: (T, M, V, 2); score: (T, M, V), 0 for absent joints/persons.
  Returns:
    (keypoints, score) with the same shapes, slots permuted per frame.
  """
  t, m = score.shape[:2]
  if m <= 1:
    return keypoints, score
  kp_out, sc_out = np.zeros_like(keypoints), np.zeros_like(score)
  last = np.full((m, 4), np.nan, np.float32)          # last box of each track
  for i in range(t):
    boxes = _boxes(keypoints[i], score[i])
    present = [j for j in range(m) if not np.isnan(boxes[j, 0])]
    iou = _iou(last, boxes)
    free_tracks, assign = set(range(m)), {}
    for k in np.argsort(-iou, axis=None, kind="stable"):
      trk, det = divmod(int(k), m)
      if iou[trk, det] < min_iou:
        break
      if trk in free_tracks and det in present and det not in assign:
        assign[det] = trk
        free_tracks.discard(trk)
    # Unmatched persons: tracks never used first, then the lost ones, in order.
    order = sorted(free_tracks, key=lambda k: (not np.isnan(last[k, 0]), k))
    for det in present:
      if det not in assign:
        assign[det] = order.pop(0)
    for det, trk in assign.items():
      kp_out[i, trk], sc_out[i, trk] = keypoints[i, det], score[i, det]
      last[trk] = boxes[det]
  return kp_out, sc_out


def select_persons(score: np.ndarray, max_persons: int) -> np.ndarray:
  """Indices of the `max_persons` persons with the highest mean score.

  Args:
    score: (T, M, V) keypoint scores of the whole record (M may be 0).
  Returns:
    (max_persons,) int, best first; -1 pads when M < max_persons.
  """
  mean = score.mean(axis=(0, 2)) if score.shape[1] else np.zeros(0)
  order = np.argsort(-mean, kind="stable")[:max_persons]
  return np.concatenate([order, -np.ones(max_persons - len(order), int)])


def transform_keypoints(keypoints: np.ndarray, score: np.ndarray,
                        persons: np.ndarray, box: Box, flip: bool,
                        flip_permutation: np.ndarray,
                        score_threshold: float
                        ) -> tuple[np.ndarray, np.ndarray]:
  """Maps record keypoints into the (possibly flipped) crop.

  Args:
    keypoints: (T, M, V, 2) stored-frame pixels; score: (T, M, V).
    persons: (P,) person indices from `select_persons` (-1 = absent).
    box, flip: the crop and flip applied to the frames.
    flip_permutation: (V,) mirror partner of each joint (skeletons.py).
    score_threshold: joints with score <= this are masked.

  Returns:
    pose (T, P*V, 2) float32 in [0, 1) (person-major; masked joints 0) and
    mask (T, P*V) float32 in {0, 1}: 0 if absent, low-score or out of crop.
  """
  t, _, v, _ = keypoints.shape
  p = len(persons)
  kp = np.zeros((t, p, v, 2), np.float32)
  sc = np.zeros((t, p, v), np.float32)
  present = persons >= 0
  kp[:, present] = keypoints[:, persons[present]]
  sc[:, present] = score[:, persons[present]]
  x0, y0, w, h = box
  u = (kp[..., 0] - x0) / w
  y = (kp[..., 1] - y0) / h
  mask = (sc > score_threshold) & (u >= 0) & (u < 1) & (y >= 0) & (y < 1)
  mask &= np.isfinite(u) & np.isfinite(y)
  if flip:
    # The mirrored image shows the left wrist where the right one was: swap
    # joint labels as well as mirroring x.
    u, y, mask = (1.0 - u)[..., flip_permutation], y[..., flip_permutation], \
        mask[..., flip_permutation]
  pose = np.stack([u, y], axis=-1) * mask[..., None]
  return (pose.reshape(t, p * v, 2).astype(np.float32),
          mask.reshape(t, p * v).astype(np.float32))


def gaussian_heatmaps(pose: np.ndarray, mask: np.ndarray, size: int,
                      sigma: float) -> np.ndarray:
  """PoseC3D-style pseudo-heatmaps, one Gaussian channel per joint.

  H[t, y, x, j] = mask[t, j] * exp(-((x - cx)^2 + (y - cy)^2) / (2 sigma^2))
  with (cx, cy) = pose[t, j] * size - 1/2 in heatmap pixel-centre units, so
  the peak is at pixel floor(pose * size). Separable, so cheap.

  Args:
    pose: (T, J, 2) crop-normalised keypoints; mask: (T, J).
  Returns:
    (T, size, size, J) float32 in [0, 1].
  """
  grid = np.arange(size, dtype=np.float32)
  c = pose * size - 0.5                                       # (T, J, 2)
  gx = np.exp(-(grid - c[..., 0:1]) ** 2 / (2 * sigma**2))    # (T, J, W)
  gy = np.exp(-(grid - c[..., 1:2]) ** 2 / (2 * sigma**2))    # (T, J, H)
  gx *= mask[..., None]
  return np.einsum("tjy,tjx->tyxj", gy, gx).astype(np.float32)
