"""Keeps freed memory in the process: glibc malloc tunables, set by re-exec'ing once at start.

XLA:CPU allocates each step's scratch buffers with malloc and frees them at the end of the
step. glibc serves blocks above its mmap threshold with fresh `mmap`s and unmaps them on free,
so every step page-faults gigabytes in again (0.6M minor faults per step at ViT-B/16 8 frames
batch 1; half of a 16-frame batch-2 step was system time). With one arena, no mmap for
large blocks and no trimming, freed scratch stays mapped and the next step reuses it.

glibc reads GLIBC_TUNABLES only at process start, so `reexec_with_tunables()` re-executes
the current command line once with them set. It does nothing when:
  * the marker variable PGVT_JAX_MALLOC_TUNING is set (it is, after the re-exec: never loops;
    set it to 0 to opt out);
  * the user set GLIBC_TUNABLES or any MALLOC_* variable (their choice wins);
  * the C library is not glibc, or the platform is not Linux.

Users embedding the library (notebooks, own scripts) start Python with
  GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=<big>
(the value of TUNABLES) to get the same effect.
"""

from __future__ import annotations

import os
import platform
import sys

MARKER = "PGVT_JAX_MALLOC_TUNING"
# One arena (large blocks come from the sbrk heap), never mmap a block, never give the top of
# the heap back (2**62 bytes: "never").
TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
            f"glibc.malloc.trim_threshold={2**62}")


def _user_set_allocator(environ) -> bool:
  return "GLIBC_TUNABLES" in environ or any(k.startswith("MALLOC_") for k in environ)


def should_reexec(environ=None) -> bool:
  """True when this process should re-exec itself with TUNABLES (see the module docstring)."""
  environ = os.environ if environ is None else environ
  if MARKER in environ or _user_set_allocator(environ):
    return False
  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def reexec_with_tunables() -> None:
  """Replaces this process by the same command line with TUNABLES set; returns if not needed.

  Call it first thing in an entry point's `if __name__ == "__main__":` path (before
  threads start or files are written). If exec fails, the process carries on untuned.
  """
  if not should_reexec():
    return
  argv = list(getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv)
  env = dict(os.environ, GLIBC_TUNABLES=TUNABLES, **{MARKER: "1"})
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable] + argv[1:], env)
  except OSError as e:  # e.g. sys.executable gone: run as is
    print(f"pgvt_jax: could not re-exec with malloc tunables ({e}); continuing without",
          file=sys.stderr)
