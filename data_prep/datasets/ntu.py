"""NTU RGB+D 60 RGB videos with 2D poses.

Two pose sources, one config each per protocol:
  xsub, xview                mmaction2's `ntu60_2d.pkl` (HRNet, COCO-17, in
                             1920x1080 pixels), its own split lists.
  xsub_kinect, xview_kinect  the dataset's Kinect skeletons projected to the
                             RGB frame (colorX/colorY of `.skeleton` files, or
                             `rgb_body*` of their `.skeleton.npy` conversion;
                             NTU-25 joints), the official protocols.
  cvs                        Kinect colour joints, the cross-view-subject
                             protocols CVS1-3 of Varol et al. (SURREACT, IJCV
                             2021), used by PAAB/PAAT: split `train` = the 0
                             degree view of the cross-subject training
                             subjects; `test_0`, `test_45`, `test_90` = each
                             view of the cross-subject test subjects.

CVS views, as SURREACT's `training/datasets/ntu.py` (gulvarol/surreact) names
them from camera C and replication R: C001 is 45 degrees; C002 R002 and
C003 R001 are 0 degrees (the subject faces the camera); C002 R001 and C003
R002 are 90 degrees. SURREACT keeps only performances (S, P, R, A) present in
all three views ("sync views"); so does this builder, by the listed names
(SURREACT also drops triplets under 32 frames; here short videos stay).
"""

from __future__ import annotations

import collections
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
      _config("cvs", "ntu25", "cross-view-subject CVS1-3 (train: 0 degree "
              "view; test_0 / test_45 / test_90), Kinect colour joints"),
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
    if source == "kinect" or protocol == "cvs":
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
    parsed = {}
    for vid in sorted(ids):
      m = _NAME.fullmatch(vid)
      if not m:
        continue
      setup, camera, subject, rep, action = (int(g) for g in m.groups())
      if action > 60 or setup > 17:  # NTU-120 additions.
        continue
      parsed[vid] = (setup, camera, subject, rep, action)
    if protocol == "cvs":
      complete = collections.Counter((s, p, r, a)
                                     for s, _, p, r, a in parsed.values())
    splits = ({"train": [], "test_0": [], "test_45": [], "test_90": []}
              if protocol == "cvs" else {"train": [], "val": []})
    for vid, (setup, camera, subject, rep, action) in parsed.items():
      train = subject in XSUB_TRAIN_SUBJECTS
      if protocol == "cvs":
        if complete[(setup, subject, rep, action)] != 3:
          continue  # not seen by all three cameras: not in the CVS sets
        view = cvs_view(camera, rep)
        if train and view != 0:
          continue
        split = "train" if train else f"test_{view}"
      elif protocol == "xsub":
        split = "train" if train else "val"
      else:
        split = "train" if camera in XVIEW_TRAIN_CAMERAS else "val"
      pose = (functools.partial(poses_lib.load_pose_file, skeletons[vid], 25)
              if vid in skeletons else None)
      splits[split].append(builder_lib.VideoItem(
          vid, action - 1, _video_path(videos, manual_dir, vid), pose=pose))
    return splits


def cvs_view(camera: int, replication: int) -> int:
  """Degrees between the subject's facing direction and camera C (SURREACT's
  NTU views: C001 45; C002 R002 / C003 R001 0; C002 R001 / C003 R002 90)."""
  if camera == 1:
    return 45
  if (camera, replication) in ((2, 2), (3, 1)):
    return 0
  if (camera, replication) in ((2, 1), (3, 2)):
    return 90
  raise ValueError(f"NTU camera {camera} replication {replication}: no CVS "
                   "view (cameras 1-3, replications 1-2)")


def _video_path(videos, manual_dir, vid):
  return videos.get(vid + "_rgb") or videos.get(vid) or os.path.join(
      manual_dir, "nturgb+d_rgb", vid + "_rgb.avi")
