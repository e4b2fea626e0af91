"""Checkpoints in the workdir: train state + input-iterator state, saved together, async.

    <workdir>/checkpoints/<step>/{state, data, meta}   latest `keep` steps (resume from here)
    <workdir>/best/<step>/{state, meta}                the best step by `best_metric`

`state` holds what training changes: trainable params, optimizer state, step, RNG. The frozen
CLIP backbone is not copied into every checkpoint; `meta` records where it came from and its
checksum, and resuming checks that the same backbone is loaded. Orbax writes each step to a
temporary directory and renames it when complete, so a run killed at any moment leaves only
whole checkpoints behind.

Integrity: once a step is complete, `<step>/checksums.json` records the SHA-256 of every file
in it. A restore verifies them (a step without them, from before checksums existed or killed in
the instant after orbax finished it, is restored unverified with a warning) and, when a step is damaged (bytes flipped, a file truncated or
deleted) or fails to restore, warns and falls back to the previous kept step; the damaged step
is moved to `<workdir>/corrupt_checkpoints/` (kept for inspection, never reused).

For inference: `restore_params(workdir)` returns a workdir's trainable params (best, else
latest, verified) without building the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


def file_checksum(path: str | Path, chunk: int = 1 << 24) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


CHECKSUMS_FILE = "checksums.json"
CORRUPT_DIR = "corrupt_checkpoints"


class CheckpointIntegrityError(RuntimeError):
  """No kept checkpoint passes its integrity check / restores."""


def _step_files(step_dir: Path) -> list[Path]:
  return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)


def write_checksums(step_dir: str | Path) -> None:
  """Records the SHA-256 of every file of a complete step (written aside, then renamed)."""
  step_dir = Path(step_dir)
  sums = {str(p.relative_to(step_dir)): file_checksum(p) for p in _step_files(step_dir)}
  tmp = step_dir / f".{CHECKSUMS_FILE}.tmp"
  tmp.write_text(json.dumps({"sha256": sums}, indent=1, sort_keys=True) + "\n")
  os.replace(tmp, step_dir / CHECKSUMS_FILE)


UNVERIFIED = "unverified"


def verify_checksums(step_dir: str | Path) -> Optional[str]:
  """None if the step matches its checksums, UNVERIFIED without them, else what is wrong."""
  step_dir = Path(step_dir)
  path = step_dir / CHECKSUMS_FILE
  if not path.exists():
    return UNVERIFIED
  try:
    sums = json.loads(path.read_text())["sha256"]
  except (ValueError, KeyError, TypeError) as e:
    return f"{path} is unreadable ({e})"
  for rel, digest in sums.items():
    f = step_dir / rel
    if not f.is_file():
      return f"{f} is missing"
    if file_checksum(f) != digest:
      return f"{f} does not match its checksum (modified or truncated)"
  extra = {str(p.relative_to(step_dir)) for p in _step_files(step_dir)} - set(sums)
  if extra:
    return f"{step_dir} holds files not in its checksums: {sorted(extra)[:3]}"
  return None


def all_finite(tree: Any) -> bool:
  """Whether every float leaf of `tree` is finite (one small jitted reduction)."""
  leaves = [x for x in jax.tree.leaves(tree) if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)]
  if not leaves:
    return True
  return bool(_all_finite(leaves))


@jax.jit
def _all_finite(leaves):
  return jax.numpy.all(jax.numpy.stack([jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves]))


class Checkpointer:
  """Latest-N manager (state + data iterator) and a best-by-metric manager (state only)."""

  def __init__(self, workdir: str | Path, *, keep: int = 2, best_metric: str = "eval/top1",
               async_save: bool = True):
    workdir = Path(workdir).absolute()
    self.workdir = workdir
    self._unsealed: set = set()  # (manager, step) saved by this run, checksums not yet written
    self.best_metric = best_metric
    self.latest = ocp.CheckpointManager(
        workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save,
                                             cleanup_tmp_directories=True))
    self.best = ocp.CheckpointManager(
        workdir / "best",
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=self._best_fn,
                                             best_mode="max", create=True,
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
      step_dir = Path(mgr.directory) / str(step)
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
    """Moves a damaged step out of the manager's directory (kept for inspection)."""
    src = Path(mgr.directory) / str(step)
    if jax.process_index() == 0 and src.exists():
      dst = self.workdir / CORRUPT_DIR / f"{Path(mgr.directory).name}-{step}-{int(time.time())}"
      dst.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(src), str(dst))
      (dst / "WHY.txt").write_text(why + "\n")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"quarantined {step}")
    mgr.reload()

  def _restore_verified(self, mgr, args_fn, steps: list[int], what: str):
    """Tries `steps` newest first; damaged ones are warned about, quarantined and skipped."""
    errors = []
    for step in sorted(steps, reverse=True):
      why = verify_checksums(Path(mgr.directory) / str(step))
      if why == UNVERIFIED:  # written before checksums existed, or killed right after saving
        logging.warning("%s checkpoint at step %d has no %s: restoring it unverified", what,
                        step, CHECKSUMS_FILE)
        why = None
      if why is None:
        try:
          return mgr.restore(step, args=args_fn()), step
        except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore errors vary
          why = f"restore failed: {type(e).__name__}: {str(e)[:300]}"
      logging.warning("%s checkpoint at step %d is damaged (%s); falling back to the previous "
                      "kept step. It is moved to %s.", what, step, why,
                      self.workdir / CORRUPT_DIR)
      errors.append(f"step {step}: {why}")
      self._quarantine(mgr, step, why)
    raise CheckpointIntegrityError(
        f"no usable {what} checkpoint in {mgr.directory}: " + "; ".join(errors))

  def restore(self, abstract_state: Any, data_iter: Optional[grain.DatasetIterator],
              step: Optional[int] = None) -> tuple[Any, dict]:
    """Restores `state` (into `abstract_state`'s shapes/shardings) and the iterator in place.

    `step=None`: the newest step that passes its integrity check (older ones are fallbacks).
    An explicit `step` must be kept and intact; newer steps are left alone (see `drop_after`).
    """
    self.wait()
    kept = self.all_steps()
    if step is not None and step not in kept:
      raise FileNotFoundError(f"restore_step={step} is not a kept checkpoint in "
                              f"{self.latest.directory}; kept steps: {kept}")

    def args():
      items = {"state": ocp.args.StandardRestore(abstract_state),
               "meta": ocp.args.JsonRestore()}
      if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
      return ocp.args.Composite(**items)

    restored, step = self._restore_verified(
        self.latest, args, kept if step is None else [step], "latest")
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
    args = lambda: ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
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


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each leaf's sharding, the target layout for a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


