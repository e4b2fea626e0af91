"""pgvt_jax.malloc_tuning: the launcher's one-time re-exec with glibc malloc tunables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from pgvt_jax import malloc_tuning

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc tunables only exist on Linux/glibc")

# Each start appends a line; then re-exec; then measures the page faults of touching a
# 64 MiB malloc'd block a second time after freeing it (0 when freed memory stays mapped).
_SCRIPT = textwrap.dedent("""
    import ctypes, os, resource, sys
    from pgvt_jax import malloc_tuning
    with open(sys.argv[1], "a") as f:
      f.write(f"start {os.environ.get('GLIBC_TUNABLES', '-')}\\n")
    malloc_tuning.reexec_with_tunables()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    n = 64 << 20
    def touch():
      p = libc.malloc(n)
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      ctypes.memset(p, 1, n)
      faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
      libc.free(ctypes.c_void_p(p))
      return faults
    touch()
    with open(sys.argv[1], "a") as f:
      f.write(f"faults {touch()}\\n")
""")


def _run(tmp_path, **env_changes) -> list[str]:
  env = {k: v for k, v in os.environ.items()
         if k != malloc_tuning.MARKER and k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
  env.update(env_changes)
  env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
  log = tmp_path / "log.txt"
  subprocess.run([sys.executable, "-c", _SCRIPT, str(log)], env=env, check=True, timeout=60)
  return log.read_text().splitlines()


def test_reexecs_once_with_tunables_and_freed_memory_stays_mapped(tmp_path):
  lines = _run(tmp_path)
  assert lines[:2] == ["start -", f"start {malloc_tuning.TUNABLES}"], lines  # exactly one re-exec
  assert len(lines) == 3 and lines[2].startswith("faults "), lines
  assert int(lines[2].split()[1]) < 100  # reused: 64 MiB would be 16384 4-KiB pages


def test_without_tunables_large_blocks_fault_again(tmp_path):
  # What the tunables fix: glibc mmaps the block and unmaps it on free.
  lines = _run(tmp_path, **{malloc_tuning.MARKER: "0"})
  assert lines[0] == "start -" and len(lines) == 2, lines
  assert int(lines[1].split()[1]) > 10000


def test_user_settings_win(tmp_path):
  for i, env in enumerate(({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                           {"MALLOC_ARENA_MAX": "2"})):
    (tmp_path / str(i)).mkdir()
    lines = _run(tmp_path / str(i), **env)
    assert len(lines) == 2 and lines[1].startswith("faults"), (env, lines)  # no re-exec


def test_should_reexec_guard():
  assert not malloc_tuning.should_reexec({malloc_tuning.MARKER: "1"})
  assert not malloc_tuning.should_reexec({"GLIBC_TUNABLES": "x"})
  assert malloc_tuning.should_reexec({"PATH": "/bin"})
