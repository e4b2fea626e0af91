r"""The PGVT vs late fusion table (PGVT Table 4) on a built-in class set, as docs/models.md holds it.

    # every row x seed, one training run at a time (resumable: a run with a result is skipped)
    python -m benchmarks.fusion_demo --out=/tmp/fusion --class_set=reach --seeds=0,1,2
    # the markdown table of what --out holds
    python -m benchmarks.fusion_demo --out=/tmp/fusion --render

Rows: pgvt, pose_only, video_only (`configs/demo.py:<class_set>,<variant>`), and late fusion
the paper's way (two stages: `init_from` the pose_only and video_only runs of the same seed,
then `--late_steps` of fine-tuning). Every run reads one copy of the records
(`<out>/data`). Each run's figures go to `<out>/<row>_s<seed>.json`: final top-1, and the
accuracy on the clips whose class needs both factors (labels 0 and 1, towards / away: the
cells where a sum of single-stream scores must fail at least once in four), from the final
eval's confusion matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROWS = ("pgvt", "pose_only", "video_only", "late_fusion")
BOTH_FACTORS = (0, 1)  # "reach towards / away from the ball" in "interaction" and "reach"


def _run_dir(out: str, row: str, seed: int) -> str:
  return os.path.join(out, "runs", f"{row}_s{seed}")


def run(out: str, class_set: str, row: str, seed: int, late_steps: int, extra: list) -> None:
  result = os.path.join(out, f"{row}_s{seed}.json")
  if os.path.exists(result):
    return
  workdir = _run_dir(out, row, seed)
  cmd = [sys.executable, "-m", "pgvt_jax.main", f"--config=configs/demo.py:{class_set},{row}",
         f"--workdir={workdir}", f"--config.seed={seed}",
         f"--config.synthetic_data.data_dir={os.path.join(out, 'data')}", *extra]
  if row == "late_fusion":
    cmd += [f"--config.init_from.pose={_run_dir(out, 'pose_only', seed)}",
            f"--config.init_from.video={_run_dir(out, 'video_only', seed)}",
            f"--config.total_steps={late_steps}"]
  print(f"[{time.strftime('%H:%M:%S')}] {row} seed {seed}", flush=True)
  t = time.time()
  with open(workdir + ".log", "w") as log:
    rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
  wall = time.time() - t
  if rc:
    raise SystemExit(f"{row} seed {seed} failed (exit {rc}): see {workdir}.log")
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    metrics = json.load(f)
  cm = np.load(os.path.join(workdir, "eval_confusion.npy"))
  rows = list(BOTH_FACTORS)
  both = float(sum(cm[k, k] for k in rows) / cm[rows].sum())
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
  record = {"row": row, "seed": seed, "class_set": class_set, "top1": metrics["eval/top1"],
            "both_factors": both, "clips": int(cm.sum()), "wall_s": round(wall),
            "commit": commit}
  with open(result + ".tmp", "w") as f:
    json.dump(record, f)
  os.replace(result + ".tmp", result)
  print(f"   top-1 {record['top1']:.3f}, towards/away {both:.3f}, {wall:.0f} s", flush=True)


def _mean_std(xs: list[float]) -> str:
  if len(xs) < 2:
    return f"{xs[0]:.3f}" if xs else "-"
  return f"{np.mean(xs):.3f} ({np.std(xs, ddof=1):.3f})"


def render(out: str) -> str:
  records = []
  for name in sorted(os.listdir(out)):
    if name.endswith(".json"):
      with open(os.path.join(out, name)) as f:
        records.append(json.load(f))
  seeds = sorted({r["seed"] for r in records})
  lines = ["| row | " + " | ".join(f"seed {s}" for s in seeds)
           + " | **top-1: mean (sample std)** | towards/away: mean (sample std) | wall per run |",
           "|---" * (len(seeds) + 4) + "|"]
  for row in ROWS:
    rs = {r["seed"]: r for r in records if r["row"] == row}
    if not rs:
      continue
    cells = [f"{rs[s]['top1']:.3f}" if s in rs else "-" for s in seeds]
    walls = [r["wall_s"] for r in rs.values()]
    lines.append(f"| {row} | " + " | ".join(cells)
                 + f" | **{_mean_std([r['top1'] for r in rs.values()])}** | "
                 + f"{_mean_std([r['both_factors'] for r in rs.values()])} | "
                 + f"{min(walls)}-{max(walls)} s |")
  commits = sorted({r["commit"] for r in records})
  return "\n".join(lines) + f"\n\ncommit(s): {', '.join(commits)}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--class_set", default="reach", choices=("reach", "interaction"))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--rows", default=",".join(ROWS))
  parser.add_argument("--late_steps", type=int, default=0,
                      help="late fusion's fine-tuning steps; 0: a third of the recipe's")
  parser.add_argument("--render", action="store_true")
  args, extra = parser.parse_known_args()
  if args.render:
    print(render(args.out))
    return
  rows = args.rows.split(",")
  if bad := sorted(set(rows) - set(ROWS)):
    parser.error(f"--rows: unknown {bad}, expected some of {list(ROWS)}")
  late_steps = args.late_steps or {"reach": 480, "interaction": 160}[args.class_set]
  os.makedirs(os.path.join(out := args.out, "runs"), exist_ok=True)
  for seed in (int(s) for s in args.seeds.split(",")):
    for row in ROWS:  # late fusion after the two runs it starts from
      if row in rows:
        run(out, args.class_set, row, seed, late_steps, extra)
  print(render(out))


if __name__ == "__main__":
  main()
