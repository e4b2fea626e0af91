"""Fewer page faults for XLA:CPU's per-step scratch: glibc malloc tunables, set by re-exec at start.

XLA:CPU allocates each step's scratch buffers with malloc and frees them at the end of the
step. glibc serves such large blocks with fresh `mmap`s and unmaps them on free, so every step
page-faults gigabytes in again (595k minor faults and 2 s of system time per step at ViT-B/16
video_only 8 frames batch 1, measured).

TUNABLES: at most two arenas, no mmap for large blocks, no trimming. The scratch then comes
from malloc's heap and stays there between steps: at B/16 8f b1, 0-149k instead of ~580k
faults and 0.03-0.48 instead of ~1.9 s of system time per step; the cost is RSS: peak 3.72 or
6.06 GiB vs ~3.55 untuned (when a step's scratch comes from the second, mmapped arena, two are
resident). benchmarks/NOTES.md entry 1 has the A/B; PGVT_JAX_MALLOC_TUNING=0 for the lowest RSS.
Why two arenas, not one (this module's first setting): with a single arena every thread's small
allocations share the heap with the scratch, fragment it, and the heap grew step after step
(Ti/8: RSS 0.85 -> 1.86 GiB over 25 steps; B/16 peak 5.93 GiB). Transparent huge pages
(`glibc.malloc.hugetlb=1`) kept RSS untuned but cost 2-3x the untuned system time at B/16.

glibc reads GLIBC_TUNABLES only at process start, so `reexec_with_tunables()` re-executes
the current command line once with them set. It does nothing when:
  * the marker variable PGVT_JAX_MALLOC_TUNING is set (it is, after the re-exec: never loops;
    set it to 0 to opt out);
  * the user set GLIBC_TUNABLES or any MALLOC_* variable (their choice wins);
  * the C library is not glibc, or the platform is not Linux.

Users embedding the library (notebooks, own scripts) on a CPU start Python (or Jupyter) with
  GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4611686018427387904
(the value of TUNABLES) to get the same effect; on GPU/TPU it does not matter.
"""

from __future__ import annotations

import os
import platform
import sys

MARKER = "PGVT_JAX_MALLOC_TUNING"
# Two arenas (one is the sbrk heap), never mmap a block, never give the top of a heap back
# (2**62 bytes: "never").
TUNABLES = ("glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:"
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
