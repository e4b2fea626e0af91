"""The one training and evaluation loop, for every task. Reads top to bottom: checks and lock,
setup (the task's Experiment), resume or start, loop (prefetch, step, log, save, SIGTERM,
evals), summary.

`train_and_evaluate(config, workdir)` trains (resuming from the workdir's latest checkpoint if
there is one), evaluates every `eval_every` steps and at the end, and returns the final eval
metrics. `evaluate(config, workdir)` evaluates the best (else latest) checkpoint. What a task
supplies (its state and train step, its batches, its evaluators, its best metric) is a
`tasks.Experiment`, built by `setup_experiment` below (classification in experiment.py,
multi-view alignment in alignment.py): the one place that reads `config.task`; the loop does
not.

Reliability (docs/reliability.md): the config is validated and the workdir locked before
anything compiles; a resume names every changed config field; a non-finite state is never
saved; SIGTERM saves and the CLI then exits with PREEMPTED_EXIT_CODE (143). The next batches
are read and put on device by a background thread during the step (config.data.device_prefetch).
"""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm

from pgvt_jax import (alignment, checkpointing, data, experiment, metric_writer, paths,
                      retrieval, tasks)
from pgvt_jax import workdir as workdir_lib
from pgvt_jax.models import factory
from pgvt_jax.tasks import Experiment

_PREEMPTED = False
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped by the scheduler, resumable"


def _on_sigterm(signum, frame):  # pylint: disable=unused-argument
  global _PREEMPTED
  _PREEMPTED = True
  logging.warning("SIGTERM received: saving a checkpoint and stopping after this step")


def is_preemption_sync_point(step: int, cfg: ml_collections.ConfigDict, last: bool) -> bool:
  """Whether the hosts agree on preemption after `step`: at log and checkpoint steps and the
  last one. A log step has just fetched the metrics (the device queue is drained), so the
  small allgather there costs no overlap; doing it every step would block dispatch on every
  step. The price: on several hosts a SIGTERM is acted on up to log_every steps late."""
  return last or step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0


def _any_host(flag: bool, step: int, cfg: ml_collections.ConfigDict, last: bool) -> bool:
  """Whether any host was sent SIGTERM, as every host sees it (they then save and stop together).

  One process reads its own flag every step at no cost. Several processes must all take the
  same decision at the same step (the save is collective), so they only compare flags at
  sync points, the same steps on every host since they depend on the step number only.
  """
  if jax.process_count() == 1:
    return flag
  if not is_preemption_sync_point(step, cfg, last):
    return False
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def setup_experiment(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                     train: bool) -> Experiment:
  """The config's task builds its Experiment (pgvt_jax/tasks.py); the config is not modified.
  A classification run with config.eval_retrieval.query set is also scored by R@k retrieval
  (an evaluator like its accuracy)."""
  if tasks.task_name(config) == "alignment":
    return alignment.setup_experiment(config, workdir, train=train)
  exp = experiment.setup_experiment(config, workdir, train=train)
  if config.get("eval_retrieval") and config.eval_retrieval.query:
    exp.evaluators["retrieval"] = retrieval.make_evaluator(exp.config, exp.model, exp.mesh)
  return exp


def _diverged(what: str, ckpt: checkpointing.Checkpointer) -> FloatingPointError:
  """The error for a run that went NaN/inf, with advice that works (tested)."""
  ckpt.wait()
  kept = ckpt.all_steps()
  if not kept:
    where = ("No checkpoint was kept before it (none is ever saved with NaN/inf): lower "
             "--config.optim.lr or enable --config.optim.grad_clip_norm and start again.")
  else:
    where = (f"Nothing non-finite was saved; kept checkpoints: steps {kept}. To resume from "
             f"step {kept[-1]}, rerun with a lower --config.optim.lr and/or "
             "--config.optim.grad_clip_norm=1.0, plus --config.allow_config_changes=True. To go "
             "back further add --config.restore_step=<a kept step> (later checkpoints are then "
             "deleted).")
  return FloatingPointError(f"{what}; stopping. {where}")


