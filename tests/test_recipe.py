"""AIM/PGVT recipe details checked against the official AIM code (docs/models.md "Recipe")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgvt_jax.models import adapters, layers, pgvt
from pgvt_jax.models.config import ModelConfig


def test_adapter_init_is_timm_trunc_normal():
  """timm trunc_normal_(std=.02) bounds are +-2 absolute: std stays 0.02 (Flax's: 0.0176)."""
  # An AIM adapter of B/16 width (768 -> 192): 147k fc1 weights, sampling error of std 0.2%.
  params = adapters.Adapter(0.25).init(jax.random.key(0), jnp.zeros((1, 768)))["params"]
  fc1 = np.asarray(params["D_fc1"]["kernel"])
  assert fc1.shape == (768, 192)
  assert abs(fc1.std() / 0.02 - 1) < 0.02, fc1.std()
  assert np.abs(fc1).max() > 2 * 0.02  # not cut at 2 sigma
  np.testing.assert_array_equal(params["D_fc2"]["kernel"], 0.0)
  big = adapters.trunc_normal(jax.random.key(1), (400_000,))
  assert abs(float(big.std()) / 0.02 - 1) < 0.01
  wide = layers.trunc_normal(1.5)(jax.random.key(2), (100_000,))
  assert float(jnp.abs(wide).max()) <= 2.0  # the absolute bound still applies


@pytest.mark.parametrize("mode", ["frame", "aim"])
def test_drop_path_modes(mode):
  """frame: one draw per (clip, frame); aim: one draw per token position for the whole batch."""
  b, t, n, d = 4, 3, 50, 5
  x = jnp.ones((b, t, n, d))
  y = np.asarray(layers.DropPath(0.5, mode).apply(
      {}, x, deterministic=False, rngs={"drop_path": jax.random.key(0)}))
  assert set(np.unique(y)) == {0.0, 2.0}  # dropped or scaled by 1 / keep
  if mode == "frame":
    assert (y == y[:, :, :1, :1]).all()            # constant over tokens and channels
    assert len(np.unique(y[:, :, 0, 0])) == 2       # but not over clips and frames
  else:
    assert (y == y[:1, :1, :, :1]).all()            # constant over clips, frames, channels
    assert len(np.unique(y[0, 0, :, 0])) == 2       # varies over token positions
  np.testing.assert_array_equal(
      layers.DropPath(0.5, mode).apply({}, x, deterministic=True), x)


def test_drop_path_mode_reaches_the_blocks():
  cfg = ModelConfig(variant="video_only", backbone="Ti/8", image_size=32, video_frames=2,
                    pose_frames=2, num_classes=3, drop_path=0.9, drop_path_mode="aim")
  model = pgvt.create_model(cfg)
  params = pgvt.init_params(model, jax.random.key(0))
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape),
                        params)  # non-zero adapter outputs, so dropping them shows
  batch = pgvt.dummy_batch(cfg, 2)
  batch["frames"] = jax.random.normal(jax.random.key(4), batch["frames"].shape)
  run = lambda key: model.apply({"params": params}, batch, train=True,
                                rngs={"dropout": key, "drop_path": key})[1]["video_cls"]
  assert not np.allclose(run(jax.random.key(5)), run(jax.random.key(6)))
  with pytest.raises(ValueError, match="drop_path_mode"):
    ModelConfig(drop_path_mode="sample")


def _tiny(variant):
  return ModelConfig(variant=variant, backbone="Ti/8", image_size=32, video_frames=2,
                     pose_frames=4, num_classes=3)


def _save_run(workdir, variant, seed):
  """A finished single-stream run: its trainable params in workdir/checkpoints."""
  from pgvt_jax import checkpointing
  from pgvt_jax.models import clip_family
  params = pgvt.init_params(pgvt.create_model(_tiny(variant)), jax.random.key(seed))
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(seed), p.shape), params)
  trainable, _ = clip_family.split_params(params)
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  state = {"step": jnp.int32(7), "params": trainable, "opt_state": {},
           "rng": jax.random.PRNGKey(0)}
  ckpt.save(7, state, None, {"backbone": None, "backbone_sha256": None}, force=True)
  ckpt.close()
  return trainable


