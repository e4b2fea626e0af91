"""Host batches -> global jax.Arrays laid out over the device mesh."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def batch_sharding(mesh: Mesh,
                   data_axes: str | Sequence[str] = ("data",)) -> NamedSharding:
  """Leading (batch) dimension split over `data_axes`, the rest replicated."""
  axes = (data_axes,) if isinstance(data_axes, str) else tuple(data_axes)
  return NamedSharding(mesh, P(axes))


def to_global(batch: dict[str, np.ndarray],
              sharding: NamedSharding | Mesh) -> dict[str, jax.Array]:
  """Assembles every host's batch into global arrays.

  Each host passes its own rows (B_host = B_global // process_count); the
  result has leading dimension B_global, sharded as `sharding` says (a Mesh
  means `batch_sharding(mesh)`). Works unchanged on 1 device, many local
  devices and many processes.

  Args:
    batch: per-host batch, numpy arrays with a leading batch dimension.
    sharding: a NamedSharding whose spec shards dimension 0, or a Mesh with a
      "data" axis.
  """
  if isinstance(sharding, Mesh):
    sharding = batch_sharding(sharding)

  def put(x: Any) -> jax.Array:
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(put, batch)


def whole_to_global(batch: dict[str, np.ndarray],
                    sharding: NamedSharding) -> dict[str, jax.Array]:
  """Numpy arrays that every host holds whole (batches drawn from (seed, step), eval chunks)
  -> global jax.Arrays: each host copies in only the rows of its own devices.

  `jax.device_put` would do the same on several hosts but first checks that every host passed
  the same value, a blocking cross-host allgather of the whole batch on every call.
  """
  def put(x: Any) -> jax.Array:
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, batch)
