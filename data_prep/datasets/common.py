"""Helpers shared by the dataset modules: pose-pickle lookup, split files."""

from __future__ import annotations

import csv
import functools
import os
from typing import Callable, Sequence

from data_prep import poses as poses_lib


def find_file(manual_dir: str, names: Sequence[str]) -> str | None:
  """First of `names` (relative to manual_dir, or anywhere below it)."""
  for name in names:
    path = os.path.join(manual_dir, name)
    if os.path.isfile(path):
      return path
  wanted = set(names)
  for dirpath, _, files in os.walk(manual_dir):
    for f in sorted(files):
      if f in wanted:
        return os.path.join(dirpath, f)
  return None


class MmactionPoses:
  """frame_dir -> pose loader, over one mmaction2 pose pickle (or none).

  The pickle is read once with the allow-listed unpickler; `loader(key)` gives
  a zero-argument function for `VideoItem.pose`, or None if `key` has no entry.
  """

  def __init__(self, path: str | None):
    self.path = path
    self.data = poses_lib.load_mmaction_pickle(path) if path else None
    self.by_id = ({a["frame_dir"]: a for a in self.data["annotations"]}
                  if self.data else {})

  def __contains__(self, key: str) -> bool:
    return key in self.by_id

  def loader(self, *keys: str
            ) -> Callable[[], poses_lib.PoseSequence] | None:
    for key in keys:
      if key in self.by_id:
        return functools.partial(poses_lib.from_mmaction, self.by_id[key],
                                 f"{self.path}[{key!r}]")
    return None


def read_csv_rows(path: str) -> list[list[str]]:
  """Non-empty rows of a comma-separated file, cells stripped."""
  with open(path, encoding="utf-8", newline="") as f:
    return [[c.strip() for c in row] for row in csv.reader(f)
            if any(c.strip() for c in row)]


def read_split_csv(path: str) -> list[list[str]]:
  """Rows of a split CSV (`video_path,pose_path,label`; comma or whitespace
  separated, as PAAB/PAAT's loaders accept). A header row is dropped."""
  rows = []
  with open(path, encoding="utf-8", newline="") as f:
    text = f.read().splitlines()
  for i, line in enumerate(text):
    line = line.strip()
    if not line:
      continue
    row = next(csv.reader([line])) if "," in line else line.split()
    row = [c.strip() for c in row]
    if i == 0 and not row[-1].lstrip("-").isdigit():
      continue  # header
    rows.append(row)
  return rows
