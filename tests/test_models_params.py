"""Freezing (trainable/frozen partition) and strict loading of CLIP / single-stream weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pgvt_jax.models import clip_family, clip_vit, common, pgvt
from pgvt_jax.models.config import VARIANTS
from tests.test_models_variants import random_batch, random_params, tiny


# Tiny models compile several times faster without XLA's optimisation passes.
pytestmark = pytest.mark.usefixtures("fast_compiles")


def clip_params_for(m, image_size=None, seed=0):
  """A random CLIP tower tree with the converter's layout (proj included)."""
  clip = m.clip if image_size is None else m.clip.replace(image_size=image_size)
  model = clip_vit.ClipVisionTransformer(clip)
  images = jax.ShapeDtypeStruct((1, clip.image_size, clip.image_size, 3), jnp.float32)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                                jax.eval_shape(model.init, jax.random.key(0), images)["params"])


CASES = [(v, "coords") for v in VARIANTS] + [("pose_only", "heatmap"), ("pgvt", "heatmap")]


@pytest.mark.parametrize("variant,pose_format", CASES)
def test_every_leaf_labelled_and_frozen_is_exactly_the_used_clip_tower(variant, pose_format):
  m = tiny(variant, pose_format=pose_format)
  shapes = pgvt.param_shapes(pgvt.PoseVideoTransformer(m))
  labels = common.flatten(clip_family.param_labels(shapes))  # raises on any uncovered leaf
  assert set(labels) == set(common.flatten(shapes))
  frozen = {k for k, lab in labels.items() if lab == common.FROZEN}
  clip_paths = set(common.flatten(clip_params_for(m)))
  trained_clip = {"ln_post/scale", "ln_post/bias"}       # AIM trains ln_post
  assert frozen == clip_paths - set(clip_family.clip_unused(m)) - trained_clip


def test_uncovered_param_is_an_error():
  with pytest.raises(ValueError, match="resblocks_0/Prompt/kernel"):
    clip_family.param_labels({"resblocks_0": {"Prompt": {"kernel": np.zeros(2)}},
                         "head": {"bias": np.zeros(2)}})
  assert clip_family.label_of("resblocks_3/R_Adapter/pose_query/kernel") == common.TRAINABLE
  assert clip_family.label_of("resblocks_3/attn/query/kernel") == common.FROZEN


def test_split_and_merge_are_inverse():
  params = random_params(pgvt.PoseVideoTransformer(tiny("pgvt")))
  trainable, frozen = clip_family.split_params(params)
  assert not set(common.flatten(trainable)) & set(common.flatten(frozen))
  back = common.merge_params(trainable, frozen)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
  with pytest.raises(ValueError, match="more than one tree"):
    common.merge_params(trainable, trainable)


def test_load_clip_copies_frozen_resizes_pos_embedding_and_keeps_new_params():
  m = tiny("pgvt")                                   # 24 px: 3x3 grid
  init = random_params(pgvt.PoseVideoTransformer(m), seed=1)
  clip = clip_params_for(m, image_size=32)           # converted at 32 px: 4x4 grid
  params = common.flatten(clip_family.load_clip(m, init, clip))
  flat_clip, flat_init = common.flatten(clip), common.flatten(init)
  for path, label in common.flatten(clip_family.param_labels(init)).items():
    if path == "positional_embedding":
      want = clip_vit.resize_pos_embed(flat_clip[path], 3)
    elif path in flat_clip:                          # frozen tower, and ln_post (trainable)
      want = flat_clip[path]
    elif path.startswith("ln_post_pose/"):           # pose ln_post starts from CLIP's
      want = flat_clip[path.replace("ln_post_pose", "ln_post")]
    else:                                            # adapters, embeddings, head: init
      assert label == common.TRAINABLE, path
      want = flat_init[path]
    np.testing.assert_array_equal(params[path], want, err_msg=path)


