"""Checkpoints in the workdir: train state + input-iterator state, saved together, async.

    <workdir>/checkpoints/<step>/{state, data, meta}   latest `keep` steps (resume from here)
    <workdir>/best/<step>/{state, meta}                the best step by `best_metric`

`state` holds what training changes: trainable params, optimizer state, step, RNG. The frozen
CLIP backbone is not copied into every checkpoint; `meta` records where it came from and its
checksum, and resuming checks that the same backbone is loaded. Orbax writes each step to a
temporary directory and renames it when complete, so a run killed at any moment leaves only
whole checkpoints behind.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


def file_checksum(path: str | Path, chunk: int = 1 << 24) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


class Checkpointer:
  """Latest-N manager (state + data iterator) and a best-by-metric manager (state only)."""

  def __init__(self, workdir: str | Path, *, keep: int = 2, best_metric: str = "eval/top1",
               async_save: bool = True):
    workdir = Path(workdir).absolute()
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

  def save(self, step: int, state: Any, data_iter: Optional[grain.DatasetIterator],
           meta: dict, *, force: bool = False) -> bool:
    """Async save of state + iterator; returns whether a save was started."""
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return self.latest.save(step, args=ocp.args.Composite(**items), force=force)

  def save_best(self, step: int, state: Any, meta: dict, metrics: dict) -> bool:
    if self.best_metric not in metrics:
      return False
    return self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                          metrics={k: float(v) for k, v in metrics.items()
                                   if isinstance(v, (int, float))})

  def restore(self, abstract_state: Any, data_iter: Optional[grain.DatasetIterator],
              step: Optional[int] = None) -> tuple[Any, dict]:
    """Restores `state` (into `abstract_state`'s shapes/shardings) and the iterator in place."""
    step = self.latest.latest_step() if step is None else step
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.latest.restore(step, args=ocp.args.Composite(**items))
    logging.info("Restored checkpoint at step %d", step)
    return restored["state"], restored["meta"]

  def restore_best(self, abstract_state: Any) -> tuple[Any, dict, int]:
    step = self.best.best_step()
    if step is None:
      raise FileNotFoundError(f"no best checkpoint in {self.best.directory}")
    restored = self.best.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"], step

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each leaf's sharding, the target layout for a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)