@pytest.mark.e2e  # a whole training run (20-40 s)
def test_two_stage_init_loads_both_streams(tmp_path):
  import ml_collections
  from flax import traverse_util
  from pgvt_jax import init_from
  pose = _save_run(tmp_path / "pose", "pose_only", 1)
  video = _save_run(tmp_path / "video", "video_only", 2)
  init = pgvt.init_params(pgvt.create_model(_tiny("late_fusion")), jax.random.key(0))
  cfg = ml_collections.ConfigDict({"init_from": {"pose": str(tmp_path / "pose"),
                                                 "video": str(tmp_path / "video")}})
  out = init_from.apply(cfg, init, {"backbone_sha256": None})
  flat_out = traverse_util.flatten_dict(out, sep="/")
  n_pose = n_video = 0
  for src, counter in ((pose, "pose"), (video, "video")):
    for path, value in traverse_util.flatten_dict(src, sep="/").items():
      if path.startswith("head/"):
        continue
      np.testing.assert_array_equal(flat_out[path], value, err_msg=path)
      n_pose += counter == "pose"
      n_video += counter == "video"
  assert n_pose > 10 and n_video > 10
  assert "resblocks_0/T_Adapter_pose/D_fc1/kernel" in traverse_util.flatten_dict(pose, sep="/")
  # The fused head gives the mean of the two single-stream heads' logits.
  fp, fv = np.ones((1, 64)), 2 * np.ones((1, 64))
  fused = np.concatenate([fp, fv], -1) @ out["head"]["kernel"] + out["head"]["bias"]
  want = ((fp @ pose["head"]["kernel"] + pose["head"]["bias"])
          + (fv @ video["head"]["kernel"] + video["head"]["bias"])) / 2
  np.testing.assert_allclose(fused, want, rtol=1e-5)
  # The frozen backbone is untouched.
  np.testing.assert_array_equal(out["resblocks_0"]["attn"]["query"]["kernel"],
                                init["resblocks_0"]["attn"]["query"]["kernel"])
  with pytest.raises(FileNotFoundError, match="config.init_from.video"):
    init_from.apply(ml_collections.ConfigDict({"init_from": {
        "pose": str(tmp_path / "pose"), "video": str(tmp_path / "nothing")}}),
        init, {"backbone_sha256": None})
  with pytest.raises(ValueError, match="was trained on backbone"):
    init_from.apply(cfg, init, {"backbone_sha256": "abc", "backbone": "other"})


def test_table4_row3_is_two_stage():
  from configs.ablations import table4
  c = table4.get_config("row=3")
  assert c.model.variant == "late_fusion"
  assert c.init_from.pose and c.init_from.video
  assert table4.get_config("row=7").init_from.pose == ""


def _index_record(t, h=48, w=64, fps=30.0):
  """Frame i is grey level i (frame index readable from pixels); red = 4 * column."""
  frames = np.zeros((t, h, w, 3), np.uint8)
  frames[..., 1] = np.arange(t, dtype=np.uint8)[:, None, None]
  frames[..., 0] = (4 * np.arange(w)).astype(np.uint8)[None, None, :]
  return {"video_id": "idx", "label": 0, "frames": frames, "fps": np.float32(fps),
          "keypoints": np.zeros((t, 1, 17, 2), np.float32),
          "keypoint_score": np.zeros((t, 1, 17), np.float32)}


def _rgb(frames):
  return np.asarray(frames, np.float64)  # uint8 pixels


def _views(cfg, rec):
  from data_prep import skeletons
  from pgvt_jax import data
  proc = data.ClipProcessor(cfg, skeletons.COCO17)
  return [proc.view(rec, 0, v) for v in range(proc.num_views)]


def test_diving48_test_views_are_aims():
  """AIM Diving48 test: short side -> 224 (= crop), ThreeCrop 224, one segment-sampled clip."""
  from configs import diving48, gym99
  for mod in (diving48, gym99):
    d = mod.get_config().data
    assert (d.short_side or d.image_size) == 224 and d.image_size == 224
    assert (d.eval_clips, d.eval_crops, d.eval_sampling) == (1, 3, "segment")
  cfg = diving48.get_config().data
  cfg.update(dict(image_size=32, num_frames=4, pose_frames=4, num_workers=0))
  views = _views(cfg, _index_record(16))  # 48 x 64 frames: crops of side 48 at x = 0, 8, 16
  assert len(views) == 3 and all(v["frames"].shape == (4, 32, 32, 3) for v in views)
  left = [_rgb(v["frames"])[0, 16, 0, 0] / 4 for v in views]    # column of the left edge
  right = [_rgb(v["frames"])[0, 16, -1, 0] / 4 for v in views]
  np.testing.assert_allclose(left, [0, 8, 16], atol=1.5)
  np.testing.assert_allclose(right, [47, 55, 63], atol=1.5)
  # Segment centres of 16 frames in 4 segments: 2, 6, 10, 14.
  np.testing.assert_array_equal(_rgb(views[0]["frames"])[:, 0, 0, 1], [2, 6, 10, 14])


