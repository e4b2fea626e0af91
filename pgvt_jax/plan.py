r"""Fits before you rent: compile the trainer's steps for a TPU slice (or this machine) and print
per-device memory, fit, the largest global batch per remat policy and a roofline bound.

    python -m pgvt_jax.plan --config=configs/demo.py --topology=v5e-4
    python -m pgvt_jax.plan --config=configs/diving48.py --topology=v5e-1,v6e-1 \
        --remat=full --max_compiles=3
    python -m pgvt_jax.plan --config=configs/diving48.py:variant=video_only --topology=v5e-1 \
        --max_batch_search=false --json=/tmp/plan.json
    python -m pgvt_jax.plan --config=configs/demo.py              # this machine's devices

TPU names (pgvt_jax.targets.TOPOLOGIES): v2-8, v3-8, v4-8, v5p-8, v5e-1/4/8, v6e-1/4/8, or a raw
jax topology ("v5e:4x4"). Compile-only TPU devices need libtpu (`pip install "pgvt_jax[tpu]"`,
in a virtualenv of its own: docs/planning.md); with only TPU names given this sets
JAX_PLATFORMS=cpu (unless set), so the host side runs on the CPU of a machine without TPUs.

Every probe is a full XLA compile (minutes for a B/16 train step on a small CPU host; the
measured times are in docs/planning.md and benchmarks/RESULTS.md): --remat and --max_compiles
bound the search, --max_batch_search=false skips it.
"""

import os
import sys

if __name__ == "__main__":  # before JAX starts: compile-only TPUs need no TPU backend
  _targets = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--topology=")]
  if _targets and "local" not in ",".join(_targets).split(","):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags

from pgvt_jax import cli, config_files, planner

GiB = 2 ** 30


def _define_flags() -> None:
  config_files.DEFINE_config_file("config", None, "Experiment config file.", lock_config=False)
  flags.DEFINE_list("topology", ["local"], "Targets: local, " + ", ".join(planner.TOPOLOGIES)
                    + " or a raw jax topology name (v5e:4x4).")
  flags.DEFINE_list("remat", list(planner.REMATS), "Remat policies to search the batch for.")
  flags.DEFINE_bool("max_batch_search", True, "Search the largest fitting global batch.")
  flags.DEFINE_integer("max_compiles", 4, "Compiles per remat policy in the batch search.")
  flags.DEFINE_integer("max_batch", 1 << 16, "Largest global batch the search tries.")
  flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s per device (default: pgvt_jax/hardware.py;"
                     " needed for a roofline on CPU).")
  flags.DEFINE_float("hbm_gbps", None, "Memory bandwidth GB/s per device (default: the table).")
  flags.DEFINE_float("hbm_gib", None, "Usable memory GiB per device (default: the table).")
  flags.DEFINE_string("json", None, "Write the plans as JSON to this file ('-': stdout only).")
  flags.mark_flag_as_required("config")


def _gib(b) -> str:
  """Bytes for a table cell: GiB with 2 decimals, small sizes in M/K (0 -> "-")."""
  if not b:
    return "-"
  if b >= GiB / 10:
    return f"{b / GiB:.2f}G"
  return f"{b / 2 ** 20:.1f}M" if b >= 2 ** 20 else f"{b / 2 ** 10:.0f}K"


