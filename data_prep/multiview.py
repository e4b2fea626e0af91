"""Multi-view episodes: the on-disk format, and a built-in synthetic multi-view world.

On-disk format (one folder per episode; what `data_prep.datasets.multiview.MultiViewEpisodes`
reads; simulator renders such as PyBullet/robomimic or 3DTRL-style frame folders converted to
videos fit it):

    <manual_dir>/<split>/<episode>/view_0.mp4              synchronised videos, same frame count
    <manual_dir>/<split>/<episode>/view_0_keypoints.json   per view
    ...                                                     (split: train | validation | test)

    view_k_keypoints.json = {"width": W, "height": H,       # pixel space of the coordinates
                             "keypoints": [[[x, y], ...],    # T frames x J joints
                                           ...]}             # null / negative = not visible

The synthetic world: an arm of 2-4 links on a fixed base (z up) moves its yaw and pitch joints
along random smooth trajectories (sums of low-frequency sinusoids); V = 2-4 pinhole cameras look
at it from different azimuths/elevations, each over its own random background. Joints are
projected exactly (pixel i covers [i, i+1)), links drawn far-to-near as thick lines, then the
joints as discs in per-joint colours, so a keypoint lands on its joint's disc.

    frames, kps = render_episode(WorldConfig(num_views=3), seed=(0, 7))
    # frames (V, T, S, S, 3) uint8, kps (V, T, J, 2) float32, J = num_links + 1
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from PIL import Image, ImageDraw

from data_prep import synthetic
from data_prep import video as video_lib

# Distinct, saturated colours: links, then joints (base first). Never random, so every view
# and episode shows the same arm.
LINK_COLORS = ((230, 60, 40), (40, 160, 230), (250, 200, 30), (150, 60, 220))
JOINT_COLORS = ((255, 255, 255), (20, 20, 20), (255, 0, 255), (0, 255, 120), (255, 140, 0))


BACKGROUNDS = ("shared", "per_camera", "per_episode")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """The synthetic world. Sizes in world units; the arm's base is at the origin."""
  num_views: int = 3
  num_links: int = 3
  num_frames: int = 40
  image_size: int = 64
  fps: float = 10.0
  seed: int = 0                 # fixes the camera rig and link lengths
  camera_distance: float = 3.6
  focal: float = 1.0            # focal length in units of image_size
  # "shared": one fixed scene behind the arm for every camera (a room; only the viewpoint
  # differs: the easiest); "per_camera": each camera films its own fixed backdrop;
  # "per_episode": a new random background for every episode and view (hardest).
  background: str = "shared"

  def __post_init__(self):
    if not 2 <= self.num_views <= 4:
      raise ValueError(f"WorldConfig.num_views={self.num_views}: expected 2..4")
    if not 2 <= self.num_links <= 4:
      raise ValueError(f"WorldConfig.num_links={self.num_links}: expected 2..4")
    if self.background not in BACKGROUNDS:
      raise ValueError(f"WorldConfig.background={self.background!r}: expected one of "
                       f"{BACKGROUNDS}")

  @property
  def num_joints(self) -> int:
    return self.num_links + 1


def link_lengths(cfg: WorldConfig) -> np.ndarray:
  rng = np.random.default_rng((cfg.seed, 101))
  lengths = rng.uniform(0.6, 1.0, cfg.num_links)
  return lengths * 1.7 / lengths.sum()   # total reach 1.7


