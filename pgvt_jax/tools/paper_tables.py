r"""Every GFLOPs / tunable-parameter figure of PGVT Tables 1-4 and 6 next to ours.

    python -m pgvt_jax.tools.paper_tables [--markdown] [--tables=1,4]

Run from the repository root (the configs/ package is imported). Each row names the config
that reproduces it; ours are computed by tools.model_stats (shapes only, ~1 minute for all).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Optional

from absl import flags

from pgvt_jax import cli


def _define_flags() -> None:
  """The command line, defined at launch only: importing this module defines no flags
  (pgvt_jax/cli.py says why)."""
  flags.DEFINE_bool("markdown", False, "Print a Markdown table.")
  flags.DEFINE_list("tables", ["1", "2", "3", "4", "6"], "Tables to print.")


@dataclasses.dataclass(frozen=True)
class PaperRow:
  table: str
  row: str
  config: str                      # "module:arg", e.g. "configs.diving48:vit_l14"
  overrides: tuple = ()            # ((field, value), ...) applied to config.model
  gflops: Optional[float] = None   # as printed in the paper (all views)
  tunable_m: Optional[float] = None
  views: int = 1                   # AIM's Table 3 GFLOPs are per video: 3 clips x 1 crop


VIDEO32 = (("variant", "video_only"), ("video_frames", 32))
ROWS = (
    PaperRow("1", "AIM ViT-B/16 (32x3)", "configs.diving48:vit_b16", VIDEO32, None, 11),
    PaperRow("1", "AIM ViT-L/14 (32x3)", "configs.diving48:vit_l14", VIDEO32, None, 38),
    PaperRow("1", "PGVT ViT-B/16 48+16", "configs.diving48:vit_b16", (), None, 75),
    PaperRow("1", "PGVT ViT-L/14 48+16", "configs.diving48:vit_l14", (), None, 265),
    PaperRow("2", "PGVT ViT-B/16 (Gym99)", "configs.gym99:vit_b16", (), 495, 75),
    PaperRow("2", "PGVT ViT-L/14 (Gym99)", "configs.gym99:vit_l14", (), 2227, 265),
    PaperRow("3", "AIM ViT-B/16 32x3", "configs.k400:vit_b16", (("variant", "video_only"),),
             2428, 11, views=3),
    PaperRow("3", "AIM ViT-L/14 32x3", "configs.k400:vit_l14", (("variant", "video_only"),),
             11208, 38, views=3),
    PaperRow("3", "PGVT ViT-B/16 32+32", "configs.k400:vit_b16", (), 850, 77),
    PaperRow("3", "PGVT ViT-L/14 32+32", "configs.k400:vit_l14", (), 3832, 268),
    PaperRow("4", "(1) Pose only, 48", "configs.ablations.table4:row=1", (), 108, 11),
    PaperRow("4", "(2i) Video only, 16", "configs.ablations.table4:row=2i", (), 405, 11),
    PaperRow("4", "(2ii) Video only, 32", "configs.ablations.table4:row=2ii", (), 850, 11),
    PaperRow("4", "(3) Late fusion, 48+16", "configs.ablations.table4:row=3", (), 513, 23),
    PaperRow("4", "(4) PGVT w/o T", "configs.ablations.table4:row=4", (), 466, 68),
    PaperRow("4", "(5) R-Adapter -> 2 Adapters", "configs.ablations.table4:row=5", (), 383, 18),
    PaperRow("4", "(6i) w/o refined pose", "configs.ablations.table4:row=6i", (), 437, 46),
    PaperRow("4", "(6ii) w/o refined video", "configs.ablations.table4:row=6ii", (), 437, 46),
    PaperRow("4", "(7) PGVT", "configs.ablations.table4:row=7", (), 495, 75),
    PaperRow("6", "Heatmaps (pose only, 48)", "configs.ablations.table6:form=heatmap", (),
             311, 11),
    PaperRow("6", "Heatmaps, RGB via frozen conv1", "configs.ablations.table6:form=heatmap_rgb",
             (), 311, 11),
    PaperRow("6", "Coordinates (pose only, 48)", "configs.ablations.table6:form=coords", (),
             108, 11),
)


def load_config(spec: str, overrides=()):
  """"configs.diving48:vit_l14" -> the experiment ConfigDict with model overrides applied."""
  module, _, arg = spec.partition(":")
  config = importlib.import_module(module).get_config(arg or None)
  for k, v in overrides:
    config.model[k] = v
  return config


def compute(rows=ROWS) -> list[dict]:
  from pgvt_jax.tools.model_stats import model_stats  # pylint: disable=g-import-not-at-top
  out = []
  for r in rows:
    s = model_stats(load_config(r.config, r.overrides).model)
    out.append({"table": r.table, "row": r.row, "config": r.config,
                "overrides": dict(r.overrides),
                "paper_gflops": r.gflops, "gflops": s["gflops"] * r.views,
                "paper_tunable_m": r.tunable_m, "tunable_m": s["tunable_params"] / 1e6})
  return out


def _pct(ours, paper):
  return "" if paper is None else f"{100 * (ours - paper) / paper:+.1f}%"


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  rows = [r for r in ROWS if r.table in flags.FLAGS.tables]
  results = compute(rows)
  if flags.FLAGS.markdown:
    print("| Table | Row | GFLOPs paper | GFLOPs ours | diff | Tunable M paper | Tunable M ours "
          "| diff | config |")
    print("|---|---|---|---|---|---|---|---|---|")
  for x in results:
    g_paper = "-" if x["paper_gflops"] is None else f"{x['paper_gflops']:g}"
    cfg = x["config"].replace("configs.", "configs/").replace(".", "/").replace(":", ".py:")
    cfg += "".join(f" --config.model.{k}={v}" for k, v in x["overrides"].items())
    cells = (x["table"], x["row"], g_paper, f"{x['gflops']:.1f}",
             _pct(x["gflops"], x["paper_gflops"]), f"{x['paper_tunable_m']:g}",
             f"{x['tunable_m']:.2f}", _pct(x["tunable_m"], x["paper_tunable_m"]), f"`{cfg}`")
    if flags.FLAGS.markdown:
      print("| " + " | ".join(cells) + " |")
    else:
      print("  ".join(f"{c:<8s}" if i != 1 else f"{c:<30s}" for i, c in enumerate(cells)))


if __name__ == "__main__":
  cli.run_app(main, _define_flags, __doc__)
