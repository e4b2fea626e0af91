"""Class set "held_ball" (the PAAB/PAAT demo): the label is the colour of the ball the person
holds, in a frame that also shows a second, unlabelled person holding a ball of a random
colour. Only the keypoints say which of the two figures is the person.

Each clip draws two stick figures of the same kind (size, muted colour, a random "coarse"
limb-rotation motion each, a ball of radius S/11 centred on one wrist), one in each half of
the frame, the person's half at random. The person's ball has the class colour; the other
figure's ball a colour drawn uniformly from the same set, independently of the label. The
keypoints (T, 17, 2) are the person's only; the other figure is never in them.

What each model can reach (`ceilings`, K colours = classes):
  * Any model that reads the frames but not the keypoints sees two balls and two figures
    drawn from one exchangeable distribution: it can tell the two colours but not whose is
    whose. Best: right when both balls share the colour (1/K), else a coin flip between the
    two: 1/K + (1 - 1/K) / 2 (0.625 at K = 4).
  * Keypoints alone carry no colour (they do not depend on the label at all): 1/K.
  * A model that reads the frames where the keypoints are (PAAB's pose tokens) can reach 1.

Everything random about a clip (motions, sides, hands, colours of the figures and of the
other ball, background, camera jitter) is drawn from the clip's seed before and apart from
the label: two labels with one seed give identical keypoints and identical pixels except the
person's ball (tests/test_clutter.py). The records cycle through the classes (clip i has
label i % K), as every other class set.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from data_prep import skeletons
from data_prep import synthetic
from data_prep import video as video_lib

CLASS_SET = "held_ball"
# Saturated, far apart in hue; figures and background are muted (synthetic._background).
COLOURS = {"red": (225, 30, 30), "blue": (30, 70, 235), "green": (30, 190, 50),
           "yellow": (235, 215, 30)}
_MOTIONS = synthetic.class_definitions(6, "coarse")  # the 6 limb pairs, 1 turn each
_WRISTS = (9, 10)                                    # COCO-17 left, right wrist
_BODY_UNITS = 0.5     # pixels per body unit / S: a figure (arms up) spans ~half the frame
_CENTRES = 0.25, 0.75  # x / S of the two halves' figures


def check_num_classes(num_classes: int) -> int:
  if not isinstance(num_classes, (int, np.integer)) or not 2 <= num_classes <= len(COLOURS):
    raise ValueError(f"num_classes={num_classes!r}: class_set {CLASS_SET!r} has 2..{len(COLOURS)}"
                     f" classes (ball colours {', '.join(COLOURS)})")
  return int(num_classes)


def class_names(num_classes: int) -> list[str]:
  return [f"holds a {c} ball" for c in list(COLOURS)[:check_num_classes(num_classes)]]


def ceilings(num_classes: int) -> dict[str, float]:
  """Top-1 each kind of model can reach at best (module docstring), exact."""
  k = check_num_classes(num_classes)
  return dict(chance=1 / k, pose_only=1 / k, frames_only=1 / k + (1 - 1 / k) / 2,
              frames_where_the_keypoints_are=1.0)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One class of "held_ball": the person's ball colour; `render` draws a clip of it."""
  label: int
  num_classes: int

  def render(self, seed: tuple[int, ...], num_frames: int = 32, size: int = 128
             ) -> tuple[video_lib.DecodedVideo, np.ndarray]:
    return render_clip(self.label, seed, num_frames, size, self.num_classes)


def cells(num_classes: int) -> list[Cell]:
  k = check_num_classes(num_classes)
  return [Cell(label, k) for label in range(k)]


@dataclasses.dataclass(frozen=True)
class _Figure:
  pts: np.ndarray   # (T, 17, 2) pixels of the jittered canvas
  colour: tuple     # muted RGB
  width: int        # line width, px
  wrist: int        # the joint the ball is centred on


