"""The synthetic multi-view world (keypoints land on the rendered joints), the episode folder
format -> records -> in-memory episodes path, and the TCN batch sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep import multiview as mv
from pgvt_jax import alignment_data


def test_keypoints_land_on_rendered_joints():
  cfg = mv.WorldConfig(num_views=4, num_links=4, num_frames=12, image_size=64, seed=3)
  frames, kps, depth = mv.render_episode(cfg, (3, 0))
  assert frames.shape == (4, 12, 64, 64, 3) and kps.shape == (4, 12, 5, 2)
  checked = 0
  for v in range(4):
    for t in range(12):
      for j in range(5):
        x, y = kps[v, t, j]
        # Skip joints whose pixel a nearer joint's disc (drawn later, on top) may cover.
        nearer = [k for k in range(5) if depth[v, t, k] < depth[v, t, j]]
        if any(np.hypot(*(kps[v, t, k] - kps[v, t, j])) < mv.joint_radius(
            depth[v, t, k], cfg) + 1.5 for k in nearer):
          continue
        assert 0 <= x < 64 and 0 <= y < 64
        px = frames[v, t, int(y), int(x)]
        np.testing.assert_array_equal(px, mv.JOINT_COLORS[j], err_msg=f"view {v} t {t} j {j}")
        checked += 1
  assert checked >= 0.8 * 4 * 12 * 5   # the check covers most keypoints
  # Views differ (viewpoint and background).
  assert not np.array_equal(frames[0], frames[1])


def test_world_config_guards():
  with pytest.raises(ValueError, match="num_views"):
    mv.WorldConfig(num_views=5)
  with pytest.raises(ValueError, match="num_links"):
    mv.WorldConfig(num_links=1)


def test_keypoint_json_guards(tmp_path):
  p = tmp_path / "view_0_keypoints.json"
  p.write_text(json.dumps({"width": 8, "height": 8, "keypoints": [[[1, 2], None], [[3, 4]]]}))
  with pytest.raises(ValueError, match="frame 1 has 1 keypoints"):
    mv.read_keypoints(p)
  p.write_text(json.dumps({"keypoints": []}))
  with pytest.raises(ValueError, match="width, height, keypoints"):
    mv.read_keypoints(p)
  p.write_text(json.dumps({"width": 8, "height": 6, "keypoints": [[[1, 2], None, [-1, 3]]]}))
  kp, score, size = mv.read_keypoints(p)
  assert size == (6, 8) and score.tolist() == [[1.0, 0.0, 0.0]] and kp[0, 0].tolist() == [1, 2]


def test_episode_folders_to_records_to_episodes(tmp_path):
  """write_episode -> MultiViewEpisodes (mp4 decode, shared records) -> load_episodes."""
  from data_prep import builder as builder_lib
  from data_prep.datasets import multiview as mv_builder
  cfg = mv.WorldConfig(num_views=2, num_links=3, num_frames=8, image_size=32, seed=1)
  truth = {}
  for split, n in (("train", 2), ("test", 1)):
    for i in range(n):
      frames, kps, _ = mv.render_episode(cfg, (1, i, len(split)))
      kps[1, 3, 2] = np.nan   # one invisible keypoint -> null in JSON -> mask 0
      mv.write_episode(tmp_path / "manual" / split / f"ep{i}", frames, kps, fps=cfg.fps)
      truth[(split, f"ep{i}")] = (frames, kps)
  b = mv_builder.MultiViewEpisodes(
      data_dir=str(tmp_path / "data"), config="arm4",
      options=builder_lib.BuildOptions(short_side=None, progress=False, num_workers=1))
  import tensorflow_datasets as tfds
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / "manual")))
  assert b.summary.split("train").written == 4 and not b.summary.split("train").skipped
  eps = alignment_data.load_episodes(b.data_dir, "train", image_size=32, num_joints=4)
  assert [e.name for e in eps] == ["ep0", "ep1"]
  for e in eps:
    frames, kps = truth[("train", e.name)]
    assert e.frames.shape == (2, 8, 32, 32, 3)
    # H.264 (yuv420) + JPEG round trip: each stored frame is closest to its own source frame.
    flat = lambda x: x.reshape(16, -1).astype(np.float32)
    d = np.abs(flat(e.frames)[:, None] - flat(frames)[None]).mean(-1)
    np.testing.assert_array_equal(d.argmin(1), np.arange(16))
    assert d.diagonal().max() < 20
    vis = np.isfinite(kps).all(-1)
    np.testing.assert_allclose(e.pose[vis], kps[vis], atol=1e-4)
    np.testing.assert_array_equal(e.pose_mask, vis.astype(np.float32))
  # Resizing to the model input scales keypoints with the frames.
  small = alignment_data.load_episodes(b.data_dir, "test", image_size=16, num_joints=4)
  frames, kps = truth[("test", "ep0")]
  np.testing.assert_allclose(small[0].pose[0], kps[0] / 2, atol=1e-4)
  with pytest.raises(ValueError, match="joints_per_person is 5"):
    alignment_data.load_episodes(b.data_dir, "train", image_size=32, num_joints=5)


def test_sample_batch_is_a_function_of_seed_and_step():
  rng = np.random.default_rng(0)
  eps = [alignment_data.Episode(f"e{i}", rng.integers(0, 255, (3, 10, 8, 8, 3), np.uint8),
                                rng.uniform(0, 8, (3, 10, 4, 2)).astype(np.float32),
                                np.ones((3, 10, 4), np.float32)) for i in range(2)]
  a = alignment_data.sample_batch(eps, seed=1, step=5, batch_size=3, frames_per_sample=4)
  b = alignment_data.sample_batch(eps, seed=1, step=5, batch_size=3, frames_per_sample=4)
  c = alignment_data.sample_batch(eps, seed=1, step=6, batch_size=3, frames_per_sample=4)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["times"], c["times"])
  assert a["frames"].shape == (3, 2, 4, 8, 8, 3) and a["pose"].shape == (3, 2, 4, 4, 2)
  assert (np.diff(a["times"], axis=1) > 0).all()
  # Each sample's two views are distinct views of one episode at the same times.
  for s in range(3):
    hits = [(e, v0, v1) for e in eps for v0 in range(3) for v1 in range(3) if v0 != v1 and
            np.array_equal(e.frames[v0, a["times"][s]], a["frames"][s, 0])
            and np.array_equal(e.frames[v1, a["times"][s]], a["frames"][s, 1])]
    assert len(hits) == 1
