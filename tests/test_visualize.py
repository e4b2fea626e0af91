"""Recorded attention (explicit softmax, visualisation only) vs the fused path; figure PNGs."""

import jax
import numpy as np
import pytest
from data_prep import skeletons

from pgvt_jax import visualize
from pgvt_jax.models import factory, pgvt, pose_aware
from pgvt_jax.models.config import ModelConfig
from tests.test_models_variants import random_batch  # one random-batch helper

pytestmark = pytest.mark.usefixtures("fast_compiles")

# Both streams, T_h = 2 T_l (FC_down/FC_up mix frames), COCO-17 so the skeleton can be drawn.
TINY = dict(backbone="Ti/8", image_size=32, pose_frames=4, video_frames=2, num_classes=5,
            joints_per_person=17, num_persons=1, drop_path=0.0, dropout=0.0)


def random_params(model, seed=0, std=0.1):
  """Every leaf random, so zero-initialised adapters/R-Adapter outputs contribute too."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: (std * rng.normal(size=s.shape)).astype(np.float32),
                                pgvt.param_shapes(model))


@pytest.mark.parametrize("variant", ["pgvt", "video_only", "pose_only"])
def test_recorded_path_equals_fused_path(variant):
  m = ModelConfig(**TINY, variant=variant)
  model = pgvt.PoseVideoTransformer(m)
  params = random_params(model)
  batch = random_batch(m)
  fused, fused_out = model.apply({"params": params}, batch, train=False)
  recorded, out, attn = visualize.record_attention(model, params, batch)
  np.testing.assert_allclose(recorded, np.asarray(fused), atol=1e-5, rtol=0)
  np.testing.assert_allclose(out["feature"], np.asarray(fused_out["feature"]), atol=1e-5, rtol=0)
  # Every attention call of every block was recorded, with the documented shapes.
  names = {k.rsplit("/", 1)[-1] for k in attn}
  want = {"pgvt": {"pose_temporal", "pose_spatial", "video_spatial", "pose_to_video",
                   "video_to_pose"},
          "video_only": {"video_temporal", "video_spatial"},
          "pose_only": {"pose_temporal", "pose_spatial"}}[variant]
  assert names == want
  assert len(attn) == len(want) * m.clip.layers
  for k, w in attn.items():
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5, err_msg=k)  # rows are softmaxes
  if variant == "pgvt":
    n_z, n_p = m.clip.num_tokens, m.pose_tokens
    assert attn["resblocks_0/attn/video_spatial"].shape == (2 * m.video_frames, n_z, n_z)
    assert attn["resblocks_0/attn/pose_spatial"].shape == (2 * m.pose_frames, n_p, n_p)
    assert attn["resblocks_1/R_Adapter/pose_to_video"].shape == (2 * m.video_frames, n_p, n_z)
    assert attn["resblocks_1/R_Adapter/video_to_pose"].shape == (2 * m.video_frames, n_z, n_p)


def test_recorded_weights_match_a_numpy_softmax():
  """The recorded spatial attention of block 0 equals softmax(QK^T/sqrt(d)) from NumPy."""
  m = ModelConfig(**TINY, variant="video_only")
  model = pgvt.PoseVideoTransformer(m)
  params = random_params(model, seed=1)
  batch = random_batch(m, seed=1)
  _, _, attn = visualize.record_attention(model, params, batch)
  # Block 0's spatial input: the tokens after the temporal sub-block, recomputed here.
  _, inter = model.apply({"params": params}, batch, train=False,
                         capture_intermediates=lambda mdl, _: mdl.name == "ln_1")
  ln1 = inter["intermediates"]["resblocks_0"]["ln_1"]["__call__"]
  x = np.asarray(ln1[1]).reshape(-1, m.clip.num_tokens, m.clip.width)  # 2nd call: spatial
  p = params["resblocks_0"]["attn"]
  q = np.einsum("bld,dhk->blhk", x, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("bld,dhk->blhk", x, p["key"]["kernel"]) + p["key"]["bias"]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w = (w / w.sum(-1, keepdims=True)).mean(1)
  np.testing.assert_allclose(attn["resblocks_0/attn/video_spatial"], w, atol=1e-5)


def sharp_params(model, seed=0):
  """Random params with larger query/key kernels: peaked (not near-uniform) attention. The
  R-Adapter's inputs are not layer-normalised and small here, so its kernels grow more."""
  def scale(path, x):
    names = [getattr(k, "key", "") for k in path]
    if not any(n.endswith(("query", "key")) for n in names):
      return x
    return x * (100 if "R_Adapter" in names else 10)
  return jax.tree_util.tree_map_with_path(scale, random_params(model, seed))


