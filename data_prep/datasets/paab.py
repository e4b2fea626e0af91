"""Toyota Smarthome and N-UCLA as PAAB/PAAT release them: split CSVs
`video_path,pose_path,label` and per-video pose JSON (13 / 18 joints)."""

from __future__ import annotations

import collections
import functools
import os
import re

from data_prep import builder as builder_lib
from data_prep import poses as poses_lib
from data_prep.datasets import common

_SPLITS = ("train", "val", "test")


class _SplitCsvBuilder(builder_lib.VideoPoseBuilder):
  """Videos listed in <manual_dir>/<config>/{train,val,test}.csv (or directly
  in manual_dir); paths relative to manual_dir."""

  def _class_prefix(self, stem: str) -> str | None:
    raise NotImplementedError

  def _read_dataset(self, manual_dir):
    cfg = self.builder_config
    layout_v = {"smarthome13": 13, "openpose18": 18}[cfg.joint_layout]
    base = os.path.join(manual_dir, cfg.name)
    if not os.path.isdir(base):
      base = manual_dir
    splits, stems = {}, collections.defaultdict(collections.Counter)
    for split in _SPLITS:
      path = os.path.join(base, f"{split}.csv")
      if not os.path.isfile(path):
        continue
      items = []
      for i, row in enumerate(common.read_split_csv(path)):
        if len(row) != 3 or not row[2].lstrip("-").isdigit() or not (
            0 <= int(row[2]) < cfg.num_classes):
          items.append(builder_lib.VideoItem(
              f"{split}.csv:{i + 1}", -1, None,
              error=f"{path} row {i + 1}: {row!r}, expected video_path,"
                    f"pose_path,label (0..{cfg.num_classes - 1})"))
          continue
        video, pose, label = row[0], row[1], int(row[2])
        video = video if os.path.isabs(video) else os.path.join(manual_dir,
                                                                video)
        pose = pose if os.path.isabs(pose) else os.path.join(manual_dir, pose)
        stem = os.path.splitext(os.path.basename(video))[0]
        stems[label][self._class_prefix(stem)] += 1
        # N-UCLA repeats file names across view folders: key by relative path.
        vid = os.path.splitext(os.path.relpath(video, manual_dir))[0]
        items.append(builder_lib.VideoItem(
            vid, label, video,
            pose=(functools.partial(poses_lib.from_paab_json, pose, layout_v)
                  if os.path.isfile(pose) else None)))
      splits[split] = items
    if not splits:
      from_names = self._splits_from_names(manual_dir)
      if from_names is not None:
        return from_names
      raise FileNotFoundError(
          f"config {cfg.name!r}: no train/val/test.csv in {base} (see "
          f"{type(self).__name__}.MANUAL_DOWNLOAD_INSTRUCTIONS)")
    return self._class_names(base, manual_dir, stems), splits

  def _splits_from_names(self, manual_dir):
    """(class names, splits) from the file names alone, or None (no CSVs
    then means an error)."""
    del manual_dir
    return None

  def _class_names(self, base, manual_dir, stems) -> list[str]:
    """label_map.txt if given, else each label's class from its file names."""
    n = self.builder_config.num_classes
    path = common.find_file(base, ("label_map.txt",)) or common.find_file(
        manual_dir, ("label_map.txt",))
    if path:
      return builder_lib.read_lines(path)
    names = [stems[i].most_common(1)[0][0] if stems.get(i) else None
             for i in range(n)]
    if None in names or len(set(names)) != n:
      return [f"class_{i}" for i in range(n)]
    return names


