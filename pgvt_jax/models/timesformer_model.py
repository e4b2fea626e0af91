"""The "timesformer" model family: TimeSformer + linear head, the PAAB/PAAT paper's classifier.

    model = factory.create_model(config.model)          # config.model.family = "timesformer"
    logits, out = model.apply({"params": params}, batch, train=True,
                              rngs={"dropout": k1, "drop_path": k2})

Batch: frames `(B, T, S, S, 3)` normalised with TimeSformer's statistics
(`timesformer.MEAN/STD`; `config.data.pixel_mean/std` follow the family). Every param trains
(full fine-tuning, as the paper). Param tree: the backbone's (official names, top level, so a
`convert_timesformer` output loads by path) plus `head/{kernel,bias}`.

out: `feature` (B, D) = norm(CLS), the head's input.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from pgvt_jax.models import common, timesformer
from pgvt_jax.models.config import ModelConfig

Array = jax.Array


def check_batch(m: ModelConfig, batch: Mapping[str, Any]) -> None:
  """Raises ValueError naming the batch key and the config fields when shapes disagree."""
  ts = m.timesformer
  if "frames" not in batch:
    raise ValueError(f"batch has no 'frames' (family 'timesformer' needs it); keys: "
                     f"{sorted(batch)}")
  got, want = tuple(batch["frames"].shape), (ts.num_frames, ts.image_size, ts.image_size, 3)
  if len(got) != 5 or got[1:] != want:
    raise ValueError(f"batch['frames'] has shape {got}; expected (B, "
                     f"{', '.join(map(str, want))}) from config.model.video_frames and "
                     "config.model.image_size")


class TimeSformerClassifier(nn.Module):
  """`__call__(batch, train) -> (logits (B, C), out)`; see the module docstring."""
  config: ModelConfig

  def setup(self):
    m = self.config
    self.backbone = timesformer.TimeSformer(m.timesformer, drop_path=m.drop_path,
                                            dtype=m.compute_dtype, remat=m.remat)
    nn.share_scope(self, self.backbone)  # backbone params at the top level, official names
    self.dropout = nn.Dropout(m.dropout)  # the official head has none: dropout=0.0 for parity
    self.head = nn.Dense(m.num_classes, kernel_init=timesformer.TRUNC_NORMAL)

  def __call__(self, batch: Mapping[str, Array], *, train: bool = False):
    m = self.config
    check_batch(m, batch)
    cls, patches = self.backbone.embed(batch["frames"])
    for i in range(m.timesformer.layers):
      cls, patches = self.backbone.block(i, cls, patches, train)
    out = {"feature": self.backbone.norm(cls[:, 0]).astype(jnp.float32)}
    x = self.dropout(out["feature"], deterministic=not train)
    return self.head(x), out


def input_spec(config, batch_size: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
  m = ModelConfig.from_config(config)
  ts = m.timesformer
  return {"frames": jax.ShapeDtypeStruct(
      (batch_size, ts.num_frames, ts.image_size, ts.image_size, 3), jnp.float32)}


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