def joint_trajectory(cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
  """(T, 1 + L) smooth joint angles: base yaw, then each link's pitch relative to the last."""
  u = np.linspace(0.0, 1.0, cfg.num_frames)[:, None]
  def smooth(center, amp, n):
    freq = rng.uniform(0.3, 1.3, (3, n))
    phase = rng.uniform(0, 2 * np.pi, (3, n))
    w = rng.uniform(0.3, 1.0, (3, n))
    w = w / w.sum(0)
    return center + amp * sum(w[k] * np.sin(2 * np.pi * freq[k] * u + phase[k])
                               for k in range(3))
  yaw = smooth(rng.uniform(-np.pi, np.pi, 1), np.pi, 1)
  first = smooth(0.9, 0.5, 1)                                # link 1: 0.4-1.4 rad up
  rest = smooth(-0.3, 0.9, cfg.num_links - 1)                # relative bends
  return np.concatenate([yaw, first, rest], 1)


def forward_kinematics(angles: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """(T, 1 + L) angles -> (T, L + 1, 3) world positions of base, joints, tip."""
  t = angles.shape[0]
  yaw, pitch = angles[:, 0], np.cumsum(angles[:, 1:], axis=1)
  pts = [np.zeros((t, 3))]
  for i, length in enumerate(lengths):
    d = np.stack([np.cos(pitch[:, i]) * np.cos(yaw), np.cos(pitch[:, i]) * np.sin(yaw),
                  np.sin(pitch[:, i])], -1)
    pts.append(pts[-1] + length * d)
  return np.stack(pts, 1)


def cameras(cfg: WorldConfig, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per view (position (3,), rotation (3, 3) rows right/up/forward): the rig of `cfg.seed`
  (azimuths spread around the arm), jittered per episode by `rng`."""
  rig = np.random.default_rng((cfg.seed, 202))
  az0 = rig.uniform(0, 2 * np.pi)
  out = []
  for v in range(cfg.num_views):
    az = az0 + 2 * np.pi * v / cfg.num_views + rig.uniform(-0.3, 0.3) + rng.uniform(-0.1, 0.1)
    el = rig.uniform(0.1, 0.7) + rng.uniform(-0.05, 0.05)
    r = cfg.camera_distance * (1 + rng.uniform(-0.05, 0.05))
    target = np.array([0.0, 0.0, 0.6])
    pos = target + r * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    fwd = (target - pos) / np.linalg.norm(target - pos)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    out.append((pos, np.stack([right, up, fwd])))
  return out


def project(points: np.ndarray, camera, cfg: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
  """(..., 3) world -> ((..., 2) pixel (x, y), (...,) depth); pixel i covers [i, i+1)."""
  pos, rot = camera
  c = (points - pos) @ rot.T
  f = cfg.focal * cfg.image_size
  half = cfg.image_size / 2
  xy = np.stack([half + f * c[..., 0] / c[..., 2], half - f * c[..., 1] / c[..., 2]], -1)
  return xy.astype(np.float32), c[..., 2]


def joint_radius(depth: float, cfg: WorldConfig) -> float:
  return max(2.5, 0.06 * cfg.focal * cfg.image_size / depth)


def render_view(world_pts: np.ndarray, camera, background: np.ndarray, cfg: WorldConfig
                ) -> tuple[np.ndarray, np.ndarray]:
  """(T, J, 3) world joints -> frames (T, S, S, 3) uint8 and keypoints (T, J, 2)."""
  kps, depth = project(world_pts, camera, cfg)
  frames = np.empty((len(kps), cfg.image_size, cfg.image_size, 3), np.uint8)
  f = cfg.focal * cfg.image_size
  for t in range(len(kps)):
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    p, z = kps[t], depth[t]
    for i in np.argsort(-(z[:-1] + z[1:])):                # links far to near
      width = max(2, round(0.14 * f / ((z[i] + z[i + 1]) / 2)))
      draw.line((*p[i], *p[i + 1]), fill=LINK_COLORS[i], width=width)
    for j in np.argsort(-z):                                # joint discs far to near, on top
      r = joint_radius(z[j], cfg)
      draw.ellipse((p[j, 0] - r, p[j, 1] - r, p[j, 0] + r, p[j, 1] + r), fill=JOINT_COLORS[j])
    frames[t] = np.asarray(img)
  return frames, kps


def render_episode(cfg: WorldConfig, seed: tuple[int, ...]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One episode: frames (V, T, S, S, 3) uint8, keypoints (V, T, J, 2), depth (V, T, J)."""
  rng = np.random.default_rng(seed)
  pts = forward_kinematics(joint_trajectory(cfg, rng), link_lengths(cfg))
  frames, kps, depth = [], [], []
  for v, cam in enumerate(cameras(cfg, rng)):
    bg_rng = {"shared": np.random.default_rng((cfg.seed, 303)),
              "per_camera": np.random.default_rng((cfg.seed, 303, v)),
              "per_episode": rng}[cfg.background]
    bg = synthetic._background(cfg.image_size, bg_rng)  # pylint: disable=protected-access
    fr, kp = render_view(pts, cam, bg, cfg)
    frames.append(fr)
    kps.append(kp)
    depth.append(project(pts, cam, cfg)[1])
  return np.stack(frames), np.stack(kps), np.stack(depth).astype(np.float32)


# ------------------------------------------------------------------ episode folders


def write_episode(folder: str | os.PathLike, frames: np.ndarray, keypoints: np.ndarray,
                  fps: float = 10.0) -> None:
  """Writes one episode in the on-disk format: `frames (V, T, H, W, 3)`, `keypoints
  (V, T, J, 2)` (NaN = not visible)."""
  os.makedirs(folder, exist_ok=True)
  for v in range(len(frames)):
    video_lib.write_video(os.path.join(folder, f"view_{v}.mp4"), frames[v], fps=fps)
    kp = [[None if not np.all(np.isfinite(xy)) else [float(xy[0]), float(xy[1])]
           for xy in frame] for frame in keypoints[v]]
    with open(os.path.join(folder, f"view_{v}_keypoints.json"), "w") as f:
      json.dump({"width": int(frames.shape[3]), "height": int(frames.shape[2]),
                 "keypoints": kp}, f)


def read_keypoints(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
  """A `view_k_keypoints.json` -> (keypoints (T, J, 2), score (T, J), (h, w)).

  Raises ValueError naming the file and the field when it does not follow the format.
  """
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(data, dict) or not {"width", "height", "keypoints"} <= set(data):
    raise ValueError(f"{path}: expected an object with fields width, height, keypoints "
                     "(T x J x [x, y])")
  frames = data["keypoints"]
  if not isinstance(frames, list) or not frames or not all(isinstance(fr, list) for fr in frames):
    raise ValueError(f"{path}: 'keypoints' must be a non-empty list of frames, each a list of "
                     "J [x, y] pairs (or null)")
  j = len(frames[0])
  kp = np.zeros((len(frames), j, 2), np.float32)
  score = np.zeros((len(frames), j), np.float32)
  for t, fr in enumerate(frames):
    if len(fr) != j:
      raise ValueError(f"{path}: frame {t} has {len(fr)} keypoints, frame 0 has {j}")
    for k, xy in enumerate(fr):
      if xy is None:
        continue
      if not (isinstance(xy, list) and len(xy) == 2):
        raise ValueError(f"{path}: keypoints[{t}][{k}] = {xy!r}; expected [x, y] or null")
      kp[t, k] = xy
      score[t, k] = float(xy[0] >= 0 and xy[1] >= 0)
  return kp, score, (int(data["height"]), int(data["width"]))