def test_heatmaps_change_with_the_input():
  m = ModelConfig(**TINY, variant="pgvt")
  model = pgvt.PoseVideoTransformer(m)
  params = sharp_params(model)
  maps = []
  for seed in (0, 1):
    _, _, attn = visualize.record_attention(model, params, random_batch(m, seed=seed))
    maps.append((visualize.video_cls_maps(attn, 1, 2), visualize.pose_cls_weights(attn, 1, 2),
                 visualize.pose_to_video_maps(attn, 1, 2),
                 visualize.video_to_pose_weights(attn, 1, 2)))
  g = m.clip.grid_size
  assert maps[0][0].shape == (2, m.video_frames, g, g)
  assert maps[0][1].shape == (2, m.pose_frames, m.num_joints)
  assert maps[0][2].shape == (2, m.video_frames, g, g)
  assert maps[0][3].shape == (2, m.video_frames, m.num_joints)
  for a, b in zip(*maps):
    assert np.abs(a - b).max() > 2e-3            # another clip, another map
    assert a.std() > 2e-3                        # not constant over patches/joints


def test_fig2_grid_png(tmp_path):
  m = ModelConfig(**TINY, variant="pgvt")
  model = pgvt.PoseVideoTransformer(m)
  params = random_params(model)
  batch = random_batch(m, b=1)
  _, _, attn = visualize.record_attention(model, params, batch)
  sk = skeletons.get("coco17")
  rows = [visualize.input_rows(batch, sk, "input")]
  rows += visualize.fig2_rows(m, batch, attn, [0, -1], "pgvt", sk)
  assert [r[0].split("\n")[0] for r in rows] == ["input"] + [
      "Video Attn", "Pose Attn", "R-Adapter pose->video", "R-Adapter video->pose"] * 2
  path = visualize.save_grid(rows, tmp_path / "fig.png", sk)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = np.asarray(Image.open(path))
  assert img.shape[0] > 400 and img.std() > 10


# ------------------------------------------------------------------ every family, and PAAB
# TimeSformer Ti/8 (4 frames, 2 blocks) and the CLIP video model, PAAB after block 2.
FAMILIES = {
    "timesformer": dict(family="timesformer"),
    "timesformer_pa_sa": dict(family="timesformer", paab_layers=(2,)),
    "timesformer_fact_pa_sta": dict(family="timesformer", paab_layers=(2,),
                                    paab_variant="fact_pa_sta"),
    "timesformer_joint_pa_sta": dict(family="timesformer", paab_layers=(2,),
                                     paab_variant="joint_pa_sta"),
    "clip_joint_pa_sta": dict(paab_layers=(2,), paab_variant="joint_pa_sta"),
}


def family_model(name):
  m = ModelConfig(**dict(TINY, video_frames=4), variant="video_only", **FAMILIES[name])
  model = factory.create_model(m)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda s: (0.1 * rng.normal(size=s.shape)).astype(np.float32),
                                  factory.param_shapes(model))
  batch = {k: rng.uniform(size=v.shape).astype(np.float32)
           for k, v in factory.input_spec(m, 2).items()}
  batch["frames"] = rng.integers(0, 256, batch["frames"].shape).astype(np.uint8)
  if "pose_mask" in batch:
    batch["pose_mask"] = (batch["pose_mask"] > 0.3).astype(np.float32)
  return m, model, params, batch


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_and_paab_record_through_the_shared_layer(name):
  m, model, params, batch = family_model(name)
  fused, _ = model.apply({"params": params}, batch, train=False)
  recorded, _, attn = visualize.record_attention(model, params, batch)
  np.testing.assert_allclose(recorded, np.asarray(fused), atol=1e-5, rtol=0)
  for k, w in attn.items():
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5, err_msg=k)
  t, n = m.video_frames, m.arch.grid_size ** 2
  blocks = "blocks" if m.family == "timesformer" else "resblocks"
  assert attn[f"{blocks}_1/attn/video_spatial"].shape == (2 * t, 1 + n, 1 + n)
  assert visualize.video_cls_maps(attn, 1, 2).shape == (2, t) + (m.arch.grid_size,) * 2
  if not m.paab_layers:
    assert not any(k.startswith("paab") for k in attn)
    return
  paab = {k: w for k, w in attn.items() if k.startswith("paab_2/")}
  want = {"pa_sa": {"paab_2/attn/spatial"},
          "fact_pa_sta": {"paab_2/attn/spatial", "paab_2/temporal_attn/temporal"},
          "joint_pa_sta": {"paab_2/attn/joint"}}[m.paab_variant]
  assert set(paab) == want
  (block, maps), = visualize.paab_cls_maps(attn, 1, 2, t)
  assert block == "paab_2" and maps.shape == (2, t) + (m.arch.grid_size,) * 2
  # Keys outside the pose tokens get no weight (the PAAB mask), CLS-only frames aside.
  p2d = pose_aware.video_pose_maps(m, batch, jax.random.PRNGKey(0))[0]
  off = np.asarray(p2d).reshape(maps.shape) == 0
  assert off.any() and np.abs(maps[off]).max() < 1e-6


