"""Pose readers (published layouts) and alignment to the stored frames."""

import json

import numpy as np
import pytest

from data_prep import align
from data_prep import poses
from data_prep import video as video_lib
from tests.dataprep_fixtures import paab_json, realdata


def _video(n_src, size=(48, 64), original=(96, 128), keep=None):
  idx = np.arange(n_src, dtype=np.int32) if keep is None else np.asarray(
      keep, np.int32)
  return video_lib.DecodedVideo(
      frames=np.zeros((len(idx),) + size + (3,), np.uint8), frame_indices=idx,
      fps=25.0, source_fps=25.0, num_source_frames=n_src,
      original_size=original)


def _pose(m, t, v=17, size=None):
  kp = np.stack(np.meshgrid(np.arange(v), np.arange(t)), -1)[..., ::-1]
  kp = np.broadcast_to(kp, (m, t, v, 2)).astype(np.float32) + 1  # (t+1, v+1)
  kp = kp[..., ::-1].copy()  # x = joint + 1, y = frame + 1
  return poses.PoseSequence(kp, np.ones((m, t, v), np.float32), size, "test")


def test_align_scales_and_transposes():
  p = _pose(2, 6, size=(96, 128))
  a = align.align_to_video(p, _video(6, keep=[1, 4]), 17)
  assert a.keypoint.shape == (2, 2, 17, 2) and a.score.shape == (2, 2, 17)
  # Stored frames are half size: x = (joint+1)/2, y = (frame+1)/2.
  np.testing.assert_allclose(a.keypoint[1, 0, 3], [2.0, 2.5])
  np.testing.assert_allclose(a.keypoint[0, 1, 0], [0.5, 1.0])
  assert not a.warnings


def test_nan_and_negative_become_missing():
  p = _pose(1, 4)
  p.keypoint[0, 1, 2] = np.nan
  p.keypoint[0, 2, 5, 0] = -3
  p.score[0, 3, 7] = np.nan
  a = align.align_to_video(p, _video(4, size=(96, 128)), 17)
  for t, v in ((1, 2), (2, 5), (3, 7)):
    assert a.score[t, 0, v] == 0 and (a.keypoint[t, 0, v] == 0).all()
  assert a.counts["nan_or_negative_joints"] == 3
  assert np.isfinite(a.keypoint).all() and (a.score[0] == 1).all()


def test_frame_count_mismatch_clamps_within_tolerance_then_drops():
  p = _pose(1, 10)  # 10 pose frames, video has 14.
  a = align.align_to_video(p, _video(14, size=(96, 128)), 17,
                           clamp_tolerance=2)
  # Frames 10, 11 reuse pose frame 9; frames 12, 13 have no pose.
  np.testing.assert_allclose(a.keypoint[10:12, 0, 0, 1], [10, 10])
  assert (a.score[10:12] == 1).all() and (a.score[12:] == 0).all()
  assert a.counts["frame_count_mismatch"] == 1
  assert a.counts["frames_without_pose"] == 2
  assert "pose has 10 frames, video has 14" in a.warnings[0]


def test_max_persons_keeps_highest_scores_in_slot_order():
  p = _pose(3, 2)
  p.score[0] *= 0.2
  p.keypoint[1] += 100
  p.keypoint[2] += 200
  a = align.align_to_video(p, _video(2, size=(96, 128)), 17, max_persons=2)
  assert a.keypoint.shape[1] == 2
  np.testing.assert_allclose(a.keypoint[0, :, 0, 0], [101, 201])
  assert a.counts["persons_dropped"] == 1


def test_wrong_joint_count_is_an_error():
  with pytest.raises(poses.PoseFormatError, match="13 joints"):
    align.align_to_video(_pose(1, 2, v=13), _video(2), 17)


def test_kinetics_compressed_is_one_based_and_filtered():
  ann = {"frame_dir": "x", "total_frames": 6, "img_shape": (96, 128),
         "frame_inds": np.array([1, 1, 3, 6, 7], np.int16),
         "box_score": np.array([0.9, 0.8, 0.2, 0.9, 0.9], np.float16)}
  rows = np.zeros((5, 17, 3), np.float32)
  rows[:, :, 0] = np.arange(5)[:, None] * 10 + 1  # x identifies the row
  rows[:, :, 2] = 0.7
  p = poses.from_kinetics_compressed(ann, rows, "k.pkl", box_thr=0.5)
  assert p.keypoint.shape == (2, 6, 17, 2)
  # Rows 0, 1 -> frame 0, slots 0, 1; row 2 dropped (box 0.2);
  # row 3 -> frame 5 (1-based 6); row 4 (frame 7) is past total_frames.
  np.testing.assert_allclose(p.keypoint[:, 0, 0, 0], [1, 11])
  np.testing.assert_allclose(p.keypoint[0, 5, 0, 0], 31)
  assert p.score[:, 1:5].sum() == 0 and p.score[1, 5].sum() == 0


def test_paab_json_layout(tmp_path):
  path = tmp_path / "a_pose3d.json"
  path.write_text(json.dumps(paab_json(4, 13, missing_frame=2)))
  p = poses.from_paab_json(path, 13)
  assert p.keypoint.shape == (1, 4, 13, 2)
  from tests.dataprep_fixtures import dot_xy
  np.testing.assert_allclose(p.keypoint[0, 3, 0], dot_xy(3))
  assert p.score[0, 2].sum() == 0          # empty frame
  assert p.score[0, 0, 12] == 0            # -1 joint
  with pytest.raises(poses.PoseFormatError, match="njts=13, expected 18"):
    poses.from_paab_json(path, 18)


def test_ntu_skeleton_text(tmp_path):
  lines = ["2"]
  for t in range(2):
    lines.append("1")
    lines.append("72057594037931101 0 1 1 1 1 0 0.1 0.2 2")
    lines.append("25")
    for j in range(25):
      state = 2 if j else 1
      lines.append(f"0.1 0.2 3.0 200 150 {100 + j + t} {500 + j} 0 0 0 0 "
                   f"{state}")
  path = tmp_path / "S001C001P001R001A001.skeleton"
  path.write_text("\n".join(lines))
  p = poses.from_ntu_skeleton(path)
  assert p.keypoint.shape == (1, 2, 25, 2) and p.image_size == (1080, 1920)
  np.testing.assert_allclose(p.keypoint[0, 1, 3], [104, 503])
  assert p.score[0, 0, 0] == 0.5 and p.score[0, 0, 1] == 1.0
  bad = tmp_path / "bad.skeleton"
  bad.write_text("3\n1\n")
  with pytest.raises(poses.PoseFormatError, match="bad.skeleton"):
    poses.from_ntu_skeleton(bad)


def test_real_pose_pickle_aligns_to_its_video():
  data = poses.load_mmaction_pickle(realdata("ntu60_realpose_2d.pkl"))
  ann = data["annotations"][0]
  p = poses.from_mmaction(ann, "ntu60")
  v = _video(103, size=(256, 455), original=(1080, 1920))
  a = align.align_to_video(p, v, 17)
  assert a.keypoint.shape == (103, 1, 17, 2) and not a.warnings
  scale = np.array([455 / 1920, 256 / 1080])
  valid = a.score[:, 0] > 0
  assert valid.mean() > 0.9
  np.testing.assert_allclose(a.keypoint[:, 0][valid],
                             (ann["keypoint"][0] * scale)[valid], rtol=1e-5)
