"""The trainer's checkpoints in the workdir: train state + input position, saved together,
async, restored (resume) with integrity checks. Every other consumer reads through
pgvt_jax/checkpoint_reader.py (re-exported here).

    <workdir>/checkpoints/<step>/{state, data, meta}   latest `keep` steps (resume from here)
    <workdir>/best/<step>/{state, meta}                the best step by `best_metric`

`state` holds what training changes: trainable params, optimizer state, step, RNG. The frozen
backbone is not copied into every checkpoint; `meta` records where it came from and its
checksum, the config, and the data position. Orbax writes each step aside and renames it when
complete, so a run killed at any moment leaves only whole checkpoints behind.

Topology: `state` is restored into the shardings of the CURRENT mesh (orbax reshards), so a
run written by 2 processes x 4 devices resumes on 1 x 1, 1 x 8 or 2 x 4, and is read for
inference on one device. `data` is grain's per-process iterator state (`process_<i>-of-<n>.json`);
`meta["data_position"]` is the same position counted in GLOBAL batches, which does not depend on
the process count (global batch b is a pure function of (seed, b): pgvt_jax/data/pipeline.py).
A resume on the same process count restores grain's state; on another it seeks to the global
position (`Checkpointer.data_restored` says which happened).

Integrity (pgvt_jax/checkpoint_integrity.py): a step is moved to `<workdir>/corrupt_checkpoints/`
only when its checksums fail or its files are unreadable, and only by the trainer; every host
verifies and all agree before anything moves. A step whose bytes are intact but does not restore
(another model, a changed tree, a storage error) raises `CheckpointRestoreError` naming the cause
and touches nothing. Readers for inference never move anything: they skip a damaged step with a
warning.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from pgvt_jax.checkpoint_integrity import (CHECKSUMS_FILE, UNVERIFIED,  # noqa: F401
                                           CheckpointIntegrityError, CheckpointRestoreError,
                                           as_path, file_checksum, finished_steps,
                                           restore_cause, verify, write_checksums)

verify_checksums = verify  # the name the tests and older code use
CORRUPT_DIR = "corrupt_checkpoints"


def _any_host(flag: bool) -> bool:
  """Whether `flag` holds on any host; every host must call it at the same point."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def all_finite(tree: Any) -> bool:
  """Whether every float leaf of `tree` is finite (one small jitted reduction)."""
  leaves = [x for x in jax.tree.leaves(tree) if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)]
  if not leaves:
    return True
  return bool(_all_finite(leaves))


@jax.jit
def _all_finite(leaves):
  return jax.numpy.all(jax.numpy.stack([jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves]))


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each leaf's sharding, the target layout for a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


