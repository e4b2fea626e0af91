"""Where a plan compiles for: compile-only TPU slices by name, or this process's devices.

    tgt = targets.target("v5e-4")      # 4 compile-only TPU v5e devices (needs libtpu)
    tgt = targets.target("local")      # jax.devices(), with their memory limit

A `Target` is the devices plus what a report compares against: usable memory per device
(the chip table in hardware.py, a local device's own `bytes_limit`, or the host's memory for
CPU devices) and, for the roofline, peak FLOP/s and memory bandwidth per device.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional, Sequence

import jax

from pgvt_jax import hardware

# Cloud TPU accelerator names -> (jax topology name, get_topology_desc kwargs). v4 and v5p
# show one device per chip ("megacore"), as on a real v4/v5p VM; v2/v3 one per core.
TOPOLOGIES: dict[str, tuple[str, dict]] = {
    "v2-8": ("v2:2x2", {}),
    "v3-8": ("v3:2x2", {}),
    "v4-8": ("v4:2x2x1", {"chip_config_name": "megacore"}),
    "v5p-8": ("v5p:2x2x1", {}),
    "v5e-1": ("v5e:1x1", {"chips_per_host_bounds": (1, 1, 1)}),
    "v5e-4": ("v5e:2x2", {}),
    "v5e-8": ("v5e:2x4", {}),
    "v6e-1": ("v6e:1x1", {"chips_per_host_bounds": (1, 1, 1)}),
    "v6e-4": ("v6e:2x2", {}),
    "v6e-8": ("v6e:2x4", {}),
}


@dataclasses.dataclass
class Target:
  """Devices to compile for, and the per-device limits the report compares against."""
  name: str
  devices: list
  limit_bytes: int                 # usable memory per device
  chip: Optional[hardware.Chip]    # None: unknown kind (CPU): no roofline unless overridden
  peak_tflops: Optional[float] = None  # per device, overrides the chip table
  hbm_gbps: Optional[float] = None     # per device, overrides the chip table

  @property
  def device_kind(self) -> str:
    return self.devices[0].device_kind

  def peak_flops(self, dtype: str) -> Optional[float]:
    if self.peak_tflops:
      return self.peak_tflops * 1e12
    return self.chip.peak_per_device(dtype) if self.chip else None

  def bandwidth(self) -> Optional[float]:
    if self.hbm_gbps:
      return self.hbm_gbps * 1e9
    return self.chip.bw_per_device() if self.chip else None


def topology_args(name: str) -> tuple[str, dict]:
  """(jax topology name, get_topology_desc kwargs) of "v5e-4" or a raw "v5e:2x2"."""
  if name in TOPOLOGIES:
    topo, kwargs = TOPOLOGIES[name]
    return topo, dict(kwargs)
  # A raw name, with the table's conventions: one device per v4 chip (megacore, as on a v4 VM;
  # v5p is one per chip by default); slices smaller than one host's default 2x2x1 chips say
  # their own host bounds.
  kwargs = {"chip_config_name": "megacore"} if name.startswith("v4:") else {}
  try:
    dims = [int(d) for d in name.split(":")[1].split("x")] if ":" in name else []
  except ValueError:
    dims = []  # not a shape: get_topology_desc will say what is wrong with it
  if dims and math.prod(dims) < 4:
    kwargs["chips_per_host_bounds"] = tuple(dims + [1] * (3 - len(dims)))
  return name, kwargs


def topology_devices(name: str) -> list:
  """Compile-only TPU devices of a slice ("v5e-4" or a raw "v5e:2x2")."""
  topo, kwargs = topology_args(name)
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server on a non-TPU host
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return list(topologies.get_topology_desc(topology_name=topo, platform="tpu",
                                             **kwargs).devices)
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(
        f"cannot make compile-only TPU devices for {name!r} (topology {topo!r}): {e}\n"
        f"Known names: {sorted(TOPOLOGIES)} or a raw 'v5e:4x4'. Compile-only TPU devices "
        "need libtpu: pip install 'pgvt_jax[tpu]' in a virtualenv of its own and run with "
        "JAX_PLATFORMS=cpu on a machine without TPUs (docs/planning.md).") from e


def _local_limit(device) -> int:
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    pass
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  chip = hardware.lookup(device.device_kind)
  if chip is not None:
    return chip.usable_hbm_bytes
  # CPU: the host's memory, shared by every (fake) CPU device of the process.
  total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return total // max(1, len(jax.local_devices()))


def target(name: str = "local", *, devices: Optional[Sequence[Any]] = None,
           peak_tflops: Optional[float] = None, hbm_gbps: Optional[float] = None,
           hbm_gib: Optional[float] = None) -> Target:
  """A named target: "local" (this process's devices, or `devices`) or a TPU slice."""
  if name == "local":
    devs = list(jax.devices() if devices is None else devices)
    limit = _local_limit(devs[0])
  else:
    devs = topology_devices(name)
    chip = hardware.lookup(devs[0].device_kind)
    if chip is None:
      raise ValueError(f"no entry in pgvt_jax/hardware.py for {devs[0].device_kind!r}")
    limit = chip.usable_hbm_bytes
  if hbm_gib:
    limit = int(hbm_gib * 2 ** 30)
  return Target(name, devs, limit, hardware.lookup(devs[0].device_kind), peak_tflops,
                hbm_gbps)
