"""Every variant builds, runs forward and backward, and starts as the frozen CLIP model.

The tiny models run op by op (no jit): XLA then compiles each primitive once per shape, and
the variants share almost all of them, which is several times faster on a small CPU than
compiling one program per variant. XLA optimisations are off while this module runs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgvt_jax.models import clip_family, clip_vit, common, pgvt
from pgvt_jax.models.config import VARIANTS, ModelConfig, model_config

# Sizes chosen so that both streams have the same token tensor shape (2 frames x 10 tokens):
# video 24x24 frames in 3x3 patches + CLS; J = 3 joints x 3 persons + CLS; heatmaps 24x24 in
# 3x3 patches + CLS. Op-by-op execution then compiles most ops once for all variants.
# (T_h != T_l is exercised by test_models_equations and the ViT-B/16 shape test.)
TINY = dict(backbone="Ti/8", image_size=24, pose_frames=2, video_frames=2, num_classes=5,
            joints_per_person=3, num_persons=3, heatmap_size=24, heatmap_patch_size=8,
            drop_path=0.1)


# Tiny models compile several times faster without XLA's optimisation passes.
pytestmark = pytest.mark.usefixtures("fast_compiles")


def tiny(variant="pgvt", **kw) -> ModelConfig:
  return ModelConfig(**{**TINY, "variant": variant, **kw})


def random_batch(m: ModelConfig, b=2, seed=0):
  rng = np.random.default_rng(seed)
  batch = {k: rng.uniform(size=v.shape).astype(np.float32)
           for k, v in pgvt.input_spec(m, b).items()}
  if "frames" in batch:
    batch["frames"] = rng.normal(size=batch["frames"].shape).astype(np.float32)
  if "pose_mask" in batch:
    batch["pose_mask"] = (batch["pose_mask"] > 0.3).astype(np.float32)
  return batch


def random_params(model, seed=0, std=0.05):
  """Params with every leaf random (no compile: shapes from eval_shape, values from NumPy)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: (std * rng.normal(size=s.shape)).astype(np.float32),
                                pgvt.param_shapes(model))


@functools.lru_cache(maxsize=None)
def grads_of(m: ModelConfig):
  """(logits, grads) of a train-mode cross-entropy, differentiated w.r.t. trainable only."""
  model = pgvt.PoseVideoTransformer(m)
  trainable, frozen = clip_family.split_params(random_params(model))
  batch = random_batch(m)

  def loss_fn(trainable, frozen):
    logits, _ = model.apply({"params": common.merge_params(trainable, frozen)}, batch,
                            train=True, rngs={"dropout": jax.random.key(1),
                                              "drop_path": jax.random.key(2)})
    labels = jax.nn.one_hot(jnp.arange(logits.shape[0]) % m.num_classes, m.num_classes)
    return -(labels * jax.nn.log_softmax(logits)).sum(-1).mean(), logits

  (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, frozen)
  return trainable, logits, grads


def LN_INVARIANT(path: str) -> bool:  # pylint: disable=invalid-name
  """Leaves whose gradient is zero in exact arithmetic, so `np.any` only sees rounding noise.

  The R-Adapter's FC_up bias adds one constant to all D features of a pose token, and every
  later read of the pose stream (T/S-Attn, MLP, ln_post_pose) starts with a LayerNorm, which
  removes a constant shift: its gradient is 0 up to float rounding (measured 4e-9..2e-8, and
  exactly 0 on some runs).
  """
  return path.endswith("R_Adapter/fc_up/bias")


CASES = [(v, {}) for v in VARIANTS] + [
    ("pose_only", {"pose_format": "heatmap"}), ("pgvt", {"pose_format": "heatmap"})]


@pytest.mark.parametrize("variant,kw", CASES, ids=[f"{v}-{kw}" for v, kw in CASES])
def test_forward_backward_finite_and_every_trainable_leaf_gets_gradient(variant, kw):
  m = tiny(variant, **kw)
  trainable, logits, grads = grads_of(m)
  assert logits.shape == (2, m.num_classes)
  assert np.isfinite(np.asarray(logits, np.float32)).all()
  # Gradients exist exactly for the trainable subtree, and none is dead (wiring check).
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(trainable)
  flat = common.flatten(grads)
  dead = [p for p, g in flat.items() if not LN_INVARIANT(p)
          and (not np.isfinite(np.asarray(g, np.float32)).all() or not np.any(g))]
  assert not dead, f"non-finite or all-zero gradients: {dead}"
  for p in filter(LN_INVARIANT, flat):  # zero up to rounding, as the LayerNorms imply
    assert np.abs(np.asarray(flat[p])).max() < 1e-6, p


def test_bfloat16_forward_is_close_to_float32():
  m = tiny("pgvt")
  model16 = pgvt.PoseVideoTransformer(m.replace(dtype="bfloat16"))
  params, batch = random_params(model16), random_batch(m)
  logits16, out16 = model16.apply({"params": params}, batch)
  logits, out = pgvt.PoseVideoTransformer(m).apply({"params": params}, batch)
  assert logits16.dtype == jnp.float32 and out16["feature"].dtype == jnp.float32
  np.testing.assert_allclose(out16["feature"], out["feature"], atol=0.05)