class ToyotaSmarthome(_SplitCsvBuilder):
  """Toyota Smarthome (trimmed), LCR-Net++ 13-joint poses; CS / CV1 / CV2."""

  name = "toyota_smarthome"
  BUILDER_CONFIGS = [
      builder_lib.DatasetConfig(name="cs", joint_layout="smarthome13",
                                num_classes=31, description="cross-subject"),
      builder_lib.DatasetConfig(name="cv1", joint_layout="smarthome13",
                                num_classes=19, description="cross-view 1"),
      builder_lib.DatasetConfig(name="cv2", joint_layout="smarthome13",
                                num_classes=19, description="cross-view 2"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Toyota Smarthome (https://project.inria.fr/toyotasmarthome/), laid out as in
  PAAB/PAAT (dominickrei/PoseAwareVT):
    mp4/Cook.Cleandishes_p02_r00_v02_c03.mp4 ...
    skeletonv12/Cook.Cleandishes_p02_r00_v02_c03_pose3d.json ...
        {"njts": 13, "frames": [[{"pose2d": [x0..x12, y0..y12], ...}], ...]}
    <config>/train.csv, <config>/val.csv, <config>/test.csv  (config = cs, cv1,
        cv2), rows "video_path,pose_path,label" relative to manual_dir
        (cs without CSVs: splits by subject from the video names)
    label_map.txt (optional) class names; default: from the video names
  """

  def _class_prefix(self, stem):
    return stem.split("_")[0]  # "Cook.Cleandishes_p02_r00_v02_c03"

  def _splits_from_names(self, manual_dir):
    """Cross-subject without CSVs: subjects p03 p04 p06 p07 p09 p12 p13 p15
    p17 p19 p25 train, the other seven test (Das et al., ICCV 2019; the
    same list in public split scripts, e.g. the `TRAIN_IDS` of Smarthome
    split generators). The cross-view protocols use 19 of the 31 activities
    and per-camera lists: give their CSVs."""
    if self.builder_config.name != "cs":
      return None
    videos = builder_lib.index_videos(manual_dir)
    named = {}
    for stem, path in videos.items():
      m = _SMARTHOME_NAME.fullmatch(stem)
      if m:
        named[stem] = (m.group(1), m.group(2), path)
    if not named:
      return None
    path = common.find_file(manual_dir, ("label_map.txt",))
    names = (builder_lib.read_lines(path) if path else
             sorted({act for act, _, _ in named.values()}))
    if len(names) != 31:
      raise ValueError(
          f"{manual_dir}: the video names show {len(names)} activities, the "
          f"cross-subject protocol has 31; put the 31 class names in "
          f"label_map.txt (one a line, in label order)")
    index = {n: i for i, n in enumerate(names)}
    poses = {}
    for dirpath, _, files in os.walk(manual_dir):
      for f in files:
        if f.endswith("_pose3d.json"):
          poses.setdefault(f[:-len("_pose3d.json")], os.path.join(dirpath, f))
    splits = {"train": [], "test": []}
    for stem, (act, subject, path) in sorted(named.items()):
      split = "train" if subject in SMARTHOME_CS_TRAIN else "test"
      label = index.get(act, -1)
      pose = (functools.partial(poses_lib.from_paab_json, poses[stem], 13)
              if stem in poses else None)
      splits[split].append(builder_lib.VideoItem(
          stem, label, path, pose=pose,
          error=None if label >= 0 else f"activity {act!r} not in "
                                         f"label_map.txt"))
    return names, splits


# Activity_pNN_rNN_vNN_cNN, e.g. Cook.Cleandishes_p02_r00_v02_c03.
_SMARTHOME_NAME = re.compile(r"([^_]+)_(p\d+)_r\d+_v\d+_c\d+")
SMARTHOME_CS_TRAIN = frozenset(
    ("p03", "p04", "p06", "p07", "p09", "p12", "p13", "p15", "p17", "p19",
     "p25"))


class NUCLA(_SplitCsvBuilder):
  """Northwestern-UCLA Multiview Action 3D, OpenPose-18 poses; cross-view."""

  name = "nucla"
  BUILDER_CONFIGS = [
      builder_lib.DatasetConfig(name="cs", joint_layout="openpose18",
                                num_classes=10, description="cross-subject"),
  ] + [
      builder_lib.DatasetConfig(
          name=f"cv{v}", joint_layout="openpose18", num_classes=10,
          description=f"cross-view: train on the other two views, test on "
                      f"view {v}")
      for v in (1, 2, 3)
  ] + [  # the name of earlier releases, = cv3
      builder_lib.DatasetConfig(name="cv", joint_layout="openpose18",
                                num_classes=10,
                                description="cross-view (test on view 3)"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  N-UCLA laid out as in PAAB/PAAT (dominickrei/PoseAwareVT README):
    ucla_rgb/view_1/a01_s01_e00.mp4 ...
    ucla_skeletons/S01A01E01V01_skeleton2d.json ...  (OpenPose-18, njts 18;
        N-UCLA ships no 2D poses: PAAB/PAAT extracted them with OpenPose)
    <config>/train.csv, <config>/test.csv (config = cs, cv1, cv2, cv3; or
        train.csv, test.csv), rows "video_path,pose_path,label" relative
        to manual_dir. The paper reports cs, cv3 and the mean of cv1..cv3.
    label_map.txt (optional) class names; default: a01..a12 from the names
  """

  def _class_prefix(self, stem):
    m = re.match(r"(a\d+)_", stem)
    return m.group(1) if m else None
