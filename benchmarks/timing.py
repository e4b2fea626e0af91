"""Step timing shared by the JAX harness and the PyTorch reference (no JAX or torch import)."""

from __future__ import annotations

import os
import resource
import statistics
import time


def timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def time_steps(run, n_steps: int, warmup: int) -> dict:
  """Runs `run()` (which must block) warmup + n_steps times; per-step times and rusage."""
  for _ in range(warmup):
    run()
  times, faults, peaks = [], [], []
  before = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(n_steps):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times.append(timed(run))
    # Per step: the allocator's state can change mid-run (benchmarks/NOTES.md 1, 10).
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    peaks.append(peak_rss_bytes())
  after = resource.getrusage(resource.RUSAGE_SELF)
  return {"step_s": statistics.median(times), "step_s_min": min(times),
          "step_s_max": max(times), "timed_steps": n_steps, "step_s_each": times,
          "minor_faults_each_step": faults, "peak_rss_each_step_bytes": peaks,
          "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / n_steps,
          "system_s_per_step": (after.ru_stime - before.ru_stime) / n_steps,
          "user_s_per_step": (after.ru_utime - before.ru_utime) / n_steps}


def peak_rss_bytes() -> int:
  """This process's peak resident set size.

  Linux: VmHWM of /proc/self/status, the peak of the current address space. Not ru_maxrss:
  that survives execve, so a child started from a large parent (subprocess = fork + exec, or
  malloc_tuning's re-exec) would report the parent's peak if it was higher.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024  # kB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def rss_bytes() -> tuple[int, int]:
  """(current RSS, peak RSS) of this process in bytes (current: Linux only, else 0)."""
  peak = peak_rss_bytes()
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"), peak
  except OSError:
    return 0, peak


def cpu_threads() -> int:
  """Cores this process may run on: the size of XLA:CPU's default intra-op thread pool."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def summarise(times: dict, batch: int, compile_s: float, model_flops: float,
              hlo: float, peak_flops: float) -> dict:
  """`time_steps` fields plus throughput, FLOP/s and MFU (the fields both harnesses print)."""
  per_s = model_flops / times["step_s"]
  return {**times, "compile_s": compile_s, "clips_per_s": batch / times["step_s"],
          "model_flops": model_flops, "hlo_flops": hlo, "flops_per_s": per_s,
          "mfu": per_s / peak_flops}
