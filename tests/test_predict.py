"""predict: a trained tiny run classifies freshly rendered mp4 clips; every bad input is a
clear one-paragraph error (no traceback)."""

import csv
import json

import numpy as np
import pytest

from pgvt_jax import predict
from tests.predict_fixtures import NUM_CLASSES, render_mp4, tiny_config

# The module's tests share whole trainings (a 150-step run and three 2-step runs: ~90 s of
# fixtures), so they run with the end-to-end tests (`-m e2e`; CI runs both).
pytestmark = pytest.mark.e2e


def write_npz(path, keypoints):
  """keypoints (T, V, 2) -> the `.npz` pose format data_prep reads (M, T, V, 2)."""
  kp = np.asarray(keypoints, np.float32)[None]
  np.savez(path, keypoint=kp, keypoint_score=np.ones(kp.shape[:3], np.float32))
  return path


@pytest.fixture(scope="module")
def predictor(trained_run):
  return predict.load(trained_run[0])


@pytest.fixture
def cli(monkeypatch, trained_run, predictor):
  """`predict.run` with the module's Predictor (loading is tested by the fixture; each load
  compiles the model again, which is slow on a small CPU)."""
  def load(workdir, **kw):
    assert str(workdir) == str(trained_run[0])
    if kw.get("config") is not None:
      return real_load(workdir, **kw)
    return predictor
  real_load = predict.load
  monkeypatch.setattr(predict, "load", load)
  return lambda *args: predict.run(["predict", f"--workdir={trained_run[0]}", *args])


def test_trained_run_predicts_rendered_mp4_clips(trained_run, predictor, cli, tmp_path,
                                                 capsys):
  """Fresh clips of each class (seeds the training set never used), rendered to mp4."""
  workdir, metrics = trained_run
  assert metrics["eval/top1"] >= 0.9, metrics   # it learned (chance is 1/3)
  names = predictor.class_names
  assert names[0].startswith("left_arm") and len(names) == NUM_CLASSES
  for label in range(NUM_CLASSES):
    video = tmp_path / f"clip{label}.mp4"
    kp = write_npz(tmp_path / f"clip{label}.npz", render_mp4(video, label, seed=label))
    assert cli(f"--video={video}", f"--keypoints={kp}", "--json", "--topk=3") == 0
    top = json.loads(capsys.readouterr().out)["top_k"]
    assert top[0]["class"] == names[label], (label, top)
    assert abs(sum(t["probability"] for t in top) - 1) < 1e-5  # all 3 classes listed


def test_python_api_matches_the_file_path_and_averages_views(predictor, tmp_path):
  video = tmp_path / "clip.mp4"
  kp = render_mp4(video, 1, seed=7)
  record = predictor.load_video(video, write_npz(tmp_path / "clip.npz", kp))
  probs = predictor(record["frames"], kp)
  np.testing.assert_allclose(probs, predictor.predict_file(video, tmp_path / "clip.npz"),
                             atol=1e-6)
  assert probs.shape == (NUM_CLASSES,) and abs(probs.sum() - 1) < 1e-5
  # Three views (1 clip x 3 crops): the mean of the per-view softmaxes, as evaluation does.
  config = tiny_config("unused")
  config.data.eval_crops = 3
  three = predict.Predictor(config=config, model=predictor.model,
                            trainable=predictor.trainable, frozen=predictor.frozen,
                            class_names=predictor.class_names, skeleton=predictor.skeleton,
                            step=predictor.step)
  batch = three.views(three.record(record["frames"], kp))
  assert batch["frames"].shape[0] == 3
  per_view = np.stack([three.probs_of_views({k: v[i:i + 1] for k, v in batch.items()})
                       for i in range(3)])
  np.testing.assert_allclose(three.probs_of_views(batch), per_view.mean(0), atol=1e-6)


def test_directory_of_videos_gives_a_csv(cli, tmp_path):
  videos, kps = tmp_path / "videos", tmp_path / "kps"
  videos.mkdir()
  kps.mkdir()
  for label in range(2):
    write_npz(kps / f"v{label}.npz", render_mp4(videos / f"v{label}.mp4", label, seed=20 + label))
  (videos / "broken.mp4").write_bytes(b"not a video")
  out = tmp_path / "pred.csv"
  assert cli(f"--video={videos}", f"--keypoints={kps}", f"--out={out}", "--topk=2") == 0
  rows = list(csv.DictReader(open(out)))
  assert [r["video"] for r in rows] == ["broken.mp4", "v0.mp4", "v1.mp4"]
  assert "cannot read the video" in rows[0]["error"] and not rows[0]["class1"]
  assert rows[1]["class1"] and not rows[1]["error"] and float(rows[1]["prob1"]) > 0


