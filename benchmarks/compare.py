r"""pgvt_jax vs the PyTorch AIM reference: interleaved rounds, each side in a fresh process.

    python -m benchmarks.compare --config=configs/diving48.py:variant=video_only \
        --batch=1 --frames=8 --rounds=2 [--mode=train|both] [--json=FILE]

Each round runs `python -m benchmarks.train_step --impl=jax ...` then `--impl=torch ...` (same
config, batch, frames, steps, precision, environment), so load changes hit both sides alike;
the per-round rows show the spread. Prints a Markdown table ready for benchmarks/RESULTS.md:
step time median (min-max) per side, the JAX/PyTorch time ratio (< 1: JAX faster), the same
for the forward (--mode=both: multi-view inference), peak RSS (each process's peak over all
it timed), minor faults and CPU seconds (user + system, all threads) per train step, with the
1-minute load average when each process started. Under load, CPU s per step moves less than
wall time (though spinning thread pools count too). This process imports neither JAX nor torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from pgvt_jax import malloc_tuning

IMPLS = ("jax", "torch")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True, help="as for benchmarks.train_step")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--frames", type=int, default=None)
  p.add_argument("--mode", choices=("train", "inference", "both"), default="both")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--steps", type=int, default=10, help="timed steps per process (median)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--peak_tflops", type=float, default=None)
  p.add_argument("--torch_malloc_tuning", type=int, choices=(0, 1), default=1,
                 help="1: the torch side gets the same malloc tunables as JAX; 0: glibc "
                      "defaults for torch (PGVT_JAX_MALLOC_TUNING=0)")
  p.add_argument("--json", default=None, help="also write every run's result here")
  args = p.parse_args(argv)
  if args.rounds < 1:
    p.error("--rounds must be >= 1")
  return args


def run_one(impl: str, args: argparse.Namespace) -> dict:
  """One fresh `benchmarks.train_step` process; its JSON result plus load and wall time."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "r.json")
    cmd = [sys.executable, "-m", "benchmarks.train_step", f"--impl={impl}",
           f"--config={args.config}", f"--batch={args.batch}", f"--mode={args.mode}",
           f"--steps={args.steps}", f"--warmup={args.warmup}", f"--json={out}"]
    cmd += [f"--frames={args.frames}"] if args.frames else []
    cmd += [f"--peak_tflops={args.peak_tflops}"] if args.peak_tflops else []
    env = dict(os.environ)
    if impl == "torch" and not args.torch_malloc_tuning:
      env[malloc_tuning.MARKER] = "0"
    load = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(out) as f:
      r = json.load(f)
  return {**r, "load_avg_1m_at_start": load, "process_wall_s": time.perf_counter() - t}


def _cell(r: dict, mode: str) -> str:
  s = r.get(mode)
  return f"{s['step_s']:.3f} ({s['step_s_min']:.3f}-{s['step_s_max']:.3f})" if s else "-"


def _ratio(j: dict, t: dict, mode: str) -> float | None:
  return j[mode]["step_s"] / t[mode]["step_s"] if mode in j and mode in t else None


def _dtype(model: dict, backend: str) -> str:
  """config.model.dtype with "auto" resolved as pgvt_jax.models.config.auto_dtype does."""
  d = model.get("dtype", "float32")
  return ("float32" if backend == "cpu" else "bfloat16") + " (auto)" if d == "auto" else d


