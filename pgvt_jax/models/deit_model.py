"""The "deit" model family: a DeiT image backbone (models/deit.py) run on every frame of a clip,
PAAB / PAAT after its blocks, the frames' CLS embeddings averaged, a linear head. The PAAB/PAAT
paper's multi-view alignment model (Sec. 4, Table 5) is this family with one frame per clip and
no head (`num_classes=0`): it returns the frame embedding the time-contrastive loss trains.

    model = factory.create_model(config.model)          # config.model.family = "deit"
    logits, out = model.apply({"params": params}, batch, train=True,
                              rngs={"dropout": k1, "drop_path": k2})

Batch: frames `(B, T, S, S, 3)` uint8 RGB (normalised in the model with ImageNet statistics, or
config.model.pixel_mean/std; float frames are taken as already normalised); with PAAB (always)
or PAAT (training only) also pose `(B, T_h, J, 2)` in [0, 1) of the input and pose_mask
`(B, T_h, J)` (models/pose_aware.py). Every param trains (from scratch, as the paper's DeiT).

out: `frame_embedding` (B, T, D) = norm(CLS) of each frame; `feature` (B, D) their mean, the
head's input (and the output when num_classes = 0); in training with PAAT `paat_logits`
(B*T, 1, N, K) and `paat_targets`.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pgvt_jax.models import deit, family, layers, pixels, pose_aware
from pgvt_jax.models.config import ModelConfig

Array = jax.Array


class DeiT(nn.Module):
  """`__call__(batch, train) -> (logits (B, C) or feature (B, D), out)`; see the docstring."""
  config: ModelConfig

  @nn.compact
  def __call__(self, batch: Mapping[str, Array], *, train: bool = False):
    m, c = self.config, self.config.arch
    pose_aware.check_video_batch(m, batch, train)
    dtype = m.compute_dtype
    x = pixels.model_frames(batch["frames"], *m.pixel_stats, dtype)    # (B, T, S, S, 3)
    b, t = x.shape[:2]
    init = layers.trunc_normal()
    x = x.reshape((b * t,) + x.shape[2:])                        # frames as images
    x = nn.Conv(c.width, (c.patch_size,) * 2, strides=(c.patch_size,) * 2, padding="VALID",
                kernel_init=init, dtype=dtype, name="patch_embed")(x)
    x = x.reshape(b * t, -1, c.width)                            # (B*T, N, D) row-major
    cls = self.param("cls_token", init, (1, 1, c.width))
    pos = self.param("pos_embed", init, (1, 1 + x.shape[1], c.width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b * t, 1, c.width)).astype(x.dtype), x],
                        axis=1) + pos.astype(x.dtype)
    out, maps = {}, None
    if pose_aware.needs_maps(m, train):  # each frame is a one-frame video to the plug-ins
      maps = tuple(a.reshape((b * t, 1) + a.shape[2:])
                   for a in pose_aware.maps(self, m, batch, train))
    block = layers.remat_block(deit.Block, m.remat, static_argnums=(2,))
    rates = np.linspace(0.0, m.drop_path, c.layers)   # timm: linear in depth, per sample
    for i in range(c.layers):
      x = block(c.heads, c.mlp_ratio, c.ln_eps, float(rates[i]), dtype, m.attention_impl,
                name=f"blocks_{i}")(x, train)
      if i + 1 in m.paab_layers or i + 1 == m.paat_layer:  # CLS (B*T, 1, D), (B*T, 1, N, D)
        cls_t, patches = pose_aware.after_block(
            m, i + 1, x[:, :1], x[:, None, 1:], maps, float(rates[i]), train, out,
            initializing=self.is_initializing(), ln_eps=c.ln_eps)
        x = jnp.concatenate([cls_t, patches[:, 0]], axis=1)
    x = nn.LayerNorm(epsilon=c.ln_eps, name="norm")(x)
    out["frame_embedding"] = x[:, 0].astype(jnp.float32).reshape(b, t, c.width)
    out["feature"] = out["frame_embedding"].mean(1)
    if not m.num_classes:  # an embedding model (the alignment task)
      return out["feature"], out
    y = nn.Dropout(m.dropout)(out["feature"], deterministic=not train)
    return nn.Dense(m.num_classes, kernel_init=init, name="head")(y), out


def input_spec(config, batch_size: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
  """frames, plus pose / pose_mask when PAAB or PAAT is on (init builds the PAAT head)."""
  m = ModelConfig.from_config(config)
  s = m.arch.image_size
  spec = {"frames": jax.ShapeDtypeStruct((batch_size, m.video_frames, s, s, 3), jnp.uint8)}
  spec.update(pose_aware.input_spec(m, batch_size))
  return spec


# Trained from scratch (the paper's alignment DeiT): no converted weights directory yet;
# `deit.convert_hf_vit` maps Hugging Face / timm weights to this tree for a `Weights.load`.
FAMILY = family.Family(name="deit", create=DeiT, input_spec=input_spec)
