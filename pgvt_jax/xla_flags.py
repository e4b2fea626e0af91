"""XLA:CPU flags the launchers set for their own process: a memory-minimising schedule.

XLA:CPU's default "concurrency-optimised" scheduler orders a program so independent ops can
run at the same time, which keeps many activations alive at once. The train step's scratch
(its temp buffer, allocated every step) is then much larger than a memory-minimising order
needs, while on a few cores the matmuls already use every core, so the concurrency buys no
step time. The A/B (scratch bytes with and without the flag, with remat on top, step times)
is benchmarks/NOTES.md entry 10.

XLA reads XLA_FLAGS once, when JAX's CPU backend starts (the first jax.devices() / jit), and
per-jit `compiler_options` do not reach this flag (measured: same buffer plan). So
`set_cpu_flags()` must run before anything touches JAX's devices: `python -m pgvt_jax.main`,
the predict/retrieval CLIs and the benchmarks call it first thing. A flag the user already
put in XLA_FLAGS wins. Users embedding the library on a CPU start Python/Jupyter with
  XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false
or call `pgvt_jax.xla_flags.set_cpu_flags()` before their first JAX computation. The flags
are CPU-only: GPU/TPU compiles ignore them.
"""

from __future__ import annotations

import os

# name -> value; each becomes --name=value in XLA_FLAGS.
CPU_FLAGS = {"xla_cpu_enable_concurrency_optimized_scheduler": "false"}


def with_cpu_flags(xla_flags: str) -> str:
  """`xla_flags` (an XLA_FLAGS value) plus every CPU_FLAGS entry it does not already set."""
  given = xla_flags.split()
  names = {f.lstrip("-").split("=", 1)[0] for f in given}
  extra = [f"--{k}={v}" for k, v in CPU_FLAGS.items() if k not in names]
  return " ".join(given + extra)


def set_cpu_flags(environ=None) -> str:
  """Adds CPU_FLAGS to XLA_FLAGS in `environ` (default os.environ); returns the new value.

  Only effective before JAX's backend starts (see the module docstring).
  """
  environ = os.environ if environ is None else environ
  environ["XLA_FLAGS"] = with_cpu_flags(environ.get("XLA_FLAGS", ""))
  return environ["XLA_FLAGS"]