def markdown(rounds: list[dict], args: argparse.Namespace) -> str:
  """The table (per round, then medians over rounds)."""
  j0 = rounds[0]["jax"]
  m = j0["config"]
  gib = lambda r: f"{r['peak_memory_bytes'] / 2**30:.2f}"
  faults = lambda r: f"{r['train']['minor_faults_per_step']:,.0f}" if "train" in r else "-"
  cpu = lambda r: (f"{r['train']['user_s_per_step'] + r['train']['system_s_per_step']:.1f}"
                   if "train" in r else "-")
  fmt = lambda x: "-" if x is None else f"{x:.2f}"
  lines = [
      f"`python -m benchmarks.compare --config={args.config} --batch={args.batch}"
      + (f" --frames={args.frames}" if args.frames else "")
      + f" --mode={args.mode} --rounds={args.rounds} --steps={args.steps}"
      f" --warmup={args.warmup}"
      + ("" if args.torch_malloc_tuning else " --torch_malloc_tuning=0") + "`",
      "",
      f"{m['variant']} ViT-{m['backbone']} {m['image_size']} px, {m['video_frames']} frames, "
      f"batch {args.batch}, {_dtype(m, j0['backend'])}; {platform.machine()} "
      f"{j0['device_kind']}, {j0['threads']} threads; jax {j0['impl_version']}, torch "
      f"{rounds[0]['torch']['impl_version']}; malloc tuned: jax "
      f"{j0['malloc_tuned']}, torch {rounds[0]['torch']['malloc_tuned']}. Step time s = "
      f"median of {args.steps} (min-max); ratio = JAX / PyTorch (< 1: JAX faster).",
      "",
      "| round | load at start (jax / torch) | JAX train step s | PyTorch train step s "
      "| ratio | JAX forward s | PyTorch forward s | ratio | peak RSS GiB (jax / torch) "
      "| faults / train step (jax / torch) | CPU s / train step (jax / torch) |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for i, r in enumerate(rounds):
    j, t = r["jax"], r["torch"]
    lines.append(
        f"| {i + 1} | {j['load_avg_1m_at_start']:.1f} / {t['load_avg_1m_at_start']:.1f} "
        f"| {_cell(j, 'train')} | {_cell(t, 'train')} | {fmt(_ratio(j, t, 'train'))} "
        f"| {_cell(j, 'inference')} | {_cell(t, 'inference')} "
        f"| {fmt(_ratio(j, t, 'inference'))} | {gib(j)} / {gib(t)} "
        f"| {faults(j)} / {faults(t)} | {cpu(j)} / {cpu(t)} |")
  s = summary(rounds)
  med = lambda k: fmt(s.get(k))
  lines.append(
      f"| median | | {med('jax_train_s')} | {med('torch_train_s')} | **{med('train_ratio')}** "
      f"| {med('jax_inference_s')} | {med('torch_inference_s')} "
      f"| **{med('inference_ratio')}** | {med('jax_rss_gib')} / {med('torch_rss_gib')} | | |")
  return "\n".join(lines)


def summary(rounds: list[dict]) -> dict:
  """Medians over rounds of each side's step time and peak RSS; ratio of the medians."""
  out = {}
  for mode in ("train", "inference"):
    if all(mode in r[i] for r in rounds for i in IMPLS):
      for impl in IMPLS:
        out[f"{impl}_{mode}_s"] = statistics.median(r[impl][mode]["step_s"] for r in rounds)
      out[f"{mode}_ratio"] = out[f"jax_{mode}_s"] / out[f"torch_{mode}_s"]
      ratios = [_ratio(r["jax"], r["torch"], mode) for r in rounds]
      out[f"{mode}_ratio_min"], out[f"{mode}_ratio_max"] = min(ratios), max(ratios)
  for impl in IMPLS:
    out[f"{impl}_rss_gib"] = statistics.median(
        r[impl]["peak_memory_bytes"] / 2**30 for r in rounds)
  return out


def run(args: argparse.Namespace, log=print) -> dict:
  """All rounds, interleaved: jax, torch, jax, torch, ..."""
  rounds = []
  for i in range(args.rounds):
    r = {}
    for impl in IMPLS:
      log(f"round {i + 1}/{args.rounds}: {impl} ...")
      r[impl] = run_one(impl, args)
      log(f"  train {_cell(r[impl], 'train')} s, forward {_cell(r[impl], 'inference')} s")
    rounds.append(r)
  return {"rounds": rounds, "summary": summary(rounds), "markdown": markdown(rounds, args)}


def main(argv=None) -> None:
  args = parse_args(argv)
  result = run(args, log=lambda msg: print(msg, file=sys.stderr, flush=True))
  print(result["markdown"])
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
  main()
