"""The classification task (`config.task` "classification", the default): everything a run
needs, built once from the config: mesh, input, model, params, optimizer, sharded state, jitted
steps, checkpointer, and its evaluator (top-1/5 and mean class accuracy over the eval split's
videos). `train.py`'s loop and `evaluate` run it (pgvt_jax/tasks.py: the task interface).

Resume order (big_vision/maxtext convention): the workdir's own checkpoint wins; otherwise the
backbone comes from the model family's converted weights (`config.clip_dir` from
`pgvt_jax.convert_clip` for family "clip", `config.timesformer_dir` from
`pgvt_jax.convert_timesformer` for "timesformer"; see models/factory.py) and new params from
their initialisers; without them the backbone is random, with a warning.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from pgvt_jax import (accelerators, checkpointing, data, evaluation, init_from, metric_writer,
                      optim, partitioning, paths, steps, tasks)
from pgvt_jax.models import common, factory
from pgvt_jax.tasks import Experiment, build_steps  # noqa: F401  (the names callers used)


def prepare_data(config: ml_collections.ConfigDict) -> None:
  """The built-in synthetic dataset is generated on first use (a few seconds)."""
  syn = config.get("synthetic_data")
  if not syn or not syn.get("enabled", False):
    return
  # The TFDS builders are imported only when demo records are built (TFDS is slow to import).
  from data_prep.datasets import synthetic  # pylint: disable=g-import-not-at-top
  kwargs = dict(num_train=syn.num_train, num_test=syn.num_test, num_classes=syn.num_classes,
                num_frames=syn.num_frames, image_size=syn.image_size, seed=syn.seed,
                class_set=syn.get("class_set", "fine"))
  out = paths.as_str(syn.data_dir)  # TFDS takes strings; a gs:// URL stays whole
  if jax.process_index() == 0:
    synthetic.build(out, **kwargs)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("synthetic data built")
  builder_dir = synthetic.build(out, **kwargs)  # already there: returns its path
  config.data.builder_dir = str(builder_dir)


def load_params(config, model, shardings) -> tuple[Any, dict]:
  """Initialised params with the family's pretrained backbone merged in; meta names it."""
  init = lambda rng: model.init(rng, factory.dummy_batch(model.config))["params"]
  params = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(config.seed))
  field, directory = factory.pretrained_dir(config)
  weights = factory.get_family(model.config).weights
  if weights is None:  # a family trained from scratch (deit): nothing to load, nothing to warn
    return params, {"backbone": None, "backbone_sha256": None}
  if not directory:
    converter = weights.converter
    logging.warning("config.%s is empty: the backbone is RANDOMLY initialised. Convert "
                    "pretrained weights with `python -m %s` and set --config.%s=... for real "
                    "training.", field, converter, field)
    return params, {"backbone": None, "backbone_sha256": None}
  # Strict: architecture, missing/unexpected keys; position (and time) embeddings resized.
  merged, weights_file = factory.load_pretrained(config, params)
  # Loaded leaves are host values (the same on every process); init leaves stay global arrays.
  host = lambda x: np.asarray(x) if x.is_fully_addressable and x.sharding.num_devices == 1 else x
  params = jax.device_put(jax.tree.map(host, merged), shardings)
  sha = checkpointing.file_checksum(weights_file)
  return params, {"backbone": paths.as_str(directory), "backbone_sha256": sha}


def setup_experiment(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                     train: bool) -> Experiment:
  """The classification task's Experiment (pgvt_jax/tasks.py)."""
  # Derived fields are filled into a copy: the caller's config stays as given, so running
  # again with the same object (a notebook's resume cell) is not a "changed config".
  config = copy.deepcopy(config)
  workdir = paths.as_path(workdir)  # absolute, or a gs:// URL kept whole
  workdir.mkdir(parents=True, exist_ok=True)
  factory.check_freezing(config)
  factory.configure_data(config)  # num_joints; the family's pixel statistics unless set
  writer = metric_writer.MetricWriter(workdir)  # config.json: workdir.record_config

  # ---------------------------------------------------------------- mesh
  mesh = partitioning.make_mesh(config.mesh)
  for field in ("train_batch_size", "eval_batch_size"):
    partitioning.check_batch_divisible(config.data[field], mesh, f"config.data.{field}")
  logging.info("Mesh %s over %d devices (%d processes): %s", dict(mesh.shape),
               jax.device_count(), jax.process_count(), jax.devices()[0].platform)
  logging.info("What model.dtype / attention_impl 'auto' mean here: %s",
               accelerators.choose(mesh.devices.flat).reason)

  # ---------------------------------------------------------------- input
  prepare_data(config)
  model_cfg = factory.model_config(config.model)  # validates config.model
  eval_source = data.open_source(config.data, config.data.eval_split)
  train_source = data.open_source(config.data, config.data.train_split) if train else None
  for src, split in ((eval_source, "eval_split"), (train_source, "train_split")):
    if src is not None and src.num_classes != model_cfg.num_classes:
      raise ValueError(f"config.model.num_classes={model_cfg.num_classes} but "
                       f"config.data.{split} has {src.num_classes} classes")
  steps_per_epoch = max(1, (len(train_source) if train else 1) // config.data.train_batch_size)
  total = config.total_steps or int(config.num_epochs * steps_per_epoch)

  # ---------------------------------------------------------------- model, optimizer, steps
  # Shapes, shardings and the jitted steps, decided from the mesh alone (step_builder): the
  # planner compiles exactly these for devices it does not have. Remat / micro-batches
  # "auto": the cheapest setting whose train step fits these devices (fitting.py); the
  # trainer then runs the very program that was measured.
  built, train_step, fit = build_steps(config, mesh, train=train, total_steps=total,
                                       steps_per_epoch=steps_per_epoch)
  model = built.model

  # ---------------------------------------------------------------- shard & transfer
  params, meta = load_params(config, model, built.param_shardings)
  if not checkpointing.finished_steps(workdir / "checkpoints"):  # a resume has its own weights
    params = init_from.maybe_apply(config, params, meta, built.param_shardings)
  if config.freeze_backbone:
    trainable, frozen = factory.split_params(model.config, params)
  else:  # full fine-tuning: the backbone trains too (and is saved in every checkpoint)
    trainable, frozen = params, {}
  del params
  logging.info("Params: %d trainable, %d frozen", common.count(trainable), common.count(frozen))
  state = jax.jit(lambda p: steps.init_state(p, built.tx, config.seed),
                  out_shardings=built.state_shardings)(trainable)

  train_iter = data.make_train_iterator(config.data, train_source) if train else None
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                    best_metric=config.best_metric,
                                    async_save=config.async_checkpoints)
  meta = {**meta, "steps_per_epoch": steps_per_epoch, "total_steps": total, "fit": fit}
  logging.info("Training for %d steps (%d per epoch)", total, steps_per_epoch)

  # ---------------------------------------------------------------- evaluators
  evaluate = lambda source, tag: make_evaluator(config, built.eval_step, built.batch_sharding,
                                                writer, source, tag)
  test_split = config.data.get("test_split", "")
  final = {}
  if test_split:  # opened at the end, when it is evaluated
    final["test"] = evaluate(lambda: data.open_source(config.data, test_split), "test")
  return Experiment(config=config, workdir=workdir, mesh=mesh, batch_sharding=built.batch_sharding,
                    writer=writer, checkpointer=ckpt, model=model, train_iter=train_iter,
                    frozen=frozen, state=state, train_step=train_step, total_steps=total,
                    meta=meta, evaluators={"classification": evaluate(lambda: eval_source,
                                                                      "eval")},
                    final_evaluators=final, backbone_field=factory.pretrained_dir(config)[0])


