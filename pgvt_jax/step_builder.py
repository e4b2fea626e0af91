"""The jitted train and eval steps from (config, mesh) alone: abstract values, explicit devices.

    built = step_builder.build(config, mesh, total_steps=1000, steps_per_epoch=100)
    compiled = built.train_step.lower(built.abstract_state, built.abstract_frozen,
                                      built.train_batch).compile()

Nothing here reads records, opens a workdir or creates a parameter: the params, the
trainable/frozen split and the optimizer state are `jax.eval_shape`s, and every abstract value
carries the sharding the step expects. So the same function serves the trainer
(`experiment.setup_experiment` fills the abstract state with real arrays) and the planner
(`pgvt_jax.plan` lowers it for compile-only TPU devices on a CPU host).

dtype/attention "auto" are decided for the MESH's devices (`accelerators.choose(mesh.devices)`)
and written into the model's config before the model exists: the model never consults the
host backend at trace time, so a TPU program compiled on a CPU host gets bfloat16, as it would
on the TPU. Remat and micro-batches "auto" need compiles: `planner.Planner.fit` decides them
first (pgvt_jax/fitting.py) and builds through here with the values it chose.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Optional

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding

from pgvt_jax import accelerators, data, optim, partitioning, steps
from pgvt_jax.models import factory


@dataclasses.dataclass
class Built:
  """Everything a step needs, as shapes and shardings (no arrays).

  Abstract trees are `jax.ShapeDtypeStruct`s carrying their `sharding`; the global batches are
  `{key: (B, ...)}` with B = config.data.train_batch_size / eval_batch_size.
  """
  config: ml_collections.ConfigDict   # the copy the steps were built from ("auto" resolved)
  choice: accelerators.Choice         # what "auto" meant on the mesh's devices, and why
  model: Any
  tx: Any
  schedule: Callable
  train_step: Optional[Callable]      # jit: (state, frozen, batch) -> (state, metrics); donates
  eval_step: Callable                 # jit: (trainable, frozen, batch) -> (probs, label, ...)
  param_shardings: Any                # all params (before the split)
  trainable_shardings: Any
  frozen_shardings: Any
  state_shardings: dict
  batch_sharding: NamedSharding
  abstract_params: Any
  abstract_state: dict
  abstract_frozen: Any
  train_batch: dict
  eval_batch: dict


def resolve_model_config(model_cfg: ml_collections.ConfigDict,
                         devices) -> tuple[ml_collections.ConfigDict, accelerators.Choice]:
  """A copy of `config.model` with "auto" dtype and attention decided for `devices`.

  dtype "auto" becomes the devices' choice (bfloat16 on TPU and GPUs >= sm80). attention_impl
  "auto" becomes "xla" wherever that is the devices' choice; on cuDNN-capable GPUs it stays
  "auto", because whether cuDNN takes a call depends on the call (dtype, head dim, mask) and is
  decided per call; such devices are local (there are no compile-only GPUs), so the host
  backend the per-call check reads is theirs.
  """
  choice = accelerators.choose(list(devices))
  out = copy.deepcopy(model_cfg)
  if out.get("dtype", "auto") == "auto":
    out.dtype = choice.dtype
  if out.get("attention_impl", "auto") == "auto" and choice.attention == "xla":
    out.attention_impl = "xla"
  return out, choice


def check_micro_batches(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """k micro-batches must give every device the same whole number of clips."""
  k = steps.micro_batches_of(config)  # also refuses an undecided "auto"
  per_device = config.data.train_batch_size // mesh.devices.size
  if per_device % k:
    raise ValueError(
        f"config.optim.micro_batches={k} does not divide the {per_device} clips per device "
        f"(config.data.train_batch_size={config.data.train_batch_size} over "
        f"{mesh.devices.size} devices); use a divisor of {per_device} or \"auto\"")


def with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree`'s leaves carrying the matching sharding."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def build(config: ml_collections.ConfigDict, mesh: Mesh, *, train: bool = True,
          total_steps: int = 1, steps_per_epoch: int = 1) -> Built:
  """The trainer's jitted steps for `config` on `mesh` (see the module docstring).

  Args:
    config: the experiment config (not modified; derived fields go into a copy).
    mesh: from `partitioning.make_mesh(config.mesh, devices)`; any devices, local or not.
    train: also build the train step (evaluation needs only the eval step).
    total_steps, steps_per_epoch: the learning-rate schedule's length (shapes do not depend
      on them).
  """
  config = copy.deepcopy(config)
  factory.check_freezing(config)
  factory.configure_data(config)  # num_joints (the batch's J); pixel statistics
  for field in ("train_batch_size", "eval_batch_size"):
    partitioning.check_batch_divisible(config.data[field], mesh, f"config.data.{field}")
  if train:
    check_micro_batches(config, mesh)
  config.model, choice = resolve_model_config(config.model, mesh.devices.flat)

  # ---------------------------------------------------------------- model & optimizer
  model = factory.create_model(config.model)
  model_cfg = model.config
  params = factory.param_shapes(model)
  param_sh = partitioning.tree_shardings(params, mesh, config.mesh)
  if config.freeze_backbone:
    trainable, frozen = factory.split_params(model_cfg, params)
    trainable_sh, frozen_sh = factory.split_params(model_cfg, param_sh)
  else:  # full fine-tuning: every param trains (and is saved in every checkpoint)
    trainable, frozen, trainable_sh, frozen_sh = params, {}, param_sh, {}
  accum = max(1, config.optim.grad_accum_steps)
  schedule = optim.make_schedule(config.optim, max(1, total_steps // accum),
                                 max(1, steps_per_epoch // accum))
  tx = optim.make_optimizer(config.optim, schedule,
                            labels=factory.param_labels(model_cfg) if config.freeze_backbone
                            else None)
  state = jax.eval_shape(lambda p: steps.init_state(p, tx, config.seed), trainable)
  state_sh = partitioning.tree_shardings(state, mesh, config.mesh)
  state_sh["params"] = trainable_sh  # the params keep the placement they were loaded with

  # ---------------------------------------------------------------- steps
  batch_sh = partitioning.batch_sharding(mesh)
  repl = partitioning.replicated(mesh)
  train_step = None
  if train:
    train_step = jax.jit(steps.make_train_step(model, tx, config, schedule, batch_sh),
                         in_shardings=(state_sh, frozen_sh, batch_sh),
                         out_shardings=(state_sh, repl), donate_argnums=(0,))
  predict = steps.make_eval_step(model)
  eval_step = jax.jit(
      lambda p, f, b: (predict(p, f, b), b["label"], b["video_index"], b["valid"]),
      in_shardings=(trainable_sh, frozen_sh, batch_sh), out_shardings=repl)

  persons = config.data.get("max_persons", 1)
  if model_cfg.num_joints % persons:
    raise ValueError(f"config.model has {model_cfg.num_joints} joints, not a multiple of "
                     f"config.data.max_persons={persons}")

  def batch(train_rows: bool) -> dict:
    # batch_spec takes V, the joints of one person's layout (J = V * max_persons).
    spec = data.batch_spec(config.data, model_cfg.num_joints // persons, train=train_rows)
    return with_shardings(spec, {k: batch_sh for k in spec})

  return Built(config=config, choice=choice, model=model, tx=tx, schedule=schedule,
               train_step=train_step, eval_step=eval_step, param_shardings=param_sh,
               trainable_shardings=trainable_sh, frozen_shardings=frozen_sh,
               state_shardings=state_sh, batch_sharding=batch_sh,
               abstract_params=with_shardings(params, param_sh),
               abstract_state=with_shardings(state, state_sh),
               abstract_frozen=with_shardings(frozen, frozen_sh),
               train_batch=batch(True), eval_batch=batch(False))
