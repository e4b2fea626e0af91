"""The build CLI and pose extraction for videos without pose files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import build
from data_prep import builder as builder_lib
from data_prep import extractors
from data_prep import records
from data_prep.datasets import CustomVideos
from tests.dataprep_fixtures import (assert_on_dot, dot_xy, realdata,
                                     write_dot_video, write_text)


def _custom_manual(root):
  m = root / "manual"
  write_dot_video(m / "a.mp4", 6)
  write_dot_video(m / "b.mp4", 6)
  (m / "broken.mp4").write_bytes(b"\x00" * 1000)
  write_text(m / "train.csv", ["a.mp4,0", "b.mp4,1", "broken.mp4,1"])
  return m


def test_cli_builds_and_reports(tmp_path, capsys):
  m = _custom_manual(tmp_path)
  assert build.main([f"--dataset=custom", "--config=coco17",
                     f"--manual_dir={m}", f"--data_dir={tmp_path / 'data'}",
                     "--short_side=48", "--max_frames=4"]) == 0
  out = capsys.readouterr().out
  assert "[train] listed 3, written 2, skipped 1" in out
  assert "skipped broken: video:" in out
  path = [l for l in out.splitlines() if l.startswith("Records: ")][0][9:]
  assert out.strip().splitlines()[-1].strip() == (
      f"python -m pgvt_jax.main --config=configs/custom.py:builder_dir={path} "
      f"--workdir=workdirs/custom_coco17")
  with open(os.path.join(path, "build_summary.json")) as f:
    summary = json.load(f)
  assert list(summary["splits"]["train"]["skipped_videos"]) == ["broken"]
  b = tfds.builder_from_directory(path)
  assert b.info.metadata["build_options"]["max_frames"] == 4
  ex = records.decode_example(b.as_data_source("train")[0])
  assert ex["frames"].shape == (4, 48, 64, 3)
  assert ex["keypoints"].shape == (4, 0, 17, 2)  # no keypoint files given
  # A second run reuses the records.
  build.main([f"--dataset=custom", "--config=coco17", f"--manual_dir={m}",
              f"--data_dir={tmp_path / 'data'}", "--short_side=48",
              "--max_frames=4"])
  assert "already built" in capsys.readouterr().out


def test_cli_split_with_every_video_skipped_is_a_short_error(tmp_path):
  """TFDS cannot write an empty split; the CLI says which and why, without a traceback."""
  m = tmp_path / "manual"
  write_dot_video(m / "a.mp4", 6)
  write_dot_video(m / "b.mp4", 6)
  write_text(m / "train.csv", ["a.mp4,-1"])  # the only training video: a bad label
  write_text(m / "test.csv", ["b.mp4,0"])
  root = Path(__file__).resolve().parents[1]
  proc = subprocess.run(
      [sys.executable, "-m", "data_prep.build", "--dataset=custom", "--config=coco17",
       f"--manual_dir={m}", f"--data_dir={tmp_path / 'data'}", "--short_side=48",
       "--max_frames=4", "--num_workers=1"],
      cwd=root, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1, (proc.returncode, proc.stderr)
  assert "Traceback" not in proc.stderr, proc.stderr
  err = proc.stderr[proc.stderr.index("error: "):]  # after the progress bar
  assert err.startswith("error: custom_videos: no video of split 'train' could be written"), err
  assert "[train] listed 1, written 0, skipped 1" in err, err
  assert "skipped train:1: listing:" in err and "['a.mp4', '-1']" in err, err
  assert len(err.strip().splitlines()) < 10, err


def test_records_found_by_tfds_name(tmp_path):
  """Built records load by TFDS name (read-only, and as the registered builder), and through
  config.data.name + data_dir."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from pgvt_jax import data  # pylint: disable=g-import-not-at-top
  m = _custom_manual(tmp_path)
  data_dir = str(tmp_path / "data")
  build.build_dataset("custom", data_dir, str(m), "coco17",
                      builder_lib.BuildOptions(short_side=32, max_frames=2,
                                               progress=False))
  src = tfds.data_source("custom_videos/coco17", split="train",
                         data_dir=data_dir)
  assert len(src) == 2
  b = tfds.builder("custom_videos/coco17", data_dir=data_dir)
  assert isinstance(b, CustomVideos) and b.info.splits["train"].num_examples == 2
  cfg = ml_collections.ConfigDict(dict(builder_dir="", name="custom_videos/coco17",
                                       data_dir=data_dir, skeleton=""))
  source = data.open_source(cfg, "train")
  assert len(source) == 2 and source.skeleton.name == "coco17"


