"""What a model family provides: the one interface `factory` reads (`config.model.family`).

A family is a backbone made into a model of `config.model` (models/config.py): its module
returns `(logits (B, C), out)` from a batch dict, with out["feature"] the head's input; PAAB and
PAAT plug in through models/pose_aware.py. Each family module defines `FAMILY = Family(...)`
and `factory.FAMILIES` lists them; docs/models.md "Adding a backbone" walks through one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax

TRAINABLE, FROZEN = "trainable", "frozen"


def all_trainable(params: Mapping) -> dict:
  """Labels of a family fine-tuned end to end: every leaf trains."""
  return jax.tree.map(lambda _: TRAINABLE, dict(params))


@dataclasses.dataclass(frozen=True)
class Weights:
  """Where a family's converted pretrained weights come from.

  field:     the top-level config field holding the converted directory (config.<field>).
  converter: the module that writes that directory (`python -m <converter> --help`).
  load:      (model config, init params, directory) -> (params, the params file read); strict
             (every missing / unexpected key listed).
  """
  field: str
  converter: str
  load: Callable[[Any, Mapping, str], tuple[dict, Any]]


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family.

  name:         `config.model.family`.
  create:       ModelConfig -> the flax module.
  input_spec:   (ModelConfig, batch size) -> {key: ShapeDtypeStruct} the module reads.
  param_labels: params -> tree of "trainable" / "frozen" (`all_trainable` for full
                fine-tuning); a family whose labels freeze something supports
                `config.freeze_backbone=True`.
  freezes:      whether `config.freeze_backbone=True` applies (a frozen backbone).
  weights:      how pretrained weights load; None: trained from scratch only.
  """
  name: str
  create: Callable[[Any], Any]
  input_spec: Callable[[Any, int], dict[str, jax.ShapeDtypeStruct]]
  param_labels: Callable[[Mapping], dict] = all_trainable
  freezes: bool = False
  weights: Optional[Weights] = None
