"""The one checkpoint reader: every consumer (evaluate, predict, retrieval, visualize,
init_from, `restore_params`) finds a step and restores it into the CURRENT devices, whatever
topology wrote it. Readers never move or delete anything: a damaged step is skipped with a
warning (only the trainer quarantines, pgvt_jax/checkpointing.py). Paths: local, relative or
bucket URLs (pgvt_jax/paths.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pgvt_jax.checkpoint_integrity import (UNVERIFIED, CheckpointIntegrityError,
                                           CheckpointRestoreError, as_path, finished_steps,
                                           restore_cause, verify)

def has_checkpoint(workdir: str | os.PathLike) -> bool:
  """Whether `workdir` holds any finished step (checked without creating anything)."""
  workdir = as_path(workdir)
  return bool(finished_steps(workdir / "checkpoints") or finished_steps(workdir / "best"))


def _read_meta(step_dir: epath.Path) -> dict:
  path = step_dir / "meta" / "metadata"
  return json.loads(path.read_text()) if path.exists() else {}


def read_latest_meta(workdir: str | os.PathLike) -> Optional[tuple[int, dict]]:
  """(step, meta) of the newest finished step of `workdir`, read without building a model."""
  root = as_path(workdir) / "checkpoints"
  for step in reversed(finished_steps(root)):
    try:
      return step, _read_meta(root / str(step))
    except (OSError, ValueError):  # damaged: the restore falls back too
      continue
  return None


@dataclasses.dataclass(frozen=True)
class StepRef:
  """One finished, intact (or unverified) step of a workdir, found by `find_step`."""
  directory: epath.Path   # <workdir>/<kind>/<step>
  kind: str               # "best" | "checkpoints"
  step: int

  @property
  def meta(self) -> dict:
    return _read_meta(self.directory)

  def saved_tree(self) -> Any:
    """The saved state's tree of array metadata (shape, dtype): no array is read."""
    with ocp.StandardCheckpointer() as ckpt:
      return ckpt.metadata(self.directory / "state").item_metadata.tree


def find_step(workdir: str | os.PathLike, *, which: str = "best",
              step: Optional[int] = None) -> StepRef:
  """The step a consumer reads: `step` from checkpoints/ if given, else the best (which="best",
  falling back to the latest) or the latest (which="latest"). Damaged steps are skipped with a
  warning (never moved: only the trainer quarantines). Raises FileNotFoundError when there is
  no checkpoint, CheckpointIntegrityError when none is intact."""
  workdir = as_path(workdir)
  if which not in ("best", "latest"):
    raise ValueError(f"which={which!r}; expected 'best' or 'latest'")
  if step is not None:
    kept = finished_steps(workdir / "checkpoints")
    if step not in kept:
      raise FileNotFoundError(f"{workdir}: no checkpoint at step {step}; kept steps: {kept}")
    candidates = [("checkpoints", step)]
  else:
    kinds = ("best", "checkpoints") if which == "best" else ("checkpoints",)
    candidates = [(k, s) for k in kinds for s in reversed(finished_steps(workdir / k))]
  if not candidates:
    raise FileNotFoundError(f"no checkpoint in {workdir} (expected {workdir}/best/<step> or "
                            f"{workdir}/checkpoints/<step>)")
  damaged = []
  for kind, s in candidates:
    why = verify(workdir / kind / str(s))
    if why in (None, UNVERIFIED):
      return StepRef(workdir / kind / str(s), kind, s)
    logging.warning("%s/%d is damaged (%s); trying an older step", kind, s, why)
    damaged.append(f"{kind}/{s}: {why}")
  raise CheckpointIntegrityError(f"no intact checkpoint in {workdir}: " + "; ".join(damaged))


def replicated_sharding(devices=None) -> NamedSharding:
  """Every array whole on every device (of all processes): the default target of `read`."""
  devices = jax.devices() if devices is None else devices
  return NamedSharding(Mesh(np.asarray(devices), ("devices",)), P())


def read(ref: StepRef, target: Any = None, *, sharding: Any = None) -> Any:
  """The saved state of `ref`, restored into the CURRENT devices, whatever wrote it.

  Args:
    ref: from `find_step`.
    target: a tree of ShapeDtypeStructs with shardings (e.g. `abstract_like(state)`), or None:
      the saved tree, every leaf placed with `sharding`.
    sharding: the sharding of every leaf when `target` is None (default: replicated over all
      devices, so any host can read any leaf: `to_host`).
  """
  if target is None:
    sharding = replicated_sharding() if sharding is None else sharding
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype,
                                                         sharding=sharding), ref.saved_tree())
  try:
    with ocp.StandardCheckpointer() as ckpt:
      return ckpt.restore(ref.directory / "state", target)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointRestoreError(f"{ref.directory} could not be restored: "
                                 f"{restore_cause(e)}") from e


def to_host(tree: Any) -> Any:
  """Host NumPy copies of a tree's arrays, also of arrays spread over several processes
  (fully replicated: this host's copy; sharded: gathered from all hosts)."""
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)


def restore_params(workdir: str | os.PathLike, *, which: str = "best",
                   step: Optional[int] = None) -> tuple[Any, dict, int]:
  """A workdir's trainable params for inference: `(params, meta, step)` as host NumPy arrays,
  from any topology. Merge them with the frozen backbone (`meta["backbone"]`) to apply."""
  ref = find_step(workdir, which=which, step=step)
  return to_host(read(ref)["params"]), ref.meta, ref.step
