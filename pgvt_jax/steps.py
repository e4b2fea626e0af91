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

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec

from pgvt_jax import losses
from pgvt_jax.models import common

TrainState = dict[str, Any]
MODEL_INPUTS = ("frames", "pose", "pose_mask", "pose_heatmap")


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def micro_batches_of(config: ml_collections.ConfigDict) -> int:
  """`config.optim.micro_batches` as a positive int (1 when absent)."""
  k = config.optim.get("micro_batches", 1)
  if isinstance(k, str) and k.isdigit():
    k = int(k)
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    raise ValueError(f"config.optim.micro_batches={k!r}: expected a positive integer here "
                     "(\"auto\" is decided before the step is built: pgvt_jax.fitting)")
  return k


def init_state(trainable: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return {"step": jnp.zeros((), jnp.int32), "params": trainable,
          "opt_state": tx.init(trainable), "rng": jax.random.PRNGKey(seed)}


def step_rngs(rng: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
  dropout, drop_path = jax.random.split(jax.random.fold_in(rng, step))
  return {"dropout": dropout, "drop_path": drop_path}


def split_micro_batches(batch: Mapping[str, jax.Array], k: int,
                        sharding: Optional[NamedSharding] = None) -> dict[str, jax.Array]:
  """`{key: (B, ...)}` -> `{key: (k, B/k, ...)}`; micro-batch i holds rows i, i+k, i+2k, ...

  Strided, not contiguous: each device holds a contiguous block of B/n rows, so every
  micro-batch takes B/(n k) rows from every device and the split moves no data. `sharding`
  (the batch's) pins dimension 1 to the batch axes.
  """
  def split(x):
    y = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
    if sharding is not None:
      spec = PartitionSpec(None, *sharding.spec)
      y = jax.lax.with_sharding_constraint(y, NamedSharding(sharding.mesh, spec))
    return y
  return {key: split(x) for key, x in batch.items()}


def accumulate_gradients(grad_fn: Callable, params: Any, batch: Mapping[str, jax.Array],
                         rngs: dict[str, jax.Array], k: int,
                         sharding: Optional[NamedSharding] = None):
  """`grad_fn(params, batch, rngs) -> ((loss, metrics), grads)` over k micro-batches, averaged.

  One global batch, one optimizer update, activations of B/k clips at a time: the mean of k
  equal-size micro-batch means is the batch mean, so loss, metrics and gradients equal the
  unsplit step's (to float rounding) when nothing is random. Dropout/drop-path keys are
  `fold_in(step key, i)` for micro-batch i: other masks than k=1 draws, same distribution.
  Gradients are summed in float32 in a `lax.scan` carry (one copy of the trainable params).
  """
  micro = split_micro_batches(batch, k, sharding)
  first = {key: x[0] for key, x in micro.items()}
  shapes = jax.eval_shape(grad_fn, params, first, rngs)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

  def body(total, xs):
    i, mb = xs
    keys = {name: jax.random.fold_in(key, i) for name, key in rngs.items()}
    out = grad_fn(params, mb, keys)
    return jax.tree.map(lambda t, o: t + o.astype(jnp.float32), total, out), None

  total, _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
  return jax.tree.map(lambda t, s: (t / k).astype(s.dtype), total, shapes)


def make_train_step(model, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                    schedule: optax.Schedule,
                    batch_sharding: Optional[NamedSharding] = None) -> Callable:
  """Classification's (state, frozen, batch) -> (state, metrics): `losses.total_loss` (cross
  entropy + weighted aux losses) through `make_loss_step`."""
  num_classes = config.model.num_classes
  smoothing = config.optim.label_smoothing
  aux = dict(config.get("aux_losses", {}) or {})

  def loss_fn(trainable, frozen, batch, rngs):
    params = common.merge_params(trainable, frozen)
    logits, out = model.apply({"params": params}, model_inputs(batch), train=True, rngs=rngs)
    return losses.total_loss({"logits": logits, **out}, batch, num_classes=num_classes,
                             label_smoothing=smoothing, aux_weights=aux)

  return make_loss_step(loss_fn, tx, config, schedule, batch_sharding)


def make_loss_step(loss_fn: Callable, tx: optax.GradientTransformation,
                   config: ml_collections.ConfigDict, schedule: optax.Schedule,
                   batch_sharding: Optional[NamedSharding] = None) -> Callable:
  """Any task's (state, frozen, batch) -> (state, metrics) from its loss:
  `loss_fn(trainable, frozen, batch, rngs) -> (scalar loss, {name: scalar})`.

  Gradients w.r.t. the trainable subtree only. `config.optim.micro_batches` = k > 1 splits
  each global batch into k micro-batches whose gradients are averaged before the one update
  (`accumulate_gradients`; the loss must be a mean over equal-weight rows for the result to
  equal one pass); an unresolved "auto" is an error here (`pgvt_jax.fitting` decides it for
  the devices). Metrics: the loss's, plus loss, grad_norm and lr.
  """
  micro_batches = micro_batches_of(config)

  def train_step(state: TrainState, frozen: Any, batch: Mapping[str, jax.Array]):
    rngs = step_rngs(state["rng"], state["step"])
    grad_fn = lambda p, b, r: jax.value_and_grad(loss_fn, has_aux=True)(p, frozen, b, r)
    if micro_batches == 1:
      (loss, metrics), grads = grad_fn(state["params"], batch, rngs)
    else:
      (loss, metrics), grads = accumulate_gradients(grad_fn, state["params"], batch, rngs,
                                                    micro_batches, batch_sharding)
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