def test_load_clip_is_strict():
  m = tiny("pgvt")
  init = random_params(pgvt.PoseVideoTransformer(m))
  clip = common.flatten(clip_params_for(m))
  missing = {k: v for k, v in clip.items() if k != "resblocks_1/attn/key/kernel"}
  with pytest.raises(ValueError, match=r"missing.*resblocks_1/attn/key/kernel"):
    clip_family.load_clip(m, init, common.unflatten(missing))
  with pytest.raises(ValueError, match=r"unexpected.*resblocks_9/ln_1/scale"):
    clip_family.load_clip(m, init,
                          common.unflatten({**clip, "resblocks_9/ln_1/scale": np.ones(64)}))
  bad = dict(clip, **{"resblocks_0/mlp/c_fc/bias": np.zeros(7, np.float32)})
  with pytest.raises(ValueError, match=r"shape mismatch.*resblocks_0/mlp/c_fc/bias"):
    clip_family.load_clip(m, init, common.unflatten(bad))
  # The activation is not visible in the weights: the checkpoint's config is checked.
  with pytest.raises(ValueError, match=r"activation.*quick_gelu.*gelu"):
    clip_family.load_clip(m, init, common.unflatten(clip), m.clip.replace(activation="gelu"))
  clip_family.load_clip(m.replace(activation="gelu"), init, common.unflatten(clip),
                   m.clip.replace(activation="gelu", image_size=64))
  # pose_only uses no image input layer: CLIP's conv1 etc. are expected, not unexpected.
  m = tiny("pose_only")
  clip_family.load_clip(m, random_params(pgvt.PoseVideoTransformer(m)), common.unflatten(clip))


def test_frozen_params_never_change_under_optax():
  m = tiny("pgvt")
  model = pgvt.PoseVideoTransformer(m)
  params = clip_family.load_clip(m, random_params(model), clip_params_for(m))
  batch = random_batch(m)
  rngs = {"dropout": jax.random.key(0), "drop_path": jax.random.key(1)}

  def loss(params):
    logits, _ = model.apply({"params": params}, batch, train=True, rngs=rngs)
    return jnp.mean(logits ** 2)

  # (a) The trainer's pattern: differentiate and optimise the trainable subtree only.
  trainable, frozen = clip_family.split_params(params)
  frozen_before = jax.tree_util.tree_map(np.array, frozen)
  tx = optax.adamw(1e-2, weight_decay=0.05)

  @jax.jit
  def step(trainable, frozen, state):
    grads = jax.grad(lambda t: loss(common.merge_params(t, frozen)))(trainable)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(trainable)
    updates, state = tx.update(grads, state, trainable)
    return optax.apply_updates(trainable, updates), state

  state = tx.init(trainable)
  for _ in range(3):
    trainable, state = step(trainable, frozen, state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, frozen, frozen_before)
  moved = [not np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(trainable),
      jax.tree_util.tree_leaves(clip_family.split_params(params)[0]))]
  assert all(moved)

  # (b) Whole-tree optimiser: multi_transform with set_to_zero on the frozen labels keeps
  # frozen leaves fixed even when they are handed non-zero gradients (and weight decay).
  tx = optax.multi_transform({common.TRAINABLE: optax.adamw(1e-2, weight_decay=0.05),
                              common.FROZEN: optax.set_to_zero()},
                             clip_family.param_labels(params))
  rng = np.random.default_rng(0)
  fake_grads = jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(x.dtype), params)
  update = jax.jit(tx.update)
  state, p = tx.init(params), params
  for _ in range(2):
    updates, state = update(fake_grads, state, p)
    p = optax.apply_updates(p, updates)
  jax.tree_util.tree_map(np.testing.assert_array_equal, clip_family.split_params(p)[1],
                         frozen_before)
  assert all(not np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(clip_family.split_params(p)[0]),
      jax.tree_util.tree_leaves(clip_family.split_params(params)[0])))


def test_late_fusion_from_two_single_stream_models_concatenates_their_features():
  """Table 4 row 3: init from trained pose-only and video-only models."""
  clip = clip_params_for(tiny("pgvt"))
  single = {}
  for seed, variant in enumerate(("pose_only", "video_only")):
    m = tiny(variant)
    model = pgvt.PoseVideoTransformer(m)
    params = clip_family.load_clip(m, random_params(model, seed=seed + 2, std=0.2), clip)
    single[variant] = (model, params)
  m = tiny("late_fusion")
  fused_model = pgvt.PoseVideoTransformer(m)
  fused = common.merge_stream_params(random_params(fused_model), single["pose_only"][1],
                                     single["video_only"][1])
  batch = random_batch(m)
  _, out = fused_model.apply({"params": fused}, batch)
  feats = [model.apply({"params": p}, batch)[1]["feature"] for model, p in single.values()]
  np.testing.assert_allclose(out["feature"], np.concatenate(feats, -1), atol=1e-6)
  # The shared frozen tower must agree between the two sources.
  other = dict(common.flatten(single["video_only"][1]))
  other["ln_pre/scale"] = other["ln_pre/scale"] + 1
  with pytest.raises(ValueError, match=r"different values.*ln_pre/scale"):
    common.merge_stream_params(fused, single["pose_only"][1], common.unflatten(other))
