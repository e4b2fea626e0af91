"""Training and evaluation loop. Reads top to bottom: mesh, input, model & optimizer, shard &
transfer, steps, checkpoint, loop, evals.

`train_and_evaluate(config, workdir)` trains (resuming from the workdir's latest checkpoint if
there is one), evaluates every `eval_every` steps and at the end, and returns the final eval
metrics. `evaluate(config, workdir)` evaluates the best (else latest) checkpoint.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from pgvt_jax import checkpointing, data, evaluation, metric_writer
from pgvt_jax.experiment import Experiment, setup_experiment

_PREEMPTED = False


def _on_sigterm(signum, frame):  # pylint: disable=unused-argument
  global _PREEMPTED
  _PREEMPTED = True
  logging.warning("SIGTERM received: saving a checkpoint and stopping after this step")


def _any_host(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def run_eval(exp: Experiment, params, frozen, *, tag: str = "eval",
             save_dir: Path | None = None) -> dict:
  """One pass over the eval split: views combined per video (config.eval_combine: mean or max),
  then top-1/5 and class accuracy."""
  cfg = exp.config
  it, info = data.make_eval_iterator(cfg.data, exp.eval_source)
  acc = evaluation.ViewAccumulator(info.num_videos, cfg.model.num_classes,
                                   combine=cfg.get("eval_combine", "mean"))
  for host_batch in it:
    batch = data.to_global(dict(host_batch), exp.batch_sharding)
    probs, label, vid, valid = jax.device_get(exp.eval_step(params, frozen, batch))
    acc.add(probs, label, vid, valid)
  result = acc.result(expected_views=info.num_views)
  metrics = {f"{tag}/top1": result["top1"], f"{tag}/top5": result["top5"],
             f"{tag}/mean_class_accuracy": result["mean_class_accuracy"]}
  if save_dir is not None and jax.process_index() == 0:
    evaluation.save_confusion(result["confusion_matrix"], save_dir / f"{tag}_confusion",
                              exp.eval_source.class_names)
    names = exp.eval_source.class_names or [str(i) for i in range(cfg.model.num_classes)]
    per_class = {n: (None if np.isnan(a) else float(a))
                 for n, a in zip(names, result["per_class_accuracy"])}
    exp.writer.write_json(f"{tag}_per_class_accuracy.json", per_class)
  return metrics


def _flush(pending: list, writer: metric_writer.MetricWriter, t_last: float,
           clips_per_step: int) -> dict:
  """Fetches the pending step metrics, stops on a non-finite loss, writes their mean."""
  if not pending:
    return {}
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), m in zip(pending, fetched):
    if not np.isfinite(m["loss"]):
      raise FloatingPointError(
          f"non-finite training loss ({m['loss']}) at step {step}; stopping. The last "
          "checkpoint (saved before this step) is intact: lower config.optim.lr or enable "
          "config.optim.grad_clip_norm and rerun to resume from it.")
  last_step = pending[-1][0]
  seconds = max(time.time() - t_last, 1e-9)
  means = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
  means["train/lr"] = float(fetched[-1]["lr"])
  means["train/step_time_s"] = seconds / len(pending)
  means["train/clips_per_s"] = clips_per_step * len(pending) / seconds
  writer.write(last_step, means)
  pending.clear()
  return means


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       run_evals: bool = True) -> dict:
  """Trains to config.total_steps (or num_epochs); evaluates along the way unless run_evals=False."""
  if config.get("task", "classification") == "alignment":  # multi-view video alignment
    from pgvt_jax import alignment  # pylint: disable=g-import-not-at-top
    return alignment.train_and_evaluate(config, workdir, run_evals=run_evals)
  workdir = Path(workdir)
  exp = setup_experiment(config, workdir, train=True)
  cfg, writer, ckpt = exp.config, exp.writer, exp.checkpointer

  # ---------------------------------------------------------------- resume or start
  state, train_iter = exp.state, exp.train_iter
  if ckpt.latest_step() is not None:
    restored, meta = ckpt.restore(checkpointing.abstract_like(state), train_iter)
    exp.check_backbone(meta)
    state = restored
    logging.info("Resuming from step %d in %s", int(state["step"]), workdir)
  start = int(jax.device_get(state["step"]))
  total = exp.total_steps
  if start >= total:
    logging.info("Already trained %d/%d steps; evaluating.", start, total)

  # ---------------------------------------------------------------- loop
  previous = signal.signal(signal.SIGTERM, _on_sigterm)
  pending: list = []
  last_metrics: dict = {}
  t_last = time.time()
  bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
             disable=jax.process_index() != 0)
  step = start
  try:
    while step < total:
      batch = data.to_global(dict(next(train_iter)), exp.batch_sharding)
      state, metrics = exp.train_step(state, exp.frozen, batch)
      step += 1
      pending.append((step, metrics))
      bar.update(1)
      last = step == total
      if step % cfg.log_every == 0 or last:
        m = _flush(pending, writer, t_last, cfg.data.train_batch_size)
        t_last = time.time()
        bar.set_postfix(loss=f"{m['train/loss']:.4f}", lr=f"{m['train/lr']:.2e}")
      preempted = _any_host(_PREEMPTED)
      if step % cfg.checkpoint_every == 0 or last or preempted:
        if pending:  # never save a state whose loss went NaN
          _flush(pending, writer, t_last, cfg.data.train_batch_size)
          t_last = time.time()
        ckpt.save(step, state, train_iter, exp.meta, force=True)
      if preempted:
        logging.warning("Preempted at step %d: checkpoint saved, exiting.", step)
        ckpt.wait()
        return {"preempted_at_step": step}
      if run_evals and ((cfg.eval_every and step % cfg.eval_every == 0) or last):
        last_metrics = run_eval(exp, state["params"], exp.frozen,
                                save_dir=workdir if last else None)
        writer.write(step, last_metrics)
        ckpt.save_best(step, state, exp.meta, last_metrics)
        logging.info("step %d: %s", step, {k: round(v, 4) for k, v in last_metrics.items()})
    if run_evals and not last_metrics:  # resumed after the end: evaluate the checkpoint
      last_metrics = run_eval(exp, state["params"], exp.frozen, save_dir=workdir)
  finally:
    bar.close()
    signal.signal(signal.SIGTERM, previous)
    ckpt.close()
    writer.flush()
  if jax.process_index() == 0:
    curves = metric_writer.plot_curves(workdir)
    logging.info("Wrote %s", curves)
  writer.write_json("final_metrics.json", {"step": step, **last_metrics})
  writer.close()
  return last_metrics


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the best checkpoint of `workdir` (else its latest)."""
  workdir = Path(workdir)
  exp = setup_experiment(config, workdir, train=False)
  abstract = checkpointing.abstract_like(exp.state)
  try:
    state, meta, step = exp.checkpointer.restore_best(abstract)
  except FileNotFoundError:
    if exp.checkpointer.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {workdir} to evaluate") from None
    state, meta = exp.checkpointer.restore(abstract, None)
    step = int(state["step"])
  exp.check_backbone(meta)
  metrics = run_eval(exp, state["params"], exp.frozen, save_dir=workdir)
  exp.writer.write(step, metrics)
  exp.writer.write_json("eval_metrics.json", {"step": step, **metrics})
  exp.checkpointer.close()
  return metrics