@pytest.mark.parametrize("policy", ["full", "save_dots"])
def test_remat_gives_the_same_gradients(policy):
  _, logits, grads = grads_of(tiny("pgvt"))
  _, logits_r, grads_r = grads_of(tiny("pgvt", remat=policy))
  np.testing.assert_allclose(logits_r, logits, atol=1e-5)
  for (p, g), g_r in zip(common.flatten(grads).items(), common.flatten(grads_r).values()):
    np.testing.assert_allclose(g_r, g, atol=1e-5, err_msg=p)


def test_zero_init_video_only_equals_frozen_clip_per_frame():
  """Zero-initialised adapter outputs + zero temporal embedding: AIM starts as CLIP."""
  m = tiny("video_only")
  clip = m.clip
  clip_model = clip_vit.ClipVisionTransformer(clip)
  frames = random_batch(m)["frames"]                                      # (B, T_l, S, S, 3)
  images = frames.reshape((-1,) + frames.shape[2:])
  rng = np.random.default_rng(3)
  clip_params = jax.tree_util.tree_map(
      lambda s: (0.1 * rng.normal(size=s.shape)).astype(np.float32),
      jax.eval_shape(clip_model.init, jax.random.key(0), images)["params"])
  want = jax.jit(clip_model.apply)({"params": clip_params}, images)["pooled"]
  model = pgvt.PoseVideoTransformer(m)
  params = clip_family.load_clip(m, pgvt.init_params(model, jax.random.key(0)), clip_params)
  _, out = jax.jit(model.apply)({"params": params}, {"frames": frames})
  np.testing.assert_allclose(out["video_cls"].reshape(want.shape), want, atol=1e-5)


def test_masked_joints_ignore_their_coordinates():
  m = tiny("pose_only", drop_path=0.0)
  model = pgvt.PoseVideoTransformer(m)
  params = random_params(model, std=0.3)
  batch = random_batch(m)
  batch["pose_mask"][:, :, 1] = 0.0
  apply = lambda b: model.apply({"params": params}, b)[0]
  base = apply(batch)
  moved = dict(batch, pose=batch["pose"].copy())
  moved["pose"][:, :, 1] += 0.5                 # a masked joint moves: no effect
  np.testing.assert_array_equal(apply(moved), base)
  moved["pose"][:, :, 0] += 0.5                 # a visible joint moves: logits change
  assert np.abs(apply(moved) - base).max() > 1e-4
  no_mask = {k: v for k, v in batch.items() if k != "pose_mask"}  # pose_mask is optional
  assert np.abs(apply(no_mask) - base).max() > 1e-4


def test_vit_b16_48_plus_16_shapes():
  cfg = model_config(variant="pgvt")                    # B/16, T_h = 48, T_l = 16, 48 classes
  model = pgvt.create_model(cfg)
  spec = pgvt.input_spec(cfg, batch_size=2)
  assert spec["frames"].shape == (2, 16, 224, 224, 3) and spec["pose"].shape == (2, 48, 17, 2)
  logits, out = jax.eval_shape(lambda p, b: model.apply({"params": p}, b),
                               pgvt.param_shapes(model), spec)
  assert logits.shape == (2, 48)
  assert out["pose_cls"].shape == (2, 48, 768) and out["video_cls"].shape == (2, 16, 768)
  assert out["feature"].shape == (2, 2 * 768)


@pytest.mark.parametrize("override,field", [
    ({"variant": "pgvt_plus"}, "config.model.variant"),
    ({"pose_frames": 20, "video_frames": 16}, "config.model.pose_frames"),
    ({"pose_format": "rgb"}, "config.model.pose_format"),
    ({"backbone": "H/14"}, "config.model.backbone"),
    ({"image_size": 100}, "config.model.image_size"),
    ({"drop_path": 1.5}, "config.model.drop_path"),
    ({"refine_heads": 5}, "config.model.refine_heads"),
    ({"pose_format": "heatmap", "heatmap_size": 100}, "config.model.heatmap_size"),
    ({"num_persons": 0}, "config.model.num_persons"),
])
def test_bad_config_names_the_field(override, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    model_config(**override)


def test_ratio_only_required_for_refining_variants():
  model_config(variant="late_fusion", pose_frames=20, video_frames=16)  # no FC_down: fine
  with pytest.raises(ValueError, match="unknown field"):
    ModelConfig.from_config({"variant": "pgvt", "num_frames": 16})


def test_batch_mismatch_names_the_field():
  m = tiny("pgvt")
  batch = random_batch(m)
  bad = dict(batch, pose=np.zeros((2, m.pose_frames, 17, 2), np.float32))   # J=17, config J=9
  with pytest.raises(ValueError, match=r"joints_per_person x num_persons \(J=9\)"):
    pgvt.check_batch(m, bad)
  bad = dict(batch, frames=np.zeros((2, 3, 24, 24, 3), np.float32))
  with pytest.raises(ValueError, match="video_frames"):
    pgvt.check_batch(m, bad)
  with pytest.raises(ValueError, match="'pose_heatmap'"):
    pgvt.check_batch(tiny("pose_only", pose_format="heatmap"), batch)
