"""Joint layouts of the pose formats pgvt_jax reads, declared in one place.

Every module that needs joint names, left/right pairs (horizontal flip) or bones
(drawing, synthetic figures) looks them up here by the layout name that the
record builders store in their DatasetInfo metadata:

  sk = skeletons.get("coco17")              # sk.num_joints == 17
  kp_flipped = kp[..., sk.flip_permutation, :]  # (..., V, 2): swap left/right

Layouts:
  coco17       COCO keypoints (mmaction2/PoseC3D pickles: Diving48, FineGym, K400,
               NTU-60 2D HRNet poses; the synthetic dataset).
  ntu25        Kinect v2 joints of NTU RGB+D (`rgb_body0` colour-space skeletons).
  smarthome13  LCR-Net++ 13-joint output used by Toyota Smarthome's pose files.
  openpose18   OpenPose COCO-18 (N-UCLA pose JSON in PAAB/PAAT's release).
  arm3..arm5   robot arms of 2-4 links: base, joint_1.., tip (multi-view alignment).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class Skeleton:
  """A joint layout.

  Attributes:
    name: layout name stored in the records' metadata, e.g. "coco17".
    joints: joint names in storage order; left/right joints start with
      "left_"/"right_".
    flip_pairs: (left, right) index pairs swapped by a horizontal flip.
    bones: (parent, child) index pairs, for drawing.
  """
  name: str
  joints: tuple[str, ...]
  flip_pairs: tuple[tuple[int, int], ...]
  bones: tuple[tuple[int, int], ...]

  @property
  def num_joints(self) -> int:
    return len(self.joints)

  @functools.cached_property
  def flip_permutation(self) -> np.ndarray:
    """(V,) int: index of each joint's mirror partner (itself if central).

    `kp[..., perm, :]` relabels keypoints after the image is mirrored, so the
    point that was the left wrist is stored as the right wrist.
    """
    perm = np.arange(self.num_joints)
    for a, b in self.flip_pairs:
      perm[a], perm[b] = b, a
    return perm

  def index(self, joint: str) -> int:
    return self.joints.index(joint)


def _check(sk: Skeleton) -> Skeleton:
  """Validates a layout at import time: pairs must be left/right mirrors."""
  v = sk.num_joints
  if len(set(sk.joints)) != v:
    raise ValueError(f"skeleton {sk.name!r}: duplicate joint names")
  seen = set()
  for a, b in sk.flip_pairs:
    if not (0 <= a < v and 0 <= b < v) or a in seen or b in seen:
      raise ValueError(f"skeleton {sk.name!r}: bad flip pair {(a, b)}")
    seen.update((a, b))
    la, rb = sk.joints[a], sk.joints[b]
    if not (la.startswith("left_") and rb == "right_" + la[len("left_"):]):
      raise ValueError(f"skeleton {sk.name!r}: flip pair {(a, b)} = "
                       f"({la}, {rb}) is not a left/right mirror")
  sided = {i for i, n in enumerate(sk.joints)
           if n.startswith(("left_", "right_"))}
  if sided != seen:
    raise ValueError(f"skeleton {sk.name!r}: sided joints without a flip "
                     f"partner: {sorted(sided - seen)}")
  for a, b in sk.bones:
    if not (0 <= a < v and 0 <= b < v):
      raise ValueError(f"skeleton {sk.name!r}: bad bone {(a, b)}")
  return sk


# COCO-17 (FACTS.md): nose, L/R eye, L/R ear, L/R shoulder, L/R elbow,
# L/R wrist, L/R hip, L/R knee, L/R ankle.
COCO17 = _check(Skeleton(
    name="coco17",
    joints=("nose", "left_eye", "right_eye", "left_ear", "right_ear",
            "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
            "left_wrist", "right_wrist", "left_hip", "right_hip",
            "left_knee", "right_knee", "left_ankle", "right_ankle"),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14),
                (15, 16)),
    bones=((0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8),
           (8, 10), (5, 11), (6, 12), (11, 12), (11, 13), (13, 15), (12, 14),
           (14, 16)),
))

# NTU RGB+D / Kinect v2, 0-indexed (the dataset paper numbers them 1..25).
NTU25 = _check(Skeleton(
    name="ntu25",
    joints=("spine_base", "spine_mid", "neck", "head",
            "left_shoulder", "left_elbow", "left_wrist", "left_hand",
            "right_shoulder", "right_elbow", "right_wrist", "right_hand",
            "left_hip", "left_knee", "left_ankle", "left_foot",
            "right_hip", "right_knee", "right_ankle", "right_foot",
            "spine_shoulder", "left_hand_tip", "left_thumb",
            "right_hand_tip", "right_thumb"),
    flip_pairs=((4, 8), (5, 9), (6, 10), (7, 11), (12, 16), (13, 17),
                (14, 18), (15, 19), (21, 23), (22, 24)),
    bones=((0, 1), (1, 20), (20, 2), (2, 3), (20, 4), (4, 5), (5, 6), (6, 7),
           (7, 21), (6, 22), (20, 8), (8, 9), (9, 10), (10, 11), (11, 23),
           (10, 24), (0, 12), (12, 13), (13, 14), (14, 15), (0, 16), (16, 17),
           (17, 18), (18, 19)),
))

# LCR-Net++'s 13-joint order, as in Smarthome's pose JSON ("njts": 13,
# "pose2d": [x0..x12, y0..y12]). Verified against LCR-Net's own drawing code,
# `display_poses` in naver/lcrnet-v2-improved-ppi demo.py (the same function is
# in the Toyota Smarthome pose visualisation): for njts == 13 it draws the
# "left" bones (9,11) (7,9) (1,3) (3,5), the "right" bones (0,2) (2,4) (8,10)
# (6,8), the torso (4,5) (10,11) (hips, shoulders) and the head at 12, reading
# x = pose2d[i], y = pose2d[i + njts]. So even indices are the right side, odd
# the left: ankles 0/1, knees 2/3, hips 4/5, wrists 6/7, elbows 8/9, shoulders
# 10/11 (chains ankle-knee-hip and wrist-elbow-shoulder), head 12.
SMARTHOME13 = _check(Skeleton(
    name="smarthome13",
    joints=("right_ankle", "left_ankle", "right_knee", "left_knee",
            "right_hip", "left_hip", "right_wrist", "left_wrist",
            "right_elbow", "left_elbow", "right_shoulder", "left_shoulder",
            "head"),
    flip_pairs=((1, 0), (3, 2), (5, 4), (7, 6), (9, 8), (11, 10)),
    bones=((12, 10), (12, 11), (10, 11), (10, 8), (8, 6), (11, 9), (9, 7),
           (10, 4), (11, 5), (4, 5), (4, 2), (2, 0), (5, 3), (3, 1)),
))

# OpenPose COCO-18: COCO-17 plus a neck, in OpenPose's own order.
OPENPOSE18 = _check(Skeleton(
    name="openpose18",
    joints=("nose", "neck", "right_shoulder", "right_elbow", "right_wrist",
            "left_shoulder", "left_elbow", "left_wrist", "right_hip",
            "right_knee", "right_ankle", "left_hip", "left_knee",
            "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear"),
    flip_pairs=((5, 2), (6, 3), (7, 4), (11, 8), (12, 9), (13, 10), (15, 14),
                (17, 16)),
    bones=((0, 1), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8),
           (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (0, 14), (14, 16),
           (0, 15), (15, 17)),
))

# Robot arms of 2-4 links (multi-view alignment, data_prep/multiview.py): base, joints, tip.
ARMS = tuple(_check(Skeleton(
    name=f"arm{n + 1}",
    joints=("base",) + tuple(f"joint_{i}" for i in range(1, n)) + ("tip",),
    flip_pairs=(), bones=tuple((i, i + 1) for i in range(n)))) for n in (2, 3, 4))

SKELETONS: dict[str, Skeleton] = {
    sk.name: sk for sk in (COCO17, NTU25, SMARTHOME13, OPENPOSE18) + ARMS}


def get(name: str) -> Skeleton:
  """Returns the layout called `name` (e.g. "coco17"); raises on unknown names."""
  try:
    return SKELETONS[name]
  except KeyError:
    raise ValueError(f"unknown skeleton layout {name!r}; known layouts: "
                     f"{sorted(SKELETONS)}") from None
