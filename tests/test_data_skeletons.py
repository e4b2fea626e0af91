"""Joint layouts: sizes, mirror pairs, lookup."""

import numpy as np
import pytest

from data_prep import skeletons


@pytest.mark.parametrize("name,num_joints", [
    ("coco17", 17), ("ntu25", 25), ("smarthome13", 13), ("openpose18", 18)])
def test_layout_sizes_and_flip_is_an_involution(name, num_joints):
  sk = skeletons.get(name)
  assert sk.num_joints == num_joints
  perm = sk.flip_permutation
  np.testing.assert_array_equal(perm[perm], np.arange(num_joints))
  for j, partner in enumerate(perm):
    a, b = sk.joints[j], sk.joints[partner]
    if a.startswith("left_"):
      assert b == "right_" + a[5:]
    elif a.startswith("right_"):
      assert b == "left_" + a[6:]
    else:
      assert partner == j


def test_coco17_matches_facts():
  sk = skeletons.COCO17
  assert sk.joints[0] == "nose" and sk.joints[9] == "left_wrist"
  assert sk.flip_pairs == tuple((i, i + 1) for i in range(1, 17, 2))


def test_ntu25_kinect_indices():
  sk = skeletons.NTU25
  # Kinect v2, 1-indexed: 5 left shoulder, 9 right shoulder, 21 spine shoulder.
  assert sk.index("left_shoulder") == 4 and sk.index("right_shoulder") == 8
  assert sk.index("spine_shoulder") == 20


def test_smarthome13_matches_lcrnet_drawing_code():
  # LCR-Net's display_poses (naver/lcrnet-v2-improved-ppi demo.py), njts == 13: bones it
  # calls "left" and "right", the torso lines (4,5) (10,11), the head at 12.
  lcr_left = [(9, 11), (7, 9), (1, 3), (3, 5)]
  lcr_right = [(0, 2), (2, 4), (8, 10), (6, 8)]
  sk = skeletons.SMARTHOME13
  for bones, side in ((lcr_left, "left_"), (lcr_right, "right_")):
    for a, b in bones:
      assert sk.joints[a].startswith(side) and sk.joints[b].startswith(side)
  # Limb chains end at the torso joints: ankle-knee-hip, wrist-elbow-shoulder.
  for chain in ((0, 2, 4), (1, 3, 5)):
    assert [sk.joints[i].split("_")[1] for i in chain] == ["ankle", "knee", "hip"]
  for chain in ((6, 8, 10), (7, 9, 11)):
    assert [sk.joints[i].split("_")[1] for i in chain] == ["wrist", "elbow", "shoulder"]
  assert sk.joints[12] == "head"
  np.testing.assert_array_equal(sk.flip_permutation, [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12])


def test_unknown_layout_names_known_ones():
  with pytest.raises(ValueError, match="coco17"):
    skeletons.get("coco18")


def test_bad_layout_is_refused():
  with pytest.raises(ValueError, match="not a left/right mirror"):
    skeletons._check(skeletons.Skeleton(
        "bad", ("left_a", "right_b"), ((0, 1),), ()))
