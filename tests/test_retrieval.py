"""Video retrieval: R@k against a NumPy reference; end to end on synthetic records with a
tiny trained run."""

import csv
import json
import shutil

import numpy as np
import pytest

from pgvt_jax import retrieval

pytestmark = pytest.mark.usefixtures("fast_compiles")


def _reference_recall(sim, ql, gl, k, exclude_self):
  """Loop over queries: sort the gallery by similarity, drop the query itself, look for its
  class among the first k (written from the paper's definition)."""
  hits = 0
  for i in range(sim.shape[0]):
    cands = [j for j in range(sim.shape[1]) if not (exclude_self and j == i)]
    cands.sort(key=lambda j: (-sim[i, j], j))
    hits += any(gl[j] == ql[i] for j in cands[:k])
  return hits / sim.shape[0]


@pytest.mark.parametrize("exclude_self", [False, True])
def test_recall_matches_reference(exclude_self):
  rng = np.random.default_rng(0)
  q = rng.normal(size=(30, 8))
  g = q if exclude_self else rng.normal(size=(45, 8))
  ql = rng.integers(0, 6, 30)
  gl = ql if exclude_self else rng.integers(0, 6, 45)
  sim = retrieval.cosine_similarity(q, g)
  ref_sim = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
      g / np.linalg.norm(g, axis=1, keepdims=True)).T
  np.testing.assert_allclose(sim, ref_sim, rtol=1e-12)
  order = retrieval.rank_gallery(sim, exclude_self=exclude_self)
  n = g.shape[0] - (1 if exclude_self else 0)
  got = retrieval.recall_at_k(order, ql, gl, (1, 5, 10, 100), n)
  for k in (1, 5, 10, 100):
    assert got[f"R@{k}"] == pytest.approx(_reference_recall(sim, ql, gl, k, exclude_self))
  assert got["R@100"] == (1.0 if not exclude_self else _reference_recall(sim, ql, gl, 100,
                                                                          True))


def test_self_is_never_a_neighbour():
  feats = np.eye(4)  # each video is only similar to itself
  order = retrieval.rank_gallery(retrieval.cosine_similarity(feats, feats), exclude_self=True)
  assert np.all(order[:, -1] == np.arange(4))
  got = retrieval.recall_at_k(order, np.arange(4), np.arange(4), (1, 3), 3)
  assert got == {"R@1": 0.0, "R@3": 0.0}  # no other video of its class exists


def test_records_spec():
  assert retrieval.parse_records("/a/b/1.0.0:test") == ("/a/b/1.0.0", "test")
  assert retrieval.parse_records("/a/b/1.0.0") == ("/a/b/1.0.0", None)
  assert retrieval.parse_records("~/x/1.0.0") == ("~/x/1.0.0", None)


def _tiny_video_config(tmp_path):
  """(config, records dir): the demo's video_only model on 8 + 6 tiny synthetic clips (3
  classes, 2 frames)."""
  from data_prep.datasets import synthetic  # pylint: disable=g-import-not-at-top
  from configs import demo  # pylint: disable=g-import-not-at-top
  records = synthetic.build(str(tmp_path / "syn"), num_train=8, num_test=6, num_classes=3,
                            num_frames=8, image_size=32, class_set="coarse")
  config = demo.get_config("video_only")
  config.synthetic_data.enabled = False
  config.data.builder_dir = records
  config.model.num_classes = 3
  config.model.video_frames, config.model.pose_frames = 2, 2
  return config, records


