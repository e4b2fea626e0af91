r"""Any records built by `python -m data_prep.build` (your own videos: `--dataset=custom`).

The class count, joint layout and splits are read from the records when the config is loaded,
so the records directory is the config's argument (`python -m data_prep.build` prints this
command when it finishes):

  python -m pgvt_jax.main --workdir=workdirs/mine \
      --config=configs/custom.py:builder_dir=~/tensorflow_datasets/custom_videos/coco17/1.0.0

Arguments (comma-separated): builder_dir=<records> (default: the coco17 custom records under
~/tensorflow_datasets), a backbone (vit_b16 default, vit_l14, tiny), variant=<...> as in
configs/diving48.py, pose_format=<coords|heatmap>, video_frames=16, pose_frames=48,
num_persons=1, epochs=50, runlocal. Give the directory here rather than with
`--config.data.builder_dir` (applied after loading, too late for the class count: training then
stops on the mismatch). Eval split: val if built, else test. Records whose metadata says a flip
changes the label (the synthetic set) train without flips.
"""

import os

from configs import common

_DEFAULT_DIR = f"{common.DATA_ROOT}/custom_videos/coco17/1.0.0"
_PLACEHOLDER_CLASSES = 2  # records absent: training stops at open_source, naming the directory


def read_records_info(builder_dir: str) -> dict | None:
  """{num_classes, joint_layout, splits, flip_safe} of built records, or None if absent."""
  path = os.path.expanduser(builder_dir)
  if not os.path.isfile(os.path.join(path, "dataset_info.json")):
    return None
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  info = tfds.builder_from_directory(path).info
  metadata = dict(info.metadata or {})
  return dict(num_classes=info.features["label"].num_classes,
              joint_layout=metadata.get("joint_layout", "coco17"),
              splits=tuple(info.splits), flip_safe=bool(metadata.get("horizontal_flip_safe",
                                                                      True)))


def get_config(arg=None):
  arg = common.parse_arg(arg, builder_dir=_DEFAULT_DIR, backbone="vit_b16", variant="pgvt",
                         pose_format="coords", lr_recipe="aim", video_frames=16,
                         pose_frames=48, num_persons=1, epochs=50, runlocal=False)
  from data_prep import skeletons  # pylint: disable=g-import-not-at-top
  info = read_records_info(arg.builder_dir) or dict(
      num_classes=_PLACEHOLDER_CLASSES, joint_layout="coco17", splits=("train", "test"),
      flip_safe=True)
  eval_split = next((s for s in ("val", "test") if s in info["splits"]), "train")
  config = common.get_base_config(
      arg, dataset="custom", num_classes=info["num_classes"], pose_frames=arg.pose_frames,
      video_frames=arg.video_frames,
      joints_per_person=skeletons.get(info["joint_layout"]).num_joints,
      num_persons=arg.num_persons, num_epochs=arg.epochs, builder_dir=arg.builder_dir,
      splits=("train", eval_split))
  config.data.skeleton = info["joint_layout"]
  config.data.flip = info["flip_safe"]
  return config