def test_fig2_rows_for_timesformer_with_paab(tmp_path):
  m, model, params, batch = family_model("timesformer_pa_sa")
  batch = {k: v[:1] for k, v in batch.items()}
  _, _, attn = visualize.record_attention(model, params, batch)
  sk = skeletons.get("coco17")
  rows = [visualize.input_rows(batch, sk, "input")]
  rows += visualize.fig2_rows(m, batch, attn, [0, -1], "timesformer", sk)
  assert [r[0].split("\n")[0] for r in rows] == ["input", "Video Attn", "Video Attn",
                                                   "PAAB Attn"]
  path = visualize.save_grid(rows, tmp_path / "fig.png", sk)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  assert np.asarray(Image.open(path)).std() > 10


# ------------------------------------------------------------------ command line on real runs
from tests.predict_fixtures import render_mp4, tiny_config  # noqa: E402  (fixtures: conftest)


@pytest.mark.e2e  # two whole (short) trainings from the predict fixtures
def test_cli_fig2_for_pgvt_and_baseline_runs(short_runs, tmp_path):
  video = tmp_path / "clip.mp4"
  kp = render_mp4(video, 1, seed=11)
  np.savez(tmp_path / "clip.npz", keypoint=kp[None], keypoint_score=np.ones((1,) + kp.shape[:2]))
  out = tmp_path / "figs"
  rc = visualize.run(["visualize", f"--workdir={short_runs['pgvt']},{short_runs['video_only']}",
                      f"--video={video}", f"--keypoints={tmp_path / 'clip.npz'}",
                      "--layers=0,-1", f"--out={out}"])
  assert rc == 0
  from PIL import Image  # pylint: disable=g-import-not-at-top
  names = sorted(p.name for p in out.glob("*.png"))
  assert names == ["attention_0_pgvt.png", "attention_1_video_only.png", "fig2.png"]
  fig = np.asarray(Image.open(out / "fig2.png"))
  one = np.asarray(Image.open(out / "attention_1_video_only.png"))
  # pgvt: input + 4 rows x 2 layers; video_only: input + 1 row x 2 layers -> 12 rows stacked.
  assert fig.shape[0] > 3 * one.shape[0]


@pytest.mark.e2e  # two whole (short) trainings from the predict fixtures
def test_cli_fig2_for_timesformer_and_paab_runs(pose_aware_runs, tmp_path):
  from pgvt_jax import predict  # pylint: disable=g-import-not-at-top
  video = tmp_path / "clip.mp4"
  kp = render_mp4(video, 2, seed=12)
  np.savez(tmp_path / "clip.npz", keypoint=kp[None], keypoint_score=np.ones((1,) + kp.shape[:2]))
  runs = [pose_aware_runs["timesformer"], pose_aware_runs["paab"]]
  out = tmp_path / "figs"
  rc = visualize.run(["visualize", f"--workdir={runs[0]},{runs[1]}", f"--video={video}",
                      f"--keypoints={tmp_path / 'clip.npz'}", f"--out={out}"])
  assert rc == 0
  assert sorted(p.name for p in out.glob("*.png")) == [
      "attention_0_video_only.png", "attention_1_video_only.png", "fig2.png"]
  for run, want in zip(runs, (["Video Attn"], ["Video Attn", "PAAB Attn"])):
    pred = predict.load(run)
    batch = {k: v[:1] for k, v in pred.views(pred.load_video(video, tmp_path / "clip.npz")).items()}
    _, _, attn = visualize.record_attention(pred.model, pred.params, batch)
    rows = visualize.fig2_rows(pred.model.config, batch, attn, [-1], "run", pred.skeleton)
    assert [r[0].split("\n")[0] for r in rows] == want


def test_cli_records_overlay(synthetic_dir, tmp_path):
  from data_prep.datasets import synthetic  # pylint: disable=g-import-not-at-top
  syn = tiny_config(synthetic_dir).synthetic_data
  builder_dir = synthetic.build(synthetic_dir, num_train=syn.num_train, num_test=syn.num_test,
                                num_classes=syn.num_classes, num_frames=syn.num_frames,
                                image_size=syn.image_size, seed=syn.seed,
                                class_set=syn.class_set)
  rc = visualize.run(["visualize", f"--records={builder_dir}", "--split=train", "--n=3",
                      f"--out={tmp_path}"])
  assert rc == 0
  assert (tmp_path / "records_train.png").stat().st_size > 10_000


def test_cli_without_inputs_is_a_clear_error(capsys):
  assert visualize.run(["visualize"]) == 2
  assert "--records" in capsys.readouterr().err
