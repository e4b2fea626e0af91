"""Param trees by path, for every family: flatten / unflatten, the union of split trees, counts,
and initialising a model from trained single-stream models (late fusion).

Which params train is each family's rule (`Family.param_labels`: models/clip_family.py for the
frozen CLIP tower; models/family.py `all_trainable` for full fine-tuning); `factory.split_params`
applies it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from pgvt_jax.models import family

TRAINABLE, FROZEN = family.TRAINABLE, family.FROZEN


def flatten(tree: Mapping) -> dict[str, Any]:
  """{"a/b/c": leaf} for a nested dict of params."""
  return traverse_util.flatten_dict(dict(tree), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def split_by_labels(params: Mapping, labels: Mapping) -> tuple[dict, dict]:
  """(trainable, frozen): two disjoint nested dicts whose union is `params`; `labels` is the
  same tree with leaves "trainable" / "frozen" (a family's `param_labels(params)`)."""
  flat, lab = flatten(params), flatten(labels)
  pick = lambda which: unflatten({k: v for k, v in flat.items() if lab[k] == which})
  return pick(TRAINABLE), pick(FROZEN)


def merge_params(*trees: Mapping) -> dict:
  """Union of disjoint param trees (inverse of split_by_labels); overlapping paths are an
  error."""
  out: dict[str, Any] = {}
  for tree in trees:
    flat = flatten(tree)
    dup = sorted(set(flat) & set(out))
    if dup:
      raise ValueError(f"merge_params: paths present in more than one tree: {dup}")
    out.update(flat)
  return unflatten(out)


def count(tree: Mapping) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def merge_stream_params(init_params: Mapping, *sources: Mapping,
                        skip: Iterable[str] = (r"head/.+",)) -> dict:
  """Initialises a model from trained single-stream models (Table 4 row 3, late fusion).

  `merge_stream_params(late_fusion_init, pose_only_params, video_only_params)` copies every
  param of the sources into the init tree (same path, same shape), except paths matching
  `skip` (the head, whose input size differs). A path in several sources (the shared frozen
  CLIP tower) must hold identical values in each.
  """
  init = flatten(init_params)
  out = dict(init)
  taken: dict[str, Any] = {}
  unexpected, mismatched, conflicting = [], [], []
  for src in sources:
    for path, value in flatten(src).items():
      if any(re.fullmatch(r, path) for r in skip):
        continue
      if path not in init:
        unexpected.append(path)
      elif tuple(value.shape) != tuple(init[path].shape):
        mismatched.append(f"{path}: {tuple(value.shape)} vs {tuple(init[path].shape)}")
      elif path in taken and not np.array_equal(np.asarray(taken[path]), np.asarray(value)):
        conflicting.append(path)
      else:
        taken[path] = value
        out[path] = jnp.asarray(value, init[path].dtype)
  if unexpected or mismatched or conflicting:
    raise ValueError(f"merge_stream_params: unexpected {unexpected}; shape mismatch "
                     f"{mismatched}; different values for shared params {conflicting}")
  return unflatten(out)
