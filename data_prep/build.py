r"""Builds the records of one dataset.

  python -m data_prep.build --dataset=diving48 --manual_dir=~/data/Diving48 \
      --data_dir=~/tensorflow_datasets [--config=v2] [--short_side=256] \
      [--jpeg_quality=90] [--max_frames=N] [--missing_pose=keep|skip|extract] \
      [--extractor=mediapipe:~/mp311/bin/python]

  python -m data_prep.build --dataset=synthetic --data_dir=/tmp/pgvt \
      --num_train=256 --num_test=64 --num_classes=8

Prints a summary (written / skipped with reasons / repairs) and saves it as
`build_summary.json` next to the records, then the command that trains on
them. Read the records with
`tfds.builder_from_directory(<printed path>).as_data_source(split)`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys

import tensorflow_datasets as tfds

from data_prep import builder as builder_lib
from data_prep import commands
from data_prep import extractors
from data_prep import process
from data_prep import records
from data_prep import worlds
from data_prep.datasets import BUILDERS
from data_prep.datasets import synthetic as synthetic_builder


class EmptySplitError(RuntimeError):
  """A split in which every listed video was skipped: TFDS cannot write it.

  The message names the split(s) and carries the build summary (skip reasons), so the
  CLI prints it alone, without a traceback.
  """


def _empty_split_message(summary: records.BuildSummary, error: Exception) -> str:
  empty = [n for n, s in summary.splits.items() if s.listed and not s.written]
  which = ", ".join(repr(n) for n in empty) or f"? (TFDS: {error})"
  return (f"{summary.dataset}: no video of split {which} could be written: every one "
          "was skipped (reasons below). Fix those entries or files, or leave the split "
          f"out of the dataset files, then rerun.\n{summary.format()}")


def build_dataset(dataset: str, data_dir: str, manual_dir: str | None = None,
                  config: str | None = None,
                  options: builder_lib.BuildOptions | None = None,
                  overwrite: bool = False, beam_options: str | None = None,
                  **builder_kwargs
                 ) -> tuple[tfds.core.DatasetBuilder, records.BuildSummary]:
  """Builds `dataset` (a key of `BUILDERS`) and returns (builder, summary).

  `builder_kwargs` go to the builder (e.g. `box_thr` for kinetics400, or
  `config=SyntheticConfig(...)` objects). `beam_options` (Beam pipeline
  flags, e.g. "--runner=DirectRunner") builds with Apache Beam
  (`data_prep.beam_build`, the `[beam]` extra).
  """
  if dataset not in BUILDERS:
    raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(BUILDERS)}")
  cls = BUILDERS[dataset]
  b = cls(data_dir=os.path.expanduser(data_dir), config=config,
          options=options, **builder_kwargs)
  beam = None
  if beam_options:
    try:
      from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("--beam_options needs Apache Beam: pip install "
                        "'pgvt_jax[beam]'") from e
    beam = pipeline_options.PipelineOptions(shlex.split(beam_options))
  dl_config = tfds.download.DownloadConfig(
      beam_options=beam,
      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None,
      download_mode=(tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
                     if overwrite else
                     tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  if cls.MANUAL_DOWNLOAD_INSTRUCTIONS and not (
      manual_dir and os.path.isdir(os.path.expanduser(manual_dir))):
    raise FileNotFoundError(
        f"--manual_dir={manual_dir!r} is not a directory. {cls.name} needs:\n"
        f"{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  try:
    b.download_and_prepare(download_config=dl_config)
  except AssertionError as e:
    # TFDS refuses a split in which every video was skipped: say which/why.
    raise EmptySplitError(_empty_split_message(b.summary, e)) from e
  if b.summary.splits:  # Empty when existing records were reused.
    b.summary.save(os.path.join(b.data_dir, "build_summary.json"))
  return b, b.summary


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
  p.add_argument("--data_dir", required=True)
  p.add_argument("--manual_dir")
  p.add_argument("--config", help="builder config, e.g. gym99, xsub, cs")
  p.add_argument("--short_side", type=int, default=256,
                 help="0 keeps the source size")
  p.add_argument("--jpeg_quality", type=int, default=90)
  p.add_argument("--max_frames", type=int, default=0, help="0: all frames")
  p.add_argument("--max_persons", type=int, default=0, help="0: all persons")
  p.add_argument("--missing_pose", default="keep",
                 choices=process.MISSING_POSE_POLICIES)
  p.add_argument("--extractor", default=None,
                 help="'mediapipe:<python of a mediapipe-0.10.21 venv>'")
  p.add_argument("--num_workers", type=int, default=2)
  p.add_argument("--limit", type=int, default=None,
                 help="only the first N videos of each split")
  p.add_argument("--box_thr", type=float, default=0.5,
                 help="kinetics400: drop detections below this box score")
  p.add_argument("--beam_options", default=None,
                 help="build with Apache Beam, e.g. '--runner=DirectRunner "
                      "--direct_num_workers=8 --direct_running_mode="
                      "multi_processing' or Dataflow/Flink/Spark flags")
  p.add_argument("--overwrite", action="store_true",
                 help="rebuild even if the records exist")
  p.add_argument("--num_train", type=int, default=256)
  p.add_argument("--num_test", type=int, default=64)
  p.add_argument("--num_classes", type=int, default=8)
  p.add_argument("--num_frames", type=int, default=32)
  p.add_argument("--image_size", type=int, default=128)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--class_set", choices=worlds.CLASS_SETS, default="fine",
                 help="synthetic: class enumeration (see data_prep/synthetic.py)")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = _parse(argv)
  if args.beam_options and importlib.util.find_spec("apache_beam") is None:
    sys.exit("error: --beam_options needs Apache Beam: pip install "
             "'pgvt_jax[beam]' (docs/data.md)")
  tfds.disable_progress_bar()  # Ours (per split, with skip counts) is enough.
  options = builder_lib.BuildOptions(
      short_side=args.short_side or None, jpeg_quality=args.jpeg_quality,
      max_frames=args.max_frames or None, max_persons=args.max_persons or None,
      missing_pose=args.missing_pose,
      extractor=extractors.from_spec(args.extractor) if args.extractor else
      None, num_workers=args.num_workers, limit=args.limit)
  kwargs = {}
  config = args.config
  if args.dataset == "kinetics400":
    kwargs["box_thr"] = args.box_thr
  if args.dataset == "synthetic":
    config = synthetic_builder.SyntheticConfig.make(
        args.num_train, args.num_test, args.num_classes, args.seed,
        args.num_frames, args.image_size, args.class_set)
    if config.name in synthetic_builder.SyntheticPoseActions.builder_configs:
      config = config.name
    options = builder_lib.BuildOptions(short_side=None,
                                       num_workers=args.num_workers)
  try:
    b, summary = build_dataset(args.dataset, args.data_dir, args.manual_dir,
                               config, options, args.overwrite,
                               args.beam_options, **kwargs)
  except EmptySplitError as e:  # the message and summary say it all; a traceback buries it
    sys.exit(f"error: {e}")
  print(summary.format() if summary.splits else
        "Records already built (use --overwrite to rebuild).")
  print(f"Records: {b.data_dir}")
  print("Train on them with (add --config.clip_dir=<converted CLIP weights> "
        "for a real run, see docs/models.md):")
  print("  " + commands.train_command(args.dataset, b.builder_config.name,
                                      os.fspath(b.data_dir)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