def _cli_error(capsys, run, *args):
  rc = run(*args)
  err = capsys.readouterr().err
  assert rc == 2
  assert "Traceback" not in err
  return err


def test_unreadable_video_is_a_clear_error(cli, tmp_path, capsys):
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"\x00" * 100)
  err = _cli_error(capsys, cli, f"--video={bad}")
  assert "cannot read the video" in err and str(bad) in err
  err = _cli_error(capsys, cli, f"--video={tmp_path / 'none.mp4'}")
  assert "not found" in err


def test_wrong_joint_count_and_shape_are_clear_errors(cli, predictor, tmp_path, capsys):
  video = tmp_path / "clip.mp4"
  kp = render_mp4(video, 0, seed=3)
  ntu = write_npz(tmp_path / "ntu.npz", np.zeros((len(kp), 25, 2), np.float32) + 5)
  err = _cli_error(capsys, cli, f"--video={video}", f"--keypoints={ntu}")
  assert "25 joints" in err and "17" in err
  frames = predictor.load_video(video, write_npz(tmp_path / "ok.npz", kp))["frames"]
  with pytest.raises(predict.PredictError, match=r"expected \(T=16, V, 2\)"):
    predictor(frames, np.zeros((len(frames), 17, 3)))
  with pytest.raises(predict.PredictError, match="T=16"):
    predictor(frames, kp[:5])
  with pytest.raises(predict.PredictError, match="coco17"):
    predictor(frames, np.zeros((len(frames), 13, 2)))
  with pytest.raises(predict.PredictError, match="uint8"):
    predictor(frames.astype(np.float32), kp)


def test_pose_model_without_keypoints_names_the_options(predictor, tmp_path):
  video = tmp_path / "clip.mp4"
  render_mp4(video, 0, seed=4)
  with pytest.raises(predict.PredictError, match="--keypoints=FILE.*extractor.*video_only"):
    predictor.predict_file(video)


def test_pose_model_uses_a_configured_extractor(predictor, tmp_path, monkeypatch):
  """No keypoint file: the configured extractor runs on the decoded frames (here one that
  returns the generator's exact keypoints, standing in for mediapipe)."""
  video = tmp_path / "clip.mp4"
  kp = render_mp4(video, 2, seed=5)
  calls = []

  def extractor(frames):
    calls.append(frames.shape)
    return kp[:, None], np.ones(kp.shape[:2], np.float32)[:, None]

  extractor.name, extractor.layout = "exact", "coco17"
  monkeypatch.setattr(predictor, "extractor", extractor)
  pred = predictor
  probs = pred.predict_file(video)
  assert calls == [(16, 32, 32, 3)]
  np.testing.assert_allclose(probs, pred.predict_file(video, write_npz(tmp_path / "k.npz", kp)),
                             atol=1e-6)


def test_pose_free_model_needs_no_keypoints(short_runs, tmp_path):
  video = tmp_path / "clip.mp4"
  render_mp4(video, 0, seed=6)
  pred = predict.load(short_runs["video_only"])
  assert not pred.needs_pose
  probs = pred.predict_file(video)
  assert probs.shape == (NUM_CLASSES,) and abs(probs.sum() - 1) < 1e-5


@pytest.mark.parametrize("override, message", [
    (dict(num_classes=5), "checkpoint of 3 classes"),
    (dict(variant="pgvt", pose_format="coords"), "another variant"),
])
def test_checkpoint_of_another_model_is_a_clear_error(trained_run, override, message):
  config = predict.load_config(trained_run[0])
  for k, v in override.items():
    config.model[k] = v
  config.data.pose_format = config.model.pose_format
  with pytest.raises(predict.PredictError, match=message):
    predict.load(trained_run[0], config=config)


def test_not_a_workdir(tmp_path, capsys):
  err = _cli_error(capsys, lambda *a: predict.run(["predict", *a]), f"--workdir={tmp_path}",
                   f"--video={tmp_path / 'x.mp4'}")
  assert "no config.json" in err


def test_missing_step_lists_the_kept_ones(trained_run):
  with pytest.raises(predict.PredictError, match=r"no checkpoint at step 7; kept steps: \[150\]"):
    predict.load(trained_run[0], step=7)
