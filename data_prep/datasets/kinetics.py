"""Kinetics-400 from the official CSVs, with mmaction2/pyskl 2D poses."""

from __future__ import annotations

import csv
import functools
import os

from data_prep import builder as builder_lib
from data_prep import poses as poses_lib
from data_prep.datasets import common

_POSE_FILES = ("k400_2d.pkl", "k400_hrnet.pkl")
_SPLIT_FILES = (("train", ("train.csv", "kinetics_400_train.csv")),
                ("val", ("validate.csv", "val.csv", "kinetics_400_val.csv")),
                ("test", ("test.csv", "kinetics_400_test.csv")))
_CLASS_FILES = ("label_map_k400.txt", "classes.txt")


class Kinetics400(builder_lib.VideoPoseBuilder):
  """Kinetics-400 clips; splits train / val (/ test when its CSV has labels)."""

  name = "kinetics400"
  BUILDER_CONFIGS = [
      builder_lib.DatasetConfig(name="default", joint_layout="coco17",
                                description="400 classes, COCO-17 poses"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put the Kinetics-400 files in manual_dir:
    train.csv, validate.csv [, test.csv]
        official CSVs: label,youtube_id,time_start,time_end,split[,is_cc]
    videos anywhere below manual_dir, named <youtube_id>_<start:06d>_<end:06d>
        .mp4 (the official downloader's names) or <youtube_id>.mp4
    label_map_k400.txt   (optional) class names in label order; default: the
                         sorted labels of the CSVs (the official order)
    k400_2d.pkl          (optional) mmaction2/pyskl skeleton index
    kpfiles/<frame_dir>.pkl  its keypoint files (or the index's `raw_file`)
  """

  PICKLED_ARGS = ("box_thr",)

  def __init__(self, *, box_thr: float = 0.5, **kwargs):
    self.box_thr = box_thr  # pyskl drops detections with box_score < 0.5.
    super().__init__(**kwargs)

  def _read_dataset(self, manual_dir):
    rows = {}
    for split, candidates in _SPLIT_FILES:
      path = common.find_file(manual_dir, candidates)
      if path:
        rows[split] = (path, _read_csv(path))
    if "train" not in rows:
      raise FileNotFoundError(
          f"no train.csv under {manual_dir} (see "
          f"Kinetics400.MANUAL_DOWNLOAD_INSTRUCTIONS)")
    class_file = common.find_file(manual_dir, _CLASS_FILES)
    if class_file:
      names = builder_lib.read_lines(class_file)
    else:
      names = sorted({r["label"] for _, rs in rows.values() for r in rs
                      if r.get("label")})
    index = {name: i for i, name in enumerate(names)}
    videos = builder_lib.index_videos(manual_dir)
    pose_db = common.MmactionPoses(common.find_file(manual_dir, _POSE_FILES))
    splits = {}
    for split, (path, split_rows) in rows.items():
      if split == "test" and not any(r.get("label") for r in split_rows):
        continue  # Test labels were withheld in older releases.
      items = []
      for i, r in enumerate(split_rows):
        ytid = r.get("youtube_id", "")
        try:
          clip = f"{ytid}_{int(float(r['time_start'])):06d}_" \
                 f"{int(float(r['time_end'])):06d}"
        except (KeyError, TypeError, ValueError):
          clip = ""
        label = index.get(r.get("label", ""), -1)
        if not ytid or not clip or label < 0:
          items.append(builder_lib.VideoItem(
              ytid or f"{os.path.basename(path)}:{i + 2}", -1, None,
              error=f"{path} row {i + 2}: {r!r}, expected label (one of the "
                    f"{len(names)} classes),youtube_id,time_start,time_end"))
          continue
        # Keyed by the file found: <clip>.mp4 or <youtube_id>.mp4.
        vid = clip if clip in videos or ytid not in videos else ytid
        items.append(builder_lib.VideoItem(
            vid, label, videos.get(vid, os.path.join(manual_dir,
                                                     clip + ".mp4")),
            pose=self._pose_loader(pose_db, manual_dir, clip, ytid)))
      splits[split] = items
    return names, splits

  def _pose_loader(self, pose_db, manual_dir, clip, ytid):
    for key in (clip, ytid):
      ann = pose_db.by_id.get(key)
      if ann is None:
        continue
      if "keypoint" in ann:  # Uncompressed (PoseC3D layout) index.
        return pose_db.loader(key)
      return functools.partial(self._load_compressed, ann, manual_dir, key)
    return None

  def _load_compressed(self, ann, manual_dir, key):
    rel = ann.get("raw_file") or ann.get("filename") or os.path.join(
        "kpfiles", key + ".pkl")
    path = rel if os.path.isabs(rel) else os.path.join(manual_dir, rel)
    rows = poses_lib.load_kinetics_kpfile(path, key)
    return poses_lib.from_kinetics_compressed(ann, rows, path, self.box_thr)


def _read_csv(path):
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or "youtube_id" not in reader.fieldnames:
      raise ValueError(f"{path}: expected header label,youtube_id,time_start,"
                       f"time_end,split, got {reader.fieldnames}")
    return [{k: (v or "").strip() for k, v in r.items() if k} for r in reader]
