"""PAAB and PAAT (Reilly et al.) on any backbone: the pose maps a batch gives, the plug-ins
after block l, and the batch entries they need. One schema for every family (the
`config.model.paab_*`, `paat_*`, `pose_map_*` fields) and one keypoint convention:

  batch["pose"]       (B, T_h, J, 2) (x, y) in [0, 1) of the model input (after the pipeline's
                      crop, resize and flip); pixels are pose * S
  batch["pose_mask"]  (B, T_h, J) 1 where the keypoint is present

Inside a family's compact `__call__`:

    maps = pose_aware.maps(self, m, batch, train) if pose_aware.needs_maps(m, train) else None
    for i in range(layers):
      cls, patches = block(i, cls, patches)
      cls, patches = pose_aware.after_block(m, i + 1, cls, patches, maps, rate, train, out,
                                            initializing=self.is_initializing())

with cls `(B, C, D)` (C = 1: one CLS per clip, TimeSformer; C = T: one per frame, CLIP + AIM,
DeiT) and patches `(B, T, N, D)` row-major per frame.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from pgvt_jax.models import pose_maps
from pgvt_jax.models.paab import PAAB
from pgvt_jax.models.paat import PAATHead

Array = jax.Array


def needs_maps(m, train: bool) -> bool:
  """PAAB needs the pose maps always, PAAT only in training (inference needs no keypoints)."""
  return bool(m.paab_layers) or (m.paat_layer > 0 and train)


def video_pose_maps(m, batch: Mapping[str, Array], rng: Array) -> tuple[Array, Array]:
  """P^2D `(B, T_l, N)` and P^3D `(B, T_l, N, j)` of the video frames (PAAB/PAAT Eq. 3-4).

  Pixels are pose * S. Pose frames k*i .. k*i+k-1 (k = T_h / T_l) lie in video segment i
  (data/sampling.py), so a video frame's maps are the union over its k pose frames (k = 1: that
  frame's own). The Table 2 / Fig. 4 ablations perturb the keypoints here, in training and
  evaluation alike (they model an unreliable pose source); `rng` draws them.
  """
  s, p = m.patch_geometry  # the backbone's input and patch size, whatever the family
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


def maps(module: nn.Module, m, batch: Mapping[str, Array], train: bool) -> tuple[Array, Array]:
  """`video_pose_maps` with the ablations' keys: the dropout stream in training, fixed in
  evaluation (so an evaluation is repeatable)."""
  if train and module.has_rng("dropout"):
    rng = module.make_rng("dropout")
  else:
    rng = jax.random.PRNGKey(0)
  return video_pose_maps(m, batch, rng)


def after_block(m, layer: int, cls: Array, patches: Array, maps_: Optional[tuple],
                drop_path: float, train: bool, out: dict, *, initializing: bool,
                ln_eps: float) -> tuple[Array, Array]:
  """PAAB(s) and the PAAT head after block `layer` (1-indexed); call from a compact method.

  PAAB `paab_{l}`, `paab_{l}_2`, ... (Table 1c: paab_depth in a row) gets cls `(B, C, D)` and
  patches `(B, T, N, D)`. PAAT's head `paat_head` reads the patch tokens and puts
  `paat_logits` `(B, T, N, K)` and `paat_targets` into `out` (training only; at init it is built
  so its params exist, and inference never calls it).
  """
  arch = m.arch
  if layer in m.paab_layers:
    for j in range(m.paab_depth):
      cls, patches = PAAB(num_heads=arch.heads, mlp_ratio=arch.mlp_ratio,
                          variant=m.paab_variant, dtype=m.compute_dtype, drop_path=drop_path,
                          drop_path_mode=m.paab_drop_path, ln_eps=ln_eps,
                          attention_impl=m.attention_impl,
                          name=f"paab_{layer}" + (f"_{j + 1}" if j else ""))(
                              cls, patches, maps_[0], train=train)
  if layer == m.paat_layer and (train or initializing):
    k = m.joints_per_person if m.paat_target == "p3d" else 1
    logits = PAATHead(k, m.paat_hidden, dtype=m.compute_dtype, name="paat_head")(patches)
    if train:
      out["paat_logits"] = logits                                    # (B, T, N, K)
      out["paat_targets"] = maps_[1] if m.paat_target == "p3d" else maps_[0][..., None]
  return cls, patches


def input_spec(m, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """pose / pose_mask when PAAB or PAAT is on (PAAT: training only, but init builds its
  head)."""
  if not m.pose_aware:
    return {}
  f32 = lambda *shape: jax.ShapeDtypeStruct((batch_size,) + shape, jnp.float32)
  return {"pose": f32(m.pose_frames, m.num_joints, 2),
          "pose_mask": f32(m.pose_frames, m.num_joints)}


def check_batch(m, train: bool, need: Callable[..., Any]) -> None:
  """Calls `need(key, shape, fields, why)` for the entries the pose maps read."""
  if not needs_maps(m, train):
    return
  why = ("config.model.paab_layers (pose maps)" if m.paab_layers
         else "config.model.paat_layer (pose maps as training targets)")
  need("pose", (m.pose_frames, m.num_joints, 2), "config.model.pose_frames (T_h) and "
       f"joints_per_person x num_persons (J={m.num_joints})", why)
  need("pose_mask", (m.pose_frames, m.num_joints), "config.model.pose_frames and J", why)


def check_video_batch(m, batch: Mapping[str, Any], train: bool = True) -> None:
  """A video-only family's batch (timesformer, deit): frames `(B, T_l, S, S, 3)` and what the
  plug-ins read; raises ValueError naming the batch key and the config fields."""
  s = m.arch.image_size

  def need(key, shape, fields, why):
    if key not in batch:
      raise ValueError(f"batch has no {key!r} ({why} needs it); keys: {sorted(batch)}")
    got = tuple(batch[key].shape)
    if len(got) != len(shape) + 1 or got[1:] != shape:
      raise ValueError(f"batch[{key!r}] has shape {got}; expected (B, "
                       f"{', '.join(map(str, shape))}) from {fields}")

  need("frames", (m.video_frames, s, s, 3), "config.model.video_frames and "
       "config.model.image_size", f"family {m.family!r}")
  check_batch(m, train, need)
