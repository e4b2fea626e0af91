"""One entry point for every model family (`config.model.family`): build, shapes, freezing,
pretrained weights, and the data settings a family implies.

    model = factory.create_model(config.model)
    params = factory.init_params(model, jax.random.key(0))
    params, weights_file = factory.load_pretrained(config, params)   # strict; the family's
                                                                     # config.<weights field>
    trainable, frozen = factory.split_params(config.model, params)

Families (each module defines `FAMILY`, models/family.py; docs/models.md "Adding a backbone"):
  clip         `pgvt.PoseVideoTransformer`: frozen CLIP tower + AIM adapters (PGVT variants);
               freezing rules and weights (config.clip_dir) in `clip_family`.
  timesformer  `timesformer_model.TimeSformerClassifier`: full fine-tuning; weights from
               config.timesformer_dir (convert_timesformer).
  deit         `deit_model.DeiT`: a DeiT per frame, trained from scratch (the alignment task).
"""

from __future__ import annotations

from typing import Mapping

from etils import epath
import jax
import jax.numpy as jnp

from pgvt_jax.models import clip_family, common, deit_model, family, timesformer_model
from pgvt_jax.models.config import ModelConfig

FAMILIES: dict[str, family.Family] = {
    f.name: f for f in (clip_family.FAMILY, timesformer_model.FAMILY, deit_model.FAMILY)}


def model_config(config) -> ModelConfig:
  """`config.model` (ConfigDict, dict or ModelConfig) -> validated ModelConfig."""
  return ModelConfig.from_config(config)


def get_family(config) -> family.Family:
  """The Family of `config.model` (ConfigDict, dict or ModelConfig)."""
  return FAMILIES[model_config(config).family]


def create_model(config):
  """The Flax module of `config.model`; `model.config` is its ModelConfig."""
  m = model_config(config)
  return FAMILIES[m.family].create(m)


def input_spec(config, batch_size: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
  """The batch the model reads, as ShapeDtypeStructs (for init, eval_shape, FLOPs)."""
  m = model_config(config)
  return FAMILIES[m.family].input_spec(m, batch_size)


def dummy_batch(config, batch_size: int = 1) -> dict[str, jax.Array]:
  return {k: jnp.zeros(v.shape, v.dtype) for k, v in input_spec(config, batch_size).items()}


def init_params(model, rng: jax.Array) -> dict:
  return jax.jit(model.init)(rng, dummy_batch(model.config))["params"]


def param_shapes(model) -> dict:
  """Param tree of ShapeDtypeStructs, without computing anything."""
  return jax.eval_shape(model.init, jax.random.key(0), input_spec(model.config))["params"]


# ------------------------------------------------------------------------------- freezing
def param_labels(config):
  """A function params -> tree of "trainable"/"frozen" (for optim.make_optimizer)."""
  return get_family(config).param_labels


def split_params(config, params: Mapping) -> tuple[dict, dict]:
  """(trainable, frozen) by the family's rules; a fully trained family: (params, {})."""
  return common.split_by_labels(params, param_labels(config)(params))


def check_freezing(config) -> None:
  """`config.freeze_backbone` must fit the family (only a frozen backbone has a frozen part)."""
  fam = get_family(config.model)
  if not fam.freezes and config.get("freeze_backbone"):
    raise ValueError(f"config.freeze_backbone=True but config.model.family={fam.name!r} is "
                     "trained end to end (every param): set config.freeze_backbone=False")


# ------------------------------------------------------------------------------- weights
def weights_fields() -> dict[str, str]:
  """family -> the config field of its converted weights (families that load any)."""
  return {name: f.weights.field for name, f in FAMILIES.items() if f.weights}


def pretrained_dir(config) -> tuple[str, str]:
  """(field name, directory) of the converted backbone weights; "" when not set.

  Raises when another family's field is set (weights for the wrong backbone).
  """
  fam = get_family(config.model)
  for name, field in weights_fields().items():
    if name != fam.name and config.get(field, ""):
      want = (f"put the converted weights in config.{fam.weights.field} (from python -m "
              f"{fam.weights.converter})" if fam.weights else
              f"family {fam.name!r} loads no pretrained weights: clear config.{field}")
      raise ValueError(f"config.{field} is set but config.model.family={fam.name!r}; {want}")
  if fam.weights is None:
    return "", ""
  return fam.weights.field, config.get(fam.weights.field, "") or ""


def load_pretrained(config, params: Mapping) -> tuple[dict, epath.Path]:
  """Strict merge of the family's converted weights into init params -> (params, params file).

  Raises listing every missing / unexpected key, or an architecture mismatch.
  """
  fam = get_family(config.model)
  field, directory = pretrained_dir(config)
  if fam.weights is None:
    raise ValueError(f"config.model.family={fam.name!r} has no pretrained weights to load")
  if not directory:
    raise ValueError(f"config.{field} is empty")
  return fam.weights.load(config.model, params, directory)


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