def format_plan(p: dict) -> str:
  """A readable block for one (model, target) plan."""
  t, m, sh = p["target"], p["model"], p["shardings"]
  peak, bw = t["peak_flops_per_device"], t["hbm_bytes_per_s_per_device"]
  lines = [
      f"== {m['family']} {m['variant']} ViT-{m['backbone']} {m['image_size'] or ''}px video "
      f"{m['video_frames']}f pose {m['pose_frames']}f on {t['name']}: {t['num_devices']} x "
      f"{t['device_kind']} ({t['platform']}), mesh {sh['mesh']}",
      f"   dtype {m['dtype']}, attention {m['attention_impl']} ({m['auto_reason']})",
      f"   per device: usable {_gib(t['limit_bytes_per_device'])}, peak "
      + (f"{peak / 1e12:.1f} TFLOP/s" if peak else "? (--peak_tflops)") + ", "
      + (f"{bw / 1e9:.0f} GB/s" if bw else "? (--hbm_gbps)"),
      f"   shardings: batch {sh['batch']}; params {sh['params']}; state {sh['state']}"]
  lines += [f"   note: {n}" for n in p.get("notes", [])]
  if p.get("fit"):
    tried = ", ".join(f"{r}/{k}{'' if ok else 'x'}" for r, k, ok in p["fit"]["probes"])
    lines.append(f"   recipe fits with remat={p['fit']['remat']}, "
                 f"{p['fit']['micro_batches']} micro-batch(es) per step (tried remat/k: {tried}; "
                 "x = does not fit)")
  if p.get("fit_error"):
    lines.append(f"   DOES NOT FIT: {p['fit_error']}")
  lines.append("   bytes and FLOPs per device; extra = staged batches (+ train state during eval)")
  lines.append(f"   {'step':5s} {'batch':>6s} {'remat':9s} {'k':>3s} {'fits':4s} {'args':>6s} "
               f"{'out':>6s} {'alias':>6s} {'temp':>6s} {'extra':>6s} {'total':>7s} "
               f"{'GFLOP/dev':>10s} {'GB/dev':>8s} {'step >=':>10s} {'clips/s <=':>10s} "
               f"{'compile':>8s}")
  for key in ("train", "eval"):
    r = p[key]
    bound = f"{r['roofline_s'] * 1e3:8.2f}ms" if r["roofline_s"] else f"{'-':>10s}"
    rate = f"{r['clips_per_s']:10.1f}" if r["clips_per_s"] else f"{'-':>10s}"
    lines.append(
        f"   {key:5s} {r['global_batch']:6d} {r['remat']:9s} {r['micro_batches']:3d} "
        f"{'yes' if r['fits'] else 'NO':4s} "
        f"{_gib(r['argument_bytes']):>6s} {_gib(r['output_bytes']):>6s} "
        f"{_gib(r['alias_bytes']):>6s} {_gib(r['temp_bytes']):>6s} {_gib(r['extra_bytes']):>6s} "
        f"{_gib(r['total_bytes']):>7s} {r['flops'] / 1e9:10.1f} "
        f"{r['bytes_accessed'] / 1e9:8.2f} {bound} {rate} {r['compile_s']:7.1f}s"
        + (f"  [{r['bound']}-bound]" if r["bound"] else ""))
    if r["error"]:
      lines.append(f"         XLA: {r['error']}")
  for s in p["max_batch"]:
    probes = ", ".join(f"{b}{'' if ok else 'x'}" for b, ok in s["probes"])
    upper = (f"< {s['first_failing']}" if s["first_failing"] else "no failure found")
    lines.append(f"   max global train batch, remat={s['remat']}: {s['max_batch']} "
                 f"({'exact' if s['exact'] else upper}; probes {probes}; x = does not fit)")
  lines.append(f"   {p['compiles']} compiles, {p['compile_s']:.1f} s")
  return "\n".join(lines)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  bad = sorted(set(f.remat) - set(planner.REMATS))
  if bad:
    raise app.UsageError(f"--remat: unknown policies {bad}; known: {list(planner.REMATS)}")
  plans = []
  for name in f.topology:
    tgt = planner.target(name, peak_tflops=f.peak_tflops, hbm_gbps=f.hbm_gbps,
                         hbm_gib=f.hbm_gib)
    p = planner.Planner(f.config, tgt).plan(remats=f.remat, search=f.max_batch_search,
                                            max_compiles=f.max_compiles,
                                            max_batch=f.max_batch)
    plans.append(p)
    if f.json != "-":
      print(format_plan(p), flush=True)
  if f.json:
    text = planner.to_json(plans)
    if f.json == "-":
      print(text)
    else:
      with open(f.json, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
  cli.run_app(main, _define_flags, __doc__)  # --help: usage, exit 0
