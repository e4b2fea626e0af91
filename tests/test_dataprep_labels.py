"""Bad labels (>= num_classes, negative) in every builder: the entry is
skipped and counted as a listing error; the good videos of the same build are
written. The check lives in the shared builder base, so a builder whose own
parsing lets a bad label through (NTU's pickle, a custom list, any future
dataset) cannot write it nor crash the build."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import builder as builder_lib
from data_prep import records
from data_prep.datasets import (BUILDERS, NUCLA, CustomVideos, Diving48,
                                FineGym, Kinetics400, Ntu60, ToyotaSmarthome)
from data_prep.datasets import synthetic as synthetic_ds
from tests.dataprep_fixtures import (mmaction_ann, paab_json, write_dot_video,
                                     write_json, write_pickle, write_text)

tfds.disable_progress_bar()
OPTS = builder_lib.BuildOptions(short_side=32, progress=False, num_workers=1)
FRAMES = 4


def _build(cls, tmp_path, manual, config):
  b = cls(data_dir=str(tmp_path / "data"), config=config, options=OPTS)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual) if manual else None))
  return b


def _written(b, split):
  src = tfds.builder_from_directory(b.data_dir).as_data_source(split)
  exs = [records.decode_example(src[i]) for i in range(len(src))]
  return {e["video_id"]: int(e["label"]) for e in exs}


def _diving48(m):
  write_json(m / "Diving48_vocab.json", [["a", str(i)] for i in range(48)])
  e = lambda v, l: {"vid_name": v, "label": l, "start_frame": 0,
                    "end_frame": FRAMES}
  for v in ("good", "big", "neg", "t"):
    write_dot_video(m / "rgb" / f"{v}.mp4", FRAMES)
  write_json(m / "Diving48_V2_train.json",
             [e("good", 47), e("big", 48), e("neg", -1)])
  write_json(m / "Diving48_V2_test.json", [e("t", 0)])
  return "v2", {"good": 47}, ["big", "neg"]


def _finegym(m):
  write_text(m / "gym99_categories.txt",
             [f"Clabel: {i}; set: 1; Glabel: {i}; (VT) e{i}" for i in range(99)])
  ids = ["y_E_1_2_A_1_2", "y_E_1_2_A_3_4", "y_E_1_2_A_5_6", "y_E_3_4_A_1_2"]
  for v in ids:
    write_dot_video(m / "subactions" / f"{v}.mp4", FRAMES)
  write_text(m / "gym99_train_element_v1.1.txt",
             [f"{ids[0]} 98", f"{ids[1]} 99", f"{ids[2]} -1"])
  write_text(m / "gym99_val_element.txt", [f"{ids[3]} 0"])
  return "gym99", {ids[0]: 98}, ["gym99_train_element_v1.1.txt:2",
                                 "gym99_train_element_v1.1.txt:3"]


def _kinetics(m):
  # Labels are class names: one outside the class list is the bad case.
  write_text(m / "label_map_k400.txt", ["abseiling", "zumba"])
  hdr = "label,youtube_id,time_start,time_end,split"
  write_text(m / "train.csv", [hdr, "zumba,ytGOOD,0,10,train",
                               "flying,ytBAD,0,10,train"])
  write_text(m / "validate.csv", [hdr, "abseiling,ytVAL,0,10,val"])
  for v in ("ytGOOD", "ytBAD", "ytVAL"):
    write_dot_video(m / f"{v}_000000_000010.mp4", FRAMES)
  return "default", {"ytGOOD_000000_000010": 1}, ["ytBAD"]


def _ntu60(m):
  ids = ["S001C001P001R001A001", "S001C001P001R001A002",
         "S001C001P001R001A003", "S001C001P002R001A001"]
  for v in ids:
    write_dot_video(m / "nturgb+d_rgb" / f"{v}_rgb.avi", FRAMES, h=72)
  anns = [mmaction_ann(ids[0], 59, FRAMES), mmaction_ann(ids[1], 60, FRAMES),
          mmaction_ann(ids[2], -1, FRAMES), mmaction_ann(ids[3], 0, FRAMES)]
  write_pickle(m / "ntu60_2d.pkl", {"split": {
      "xsub_train": ids[:3], "xsub_val": ids[3:]}, "annotations": anns})
  return "xsub", {ids[0]: 59}, ids[1:3]


def _paab(m, n, layout_v, video_dir, pose_dir):
  rows = []
  for i, label in enumerate((n - 1, n, -1)):
    stem = f"a{i + 1:02d}_s01_e00"
    write_dot_video(m / video_dir / f"{stem}.mp4", FRAMES)
    write_json(m / pose_dir / f"{stem}.json", paab_json(FRAMES, layout_v))
    rows.append(f"{video_dir}/{stem}.mp4,{pose_dir}/{stem}.json,{label}")
  write_text(m / "train.csv", rows)
  write_text(m / "test.csv", [rows[0].replace(f",{n - 1}", ",0")])
  return ({f"{video_dir}/a01_s01_e00": n - 1},
          ["train.csv:2", "train.csv:3"])


def _smarthome(m):
  return ("cs",) + _paab(m, 31, 13, "mp4", "skeletonv12")


def _nucla(m):
  return ("cv",) + _paab(m, 10, 18, "ucla_rgb/view_1", "ucla_skeletons")


def _custom(m):
  for v in ("good", "big", "neg", "t"):
    write_dot_video(m / f"{v}.mp4", FRAMES)
  write_text(m / "classes.txt", ["jump", "wave"])
  write_text(m / "train.csv", ["good.mp4,1", "big.mp4,2", "neg.mp4,-1"])
  write_json(m / "test.json", [{"video": "t.mp4", "label": "jump"}])
  return "coco17", {"good": 1}, ["train:2", "train:3"]


CASES = {"diving48": (Diving48, _diving48), "finegym": (FineGym, _finegym),
         "kinetics400": (Kinetics400, _kinetics), "ntu60": (Ntu60, _ntu60),
         "smarthome": (ToyotaSmarthome, _smarthome), "nucla": (NUCLA, _nucla),
         "custom": (CustomVideos, _custom)}


def test_every_builder_is_covered():
  assert set(CASES) | {"synthetic"} == set(BUILDERS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_labels_skipped_and_counted(name, tmp_path):
  cls, make = CASES[name]
  m = tmp_path / "manual"
  config, good, bad = make(m)
  b = _build(cls, tmp_path, m, config)
  s = b.summary.splits["train"]
  assert s.written == len(good) and sorted(s.skipped) == sorted(bad)
  assert s.counts["skipped: listing"] == len(bad)
  for vid in bad:
    assert s.skipped[vid].startswith("listing:"), s.skipped[vid]
  assert _written(b, "train") == good


class _BadLabelSynthetic(synthetic_ds.SyntheticPoseActions):
  """The synthetic builder with two labels corrupted after listing: shows the
  base class catches what a dataset module lets through."""
  name = "bad_label_synthetic"
  BUILDER_CONFIGS = [synthetic_ds.SyntheticConfig.make(3, 1, 2, 0, 4, 32)]

  def _read_dataset(self, manual_dir):
    names, splits = super()._read_dataset(manual_dir)
    import dataclasses  # pylint: disable=g-import-not-at-top
    t = splits["train"]
    t[1] = dataclasses.replace(t[1], label=2)     # == num_classes
    t[2] = dataclasses.replace(t[2], label=-1)
    return names, splits


def test_base_builder_rejects_bad_labels(tmp_path):
  b = _BadLabelSynthetic(data_dir=str(tmp_path), options=OPTS)
  b.download_and_prepare()
  s = b.summary.splits["train"]
  assert s.skipped == {"train_000001": "listing: label 2 outside 0..1",
                       "train_000002": "listing: label -1 outside 0..1"}
  assert _written(b, "train") == {"train_000000": 0}
  assert b.info.metadata["build_summary"]["train"]["counts"][
      "skipped: listing"] == 2


def test_label_check_types(tmp_path):
  b = _BadLabelSynthetic(data_dir=str(tmp_path), options=OPTS)
  assert b._check_label(np.int64(1)) is None
  assert "not an integer" in b._check_label("1")
  assert "not an integer" in b._check_label(True)
