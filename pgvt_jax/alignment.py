"""The multi-view video alignment task (PAAB/PAAT paper Sec. 4, Table 5): a DeiT trained from
scratch with a time-contrastive loss, PAAB/PAAT optional, scored by the alignment error on
held-out episodes. `config.task == "alignment"`: `setup_experiment` builds the task's
`tasks.Experiment`, which `train.py`'s one loop runs (workdir lock, resume checks, device
prefetch, SIGTERM, checkpoint integrity, divergence, best checkpoint: as classification).

What the task supplies: the DeiT (`create_model`, the one place it is built), the loss
(tcn.time_contrastive_loss + weighted aux losses: PAAT), the steps (`build`, for the trainer
and for fitting micro-batches "auto"), train batches drawn from in-memory episodes as a pure
function of (seed, step) (alignment_data; `tasks.StepBatches`), and the evaluator: every frame
of every held-out episode embedded, the mean alignment error (lower is better; the best
checkpoint is the lowest), plus reference errors before training and a PNG at the end.
"""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from pgvt_jax import (accelerators, alignment_data, checkpointing, data, losses, metric_writer,
                      optim, partitioning, paths, step_builder, steps, tasks, tcn)
from pgvt_jax.models import config as model_config_lib
from pgvt_jax.models import deit_model, factory

MODEL_KEYS = ("frames", "pose", "pose_mask")


def create_model(cfg: ml_collections.ConfigDict) -> deit_model.DeiT:
  """`config.model` (family "deit", one frame per clip, no head) -> the frame embedder."""
  m = factory.model_config(cfg)
  if m.family != "deit" or m.video_frames != 1 or m.num_classes != 0:
    raise ValueError(f"config.model: the alignment task embeds single frames with family "
                     f"'deit', video_frames=pose_frames=1, num_classes=0; got family="
                     f"{m.family!r}, video_frames={m.video_frames}, num_classes={m.num_classes}")
  return factory.create_model(m)


def model_inputs(frames, pose, pose_mask, image_size: int) -> dict:
  """Frames `(n, S, S, 3)` uint8, pose `(n, J, 2)` pixels, mask `(n, J)` -> the family's batch
  (models/pose_aware.py convention): n one-frame clips, pose in [0, 1) of the frame."""
  return {"frames": frames[:, None], "pose": pose[:, None] / np.float32(image_size),
          "pose_mask": pose_mask[:, None]}


def prepare_data(config: ml_collections.ConfigDict) -> str:
  """The builder directory: the synthetic world is rendered into records on first use."""
  syn = config.get("synthetic_world")
  if syn and syn.get("enabled", False):
    # The TFDS builders are imported only when the world is rendered (TFDS is slow to import).
    from data_prep.datasets import multiview  # pylint: disable=g-import-not-at-top
    kw = {k: syn[k] for k in ("num_train", "num_test", "num_views", "num_links", "num_frames",
                              "image_size", "seed", "background")}
    config.data.builder_dir = multiview.build_synthetic(str(Path(syn.data_dir).expanduser()),
                                                        **kw)
  if not config.data.get("builder_dir"):
    raise ValueError("config.data.builder_dir is empty: build multi-view records with "
                     "data_prep.datasets.multiview or enable config.synthetic_world")
  return config.data.builder_dir


def _flat(batch: dict, n: int, image_size: int) -> dict:
  flat = [batch[k].reshape((n,) + batch[k].shape[3:]) for k in MODEL_KEYS]
  return model_inputs(*flat, image_size)


def make_loss(model, config: ml_collections.ConfigDict):
  """(params, frozen, batch, rngs) -> (loss, metrics): TCN loss + weighted aux losses
  (`steps.make_loss_step` makes the train step of it)."""
  a = config.alignment
  aux = {k: v for k, v in dict(config.get("aux_losses", {}) or {}).items() if v}

  def loss_fn(params, frozen, batch, rngs):
    del frozen  # a DeiT trained from scratch: every param trains
    b, v, k = batch["frames"].shape[:3]
    inputs = _flat(batch, b * v * k, model.config.arch.image_size)
    emb, out = model.apply({"params": params}, inputs, train=True, rngs=rngs)
    z = emb.reshape(b, v, k, -1)
    loss, metrics = tcn.time_contrastive_loss(
        z, batch["times"], window=a.window, kind=a.loss, margin=a.margin,
        temperature=a.temperature, normalize=a.normalize)
    for name, weight in aux.items():
      term = losses.get_aux_loss(name)(out, batch)
      metrics[f"aux_{name}"] = term
      loss = loss + weight * term
    return loss, metrics

  return loss_fn


