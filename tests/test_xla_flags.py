"""pgvt_jax.xla_flags: the launchers' XLA:CPU flags (a memory-minimising schedule)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pgvt_jax import xla_flags

ROOT = Path(__file__).resolve().parents[1]
FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"


def test_adds_the_cpu_flags_and_keeps_the_users():
  assert xla_flags.with_cpu_flags("") == f"--{FLAG}=false"
  out = xla_flags.with_cpu_flags("--xla_force_host_platform_device_count=4")
  assert out.split() == ["--xla_force_host_platform_device_count=4", f"--{FLAG}=false"]
  # The user's own value for the same flag wins, in either spelling.
  assert xla_flags.with_cpu_flags(f"--{FLAG}=true") == f"--{FLAG}=true"
  assert xla_flags.with_cpu_flags(f"-{FLAG}=true") == f"-{FLAG}=true"
  assert xla_flags.with_cpu_flags(xla_flags.with_cpu_flags("")) == f"--{FLAG}=false"  # idempotent
  env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  assert xla_flags.set_cpu_flags(env) == env["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x --{FLAG}=false"


# A small transformer-like gradient: the scratch XLA plans for it, with set_cpu_flags()
# called before the backend starts ("before"), after it started ("after"), or not at all.
_PROBE = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    from pgvt_jax import xla_flags
    if sys.argv[1] == "after":
      jax.devices()
    if sys.argv[1] != "none":
      xla_flags.set_cpu_flags()
    def block(x, w):
      q, k, v = x @ w[0], x @ w[1], x @ w[2]
      a = jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", q, k), -1)
      x = x + jnp.einsum("bqk,bkd->bqd", a, v) @ w[3]
      return x + jax.nn.gelu(x @ w[4]) @ w[5]
    def loss(x, ws):
      for w in ws:
        x = block(x, w)
      return (x ** 2).sum()
    ws = [[jax.ShapeDtypeStruct((64, 64), jnp.float32)] * 6] * 8
    x = jax.ShapeDtypeStruct((8, 128, 64), jnp.float32)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, ws).compile()
    print(compiled.memory_analysis().temp_size_in_bytes)
""")


def _temp_bytes(when: str) -> int:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", _PROBE, when], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=True)
  return int(out.stdout.split()[-1])


def test_the_flag_shrinks_the_plan_only_when_set_before_the_backend_starts():
  default, before, after = (_temp_bytes(w) for w in ("none", "before", "after"))
  assert before < default, (before, default)
  # XLA reads XLA_FLAGS once, when the backend starts: why the launchers call it first.
  assert after == default, (after, default)


@pytest.mark.parametrize("module", ["pgvt_jax.main", "benchmarks.train_step"])
def test_launchers_set_the_flags_before_jax_starts(module):
  """Runs the launcher's `__main__` path up to flag parsing (--helpshort exits there)."""
  script = textwrap.dedent(f"""
      import os, runpy, sys
      sys.argv = ["{module}", "--helpshort"]
      try:
        runpy.run_module("{module}", run_name="__main__", alter_sys=True)
      except SystemExit:
        pass
      import jax._src.xla_bridge as xb
      print("XLA_FLAGS=" + os.environ.get("XLA_FLAGS", ""))
      print("backend_started=" + str(bool(xb._backends)))
  """)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PGVT_JAX_MALLOC_TUNING"] = "0"  # no re-exec: this process is the one inspected
  out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300, check=True).stdout
  assert f"XLA_FLAGS=--{FLAG}=false" in out, out
  assert "backend_started=False" in out, out  # so the flags were in place in time