@pytest.mark.e2e  # a whole training run (20-40 s)
def test_end_to_end_on_synthetic_records(tmp_path):
  from pgvt_jax import train  # pylint: disable=g-import-not-at-top
  config, records = _tiny_video_config(tmp_path)
  config.model.paab_layers = (2,)  # PAAB reads keypoints at inference too
  config.data.train_batch_size = config.data.eval_batch_size = 4
  config.total_steps, config.log_every, config.async_checkpoints = 2, 1, False
  run = tmp_path / "run"
  train.train_and_evaluate(config, str(run))

  out = tmp_path / "out"
  result = retrieval.run(str(run), f"{records}:test", f"{records}:train", out_dir=str(out),
                         neighbours=3)
  assert result["num_queries"] == 6 and result["num_gallery"] == 8
  assert not result["exclude_self"]
  assert 0 <= result["R@1"] <= result["R@5"] <= result["R@10"] == 1.0  # 3 classes, 8 videos
  saved = json.loads((out / "retrieval.json").read_text())
  assert saved["R@5"] == result["R@5"]
  rows = list(csv.DictReader(open(out / "neighbours.csv", encoding="utf-8")))
  assert len(rows) == 6 * 3
  # R@1 recomputed from the CSV's first neighbours.
  first = [r for r in rows if r["rank"] == "1"]
  assert np.mean([r["same_class"] == "1" for r in first]) == pytest.approx(result["R@1"])
  sims = [float(r["similarity"]) for r in rows if r["query"] == rows[0]["query"]]
  assert sims == sorted(sims, reverse=True)

  # Query = gallery: each video excluded from its own neighbours; config.json is read back.
  same = retrieval.run(str(run), records, records, out_dir=str(tmp_path / "same"))
  assert same["exclude_self"] and same["num_queries"] == same["num_gallery"] == 6
  rows = list(csv.DictReader(open(tmp_path / "same" / "neighbours.csv", encoding="utf-8")))
  assert all(r["query"] != r["neighbour"] for r in rows)


def test_fit_joints_pads_with_masked_joints():
  rng = np.random.default_rng(0)
  batch = {"pose": rng.random((2, 3, 18, 2)), "pose_mask": np.ones((2, 3, 18)), "label": 1}
  out = retrieval.fit_joints(batch, 25)  # N-UCLA (18) into an NTU (25) PAAB model
  assert out["pose"].shape == (2, 3, 25, 2) and out["pose_mask"].shape == (2, 3, 25)
  np.testing.assert_array_equal(out["pose"][:, :, :18], batch["pose"])
  assert not out["pose_mask"][:, :, 18:].any() and out["pose_mask"][:, :, :18].all()
  assert retrieval.fit_joints(batch, 18) is batch
  with pytest.raises(ValueError, match="18 joints"):
    retrieval.fit_joints(batch, 13)


def test_padded_joints_give_the_same_pose_maps():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pgvt_jax.models import pose_maps  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  batch = {"pose": rng.random((1, 2, 18, 2)) * 32, "pose_mask": rng.random((1, 2, 18)) > 0.3}
  padded = retrieval.fit_joints(batch, 25)
  a = pose_maps.pose_maps(jnp.asarray(batch["pose"]), jnp.asarray(batch["pose_mask"]),
                          image_size=32, patch_size=8)[0]
  b = pose_maps.pose_maps(jnp.asarray(padded["pose"]), jnp.asarray(padded["pose_mask"]),
                          image_size=32, patch_size=8)[0]
  np.testing.assert_array_equal(a, b)


@pytest.mark.e2e  # a whole training run (20-40 s)
def test_retrieval_is_an_evaluator_of_the_training_loop(tmp_path):
  """config.eval_retrieval: every evaluation also reports R@k (eval/retrieval_R@k), the last
  one writes RUN/retrieval/, and the figures are the CLI's on the finished run."""
  from pgvt_jax import metric_writer, train  # pylint: disable=g-import-not-at-top
  config, records = _tiny_video_config(tmp_path)
  config.data.train_batch_size = config.data.eval_batch_size = 4
  config.total_steps, config.log_every, config.async_checkpoints = 2, 1, False
  config.eval_every = 1
  config.eval_retrieval.query, config.eval_retrieval.gallery = (f"{records}:test",
                                                                f"{records}:train")
  run = tmp_path / "run"
  out = train.train_and_evaluate(config, str(run))
  assert {"eval/top1", "eval/retrieval_R@1", "eval/retrieval_R@5",
          "eval/retrieval_R@10"} <= set(out)
  evals = [r for r in metric_writer.read_metrics(run) if "eval/retrieval_R@1" in r]
  assert [r["step"] for r in evals] == [1, 2]
  written = json.loads((run / "retrieval" / "retrieval.json").read_text())
  # The CLI reads the best checkpoint, else the latest: without best/ it reads the final step.
  final = tmp_path / "final"
  shutil.copytree(run, final, ignore=shutil.ignore_patterns(".lock", "best"))
  cli = retrieval.run(str(final), f"{records}:test", f"{records}:train",
                      out_dir=str(tmp_path / "cli"))
  for k in (1, 5, 10):
    assert cli[f"R@{k}"] == written[f"R@{k}"] == out[f"eval/retrieval_R@{k}"]
