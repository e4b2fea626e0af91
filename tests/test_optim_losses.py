"""Optimizer wiring (schedule, frozen routing, accumulation) and the auxiliary-loss hook."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pgvt_jax import losses, optim


def _cfg(**kw):
  c = optim.get_config()
  c.update(kw)
  return c


def test_warmup_then_cosine():
  cfg = _cfg(lr=1.0, warmup_epochs=2, final_lr_ratio=0.1, warmup_ratio=0.0)
  sched = optim.make_schedule(cfg, total_steps=100, steps_per_epoch=5)  # warmup 10 steps
  assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(0.5)
  assert float(sched(10)) == pytest.approx(1.0)
  assert float(sched(55)) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)  # cosine midpoint
  assert float(sched(100)) == pytest.approx(0.1)


def test_frozen_leaves_get_exactly_zero_update_and_no_state():
  params = {"adapter": {"kernel": jnp.ones((3, 3))}, "clip": {"kernel": jnp.ones((3, 3))}}
  labels = {"adapter": {"kernel": "trainable"}, "clip": {"kernel": "frozen"}}
  tx = optim.make_optimizer(_cfg(lr=0.1, warmup_epochs=0), optax.constant_schedule(0.1),
                            labels=labels)
  state = tx.init(params)
  # Adam mu/nu for the trainable kernel only, plus two step counters (Adam, schedule).
  assert sum(x.size for x in jax.tree.leaves(state)) == 2 * 9 + 2
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_array_equal(updates["clip"]["kernel"], 0.0)
  assert np.all(np.asarray(updates["adapter"]["kernel"]) != 0)


def test_gradient_accumulation_updates_every_k_steps():
  params = {"w": jnp.ones((2, 2))}
  tx = optim.make_optimizer(_cfg(grad_accum_steps=2, weight_decay=0.0),
                            optax.constant_schedule(0.1))
  state = tx.init(params)
  g1, g2 = {"w": jnp.full((2, 2), 1.0)}, {"w": jnp.full((2, 2), 3.0)}
  u1, state = tx.update(g1, state, params)
  np.testing.assert_array_equal(u1["w"], 0.0)  # first micro-step: nothing applied
  u2, state = tx.update(g2, state, params)
  # Adam's first step moves by lr * sign(mean gradient) = -0.1 (bias-corrected).
  np.testing.assert_allclose(u2["w"], -0.1, rtol=1e-4)


def test_warmup_starts_at_a_tenth_of_the_rate_as_mmcv():
  # mmcv linear warmup: lr * (1 - (1 - k / W) * (1 - 0.1)); k = 0 -> 0.1 lr, k = W/2 -> 0.55 lr.
  sched = optim.make_schedule(_cfg(lr=2.0, warmup_epochs=2), total_steps=100,
                              steps_per_epoch=5)
  assert float(sched(0)) == pytest.approx(0.2)
  assert float(sched(5)) == pytest.approx(2.0 * 0.55)
  assert float(sched(10)) == pytest.approx(2.0)


def test_weight_decay_mask_is_aims():
  """AIM exempts only class/positional embeddings and LayerNorms (paramwise_cfg)."""
  from pgvt_jax.models import pgvt
  from pgvt_jax.models.config import ModelConfig
  model = pgvt.create_model(ModelConfig(variant="pgvt", backbone="Ti/8", image_size=32,
                                        video_frames=2, pose_frames=4, num_classes=3))
  flat = {"/".join(k): v for k, v in
          __import__("flax").traverse_util.flatten_dict(optim.decay_mask(
              pgvt.param_shapes(model))).items()}
  exempt = {k for k, v in flat.items() if not v}
  # Decayed: adapter biases, head bias, temporal embeddings, R-Adapter, pose MLP.
  for path in ("resblocks_0/S_Adapter/D_fc1/bias", "resblocks_1/MLP_Adapter_pose/D_fc2/bias",
               "head/bias", "head/kernel", "temporal_embedding", "pose_embed/temporal_embedding",
               "resblocks_0/R_Adapter/fc_down/kernel", "resblocks_0/R_Adapter/pose_out/bias",
               "pose_embed/fc1/bias"):
    assert flat[path], path
  # Exempt: exactly the class/positional embeddings and the LayerNorms (CLIP's and ours).
  for path in ("class_embedding", "positional_embedding", "pose_embed/class_embedding",
               "pose_embed/positional_embedding", "ln_pre/scale", "ln_pre/bias",
               "resblocks_0/ln_1/scale", "resblocks_1/ln_2/bias", "ln_post/scale",
               "ln_post_pose/bias"):
    assert path in exempt, path
  assert all(any(n in p for n in optim.AIM_NO_DECAY) for p in exempt)


def test_aux_loss_hook_adds_weighted_term():
  @losses.register_aux_loss("test_l2_logits")
  def l2(outputs, batch):
    del batch
    return jnp.mean(outputs["logits"] ** 2)

  logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
  batch = {"label": jnp.array([0, 1])}
  base, _ = losses.total_loss({"logits": logits}, batch, num_classes=2)
  total, metrics = losses.total_loss({"logits": logits}, batch, num_classes=2,
                                     aux_weights={"test_l2_logits": 0.5})
  assert float(total) == pytest.approx(float(base) + 0.5 * 1.25)
  assert float(metrics["aux_test_l2_logits"]) == pytest.approx(1.25)
  with pytest.raises(ValueError, match="unknown loss 'nope'"):
    losses.total_loss({"logits": logits}, batch, num_classes=2, aux_weights={"nope": 1.0})


def test_label_smoothing_matches_definition():
  logits = jnp.array([[1.0, 2.0, 0.5]])
  got = losses.softmax_cross_entropy(logits, jnp.array([1]), 3, label_smoothing=0.3)
  logp = jax.nn.log_softmax(logits)[0]
  target = np.array([0.1, 0.8, 0.1])
  assert float(got) == pytest.approx(float(-(target * logp).sum()), rel=1e-6)
