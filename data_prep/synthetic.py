"""Synthetic pose actions: a COCO-17 stick figure whose classes differ only in
motion, rendered with random backgrounds, camera jitter and joint noise.

A class is an ordered pair of limb rotations, e.g. "left arm 1 turn clockwise,
then right arm 1 turn anticlockwise". Classes are enumerated so that the first
ones share limbs and counts and differ only in order and direction (the
hardest case), then in rotation count, then in limbs:

  classes 0-7    left+right arm, 1 turn each, all orders x directions
  classes 8-15   the same arms, 2 turns then 1 ...   (192 classes at most)

A single frame shows a limb at some angle, which is compatible with either
order and either direction; the class is only visible in the motion.
NOTE: a horizontal flip maps left <-> right and clockwise <-> anticlockwise,
i.e. one class onto another: do not flip-augment this dataset (the builder
stores `horizontal_flip_safe=False` in its metadata).

Class set "pose_video" (the PGVT demo) makes the two modalities complementary:
class = (motion, ball colour). The motion is one of the "coarse" limb-pair
rotations (arms, legs, ...) and is read best from the keypoints; a ball lies
still on the floor beside the person, red or blue, drawn only in the frames
(the keypoints carry no trace of it, and it does not move with the limbs). A
pose-only model can at best tell the motion (top-1 <= 1/2 with two colours),
a video-only model must read the motion from thin moving limbs; a model that
uses both can reach 1.

Class set "interaction" (PGVT vs late fusion) makes the label depend on how the two cues
interact: one arm swings out to its side and back (left or right arm: keypoints only, the
frames draw the figure without arms), a ball lies on the floor left or right of the person
(frames only), and the 2 classes are "reach towards the ball" (the moving arm is on the
ball's side) and "reach away". The label is the XOR of the two factors, so each stream alone
is at chance (0.5) by construction, a sum of a pose-only and a video-only score (late fusion)
is right on at most 3 of the 4 (arm, side) cells (0.75, `data_prep.fusion_bounds`), and a model
that fuses the tokens can in principle reach 1 (the demo's PGVT does not: docs/models.md).

Class set "reach" adds to those 4 cells 4 in which one factor alone decides the class: the arms
stay still and the ball lies left or right (2 classes), or one arm swings and there is no ball
(2 classes). These give each stream a reason to extract its factor (in the pure XOR neither
factor alone is correlated with the label, so nothing drives either stream to represent it);
towards / away still needs both. 6 classes, 8 cells: chance 0.25, each stream alone 0.375,
late fusion at most 0.875 (3 of the 4 reaching cells), both factors 1.0.

`cells` lists a set's cells; the records cycle through them, so every cell has the same share
of each split.

This module is the world (class definitions, rendering); the records are written by
`data_prep.datasets.synthetic`:

  path = data_prep.datasets.synthetic.build("/tmp/pgvt_data", num_train=256, num_test=64,
                                            num_classes=8)
  src = tfds.builder_from_directory(path).as_data_source("train")
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from PIL import Image, ImageDraw

from data_prep import video as video_lib
from data_prep import skeletons

SK = skeletons.COCO17
LIMBS = ("left_arm", "right_arm", "left_leg", "right_leg")
_LIMB_JOINTS = {"left_arm": (5, 7, 9), "right_arm": (6, 8, 10),
                "left_leg": (11, 13, 15), "right_leg": (12, 14, 16)}
# Limb pairs in the order classes use them (arms first: the most visible).
_PAIRS = (("left_arm", "right_arm"), ("left_leg", "right_leg"),
          ("left_arm", "right_leg"), ("right_arm", "left_leg"),
          ("left_arm", "left_leg"), ("right_arm", "right_leg"))
_COUNTS = ((1, 1), (2, 1), (1, 2), (2, 2))
_ARM_DISTAL = {7, 8, 9, 10}  # elbows and wrists: the joints an arm's rotation moves


@dataclasses.dataclass(frozen=True)
class Rotation:
  """`limb` turns `count` full circles around its root joint; direction +1 is
  anticlockwise on screen (down -> right -> up), -1 clockwise."""
  limb: str
  direction: int
  count: int

  def __str__(self):
    if not self.count:
      return f"{self.limb} still"
    way = "ccw" if self.direction > 0 else "cw"
    return f"{self.limb} {self.count}x{way}"


CLASS_SETS = ("fine", "coarse", "pose_video", "interaction", "reach")  # + data_prep.worlds
# "pose_video": the colour of the ball on the floor, the cue only the frames carry. Saturated and far
# apart, on the muted backgrounds that class set uses.
BALL_COLOURS = {"red": (225, 30, 30), "blue": (30, 70, 235)}
# "interaction": the image side (+1: right, +x) of each arm (the person faces the camera, so
# the left arm is on the image's right) and its motion: out towards that side over the head
# (one turn), then back (one turn the other way). The two motions are mirror images.
ARM_SIDES = {"left_arm": 1, "right_arm": -1}
INTERACTION_MOTIONS = {arm: (Rotation(arm, side, 1), Rotation(arm, -side, 1))
                       for arm, side in ARM_SIDES.items()}
INTERACTION_CLASSES = ("reach towards the ball", "reach away from the ball")
# "reach": the XOR cells plus 4 single-factor cells (module docstring).
ARMS_STILL = (Rotation("left_arm", 1, 0), Rotation("right_arm", 1, 0))
REACH_CLASSES = INTERACTION_CLASSES + (
    "arms still, ball on the left", "arms still, ball on the right",
    "left arm swings, no ball", "right arm swings, no ball")
_CELL_CLASSES = {"interaction": INTERACTION_CLASSES, "reach": REACH_CLASSES}
# "reach" draws a larger ball further out: with the demo's random frozen Ti/8 the standard
# ball's side was learnt in 1 of 3 seeds within the budget (docs/models.md).
REACH_BALL = dict(ball_radius=1 / 7, ball_offset=1.8)
_SIDE_NAMES = {1: "right", -1: "left"}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One kind of clip: what to render and its label. The records cycle through `cells`.

  motion: the limb rotations (the keypoints depend on nothing else of the cell).
  ball: RGB of the ball on the floor (None: no ball); ball_side: -1 / +1 its image side of
  the person, None: random per clip. draw_arms: False leaves the arms out of the frames, so
  the frames do not show which arm moves. ball_radius (of the frame size), ball_offset (in
  torso lengths from the hips, sideways): the ball's size and distance.
  """
  motion: tuple[Rotation, Rotation]
  label: int
  ball: tuple[int, int, int] | None = None
  ball_side: int | None = None
  draw_arms: bool = True
  ball_radius: float = 1 / 11
  ball_offset: float = 1.3

  def render_kwargs(self) -> dict:
    return dict(held_object=self.ball, ball_side=self.ball_side, draw_arms=self.draw_arms,
                ball_radius=self.ball_radius, ball_offset=self.ball_offset)

  def render(self, seed: tuple[int, ...], num_frames: int = 32, size: int = 128):
    return render_clip(self.motion, seed, num_frames, size, **self.render_kwargs())