def build(config: ml_collections.ConfigDict, mesh, *, train: bool = True, total_steps: int = 1,
          steps_per_epoch: int = 1) -> step_builder.Built:
  """The task's jitted steps for `config` on `mesh`, as shapes and shardings (no arrays):
  what `step_builder.build` is to classification (the trainer and the planner call it).

  train step: (state, {}, batch) -> (state, metrics), batch as alignment_data.sample_batch's;
  eval step: (params, {}, frames) -> float32 embeddings (E, D), replicated: the evaluation
  reads them on every host, and an array sharded across processes cannot be fetched.
  """
  config = copy.deepcopy(config)
  a = config.alignment
  partitioning.check_batch_divisible(config.data.train_batch_size, mesh,
                                     "config.data.train_batch_size")
  partitioning.check_batch_divisible(a.eval_batch_size, mesh, "config.alignment.eval_batch_size")
  if train:
    step_builder.check_micro_batches(config, mesh)
  model = create_model(config.model)
  mc = model.config
  params = factory.param_shapes(model)
  param_sh = partitioning.tree_shardings(params, mesh, config.mesh)
  accum = max(1, config.optim.grad_accum_steps)
  schedule = optim.make_schedule(config.optim, max(1, total_steps // accum),
                                 max(1, steps_per_epoch // accum))
  tx = optim.make_optimizer(config.optim, schedule)
  state = jax.eval_shape(lambda p: steps.init_state(p, tx, config.seed), params)
  state_sh = partitioning.tree_shardings(state, mesh, config.mesh)
  state_sh["params"] = param_sh
  batch_sh = partitioning.batch_sharding(mesh)
  repl = partitioning.replicated(mesh)
  train_step = None
  if train:  # metrics replicated: every host fetches them at log steps
    train_step = jax.jit(steps.make_loss_step(make_loss(model, config), tx, config, schedule,
                                              batch_sh),
                         in_shardings=(state_sh, {}, batch_sh), out_shardings=(state_sh, repl),
                         donate_argnums=(0,))
  s, j = mc.arch.image_size, mc.num_joints

  def embed(p, frozen, b):  # frames (E, S, S, 3), pose in pixels -> the family's batch
    del frozen  # none: every param trains
    inputs = model_inputs(b["frames"], b["pose"], b["pose_mask"], s)
    return model.apply({"params": p}, inputs, train=False)[0].astype(jnp.float32)

  eval_step = jax.jit(embed, in_shardings=(param_sh, {}, batch_sh), out_shardings=repl)

  def spec(shapes: dict) -> dict:
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sh)
            for k, (shape, dtype) in shapes.items()}
  b, k, e = config.data.train_batch_size, a.frames_per_sample, a.eval_batch_size
  train_batch = spec({"frames": ((b, 2, k, s, s, 3), jnp.uint8),
                      "pose": ((b, 2, k, j, 2), jnp.float32),
                      "pose_mask": ((b, 2, k, j), jnp.float32), "times": ((b, k), jnp.int32)})
  eval_batch = spec({"frames": ((e, s, s, 3), jnp.uint8), "pose": ((e, j, 2), jnp.float32),
                     "pose_mask": ((e, j), jnp.float32)})
  return step_builder.Built(
      config=config, choice=accelerators.choose(list(mesh.devices.flat)), model=model, tx=tx,
      schedule=schedule, train_step=train_step, eval_step=eval_step, param_shardings=param_sh,
      trainable_shardings=param_sh, frozen_shardings={}, state_shardings=state_sh,
      batch_sharding=batch_sh, abstract_params=step_builder.with_shardings(params, param_sh),
      abstract_state=step_builder.with_shardings(state, state_sh), abstract_frozen={},
      train_batch=train_batch, eval_batch=eval_batch)


def embed_episodes(embed_fn, params, episodes, batch_size: int, sharding) -> list[np.ndarray]:
  """Every frame of every episode -> list of (V, T, D) embeddings (eval mode).

  `embed_fn` must return arrays every host can read whole (`build`'s eval step: replicated).
  """
  out = []
  for ep in episodes:
    v, t = ep.num_views, ep.num_frames
    inputs = {"frames": ep.frames.reshape((v * t,) + ep.frames.shape[2:]),  # uint8
              "pose": ep.pose.reshape(v * t, -1, 2), "pose_mask": ep.pose_mask.reshape(v * t, -1)}
    embs = []
    for s in range(0, v * t, batch_size):
      chunk = {k: x[s:s + batch_size] for k, x in inputs.items()}
      n = len(chunk["frames"])
      chunk = {k: np.concatenate([x, np.repeat(x[-1:], batch_size - n, 0)]) for k, x in
               chunk.items()}
      embs.append(np.asarray(embed_fn(params, data.whole_to_global(chunk, sharding)))[:n])
    out.append(np.concatenate(embs).reshape(v, t, -1))
  return out


def mean_error(embeddings: list[np.ndarray]) -> float:
  return float(np.mean([tcn.episode_alignment_error(z) for z in embeddings]))


def baseline_errors(episodes, seed: int) -> dict[str, float]:
  """Reference points on the same episodes: i.i.d. random vectors and raw pixels."""
  rng = np.random.default_rng(seed)
  rand = [rng.normal(size=(e.num_views, e.num_frames, 64)) for e in episodes]
  pix = [alignment_data.normalize(e.frames).reshape(e.num_views, e.num_frames, -1)
         for e in episodes]
  return {"random_vectors": mean_error(rand), "raw_pixels": mean_error(pix)}


def write_alignment_png(path: str | os.PathLike, episode, z: np.ndarray, columns: int = 8):
  """Top row: frames t of view 0; bottom row: their nearest neighbours in view 1."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  nn_idx = tcn.nearest_neighbours(z[0], z[1])
  ts = np.linspace(0, episode.num_frames - 1, columns).round().astype(int)
  s = episode.frames.shape[2]
  scale = max(1, 128 // s)
  cell = s * scale
  img = Image.new("RGB", (columns * cell, 2 * cell + 28), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  for c, t in enumerate(ts):
    for r, (view, frame) in enumerate(((0, t), (1, nn_idx[t]))):
      tile = Image.fromarray(episode.frames[view, frame]).resize((cell, cell), Image.NEAREST)
      img.paste(tile, (c * cell, r * (cell + 14) + 14))
      draw.text((c * cell + 2, r * (cell + 14)), f"v{view} t={frame}", fill=(0, 0, 0))
  path = paths.as_path(path)  # may be a bucket: the bytes go through epath
  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  path.write_bytes(buf.getvalue())
  return path


def setup_experiment(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                     train: bool) -> tasks.Experiment:
  """The alignment task's Experiment (pgvt_jax/tasks.py); the given config is not modified."""
  config = copy.deepcopy(config)  # derived fields (the records' directory) go into the copy
  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  writer = metric_writer.MetricWriter(workdir)  # config.json: workdir.record_config
  builder_dir = prepare_data(config)
  mesh = partitioning.make_mesh(config.mesh)
  a = config.alignment
  total, steps_per_epoch = config.total_steps, max(1, config.steps_per_epoch)
  built, train_step, fit = tasks.build_steps(config, mesh, train=train, total_steps=total,
                                             steps_per_epoch=steps_per_epoch, build=build)
  model, mc = built.model, built.model.config
  params = jax.jit(lambda: factory.init_params(model, jax.random.PRNGKey(config.seed)),
                   out_shardings=built.param_shardings)()
  state = jax.jit(lambda p: steps.init_state(p, built.tx, config.seed),
                  out_shardings=built.state_shardings)(params)

  load = lambda split: alignment_data.load_episodes(builder_dir, split, mc.arch.image_size,
                                                    mc.num_joints)
  eval_eps = load(config.data.eval_split)
  train_iter = None
  if train:
    train_eps = load(config.data.train_split)
    train_iter = tasks.StepBatches(lambda step: alignment_data.sample_batch(
        train_eps, seed=config.seed, step=step, batch_size=config.data.train_batch_size,
        frames_per_sample=a.frames_per_sample))
    logging.info("Alignment: %d train / %d eval episodes from %s", len(train_eps),
                 len(eval_eps), builder_dir)

  embed = lambda p, b: built.eval_step(p, {}, b)

  def evaluate(p, frozen, *, save_dir=None) -> dict:
    del frozen  # none
    embs = embed_episodes(embed, p, eval_eps, a.eval_batch_size, built.batch_sharding)
    err = mean_error(embs)
    if save_dir is not None and jax.process_index() == 0:  # every host holds the same embeddings
      logging.info("Wrote %s", write_alignment_png(save_dir / "alignment_pairs.png",
                                                   eval_eps[0], embs[0]))
    return {"eval/alignment_error": err, "eval/neg_alignment_error": -err}

  def references(p, frozen) -> dict:
    """The same architecture before training, and non-learned references."""
    refs = {f"eval/alignment_error_{k}": v for k, v in baseline_errors(eval_eps,
                                                                      config.seed).items()}
    refs["eval/alignment_error_untrained"] = evaluate(p, frozen)["eval/alignment_error"]
    logging.info("reference alignment errors: %s", refs)
    return refs

  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                    best_metric="eval/alignment_error", best_mode="min",
                                    async_save=config.async_checkpoints)
  meta = {"task": "alignment", "backbone": None, "backbone_sha256": None,
          "steps_per_epoch": steps_per_epoch, "total_steps": total, "fit": fit}
  return tasks.Experiment(
      config=config, workdir=workdir, mesh=mesh, batch_sharding=built.batch_sharding,
      writer=writer, checkpointer=ckpt, model=model, train_iter=train_iter, frozen={},
      state=state, train_step=train_step, total_steps=total, meta=meta,
      evaluators={"alignment": evaluate}, references=references,
      put_batch=data.whole_to_global, result_with_step=True)


