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
  c.grad_accum_steps = 1   # > 1 wraps the optimizer in optax.MultiSteps
  c.label_smoothing = 0.0
  # Params whose path contains one of these names are not weight-decayed; everything else
  # (adapter and head biases, temporal embeddings, R-Adapter) is. AIM's `paramwise_cfg`
  # (configs/recognition/vit/vitclip_base_diving48.py): class/positional embeddings and the
  # LayerNorms. ("ln_post" also covers ln_post_pose, as mmcv matches substrings.)
  c.no_decay = AIM_NO_DECAY
  return c


AIM_NO_DECAY = ("class_embedding", "positional_embedding", "ln_1", "ln_2", "ln_pre", "ln_post")


def no_decay(path: tuple[str, ...], names=AIM_NO_DECAY) -> bool:
  """True if a param path contains one of `names` (mmcv custom_keys: substring match)."""
  full = "/".join(path)
  return any(n in full for n in names)


def decay_mask(params, names=AIM_NO_DECAY) -> Any:
  """Same tree as `params`: True where weight decay applies."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: not no_decay(k, tuple(names)) for k in flat})


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int,
                  steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup from `warmup_ratio * lr` to `lr`, then cosine to `lr * final_lr_ratio`.

  mmcv's linear warmup (AIM) starts at warmup_ratio = 0.1 of the rate, not at 0.
  """
  warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
  ratio = cfg.get("warmup_ratio", 0.1)
  if not 0 <= ratio <= 1:
    raise ValueError(f"config.optim.warmup_ratio={ratio}: expected 0 <= ratio <= 1")
  return optax.warmup_cosine_decay_schedule(
      init_value=cfg.lr * ratio, peak_value=cfg.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=cfg.lr * cfg.final_lr_ratio)


def make_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule,
                   labels: Callable[[Any], Any] | Any | None = None
                   ) -> optax.GradientTransformation:
  """AdamW (+ optional clipping and accumulation), frozen leaves routed to set_to_zero.

  Args:
    cfg: `config.optim`.
    schedule: learning rate per optimizer step.
    labels: a pytree (or a function of the params) of "trainable"/"frozen" strings; None means
      every leaf it sees is trainable.
  """
  if cfg.optimizer != "adamw":
    raise ValueError(f"config.optim.optimizer={cfg.optimizer!r}; only 'adamw' is implemented")
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay,
                           mask=lambda p: decay_mask(p, cfg.get("no_decay", AIM_NO_DECAY))))
  tx = optax.chain(*parts)
  if labels is None:
    labels = lambda params: jax.tree.map(lambda _: "trainable", params)
  tx = optax.partition({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
  if cfg.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
  return tx
