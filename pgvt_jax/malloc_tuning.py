"""Fewer page faults for XLA:CPU's per-step scratch: glibc malloc tunables, set by re-exec at start.

What and why: XLA:CPU mallocs each step's scratch buffers and frees them at the end of the
step; glibc serves blocks that large with fresh `mmap`s and unmaps them on free, so every step
page-faults gigabytes in again. TUNABLES (at most two arenas, no mmap for large blocks, no
trimming) keep the scratch in malloc's heaps between steps: far fewer faults and less system
time per step, paid for in peak RSS. Two arenas, not one: with a single arena every thread's
small allocations land in the freed scratch and the heap grows step after step. The A/B
figures, the RSS trade and the settings rejected (one arena, transparent huge pages,
mmap_threshold) are in benchmarks/NOTES.md entry 1. PGVT_JAX_MALLOC_TUNING=0 for the lowest RSS.

glibc reads GLIBC_TUNABLES only at process start, so `reexec_with_tunables()` re-executes the
command line once with them set. It does so only when all of these hold (`why_not_reexec`
names the first that does not):
  * the marker variable PGVT_JAX_MALLOC_TUNING is unset (it is set after the re-exec: never
    loops; set it to 0 to opt out), and so are GLIBC_TUNABLES and MALLOC_* (the user's
    choice wins);
  * Linux with glibc;
  * the process was started as `python -m <this entry point>`: `sys.orig_argv` runs, with
    `-m`, the module that is `__main__`, and no IPython/Jupyter kernel is loaded. A kernel
    running `%run -m pgvt_jax.main` or `runpy` is left alone: re-executing would restart the
    kernel's own command line;
  * the host is CPU-only, decided without starting JAX (XLA_FLAGS must still be settable
    afterwards, pgvt_jax/xla_flags.py): JAX_PLATFORMS, when set, must be exactly `cpu`; when
    it is unset (JAX picks an accelerator if it can), there must be no accelerator device
    node (/dev/nvidia*, /dev/accel* (TPU), /dev/vfio/<group> (TPU v5e and later), /dev/kfd
    (AMD)) and no accelerator plugin for JAX installed (libtpu, a `jax_plugins.*` module such
    as the CUDA plugin, or a `jax_plugins` entry point). Either sign is enough to skip: on a
    GPU/TPU host the scratch is device memory, so the tunables do not help, while the two host
    arenas, shared by the data-loading threads, would never give memory back. Set
    JAX_PLATFORMS=cpu to get the tuning on such a host.

Users embedding the library (notebooks, own scripts) on a CPU start Python (or Jupyter) with
  GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4611686018427387904
(the value of TUNABLES) to get the same effect; on GPU/TPU it does not matter.
"""

from __future__ import annotations

import glob
import importlib.machinery
import importlib.metadata
import os
import pkgutil
import platform
import sys
from typing import Mapping, Optional, Sequence

MARKER = "PGVT_JAX_MALLOC_TUNING"
# Two arenas (one is the sbrk heap), never mmap a block, never give the top of a heap back
# (2**62 bytes: "never").
TUNABLES = ("glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:"
            f"glibc.malloc.trim_threshold={2**62}")
# Loaded in a Jupyter/Colab kernel; never by a plain `python -m` launcher this early.
KERNEL_MODULES = ("ipykernel", "IPython", "google.colab")
# Interpreter options that take a value (the next word when not attached: `-W error`).
_OPTIONS_WITH_VALUE = ("W", "X")


def _user_set_allocator(environ) -> bool:
  return "GLIBC_TUNABLES" in environ or any(k.startswith("MALLOC_") for k in environ)


def launched_module(orig_argv: Sequence[str]) -> Optional[str]:
  """The module that the interpreter command line `orig_argv` runs with `-m`, else None."""
  args = list(orig_argv[1:])
  i = 0
  while i < len(args):
    arg = args[i]
    if arg == "--check-hash-based-pycs":
      i += 2
      continue
    if not arg.startswith("-") or arg.startswith("--") or arg == "-":
      return None  # a script, stdin, or a long option that is not an interpreter's
    for j, c in enumerate(arg[1:], start=1):  # a cluster of short options: -Im mod, -bb
      rest = arg[j + 1:]
      if c == "m":
        return rest or (args[i + 1] if i + 1 < len(args) else None)
      if c == "c":
        return None
      if c in _OPTIONS_WITH_VALUE:
        i += 0 if rest else 1  # the value is `rest` or the next word
        break
    i += 1
  return None


