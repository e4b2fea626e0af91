"""Diving48 (V2 labels) with mmaction2's HRNet 2D poses."""

from __future__ import annotations

import json
import os

from data_prep import builder as builder_lib
from data_prep.datasets import common

_POSE_FILES = ("diving48_2d.pkl", "diving48_hrnet.pkl")


class Diving48(builder_lib.VideoPoseBuilder):
  """Diving48: 48 dive classes, 640x480 clips; splits train/test (V2 labels)."""

  name = "diving48"
  BUILDER_CONFIGS = [
      builder_lib.DatasetConfig(
          name="v2", description="Diving48 V2 (cleaned) labels, COCO-17 poses",
          joint_layout="coco17", num_classes=48),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put the Diving48 files (http://www.svcl.ucsd.edu/projects/resound/dataset.html)
  in manual_dir:
    rgb/<vid_name>.mp4             (Diving48_rgb.tar.gz, trimmed clips)
    Diving48_V2_train.json         list of {vid_name, label, start_frame, end_frame}
    Diving48_V2_test.json
    Diving48_vocab.json            48 x [takeoff, somersault, twist, flight]
    diving48_2d.pkl                (optional) mmaction2's 2D skeletons
  start_frame/end_frame refer to the untrimmed source; the rgb/ clips are
  already trimmed and are stored whole.
  """

  def _read_dataset(self, manual_dir):
    vocab_path = os.path.join(manual_dir, "Diving48_vocab.json")
    names = [_class_name(v, vocab_path) for v in _load_json(vocab_path)]
    videos = builder_lib.index_videos(manual_dir)
    pose_db = common.MmactionPoses(common.find_file(manual_dir, _POSE_FILES))
    splits = {}
    for split in ("train", "test"):
      path = os.path.join(manual_dir, f"Diving48_V2_{split}.json")
      items = []
      for i, entry in enumerate(_load_json(path)):
        vid, label, error = _parse_entry(entry, i, path, len(names))
        if error:
          items.append(builder_lib.VideoItem(vid, -1, None, error=error))
          continue
        items.append(builder_lib.VideoItem(
            video_id=vid, label=label,
            video_path=videos.get(vid, os.path.join(manual_dir, "rgb",
                                                    vid + ".mp4")),
            pose=pose_db.loader(vid)))
      splits[split] = items
    return names, splits


def _parse_entry(entry, i: int, path: str, num_classes: int):
  """-> (vid_name, label, error message or None)."""
  if not isinstance(entry, dict) or "vid_name" not in entry:
    return f"{os.path.basename(path)}#{i}", -1, (
        f"{path}: entry {i} is {entry!r}, expected "
        f"{{vid_name, label, start_frame, end_frame}}")
  vid = str(entry["vid_name"])
  try:
    label = int(entry["label"])
  except (KeyError, TypeError, ValueError):
    return vid, -1, f"{path}: {vid} has no integer 'label'"
  if not 0 <= label < num_classes:
    return vid, -1, (f"{path}: {vid} has label {label}, expected "
                     f"0..{num_classes - 1}")
  return vid, label, None


def _load_json(path):
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"expected {path} (see Diving48.MANUAL_DOWNLOAD_INSTRUCTIONS)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _class_name(entry, source: str) -> str:
  """["Back", "15som", "05Twis", "FREE"] -> "Back+15som+05Twis+FREE"."""
  if isinstance(entry, str):
    return entry
  if isinstance(entry, list) and all(isinstance(x, str) for x in entry):
    return "+".join(entry)
  raise ValueError(f"{source}: vocabulary entry {entry!r} is not a list of "
                   f"strings")
