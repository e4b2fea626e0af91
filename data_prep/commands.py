"""The commands that connect building and training, printed by the tools.

Records of `python -m data_prep.build --dataset=D --config=C --data_dir=R`
live in `R/<builder name>/C/<version>` (TFDS's layout; the builder name is
not always D: `ntu60` -> `ntu60_2d`). A training config reads
`~/tensorflow_datasets/<builder name>/<config>/<version>` unless
`--config.data.builder_dir` says otherwise. This module maps between the
two: `train_command` (printed at the end of a build) and `build_command`
(printed when training finds no records). Light: no TFDS import unless a
builder is looked up.
"""

from __future__ import annotations

import os
import re
import shlex

DEFAULT_DATA_DIR = "~/tensorflow_datasets"  # = configs/common.py DATA_ROOT

# (--dataset, builder config) -> experiment config (+ argument); a builder
# config not listed here trains with configs/custom.py, which reads the class
# count and joint layout from the records.
TRAIN_CONFIGS = {
    ("diving48", "v2"): "configs/diving48.py",
    ("finegym", "gym99"): "configs/gym99.py",
    ("finegym", "gym288"): "configs/gym288.py",
    ("kinetics400", "default"): "configs/k400.py",
    # The PAAB/PAAT protocols (configs/adl_common.py). NTU's `cvs` records serve
    # cvs1-3 (same training set, test views 0/45/90): protocol=cvs2|cvs3 too.
    ("ntu60", "cvs"): "configs/ntu60.py:protocol=cvs1",
    ("ntu60", "xsub_kinect"): "configs/ntu60.py:protocol=xsub",
    ("ntu60", "xview_kinect"): "configs/ntu60.py:protocol=xview",
    **{("smarthome", p): f"configs/smarthome.py:protocol={p}"
       for p in ("cs", "cv1", "cv2")},
    **{("nucla", p): f"configs/nucla.py:protocol={p}"
       for p in ("cs", "cv1", "cv2", "cv3")},
}
GENERIC_CONFIG = "configs/custom.py"


def _quote(arg: str) -> str:
  """Shell-quotes `arg` unless it is plain (a `~` stays readable: the tools
  expand it themselves)."""
  return arg if re.fullmatch(r"[\w@%+=:,./~-]+", arg) else shlex.quote(arg)


def builder_names() -> dict[str, str]:
  """{TFDS builder name: `--dataset` name} of data_prep.build."""
  from data_prep.datasets import BUILDERS  # pylint: disable=g-import-not-at-top
  return {cls.name: key for key, cls in BUILDERS.items()}


def _same_dir(a: str, b: str) -> bool:
  return os.path.abspath(os.path.expanduser(a)) == os.path.abspath(
      os.path.expanduser(b))


def train_command(dataset: str, config: str, builder_dir: str,
                  workdir: str | None = None) -> str:
  """The `python -m pgvt_jax.main ...` that trains on the records just built.

  A dataset config reads the records from the default place; when they were
  built elsewhere, `--config.data.builder_dir` points it at them. The generic
  config gets the directory as its argument (it reads the class count and
  joint layout from there when the config is loaded).
  """
  builder_dir = os.path.abspath(os.path.expanduser(builder_dir))
  parts = builder_dir.rstrip(os.sep).split(os.sep)
  workdir = workdir or f"workdirs/{dataset}_{config}"
  cfg = TRAIN_CONFIGS.get((dataset, config))
  if cfg is None:
    args = [f"--config={GENERIC_CONFIG}:builder_dir={builder_dir}"]
  else:
    args = [f"--config={cfg}"]
    default = os.path.join(DEFAULT_DATA_DIR, *parts[-3:])
    if not _same_dir(default, builder_dir):
      args.append(f"--config.data.builder_dir={builder_dir}")
  args.append(f"--workdir={workdir}")
  return " ".join(["python -m pgvt_jax.main"] + [_quote(a) for a in args])


def build_command(builder_dir: str) -> str | None:
  """The `python -m data_prep.build ...` that writes `builder_dir`, or None
  when the path does not look like `<data_dir>/<name>/<config>/<version>` of
  a known builder."""
  parts = os.path.normpath(builder_dir).split(os.sep)
  if len(parts) < 4:
    return None
  name, config = parts[-3], parts[-2]
  dataset = builder_names().get(name)
  if dataset is None or dataset == "synthetic":  # configs/demo.py builds it
    return None
  data_dir = os.sep.join(parts[:-3]) or os.sep
  args = [f"--dataset={dataset}", f"--config={config}",
          f"--manual_dir=<your {dataset} files>", f"--data_dir={data_dir}"]
  return " ".join(["python -m data_prep.build"] + [
      a if "<" in a else _quote(a) for a in args])