def class_definitions(num_classes: int, class_set: str = "fine"
                      ) -> list[tuple[Rotation, Rotation]]:
  """The first `num_classes` classes of `class_set`.

  "fine" (see the module docstring): the first classes differ only in order
  and direction, the hardest case. "coarse": the same 192 classes enumerated
  the other way round, so the first 6 differ in which two limbs rotate, the
  next 6 in the count of turns...: learnable in minutes from a random backbone
  (the CPU demo), while "fine" needs a pretrained one.
  """
  if class_set not in CLASS_SETS:
    raise ValueError(f"class_set={class_set!r}, expected one of {CLASS_SETS}")
  if class_set in _CELL_CLASSES:
    raise ValueError(f"class_set {class_set!r}: a class is several motions, see cells()")
  if class_set == "pose_video":  # motion m = label // 2 (coarse order), ball = label % 2
    if num_classes % len(BALL_COLOURS):
      raise ValueError(f"num_classes={num_classes}: class_set 'pose_video' needs a multiple "
                       f"of {len(BALL_COLOURS)} (motions x ball colours)")
    motions = class_definitions(max(2, num_classes // len(BALL_COLOURS)), "coarse")
    return [m for m in motions[:num_classes // len(BALL_COLOURS)]
            for _ in BALL_COLOURS]
  out = []
  for (a, b), (ca, cb) in itertools.product(_PAIRS, _COUNTS):
    for first, second in (((a, ca), (b, cb)), ((b, cb), (a, ca))):
      for d1, d2 in itertools.product((1, -1), (1, -1)):
        out.append((Rotation(first[0], d1, first[1]),
                    Rotation(second[0], d2, second[1])))
  if class_set == "coarse":  # limb pair varies fastest, then counts, ...
    per_pair = len(out) // len(_PAIRS)
    out = [out[p * per_pair + k] for k in range(per_pair)
           for p in range(len(_PAIRS))]
  if not 2 <= num_classes <= len(out):
    raise ValueError(f"num_classes={num_classes}, expected 2..{len(out)}")
  return out[:num_classes]


def held_objects(num_classes: int, class_set: str = "fine"
                 ) -> list[tuple[int, int, int] | None]:
  """Per class, the RGB colour of the ball beside the person (None: no ball)."""
  if class_set in _CELL_CLASSES:
    raise ValueError(f"class_set {class_set!r}: a class has several cells, see cells()")
  if class_set != "pose_video":
    return [None] * num_classes
  colours = list(BALL_COLOURS.values())
  return [colours[i % len(colours)] for i in range(num_classes)]


def _cell_classes(num_classes: int, class_set: str) -> tuple[str, ...]:
  """The class names of "interaction" / "reach", after checking `num_classes` against them."""
  names = _CELL_CLASSES[class_set]
  if num_classes != len(names):
    raise ValueError(f"num_classes={num_classes}: class_set {class_set!r} has "
                     f"{len(names)} classes ({', '.join(names)})")
  return names


def cells(num_classes: int, class_set: str = "fine") -> list[Cell]:
  """The kinds of clip the records cycle through (clip i is cells[i % len(cells)]).

  One per class, class order, except "interaction": its 4 (arm, ball side) cells, label 0
  ("towards") when the moving arm is on the ball's side, else 1: the XOR of arm and side;
  and "reach": those 4, then arms still with the ball left (2) / right (3), then the left (4) /
  right (5) arm swinging with no ball.
  """
  if class_set in _CELL_CLASSES:
    _cell_classes(num_classes, class_set)
    ball = dict(ball=BALL_COLOURS["red"], draw_arms=False,
                **(REACH_BALL if class_set == "reach" else {}))
    out = [Cell(INTERACTION_MOTIONS[arm], label=int(ARM_SIDES[arm] != side), ball_side=side,
                **ball) for arm in ARM_SIDES for side in (1, -1)]
    if class_set == "reach":
      out += [Cell(ARMS_STILL, label=2 + (side > 0), ball_side=side, **ball) for side in (-1, 1)]
      out += [Cell(INTERACTION_MOTIONS[arm], label=4 + k, ball=None, draw_arms=False)
              for k, arm in enumerate(ARM_SIDES)]
    return out
  return [Cell(d, label=k, ball=b) for k, (d, b) in enumerate(
      zip(class_definitions(num_classes, class_set), held_objects(num_classes, class_set)))]


def factor_table(num_classes: int, class_set: str = "fine"
                 ) -> tuple[list[str], list[str], np.ndarray]:
  """(pose factor names, video factor names, joint (P, V, C)) of a class set's records.

  The pose factor is what the keypoints depend on (the motion); the video factor what the
  frames depend on: the ball and its side when fixed by the cell, and the motion too when the
  frames draw the moving limbs (so in "pose_video" the frames could in principle tell the
  motion: the figure is only muted). Clip nuisances (position, timing, background, a random
  ball side) are drawn independently of the cell and are not factors. For
  `data_prep.fusion_bounds`.
  """
  if class_set == "held_ball":
    raise ValueError("class_set 'held_ball' has no (pose, video) factor table: its ceilings are "
                     "data_prep.clutter.ceilings")
  cs = cells(num_classes, class_set)
  pose = [" then ".join(map(str, c.motion)) for c in cs]
  video = []
  for c, motion in zip(cs, pose):
    hidden = not c.draw_arms and all(r.limb.endswith("arm") for r in c.motion)
    parts = [] if hidden else [motion]  # the frames draw the moving limbs
    if c.ball is not None:
      parts.append(next((n for n, rgb in BALL_COLOURS.items() if rgb == c.ball), str(c.ball))
                   + " ball" + (f" on the {_SIDE_NAMES[c.ball_side]}" if c.ball_side else ""))
    video.append(", ".join(parts) or "-")
  pose_names, video_names = list(dict.fromkeys(pose)), list(dict.fromkeys(video))
  joint = np.zeros((len(pose_names), len(video_names), num_classes))
  for c, p, v in zip(cs, pose, video):
    joint[pose_names.index(p), video_names.index(v), c.label] += 1 / len(cs)
  return pose_names, video_names, joint


def class_names(num_classes: int, class_set: str = "fine") -> list[str]:
  if class_set in _CELL_CLASSES:
    return list(_cell_classes(num_classes, class_set))
  names = [f"{r1} then {r2}" for r1, r2 in class_definitions(num_classes, class_set)]
  if class_set == "pose_video":
    balls = list(BALL_COLOURS)
    names = [f"{n}, {balls[i % len(balls)]} ball" for i, n in enumerate(names)]
  return names


# Figure in body units (height ~1, y down, origin mid-hip); person faces the
# camera, so the person's left is image right (+x).
_TORSO = {0: (0.0, -0.40), 1: (0.025, -0.42), 2: (-0.025, -0.42),
          3: (0.05, -0.41), 4: (-0.05, -0.41), 5: (0.11, -0.28),
          6: (-0.11, -0.28), 11: (0.07, 0.0), 12: (-0.07, 0.0)}
_SEGMENTS = {"arm": (0.16, 0.15), "leg": (0.22, 0.22)}
_REST = {"left_arm": (0.25, 0.2), "right_arm": (-0.25, -0.2),
         "left_leg": (0.08, -0.05), "right_leg": (-0.08, 0.05)}


def _ease(u: np.ndarray) -> np.ndarray:
  """Smooth 0 -> 1 ramp (zero velocity at both ends)."""
  u = np.clip(u, 0.0, 1.0)
  return 0.5 - 0.5 * np.cos(np.pi * u)


def motion(label_def: tuple[Rotation, Rotation], num_frames: int, size: int,
           rng: np.random.Generator, pose_noise_px: float = 0.6) -> np.ndarray:
  """Joint positions (T, 17, 2) in pixels of a `size` x `size` canvas.

  Random per clip: position, scale, sway, timing of the two rotations.
  """
  t = np.arange(num_frames) / max(num_frames - 1, 1)
  # Timing: two windows covering most of the clip, in order.
  start = rng.uniform(0.0, 0.08)
  d1, gap, d2 = rng.uniform(0.36, 0.46), rng.uniform(0.0, 0.08), rng.uniform(
      0.36, 0.46)
  windows = ((start, start + d1), (start + d1 + gap, start + d1 + gap + d2))
  angles = {limb: np.full(num_frames, _REST[limb][0]) for limb in LIMBS}
  for rot, (w0, w1) in zip(label_def, windows):
    angles[rot.limb] = angles[rot.limb] + rot.direction * 2 * np.pi * (
        rot.count * _ease((t - w0) / (w1 - w0)))

  scale = rng.uniform(0.58, 0.7) * size  # Pixels per body unit.
  cx = rng.uniform(0.4, 0.6) * size
  cy = rng.uniform(0.52, 0.6) * size
  sway = rng.uniform(0, 0.025) * size * np.sin(
      2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 2 * np.pi))
  lean = rng.uniform(-0.08, 0.08)

  pts = np.zeros((num_frames, 17, 2))
  for j, (x, y) in _TORSO.items():
    pts[:, j] = (x + lean * -y, y)
  for limb, (root, mid, end) in _LIMB_JOINTS.items():
    l1, l2 = _SEGMENTS[limb.split("_")[1]]
    th, bend = angles[limb], _REST[limb][1]
    # Angle from straight down, positive towards +x: direction (sin, cos).
    pts[:, mid] = pts[:, root] + l1 * np.stack([np.sin(th), np.cos(th)], -1)
    pts[:, end] = pts[:, mid] + l2 * np.stack(
        [np.sin(th + bend), np.cos(th + bend)], -1)
  pts = pts * scale + np.stack([cx + sway, np.full_like(sway, cy)], -1)[:, None]
  pts += rng.normal(0.0, pose_noise_px, pts.shape)
  return pts.astype(np.float32)


def _background(size: int, rng: np.random.Generator, muted: bool = False) -> np.ndarray:
  """(size, size, 3) uint8: a colour gradient, a few shapes, pixel noise.

  muted: grey-ish colours only (saturation <= ~0.25), so that a saturated object stands out.
  """
  def colour():
    c = rng.uniform(0, 255, 3)
    return c.mean() + 0.25 * (c - c.mean()) if muted else c

  c0, c1 = colour(), colour()
  ang = rng.uniform(0, 2 * np.pi)
  yy, xx = np.mgrid[0:size, 0:size] / size
  g = (np.cos(ang) * xx + np.sin(ang) * yy)
  g = (g - g.min()) / (np.ptp(g) + 1e-6)
  img = Image.fromarray((c0 + (c1 - c0) * g[..., None]).astype(np.uint8))
  draw = ImageDraw.Draw(img)
  for _ in range(rng.integers(3, 8)):
    x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
    w, h = rng.uniform(0.05, 0.4, 2) * size
    color = tuple(int(c) for c in colour())
    shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
    shape((x0, y0, x0 + w, y0 + h), fill=color)
  arr = np.asarray(img).astype(np.int16) + rng.integers(-8, 9, (size, size, 3))
  return np.clip(arr, 0, 255).astype(np.uint8)


def render_clip(label_def: tuple[Rotation, Rotation], seed: tuple[int, ...],
                num_frames: int = 32, size: int = 128, fps: float = 16.0,
                pose_noise_px: float = 0.6, jitter_px: int = 4,
                held_object: tuple[int, int, int] | None = None,
                ball_side: int | None = None, draw_arms: bool = True,
                ball_radius: float = 1 / 11, ball_offset: float = 1.3
               ) -> tuple[video_lib.DecodedVideo, np.ndarray]:
  """One clip: frames and the exact keypoints of the drawn figure.

  held_object: RGB of a ball lying still beside the person (on muted backgrounds); the
  keypoints do not change. ball_side: -1 / +1 puts it on the image's left / right of the
  hips (`ball_offset` torso lengths out; radius `ball_radius` x size), None picks a side at
  random. draw_arms=False leaves elbows and wrists out of the
  frames (the keypoints keep them), so the frames do not depend on the arms' motion.

  Returns:
    (video, keypoints (T, 17, 2) float32 in frame pixels).
  """
  rng = np.random.default_rng(seed)
  pad = jitter_px
  canvas = size + 2 * pad
  pts = motion(label_def, num_frames, size, rng, pose_noise_px) + pad
  bg = _background(canvas, rng, muted=held_object is not None)
  # Camera jitter: a clipped random walk of the crop window.
  steps = rng.normal(0.0, 0.8, (num_frames, 2))
  offset = np.clip(np.cumsum(steps, 0) + pad, 0, 2 * pad).round().astype(int)
  color = rng.integers(0, 256, 3)
  if held_object is not None:  # muted figure too: the ball is the only saturated colour
    color = color.mean() + 0.25 * (color - color.mean())
  color = tuple(int(c) for c in color)
  outline = tuple(255 - c for c in color)
  width = max(2, round(size / 40 * rng.uniform(0.8, 1.3)))
  head_r = size / 30
  if held_object is not None:  # beside the hips at foot level, left or right (frame 0 pose)
    hip = (pts[0, 11] + pts[0, 12]) / 2
    torso = np.linalg.norm(hip - (pts[0, 5] + pts[0, 6]) / 2)
    side = rng.choice((-1.0, 1.0)) if ball_side is None else float(ball_side)
    ball = hip + torso * np.array([side * ball_offset, 1.35])
    ball_r = size * ball_radius
  bones = SK.bones if draw_arms else [
      bone for bone in SK.bones if not set(bone) & _ARM_DISTAL]
  frames = np.empty((num_frames, size, size, 3), np.uint8)
  kps = np.empty((num_frames, 17, 2), np.float32)
  for i in range(num_frames):
    ox, oy = offset[i]
    img = Image.fromarray(bg[oy:oy + size, ox:ox + size])
    draw = ImageDraw.Draw(img)
    p = pts[i] - (ox, oy)
    for a, b in bones:
      draw.line((*p[a], *p[b]), fill=outline, width=width + 2)
    for a, b in bones:
      draw.line((*p[a], *p[b]), fill=color, width=width)
    nx, ny = p[0]
    draw.ellipse((nx - head_r, ny - head_r, nx + head_r, ny + head_r),
                 fill=color, outline=outline)
    if held_object is not None:  # the ball lies still on the floor beside the person
      bx, by = ball - (ox, oy)
      draw.ellipse((bx - ball_r, by - ball_r, bx + ball_r, by + ball_r), fill=held_object,
                   outline=(0, 0, 0))
    frames[i] = np.asarray(img)
    kps[i] = p
  video = video_lib.DecodedVideo(
      frames=frames, frame_indices=np.arange(num_frames, dtype=np.int32),
      fps=fps, source_fps=fps, num_source_frames=num_frames,
      original_size=(size, size))
  return video, kps

