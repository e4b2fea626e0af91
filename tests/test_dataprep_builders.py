"""Each real-format builder on tiny fixtures in the published layouts, read back
through `tfds.builder_from_directory(...).as_data_source` (no TensorFlow)."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import builder as builder_lib
from data_prep import records
from data_prep.datasets import (NUCLA, CustomVideos, Diving48, FineGym,
                                Kinetics400, Ntu60, ToyotaSmarthome)
from data_prep.datasets.finegym import read_categories
from tests.dataprep_fixtures import (H, W, assert_on_dot, dot_keypoints,
                                     mmaction_ann, paab_json, realdata,
                                     write_dot_video, write_json,
                                     write_pickle, write_text)

tfds.disable_progress_bar()
OPTS = builder_lib.BuildOptions(short_side=48, progress=False, num_workers=2)


def build(cls, tmp_path, manual, config=None, options=OPTS, **kw):
  b = cls(data_dir=str(tmp_path / "data"), config=config, options=options,
          **kw)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual)))
  return b


def read(b, split):
  """{video_id: decoded example} of a split, read back from disk."""
  src = tfds.builder_from_directory(b.data_dir).as_data_source(split)
  out = {}
  for i in range(len(src)):
    ex = records.decode_example(src[i])
    out[ex["video_id"]] = ex
  return out


def check_record(ex, num_joints, persons, frames, label=None):
  t = len(ex["frames"])
  assert ex["frames"].shape[1:] == (48, 64, 3) and ex["frames"].dtype == np.uint8
  assert t == frames == len(ex["frame_indices"])
  assert ex["keypoints"].shape == (t, persons, num_joints, 2)
  assert ex["keypoint_score"].shape == (t, persons, num_joints)
  assert ex["keypoints"].dtype == ex["keypoint_score"].dtype == np.float32
  assert ex["frame_indices"].dtype == np.int32
  np.testing.assert_array_equal(ex["original_size"], [H, W])
  if label is not None:
    assert ex["label"] == label


# ------------------------------------------------------------------ Diving48


def _diving48_manual(root, bad_pose=True):
  m = root / "manual"
  names = [f"Back+{i}som+NoTwis+TUCK" for i in range(48)]
  write_json(m / "Diving48_vocab.json", [n.split("+") for n in names])
  anns = [mmaction_ann("good", 3, 10), mmaction_ann("messy", 4, 10, persons=2),
          mmaction_ann("short_pose", 5, 8), mmaction_ann("test_a", 7, 9),
          mmaction_ann("truncated", 6, 10), mmaction_ann("absent", 6, 10)]
  messy = anns[1]
  messy["keypoint"][0, 2, 4] = np.nan           # NaN joint
  messy["keypoint"][0, 3, 6, 1] = -5.0          # negative coordinate
  messy["keypoint_score"][1, 5:] = 0            # person 1 gone from frame 5
  write_pickle(m / "diving48_2d.pkl", {"split": {}, "annotations": anns})
  for vid, n in (("good", 10), ("messy", 10), ("short_pose", 10),
                 ("no_pose", 10), ("test_a", 9), ("truncated", 30)):
    write_dot_video(m / "rgb" / f"{vid}.mp4", n)
  data = open(m / "rgb" / "truncated.mp4", "rb").read()
  (m / "rgb" / "truncated.mp4").write_bytes(data[:len(data) // 2])
  entry = lambda v, l: {"vid_name": v, "label": l, "start_frame": 0,
                        "end_frame": 10}
  write_json(m / "Diving48_V2_train.json",
             [entry("good", 3), entry("messy", 4), entry("short_pose", 5),
              entry("no_pose", 0), entry("truncated", 6), entry("absent", 6),
              entry("bad_label", 99)])
  write_json(m / "Diving48_V2_test.json", [entry("test_a", 7)])
  return m, names


def test_diving48_with_real_world_mess(tmp_path):
  manual, names = _diving48_manual(tmp_path)
  b = build(Diving48, tmp_path, manual)
  s = b.summary.splits["train"]
  assert s.listed == 7 and s.written == 4
  assert set(s.skipped) == {"truncated", "absent", "bad_label"}
  assert "truncated.mp4" in s.skipped["truncated"]
  assert "not found" in s.skipped["absent"]
  assert "label 99" in s.skipped["bad_label"]
  assert "pose has 8 frames, video has 10" in " ".join(s.warnings["short_pose"])
  assert "no pose entry" in " ".join(s.warnings["no_pose"])
  assert s.counts["nan_or_negative_joints"] == 2
  assert s.counts["frames_with_missing_persons"] == 5
  assert s.counts["kept_without_pose"] == 1

  info = tfds.builder_from_directory(b.data_dir).info
  assert info.features["label"].names == names
  assert info.metadata["joint_layout"] == "coco17"
  assert info.metadata["build_summary"]["train"]["skipped"] == s.skipped
  train, test = read(b, "train"), read(b, "test")
  assert sorted(train) == ["good", "messy", "no_pose", "short_pose"]
  check_record(train["good"], 17, 1, 10, label=3)
  check_record(train["messy"], 17, 2, 10, label=4)
  check_record(train["no_pose"], 17, 0, 10, label=0)
  check_record(test["test_a"], 17, 1, 9, label=7)
  # Keypoints (scaled to the stored 48x64 frames) land on the dot.
  assert assert_on_dot(train["good"]["frames"], train["good"]["keypoints"],
                       train["good"]["keypoint_score"]) == 170
  messy = train["messy"]
  assert assert_on_dot(messy["frames"], messy["keypoints"],
                       messy["keypoint_score"]) == 168
  assert messy["keypoint_score"][2, 0, 4] == 0
  assert (messy["keypoints"][3, 0, 6] == 0).all()
  assert (messy["keypoint_score"][5:, 1] == 0).all()
  short = train["short_pose"]  # frames 8, 9 reuse pose frame 7 (tolerance 2)
  np.testing.assert_allclose(short["keypoints"][8:, 0, 0],
                             short["keypoints"][7:8, 0, 0].repeat(2, 0))
  assert (short["keypoint_score"][:, 0] > 0).all()
  # Summary file is not written by the builder itself, but via build.py.


def test_diving48_skip_videos_without_pose(tmp_path):
  manual, _ = _diving48_manual(tmp_path)
  opts = builder_lib.BuildOptions(short_side=48, progress=False,
                                  missing_pose="skip")
  b = build(Diving48, tmp_path, manual, options=opts)
  s = b.summary.splits["train"]
  assert s.skipped["no_pose"] == "pose: no pose entry"
  assert "no_pose" not in read(b, "train")


# ------------------------------------------------------------------ FineGym


def test_finegym_gym99(tmp_path):
  m = tmp_path / "manual"
  lines = [f"Clabel: {i:3d}; set: {1 + i // 50:2d}; Glabel: {i + 5:3d}; "
           f"(VT) element {i % 98}" for i in range(99)]  # 0 and 98 collide
  write_text(m / "gym99_categories.txt", lines)
  ids = ["yt1_E_000010_000020_A_0001_0003", "yt1_E_000010_000020_A_0004_0006",
         "yt2_E_000100_000200_A_0010_0012"]
  write_text(m / "gym99_train_element_v1.1.txt",
             [f"{ids[0]} 12", f"{ids[1]} 98", "garbage line here"])
  write_text(m / "gym99_val_element.txt", [f"{ids[2]} 0"])
  for vid in ids:
    write_dot_video(m / "subactions" / f"{vid}.mp4", 8)
  write_pickle(m / "gym_2d.pkl", {"split": {"train": ids[:2], "val": ids[2:]},
                                  "annotations": [mmaction_ann(v, 0, 8)
                                                  for v in ids]})
  b = build(FineGym, tmp_path, m, config="gym99")
  names = tfds.builder_from_directory(b.data_dir).info.features["label"].names
  assert names[0] == "(VT) element 0 (set 1)" and names[98] == (
      "(VT) element 0 (set 2)") and names[1] == "(VT) element 1"
  train = read(b, "train")
  assert sorted(train) == ids[:2] and train[ids[1]]["label"] == 98
  assert list(b.summary.splits["train"].skipped) == [
      "gym99_train_element_v1.1.txt:3"]
  ex = read(b, "val")[ids[2]]
  check_record(ex, 17, 1, 8, label=0)
  assert_on_dot(ex["frames"], ex["keypoints"], ex["keypoint_score"])


@pytest.mark.parametrize("cfg", ["gym99", "gym288"])
def test_finegym_real_category_files(cfg):
  names = read_categories(realdata(f"finegym/{cfg}_categories.txt"))
  assert len(names) == len(set(names)) == int(cfg[3:])
  if cfg == "gym99":
    ref = [l.strip() for l in open(realdata("label_map_gym99.txt"))]
    # Equal up to the set tag added to names that repeat.
    assert [n.split(" (set ")[0] for n in names] == ref
    assert names[58] == "(BB) salto backward tucked (set 33)"


# ---------------------------------------------------------------- Kinetics


def test_kinetics400_compressed_kpfiles(tmp_path):
  m = tmp_path / "manual"
  write_text(m / "train.csv", ["label,youtube_id,time_start,time_end,split",
                               "abseiling,ytAAAAAAAAA,10,20,train",
                               "zumba,ytBBBBBBBBB,0,10,train",
                               "zumba,ytNOVIDEO00,0,10,train"])
  write_text(m / "validate.csv", ["label,youtube_id,time_start,time_end,split",
                                  "zumba,ytCCCCCCCCC,5,15,val"])
  index = []
  for ytid, clip, raw in (("ytAAAAAAAAA", "ytAAAAAAAAA_000010_000020", False),
                          ("ytBBBBBBBBB", "ytBBBBBBBBB_000000_000010", True),
                          ("ytCCCCCCCCC", "ytCCCCCCCCC_000005_000015", False)):
    write_dot_video(m / "videos" / f"{clip}.mp4", 8)
    kp, score = dot_keypoints(8)
    rows = np.concatenate([kp[0], score[0, ..., None]], -1)  # (8, 17, 3)
    ann = {"frame_dir": ytid, "label": 0, "img_shape": (H, W),
           "original_shape": (H, W), "total_frames": 8,
           "frame_inds": np.arange(1, 9).astype(np.int16),  # 1-based
           "box_score": np.full(8, 0.9, np.float16),
           "valid": {0.5: 8}}
    if raw:  # pyskl layout: dict keyed by frame_dir, path in raw_file
      ann["raw_file"] = "kp/part0.pkl"
      write_pickle(m / "kp" / "part0.pkl", {ytid: {"keypoint": rows}})
    else:   # mmaction2 LoadKineticsPose layout: the array itself
      write_pickle(m / "kpfiles" / f"{ytid}.pkl", rows)
    index.append(ann)
  write_pickle(m / "k400_2d.pkl", {"split": {"train": [], "val": []},
                                   "annotations": index})
  b = build(Kinetics400, tmp_path, m)
  train = read(b, "train")
  assert sorted(train) == ["ytAAAAAAAAA_000010_000020",
                           "ytBBBBBBBBB_000000_000010"]
  assert "not found" in b.summary.splits["train"].skipped[
      "ytNOVIDEO00_000000_000010"]
  for ex in list(train.values()) + list(read(b, "val").values()):
    check_record(ex, 17, 1, 8)
    assert assert_on_dot(ex["frames"], ex["keypoints"],
                         ex["keypoint_score"]) == 8 * 17
  names = tfds.builder_from_directory(b.data_dir).info.features["label"].names
  assert names == ["abseiling", "zumba"]


def test_kinetics400_real_clips_and_poses(tmp_path):
  m = tmp_path / "manual"
  m.mkdir()
  for name in ("k400_clean_and_jerk.mp4", "k400_tai_chi.mp4",
               "label_map_k400.txt"):
    shutil.copy(realdata(name), m / name)
  shutil.copy(realdata("k400_realpose_2d.pkl"), m / "k400_2d.pkl")
  names = [l.strip() for l in open(m / "label_map_k400.txt")]
  write_text(m / "train.csv", ["label,youtube_id,time_start,time_end,split",
                               f"{names[59]},k400_clean_and_jerk,0,10,train"])
  write_text(m / "validate.csv", ["label,youtube_id,time_start,time_end,split",
                                  f"\"{names[346]}\",k400_tai_chi,0,10,val"])
  opts = builder_lib.BuildOptions(short_side=64, max_frames=12,
                                  progress=False)
  b = build(Kinetics400, tmp_path, m, options=opts)
  ex = read(b, "val")["k400_tai_chi"]
  assert ex["label"] == 346 and ex["frames"].shape == (12, 64, 85, 3)
  from data_prep import poses
  ann = poses.load_mmaction_pickle(m / "k400_2d.pkl")["annotations"]
  ref = [a for a in ann if a["frame_dir"] == "k400_tai_chi"][0]
  expected = ref["keypoint"][0, ex["frame_indices"]] * np.array(
      [85 / 340, 64 / 256])
  valid = ex["keypoint_score"][:, 0] > 0
  np.testing.assert_allclose(ex["keypoints"][:, 0][valid], expected[valid],
                             rtol=1e-5)
  assert read(b, "train")["k400_clean_and_jerk"]["label"] == 59


# --------------------------------------------------------------------- NTU


def _ntu_skeleton_text(num_frames, h=72, w=128):
  """A .skeleton file whose colour-space joints follow the dot."""
  from tests.dataprep_fixtures import dot_xy
  lines = [str(num_frames)]
  for t in range(num_frames):
    x, y = dot_xy(t) * np.array([1920 / w, 1080 / h])
    lines += ["1", "72057594037931101 0 1 1 1 1 0 0 0 2", "25"]
    lines += [f"0 0 3 0 0 {x} {y} 0 0 0 0 2"] * 25
  return "\n".join(lines)


def test_ntu60_pickle_and_kinect_configs(tmp_path):
  m = tmp_path / "manual"
  ids = ["S001C001P001R001A001", "S001C002P003R001A002",
         "S001C003P001R002A060"]
  for vid in ids:  # NTU videos are 16:9; these are 72x128.
    write_dot_video(m / "nturgb+d_rgb" / f"{vid}_rgb.avi", 8, h=72)
  anns = []
  for i, vid in enumerate(ids):
    a = mmaction_ann(vid, int(vid[-3:]) - 1, 8)
    a["keypoint"] *= np.array([1920 / 128, 1080 / 72], np.float32)
    a["img_shape"] = a["original_shape"] = (1080, 1920)
    anns.append(a)
  write_pickle(m / "ntu60_2d.pkl", {"split": {
      "xsub_train": ids[:1] + ids[2:], "xsub_val": ids[1:2],
      "xview_train": ids[1:], "xview_val": ids[:1]}, "annotations": anns})
  write_text(m / "nturgb+d_skeletons" / f"{ids[0]}.skeleton",
             [_ntu_skeleton_text(8)])
  write_text(m / "nturgb+d_skeletons" / f"{ids[1]}.skeleton",
             [_ntu_skeleton_text(6)])  # shorter than its video
  b = build(Ntu60, tmp_path, m, config="xsub")
  assert sorted(read(b, "train")) == [ids[0], ids[2]]
  ex = read(b, "val")[ids[1]]
  assert ex["label"] == 1 and ex["keypoints"].shape == (8, 1, 17, 2)
  assert ex["frames"].shape[1:3] == (48, 85)
  assert_on_dot(ex["frames"], ex["keypoints"], ex["keypoint_score"])

  b = build(Ntu60, tmp_path / "k", m, config="xview_kinect")
  train, val = read(b, "train"), read(b, "val")
  # Cross-view: cameras 2, 3 train; camera 1 tests.
  assert sorted(train) == ids[1:] and sorted(val) == ids[:1]
  ex = val[ids[0]]
  assert ex["keypoints"].shape == (8, 1, 25, 2) and ex["label"] == 0
  assert assert_on_dot(ex["frames"], ex["keypoints"],
                       ex["keypoint_score"]) == 8 * 25
  assert train[ids[2]]["keypoints"].shape == (8, 0, 25, 2)  # no skeleton file
  s = b.summary.splits["train"]
  assert "pose has 6 frames, video has 8" in " ".join(s.warnings[ids[1]])
  names = tfds.builder_from_directory(b.data_dir).info.features["label"].names
  assert names[0] == "A001" and len(names) == 60


def test_ntu60_real_clip_and_pickle(tmp_path):
  m = tmp_path / "manual"
  m.mkdir()
  shutil.copy(realdata("S001C001P001R001A001_rgb.avi"), m)
  shutil.copy(realdata("ntu60_realpose_2d.pkl"), m / "ntu60_2d.pkl")
  shutil.copy(realdata("label_map_ntu60.txt"), m / "label_map.txt")
  opts = builder_lib.BuildOptions(short_side=64, max_frames=8, progress=False)
  b = build(Ntu60, tmp_path, m, config="xsub", options=opts)
  ex = read(b, "train")["S001C001P001R001A001"]
  assert ex["frames"].shape == (8, 64, 114, 3) and ex["label"] == 0
  info = tfds.builder_from_directory(b.data_dir).info
  assert info.features["label"].names[0] == "drink water"
  assert "val" not in info.splits  # the sample's xsub_val list is empty


# ------------------------------------------------------- Smarthome, N-UCLA


def test_smarthome_csv_and_json(tmp_path):
  m = tmp_path / "manual"
  rows = []
  for i, (stem, label) in enumerate((("Cook.Cleandishes_p02_r00_v02_c03", 0),
                                     ("Drink.Frombottle_p03_r00_v01_c01", 1))):
    write_dot_video(m / "mp4" / f"{stem}.mp4", 7)
    write_json(m / "skeletonv12" / f"{stem}_pose3d.json",
               paab_json(7, 13, missing_frame=3))
    rows.append(f"mp4/{stem}.mp4,skeletonv12/{stem}_pose3d.json,{label}")
  write_text(m / "cs" / "train.csv", rows)
  write_text(m / "cs" / "test.csv", [rows[1].replace(
      "skeletonv12/Drink", "skeletonv12/MISSING")])
  b = build(ToyotaSmarthome, tmp_path, m, config="cs")
  ex = read(b, "train")["mp4/Cook.Cleandishes_p02_r00_v02_c03"]
  check_record(ex, 13, 1, 7, label=0)
  assert (ex["keypoint_score"][3] == 0).all()      # empty frame
  assert (ex["keypoint_score"][:, 0, 12] == 0).all()  # -1 joint
  assert assert_on_dot(ex["frames"], ex["keypoints"],
                       ex["keypoint_score"]) == 6 * 12
  test = read(b, "test")["mp4/Drink.Frombottle_p03_r00_v01_c01"]
  assert test["keypoints"].shape == (7, 0, 13, 2)  # its JSON is missing
  info = tfds.builder_from_directory(b.data_dir).info
  assert info.metadata["joint_layout"] == "smarthome13"
  assert info.features["label"].num_classes == 31


def test_nucla_views_share_file_names(tmp_path):
  m = tmp_path / "manual"
  rows = []
  for view in (1, 2, 3):
    write_dot_video(m / "ucla_rgb" / f"view_{view}" / "a01_s01_e00.mp4", 6)
    write_json(m / "ucla_skeletons" / f"S01A01E00V0{view}_skeleton2d.json",
               paab_json(6, 18))
    rows.append(f"ucla_rgb/view_{view}/a01_s01_e00.mp4,"
                f"ucla_skeletons/S01A01E00V0{view}_skeleton2d.json,0")
  write_text(m / "train.csv", rows[:2])
  write_text(m / "test.csv", rows[2:])
  b = build(NUCLA, tmp_path, m, config="cv")
  train = read(b, "train")
  assert sorted(train) == ["ucla_rgb/view_1/a01_s01_e00",
                           "ucla_rgb/view_2/a01_s01_e00"]
  check_record(train["ucla_rgb/view_2/a01_s01_e00"], 18, 1, 6, label=0)
  assert tfds.builder_from_directory(b.data_dir).info.metadata[
      "joint_layout"] == "openpose18"


# ------------------------------------------------------------------ custom


def test_custom_csv_json_and_keypoint_formats(tmp_path):
  m = tmp_path / "manual"
  for name in ("a", "b", "c", "d"):
    write_dot_video(m / "clips" / f"{name}.mp4", 6)
  kp, score = dot_keypoints(6)
  np.savez(m / "a.npz", keypoint=kp, keypoint_score=score,
           img_shape=np.array([H, W]))
  write_pickle(m / "b.pkl", mmaction_ann("b", 1, 6))
  write_json(m / "c.json", paab_json(6, 17))
  write_text(m / "train.csv", ["video,label,keypoints", "clips/a.mp4,jump,a.npz",
                               "clips/b.mp4,wave,b.pkl",
                               "clips/d.mp4,jump,", "clips/x.mp4,fly,"])
  write_text(m / "classes.txt", ["jump", "wave"])
  write_json(m / "test.json", [{"video": "clips/c.mp4", "label": "wave",
                                "keypoints": "c.json"}])
  b = build(CustomVideos, tmp_path, m, config="coco17")
  train = read(b, "train")
  assert sorted(train) == ["clips/a", "clips/b", "clips/d"]
  assert "fly" in b.summary.splits["train"].skipped["train:4"]
  for vid in ("clips/a", "clips/b"):
    assert_on_dot(train[vid]["frames"], train[vid]["keypoints"],
                  train[vid]["keypoint_score"])
  assert train["clips/d"]["keypoints"].shape == (6, 0, 17, 2)
  ex = read(b, "test")["clips/c"]
  assert ex["label"] == 1
  assert assert_on_dot(ex["frames"], ex["keypoints"],
                       ex["keypoint_score"]) == 6 * 16
  names = tfds.builder_from_directory(b.data_dir).info.features["label"].names
  assert names == ["jump", "wave"]


def test_kinetics400_real_index_with_kpfiles(tmp_path):
  """mmaction2's real K400 index (1-based frame_inds, box scores) + kpfiles
  written here; a second listed video has no kpfile and is kept without pose."""
  from data_prep import poses
  index = poses.load_mmaction_pickle(
      realdata("mmaction2_k400_skeleton_index_sample.pkl"))
  m = tmp_path / "manual"
  m.mkdir()
  shutil.copy(realdata("mmaction2_k400_skeleton_index_sample.pkl"),
              m / "k400_2d.pkl")
  a0, a1 = index["annotations"][:2]
  rows = np.zeros((len(a0["frame_inds"]), 17, 3), np.float32)
  rows[:, :, :2] = (100.0, 50.0)  # pixels of img_shape (320, 570)
  rows[:, :, 2] = 0.8
  write_pickle(m / "kpfiles" / f"{a0['frame_dir']}.pkl", rows)
  for a in (a0, a1):
    write_dot_video(m / f"{a['frame_dir']}.mp4", a["total_frames"], h=72)
  write_text(m / "train.csv", ["label,youtube_id,time_start,time_end,split"] +
             [f"c{a['label']},{a['frame_dir']},0,10,train" for a in (a0, a1)])
  b = build(Kinetics400, tmp_path, m)
  train = read(b, "train")
  ex = train[a0["frame_dir"]]
  keep = a0["box_score"].astype(np.float32) >= 0.5
  frames = a0["frame_inds"][keep].astype(int) - 1
  per_frame = np.bincount(frames, minlength=a0["total_frames"])
  assert ex["keypoints"].shape == (a0["total_frames"], per_frame.max(), 17, 2)
  np.testing.assert_array_equal((ex["keypoint_score"] > 0).any(-1).sum(-1),
                                per_frame)
  scored = ex["keypoint_score"] > 0
  np.testing.assert_allclose(ex["keypoints"][scored],
                             np.broadcast_to([100 * 85 / 570, 50 * 48 / 320],
                                             (scored.sum(), 2)), rtol=1e-5)
  assert train[a1["frame_dir"]]["keypoints"].shape[1] == 0
  warn = " ".join(b.summary.splits["train"].warnings[a1["frame_dir"]])
  assert f"kpfiles/{a1['frame_dir']}.pkl" in warn
