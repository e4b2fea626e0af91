"""The "clip" model family: a frozen CLIP image tower with AIM adapters and the PGVT variants
(the module is `pgvt.PoseVideoTransformer`). Which params train, declared once by parameter
path, and how converted CLIP weights get in.

Freezing (`param_labels`, `split_params`): a leaf is "frozen" iff its path is a CLIP tower
weight the model uses unchanged, "trainable" iff it is an adapter, an embedding the paper adds,
an ln_post, the head or a PAAB/PAAT plug-in. Every leaf must match exactly one rule (else an
error lists the strays), so a new module cannot silently end up frozen or trainable.

The trainer differentiates only w.r.t. the trainable subtree:

    trainable, frozen = split_params(params)
    def loss_fn(trainable, frozen, batch, rngs):
      logits, _ = model.apply({"params": common.merge_params(trainable, frozen)}, batch,
                              train=True, rngs=rngs)
      return cross_entropy(logits, batch["label"])
    grads = jax.grad(loss_fn)(trainable, frozen, batch, rngs)   # no frozen gradients exist
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)

(or, on the whole tree, `optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()},
param_labels(params))`; note `optax.masked` would pass frozen gradients through.)

Loading (`load_clip`, `merge_clip_params`; `load` is the family's `Weights.load`): strict
merges that list every missing and unexpected key.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Optional

import jax.numpy as jnp

from pgvt_jax import paths
from pgvt_jax.models import clip_vit, common, family, pgvt
from pgvt_jax.models.common import FROZEN, TRAINABLE, flatten, unflatten
from pgvt_jax.models.config import ModelConfig

# The CLIP image tower as used by the models (proj is never used: AIM deletes it too).
FROZEN_RULES = (
    r"conv1/kernel", r"class_embedding", r"positional_embedding", r"ln_pre/(scale|bias)",
    r"resblocks_\d+/(ln_1|attn|ln_2|mlp)/.+",
)
TRAINABLE_RULES = (
    r"temporal_embedding",                            # AIM's video temporal embedding
    r"resblocks_\d+/(T|S|MLP)_Adapter(_pose)?/.+",    # AIM adapters, video and pose streams
    r"resblocks_\d+/R_Adapter/.+",                    # Refining Adapter (Eq. 2-3)
    r"pose_embed/.+",                                 # Pose Embedding layer (Sec. 3.2)
    r"ln_post(_pose)?/(scale|bias)",                  # AIM trains ln_post
    r"head/(kernel|bias)",
    r"paab_\d+(_\d+)?/.+",                            # PAAB(s) after block l: new, trained
    r"paat_head/.+",                                  # PAAT classifier (training only)
)
# Trainable params initialised from a CLIP weight (others start from their init).
FROM_CLIP = {"ln_post_pose/scale": "ln_post/scale", "ln_post_pose/bias": "ln_post/bias"}


def label_of(path: str) -> str:
  """TRAINABLE or FROZEN for one "a/b/c" param path; raises if no rule or both match."""
  frozen = any(re.fullmatch(r, path) for r in FROZEN_RULES)
  trainable = any(re.fullmatch(r, path) for r in TRAINABLE_RULES)
  if frozen == trainable:
    raise ValueError(f"param {path!r} matches {'both' if frozen else 'no'} freezing rules; "
                     f"add it to FROZEN_RULES or TRAINABLE_RULES in {__name__}")
  return FROZEN if frozen else TRAINABLE


def param_labels(params: Mapping) -> dict:
  """Same tree as `params` with leaves "trainable"/"frozen" (for optax.multi_transform).

  Raises listing every leaf that no rule (or both kinds of rule) covers.
  """
  flat, labels, bad = flatten(params), {}, []
  for path in flat:
    try:
      labels[path] = label_of(path)
    except ValueError:
      bad.append(path)
  if bad:
    raise ValueError(f"{len(bad)} param(s) not covered by exactly one freezing rule in "
                     f"{__name__}: {bad}")
  return unflatten(labels)


def split_params(params: Mapping) -> tuple[dict, dict]:
  """(trainable, frozen): two disjoint nested dicts whose union is `params`."""
  return common.split_by_labels(params, param_labels(params))


def clip_unused(config) -> tuple[str, ...]:
  """CLIP tower paths a variant does not use (loading them is not an error)."""
  m = ModelConfig.from_config(config)
  unused = ["proj"]
  if not m.streams.video:  # pose_only: no image input layer, no video ln_post
    unused += ["class_embedding", "positional_embedding", "ln_post/scale", "ln_post/bias"]
    if m.pose_format != "heatmap_rgb":  # heatmap_rgb draws the heatmaps through conv1
      unused.append("conv1/kernel")
  return tuple(unused)


def merge_clip_params(init_params: Mapping, clip_params: Mapping, *,
                      unused: Iterable[str] = ("proj",),
                      from_clip: Optional[Mapping[str, str]] = None) -> dict:
  """Strict merge of a converted CLIP tower (`convert_clip.load`) into a model's init params.

  - every frozen model param must come from `clip_params` (missing -> error);
  - every `clip_params` path must exist in the model, except `unused` (unexpected -> error);
  - trainable params absent from CLIP keep their init, or are copied from the CLIP path
    `from_clip[path]` (default FROM_CLIP: ln_post_pose <- ln_post);
  - shapes must agree, except positional_embedding, which is resized (bicubic) to the model's
    grid when the model's image size differs;
  - values are cast to the init param's dtype.
  """
  from_clip = FROM_CLIP if from_clip is None else from_clip
  init, clip = flatten(init_params), flatten(clip_params)
  unused = set(unused)
  labels = flatten(param_labels(init_params))
  missing = sorted(k for k in init if labels[k] == FROZEN and k not in clip)
  unexpected = sorted(k for k in clip if k not in init and k not in unused)
  if missing or unexpected:
    raise ValueError(f"merge_clip_params: missing from the CLIP params: {missing}; "
                     f"unexpected CLIP params: {unexpected}")
  out, mismatched = {}, []
  for path, leaf in init.items():
    src = path if path in clip else from_clip.get(path)
    if src is None or src not in clip:
      out[path] = leaf
      continue
    value = jnp.asarray(clip[src])
    if path == "positional_embedding" and value.shape != leaf.shape:
      value = clip_vit.resize_pos_embed(value, int(round((leaf.shape[0] - 1) ** 0.5)))
    if value.shape != leaf.shape:
      mismatched.append(f"{path}: model {tuple(leaf.shape)} vs CLIP {tuple(value.shape)}")
      continue
    out[path] = value.astype(leaf.dtype)
  if mismatched:
    raise ValueError(f"merge_clip_params: shape mismatch: {mismatched}")
  return unflatten(out)


def check_clip_config(config, clip_config: clip_vit.ClipVitConfig) -> None:
  """Raises if a converted tower's architecture differs from the model's backbone.

  Image size may differ (the positional embedding is resized). The activation is invisible in
  the weights, so it must be checked here: OpenAI towers use QuickGELU, open_clip's non-quickgelu
  ones exact GELU (set config.model.activation="gelu").
  """
  want = ModelConfig.from_config(config).clip
  diff = [f"{f}: model {getattr(want, f)!r} vs checkpoint {getattr(clip_config, f)!r}"
          for f in ("width", "layers", "patch_size", "heads", "activation", "mlp_ratio")
          if getattr(want, f) != getattr(clip_config, f)]
  if diff:
    raise ValueError("the CLIP checkpoint does not match config.model.backbone / "
                     f"config.model.activation: {diff}")


def load_clip(config, init_params: Mapping, clip_params: Mapping,
              clip_config: Optional[clip_vit.ClipVitConfig] = None) -> dict:
  """`merge_clip_params` with the variant's unused CLIP paths.

  Pass `clip_config` (from `convert_clip.load`) to also check the architecture, e.g.
      clip_config, clip_params = convert_clip.load("weights/clip_b16")
      params = common.load_clip(config.model, init_params, clip_params, clip_config)
  """
  if clip_config is not None:
    check_clip_config(config, clip_config)
  return merge_clip_params(init_params, clip_params, unused=clip_unused(config))


def load(config, init_params: Mapping, directory: str) -> tuple[dict, Any]:
  """`Weights.load`: the converted tower in `directory` (`python -m pgvt_jax.convert_clip`),
  architecture checked, merged strictly -> (params, the params file read)."""
  from pgvt_jax import convert_clip  # pylint: disable=g-import-not-at-top  (absl flags)
  clip_config, clip_params = convert_clip.load(directory)
  merged = load_clip(config, init_params, clip_params, clip_config)
  return merged, paths.as_path(directory) / convert_clip.PARAMS_FILE


FAMILY = family.Family(
    name="clip", create=pgvt.PoseVideoTransformer, input_spec=pgvt.input_spec,
    param_labels=param_labels, freezes=True,
    weights=family.Weights(field="clip_dir", converter="pgvt_jax.convert_clip", load=load))