def test_k400_test_views_are_dense():
  """AIM K400 test: 3 clips of 8 frames 16 apart (mmaction2 SampleFrames test_mode), 1 crop."""
  from configs import k400
  cfg = k400.get_config().data
  assert (cfg.eval_clips, cfg.eval_crops, cfg.eval_sampling) == (3, 1, "dense")
  cfg.update(dict(image_size=32, num_frames=8, pose_frames=16, num_workers=0))
  views = _views(cfg, _index_record(200))
  # mmaction2: avg = (200 - 8 * 16 + 1) / 3; clip c starts at int(avg / 2 + c * avg).
  avg = (200 - 128 + 1) / 3
  for c, v in enumerate(views):
    start = int(avg / 2 + c * avg)
    np.testing.assert_array_equal(_rgb(v["frames"])[:, 0, 0, 1], start + 16 * np.arange(8))
  # Pose frames at half the stride, aligned with the video frames; at 15 fps the span halves.
  from pgvt_jax.data import sampling
  v_idx, p_idx = sampling.dense_indices(200, 8, 16, 16.0, clip=0, num_clips=3)
  np.testing.assert_array_equal(p_idx[::2], v_idx)
  np.testing.assert_array_equal(p_idx[1::2], v_idx + 8)
  slow = _views(cfg, _index_record(200, fps=15.0))
  np.testing.assert_array_equal(np.diff(_rgb(slow[0]["frames"])[:, 0, 0, 1]), 8)
  # A video shorter than a clip starts at 0 and loops.
  np.testing.assert_array_equal(sampling.dense_indices(50, 4, 4, 16.0)[0], [0, 16, 32, 48])
  np.testing.assert_array_equal(sampling.dense_indices(40, 4, 4, 16.0)[0], [0, 16, 32, 8])


def test_heatmap_rgb_goes_through_frozen_conv1():
  """Table 6 heatmaps as RGB images through CLIP's frozen conv1 (no trainable projection)."""
  from pgvt_jax.models import clip_family, common, embeddings
  pal = embeddings.joint_palette(17)
  assert pal.shape == (17, 3) and len({tuple(c) for c in np.round(pal, 3)}) == 17
  cfg = ModelConfig(variant="pose_only", backbone="Ti/8", image_size=32, pose_frames=2,
                    video_frames=2, num_classes=3, pose_format="heatmap_rgb", heatmap_size=16)
  model = pgvt.create_model(cfg)
  params = pgvt.init_params(model, jax.random.key(0))
  labels = common.flatten(clip_family.param_labels(params))
  assert labels["conv1/kernel"] == "frozen"
  assert not any("patch_embed" in k for k in labels)
  # Joint 3 alone at full strength in the top-left 8x8 patch of frame 0 of clip 0.
  hm = np.zeros((1, 2, 16, 16, 17), np.float32)
  hm[0, 0, :8, :8, 3] = 1.0
  rgb = np.asarray(embeddings.render_heatmaps_rgb(jnp.asarray(hm)))
  mean, std = np.array(embeddings.clip_vit.CLIP_MEAN), np.array(embeddings.clip_vit.CLIP_STD)
  np.testing.assert_allclose(rgb[0, 0, 0, 0], (pal[3] - mean) / std, rtol=1e-5)
  np.testing.assert_allclose(rgb[0, 0, -1, -1], -mean / std, rtol=1e-5)
  # Pose tokens (before CLS/pos/temporal) are the frozen conv1 of that image: check patch 0.
  k = np.asarray(params["conv1"]["kernel"])                     # (8, 8, 3, 64)
  want = np.einsum("hwc,hwcd->d", rgb[0, 0, :8, :8], k)
  emb = embeddings.PoseEmbedding(64, 2, 17, "heatmap_rgb", heatmap_size=16, patch_size=8,
                                 frozen_conv=embeddings.nn.Conv(
                                     64, (8, 8), strides=(8, 8), use_bias=False))
  pe = {"params": {**{n: v for n, v in params["pose_embed"].items()},
                   "frozen_conv": {"kernel": k}}}
  got = np.asarray(emb.apply(pe, {"pose_heatmap": jnp.asarray(hm)}))
  pos = np.asarray(params["pose_embed"]["positional_embedding"])
  np.testing.assert_allclose(got[0, 0, 1] - pos[1], want, rtol=1e-4, atol=1e-5)


def test_heatmap_rgb_counts_near_paper():
  """Table 6 heatmap row: paper 11M tunable / 311 GFLOPs (B/16, 48 frames, 112 px)."""
  from configs.ablations import table6
  from pgvt_jax.tools import model_stats
  s = model_stats.model_stats(table6.get_config("form=heatmap_rgb").model)
  assert round(s["tunable_params"] / 1e6) == 11
  assert abs(s["gflops"] - 311) / 311 < 0.05, s["gflops"]


