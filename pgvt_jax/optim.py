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
  c.warmup_ratio = 0.1     # warmup starts at warmup_ratio * lr (mmcv's linear warmup default)
  c.final_lr_ratio = 0.0   # cosine decays to lr * final_lr_ratio
  c.grad_clip_norm = 0.0   # 0 disables global-norm clipping
  c.grad_accum_steps = 1   # > 1 wraps the optimizer in optax.MultiSteps: an update every k
                           # steps (a k x larger effective batch; steps count data batches)
  # Memory, not recipe: each step's batch in k passes, gradients averaged, one update
  # (steps.accumulate_gradients). "auto": the fewest passes that fit the devices, decided at
  # each start with config.model.remat "auto" (pgvt_jax/fitting.py). An int or "auto".
  c.micro_batches = ml_collections.FieldReference("auto", field_type=object)
  c.label_smoothing = 0.0
  # Params whose path contains one of these names are not weight-decayed; everything else
  # (adapter and head biases, temporal embeddings, R-Adapter) is. AIM's `paramwise_cfg`
  # (configs/recognition/vit/vitclip_base_diving48.py): class/positional embeddings and the
  # LayerNorms. ("ln_post" also covers ln_post_pose, as mmcv matches substrings.)
  c.no_decay = AIM_NO_DECAY
  # "aim" (the names above) | "ndim": no decay for leaves with ndim < 2 (biases, norms) and
  # embedding tables (the param groups of the PAAB/PAAT SGD recipe's torch parity test) |
  # "all": every leaf, as the public PAAB/PAAT run (TimeSformer's `construct_optimizer` puts
  # every param whose name lacks "bn" in the SOLVER.WEIGHT_DECAY group; the model has none).
  c.decay_rule = "aim"
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


AIM_NO_DECAY = ("class_embedding", "positional_embedding", "ln_1", "ln_2", "ln_pre", "ln_post")


DECAY_RULES = ("aim", "ndim", "all")


def no_decay(path: tuple[str, ...], leaf: Any = None, names=AIM_NO_DECAY,
             rule: str = "aim") -> bool:
  """True if a param is exempt from weight decay.

  rule "aim": its path contains one of `names` (mmcv custom_keys: substring match).
  rule "ndim": it has fewer than 2 dims (biases, norm scales) or is an embedding table.
  rule "all": never (every leaf is decayed; `names` is ignored).
  """
  if rule not in DECAY_RULES:
    raise ValueError(f"config.optim.decay_rule={rule!r}; expected one of {DECAY_RULES}")
  full = "/".join(path)
  if rule == "all":
    return False
  if rule == "ndim":
    return getattr(leaf, "ndim", 0) < 2 or "embedding" in full
  return any(n in full for n in names)


def decay_mask(params, names=AIM_NO_DECAY, rule: str = "aim") -> Any:
  """Same tree as `params`: True where weight decay applies."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
      {k: not no_decay(k, v, tuple(names), rule) for k, v in flat.items()})


OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "steps")


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int,
                  steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup from `warmup_ratio * lr` to `lr`, then cosine to `lr * final_lr_ratio`.

  mmcv's linear warmup (AIM) starts at warmup_ratio = 0.1 of the rate, not at 0.
  With `cfg.schedule == "steps"`: after the warmup, `lr` multiplied by `lr_step_factor` at the
  start of each epoch in `lr_step_epochs` (0-indexed epochs, as TimeSformer's
  `steps_with_relative_lrs`: epoch 11 is the twelfth).
  """
  schedule = cfg.get("schedule", "cosine")
  if schedule not in SCHEDULES:
    raise ValueError(f"config.optim.schedule={schedule!r}; expected one of {SCHEDULES}")
  warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
  ratio = cfg.get("warmup_ratio", 0.1)
  if not 0 <= ratio <= 1:
    raise ValueError(f"config.optim.warmup_ratio={ratio}: expected 0 <= ratio <= 1")
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
        [optax.linear_schedule(cfg.lr * ratio, cfg.lr, warmup), steps], [warmup])
  return optax.warmup_cosine_decay_schedule(
      init_value=cfg.lr * ratio, peak_value=cfg.lr, warmup_steps=warmup,
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
  names, rule = cfg.get("no_decay", AIM_NO_DECAY), cfg.get("decay_rule", "aim")
  no_decay((), rule=rule)  # a bad rule fails here, not at the first update
  mask = lambda p: decay_mask(p, names, rule)
  if cfg.optimizer == "sgd":
    # torch.optim.SGD: buf = momentum * buf + (g + wd * p); p -= lr * buf.
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
    parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  else:
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=mask))
  tx = optax.chain(*parts)
  if labels is None:
    labels = lambda params: jax.tree.map(lambda _: "trainable", params)
  tx = optax.partition({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
  if cfg.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
  return tx