def _flush(pending: list, writer: metric_writer.MetricWriter, t_last: float,
           clips_per_step: int, ckpt: checkpointing.Checkpointer) -> dict:
  """Fetches the pending step metrics, stops on a non-finite loss, writes their mean."""
  if not pending:
    return {}
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), m in zip(pending, fetched):
    if not np.isfinite(m["loss"]):
      raise _diverged(f"non-finite training loss ({m['loss']}) at step {step}", ckpt)
  last_step = pending[-1][0]
  seconds = max(time.time() - t_last, 1e-9)
  means = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
  means["train/lr"] = float(fetched[-1]["lr"])
  means["train/step_time_s"] = seconds / len(pending)
  means["train/clips_per_s"] = clips_per_step * len(pending) / seconds
  writer.write(last_step, means)
  pending.clear()
  return means


def _with_position(exp: Experiment, consumed) -> dict:
  """The checkpoint's meta with the data position in global batches (any process count)."""
  return {**exp.meta, "data_position": {
      "global_batches": data.position(consumed.state()),
      "global_batch_size": exp.config.data.train_batch_size,
      "process_count": jax.process_count()}}


def _resume_data_position(ckpt: checkpointing.Checkpointer, train_iter, meta: dict,
                          step: int, batch_size: int) -> None:
  """Seeks the train iterator to the checkpoint's global position when grain's per-process
  state did not fit this run (another process count). Checkpoints from before positions were
  recorded read one global batch per step."""
  if ckpt.data_restored or train_iter is None:
    return
  saved = meta.get("data_position") or {}
  pos = int(saved.get("global_batches", step))
  data.seek(train_iter, pos)
  if isinstance(train_iter, tasks.StepBatches):  # no state is saved for it: the step is all
    return
  logging.warning("Data position: global batch %d (saved by %s process(es), resumed on %d): "
                  "the batches that follow are those an uninterrupted run reads next.", pos,
                  saved.get("process_count", "?"), jax.process_count())
  if saved.get("global_batch_size", batch_size) != batch_size:  # an allowed config change
    logging.warning("The global batch size changed (%s -> %d): the position counts batches, "
                    "so the run goes on at batch %d of the new size.",
                    saved["global_batch_size"], batch_size, pos)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       run_evals: bool = True) -> dict:
  """Trains to config.total_steps (or num_epochs); evaluates along the way unless run_evals=False."""
  workdir = paths.as_path(workdir)  # absolute for the whole run; gs:// kept whole
  tasks.task_name(config)  # an unknown task is refused before anything is written
  workdir_lib.validate_config(config, train=True)
  lock = workdir_lib.WorkdirLock(workdir, "train").acquire() if jax.process_index() == 0 else None
  try:
    return _train_locked(config, workdir, run_evals)
  finally:
    if lock is not None:
      lock.release()


