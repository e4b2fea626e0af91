"""What `config.model.dtype="auto"` and `attention_impl="auto"` mean on the devices at hand.

One pure choice from a device description (platform, device_kind, compute capability), so a
planner can pass devices other than this host's (compile-only TPU devices, a fake T4 in tests):

  NVIDIA GPU, compute capability >= 8.0 (A100, A10, L4, H100, ...): bfloat16, cuDNN flash
    attention (where the call fits: half precision, head dim a multiple of 8 and <= 128, no mask).
  NVIDIA GPU below 8.0 (T4 = 7.5 as on Colab, V100 = 7.0): float32, XLA attention. These have
    no bfloat16 arithmetic (XLA would emulate it) and cuDNN's flash attention needs 8.0. Their
    tensor cores do run float16, but the train step has no loss scaling, and float16 without it
    loses small gradients to underflow: float16 stays an explicit choice
    (config.model.dtype="float16", best for inference).
  Other GPUs (no NVIDIA compute capability, e.g. ROCm): bfloat16, XLA attention.
  TPU (all generations have bfloat16 in the MXU): bfloat16, XLA attention.
  CPU: float32 (XLA:CPU has no fast bfloat16 matmul: slower and less exact), XLA attention.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax

AMPERE = (8, 0)  # bfloat16 tensor cores and cuDNN flash attention start here
_DTYPE_RANK = {"float32": 0, "float16": 1, "bfloat16": 2}  # most conservative first
_GPU_PLATFORMS = ("gpu", "cuda", "rocm")


@dataclasses.dataclass(frozen=True)
class Choice:
  """The "auto" settings for some devices, and why (one line, for the log)."""
  dtype: str       # "bfloat16" | "float32" (never "float16": see the module docstring)
  attention: str   # "cudnn" (cuDNN flash attention where the call fits) | "xla"
  reason: str


def compute_capability(device: Any) -> Optional[tuple[int, int]]:
  """(major, minor) of an NVIDIA GPU ("7.5" -> (7, 5)); None where there is none."""
  cc = getattr(device, "compute_capability", None)
  try:
    major, minor = str(cc).split(".")[:2]
    return int(major), int(minor)
  except ValueError:
    return None


def choose_for_device(device: Any) -> Choice:
  """The choice for one device (anything with .platform, .device_kind, .compute_capability)."""
  platform = str(getattr(device, "platform", "")).lower()
  kind = getattr(device, "device_kind", platform)
  if platform == "cpu":
    return Choice("float32", "xla", f"{kind} (CPU): float32 (no fast bfloat16 matmul), XLA "
                  "attention")
  if platform == "tpu":
    return Choice("bfloat16", "xla", f"{kind}: bfloat16 (MXU), XLA attention")
  if platform in _GPU_PLATFORMS:
    cc = compute_capability(device)
    if cc is None:
      return Choice("bfloat16", "xla", f"{kind} (not NVIDIA): bfloat16, XLA attention")
    where = f"{kind} (compute capability {cc[0]}.{cc[1]})"
    if cc >= AMPERE:
      return Choice("bfloat16", "cudnn", f"{where}: bfloat16, cuDNN flash attention")
    return Choice("float32", "xla",
                  f"{where}: float32 and XLA attention (no bfloat16 before 8.0; float16 is "
                  "not chosen because the train step has no loss scaling; cuDNN flash "
                  "attention needs 8.0)")
  return Choice("float32", "xla", f"unknown platform {platform!r} ({kind}): float32, XLA "
                "attention")


def choose(devices: Optional[Sequence[Any]] = None) -> Choice:
  """The choice for all `devices` (default `jax.devices()`): the most conservative of theirs,
  so a program compiled once for a mixed set runs on every device."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("accelerators.choose needs at least one device")
  choices = [choose_for_device(d) for d in devices]
  dtype = min((c.dtype for c in choices), key=_DTYPE_RANK.__getitem__)
  attention = "cudnn" if all(c.attention == "cudnn" for c in choices) else "xla"
  return Choice(dtype, attention, "; ".join(dict.fromkeys(c.reason for c in choices)))


def platform(devices: Optional[Sequence[Any]] = None) -> str:
  """The platform of `devices` (default `jax.devices()`): "cpu", "gpu", "tpu", ..."""
  devices = jax.devices() if devices is None else list(devices)
  p = str(getattr(devices[0], "platform", "")).lower()
  return "gpu" if p in _GPU_PLATFORMS else p