def has_checkpoint(workdir: str | Path) -> bool:
  """Whether `workdir` holds any finished step (checked without creating anything)."""
  return any(p.name.isdigit() for d in ("checkpoints", "best")
             if (Path(workdir) / d).is_dir() for p in (Path(workdir) / d).iterdir())


def read_latest_meta(workdir: str | Path) -> Optional[tuple[int, dict]]:
  """(step, meta) of the newest finished step of `workdir`, read without building a model."""
  root = Path(workdir) / "checkpoints"
  if not root.is_dir():
    return None
  steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True)
  for step in steps:
    try:
      with ocp.CheckpointManager(root, item_names=("meta",),
                                 options=ocp.CheckpointManagerOptions(read_only=True)) as mgr:
        meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      return step, meta
    except Exception:  # pylint: disable=broad-except  # damaged: the restore falls back too
      continue
  return None


def restore_params(workdir: str | Path, *, which: str = "best") -> tuple[Any, dict, int]:
  """A workdir's trainable params for inference: `(params, meta, step)`.

  `which="best"` takes the best checkpoint, else the latest; `"latest"` the latest. Checksums
  are verified (damaged steps fall back like a training resume). Params come back as host
  NumPy arrays in the tree the model's `trainable` split has; merge them with the frozen
  backbone (`meta["backbone"]`) to apply the model.
  """
  workdir = Path(workdir)
  if not has_checkpoint(workdir):
    raise FileNotFoundError(f"no checkpoint in {workdir}")
  for name in (("best", "checkpoints") if which == "best" else ("checkpoints",)):
    root = workdir / name
    steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()),
                   reverse=True) if root.is_dir() else []
    for step in steps:
      why = verify_checksums(root / str(step))
      if why not in (None, UNVERIFIED):
        logging.warning("%s/%d is damaged (%s); trying an older step", name, step, why)
        continue
      with ocp.StandardCheckpointer() as ckpt:
        state = ckpt.restore(root / str(step) / "state")
      meta = json.loads((root / str(step) / "meta" / "metadata").read_text()) if (
          root / str(step) / "meta" / "metadata").exists() else {}
      return jax.tree.map(np.asarray, state["params"]), meta, step
  raise CheckpointIntegrityError(f"no intact checkpoint in {workdir}")
