"""The jitted train and eval steps, and the train state they carry.

TrainState (a plain dict, so orbax saves it as is):
    step       ()      int32
    params     trainable params only (adapters, embeddings, ln_post, head)
    opt_state  optimizer state of those params
    rng        (2,)    uint32 base key; step keys are fold_in(rng, step), so a resumed run
                       draws exactly the dropout/drop-path masks an uninterrupted one draws.
The frozen CLIP params travel separately (sharded, never donated, never differentiated).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from pgvt_jax import losses
from pgvt_jax.models import common

TrainState = dict[str, Any]
MODEL_INPUTS = ("frames", "pose", "pose_mask", "pose_heatmap")


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def init_state(trainable: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return {"step": jnp.zeros((), jnp.int32), "params": trainable,
          "opt_state": tx.init(trainable), "rng": jax.random.PRNGKey(seed)}


def step_rngs(rng: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
  dropout, drop_path = jax.random.split(jax.random.fold_in(rng, step))
  return {"dropout": dropout, "drop_path": drop_path}


def make_train_step(model, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                    schedule: optax.Schedule) -> Callable:
  """(state, frozen, batch) -> (state, metrics). Gradients w.r.t. the trainable subtree only."""
  num_classes = config.model.num_classes
  smoothing = config.optim.label_smoothing
  aux = dict(config.get("aux_losses", {}) or {})

  def loss_fn(trainable, frozen, batch, rngs):
    params = common.merge_params(trainable, frozen)
    logits, out = model.apply({"params": params}, model_inputs(batch), train=True, rngs=rngs)
    return losses.total_loss({"logits": logits, **out}, batch, num_classes=num_classes,
                             label_smoothing=smoothing, aux_weights=aux)

  def train_step(state: TrainState, frozen: Any, batch: Mapping[str, jax.Array]):
    rngs = step_rngs(state["rng"], state["step"])
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], frozen, batch, rngs)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
                 "rng": state["rng"]}
    accum = config.optim.grad_accum_steps
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
               "lr": schedule(state["step"] // max(accum, 1))}
    return new_state, metrics

  return train_step


def make_eval_step(model) -> Callable:
  """(trainable, frozen, batch) -> class probabilities `(B, C)` (eval mode, no dropout)."""
  def eval_step(trainable, frozen, batch):
    params = common.merge_params(trainable, frozen)
    logits, _ = model.apply({"params": params}, model_inputs(batch), train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return eval_step
