r"""The planner's table: shipped configs x TPU slices, each cell one `pgvt_jax.plan` run.

    # compile (resumable: a cell whose JSON exists is skipped); one process per cell
    python -m benchmarks.plan_table --out=benchmarks/plans --models=pgvt_b16,video_b16 \
        --topologies=v5e-1,v6e-1,v2-8,v3-8,v5e-4,v5e-8
    # the markdown table of every cell in --out (benchmarks/RESULTS.md)
    python -m benchmarks.plan_table --out=benchmarks/plans --render

Each cell plans the config at its recipe's global batch with remat and micro-batches "auto"
(pgvt_jax/fitting.py: the cheapest setting that fits) and the eval step at the config's eval
batch, compiled for compile-only TPU devices (libtpu: run it in the `[tpu]` virtualenv, see
docs/planning.md). The largest batch one pass holds is read from the fit's own probes: the
chosen k means B/k clips fit per pass; a failed smaller k bounds it from above.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# name -> (label, --config spec, extra flags)
MODELS = {
    "pgvt_b16": ("PGVT B/16 48+16", "configs/diving48.py", []),
    "video_b16": ("video_only B/16 16f", "configs/diving48.py:variant=video_only", []),
    "pgvt_l14": ("PGVT L/14 48+16", "configs/diving48.py:vit_l14", []),
    "tsf_paab": ("TimeSformer-B/16 + PAAB 8f", "configs/smarthome.py:paab", []),
    "tsf_paat": ("TimeSformer-B/16 + PAAT 8f", "configs/smarthome.py:paat", []),
}
TOPOLOGIES = ("v2-8", "v3-8", "v5e-1", "v5e-4", "v5e-8", "v6e-1")


def cell_path(out: str, model: str, topology: str) -> str:
  return os.path.join(out, f"{model}__{topology}.json")


def run_cell(out: str, model: str, topology: str, timeout: int) -> None:
  path = cell_path(out, model, topology)
  _, spec, extra = MODELS[model]
  cmd = [sys.executable, "-m", "pgvt_jax.plan", f"--config={spec}", f"--topology={topology}",
         "--max_batch_search=false", f"--json={path}.tmp", *extra]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  t = time.time()
  print(f"[{time.strftime('%H:%M:%S')}] {model} on {topology}: {' '.join(cmd[2:])}", flush=True)
  log = path[:-5] + ".log"
  with open(log, "w") as fh:
    try:
      rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                          timeout=timeout).returncode
    except subprocess.TimeoutExpired:
      rc = "timeout"
  if rc == 0 and os.path.exists(path + ".tmp"):
    os.replace(path + ".tmp", path)
  print(f"   -> rc {rc} in {time.time() - t:.0f} s (log {log})", flush=True)


def _gib(b) -> str:
  return f"{b / 2 ** 30:.2f}" if b else "-"


def one_pass_bounds(plan: dict) -> str:
  """Clips per device one pass holds, from the fit's probes: 'm' (chosen k=1) or 'm..M-1'."""
  fit, batch = plan.get("fit"), plan["train"]["global_batch"]
  n = plan["target"]["num_devices"]
  if not fit:
    return "-"
  same = [(k, ok) for r, k, ok in fit["probes"] if r == fit["remat"]]
  ok_m = [batch // n // k for k, ok in same if ok]
  bad_m = [batch // n // k for k, ok in same if not ok]
  lo = max(ok_m) if ok_m else 0
  hi = min((m for m in bad_m if m > lo), default=None)
  return f">= {lo}" if hi is None else f"{lo}..{hi - 1}" if hi - 1 > lo else f"{lo}"


def render(out: str) -> str:
  rows = ["| model | slice | global batch | fits | remat, micro-batches (k) | HBM/device (GiB) "
          "| clips/device per pass | eval fits (GiB) | roofline clips/s | compiles (min) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
  for model, (label, _, _) in MODELS.items():
    for topo in TOPOLOGIES:
      path = cell_path(out, model, topo)
      if not os.path.exists(path):
        continue
      with open(path) as fh:
        plan = json.load(fh)[0]
      tr, ev = plan["train"], plan["eval"]
      fits = "yes" if plan.get("fit") and tr["fits"] else "NO"
      setting = (f"{tr['remat']}, k={tr['micro_batches']}" if plan.get("fit")
                 else f"nothing tried ({tr['remat']}, k={tr['micro_batches']} shown)")
      limit = plan["target"]["limit_bytes_per_device"]
      rate = f"{tr['clips_per_s']:.1f}" if tr.get("clips_per_s") else "-"
      rows.append(
          f"| {label} | {topo} | {tr['global_batch']} | {fits} | {setting} | "
          f"{_gib(tr['total_bytes'])} of {_gib(limit)} | {one_pass_bounds(plan)} | "
          f"{'yes' if ev['fits'] else 'NO'} ({_gib(ev['total_bytes'])}) | {rate} | "
          f"{plan['compiles']} ({plan['compile_s'] / 60:.0f}) |")
  return "\n".join(rows)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="benchmarks/plans")
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--topologies", default=",".join(TOPOLOGIES))
  p.add_argument("--timeout", type=int, default=4 * 3600, help="seconds per cell")
  p.add_argument("--render", action="store_true", help="only print the table")
  args = p.parse_args(argv)
  if not args.render:
    os.makedirs(args.out, exist_ok=True)
    for model in args.models.split(","):
      if model not in MODELS:
        p.error(f"--models: unknown {model!r}; known: {sorted(MODELS)}")
      for topo in args.topologies.split(","):
        if not os.path.exists(cell_path(args.out, model, topo)):
          run_cell(args.out, model, topo, args.timeout)
  print(render(args.out))


if __name__ == "__main__":
  main()