def _two_person_record(t=8, w=96, h=48):
  """Person A (left, score 0.9, walking right) and B (right, 0.5); slots swap every frame."""
  rng = np.random.default_rng(0)
  kp = np.zeros((t, 2, 17, 2), np.float32)
  score = np.zeros((t, 2, 17), np.float32)
  for i in range(t):
    a = np.stack([rng.uniform(8, 28, 17) + i, rng.uniform(8, 40, 17)], -1)
    b = np.stack([rng.uniform(60, 80, 17), rng.uniform(8, 40, 17)], -1)
    first, second = (a, b) if i % 2 == 0 else (b, a)
    sa, sb = (0.9, 0.5) if i % 2 == 0 else (0.5, 0.9)
    kp[i, 0], kp[i, 1], score[i, 0], score[i, 1] = first, second, sa, sb
  return {"video_id": "two", "label": 0, "frames": np.zeros((t, h, w, 3), np.uint8),
          "keypoints": kp, "keypoint_score": score}


def test_person_tracking_keeps_one_person():
  from data_prep import skeletons
  from pgvt_jax import data
  from pgvt_jax.data import augment
  rec = _two_person_record()
  kp, sc = augment.link_persons(rec["keypoints"], rec["keypoint_score"])
  assert (kp[:, 0, :, 0].max() < 40) and (kp[:, 1, :, 0].min() > 55)   # slot = person
  np.testing.assert_allclose(sc[:, 0, 0], 0.9)
  cfg = data.get_config()
  cfg.update(dict(num_frames=8, pose_frames=8, image_size=32, max_persons=1, eval_crops=1,
                  score_threshold=0.1))
  # The eval crop is the centre 48 x 48 of the 96 px width (x in [24, 72)): A is on its left
  # half in every frame once linked; without linking slot 0 jumps between A and B.
  for tracking, steady in (("iou", True), ("none", False)):
    cfg.person_tracking = tracking
    ex = data.ClipProcessor(cfg, skeletons.COCO17).view(rec, 0, 0)
    mean_x = np.array([ex["pose"][i, ex["pose_mask"][i] > 0, 0].mean()
                       if ex["pose_mask"][i].any() else -1 for i in range(8)])
    assert (np.all(mean_x < 0.5) if steady else np.any(mean_x > 0.5)), (tracking, mean_x)
  # A person absent in some frames keeps its track when it comes back.
  kp2, sc2 = rec["keypoints"].copy(), rec["keypoint_score"].copy()
  sc2[3] = 0.0
  kp, sc = augment.link_persons(kp2, sc2)
  assert kp[4:, 0, :, 0].max() < 40 and sc[3].max() == 0


def test_validation_split_carved_from_train():
  from configs import diving48
  d = diving48.get_config("val=10").data
  assert (d.train_split, d.eval_split, d.test_split) == ("train[:90%]", "train[90%:]", "test")
  d = diving48.get_config().data
  assert (d.train_split, d.eval_split, d.test_split) == ("train", "test", "")


def test_best_eval_reads_the_log(tmp_path):
  import json
  from pgvt_jax import train
  lines = [{"step": 10, "train/loss": 1.0}, {"step": 20, "eval/top1": 0.5},
           {"step": 40, "eval/top1": 0.75, "eval/top5": 1.0}, {"step": 60, "eval/top1": 0.6}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
  assert train.best_eval(tmp_path, "eval/top1") == lines[2]


def test_pose_video_class_set_is_complementary():
  """Classes 2m and 2m+1 share the motion (same keypoints); only the frames show the colour."""
  from data_prep import synthetic
  defs = synthetic.class_definitions(4, "pose_video")
  balls = synthetic.held_objects(4, "pose_video")
  assert defs[0] == defs[1] and defs[2] == defs[3] and defs[0] != defs[2]
  assert balls[0] == balls[2] != balls[1] == balls[3]
  assert synthetic.class_names(4, "pose_video")[1].endswith("blue ball")
  red, kp_red = synthetic.render_clip(defs[0], (0, 0, 3), 8, 32, held_object=balls[0])
  blue, kp_blue = synthetic.render_clip(defs[1], (0, 0, 3), 8, 32, held_object=balls[1])
  np.testing.assert_array_equal(kp_red, kp_blue)   # the pose carries no trace of the colour
  diff = np.abs(red.frames.astype(int) - blue.frames.astype(int)).sum(-1) > 0
  assert 0 < diff.mean() < 0.1                     # only the ball's pixels differ
  f = red.frames.astype(int)
  assert ((f[..., 0] - f[..., 2]) > 120).sum() > 8 * 10   # a saturated red ball in each frame
  with pytest.raises(ValueError, match="multiple of 2"):
    synthetic.class_definitions(5, "pose_video")