class Checkpointer:
  """The trainer's checkpoints: latest-N (state + data position) and best-by-metric (state)."""

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 2,
               best_metric: str = "eval/top1", best_mode: str = "max",
               async_save: bool = True):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode={best_mode!r}: expected 'max' or 'min'")
    self.workdir = as_path(workdir)
    self._unsealed: set = set()  # (manager, step) saved by this run, checksums not yet written
    self.best_metric = best_metric
    self.best_mode = best_mode   # "max": higher best_metric is better (accuracy); "min": error
    self.data_restored = False   # the last restore set grain's own state (same process count)
    self.latest = ocp.CheckpointManager(
        self.workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save,
                                             cleanup_tmp_directories=True))
    self.best = ocp.CheckpointManager(
        self.workdir / "best",
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=self._best_fn,
                                             best_mode=best_mode, create=True,
                                             keep_checkpoints_without_metrics=False,
                                             enable_async_checkpointing=async_save,
                                             cleanup_tmp_directories=True))

  def _best_fn(self, metrics: dict) -> float:
    return float(metrics[self.best_metric])

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.latest.all_steps())

  def _seal(self) -> None:
    """Checksums the steps this run saved, once complete (never steps found on disk: those
    may be damaged already)."""
    if jax.process_index() != 0:
      return
    for mgr, step in list(self._unsealed):
      step_dir = epath.Path(mgr.directory) / str(step)
      if mgr.is_saving_in_progress():
        continue
      if step_dir.is_dir():
        write_checksums(step_dir)
      self._unsealed.discard((mgr, step))

  def seal_if_idle(self) -> None:
    """Checksums a finished async save as soon as possible (called every step; cheap)."""
    if self._unsealed:
      self._seal()

  def save(self, step: int, state: Any, data_iter: Optional[Any],
           meta: dict, *, force: bool = False) -> bool:
    """Async save of state + iterator; returns whether a save was started.

    `data_iter`: a grain DatasetIterator, or a frozen state with `get_state()` (the training
    loop passes `DevicePrefetcher.consumed_state()`: the position of the batches consumed).
    `meta["data_position"]` should hold the same position in global batches.

    Refuses (FloatingPointError) a state with NaN/inf leaves: a kept checkpoint is always finite.
    """
    if not all_finite(state):
      raise FloatingPointError(f"refusing to save step {step}: the train state holds NaN/inf")
    self.latest.wait_until_finished()
    self._seal()
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    started = self.latest.save(step, args=ocp.args.Composite(**items), force=force)
    if started:
      self._unsealed.add((self.latest, step))
    return started

  def save_best(self, step: int, state: Any, meta: dict, metrics: dict) -> bool:
    if self.best_metric not in metrics or not all_finite(state):
      return False
    self.best.wait_until_finished()
    self._seal()
    started = self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                             metrics={k: float(v) for k, v in metrics.items()
                                      if isinstance(v, (int, float))})
    if started:
      self._unsealed.add((self.best, step))
    return started

  def _quarantine(self, mgr, step: int, why: str) -> None:
    """Moves one damaged step out of the manager's directory (kept for inspection). Every
    host calls it (they agreed on the verdict), so the barrier is entered by all."""
    src = epath.Path(mgr.directory) / str(step)
    if jax.process_index() == 0 and src.exists():
      dst = self.workdir / CORRUPT_DIR / f"{epath.Path(mgr.directory).name}-{step}-{int(time.time())}"
      dst.parent.mkdir(parents=True, exist_ok=True)
      src.rename(dst)
      (dst / "WHY.txt").write_text(why + "\n")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantined {mgr.directory} {step}")
    mgr.reload()

  def _restore_verified(self, mgr, args_fn: Callable[[int], Any], steps: list[int], what: str):
    """Tries `steps` newest first: damaged ones (checksums) are quarantined and skipped; an
    intact one that fails to restore stops with CheckpointRestoreError, moving nothing."""
    errors = []
    for step in sorted(steps, reverse=True):
      step_dir = epath.Path(mgr.directory) / str(step)
      why = verify(step_dir)
      if why == UNVERIFIED:  # written before checksums existed, or killed right after saving
        logging.warning("%s checkpoint at step %d has no %s: restoring it unverified", what,
                        step, CHECKSUMS_FILE)
      damaged = why not in (None, UNVERIFIED)
      if _any_host(damaged):  # all hosts move on together, or none does
        why = why if damaged else "damaged as seen from another host"
        logging.warning("%s checkpoint at step %d is damaged (%s); falling back to the "
                        "previous kept step. It is moved to %s.", what, step, why,
                        self.workdir / CORRUPT_DIR)
        errors.append(f"step {step}: {why}")
        self._quarantine(mgr, step, why)
        continue
      failure = None
      try:
        restored = mgr.restore(step, args=args_fn(step))
      except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore errors vary
        failure = e
      if _any_host(failure is not None):
        cause = restore_cause(failure) if failure is not None else "failed on another host"
        raise CheckpointRestoreError(
            f"{what} checkpoint {step_dir} is intact ({'checksums verified' if why is None else 'unverified'}) "
            f"but could not be restored: {cause}. Nothing was moved or deleted.") from failure
      return restored, step
    raise CheckpointIntegrityError(
        f"no usable {what} checkpoint in {mgr.directory}: " + "; ".join(errors) +
        f". The damaged steps are in {self.workdir / CORRUPT_DIR} (inspect them; a rerun "
        "refuses to start from scratch while they are the only steps of this workdir).")

  def check_not_emptied(self) -> None:
    """A workdir whose only steps were quarantined must not silently train from step 0."""
    if self.all_steps():
      return
    bad = sorted(p.name for p in (self.workdir / CORRUPT_DIR).iterdir()
                 if p.name.startswith("checkpoints-")) if (
                     self.workdir / CORRUPT_DIR).is_dir() else []
    if bad:
      raise CheckpointIntegrityError(
          f"{self.workdir}/checkpoints holds no step, but damaged steps of this run were moved "
          f"to {self.workdir / CORRUPT_DIR}: {bad}. Starting again from step 0 would lose the "
          "run: restore an intact copy of a step into checkpoints/, or move "
          f"{CORRUPT_DIR}/ away to really start from scratch.")

  def _has_grain_state(self, step: int) -> bool:
    pi, pc = jax.process_index(), jax.process_count()
    return (epath.Path(self.latest.directory) / str(step) / "data" /
            f"process_{pi}-of-{pc}.json").exists()

  def restore(self, abstract_state: Any, data_iter: Optional[grain.DatasetIterator],
              step: Optional[int] = None) -> tuple[Any, dict]:
    """Restores `state` (into `abstract_state`'s shapes/shardings) and the iterator in place.

    `step=None`: the newest step that passes its integrity check (older ones are fallbacks).
    An explicit `step` must be kept and intact; newer steps are left alone (see `drop_after`).
    The iterator gets grain's own state when this process count saved one; otherwise the
    caller seeks it to `meta["data_position"]` (`self.data_restored` is False).
    """
    self.wait()
    kept = self.all_steps()
    if step is not None and step not in kept:
      raise FileNotFoundError(f"restore_step={step} is not a kept checkpoint in "
                              f"{self.latest.directory}; kept steps: {kept}")
    with_data = {}

    def args(s):
      items = {"state": ocp.args.StandardRestore(abstract_state),
               "meta": ocp.args.JsonRestore()}
      with_data[s] = data_iter is not None and self._has_grain_state(s)
      if with_data[s]:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
      return ocp.args.Composite(**items)

    restored, step = self._restore_verified(
        self.latest, args, kept if step is None else [step], "latest")
    self.data_restored = with_data.get(step, False)
    logging.info("Restored checkpoint at step %d", step)
    return restored["state"], restored["meta"]

  def drop_after(self, step: int) -> list[int]:
    """Deletes kept checkpoints newer than `step` (a run restarting from an earlier step)."""
    newer = [s for s in self.all_steps() if s > step]
    for s in newer:
      self.latest.delete(s)
    for s in [s for s in self.best.all_steps() if s > step]:
      self.best.delete(s)
    return newer

  def restore_best(self, abstract_state: Any) -> tuple[Any, dict, int]:
    self.wait()
    steps = list(self.best.all_steps())
    if not steps:
      raise FileNotFoundError(f"no best checkpoint in {self.best.directory}")
    best = self.best.best_step()
    args = lambda s: ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                        meta=ocp.args.JsonRestore())
    restored, step = self._restore_verified(self.best, args, [best] if best is not None
                                            else steps, "best")
    return restored["state"], restored["meta"], step

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()
    self._seal()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()


# The one reader every consumer uses (resume aside): pgvt_jax/checkpoint_reader.py.
from pgvt_jax.checkpoint_reader import (StepRef, find_step, has_checkpoint,  # noqa: E402,F401
                                        read, read_latest_meta, replicated_sharding,
                                        restore_params, to_host)