def test_cli_beam_without_apache_beam(tmp_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("apache_beam") is not None:
    pytest.skip("apache_beam is installed")
  with pytest.raises(SystemExit, match=r"needs Apache Beam: pip install 'pgvt_jax\[beam\]'"):
    build.main(["--dataset=custom", "--config=coco17", f"--manual_dir={tmp_path}",
                f"--data_dir={tmp_path}", "--beam_options=--runner=DirectRunner"])


def test_cli_needs_manual_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="Diving48_V2_train.json"):
    build.build_dataset("diving48", str(tmp_path), str(tmp_path / "nope"))


class _DotFinder:
  """A stand-in pose model: finds the brightest blob per frame."""
  name, layout = "dot_finder", "coco17"

  def __call__(self, frames):
    t = len(frames)
    kp = np.zeros((t, 1, 17, 2), np.float32)
    for i, f in enumerate(frames):
      ys, xs = np.nonzero(f.mean(-1) > 128)
      kp[i, 0] = (xs.mean() + 0.5, ys.mean() + 0.5)
    return kp, np.ones((t, 1, 17), np.float32)


def test_extractor_fills_missing_poses(tmp_path):
  assert isinstance(_DotFinder(), extractors.PoseExtractor)
  m = _custom_manual(tmp_path)
  opts = builder_lib.BuildOptions(short_side=48, max_frames=3, progress=False,
                                  missing_pose="extract",
                                  extractor=_DotFinder())
  b, summary = build.build_dataset("custom", str(tmp_path / "data"), str(m),
                                   "coco17", opts)
  assert summary.splits["train"].counts["poses_extracted"] == 2
  ex = records.decode_example(b.as_data_source("train")[0])
  assert ex["keypoints"].shape == (3, 1, 17, 2)
  np.testing.assert_allclose(ex["keypoints"][:, 0, 0],
                             dot_xy(ex["frame_indices"]) * 0.5, atol=0.6)
  assert assert_on_dot(ex["frames"], ex["keypoints"],
                       ex["keypoint_score"]) == 3 * 17


def test_blazepose_mapping():
  lm = np.full((2, 33, 4), np.nan, np.float32)
  lm[0] = np.stack([np.linspace(0, 1, 33), np.full(33, 0.5), np.zeros(33),
                    np.full(33, 0.8)], -1)
  kp, score = extractors.blazepose_to_coco17(lm, h=100, w=200)
  assert kp.shape == (2, 1, 17, 2)
  np.testing.assert_allclose(kp[0, 0, 5], [200 * 11 / 32, 50])  # L shoulder
  assert (score[0] == 0.8).all() and (score[1] == 0).all()


def test_mediapipe_extractor_on_a_real_clip():
  """Needs a mediapipe-0.10.21 venv: PGVT_MEDIAPIPE_PYTHON=<its python>."""
  python = os.environ.get("PGVT_MEDIAPIPE_PYTHON")
  if not python:
    pytest.skip("PGVT_MEDIAPIPE_PYTHON not set")
  from data_prep import video
  v = video.decode_video(realdata("mmaction2_demo_skeleton.mp4"), 128,
                         max_frames=8)
  kp, score = extractors.MediaPipePose(python)(v.frames)
  assert kp.shape == (8, 1, 17, 2) and (score.sum(-1) > 0).all()
  # Nose above the hips, hips above the ankles.
  assert (kp[:, 0, 0, 1] < kp[:, 0, 11, 1]).all()
  assert (kp[:, 0, 11, 1] < kp[:, 0, 15, 1]).all()
