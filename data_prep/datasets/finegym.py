"""FineGym element-level Gym99 / Gym288 with mmaction2's 2D poses."""

from __future__ import annotations

import os

from data_prep import builder as builder_lib
from data_prep.datasets import common

_POSE_FILES = ("gym_2d.pkl", "gym_hrnet.pkl")


class FineGym(builder_lib.VideoPoseBuilder):
  """FineGym elements (Gym99 / Gym288); splits train (v1.1) / val."""

  name = "finegym"
  BUILDER_CONFIGS = [
      builder_lib.DatasetConfig(name="gym99", joint_layout="coco17",
                                num_classes=99,
                                description="99 element classes"),
      builder_lib.DatasetConfig(name="gym288", joint_layout="coco17",
                                num_classes=288,
                                description="288 element classes"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put the FineGym files (https://sdolivia.github.io/FineGym/) in manual_dir:
    gym99_categories.txt, gym288_categories.txt
        lines "Clabel: 0; set: 1; Glabel: 1; (VT) round-off, ..."
    gym99_train_element_v1.1.txt, gym99_val_element.txt (and gym288_*)
        lines "<ytid>_E_<s>_<e>_A_<s>_<e> <label>"
    subactions/<element id>.mp4     element clips (any folder below manual_dir;
                                    mmaction2's trim_subaction.py output)
    gym_2d.pkl                      (optional) mmaction2's 2D skeletons
  """

  def _read_dataset(self, manual_dir):
    cfg = self.builder_config.name
    names = read_categories(os.path.join(manual_dir, f"{cfg}_categories.txt"))
    videos = builder_lib.index_videos(manual_dir)
    pose_db = common.MmactionPoses(common.find_file(manual_dir, _POSE_FILES))
    splits = {}
    for split, fname in (("train", f"{cfg}_train_element_v1.1.txt"),
                         ("val", f"{cfg}_val_element.txt")):
      path = os.path.join(manual_dir, fname)
      items = []
      for i, line in enumerate(builder_lib.read_lines(path)):
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or not (
            0 <= int(parts[1]) < len(names)):
          items.append(builder_lib.VideoItem(
              f"{fname}:{i + 1}", -1, None,
              error=f"{path} line {i + 1}: {line!r}, expected "
                    f"'<element id> <label 0..{len(names) - 1}>'"))
          continue
        vid = parts[0]
        items.append(builder_lib.VideoItem(
            vid, int(parts[1]),
            videos.get(vid, os.path.join(manual_dir, "subactions",
                                         vid + ".mp4")),
            pose=pose_db.loader(vid)))
      splits[split] = items
    return names, splits


def read_categories(path: str) -> list[str]:
  """FineGym category file -> class names in Clabel order.

  Names repeated in different event sets (e.g. "(BB) salto backward tucked"
  in sets 33 and 35) get " (set N)" appended so that they stay distinct.
  """
  names, tags = [], []
  for i, line in enumerate(builder_lib.read_lines(path)):
    fields = line.split(";", 3)
    try:
      clabel = int(fields[0].split(":")[1])
      set_id = int(fields[1].split(":")[1])
      name = fields[3].strip()
    except (IndexError, ValueError):
      raise ValueError(
          f"{path} line {i + 1}: {line!r}, expected 'Clabel: N; set: S; "
          f"Glabel: G; <name>'") from None
    if clabel != i:
      raise ValueError(f"{path} line {i + 1}: Clabel {clabel}, expected {i}")
    names.append(name)
    tags.append(f"set {set_id}")
  return builder_lib.unique_names(names, tags)
