"""Optimizer and learning-rate schedule from `config.optim`.

Freezing is not done here by masking: the train step differentiates only the trainable
subtree, so frozen weights have no gradient, no optimizer state and no update. As a second
guard, the optimizer is an `optax.partition` whose "frozen" branch is `set_to_zero()` (never
`optax.masked`, which passes unmasked gradients through unchanged), so a frozen leaf that ever
reached it would still not move.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax
from flax import traverse_util


def get_config() -> ml_collections.ConfigDict:
  """Defaults: AIM's recipe (AdamW 3e-4 at global batch 64, wd 0.05, warmup + cosine)."""
  c = ml_collections.ConfigDict()
  c.optimizer = "adamw"
  c.lr = 3e-4              # peak LR. PGVT's paper reports 8e-6 (one GPU); AIM uses 3e-4 @ 64.
  c.b1, c.b2, c.eps = 0.9, 0.999, 1e-8
  c.weight_decay = 0.05
  c.warmup_epochs = 2.5    # AIM: 2.5 of 50 epochs
  c.final_lr_ratio = 0.0   # cosine decays to lr * final_lr_ratio
  c.grad_clip_norm = 0.0   # 0 disables global-norm clipping
  c.grad_accum_steps = 1   # > 1 wraps the optimizer in optax.MultiSteps
  c.label_smoothing = 0.0
  # SGD (the PAAB/PAAT recipe, TimeSformer's trainer): momentum, coupled (L2) weight decay as in
  # torch.optim.SGD, applied to the leaves `decay_mask` selects.
  c.momentum = 0.9
  c.nesterov = False
  # "cosine" (warmup + cosine, AIM) | "steps" (warmup, then lr x lr_step_factor at each epoch of
  # lr_step_epochs: PAAB/PAAT's 15 epochs with x0.1 at epochs 11 and 14).
  c.schedule = "cosine"
  c.lr_step_epochs = (11, 14)
  c.lr_step_factor = 0.1
  return c


def no_decay(path: tuple[str, ...], leaf: Any) -> bool:
  """Biases, LayerNorm scales and embedding tables are not weight-decayed."""
  name = "/".join(path)
  return getattr(leaf, "ndim", 0) < 2 or "embedding" in name


def decay_mask(params) -> Any:
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: not no_decay(k, v) for k, v in flat.items()})


OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "steps")


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int,
                  steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine to `lr * final_lr_ratio` at `total_steps`.

  With `cfg.schedule == "steps"`: after the warmup, `lr` multiplied by `lr_step_factor` at the
  start of each epoch in `lr_step_epochs` (0-indexed epochs, as TimeSformer's
  `steps_with_relative_lrs`: epoch 11 is the twelfth).
  """
  schedule = cfg.get("schedule", "cosine")
  if schedule not in SCHEDULES:
    raise ValueError(f"config.optim.schedule={schedule!r}; expected one of {SCHEDULES}")
  warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
  if schedule == "steps":
    epochs = tuple(cfg.lr_step_epochs)
    if list(epochs) != sorted(epochs) or any(e <= 0 for e in epochs):
      raise ValueError(f"config.optim.lr_step_epochs={epochs}: expected increasing epochs > 0")
    # join_schedules counts the second schedule's steps from the warmup's end.
    steps = optax.piecewise_constant_schedule(
        cfg.lr, {int(e * steps_per_epoch) - warmup: cfg.lr_step_factor for e in epochs})
    if not warmup:
      return steps
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, warmup), steps], [warmup])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=cfg.lr * cfg.final_lr_ratio)


def make_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule,
                   labels: Callable[[Any], Any] | Any | None = None
                   ) -> optax.GradientTransformation:
  """AdamW or SGD (+ optional clipping and accumulation), frozen leaves routed to set_to_zero.

  Args:
    cfg: `config.optim`.
    schedule: learning rate per optimizer step.
    labels: a pytree (or a function of the params) of "trainable"/"frozen" strings; None means
      every leaf it sees is trainable.
  """
  if cfg.optimizer not in OPTIMIZERS:
    raise ValueError(f"config.optim.optimizer={cfg.optimizer!r}; expected one of {OPTIMIZERS}")
  # identity() when off: the optimizer state has the same structure with and without clipping,
  # so a run can enable clipping on resume (e.g. after a NaN).
  parts = [optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm > 0
           else optax.identity()]
  if cfg.optimizer == "sgd":
    # torch.optim.SGD: buf = momentum * buf + (g + wd * p); p -= lr * buf.
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  else:
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
  tx = optax.chain(*parts)
  if labels is None:
    labels = lambda params: jax.tree.map(lambda _: "trainable", params)
  tx = optax.partition({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
  if cfg.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
  return tx
