"""benchmarks/fusion_demo.py's table: means, sample std and the towards/away column from the
per-run records (the runs themselves are the e2e row in test_fusion_bounds.py)."""

import json

from benchmarks import fusion_demo


def test_render_reads_every_run_record(tmp_path):
  runs = {("pgvt", 0): (0.9, 0.8), ("pgvt", 1): (0.7, 0.6), ("late_fusion", 0): (0.6, 0.5)}
  for (row, seed), (top1, both) in runs.items():
    (tmp_path / f"{row}_s{seed}.json").write_text(json.dumps(dict(
        row=row, seed=seed, class_set="reach", top1=top1, both_factors=both, clips=192,
        wall_s=100 + seed, commit="abc1234")))
  table = fusion_demo.render(str(tmp_path)).splitlines()
  pgvt = next(l for l in table if l.startswith("| pgvt"))
  assert "| 0.900 | 0.700 |" in pgvt and "**0.800 (0.141)**" in pgvt and "0.700 (0.141)" in pgvt
  late = next(l for l in table if l.startswith("| late_fusion"))
  assert "| 0.600 | - |" in late and "**0.600**" in late       # seed 1 missing: shown as "-"
  assert not any(l.startswith("| pose_only") for l in table)   # rows without runs are left out
  assert table[-1] == "commit(s): abc1234"
