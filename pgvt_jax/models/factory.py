"""One entry point for every model family (`config.model.family`): build, shapes, freezing,
pretrained weights, and the data settings a family implies.

    model = factory.create_model(config.model)
    params = factory.init_params(model, jax.random.key(0))
    params, weights_file = factory.load_pretrained(config, params)   # strict; config.clip_dir /
                                                                     # config.timesformer_dir
    trainable, frozen = factory.split_params(config.model, params)

Families:
  clip         `pgvt.PoseVideoTransformer`: frozen CLIP tower + AIM adapters (PGVT variants);
               freezing rules in `common`; weights from `config.clip_dir` (convert_clip).
  timesformer  `timesformer_model.TimeSformerClassifier`: full fine-tuning, every param
               trainable; weights from `config.timesformer_dir` (convert_timesformer).
"""

from __future__ import annotations

from typing import Mapping

from etils import epath
import jax
import jax.numpy as jnp

from pgvt_jax import paths
from pgvt_jax.models import common, pgvt, timesformer_model
from pgvt_jax.models.config import ModelConfig

# Config field (top level) holding each family's converted weights directory.
PRETRAINED_FIELD = {"clip": "clip_dir", "timesformer": "timesformer_dir"}
CONVERTER = {"clip": "pgvt_jax.convert_clip", "timesformer": "pgvt_jax.convert_timesformer"}


def model_config(config) -> ModelConfig:
  """`config.model` (ConfigDict, dict or ModelConfig) -> validated ModelConfig."""
  return ModelConfig.from_config(config)


def create_model(config):
  """The Flax module of `config.model`; `model.config` is its ModelConfig."""
  m = model_config(config)
  if m.family == "timesformer":
    return timesformer_model.TimeSformerClassifier(m)
  return pgvt.PoseVideoTransformer(m)


def input_spec(config, batch_size: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
  """The batch the model reads, as ShapeDtypeStructs (for init, eval_shape, FLOPs)."""
  m = model_config(config)
  if m.family == "timesformer":
    return timesformer_model.input_spec(m, batch_size)
  return pgvt.input_spec(m, batch_size)


def dummy_batch(config, batch_size: int = 1) -> dict[str, jax.Array]:
  return {k: jnp.zeros(v.shape, v.dtype) for k, v in input_spec(config, batch_size).items()}


def init_params(model, rng: jax.Array) -> dict:
  return jax.jit(model.init)(rng, dummy_batch(model.config))["params"]


def param_shapes(model) -> dict:
  """Param tree of ShapeDtypeStructs, without computing anything."""
  return jax.eval_shape(model.init, jax.random.key(0), input_spec(model.config))["params"]


# ------------------------------------------------------------------------------- freezing
def _all_trainable(params: Mapping) -> dict:
  return jax.tree.map(lambda _: common.TRAINABLE, dict(params))


def param_labels(config):
  """A function params -> tree of "trainable"/"frozen" (for optim.make_optimizer)."""
  if model_config(config).family == "timesformer":
    return _all_trainable  # full fine-tuning (the PAAB/PAAT paper)
  return common.param_labels


def split_params(config, params: Mapping) -> tuple[dict, dict]:
  """(trainable, frozen) by the family's rules; TimeSformer: (params, {})."""
  if model_config(config).family == "timesformer":
    return dict(params), {}
  return common.split_params(params)


def check_freezing(config) -> None:
  """`config.freeze_backbone` must fit the family (TimeSformer has no frozen part)."""
  if model_config(config.model).family == "timesformer" and config.get("freeze_backbone"):
    raise ValueError("config.freeze_backbone=True but config.model.family='timesformer' is "
                     "fine-tuned end to end (the PAAB/PAAT paper): set "
                     "config.freeze_backbone=False")


# ------------------------------------------------------------------------------- weights
def pretrained_dir(config) -> tuple[str, str]:
  """(field name, directory) of the converted backbone weights; "" when not set.

  Raises when the other family's field is set (weights for the wrong backbone).
  """
  family = model_config(config.model).family
  for fam, field in PRETRAINED_FIELD.items():
    if fam != family and config.get(field, ""):
      raise ValueError(f"config.{field} is set but config.model.family={family!r}; put the "
                       f"converted weights in config.{PRETRAINED_FIELD[family]} (from "
                       f"python -m {CONVERTER[family]})")
  field = PRETRAINED_FIELD[family]
  return field, config.get(field, "") or ""


def load_pretrained(config, params: Mapping) -> tuple[dict, epath.Path]:
  """Strict merge of the family's converted weights into init params -> (params, params file).

  Raises listing every missing / unexpected key, or an architecture mismatch.
  """
  field, directory = pretrained_dir(config)
  if not directory:
    raise ValueError(f"config.{field} is empty")
  if model_config(config.model).family == "timesformer":
    from pgvt_jax import convert_timesformer  # pylint: disable=g-import-not-at-top
    ts_cfg, ts_params = convert_timesformer.load(directory)
    merged = timesformer_model.load_pretrained(config.model, params, ts_cfg, ts_params)
    return merged, paths.as_path(directory) / convert_timesformer.PARAMS_FILE
  from pgvt_jax import convert_clip  # pylint: disable=g-import-not-at-top
  clip_cfg, clip_params = convert_clip.load(directory)
  merged = common.load_clip(config.model, params, clip_params, clip_cfg)
  return merged, paths.as_path(directory) / convert_clip.PARAMS_FILE


# ------------------------------------------------------------------------------- data
def configure_data(config) -> None:
  """Sets the `config.data` fields the model implies: num_joints, pixel statistics (when ()),
  and the pixel statistics into `config.model` (the model normalises the uint8 frames)."""
  m = model_config(config.model)
  config.data.num_joints = m.num_joints  # the pipeline asserts the data has this J
  # config.data's when set (the knob), else config.model's (set by an earlier call), else
  # the family's (the statistics its pretrained weights were trained with).
  for field, default in zip(("pixel_mean", "pixel_std"), m.pixel_stats):
    value = tuple(config.data.get(field, ()) or ()) or tuple(default)
    config.data[field] = value
    config.model[field] = value

