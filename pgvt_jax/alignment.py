"""The multi-view video alignment task (PAAB/PAAT paper Sec. 4, Table 5): a DeiT trained from
scratch with a time-contrastive loss, PAAB/PAAT optional, scored by the alignment error on
held-out episodes. `train.train_and_evaluate` switches here when `config.task == "alignment"`.

It reuses the classification trainer's machinery: the mesh and shardings (partitioning), the
optimizer and schedule (optim), the train state, step RNGs (steps), aux losses (losses: PAAT),
orbax checkpoints (checkpointing) and the metric writer. What differs: batches are TCN samples
drawn from in-memory episodes as a pure function of (seed, step) (alignment_data), the loss is
tcn.time_contrastive_loss, and evaluation embeds every frame of every held-out episode.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from pgvt_jax import alignment_data, checkpointing, losses, metric_writer, optim, partitioning
from pgvt_jax import steps, tcn
from pgvt_jax.models import deit_model, factory
from pgvt_jax.models import config as model_config_lib

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


def make_train_step(model, tx, config, schedule):
  """(state, batch) -> (state, metrics): TCN loss + weighted aux losses, one jit."""
  a = config.alignment
  aux = {k: v for k, v in dict(config.get("aux_losses", {}) or {}).items() if v}

  def loss_fn(params, batch, rngs):
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

  def train_step(state, batch):
    rngs = steps.step_rngs(state["rng"], state["step"])
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], batch, rngs)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {**state, "step": state["step"] + 1, "opt_state": opt_state,
                 "params": optax.apply_updates(state["params"], updates)}
    return new_state, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
                       "lr": schedule(state["step"])}

  return train_step


def put_global(tree, sharding):
  """Numpy arrays that every host holds whole (batches drawn from (seed, step), eval chunks)
  -> global jax.Arrays: each host copies in only the rows of its own devices.

  `jax.device_put` would do the same on several hosts but first checks that every host passed
  the same value, a blocking cross-host allgather of the whole batch on every call.
  """
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def make_embed_fn(model, param_sh, batch_sh):
  """(params, batch) -> float32 embeddings, replicated: the evaluation reads them on every
  host, and an array sharded across processes cannot be fetched (np.asarray raises)."""
  return jax.jit(lambda p, b: model.apply({"params": p}, b, train=False)[0].astype(jnp.float32),
                 in_shardings=(param_sh, batch_sh),
                 out_shardings=partitioning.replicated(batch_sh.mesh))


def embed_episodes(embed_fn, params, episodes, batch_size: int, sharding) -> list[np.ndarray]:
  """Every frame of every episode -> list of (V, T, D) embeddings (eval mode).

  `embed_fn` must return arrays every host can read whole (make_embed_fn's are replicated).
  """
  out = []
  for ep in episodes:
    v, t = ep.num_views, ep.num_frames
    inputs = model_inputs(ep.frames.reshape((v * t,) + ep.frames.shape[2:]),  # uint8
                          ep.pose.reshape(v * t, -1, 2), ep.pose_mask.reshape(v * t, -1),
                          ep.frames.shape[2])
    embs = []
    for s in range(0, v * t, batch_size):
      chunk = {k: x[s:s + batch_size] for k, x in inputs.items()}
      n = len(chunk["frames"])
      chunk = {k: np.concatenate([x, np.repeat(x[-1:], batch_size - n, 0)]) for k, x in
               chunk.items()}
      embs.append(np.asarray(embed_fn(params, put_global(chunk, sharding)))[:n])
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


def write_alignment_png(path: Path, episode, z: np.ndarray, columns: int = 8) -> Path:
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
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path)
  return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       run_evals: bool = True) -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  writer = metric_writer.MetricWriter(workdir)
  builder_dir = prepare_data(config)
  writer.write_json("config.json", json.loads(config.to_json_best_effort()))
  mesh = partitioning.make_mesh(config.mesh)
  batch_sh = partitioning.batch_sharding(mesh)
  a = config.alignment
  partitioning.check_batch_divisible(config.data.train_batch_size, mesh,
                                     "config.data.train_batch_size")
  partitioning.check_batch_divisible(a.eval_batch_size, mesh, "config.alignment.eval_batch_size")

  model = create_model(config.model)
  mc = model.config
  size = mc.arch.image_size
  train_eps = alignment_data.load_episodes(builder_dir, config.data.train_split, size,
                                           mc.num_joints)
  eval_eps = alignment_data.load_episodes(builder_dir, config.data.eval_split, size,
                                          mc.num_joints)
  logging.info("Alignment: %d train / %d eval episodes from %s", len(train_eps), len(eval_eps),
               builder_dir)

  shapes = factory.param_shapes(model)
  param_sh = partitioning.tree_shardings(shapes, mesh, config.mesh)
  init = lambda seed: jax.jit(lambda: factory.init_params(model, jax.random.PRNGKey(seed)),
                              out_shardings=param_sh)()
  params = init(config.seed)
  total = config.total_steps
  schedule = optim.make_schedule(config.optim, total, max(1, config.steps_per_epoch))
  tx = optim.make_optimizer(config.optim, schedule)
  state_shapes = jax.eval_shape(lambda p: steps.init_state(p, tx, config.seed), params)
  state_sh = partitioning.tree_shardings(state_shapes, mesh, config.mesh)
  state_sh["params"] = param_sh
  state = jax.jit(lambda p: steps.init_state(p, tx, config.seed), out_shardings=state_sh)(params)
  # Metrics replicated: every host fetches them at log steps.
  train_step = jax.jit(make_train_step(model, tx, config, schedule),
                       in_shardings=(state_sh, batch_sh),
                       out_shardings=(state_sh, partitioning.replicated(mesh)),
                       donate_argnums=(0,))
  embed_fn = make_embed_fn(model, param_sh, batch_sh)

  def evaluate(p) -> tuple[dict, list]:
    embs = embed_episodes(embed_fn, p, eval_eps, a.eval_batch_size, batch_sh)
    err = mean_error(embs)
    return {"eval/alignment_error": err, "eval/neg_alignment_error": -err}, embs

  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                    best_metric="eval/neg_alignment_error",
                                    async_save=config.async_checkpoints)
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(checkpointing.abstract_like(state), None)
  step = int(jax.device_get(state["step"]))
  refs = {}
  if run_evals and step == 0:   # the same architecture before training, and non-learned refs
    refs = {f"eval/alignment_error_{k}": v for k, v in baseline_errors(eval_eps,
                                                                      config.seed).items()}
    refs["eval/alignment_error_untrained"] = evaluate(state["params"])[0]["eval/alignment_error"]
    writer.write(0, refs)
    logging.info("reference alignment errors: %s", refs)
  metrics, pending, t0 = {}, [], time.time()
  try:
    while step < total:
      batch = alignment_data.sample_batch(train_eps, seed=config.seed, step=step,
                                          batch_size=config.data.train_batch_size,
                                          frames_per_sample=a.frames_per_sample)
      state, m = train_step(state, put_global(batch, batch_sh))
      step += 1
      pending.append(m)
      last = step == total
      if step % config.log_every == 0 or last:
        fetched = jax.device_get(pending)
        if not all(np.isfinite(f["loss"]) for f in fetched):
          raise FloatingPointError(f"non-finite alignment loss by step {step}")
        means = {f"train/{k}": float(np.mean([f[k] for f in fetched])) for k in fetched[0]}
        means["train/step_time_s"] = (time.time() - t0) / len(pending)
        writer.write(step, means)
        logging.info("step %d: %s", step, {k: round(v, 4) for k, v in means.items()})
        pending, t0 = [], time.time()
      if step % config.checkpoint_every == 0 or last:
        ckpt.save(step, state, None, {"task": "alignment"}, force=True)
      if run_evals and ((config.eval_every and step % config.eval_every == 0) or last):
        metrics, embs = evaluate(state["params"])
        writer.write(step, metrics)
        ckpt.save_best(step, state, {"task": "alignment"}, metrics)
        logging.info("step %d: %s", step, metrics)
    if run_evals:
      if not metrics:
        metrics, embs = evaluate(state["params"])
      if jax.process_index() == 0:  # every host holds the same embeddings: one writes
        png = write_alignment_png(workdir / "alignment_pairs.png", eval_eps[0], embs[0])
        logging.info("Wrote %s", png)
  finally:
    ckpt.close()
    writer.flush()
  final = {"step": step, **refs, **metrics}
  writer.write_json("final_metrics.json", final)
  writer.close()
  return final


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the latest checkpoint of a finished run (`--mode=evaluate`)."""
  latest = checkpointing.read_latest_meta(workdir)
  step = latest[0] if latest else None
  if step is None or step < config.total_steps:
    raise FileNotFoundError(f"no finished alignment run in {workdir} (latest checkpoint: "
                            f"{step}, config.total_steps: {config.total_steps}); nothing was "
                            "written")
  return train_and_evaluate(config, workdir)


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
                                          eval_split="test", train_batch_size=4))
  c.synthetic_world = ml_collections.ConfigDict(dict(
      enabled=False, data_dir="~/.cache/pgvt_jax/multiview", num_train=24, num_test=8,
      num_views=3, num_links=3, num_frames=40, image_size=64, seed=0,
      background="shared"))
  return c