def launch_problem(orig_argv: Optional[Sequence[str]], main_module: Optional[str],
                   loaded: Sequence[str]) -> Optional[str]:
  """Why this is not a `python -m <entry point>` launch (None if it is).

  `main_module` is `__main__.__spec__.name` (None without a spec); `loaded`, the names in
  sys.modules.
  """
  kernel = [m for m in KERNEL_MODULES if m in loaded]
  if kernel:
    return f"running inside a kernel ({kernel[0]} is loaded)"
  if orig_argv is None:
    return "sys.orig_argv unavailable"
  launched = launched_module(orig_argv)
  if launched is None or main_module not in (launched, launched + ".__main__"):
    started = f"`-m {launched}`" if launched else "no `-m` module"
    return (f"not launched as `python -m {main_module or '<entry point>'}` (the interpreter "
            f"was started with {started})")
  return None


def accelerator_devices(dev: str = "/dev") -> list[str]:
  """Device nodes of accelerators JAX can use (see the module docstring)."""
  found = []
  for pattern in ("nvidia*", "accel*", "kfd"):
    found += sorted(glob.glob(os.path.join(dev, pattern)))
  # /dev/vfio/vfio is the VFIO container, present on many hosts; numbered groups are devices.
  found += sorted(p for p in glob.glob(os.path.join(dev, "vfio", "*"))
                  if os.path.basename(p) != "vfio")
  return found


def accelerator_plugins(path: Optional[Sequence[str]] = None) -> list[str]:
  """Installed accelerator backends for JAX, found on `path` (default sys.path) unimported."""
  path = list(sys.path if path is None else path)
  finder = importlib.machinery.PathFinder
  found = ["libtpu"] if finder.find_spec("libtpu", path) is not None else []
  spec = finder.find_spec("jax_plugins", path)  # JAX's namespace package for PJRT plugins
  if spec is not None and spec.submodule_search_locations:
    found += [f"jax_plugins.{m.name}"
              for m in pkgutil.iter_modules(list(spec.submodule_search_locations))]
  for dist in importlib.metadata.distributions(path=path):
    found += [f"{ep.value} (entry point)" for ep in dist.entry_points
              if ep.group == "jax_plugins"]
  return found


def cpu_only_problem(environ: Mapping[str, str], devices: Sequence[str],
                     plugins: Sequence[str]) -> Optional[str]:
  """Why JAX may use an accelerator here (None if it will run on the CPU only)."""
  platforms = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",")
               if p.strip()]
  if platforms:
    return None if platforms == ["cpu"] else f"JAX_PLATFORMS={environ['JAX_PLATFORMS']}"
  if devices:
    return f"accelerator device {devices[0]} (set JAX_PLATFORMS=cpu to tune anyway)"
  if plugins:
    return f"accelerator plugin {plugins[0]} installed (set JAX_PLATFORMS=cpu to tune anyway)"
  return None


def why_not_reexec(environ: Optional[Mapping[str, str]] = None, *,
                   orig_argv: Optional[Sequence[str]] = None, main_module: Optional[str] = None,
                   loaded: Optional[Sequence[str]] = None, devices: Optional[Sequence[str]] = None,
                   plugins: Optional[Sequence[str]] = None) -> Optional[str]:
  """None when this process should re-exec itself with TUNABLES, else the reason it should not.

  Every argument defaults to this process (os.environ, sys.orig_argv, `__main__`'s spec,
  sys.modules, the /dev and sys.path probes); tests pass their own. Cheap checks go first:
  the probes run only when everything else says yes.
  """
  environ = os.environ if environ is None else environ
  if MARKER in environ:
    return f"{MARKER} is set"
  if _user_set_allocator(environ):
    return "GLIBC_TUNABLES or MALLOC_* set by the user"
  if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
    return "not Linux with glibc"
  if orig_argv is None:
    orig_argv = getattr(sys, "orig_argv", None)
  if main_module is None:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    main_module = spec.name if spec is not None else None
  loaded = list(sys.modules) if loaded is None else loaded
  problem = launch_problem(orig_argv, main_module, loaded)
  if problem:
    return problem
  if not environ.get("JAX_PLATFORMS", "").strip():  # JAX would pick an accelerator it finds
    if devices is None:
      devices = accelerator_devices()
    if plugins is None and not devices:
      plugins = accelerator_plugins()
  return cpu_only_problem(environ, devices or [], plugins or [])


def should_reexec(environ=None, **probes) -> bool:
  """True when this process should re-exec itself with TUNABLES (see the module docstring)."""
  return why_not_reexec(environ, **probes) is None


def reexec_with_tunables() -> None:
  """Replaces this process by the same command line with TUNABLES set; returns if not needed.

  Call it first thing in an entry point's `if __name__ == "__main__":` path (before
  threads start or files are written). If exec fails, the process carries on untuned.
  """
  if not should_reexec():
    return
  argv = list(sys.orig_argv)  # checked above: `python [options] -m <this module> ...`
  env = dict(os.environ, GLIBC_TUNABLES=TUNABLES, **{MARKER: "1"})
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable] + argv[1:], env)
  except OSError as e:  # e.g. sys.executable gone: run as is
    print(f"pgvt_jax: could not re-exec with malloc tunables ({e}); continuing without",
          file=sys.stderr)