def _figure(rng: np.random.Generator, num_frames: int, size: int, centre_x: float,
            pad: int) -> _Figure:
  """A figure with a random coarse motion, shrunk and moved to x = centre_x * size."""
  pts = synthetic.motion(_MOTIONS[rng.integers(len(_MOTIONS))], num_frames, size, rng)
  hip = (pts[0, 11] + pts[0, 12]) / 2
  shrink = _BODY_UNITS * size * 0.40 / np.linalg.norm(pts[0, 0] - hip)  # nose: 0.40 up
  target = np.array([(centre_x + rng.uniform(-0.03, 0.03)) * size,
                     rng.uniform(0.56, 0.62) * size])
  pts = (pts - hip) * shrink + target + pad
  c = rng.integers(0, 256, 3)
  colour = tuple(int(v) for v in c.mean() + 0.25 * (c - c.mean()))
  width = max(1, round(size / 40 * rng.uniform(0.8, 1.3)))
  return _Figure(pts.astype(np.float32), colour, width, int(rng.choice(_WRISTS)))


@dataclasses.dataclass(frozen=True)
class Draws:
  """Everything random about a clip, drawn from its seed alone (never from the label)."""
  person: _Figure
  other: _Figure
  other_label: int          # the other figure's ball colour, uniform over the K classes
  background: np.ndarray    # (S + 2 pad, S + 2 pad, 3) uint8
  offset: np.ndarray        # (T, 2) int (x, y) of each frame's crop window: camera jitter


def draws(seed: tuple[int, ...], num_frames: int = 32, size: int = 128,
          num_classes: int = len(COLOURS), pad: int = 4) -> Draws:
  k = check_num_classes(num_classes)
  rng = np.random.default_rng(seed)
  person_half = int(rng.integers(2))
  person = _figure(rng, num_frames, size, _CENTRES[person_half], pad)
  other = _figure(rng, num_frames, size, _CENTRES[1 - person_half], pad)
  other_label = int(rng.integers(k))
  bg = synthetic._background(size + 2 * pad, rng, muted=True)  # pylint: disable=protected-access
  steps = rng.normal(0.0, 0.8, (num_frames, 2))
  offset = np.clip(np.cumsum(steps, 0) + pad, 0, 2 * pad).round().astype(int)
  return Draws(person, other, other_label, bg, offset)


def render_clip(label: int, seed: tuple[int, ...], num_frames: int = 32, size: int = 128,
                num_classes: int = len(COLOURS)
                ) -> tuple[video_lib.DecodedVideo, np.ndarray]:
  """One clip of class `label` (the person's ball colour): `draws(seed)` rendered.

  Returns:
    (video, keypoints (T, 17, 2) float32 in frame pixels: the person's only).
  """
  k = check_num_classes(num_classes)
  if not 0 <= label < k:
    raise ValueError(f"label={label!r}: expected 0..{k - 1} (num_classes={k})")
  d = draws(seed, num_frames, size, k)
  person, other, bg, offset = d.person, d.other, d.background, d.offset
  palette = list(COLOURS.values())[:k]
  balls = ((person, palette[label]), (other, palette[d.other_label]))
  ball_r = size / 11
  frames = np.empty((num_frames, size, size, 3), np.uint8)
  for i in range(num_frames):
    ox, oy = offset[i]
    img = Image.fromarray(bg[oy:oy + size, ox:ox + size])
    draw = ImageDraw.Draw(img)
    for fig in (person, other):
      p = fig.pts[i] - (ox, oy)
      outline = tuple(255 - c for c in fig.colour)
      for a, b in skeletons.COCO17.bones:
        draw.line((*p[a], *p[b]), fill=outline, width=fig.width + 2)
      for a, b in skeletons.COCO17.bones:
        draw.line((*p[a], *p[b]), fill=fig.colour, width=fig.width)
      r = size / 40
      draw.ellipse((p[0, 0] - r, p[0, 1] - r, p[0, 0] + r, p[0, 1] + r), fill=fig.colour,
                   outline=outline)
    for fig, rgb in balls:
      bx, by = fig.pts[i, fig.wrist] - (ox, oy)
      draw.ellipse((bx - ball_r, by - ball_r, bx + ball_r, by + ball_r), fill=rgb,
                   outline=(0, 0, 0))
    frames[i] = np.asarray(img)
  kps = (person.pts - offset[:, None]).astype(np.float32)     # offset[i] = (ox, oy)
  video = video_lib.DecodedVideo(
      frames=frames, frame_indices=np.arange(num_frames, dtype=np.int32), fps=16.0,
      source_fps=16.0, num_source_frames=num_frames, original_size=(size, size))
  return video, kps
