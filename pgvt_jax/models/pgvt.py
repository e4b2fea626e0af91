"""PGVT (Pose-Guided Video Transformer) and the AIM baselines, as one configurable Flax model.

    model = pgvt.create_model(config.model)
    params = pgvt.init_params(model, jax.random.key(0))          # then common.load_clip(...)
    logits, out = model.apply({"params": params}, batch, train=True,
                              rngs={"dropout": k1, "drop_path": k2})

Batch (from pgvt_jax.data): frames (B, T_l, S, S, 3) uint8 RGB, normalised in the model with
config.model.pixel_stats (CLIP's by default; float frames are taken as already normalised); pose (B, T_h, J, 2) in
[0, 1]; pose_mask (B, T_h, J) optional (default: all joints present); pose_heatmap
(B, T_h, Hh, Hh, J) for pose_format="heatmap". Streams a variant does not use are not read.

The frozen CLIP weights live at the same paths as in `clip_vit.ClipVisionTransformer`
(conv1, class_embedding, positional_embedding, ln_pre, resblocks_{i}/{ln_1,attn,ln_2,mlp}) and
are shared by the pose and the video stream ("T-Attn and S-Attn share weights and are frozen").
Trainable additions per block (resblocks_{i}/...):
  T_Adapter, S_Adapter, MLP_Adapter               video stream (AIM names)
  T_Adapter_pose, S_Adapter_pose, MLP_Adapter_pose pose stream
  R_Adapter                                        Refining Adapter (Eq. 2-3)
and at the top: temporal_embedding (video), pose_embed/..., ln_post (video), ln_post_pose, head.
PAAB / PAAT (the second paper, config.model.paab_* / paat_*; video stream): paab_{l} after
block l (PoseVideoTransformer.pose_aware), paat_head on the patch tokens after block l (train
mode only); their pose maps come from batch pose / pose_mask (video_pose_maps).

Equation -> code: Eq. 1 `PoseVideoBlock.temporal`; Eq. 2-3 `adapters.RefiningAdapter`;
Eq. 4 `PoseVideoBlock.spatial`; Eq. 5 `PoseVideoBlock.output`; Joint Prediction
`PoseVideoTransformer.__call__`. See docs/models.md.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pgvt_jax.models import clip_vit, layers, pixels, pose_maps
from pgvt_jax.models.adapters import Adapter, RefiningAdapter
from pgvt_jax.models.paab import PAAB
from pgvt_jax.models.paat import PAATHead
from pgvt_jax.models.config import ModelConfig
from pgvt_jax.models.embeddings import PoseEmbedding

Array = jax.Array
MaybeArray = Optional[Array]


class PoseVideoBlock(clip_vit.ResidualAttentionBlock):
  """One PGVT block (or AIM block) on pose tokens P `(B, T_h, N_P, D)` and video tokens
  Z `(B, T_l, N_Z, D)`; either may be None when the variant has no such stream.

  The frozen ln_1/attn/ln_2/mlp of the CLIP block are applied to both streams.
  """
  model: ModelConfig = ModelConfig()
  drop_path_rate: float = 0.0

  def setup(self):
    super().setup()
    m, s = self.model, self.model.streams
    adapter = lambda skip: Adapter(m.adapter_ratio, skip=skip, dtype=self.dtype)
    if s.video:
      if s.video_temporal:
        self.T_Adapter = adapter(skip=False)
      self.S_Adapter = adapter(skip=True)
      self.MLP_Adapter = adapter(skip=False)
    if s.pose:
      if s.pose_temporal:
        self.T_Adapter_pose = adapter(skip=False)
      self.S_Adapter_pose = adapter(skip=True)
      self.MLP_Adapter_pose = adapter(skip=False)
    if s.refine:
      self.R_Adapter = RefiningAdapter(
          m.pose_frames, m.video_frames, heads=m.refine_heads or self.config.heads,
          refine_pose=s.refine_pose, refine_video=s.refine_video, dtype=self.dtype,
          attention_impl=m.attention_impl)
    # Stochastic depth: per (clip, frame) by default, AIM's per token position as an option.
    self.drop_path = layers.DropPath(self.drop_path_rate, m.drop_path_mode)

  def temporal(self, x: Array, adapter: nn.Module, train: bool,
               record: Optional[str] = None) -> Array:
    """Eq. 1 (and AIM's temporal adaptation): x + Adapter(T-Attn(x)).

    T-Attn is the frozen LN + MSA applied along time: for each token position n (CLS
    included) the T frames attend to each other. `(B, T, N, D) -> (B, T, N, D)`.
    """
    xt = self.attention(jnp.swapaxes(x, 1, 2), record=record)  # (B, N, T, D)
    xt = jnp.swapaxes(adapter(xt), 1, 2)
    return x + self.drop_path(xt, deterministic=not train)

  def spatial(self, p: MaybeArray, z: MaybeArray) -> tuple[MaybeArray, MaybeArray]:
    """Pose-Video Spatial Attention S, Eq. 2-4.

    S-Attn (frozen LN + MSA within each frame) per stream, followed by that stream's AIM
    S-Adapter (with skip): x_P = S_Adapter_pose(S-Attn(P^T)), x_Z = S_Adapter(S-Attn(Z)).
    The R-Adapter (Eq. 2-3) then refines x_P, x_Z across modalities. Eq. 4 adds the block input.
    """
    x_p = self.S_Adapter_pose(self.attention(p, record="pose_spatial")) if p is not None else None
    x_z = self.S_Adapter(self.attention(z, record="video_spatial")) if z is not None else None
    if self.model.streams.refine:
      x_p, x_z = self.R_Adapter(x_p, x_z)                 # Eq. 2-3
    p = p + x_p if p is not None else None                # Eq. 4: P^S = P^T + P^R
    z = z + x_z if z is not None else None                # Eq. 4: Z^S = Z + Z^R
    return p, z

  def output(self, x: Array, adapter: nn.Module, train: bool) -> Array:
    """Eq. 5: x + MLP(LN(x)) + s * Adapter(LN(x)), frozen LN/MLP, s = adapter_scale."""
    xn = self.ln_2(x).astype(self.dtype or x.dtype)
    a = self.model.adapter_scale * adapter(xn)
    return x + self.mlp(xn) + self.drop_path(a, deterministic=not train)

  def __call__(self, p: MaybeArray, z: MaybeArray, train: bool = False):
    s = self.model.streams
    if p is not None and s.pose_temporal:
      p = self.temporal(p, self.T_Adapter_pose, train, "pose_temporal")  # Eq. 1: P^T
    if z is not None and s.video_temporal:
      z = self.temporal(z, self.T_Adapter, train, "video_temporal")  # AIM only, not PGVT
    p, z = self.spatial(p, z)                             # Eq. 2-4
    if p is not None:
      p = self.output(p, self.MLP_Adapter_pose, train)    # Eq. 5 top
    if z is not None:
      z = self.output(z, self.MLP_Adapter, train)         # Eq. 5 bottom
    return p, z


def check_batch(m: ModelConfig, batch: Mapping[str, Any], train: bool = True) -> None:
  """Raises ValueError naming the batch key and the config field when shapes disagree."""
  s, clip = m.streams, m.clip

  def need(key, shape, fields, why=None):
    if key not in batch:
      raise ValueError(f"batch has no {key!r} ({why or f'variant {m.variant!r}'} needs it); "
                       f"keys: {sorted(batch)}")
    got = tuple(batch[key].shape)
    if len(got) != len(shape) + 1 or any(e is not None and g != e for g, e in zip(got[1:], shape)):
      want = "(B, " + ", ".join("?" if e is None else str(e) for e in shape) + ")"
      raise ValueError(f"batch[{key!r}] has shape {got}; expected {want} from {fields}")

  if s.video:
    need("frames", (m.video_frames, clip.image_size, clip.image_size, 3),
         "config.model.video_frames (T_l) and config.model.image_size")
  if s.pose and m.pose_format == "coords":
    need("pose", (m.pose_frames, m.num_joints, 2), "config.model.pose_frames (T_h) and "
         f"config.model.joints_per_person x num_persons (J={m.num_joints})")
    if "pose_mask" in batch:
      need("pose_mask", (m.pose_frames, m.num_joints), "config.model.pose_frames and J")
  if s.pose and m.pose_format in ("heatmap", "heatmap_rgb"):
    need("pose_heatmap", (m.pose_frames, m.heatmap_size, m.heatmap_size, m.num_joints),
         "config.model.pose_frames, heatmap_size and joints_per_person x num_persons")
  if needs_pose_maps(m, train):
    why = ("config.model.paab_layers (pose maps)" if m.paab_layers
           else "config.model.paat_layer (pose maps as training targets)")
    need("pose", (m.pose_frames, m.num_joints, 2), "config.model.pose_frames (T_h) and "
         f"joints_per_person x num_persons (J={m.num_joints})", why)
    need("pose_mask", (m.pose_frames, m.num_joints), "config.model.pose_frames and J", why)


def needs_pose_maps(m: ModelConfig, train: bool) -> bool:
  """PAAB needs the pose maps always, PAAT only in training (inference needs no keypoints)."""
  return bool(m.paab_layers) or (m.paat_layer > 0 and train)


def video_pose_maps(m: ModelConfig, batch: Mapping[str, Array], rng: Array
                    ) -> tuple[Array, Array]:
  """P^2D `(B, T_l, N)` and P^3D `(B, T_l, N, j)` of the video frames (PAAB/PAAT Eq. 3-4).

  batch["pose"] is in [0, 1) of the model input (after the pipeline's crop and flip), so the
  pixel coordinates are pose * S. Pose frames k*i .. k*i+k-1 (k = T_h / T_l) lie in video
  segment i (data/sampling.py), so a video frame's maps are the union over its k pose frames
  (k = 1: that frame's own). The Table 2 / Fig. 4 ablations perturb the keypoints here, in
  training and evaluation alike (they model an unreliable pose source); `rng` draws them.
  """
  s, p = m.patch_geometry  # the backbone's (CLIP or TimeSformer) input and patch size
  kp = batch["pose"].astype(jnp.float32) * s                       # (B, T_h, J, 2) pixels
  mask = batch["pose_mask"]
  r_random, r_noise = jax.random.split(rng)
  if m.pose_map_random:
    kp = pose_maps.random_keypoints(r_random, kp, s)
  if m.pose_map_noise:
    kp = pose_maps.jitter_keypoints(r_noise, kp, m.pose_map_noise)
  p2d, p3d = pose_maps.pose_maps(kp, mask, image_size=s, patch_size=p,
                                 dilation=m.pose_map_dilation, num_persons=m.num_persons)
  b, t_high = p2d.shape[:2]
  k = t_high // m.video_frames
  p2d = p2d.reshape((b, m.video_frames, k) + p2d.shape[2:]).max(2)
  p3d = p3d.reshape((b, m.video_frames, k) + p3d.shape[2:]).max(2)
  return p2d, p3d


class PoseVideoTransformer(nn.Module):
  """PGVT / AIM on a frozen CLIP ViT. `__call__(batch, train) -> (logits (B, C), out)`.

  out: `feature` (B, D or 2D) the head's input; `pose_cls` (B, T_h, D) / `video_cls`
  (B, T_l, D) the per-frame ln_post(CLS) of each stream present.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, batch: Mapping[str, Array], *, train: bool = False):
    m, s, clip = self.config, self.config.streams, self.config.clip
    dtype = m.compute_dtype
    check_batch(m, batch, train)
    ln_pre = clip_vit.layer_norm("ln_pre")  # frozen, applied to both streams' input tokens
    p = z = None
    # heatmap_rgb: the pose stream's heatmap images go through the video stream's frozen conv1.
    conv1 = (clip_vit.clip_conv1(clip, dtype)
             if s.pose and m.pose_format == "heatmap_rgb" else None)
    if s.video:
      # uint8 pixels normalised here, on the device (float frames: already normalised).
      frames = pixels.model_frames(batch["frames"], *m.pixel_stats, dtype).astype(dtype)
      b, t = frames.shape[:2]
      z = clip_vit.patch_embed_and_pos(self, clip, frames.reshape((b * t,) + frames.shape[2:]),
                                       dtype, conv=conv1)
      z = z.reshape((b, t) + z.shape[1:])                            # (B, T_l, N_Z, D)
      temporal = self.param("temporal_embedding", nn.initializers.zeros, (t, clip.width))
      z = ln_pre(z + temporal.astype(z.dtype)[:, None]).astype(dtype)  # AIM: before ln_pre
    if s.pose:
      p = PoseEmbedding(clip.width, m.pose_frames, m.num_joints, m.pose_format,
                        hidden=m.pose_embed_hidden or 0, heatmap_size=m.heatmap_size,
                        patch_size=m.heatmap_patch, frozen_conv=conv1, dtype=dtype,
                        name="pose_embed")(batch)
      p = ln_pre(p).astype(dtype)                                    # (B, T_h, N_P, D)

    out, maps = {}, None
    if needs_pose_maps(m, train):
      maps = video_pose_maps(m, batch, self.pose_map_rng(train))

    block = layers.remat_block(PoseVideoBlock, m.remat, static_argnums=(3,))
    rates = np.linspace(0.0, m.drop_path, clip.layers)  # AIM/timm: linear in depth
    for i in range(clip.layers):
      p, z = block(clip, dtype=dtype, attention_impl=m.attention_impl, model=m,
                   drop_path_rate=float(rates[i]), name=f"resblocks_{i}")(p, z, train)
      z = self.pose_aware(z, i + 1, maps, float(rates[i]), train, out)

    # Joint Prediction: per stream, ln_post of each frame's CLS, mean over frames; concatenate.
    feats = []
    if s.pose:
      out["pose_cls"] = clip_vit.layer_norm("ln_post_pose")(p[:, :, 0]).astype(jnp.float32)
      feats.append(out["pose_cls"].mean(1))
    if s.video:
      out["video_cls"] = clip_vit.layer_norm("ln_post")(z[:, :, 0]).astype(jnp.float32)
      feats.append(out["video_cls"].mean(1))
    out["feature"] = jnp.concatenate(feats, axis=-1)
    x = nn.Dropout(m.dropout)(out["feature"], deterministic=not train)
    logits = nn.Dense(m.num_classes, kernel_init=nn.initializers.normal(0.01),
                      name="head")(x)  # AIM's I3DHead: fc_cls std 0.01, bias 0
    return logits, out

  def pose_map_rng(self, train: bool) -> Array:
    """Keys of the pose-map ablations: the dropout stream in training, fixed in evaluation."""
    if train and self.has_rng("dropout"):
      return self.make_rng("dropout")
    return jax.random.PRNGKey(0)

  def pose_aware(self, z: MaybeArray, layer: int, maps, drop_path: float, train: bool,
                 out: dict) -> MaybeArray:
    """PAAB / PAAT after block `layer` (1-indexed) on the video tokens `(B, T_l, 1+N, D)`.

    PAAB gets the per-frame CLS (C = T_l) and the patches; PAAT's head sees the patch tokens
    and puts its logits and targets into `out` (training only; at init the head is built so
    the params exist, and inference never calls it).
    """
    m = self.config
    if layer in m.paab_layers:
      cls, patches = z[:, :, 0], z[:, :, 1:]
      for j in range(m.paab_depth):  # Table 1c: paab_{l}, paab_{l}_2, ... one after another
        cls, patches = PAAB(num_heads=m.clip.heads, mlp_ratio=m.clip.mlp_ratio,
                            variant=m.paab_variant, dtype=m.compute_dtype,
                            drop_path=drop_path, drop_path_mode=m.paab_drop_path,
                            ln_eps=clip_vit.LN_EPS, attention_impl=m.attention_impl,
                            name=f"paab_{layer}" + (f"_{j + 1}" if j else ""))(
                                cls, patches, maps[0], train=train)
      z = jnp.concatenate([cls[:, :, None], patches], axis=2)
    if layer == m.paat_layer and (train or self.is_initializing()):
      k = m.joints_per_person if m.paat_target == "p3d" else 1
      logits = PAATHead(k, m.paat_hidden, dtype=m.compute_dtype, name="paat_head")(z[:, :, 1:])
      if train:
        out["paat_logits"] = logits                                  # (B, T_l, N, K)
        out["paat_targets"] = maps[1] if m.paat_target == "p3d" else maps[0][..., None]
    return z


def create_model(config) -> PoseVideoTransformer:
  """From `config.model` (ConfigDict, dict or ModelConfig); validates every field."""
  return PoseVideoTransformer(ModelConfig.from_config(config))


def input_spec(config, batch_size: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
  """The batch a variant reads, as ShapeDtypeStructs (for init, eval_shape, FLOPs)."""
  m = ModelConfig.from_config(config)
  s, size = m.streams, m.clip.image_size
  f32 = lambda *shape: jax.ShapeDtypeStruct((batch_size,) + shape, jnp.float32)
  spec = {}
  if s.video:  # uint8 pixels, as the data pipeline sends them
    spec["frames"] = jax.ShapeDtypeStruct((batch_size, m.video_frames, size, size, 3), jnp.uint8)
  if s.pose and m.pose_format == "coords":
    spec["pose"] = f32(m.pose_frames, m.num_joints, 2)
    spec["pose_mask"] = f32(m.pose_frames, m.num_joints)
  if s.pose and m.pose_format in ("heatmap", "heatmap_rgb"):
    spec["pose_heatmap"] = f32(m.pose_frames, m.heatmap_size, m.heatmap_size, m.num_joints)
  if m.pose_aware:  # PAAB/PAAT pose maps (PAAT: training only, but init builds its head)
    spec["pose"] = f32(m.pose_frames, m.num_joints, 2)
    spec["pose_mask"] = f32(m.pose_frames, m.num_joints)
  return spec


def dummy_batch(config, batch_size: int = 1) -> dict[str, jax.Array]:
  return {k: jnp.zeros(v.shape, v.dtype) for k, v in input_spec(config, batch_size).items()}


def init_params(model: PoseVideoTransformer, rng: jax.Array) -> dict:
  """Randomly initialised params (CLIP parts random too; see common.load_clip)."""
  return jax.jit(model.init)(rng, dummy_batch(model.config))["params"]


def param_shapes(model: PoseVideoTransformer) -> dict:
  """Param tree of ShapeDtypeStructs, without computing anything."""
  spec = input_spec(model.config)
  return jax.eval_shape(model.init, jax.random.key(0), spec)["params"]
