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


def get_base_config(arg: ml_collections.ConfigDict, *, dataset: str, num_classes: int,
                    pose_frames: int, video_frames: int, joints_per_person: int = 17,
                    num_persons: int = 1) -> ml_collections.ConfigDict:
  """The skeleton every dataset config shares; `arg` from parse_arg (backbone, variant, ...)."""
  config = ml_collections.ConfigDict()
  model = dict(variant=arg.variant, backbone=BACKBONES[arg.backbone], image_size=224,
               num_classes=num_classes, pose_frames=pose_frames, video_frames=video_frames,
               joints_per_person=joints_per_person, num_persons=num_persons,
               pose_format=arg.pose_format)
  if arg.runlocal:  # seconds on a laptop CPU: tiny backbone, few frames, small images
    model.update(backbone="Ti/8", image_size=32, pose_frames=8, video_frames=4,
                 heatmap_size=32, drop_path=0.1)
  # ---- config.model: read by pgvt_jax.models (validated here, so a bad config fails early).
  config.model = model_config_lib.model_config(**model)

  # ---- config.data: the input pipeline (pgvt_jax.data owns the full field list and adds
  # its own defaults). The fields below mirror config.model by reference, so overriding
  # --config.model.video_frames also changes what the pipeline samples.
  config.data = ml_collections.ConfigDict()
  config.data.name = dataset
  config.data.num_frames = config.model.get_ref("video_frames")      # T_l
  config.data.pose_frames = config.model.get_ref("pose_frames")      # T_h
  config.data.image_size = config.model.get_ref("image_size")        # S
  config.data.max_persons = config.model.get_ref("num_persons")      # n
  config.data.pose_format = config.model.get_ref("pose_format")
  config.data.heatmap_size = config.model.get_ref("heatmap_size")
  config.data.num_joints = (config.model.get_ref("joints_per_person")
                            * config.model.get_ref("num_persons"))   # J = j * n

  # ---- config.optim and trainer fields: owned by the trainer. Values from the paper, Sec. 4
  # ("AdamW, 50 epochs, learning rate 8e-6, weight decay 5e-2, one GPU").
  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adamw"
  config.optim.lr = 8e-6
  config.optim.weight_decay = 0.05
  config.total_epochs = 50
  return config
