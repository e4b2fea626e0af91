"""The PAAB/PAAT protocols from the datasets' own file names: NTU CVS1-3, Smarthome CS,
N-UCLA's per-protocol configs."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep.datasets import NUCLA, Ntu60, ToyotaSmarthome
from data_prep.datasets import ntu as ntu_lib
from data_prep.datasets import paab as paab_lib
from tests.dataprep_fixtures import (paab_json, write_dot_video, write_json, write_text)
from tests.test_dataprep_builders import _ntu_skeleton_text, build, read


@pytest.mark.parametrize("camera,rep,view", [(1, 1, 45), (1, 2, 45), (2, 2, 0), (3, 1, 0),
                                             (2, 1, 90), (3, 2, 90)])
def test_cvs_views_follow_surreact(camera, rep, view):
  assert ntu_lib.cvs_view(camera, rep) == view


def test_ntu_cvs_splits(tmp_path):
  m = tmp_path / "manual"
  ids = []
  # P001 trains (cross-subject training subject), P003 tests. Performance
  # (S001, P, R, A) is seen by cameras 1-3; one test performance lacks camera 2.
  for subject, rep in ((1, 1), (1, 2), (3, 1), (3, 2)):
    for camera in (1, 2, 3):
      if (subject, rep, camera) == (3, 2, 2):
        continue
      ids.append(f"S001C{camera:03d}P{subject:03d}R{rep:03d}A005")
  for vid in ids:
    write_dot_video(m / "nturgb+d_rgb" / f"{vid}_rgb.avi", 4, h=72)
    write_text(m / "nturgb+d_skeletons" / f"{vid}.skeleton", [_ntu_skeleton_text(4)])
  b = build(Ntu60, tmp_path, m, config="cvs")
  info = tfds.builder_from_directory(b.data_dir).info
  assert sorted(info.splits) == ["test_0", "test_45", "test_90", "train"]
  # Training: the 0 degree views of P001: C003 R001 and C002 R002.
  assert sorted(read(b, "train")) == ["S001C002P001R002A005", "S001C003P001R001A005"]
  # Testing P003 R001 only (R002 misses camera 2): 0 = C003, 45 = C001, 90 = C002.
  assert sorted(read(b, "test_0")) == ["S001C003P003R001A005"]
  assert sorted(read(b, "test_45")) == ["S001C001P003R001A005"]
  ex = read(b, "test_90")["S001C002P003R001A005"]
  assert ex["label"] == 4 and ex["keypoints"].shape == (4, 1, 25, 2)
  assert info.metadata["joint_layout"] == "ntu25"


def test_smarthome_cs_from_file_names(tmp_path):
  m = tmp_path / "manual"
  acts = [f"Act{i:02d}.Thing" for i in range(31)]
  write_text(m / "label_map.txt", acts)
  stems = {"Act03.Thing_p03_r00_v01_c01": "train", "Act07.Thing_p25_r01_v02_c05": "train",
           "Act03.Thing_p02_r00_v01_c02": "test", "Act30.Thing_p18_r02_v05_c07": "test"}
  for stem in stems:
    write_dot_video(m / "mp4" / f"{stem}.mp4", 5)
    write_json(m / "skeletonv12" / f"{stem}_pose3d.json", paab_json(5, 13))
  b = build(ToyotaSmarthome, tmp_path, m, config="cs")
  train, test = read(b, "train"), read(b, "test")
  assert sorted(train) == sorted(s for s, v in stems.items() if v == "train")
  assert sorted(test) == sorted(s for s, v in stems.items() if v == "test")
  assert train["Act07.Thing_p25_r01_v02_c05"]["label"] == 7
  assert test["Act30.Thing_p18_r02_v05_c07"]["label"] == 30
  assert test["Act30.Thing_p18_r02_v05_c07"]["keypoints"].shape == (5, 1, 13, 2)
  assert len(paab_lib.SMARTHOME_CS_TRAIN) == 11


def test_smarthome_names_without_all_classes_ask_for_label_map(tmp_path):
  m = tmp_path / "manual"
  write_dot_video(m / "mp4" / "Cook.Stir_p03_r00_v01_c01.mp4", 5)
  with pytest.raises(ValueError, match="label_map.txt"):
    build(ToyotaSmarthome, tmp_path, m, config="cs")
  with pytest.raises(FileNotFoundError, match="cv1"):  # cross-view needs its CSVs
    build(ToyotaSmarthome, tmp_path / "b", m, config="cv1")


@pytest.mark.parametrize("config", ["cs", "cv1", "cv3"])
def test_nucla_protocol_configs_read_their_csvs(config, tmp_path):
  m = tmp_path / "manual"
  rows = []
  for view in (1, 2, 3):
    write_dot_video(m / "ucla_rgb" / f"view_{view}" / "a02_s01_e00.mp4", 4)
    write_json(m / "ucla_skeletons" / f"S01A02E00V0{view}_skeleton2d.json", paab_json(4, 18))
    rows.append(f"ucla_rgb/view_{view}/a02_s01_e00.mp4,"
                f"ucla_skeletons/S01A02E00V0{view}_skeleton2d.json,1")
  write_text(m / config / "train.csv", rows[:2])
  write_text(m / config / "test.csv", rows[2:])
  b = build(NUCLA, tmp_path, m, config=config)
  assert sorted(read(b, "test")) == ["ucla_rgb/view_3/a02_s01_e00"]
  assert str(b.data_dir).endswith(f"nucla/{config}/1.0.0")