def _train_locked(config: ml_collections.ConfigDict, workdir: epath.Path,
                  run_evals: bool) -> dict:
  # The saved config is the one given, before setup fills in derived fields.
  flat = workdir_lib.flat_config(config)
  latest = checkpointing.read_latest_meta(workdir)
  changed = (workdir_lib.check_resume(config, latest[1], latest[0], workdir,
                                      derive=factory.configure_data) if latest else [])
  exp = setup_experiment(config, workdir, train=True)
  cfg, writer, ckpt = exp.config, exp.writer, exp.checkpointer
  exp.meta.update(config=flat, config_sha256=workdir_lib.fingerprint(flat))

  # ---------------------------------------------------------------- resume or start
  state, train_iter = exp.state, exp.train_iter
  # A grain iterator's state goes into every checkpoint; StepBatches' position is the step.
  saved_iter = None if isinstance(train_iter, tasks.StepBatches) else train_iter
  restore_step = cfg.get("restore_step", 0) or None
  ckpt.check_not_emptied()  # quarantined steps only: stop, never silently restart at 0
  meta: dict = {}
  if ckpt.latest_step() is not None:
    restored, meta = ckpt.restore(checkpointing.abstract_like(state), saved_iter,
                                  step=restore_step)
    exp.check_backbone(meta)
    state = restored
    resumed_at = int(jax.device_get(state["step"]))
    _resume_data_position(ckpt, train_iter, meta, resumed_at, cfg.data.train_batch_size)
    logging.info("Resuming from step %d in %s", resumed_at, workdir)
  elif restore_step:
    raise FileNotFoundError(f"config.restore_step={restore_step} but {workdir} holds no "
                            "checkpoint")
  start = int(jax.device_get(state["step"]))
  if restore_step:
    dropped = ckpt.drop_after(start)
    if dropped:
      logging.warning("restore_step=%d: deleted the later checkpoints %s", start, dropped)
  if writer.drop_after(start):  # steps after the checkpoint are redone: no duplicate rows
    logging.info("metrics.jsonl: dropped the rows after step %d (redone now)", start)
  if jax.process_index() == 0:
    # config.json holds the derived fields too (records dir, pixel statistics): predict,
    # retrieval and init_from rebuild the run from it.
    workdir_lib.record_config(workdir, cfg, mode="train", start_step=start, changed=changed,
                              fit=exp.meta.get("fit"))
  total = exp.total_steps
  if start >= total:
    logging.info("Already trained %d/%d steps; evaluating.", start, total)
  # The task's reference figures, measured before training (alignment: chance, untrained
  # network) and carried in the checkpoints' meta to the summary of a resumed run.
  refs: dict = dict(meta.get("references") or {})
  if run_evals and start == 0 and exp.references is not None:
    refs = exp.references(state["params"], exp.frozen)
    writer.write(0, refs)
  if refs:
    exp.meta["references"] = refs

  # ---------------------------------------------------------------- loop
  # Reads and stages the next batches on device while the step runs; checkpoints save the
  # iterator position of the batches consumed, not of those staged ahead (data/prefetch.py).
  batches = data.DevicePrefetcher(train_iter, exp.batch_sharding,
                                  depth=cfg.data.get("device_prefetch", 0), limit=total - start,
                                  put=exp.put_batch)
  previous = signal.signal(signal.SIGTERM, _on_sigterm)
  pending: list = []
  last_metrics: dict = {}
  t_last = time.time()
  bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
             disable=jax.process_index() != 0)
  step = start
  try:
    while step < total:
      batch = next(batches)
      state, metrics = exp.train_step(state, exp.frozen, batch)
      step += 1
      pending.append((step, metrics))
      bar.update(1)
      last = step == total
      if step % cfg.log_every == 0 or last:
        m = _flush(pending, writer, t_last, cfg.data.train_batch_size, ckpt)
        t_last = time.time()
        bar.set_postfix(loss=f"{m['train/loss']:.4f}", lr=f"{m['train/lr']:.2e}")
      ckpt.seal_if_idle()
      preempted = _any_host(_PREEMPTED, step, cfg, last)
      if step % cfg.checkpoint_every == 0 or last or preempted:
        if pending:  # never save a state whose loss went NaN
          _flush(pending, writer, t_last, cfg.data.train_batch_size, ckpt)
          t_last = time.time()
        if not checkpointing.all_finite(state):  # the update itself overflowed
          raise _diverged(f"the parameters/optimizer state became non-finite at step {step} "
                          "(the loss before the update was finite)", ckpt)
        consumed = batches.consumed_state()
        ckpt.save(step, state, consumed if saved_iter is not None else None,
                  _with_position(exp, consumed), force=True)
      if preempted:
        logging.warning("Preempted at step %d: checkpoint saved, exiting.", step)
        ckpt.wait()
        return {"preempted_at_step": step}
      if run_evals and ((cfg.eval_every and step % cfg.eval_every == 0) or last):
        last_metrics = exp.evaluate(state["params"], save_dir=workdir if last else None)
        writer.write(step, last_metrics)
        ckpt.save_best(step, state, exp.meta, last_metrics)
        logging.info("step %d: %s", step, {k: round(v, 4) for k, v in last_metrics.items()})
    if run_evals and not last_metrics:  # resumed after the end: evaluate the checkpoint
      last_metrics = exp.evaluate(state["params"], save_dir=workdir)
  finally:
    batches.close()
    bar.close()
    signal.signal(signal.SIGTERM, previous)
    ckpt.close()
    writer.flush()
  if jax.process_index() == 0:
    curves = metric_writer.plot_curves(workdir)
    logging.info("Wrote %s", curves)
  summary = {"step": step, **refs, **last_metrics}   # the FINAL checkpoint's figures
  if run_evals:
    summary.update(_best_and_final(exp, state, step))
  writer.write_json("final_metrics.json", summary)
  writer.close()
  if exp.result_with_step:
    return {"step": step, **refs, **last_metrics}
  return last_metrics


