"""Model FLOPs of a config's train and inference steps from shapes alone (2 x jaxpr MACs).

The count `benchmarks.train_step` reports as model_flops for the JAX step; the PyTorch
reference's harness (`benchmarks.torch_step`) reports the same count, so that both
implementations' MFU divide the same work. Nothing is run or compiled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pgvt_jax import fitting, optim, steps
from pgvt_jax.models import clip_family, pgvt
from pgvt_jax.tools import flops as flops_lib


def jaxpr_flops(config, batch: int, mode: str) -> dict[str, float]:
  """{"train"/"inference": model_flops} of `config` at `batch` for `mode` (train, inference,
  both): 2 x the step's jaxpr MACs, from shapes only."""
  model = pgvt.create_model(config.model)
  shapes = pgvt.param_shapes(model)
  trainable, frozen = clip_family.split_params(shapes) if config.freeze_backbone else (shapes, {})
  out = {}
  if mode in ("train", "both"):
    tx = optim.make_optimizer(config.optim, optim.make_schedule(config.optim, 1000, 100),
                              labels=clip_family.param_labels if config.freeze_backbone else None)
    state = jax.eval_shape(lambda p: steps.init_state(p, tx, 0), trainable)
    spec = {**pgvt.input_spec(config.model, batch),
            "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
    fn = steps.make_train_step(model, tx, fitting.fixed(config), optim.make_schedule(config.optim, 1000, 100))
    out["train"] = 2 * flops_lib.count_macs(fn, state, frozen, spec)["total"]
  if mode in ("inference", "both"):
    views = config.data.eval_clips * config.data.eval_crops
    spec = pgvt.input_spec(config.model, batch * views)
    out["inference"] = 2 * flops_lib.count_macs(steps.make_eval_step(model), trainable, frozen,
                                                spec)["total"]
  return out
