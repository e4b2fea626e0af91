"""Per-chip peaks of the accelerators pgvt_jax plans for: FLOP/s, HBM, bandwidth, devices.

A "device" is what JAX calls one (`jax.devices()` entry, one shard of a mesh); a "chip" is
what a datasheet quotes. They differ on TPU v2 and v3, where each chip has two TensorCores and
JAX shows each core as a device: a v3-8 is 4 chips but 8 devices, and its peak per device is
half the chip's. v4 and v5p also have two TensorCores per chip but JAX drives them as one
"megacore" device, so there a device is a chip.

Sources (public; dense peaks, no sparsity):
  TPU v2   Jouppi et al., "A Domain-Specific Supercomputer for Training Deep Neural Networks",
           CACM 63(7) 2020, Table 3: 46 TFLOP/s bf16 (Cloud docs round to 45), 16 GiB HBM,
           700 GB/s per chip; 2 cores.
  TPU v3   cloud.google.com/tpu/docs/v3: 123 TFLOP/s bf16, 32 GiB, 900 GB/s per chip; 2 cores.
  TPU v4   cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB, 1200 GB/s per chip.
  TPU v5e  cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB, 819 GB/s per chip.
  TPU v5p  cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GB, 2765 GB/s per chip.
  TPU v6e  cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB, 1640 GB/s per chip.
  T4       NVIDIA T4 datasheet: 65 TFLOP/s fp16 tensor (no bf16), 8.1 fp32, 16 GB, 320 GB/s.
  A100     NVIDIA A100 datasheet: 312 bf16, 19.5 fp32; 40 GB 1555 GB/s, 80 GB SXM 2039 GB/s.
  H100     NVIDIA H100 SXM datasheet: 989 bf16 (dense), 67 fp32, 80 GB, 3.35 TB/s.
  H200     NVIDIA H200 SXM datasheet: 989 bf16 (dense), 67 fp32, 141 GB, 4.8 TB/s.
  L4       NVIDIA L4 datasheet: 121 bf16 (dense; 242 with sparsity), 30.3 fp32, 24 GB, 300 GB/s.

Usable HBM per device (what XLA may allocate, below the nominal size): on TPU the figures
XLA:TPU itself reports when a program does not fit ("exceeds available HBM (15.75G)"),
read from compile-only topologies with jax 0.10.2 / its libtpu. On GPU, JAX preallocates 75%
of the memory by default (XLA_PYTHON_CLIENT_MEM_FRACTION), so 0.75 x nominal.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional

GiB = 2 ** 30
GB = 10 ** 9
TERA = 10 ** 12


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip. Peaks and bandwidth are per chip; `usable_hbm_bytes` per device."""
  name: str                  # short name: "v5e", "A100-80GB"
  kinds: tuple[str, ...]     # lower-case `device_kind` substrings that identify it
  peak_flops: dict           # {"bfloat16": FLOP/s, "float32": FLOP/s} per chip
  hbm_bytes: int             # nominal memory per chip
  usable_hbm_bytes: int      # per DEVICE: what XLA may allocate
  hbm_bw: float              # bytes/s per chip
  devices_per_chip: int = 1  # JAX devices on one chip (TPU v2/v3: one per TensorCore)

  def peak_per_device(self, dtype: str = "bfloat16") -> float:
    """Dense peak FLOP/s of ONE JAX device computing in `dtype` (a dtype the table lacks:
    the bfloat16 peak)."""
    return self.peak_flops.get(dtype, self.peak_flops["bfloat16"]) / self.devices_per_chip

  def bw_per_device(self) -> float:
    return self.hbm_bw / self.devices_per_chip


def _tpu(name, kinds, tflops, hbm_gib, usable_gib, bw_gbs, devices=1) -> Chip:
  # TPU MXUs compute float32 matmuls in bf16 passes: the bf16 peak is the chip's ceiling.
  return Chip(name, kinds, {"bfloat16": tflops * TERA, "float32": tflops * TERA},
              int(hbm_gib * GiB), int(usable_gib * GiB), bw_gbs * GB, devices)


def _gpu(name, kinds, bf16, f32, hbm_gb, bw_gbs, fp16=None) -> Chip:
  frac = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))
  peaks = {"bfloat16": bf16 * TERA, "float32": f32 * TERA, "float16": (fp16 or bf16) * TERA}
  return Chip(name, kinds, peaks, int(hbm_gb * GB), int(frac * hbm_gb * GB), bw_gbs * GB)


# Order matters: the first entry whose kind is a substring of the device kind wins
# ("tpu v5 lite" before "tpu v5"; "a100-sxm4-80gb" before "a100").
CHIPS: tuple[Chip, ...] = (
    _tpu("v2", ("tpu v2",), 46, 16, 7.48, 700, devices=2),
    _tpu("v3", ("tpu v3",), 123, 32, 15.48, 900, devices=2),
    _tpu("v4", ("tpu v4",), 275, 32, 30.75, 1200),
    _tpu("v5e", ("tpu v5 lite", "tpu v5e"), 197, 16, 15.75, 819),
    _tpu("v5p", ("tpu v5p", "tpu v5"), 459, 95, 95.74, 2765),
    _tpu("v6e", ("tpu v6 lite", "tpu v6e"), 918, 32, 31.25, 1640),
    # T4 has no bfloat16 arithmetic: "auto" runs float32 there (accelerators.py).
    _gpu("T4", ("t4",), bf16=8.1, f32=8.1, fp16=65, hbm_gb=16, bw_gbs=320),
    _gpu("A100-80GB", ("a100-sxm4-80gb", "a100 80gb", "a100-80gb"), 312, 19.5, 80, 2039),
    _gpu("A100-40GB", ("a100",), 312, 19.5, 40, 1555),
    _gpu("H200", ("h200",), 989, 67, 141, 4800),
    _gpu("H100", ("h100",), 989, 67, 80, 3350),
    _gpu("L4", ("nvidia l4", "l4"), 121, 30.3, 24, 300),
)


def lookup(device_kind: str) -> Optional[Chip]:
  """The chip of a JAX `device_kind` ("TPU v5 lite", "NVIDIA A100-SXM4-80GB"), or None."""
  kind = device_kind.lower()
  for chip in CHIPS:
    # Whole words: "l4" must not match an "L40S".
    if any(re.search(rf"\b{re.escape(k)}\b", kind) for k in chip.kinds):
      return chip
  return None


def by_name(name: str) -> Chip:
  for chip in CHIPS:
    if chip.name.lower() == name.lower():
      return chip
  raise ValueError(f"unknown chip {name!r}; known: {[c.name for c in CHIPS]}")


def peak_flops_per_device(device_kind: str, dtype: str = "bfloat16") -> Optional[float]:
  """Dense peak FLOP/s of one JAX device of this kind (None if the kind is not in CHIPS).

  Multiply by the device count for a mesh: on v2/v3 that counts each core once, never the
  chip twice."""
  chip = lookup(device_kind)
  return None if chip is None else chip.peak_per_device(dtype)
