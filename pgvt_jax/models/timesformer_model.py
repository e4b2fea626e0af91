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

from pgvt_jax.models import common, pgvt, pixels, timesformer
from pgvt_jax.models.config import ModelConfig
from pgvt_jax.models.paab import PAAB
from pgvt_jax.models.paat import PAATHead

Array = jax.Array


def check_batch(m: ModelConfig, batch: Mapping[str, Any], train: bool = True) -> None:
  """Raises ValueError naming the batch key and the config fields when shapes disagree."""
  ts = m.timesformer

  def need(key, shape, fields, why):
    if key not in batch:
      raise ValueError(f"batch has no {key!r} ({why} needs it); keys: {sorted(batch)}")
    got = tuple(batch[key].shape)
    if len(got) != len(shape) + 1 or got[1:] != shape:
      raise ValueError(f"batch[{key!r}] has shape {got}; expected (B, "
                       f"{', '.join(map(str, shape))}) from {fields}")

  need("frames", (ts.num_frames, ts.image_size, ts.image_size, 3),
       "config.model.video_frames and config.model.image_size", "family 'timesformer'")
  if pgvt.needs_pose_maps(m, train):
    why = ("config.model.paab_layers (pose maps)" if m.paab_layers
           else "config.model.paat_layer (pose maps as training targets)")
    need("pose", (m.pose_frames, m.num_joints, 2), "config.model.pose_frames (T_h) and "
         f"joints_per_person x num_persons (J={m.num_joints})", why)
    need("pose_mask", (m.pose_frames, m.num_joints), "config.model.pose_frames and J", why)


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
    check_batch(m, batch, train)
    out, maps = {}, None
    if pgvt.needs_pose_maps(m, train):  # P2D/P3D of the T video frames (pose_maps.py)
      rng = (self.make_rng("dropout") if train and self.has_rng("dropout")
             else jax.random.PRNGKey(0))  # Table 2 / Fig. 4 ablation draws
      maps = pgvt.video_pose_maps(m, batch, rng)
    rates = np.linspace(0.0, m.drop_path, ts.layers)
    cls, patches = self.backbone.embed(  # uint8 pixels normalised on the device
        pixels.model_frames(batch["frames"], *m.pixel_stats, m.compute_dtype))
    for i in range(ts.layers):
      cls, patches = self.backbone.block(i, cls, patches, train)
      cls, patches = self.pose_aware(cls, patches, i + 1, maps, float(rates[i]), train, out)
    out["feature"] = self.backbone.norm(cls[:, 0]).astype(jnp.float32)
    # The official head has no dropout before it: config.model.dropout=0.0 for parity.
    x = nn.Dropout(m.dropout)(out["feature"], deterministic=not train)
    logits = nn.Dense(m.num_classes, kernel_init=timesformer.TRUNC_NORMAL, name="head")(x)
    return logits, out

  def pose_aware(self, cls: Array, patches: Array, layer: int, maps, drop_path: float,
                 train: bool, out: dict) -> tuple[Array, Array]:
    """PAAB / PAAT after block `layer` (1-indexed): one CLS per clip `(B, 1, D)`, patches
    `(B, T, N, D)`, the layout the plug-ins are written against (same names as the CLIP
    family: paab_{l}[_{j}], paat_head)."""
    m, ts = self.config, self.config.timesformer
    if layer in m.paab_layers:
      for j in range(m.paab_depth):  # Table 1c: consecutive PAABs at one position
        cls, patches = PAAB(num_heads=ts.heads, mlp_ratio=ts.mlp_ratio, variant=m.paab_variant,
                            dtype=m.compute_dtype, drop_path=drop_path,
                            drop_path_mode=m.paab_drop_path, attention_impl=m.attention_impl,
                            ln_eps=timesformer.LN_EPS,
                            name=f"paab_{layer}" + (f"_{j + 1}" if j else ""))(
                                cls, patches, maps[0], train=train)
    if layer == m.paat_layer and (train or self.is_initializing()):
      k = m.joints_per_person if m.paat_target == "p3d" else 1
      logits = PAATHead(k, m.paat_hidden, dtype=m.compute_dtype, name="paat_head")(patches)
      if train:  # training only: inference needs no keypoints and never runs the head
        out["paat_logits"] = logits                                    # (B, T, N, K)
        out["paat_targets"] = maps[1] if m.paat_target == "p3d" else maps[0][..., None]
    return cls, patches


def input_spec(config, batch_size: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
  """frames, plus pose / pose_mask when PAAB or PAAT is on (init builds the PAAT head)."""
  m = ModelConfig.from_config(config)
  ts = m.timesformer
  f32 = lambda *shape: jax.ShapeDtypeStruct((batch_size,) + shape, jnp.float32)
  spec = {"frames": jax.ShapeDtypeStruct(  # uint8 pixels, as the data pipeline sends them
      (batch_size, ts.num_frames, ts.image_size, ts.image_size, 3), jnp.uint8)}
  if m.pose_aware:
    spec["pose"] = f32(m.pose_frames, m.num_joints, 2)
    spec["pose_mask"] = f32(m.pose_frames, m.num_joints)
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