def make_evaluator(config: ml_collections.ConfigDict, eval_step, batch_sharding,
                   writer: metric_writer.MetricWriter, source, tag: str) -> tasks.Evaluator:
  """(params, frozen, *, save_dir) -> {"<tag>/top1", "<tag>/top5", "<tag>/mean_class_accuracy"}:
  one pass over the split `source()` returns (opened on first use), the views of a video
  combined (config.eval_combine: mean or max). With `save_dir`: the confusion matrix and the
  per-class accuracy are written too."""
  opened = []

  def run(params, frozen, *, save_dir: Optional[epath.Path] = None) -> dict:
    if not opened:
      opened.append(source())
    src = opened[0]
    it, info = data.make_eval_iterator(config.data, src)
    acc = evaluation.ViewAccumulator(info.num_videos, config.model.num_classes,
                                     combine=config.get("eval_combine", "mean"))
    for host_batch in it:
      batch = data.to_global(dict(host_batch), batch_sharding)
      probs, label, vid, valid = jax.device_get(eval_step(params, frozen, batch))
      acc.add(probs, label, vid, valid)
    result = acc.result(expected_views=info.num_views)
    metrics = {f"{tag}/top1": result["top1"], f"{tag}/top5": result["top5"],
               f"{tag}/mean_class_accuracy": result["mean_class_accuracy"]}
    if save_dir is not None and jax.process_index() == 0:
      evaluation.save_confusion(result["confusion_matrix"], save_dir / f"{tag}_confusion",
                                src.class_names)
      names = src.class_names or [str(i) for i in range(config.model.num_classes)]
      per_class = {n: (None if np.isnan(a) else float(a))
                   for n, a in zip(names, result["per_class_accuracy"])}
      writer.write_json(f"{tag}_per_class_accuracy.json", per_class)
    return metrics

  return run


def trainer_config() -> ml_collections.ConfigDict:
  """Trainer fields every experiment config carries (see configs/*.py)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.clip_dir = ""            # converted CLIP (python -m pgvt_jax.convert_clip); "" = random
  c.timesformer_dir = ""     # family "timesformer": python -m pgvt_jax.convert_timesformer
  c.freeze_backbone = True   # False: full fine-tuning (e.g. a random tiny backbone; required
                             # by family "timesformer")
  c.num_epochs = 50
  c.total_steps = 0          # > 0 overrides num_epochs
  c.log_every = 50
  c.eval_every = 0           # 0: only at the end
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.restore_step = 0         # > 0: resume from this kept step (later checkpoints are deleted)
  c.allow_config_changes = False  # resume although training fields changed (named on resume)
  c.best_metric = "eval/top1"
  c.eval_combine = "mean"    # views of a video: "mean" of probabilities | "max" (TimeSformer)
  # R@k video retrieval at every evaluation too (pgvt_jax/retrieval.py): query and gallery
  # record sets "DIR[:SPLIT]" -> eval/retrieval_R@k; query "" = off.
  c.eval_retrieval = ml_collections.ConfigDict(dict(query="", gallery="", ks=(1, 5, 10)))
  c.async_checkpoints = True
  # {"name": weight} of registered auxiliary losses (pgvt_jax.losses); 0 = off. Declared so
  # `--config.aux_losses.paat=1.6` works from the command line.
  c.aux_losses = ml_collections.ConfigDict({"paat": 0.0})  # PAAT lambda (Eq. 8; paper 1.6)
  c.init_from = init_from.config()             # two-stage late fusion (Table 4 row 3)
  c.optim = optim.get_config()
  c.mesh = partitioning.get_config()
  c.data = data.get_config()
  return c
