"""Your own videos: a CSV or JSON list of (video, label[, keypoint file])."""

from __future__ import annotations

import functools
import json
import os

from data_prep import builder as builder_lib
from data_prep import poses as poses_lib
from data_prep.datasets import common
from data_prep import skeletons

_SPLITS = ("train", "val", "test")


class CustomVideos(builder_lib.VideoPoseBuilder):
  """A user dataset; one config per joint layout of its keypoint files."""

  name = "custom_videos"
  BUILDER_CONFIGS = [
      builder_lib.DatasetConfig(name=name, joint_layout=name,
                                description=f"keypoints in {name} order")
      for name in ("coco17", "openpose18", "smarthome13", "ntu25")
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  manual_dir holds one list per split, train/val/test .csv or .json:
    CSV  rows "video,label[,keypoints]" (header optional)
    JSON [{"video": ..., "label": ..., "keypoints": ...}, ...]
  Paths are relative to manual_dir. label is a class index or a class name.
  Keypoint files (optional per video; without one the video is kept with no
  persons, or skipped/extracted, by --missing_pose):
    .pkl   an mmaction2 annotation dict (keypoint (M,T,V,2), keypoint_score)
           or a whole mmaction2 pose pickle (matched by frame_dir = video stem)
    .npz   keypoint (M,T,V,2) [, keypoint_score (M,T,V), img_shape (h,w)]
    .json  PAAB/PAAT layout {"njts": V, "frames": [[{"pose2d": [...]}]]}
  Keypoints are pixels of the source video (or of img_shape), pose frame t =
  video frame t. classes.txt (optional): class names, one a line, in label
  order; default: the sorted label names, or class_0.. for integer labels.
  """

  def _read_dataset(self, manual_dir):
    num_joints = skeletons.get(self.builder_config.joint_layout).num_joints
    raw = {}
    for split in _SPLITS:
      for ext in (".csv", ".json"):
        path = os.path.join(manual_dir, split + ext)
        if os.path.isfile(path):
          raw[split] = (path, _read_list(path))
    if not raw:
      raise FileNotFoundError(
          f"no train/val/test .csv/.json in {manual_dir} (see "
          f"CustomVideos.MANUAL_DOWNLOAD_INSTRUCTIONS)")
    labels = [r[1] for _, rows in raw.values() for r in rows if len(r) > 1]
    names = _class_names(manual_dir, labels)
    index = {n: i for i, n in enumerate(names)}
    splits = {}
    for split, (path, rows) in raw.items():
      items = []
      for i, row in enumerate(rows):
        label = _label(row[1], index, len(names)) if len(row) > 1 else -1
        if label < 0 or not row[0]:
          items.append(builder_lib.VideoItem(
              f"{split}:{i + 1}", -1, None,
              error=f"{path} entry {i + 1}: {row!r}, expected video, label "
                    f"(index or one of {len(names)} names)[, keypoints]"))
          continue
        video = os.path.join(manual_dir, row[0])
        vid = os.path.splitext(row[0])[0]
        pose = None
        if len(row) > 2 and row[2]:
          pose = functools.partial(
              poses_lib.load_pose_file, os.path.join(manual_dir, row[2]),
              num_joints, os.path.basename(vid))
        items.append(builder_lib.VideoItem(vid, label, video, pose=pose))
      splits[split] = items
    return names, splits


def _read_list(path: str) -> list[list[str]]:
  if path.endswith(".json"):
    with open(path, encoding="utf-8") as f:
      entries = json.load(f)
    if not isinstance(entries, list):
      raise ValueError(f"{path}: expected a list of {{video, label, "
                       f"keypoints}} objects")
    return [[str(e.get("video", "")), str(e.get("label", "")),
             str(e.get("keypoints") or "")] if isinstance(e, dict) else []
            for e in entries]
  rows = common.read_csv_rows(path)
  if rows and [c.lower() for c in rows[0][:2]] == ["video", "label"]:
    rows = rows[1:]
  return rows


def _class_names(manual_dir: str, labels: list[str]) -> list[str]:
  path = os.path.join(manual_dir, "classes.txt")
  if os.path.isfile(path):
    return builder_lib.read_lines(path)
  ints = [int(x) for x in labels if x.lstrip("-").isdigit()]
  if len(ints) == len(labels):
    return [f"class_{i}" for i in range(max(ints, default=-1) + 1)]
  return sorted({x for x in labels if not x.lstrip("-").isdigit()})


def _label(value: str, index: dict[str, int], n: int) -> int:
  if value in index:
    return index[value]
  if value.lstrip("-").isdigit() and 0 <= int(value) < n:
    return int(value)
  return -1
