r"""Parameter and GFLOPs accounting of a model config, in the PGVT paper's convention.

    python -m pgvt_jax.tools.model_stats --config=configs/diving48.py \
        [--config.model.variant=video_only] [--json]

Tunable = params the optimiser updates (models.factory.param_labels), total = all params the
model holds (family "clip": the frozen CLIP tower without `proj`, plus the tunable ones;
family "timesformer": everything is tunable, backbone + head). GFLOPs = multiply-adds
/ 1e9 of one forward pass on one view (batch 1, eval mode), counted from the jaxpr (fvcore
convention, see tools/flops.py). Shapes only: no weights, nothing executed; seconds on a CPU.
With --json one JSON object is printed: tunable_params, total_params, frozen_params, gflops,
and the model config.

PAAB / PAAT (`--config.model.paab_layers=(12,)`, `--config.model.paat_layer=1`, or the
daily-living configs' `:paab` / `:paat`): PAAB blocks count as tunable params and their MACs are
in the GFLOPs; the PAAT head is trained but dropped at inference, so it is listed as
`training_only_params` (not in `inference_params`, not in the GFLOPs).
"""

from __future__ import annotations

import collections
import json
import sys

from absl import flags

from pgvt_jax import cli, config_files


def _define_flags() -> None:
  """The command line, defined at launch only: importing this module defines no flags
  (pgvt_jax/cli.py says why)."""
  config_files.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
  flags.mark_flag_as_required("config")


def model_stats(model_cfg) -> dict:
  """{"tunable_params", "frozen_params", "total_params", "gflops", "groups", ...} of a config."""
  import jax  # pylint: disable=g-import-not-at-top

  from pgvt_jax.models import common, factory, paat
  from pgvt_jax.tools import flops

  m = factory.model_config(model_cfg)
  model = factory.create_model(m)
  shapes = factory.param_shapes(model)
  trainable, frozen = factory.split_params(m, shapes)
  macs = flops.count_macs(lambda p, b: model.apply({"params": p}, b), shapes,
                          factory.input_spec(m))
  # Tunable params by top-level group / adapter kind, for the docs' breakdowns.
  groups = collections.Counter()
  for path, leaf in common.flatten(trainable).items():
    parts = path.split("/")
    key = parts[1] if parts[0].startswith(("resblocks_", "blocks_")) else parts[0]
    groups[key] += int(leaf.size)
  # PAAB blocks (kept at inference) and the PAAT head (training only: dropped for export).
  pose_aware = {k: common.count(v) for k, v in shapes.items()
                if k.startswith("paab_") or k in paat.PARAM_PREFIXES}
  training_only = sum(v for k, v in pose_aware.items() if k in paat.PARAM_PREFIXES)
  del jax
  return {
      "family": m.family,
      "paab_layers": list(m.paab_layers), "paab_variant": m.paab_variant,
      "paat_layer": m.paat_layer, "pose_aware_params": pose_aware,
      "training_only_params": training_only,
      "inference_params": common.count(shapes) - training_only,
      "variant": m.variant, "backbone": m.backbone, "pose_format": m.pose_format,
      "pose_frames": m.pose_frames, "video_frames": m.video_frames,
      "tunable_params": common.count(trainable), "frozen_params": common.count(frozen),
      "total_params": common.count(shapes), "gflops": macs["total"] / 1e9,
      "tunable_by_group": dict(sorted(groups.items())),
  }


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")  # tracing only; keep XLA:CPU's einsum attention
  config = flags.FLAGS.config
  stats = model_stats(config.model)
  if flags.FLAGS.json:
    stats["model_config"] = config.model.to_dict()
    print(json.dumps(stats))
    return
  s = stats
  frames = {"video_only": f"{s['video_frames']}", "pose_only": f"{s['pose_frames']}"}.get(
      s["variant"], f"{s['pose_frames']}+{s['video_frames']}")
  if s["family"] == "timesformer":
    print(f"TimeSformer-{s['backbone']}  frames {s['video_frames']}  (full fine-tuning)")
  else:
    print(f"variant {s['variant']}  backbone ViT-{s['backbone']}  pose {s['pose_format']}  "
          f"frames {frames}")
  print(f"  tunable params  {s['tunable_params']:>13,d}  ({s['tunable_params'] / 1e6:.2f}M)")
  print(f"  frozen params   {s['frozen_params']:>13,d}  ({s['frozen_params'] / 1e6:.2f}M)")
  print(f"  total params    {s['total_params']:>13,d}  ({s['total_params'] / 1e6:.2f}M)")
  print(f"  GFLOPs / view   {s['gflops']:>13.1f}  (multiply-adds, fvcore convention)")
  if s["pose_aware_params"]:
    print(f"  PAAB after blocks {s['paab_layers']} ({s['paab_variant']}), PAAT after block "
          f"{s['paat_layer'] or '-'}:")
    for k, v in s["pose_aware_params"].items():
      print(f"    {k:<20s} {v:>12,d}")
    print(f"  training-only params (PAAT head, not exported) {s['training_only_params']:,d}; "
          f"inference params {s['inference_params']:,d}")
  print("  tunable by group:")
  for k, v in s["tunable_by_group"].items():
    print(f"    {k:<20s} {v:>12,d}")
  sys.stdout.flush()


if __name__ == "__main__":
  cli.run_app(main, _define_flags, __doc__)
