"""Cheaper per-step scratch memory on CPU: a glibc malloc tunable, set by re-exec'ing once at start.

XLA:CPU allocates each step's scratch buffers with malloc and frees them at the end of the
step. glibc serves such large blocks with fresh `mmap`s and unmaps them on free, so every step
page-faults gigabytes in again, 4 KiB at a time (0.6M minor faults per step at ViT-B/16 8 frames
batch 1; half of a 16-frame batch-2 step was system time).

TUNABLES asks glibc to back its mmapped blocks with transparent huge pages
(`glibc.malloc.hugetlb=1`: madvise(MADV_HUGEPAGE), glibc >= 2.35): the scratch still comes and
goes each step, so peak and steady RSS stay what they are without tuning, but it faults in 2 MiB
at a time (measured: 67,900 -> ~500 faults per step at Ti/8, benchmarks/NOTES.md entry 1).
Keeping freed memory instead (one arena, no mmap, no trimming: this module's first version)
removed more faults but grew RSS by fragmentation, 0.9 -> 1.9 GiB at Ti/8 and still growing.

glibc reads GLIBC_TUNABLES only at process start, so `reexec_with_tunables()` re-executes
the current command line once with them set. It does nothing when:
  * the marker variable PGVT_JAX_MALLOC_TUNING is set (it is, after the re-exec: never loops;
    set it to 0 to opt out);
  * the user set GLIBC_TUNABLES or any MALLOC_* variable (their choice wins);
  * the C library is not glibc, the platform is not Linux, or transparent huge pages are
    disabled (/sys/kernel/mm/transparent_hugepage/enabled says [never]): nothing to gain.

Users embedding the library (notebooks, own scripts) on a CPU start Python with
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1
(the value of TUNABLES) to get the same effect; on GPU/TPU it does not matter.
"""

from __future__ import annotations

import os
import platform
import sys

MARKER = "PGVT_JAX_MALLOC_TUNING"
# Transparent huge pages for malloc's mmapped blocks (and its heap).
TUNABLES = "glibc.malloc.hugetlb=1"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def _user_set_allocator(environ) -> bool:
  return "GLIBC_TUNABLES" in environ or any(k.startswith("MALLOC_") for k in environ)


def thp_mode(path: str = THP_ENABLED) -> str:
  """The kernel's transparent-huge-page mode ("always", "madvise", "never"; "" unknown)."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return ""
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else ""


def should_reexec(environ=None, thp: str | None = None) -> bool:
  """True when this process should re-exec itself with TUNABLES (see the module docstring)."""
  environ = os.environ if environ is None else environ
  if MARKER in environ or _user_set_allocator(environ):
    return False
  if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
    return False
  return (thp_mode() if thp is None else thp) != "never"


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
