"""The "auto" dtype / attention choice per device kind, on fake device descriptions (the same
attributes jax devices have), so every kind is checked on this CPU machine."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import pytest

from pgvt_jax import accelerators
from pgvt_jax.models import layers
from pgvt_jax.models.config import auto_dtype


def gpu(kind: str, cc: str):
  return types.SimpleNamespace(platform="gpu", device_kind=kind, compute_capability=cc)


def tpu(kind: str):
  return types.SimpleNamespace(platform="tpu", device_kind=kind)


CPU = types.SimpleNamespace(platform="cpu", device_kind="cpu")
T4, V100 = gpu("Tesla T4", "7.5"), gpu("Tesla V100-SXM2-16GB", "7.0")
A100, H100 = gpu("NVIDIA A100-SXM4-40GB", "8.0"), gpu("NVIDIA H100 80GB HBM3", "9.0")


@pytest.mark.parametrize("device,dtype,attention", [
    (T4, "float32", "xla"),          # Colab: no bfloat16, no cuDNN flash (needs 8.0)
    (V100, "float32", "xla"),
    (gpu("NVIDIA L4", "8.9"), "bfloat16", "cudnn"),
    (A100, "bfloat16", "cudnn"),
    (H100, "bfloat16", "cudnn"),
    (gpu("NVIDIA B200", "10.0"), "bfloat16", "cudnn"),  # "10.0" > "8.0" compared as numbers
    (tpu("TPU v2"), "bfloat16", "xla"),
    (tpu("TPU v3"), "bfloat16", "xla"),
    (tpu("TPU v5 lite"), "bfloat16", "xla"),   # v5e
    (tpu("TPU v6 lite"), "bfloat16", "xla"),   # v6e
    (CPU, "float32", "xla"),
    (types.SimpleNamespace(platform="rocm", device_kind="AMD Instinct MI250X",
                           compute_capability="gfx90a"), "bfloat16", "xla"),
])
def test_choice_per_device_kind(device, dtype, attention):
  choice = accelerators.choose([device, device])
  assert (choice.dtype, choice.attention) == (dtype, attention)
  assert device.device_kind in choice.reason and "\n" not in choice.reason
  assert auto_dtype([device]) == dtype
  want = "cudnn" if attention == "cudnn" else "xla"
  assert layers.resolve_attention_impl("auto", jnp.bfloat16, 64, devices=[device]) == want


def test_older_gpus_say_why_float32_and_not_float16():
  reason = accelerators.choose([T4]).reason
  assert "compute capability 7.5" in reason and "float32" in reason
  assert "loss scaling" in reason and "cuDNN" in reason


def test_a_mixed_set_gets_the_most_conservative_choice():
  choice = accelerators.choose([H100, T4])
  assert (choice.dtype, choice.attention) == ("float32", "xla")
  assert "Tesla T4" in choice.reason and "H100" in choice.reason


def test_cudnn_only_where_the_call_fits():
  resolve = lambda *a, **k: layers.resolve_attention_impl(*a, devices=[A100], **k)
  assert resolve("auto", jnp.float16, 128) == "cudnn"
  assert resolve("auto", jnp.float32, 64) == "xla"             # cuDNN flash: half types only
  assert resolve("auto", jnp.bfloat16, 256) == "xla"           # head dim > 128
  assert resolve("auto", jnp.bfloat16, 60) == "xla"            # not a multiple of 8
  assert resolve("auto", jnp.bfloat16, 64, masked=True) == "xla"  # PAAB's boolean key mask
  assert resolve("cudnn", jnp.float32, 64) == "cudnn"          # asked for: jax raises if unfit
  assert resolve("xla", jnp.bfloat16, 64) == "xla"
  # fp16 asked for explicitly on a T4: still XLA attention (cuDNN flash needs 8.0).
  assert layers.resolve_attention_impl("auto", jnp.float16, 64, devices=[T4]) == "xla"
  with pytest.raises(ValueError, match=r"attention_impl='cudnn' needs an NVIDIA GPU.*'tpu'"):
    layers.resolve_attention_impl("cudnn", jnp.bfloat16, 64, devices=[tpu("TPU v3")])


def test_defaults_read_this_hosts_devices():
  assert accelerators.choose() == accelerators.choose(jax.devices())
  assert auto_dtype() == accelerators.choose(jax.devices()).dtype
  with pytest.raises(ValueError, match="at least one device"):
    accelerators.choose([])
