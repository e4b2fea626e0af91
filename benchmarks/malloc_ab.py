r"""A/B of glibc malloc settings for the CPU train step, interleaved in the same minutes.

    python -m benchmarks.malloc_ab --config=configs/diving48.py:tiny,variant=video_only \
        --frames=8 --rounds=2 --steps=6
    python -m benchmarks.malloc_ab --config=configs/diving48.py:variant=video_only \
        --frames=8 --rounds=1 --steps=4 --variants=none,default,mmap32

Each round runs `benchmarks.train_step` once per variant (a fresh process each, in the
order given, so every variant sees the same load); the table gives per variant the median
over rounds of step time, minor faults and system time per step, peak RSS, and the RSS once
compiled. Variants (`--variants`, comma-separated names from VARIANTS):
  none     no tunables (PGVT_JAX_MALLOC_TUNING=0): glibc's defaults
  default  what pgvt_jax.main / the benchmarks set (pgvt_jax.malloc_tuning.TUNABLES, now
           the same as "arena2_nommap_trim")
  others   the GLIBC_TUNABLES string given in VARIANTS
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from pgvt_jax import malloc_tuning

_NEVER = 2 ** 62  # trim_threshold meaning "never give the top of the heap back"
_MMAP_MAX_THRESHOLD = 32 << 20  # glibc's largest mmap_threshold on 64-bit (HEAP_MAX / 2)
VARIANTS = {
    "none": None,
    "default": malloc_tuning.TUNABLES,
    # pgvt_jax's first default: keep freed memory (one arena, never mmap, never trim).
    "arena1_nommap_trim": ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                           f"glibc.malloc.trim_threshold={_NEVER}"),
    "mmap32": (f"glibc.malloc.mmap_threshold={_MMAP_MAX_THRESHOLD}:"
               f"glibc.malloc.trim_threshold={_NEVER}"),
    "arena2_nommap_trim": ("glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:"
                           f"glibc.malloc.trim_threshold={_NEVER}"),
    "arena2_mmap32": (f"glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold="
                      f"{_MMAP_MAX_THRESHOLD}:glibc.malloc.trim_threshold={_NEVER}"),
    "nommap": "glibc.malloc.mmap_max=0",
    # Transparent huge pages for malloc's mmapped blocks (glibc >= 2.35; works when
    # /sys/kernel/mm/transparent_hugepage/enabled is "madvise" or "always").
    "thp": "glibc.malloc.hugetlb=1",
    "thp_arena2": ("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:"
                   f"glibc.malloc.trim_threshold={_NEVER}"),
}


def _env(variant: str) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k not in (malloc_tuning.MARKER, "GLIBC_TUNABLES") and not k.startswith("MALLOC_")}
  tunables = VARIANTS[variant]
  if variant == "none":
    env[malloc_tuning.MARKER] = "0"
  elif variant == "default":
    pass  # the harness re-execs itself with malloc_tuning.TUNABLES
  else:
    env["GLIBC_TUNABLES"] = tunables
  return env


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True)
  p.add_argument("--frames", type=int, default=None)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--variants", default="none,thp,arena1_nommap_trim,arena2_nommap_trim")
  p.add_argument("--json", default="", help="also write every run's results here")
  args = p.parse_args()
  names = args.variants.split(",")
  for n in names:
    if n not in VARIANTS:
      raise SystemExit(f"--variants: unknown {n!r}; known: {sorted(VARIANTS)}")
  runs: dict[str, list[dict]] = {n: [] for n in names}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for n in names:
        out = os.path.join(tmp, f"{n}-{r}.json")
        cmd = [sys.executable, "-m", "benchmarks.train_step", f"--config={args.config}",
               f"--batch={args.batch}", f"--steps={args.steps}", f"--warmup={args.warmup}",
               f"--json={out}", "--peak_tflops=1"]
        if args.frames:
          cmd.append(f"--frames={args.frames}")
        proc = subprocess.run(cmd, env=_env(n), capture_output=True, text=True, check=False)
        if proc.returncode:
          print(f"{n} round {r} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}",
                file=sys.stderr)
          continue
        with open(out) as f:
          res = json.load(f)
        runs[n].append(res)
        t = res["train"]
        print(f"round {r} {n:20s} step {t['step_s']:.3f} s  faults/step "
              f"{t['minor_faults_per_step']:.0f}  sys {t['system_s_per_step']:.3f} s  peak RSS "
              f"{res['peak_memory_bytes'] / 2**30:.2f} GiB  RSS compiled "
              f"{t['rss_after_compile_bytes'] / 2**30:.2f} GiB  after steps "
              f"{t['rss_after_steps_bytes'] / 2**30:.2f} GiB", flush=True)
  med = lambda xs: statistics.median(xs) if xs else float("nan")
  print(f"\nload average at the end: {os.getloadavg()}")
  print("| variant | GLIBC_TUNABLES | step s | minor faults / step | system s / step | "
        "peak RSS GiB | peak RSS once compiled GiB | RSS after steps GiB | runs |")
  print("|---|---|---|---|---|---|---|---|---|")
  for n in names:
    rs = runs[n]
    g = lambda key: med([x["train"][key] for x in rs])
    print(f"| {n} | `{VARIANTS[n] or '-'}` | {g('step_s'):.3f} | "
          f"{g('minor_faults_per_step'):,.0f} | {g('system_s_per_step'):.3f} | "
          f"{med([x['peak_memory_bytes'] for x in rs]) / 2**30:.2f} | "
          f"{g('peak_rss_after_compile_bytes') / 2**30:.2f} | "
          f"{g('rss_after_steps_bytes') / 2**30:.2f} | {len(rs)} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "runs": runs}, f, indent=1, default=str)


if __name__ == "__main__":
  main()
