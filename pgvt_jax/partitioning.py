"""Device mesh and parameter shardings (the pjit model: one jit, NamedShardings everywhere).

The mesh has two axes: "data" (pure data parallelism) and "fsdp" (data parallelism whose
devices also split large parameters and their optimizer state). The batch is split over both.
Axis types are `Auto`, chosen on purpose: the shardings are given at the jit boundary and XLA
propagates them through the model, so model code needs no sharding annotations
(`jax.make_mesh` would default to Explicit axes, which type-check shardings inside the model).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.fsdp = 1                    # devices per FSDP group; data = num_devices // fsdp
  c.fsdp_min_size = 2 ** 18     # params smaller than this stay replicated
  return c


def make_mesh(cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  if cfg.fsdp < 1 or n % cfg.fsdp:
    raise ValueError(f"config.mesh.fsdp={cfg.fsdp} must divide the device count {n}")
  return jax.make_mesh((n // cfg.fsdp, cfg.fsdp), ("data", "fsdp"),
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def fit_to_devices(cfg: ml_collections.ConfigDict, devices=None) -> ml_collections.ConfigDict:
  """`cfg` (config.mesh) for a run READ on other devices than it trained on (evaluation,
  retrieval on one GPU of a pod-trained run): fsdp becomes gcd(fsdp, device count), which
  divides both. Shardings never change results, only where arrays live."""
  n = len(jax.devices() if devices is None else devices)
  fitted = ml_collections.ConfigDict(cfg.to_dict())
  fitted.fsdp = int(np.gcd(max(int(cfg.fsdp), 1), n))
  return fitted


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  """Shard the largest dimension divisible by `fsdp`; small or indivisible leaves replicate."""
  if fsdp == 1 or int(np.prod(shape)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(tree: Any, mesh: Mesh, cfg: ml_collections.ConfigDict) -> Any:
  """NamedShardings for every array leaf of `tree` (shapes suffice: ShapeDtypeStructs work)."""
  fsdp = mesh.shape["fsdp"]
  def one(x):
    shape = tuple(getattr(x, "shape", ()))
    return NamedSharding(mesh, fsdp_spec(shape, fsdp, cfg.fsdp_min_size))
  return jax.tree.map(one, tree)


def check_batch_divisible(global_batch: int, mesh: Mesh, what: str) -> None:
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % n:
    raise ValueError(f"{what}={global_batch} must be divisible by the {n} devices of the mesh")