def best_eval(workdir: str | os.PathLike, metric: str, mode: str = "max") -> dict | None:
  """{"step": s, metric: v, ...} of the best eval in metrics.jsonl (what best/ holds);
  mode "max": the highest `metric` (accuracy), "min": the lowest (an error)."""
  path = paths.as_path(workdir) / metric_writer.METRICS_FILE
  if not path.exists():
    return None
  better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
  best = None
  for line in path.read_text().splitlines():
    rec = json.loads(line)
    if rec.get(metric) is not None and (best is None or better(rec[metric], best[metric])):
      best = rec
  return best


def _best_and_final(exp: Experiment, state, step: int) -> dict:
  """The best/ checkpoint's eval figures, and the final evaluators on both checkpoints
  (classification: config.data.test_split).

  `best/` is picked on the eval split: when that is the test split (Diving48 has no other),
  its figure is optimistic, so the final checkpoint's figures are the ones to report; with a
  validation split carved from train (config.data.train_split="train[:90%]",
  eval_split="train[90%:]") set test_split to measure both on held-out data.
  """
  metric, mode = exp.checkpointer.best_metric, exp.checkpointer.best_mode
  out = {}
  best = best_eval(exp.workdir, metric, mode)
  if best is not None:
    out["best"] = {k: v for k, v in best.items() if k == "step" or k.startswith("eval/")}
  if not exp.final_evaluators:
    return out

  def run_final(params, save_dir=None) -> dict:
    metrics = {}
    for fn in exp.final_evaluators.values():
      metrics.update(fn(params, exp.frozen, save_dir=save_dir))
    return metrics

  out.update(run_final(state["params"], save_dir=exp.workdir))
  if best is not None and best["step"] != step:
    ckpt = checkpointing.Checkpointer(exp.workdir, best_metric=metric, best_mode=mode,
                                      async_save=False)
    best_state, _, _ = ckpt.restore_best(checkpointing.abstract_like(state))
    ckpt.close()
    best_params = best_state["params"]
  else:
    best_params = state["params"]
  out["best"] = {**out.get("best", {}), **run_final(best_params)}
  return out


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the best checkpoint of `workdir` (else its latest)."""
  workdir = paths.as_path(workdir)  # absolute for the whole run; gs:// kept whole
  tasks.task_name(config)
  workdir_lib.validate_config(config, train=False)
  if not checkpointing.has_checkpoint(workdir):  # before anything is created or written
    raise FileNotFoundError(f"no checkpoint in {workdir} to evaluate (expected "
                            f"{workdir}/best/<step> or {workdir}/checkpoints/<step>); nothing "
                            "was written")
  lock = workdir_lib.WorkdirLock(workdir, "evaluate").acquire() if (
      jax.process_index() == 0) else None
  try:
    return _evaluate_locked(config, workdir)
  finally:
    if lock is not None:
      lock.release()


def _evaluate_locked(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
  exp = setup_experiment(config, workdir, train=False)
  abstract = checkpointing.abstract_like(exp.state)
  try:
    state, meta, step = exp.checkpointer.restore_best(abstract)
  except (FileNotFoundError, checkpointing.CheckpointIntegrityError):
    if exp.checkpointer.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {workdir} to evaluate") from None
    state, meta = exp.checkpointer.restore(abstract, None)
    step = int(state["step"])
  exp.check_backbone(meta)
  if jax.process_index() == 0:
    workdir_lib.record_config(workdir, exp.config, mode="evaluate", start_step=step,
                              changed=[])
  metrics = exp.evaluate(state["params"], save_dir=workdir)
  exp.writer.write(step, metrics)
  exp.writer.write_json("eval_metrics.json", {"step": step, **metrics})
  exp.checkpointer.close()
  return {"step": step, **metrics} if exp.result_with_step else metrics
