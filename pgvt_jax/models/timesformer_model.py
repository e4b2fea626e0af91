"""The "timesformer" model family: TimeSformer + linear head, the PAAB/PAAT paper's classifier.

    model = factory.create_model(config.model)          # config.model.family = "timesformer"
    logits, out = model.apply({"params": params}, batch, train=True,
                              rngs={"dropout": k1, "drop_path": k2})

Batch: frames `(B, T, S, S, 3)` uint8 RGB, normalised in the model with TimeSformer's statistics
(`timesformer.MEAN/STD`, or config.model.pixel_mean/std = config.data's; float frames are taken
as already normalised); with PAAB (always) or
PAAT (training only) also pose `(B, T_h, J, 2)` in [0, 1) of the input and pose_mask
`(B, T_h, J)`. Every param trains (full fine-tuning, as the paper). Param tree: the backbone's
(official names, top level, so a `convert_timesformer` output loads by path), `head`, and the
plug-ins `paab_{l}[_{j}]` (PAAB after block l) and `paat_head` (training only).

out: `feature` (B, D) = norm(CLS), the head's input; in training with PAAT `paat_logits`
(B, T, N, K) and `paat_targets` for the "paat" aux loss.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pgvt_jax import paths
from pgvt_jax.models import common, family, pixels, pose_aware, timesformer
from pgvt_jax.models.config import ModelConfig

Array = jax.Array


class TimeSformerClassifier(nn.Module):
  """`__call__(batch, train) -> (logits (B, C), out)`; see the module docstring."""
  config: ModelConfig

  def setup(self):
    m = self.config
    self.backbone = timesformer.TimeSformer(m.timesformer, drop_path=m.drop_path,
                                            dtype=m.compute_dtype, remat=m.remat,
                                            attention_impl=m.attention_impl)
    nn.share_scope(self, self.backbone)  # backbone params at the top level, official names

  @nn.compact
  def __call__(self, batch: Mapping[str, Array], *, train: bool = False):
    m, ts = self.config, self.config.timesformer
    pose_aware.check_video_batch(m, batch, train)
    out, maps = {}, None
    if pose_aware.needs_maps(m, train):  # P2D/P3D of the T video frames (PAAB / PAAT)
      maps = pose_aware.maps(self, m, batch, train)
    rates = np.linspace(0.0, m.drop_path, ts.layers)
    cls, patches = self.backbone.embed(  # uint8 pixels normalised on the device
        pixels.model_frames(batch["frames"], *m.pixel_stats, m.compute_dtype))
    for i in range(ts.layers):
      cls, patches = self.backbone.block(i, cls, patches, train)
      cls, patches = pose_aware.after_block(  # one CLS per clip: C = 1
          m, i + 1, cls, patches, maps, float(rates[i]), train, out,
          initializing=self.is_initializing(), ln_eps=timesformer.LN_EPS)
    out["feature"] = self.backbone.norm(cls[:, 0]).astype(jnp.float32)
    # The official head has no dropout before it: config.model.dropout=0.0 for parity.
    x = nn.Dropout(m.dropout)(out["feature"], deterministic=not train)
    logits = nn.Dense(m.num_classes, kernel_init=timesformer.TRUNC_NORMAL, name="head")(x)
    return logits, out


def input_spec(config, batch_size: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
  """frames, plus pose / pose_mask when PAAB or PAAT is on (init builds the PAAT head)."""
  m = ModelConfig.from_config(config)
  ts = m.timesformer
  spec = {"frames": jax.ShapeDtypeStruct(  # uint8 pixels, as the data pipeline sends them
      (batch_size, ts.num_frames, ts.image_size, ts.image_size, 3), jnp.uint8)}
  spec.update(pose_aware.input_spec(m, batch_size))
  return spec


def backbone_paths(config) -> set[str]:
  """"a/b/c" paths of the backbone params (everything the converter writes, `head` aside)."""
  ts = ModelConfig.from_config(config).timesformer
  frames = jax.ShapeDtypeStruct((1, ts.num_frames, ts.image_size, ts.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(timesformer.TimeSformer(ts).init, jax.random.key(0), frames)
  return set(common.flatten(shapes["params"]))


def load_pretrained(config, init_params: Mapping, ts_config: timesformer.TimeSformerConfig,
                    ts_params: Mapping) -> dict:
  """Strict merge of a converted TimeSformer (`convert_timesformer.load`) into init params.

  The architecture must match (width, layers, heads, patch size, MLP ratio); frames and image
  size may differ: `time_embed` / `pos_embed` are resized nearest, as the official forward does
  (so an 8-frame K400 checkpoint starts a 16-frame model). Every backbone param must come from
  the checkpoint and every checkpoint param must exist in the model, except its classifier
  `head` (a new dataset gets a new head). Params outside the backbone (head, plug-ins) keep
  their init.
  """
  m = ModelConfig.from_config(config)
  want = m.timesformer
  diff = [f"{f}: model {getattr(want, f)!r} vs checkpoint {getattr(ts_config, f)!r}"
          for f in ("width", "layers", "heads", "patch_size", "mlp_ratio")
          if getattr(want, f) != getattr(ts_config, f)]
  if diff:
    raise ValueError(f"the TimeSformer checkpoint does not match config.model.backbone: {diff}")
  init, ckpt = common.flatten(init_params), common.flatten(ts_params)
  ckpt = {k: v for k, v in ckpt.items() if not k.startswith("head/")}
  if "time_embed" in ckpt:
    ckpt["time_embed"] = timesformer.resize_time_embed(ckpt["time_embed"], want.num_frames)
  if "pos_embed" in ckpt:
    ckpt["pos_embed"] = timesformer.resize_pos_embed(ckpt["pos_embed"], want.grid_size)
  backbone = backbone_paths(m)
  missing = sorted(backbone - set(ckpt))
  unexpected = sorted(set(ckpt) - backbone)
  if missing or unexpected:
    raise ValueError(f"TimeSformer checkpoint: missing params {missing}; unexpected params "
                     f"{unexpected}")
  out, mismatched = {}, []
  for path, leaf in init.items():
    if path not in ckpt:
      out[path] = leaf
    elif tuple(ckpt[path].shape) != tuple(leaf.shape):
      mismatched.append(f"{path}: model {tuple(leaf.shape)} vs checkpoint "
                        f"{tuple(ckpt[path].shape)}")
    else:
      out[path] = jnp.asarray(ckpt[path], leaf.dtype)
  if mismatched:
    raise ValueError(f"TimeSformer checkpoint: shape mismatch: {mismatched}")
  return common.unflatten(out)


def load(config, init_params: Mapping, directory: str) -> tuple[dict, Any]:
  """`Weights.load`: a `python -m pgvt_jax.convert_timesformer` directory, merged strictly by
  `load_pretrained` -> (params, the params file read)."""
  from pgvt_jax import convert_timesformer  # pylint: disable=g-import-not-at-top  (absl flags)
  ts_config, ts_params = convert_timesformer.load(directory)
  merged = load_pretrained(config, init_params, ts_config, ts_params)
  return merged, paths.as_path(directory) / convert_timesformer.PARAMS_FILE


# Full fine-tuning, every param trains (the PAAB/PAAT paper).
FAMILY = family.Family(
    name="timesformer", create=TimeSformerClassifier, input_spec=input_spec,
    weights=family.Weights(field="timesformer_dir", converter="pgvt_jax.convert_timesformer",
                           load=load))