def trainer_config() -> ml_collections.ConfigDict:
  """The fields configs/alignment.py fills (see there for the recipe and its sources)."""
  c = ml_collections.ConfigDict()
  c.task = "alignment"
  c.seed = 0
  c.total_steps = 1000
  c.steps_per_epoch = 100        # only scales optim.warmup_epochs
  c.log_every = 50
  c.eval_every = 0
  c.checkpoint_every = 500
  c.keep_checkpoints = 1
  c.restore_step = 0             # > 0: resume from this kept step (later checkpoints are deleted)
  c.allow_config_changes = False  # resume although training fields changed (named on resume)
  c.async_checkpoints = True
  c.aux_losses = ml_collections.ConfigDict()
  c.optim = optim.get_config()
  c.mesh = partitioning.get_config()
  # The "deit" family (models/deit_model.py) on one frame, no head: a frame embedder.
  c.model = model_config_lib.model_config(
      family="deit", variant="video_only", backbone="S/16", image_size=224, video_frames=1,
      pose_frames=1, num_classes=0, joints_per_person=4, drop_path=0.0, dropout=0.0)
  c.alignment = ml_collections.ConfigDict(dict(
      loss="triplet", margin=1.0, temperature=0.1, window=2, normalize=False,
      frames_per_sample=8, eval_batch_size=64))
  c.data = ml_collections.ConfigDict(dict(builder_dir="", train_split="train",
                                          eval_split="test", train_batch_size=4,
                                          device_prefetch=2))  # batches staged on device
  c.synthetic_world = ml_collections.ConfigDict(dict(
      enabled=False, data_dir="~/.cache/pgvt_jax/multiview", num_train=24, num_test=8,
      num_views=3, num_links=3, num_frames=40, image_size=64, seed=0,
      background="shared"))
  return c
