"""Helpers shared by the experiment configs: argument parsing and the common config skeleton.

A config argument is a comma-separated list after the file name, big_vision style:

    --config=configs/diving48.py:vit_l14,variant=video_only,runlocal

Bare words are either a backbone name (see BACKBONES) or a boolean switch set to True;
`key=value` pairs are converted to the type of the default. Unknown names are an error that
lists the accepted ones.
"""

from __future__ import annotations

import ml_collections

from pgvt_jax.models import config as model_config_lib

# Config-argument backbone names -> clip_vit presets.
BACKBONES = {
    "vit_b16": "B/16", "vit_l14": "L/14", "vit_b32": "B/32", "vit_l14_336": "L/14@336",
    "tiny": "Ti/8",
}


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
  """'vit_l14,variant=pose_only,runlocal' -> ConfigDict(backbone='vit_l14', variant=..., ...)."""
  out = ml_collections.ConfigDict(spec)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, eq, value = item.partition("=")
    if not eq:
      if key in BACKBONES and "backbone" in spec:
        out.backbone = key
      elif isinstance(spec.get(key), bool):
        out[key] = True
      else:
        raise ValueError(f"config argument {item!r}: not a backbone {sorted(BACKBONES)} nor "
                         f"a switch {sorted(k for k, v in spec.items() if isinstance(v, bool))}")
    elif key not in spec:
      raise ValueError(f"config argument {key!r} unknown; expected one of {sorted(spec)}")
    elif isinstance(spec[key], bool):
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      out[key] = type(spec[key])(value)
  if "backbone" in spec and out.backbone not in BACKBONES:
    raise ValueError(f"config argument backbone={out.backbone!r}; expected one of "
                     f"{sorted(BACKBONES)}")
  return out


# Where `python -m data_prep.build --dataset=<name> --data_dir=~/tensorflow_datasets` writes.
DATA_ROOT = "~/tensorflow_datasets"
RECORDS = {
    "diving48": "diving48/v2/1.0.0", "gym99": "finegym/gym99/1.0.0",
    "gym288": "finegym/gym288/1.0.0", "k400": "kinetics400/default/1.0.0",
}
SPLITS = {"diving48": ("train", "test"), "gym99": ("train", "val"), "gym288": ("train", "val"),
          "k400": ("train", "val")}
# Peak learning rates. AIM (the training recipe PGVT says it follows): 3e-4 at global batch 64,
# 8 GPUs. The PGVT paper reports 8e-6 on one GPU without a batch size; at batch 64 that rate
# barely moves zero-initialised adapters, so "aim" is the default and "paper" is available.
LR_RECIPES = {"aim": 3e-4, "paper": 8e-6}


def get_base_config(arg: ml_collections.ConfigDict, *, dataset: str, num_classes: int,
                    pose_frames: int, video_frames: int, joints_per_person: int = 17,
                    num_persons: int = 1, eval_clips: int = 1, eval_crops: int = 3,
                    num_epochs: int = 50, warmup_epochs: float = 2.5,
                    builder_dir: str | None = None, splits: tuple[str, str] | None = None,
                    eval_sampling: str = "segment") -> ml_collections.ConfigDict:
  """The skeleton every dataset config shares; `arg` from parse_arg (backbone, variant, ...).

  The records are read from `builder_dir`, by default `DATA_ROOT/RECORDS[dataset]`, with
  `splits` (train, eval), by default `SPLITS[dataset]`.
  """
  from pgvt_jax.experiment import trainer_config  # pylint: disable=g-import-not-at-top
  config = trainer_config()
  model = dict(variant=arg.variant, backbone=BACKBONES[arg.backbone], image_size=224,
               num_classes=num_classes, pose_frames=pose_frames, video_frames=video_frames,
               joints_per_person=joints_per_person, num_persons=num_persons,
               pose_format=arg.pose_format)
  if arg.runlocal:  # seconds on a laptop CPU: tiny backbone, few frames, small images
    model.update(backbone="Ti/8", image_size=32, pose_frames=8, video_frames=4,
                 heatmap_size=32, drop_path=0.1)
  # ---- config.model: read by pgvt_jax.models (validated here, so a bad config fails early).
  config.model = model_config_lib.model_config(**model)

  # ---- config.data: the input pipeline (pgvt_jax.data.get_config() holds every field).
  # The fields below follow config.model by reference, so overriding
  # --config.model.video_frames also changes what the pipeline samples.
  d = config.data
  d.builder_dir = builder_dir or f"{DATA_ROOT}/{RECORDS[dataset]}"
  d.train_split, d.eval_split = splits or SPLITS[dataset]
  val = int(arg.get("val", 0))
  if val:  # model selection on a validation split carved from train; test measured at the end
    if not 0 < val < 100:
      raise ValueError(f"config argument val={val}: a percentage of train in 1..99")
    d.test_split = d.eval_split
    d.train_split, d.eval_split = f"train[:{100 - val}%]", f"train[{100 - val}%:]"
  d.num_frames = config.model.get_ref("video_frames")      # T_l
  d.pose_frames = config.model.get_ref("pose_frames")      # T_h
  d.image_size = config.model.get_ref("image_size")        # S
  d.max_persons = config.model.get_ref("num_persons")      # n
  d.pose_format = config.model.get_ref("pose_format")
  d.heatmap_size = config.model.get_ref("heatmap_size")
  d.num_joints = (config.model.get_ref("joints_per_person")
                  * config.model.get_ref("num_persons"))   # J = j * n
  # AIM's test views (configs/recognition/vit/vitclip_base_{diving48,k400}.py): short side
  # resized to the crop size (224), then 3 crops x 1 segment-sampled clip (Diving48; FineGym
  # follows it) or 1 centre crop x 3 densely sampled clips (K400). The earlier views (short
  # side 256, segment clips) remain: --config.data.short_side=256
  # --config.data.eval_sampling=segment.
  d.short_side = 0                                        # = image_size (224)
  d.eval_clips, d.eval_crops = eval_clips, eval_crops
  d.eval_sampling = eval_sampling
  d.train_batch_size = d.eval_batch_size = 64              # global, as AIM (8 GPUs x 8)
  d.num_workers = 8

  # ---- config.optim and trainer fields (pgvt_jax.experiment.trainer_config holds them all).
  recipe = arg.get("lr_recipe", "aim")
  if recipe not in LR_RECIPES:
    raise ValueError(f"config argument lr_recipe={recipe!r}; expected one of "
                     f"{sorted(LR_RECIPES)}")
  config.optim.lr = LR_RECIPES[recipe]
  config.optim.weight_decay = 0.05
  config.optim.warmup_epochs = warmup_epochs
  config.num_epochs = num_epochs
  config.eval_every = 0
  config.checkpoint_every = 1000
  if arg.runlocal:  # one short run on CPU, e.g. to smoke-test a config end to end
    d.short_side = 0
    d.train_batch_size = d.eval_batch_size = 4
    d.num_workers = 0
    config.total_steps = 2
    config.log_every = 1
  return config
