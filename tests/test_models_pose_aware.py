"""PAAB / PAAT plugged into the frozen-CLIP + AIM model (config.model.paab_* / paat_*)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgvt_jax import losses
from pgvt_jax.models import clip_family, common, paat, pgvt, pose_aware
from pgvt_jax.models.config import ModelConfig, model_config
from pgvt_jax.models.paab import PAAB
from tests.test_models_variants import random_batch, random_params
from tests.test_pose_maps import reference_maps

pytestmark = pytest.mark.usefixtures("fast_compiles")

# 24 px frames in 8 px patches (N = 9), T_l = 2 video frames, T_h = 4 pose frames (k = 2),
# 3 joints x 2 persons.
BASE = dict(variant="video_only", backbone="Ti/8", image_size=24, video_frames=2, pose_frames=4,
            num_classes=5, joints_per_person=3, num_persons=2, drop_path=0.0, dropout=0.0)


def tiny(**kw) -> ModelConfig:
  return ModelConfig(**{**BASE, **kw})


def batch_for(m, seed=0):
  batch = random_batch(m, seed=seed)
  batch["pose_mask"][0, :2] = 0.0          # sample 0, video frame 0: no pose token at all
  return batch


def test_params_trainable_and_clip_paths_unchanged():
  plain = pgvt.param_shapes(pgvt.PoseVideoTransformer(tiny()))
  for kw in (dict(paab_layers=(1, 2)), dict(paat_layer=1), dict(paab_layers=(2,), paat_layer=2,
                                                                paab_variant="fact_pa_sta"),
             dict(paab_layers=(2,), paab_depth=3)):
    shapes = pgvt.param_shapes(pgvt.PoseVideoTransformer(tiny(**kw)))
    labels = common.flatten(clip_family.param_labels(shapes))   # raises on an uncovered leaf
    new = set(labels) - set(common.flatten(plain))
    assert new and all(p.split("/")[0] in ("paab_1", "paab_2", "paab_2_2", "paab_2_3",
                                           "paat_head") for p in new)
    if kw.get("paab_depth"):
      assert {p.split("/")[0] for p in new} == {"paab_2", "paab_2_2", "paab_2_3"}
    assert all(labels[p] == common.TRAINABLE for p in new)
    # Every param path of the plain model is still there with its label (CLIP paths intact).
    plain_labels = common.flatten(clip_family.param_labels(plain))
    assert {p: labels[p] for p in plain_labels} == plain_labels


def test_paab_in_model_equals_block_output_through_paab():
  """logits = head(mean_t ln_post(CLS)) of PAAB(tokens after block 2, P2D of the video frames,
  pose frames 2t and 2t+1 united for video frame t)."""
  m = tiny(paab_layers=(2,))
  model = pgvt.PoseVideoTransformer(m)
  params = random_params(model, std=0.1)
  batch = batch_for(m)
  apply = jax.jit(functools.partial(
      model.apply, capture_intermediates=lambda mdl, name: mdl.name == "resblocks_1",
      mutable=["intermediates"]))
  (logits, _), state = apply({"params": params}, batch)
  _, z = state["intermediates"]["resblocks_1"]["__call__"][0]          # (B, T_l, 1 + N, D)
  r2d, _ = reference_maps(batch["pose"] * 24, batch["pose_mask"], 24, 8, persons=2)
  p2d = r2d.reshape(2, 2, 2, 9).max(2)                                 # union of k = 2 frames
  assert p2d[0, 0].sum() == 0 and p2d.sum() > 0
  cls, _ = PAAB(num_heads=m.clip.heads, ln_eps=1e-5).apply(
      {"params": params["paab_2"]}, z[:, :, 0], z[:, :, 1:], p2d)
  feat = jax.vmap(jax.vmap(lambda x: (x - x.mean()) / jnp.sqrt(x.var() + 1e-5)))(cls)
  feat = (feat * params["ln_post"]["scale"] + params["ln_post"]["bias"]).mean(1)
  want = feat @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(np.asarray(logits), np.asarray(want), atol=1e-5)
  # And PAAB matters: other pose -> other logits.
  moved = dict(batch, pose=np.clip(1 - batch["pose"], 0, 0.99))
  assert np.abs(np.asarray(model.apply({"params": params}, moved)[0] - logits)).max() > 1e-4


@pytest.mark.parametrize("target", ["p3d", "p2d"])
def test_paat_train_outputs_and_keypoint_free_inference(target):
  m = tiny(paat_layer=1, paat_target=target)
  model = pgvt.PoseVideoTransformer(m)
  params = pgvt.init_params(model, jax.random.key(0))
  assert "paat_head" in params
  batch = batch_for(m)
  _, out = model.apply({"params": params}, batch, train=True,
                       rngs={"dropout": jax.random.key(1), "drop_path": jax.random.key(2)})
  r2d, r3d = reference_maps(batch["pose"] * 24, batch["pose_mask"], 24, 8, persons=2)
  want = r3d.reshape(2, 2, 2, 9, 3).max(2) if target == "p3d" else \
      r2d.reshape(2, 2, 2, 9).max(2)[..., None]
  np.testing.assert_array_equal(np.asarray(out["paat_targets"]), want)
  assert out["paat_logits"].shape == want.shape
  aux = losses.get_aux_loss("paat")(out, batch)
  assert np.isfinite(float(aux)) and float(aux) > 0
  # Inference: no PAAT output, no keypoints needed, PAAT params not needed; same logits.
  logits, out_eval = model.apply({"params": params}, batch)
  assert "paat_logits" not in out_eval
  frames_only = {"frames": batch["frames"]}
  stripped = paat.strip_training_only(params)
  assert "paat_head" not in stripped
  np.testing.assert_array_equal(np.asarray(model.apply({"params": params}, frames_only)[0]),
                                np.asarray(logits))
  np.testing.assert_array_equal(np.asarray(model.apply({"params": stripped}, frames_only)[0]),
                                np.asarray(logits))
  with pytest.raises(ValueError, match="paat_layer.*pose"):
    model.apply({"params": params}, frames_only, train=True,
                rngs={"dropout": jax.random.key(1), "drop_path": jax.random.key(2)})


def test_paat_loss_trains_the_backbone_adapters_below_it():
  """The PAAT gradient reaches the trainable params of block 1 (not both linears zero)."""
  m = tiny(paat_layer=1)
  model = pgvt.PoseVideoTransformer(m)
  trainable, frozen = clip_family.split_params(pgvt.init_params(model, jax.random.key(0)))
  batch = batch_for(m)

  def aux_only(tr):
    _, out = model.apply({"params": common.merge_params(tr, frozen)}, batch, train=True,
                         rngs={"dropout": jax.random.key(1), "drop_path": jax.random.key(2)})
    return losses.get_aux_loss("paat")(out, batch)

  grads = common.flatten(jax.jit(jax.grad(aux_only))(trainable))
  assert np.abs(grads["resblocks_0/MLP_Adapter/D_fc2/kernel"]).max() > 0
  assert np.abs(grads["paat_head/fc1/kernel"]).max() > 0
  assert not np.any(grads["resblocks_1/MLP_Adapter/D_fc2/kernel"])   # above PAAT: none
  assert not np.any(grads["head/kernel"])


def test_ablation_switches_change_the_maps():
  m = tiny(paat_layer=1)
  batch = batch_for(m)
  key = jax.random.PRNGKey(3)
  plain = pose_aware.video_pose_maps(m, batch, key)
  np.testing.assert_array_equal(
      pose_aware.video_pose_maps(m.replace(pose_map_noise=0), batch, key)[1],
      plain[1])
  rand = pose_aware.video_pose_maps(m.replace(pose_map_random=True), batch, key)
  noisy = pose_aware.video_pose_maps(m.replace(pose_map_noise=8), batch, key)
  for maps in (rand, noisy):
    assert not np.array_equal(maps[1], plain[1])
    # Masked joints stay absent: the count per frame can only shrink (merged/outside).
    assert (np.asarray(maps[1]).sum((2,)) <= np.asarray(plain[1]).sum((2,)) + 2).all()
  dil = pose_aware.video_pose_maps(m.replace(pose_map_dilation=3), batch, key)
  assert (np.asarray(dil[0]) >= np.asarray(plain[0])).all() and dil[0].sum() > plain[0].sum()


def test_config_errors_name_the_field():
  for kw, field in ((dict(paab_layers=(0,)), "paab_layers"), (dict(paab_layers=(3,)), "paab_layers"),
                    (dict(paab_layers=(1, 1)), "paab_layers"), (dict(paat_layer=3), "paat_layer"),
                    (dict(paab_variant="x"), "paab_variant"), (dict(paat_target="p4d"), "paat_target"),
                    (dict(pose_map_dilation=2), "pose_map_dilation"),
                    (dict(pose_map_noise=-1), "pose_map_noise"),
                    (dict(paab_depth=0), "paab_depth"),
                    (dict(paab_layers=(1,), variant="pose_only"), "variant"),
                    (dict(paat_layer=1, pose_frames=3), "pose_frames")):
    with pytest.raises(ValueError, match=f"config.model.{field}"):
      tiny(**kw)
  cfg = model_config(paab_layers=(12, 6))                  # ConfigDict round trip, sorted
  assert ModelConfig.from_config(cfg).paab_layers == (6, 12)
