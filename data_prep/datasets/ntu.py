"""NTU RGB+D 60 RGB videos with 2D poses.

Two pose sources, one config each per protocol:
  xsub, xview                mmaction2's `ntu60_2d.pkl` (HRNet, COCO-17, in
                             1920x1080 pixels), its own split lists.
  xsub_kinect, xview_kinect  the dataset's Kinect skeletons projected to the
                             RGB frame (colorX/colorY of `.skeleton` files, or
                             `rgb_body*` of their `.skeleton.npy` conversion;
                             NTU-25 joints), the official protocols.
"""

from __future__ import annotations

import functools
import os
import re

from data_prep import builder as builder_lib
from data_prep import poses as poses_lib
from data_prep.datasets import common

_POSE_FILES = ("ntu60_2d.pkl", "ntu60_hrnet.pkl")
_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
# The NTU RGB+D paper's training subjects (cross-subject) and cameras
# (cross-view).
XSUB_TRAIN_SUBJECTS = frozenset(
    (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38))
XVIEW_TRAIN_CAMERAS = frozenset((2, 3))


def _config(name, layout, desc):
  return builder_lib.DatasetConfig(name=name, joint_layout=layout,
                                   num_classes=60, description=desc)


class Ntu60(builder_lib.VideoPoseBuilder):
  """NTU RGB+D 60 (RGB + 2D poses); splits train / val."""

  name = "ntu60_2d"
  BUILDER_CONFIGS = [
      _config("xsub", "coco17", "cross-subject, mmaction2 HRNet poses"),
      _config("xview", "coco17", "cross-view, mmaction2 HRNet poses"),
      _config("xsub_kinect", "ntu25", "cross-subject, Kinect colour joints"),
      _config("xview_kinect", "ntu25", "cross-view, Kinect colour joints"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put the NTU RGB+D 60 files in manual_dir:
    nturgb+d_rgb/S001C001P001R001A001_rgb.avi ...   (any folder below)
    xsub / xview:  ntu60_2d.pkl (mmaction2's 2D skeletons)
    *_kinect:      nturgb+d_skeletons/S001C001P001R001A001.skeleton (or the
                   .skeleton.npy files of shahroudy/NTURGB-D's txt2npy)
    label_map.txt  (optional) 60 class names, one a line; default A001..A060
  """

  def _read_dataset(self, manual_dir):
    protocol, _, source = self.builder_config.name.partition("_")
    class_file = common.find_file(manual_dir, ("label_map.txt",
                                               "label_map_ntu60.txt"))
    names = (builder_lib.read_lines(class_file) if class_file else
             [f"A{i:03d}" for i in range(1, 61)])
    videos = builder_lib.index_videos(manual_dir)
    if source == "kinect":
      return names, self._kinect_splits(manual_dir, protocol, videos)
    pkl = common.find_file(manual_dir, _POSE_FILES)
    if pkl is None:
      raise FileNotFoundError(f"no ntu60_2d.pkl under {manual_dir}; config "
                              f"{protocol} takes its splits from it")
    pose_db = common.MmactionPoses(pkl)
    splits = {}
    for split in ("train", "val"):
      key = f"{protocol}_{split}"
      if key not in pose_db.data["split"]:
        raise ValueError(f"{pkl}: no split {key!r} (has "
                         f"{sorted(pose_db.data['split'])})")
      items = []
      for vid in pose_db.data["split"][key]:
        ann = pose_db.by_id.get(vid)
        if ann is None:
          items.append(builder_lib.VideoItem(
              vid, -1, None, error=f"{pkl}: split {key} lists {vid} but "
                                   f"there is no annotation for it"))
          continue
        items.append(builder_lib.VideoItem(
            vid, int(ann["label"]), _video_path(videos, manual_dir, vid),
            pose=pose_db.loader(vid)))
      splits[split] = items
    return names, splits

  def _kinect_splits(self, manual_dir, protocol, videos):
    skeletons = {}
    for dirpath, _, files in os.walk(manual_dir):
      for f in files:
        for ext in (".skeleton", ".skeleton.npy"):
          if f.endswith(ext):
            skeletons.setdefault(f[:-len(ext)], os.path.join(dirpath, f))
    ids = set(skeletons) | {s[:-len("_rgb")] for s in videos
                            if s.endswith("_rgb")}
    splits = {"train": [], "val": []}
    for vid in sorted(ids):
      m = _NAME.fullmatch(vid)
      if not m:
        continue
      setup, camera, subject, _, action = (int(g) for g in m.groups())
      if action > 60 or setup > 17:  # NTU-120 additions.
        continue
      train = (subject in XSUB_TRAIN_SUBJECTS if protocol == "xsub" else
               camera in XVIEW_TRAIN_CAMERAS)
      pose = (functools.partial(poses_lib.load_pose_file, skeletons[vid], 25)
              if vid in skeletons else None)
      splits["train" if train else "val"].append(builder_lib.VideoItem(
          vid, action - 1, _video_path(videos, manual_dir, vid), pose=pose))
    return splits


def _video_path(videos, manual_dir, vid):
  return videos.get(vid + "_rgb") or videos.get(vid) or os.path.join(
      manual_dir, "nturgb+d_rgb", vid + "_rgb.avi")
