"""Pose maps of the PAAB/PAAT paper (Reilly et al., Sec. 3.1, Eq. 3-4): which patch holds which
keypoint.

    p2d, p3d = pose_maps(pose * S, pose_mask, image_size=S, patch_size=p)

Eq. 3 is the set K of keypoints (t, k, x, y); Eq. 4 the binary map P_tkxy that is 1 at the pixel
of each keypoint. Max-pooling P over each p x p patch gives
  P^3D (..., T, N, K): 1 iff keypoint k lies in patch n of frame t,
  P^2D (..., T, N)   : 1 iff any keypoint lies in patch n (the max of P^3D over k),
with N = (S // p)^2 patches in the model's row-major token order n = (y // p) * (S // p) + x // p
(the public PoseAwareVT code indexes x-major, i.e. transposed; we do not).

Coordinates are pixels of the model input, pixel i covering [i, i + 1) (the data pipeline's
convention: `pose` in [0, 1) times S). A keypoint that is masked, NaN/inf or outside [0, S)^2
contributes nothing; several persons (person-major joints, `num_persons` > 1) are united per
joint type. Computed on the batch, i.e. after the pipeline's crop, resize and flip (which also
swaps left/right joint labels), so the maps always match the frames.

Two ablation helpers (PAAB/PAAT Table 2 and Fig. 4) perturb keypoints before the maps are built:
`random_keypoints` (keypoints moved to uniform random pixels) and `jitter_keypoints` (+ a random
integer in [0, eps] pixels per coordinate).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def keypoint_patch_index(keypoints: Array, mask: Array, *, image_size: int,
                         patch_size: int) -> tuple[Array, Array]:
  """Row-major patch index of each keypoint and whether it counts (Eq. 3).

  keypoints `(..., J, 2)` pixel (x, y); mask `(..., J)`. Returns idx `(..., J)` int32 (0 where
  invalid) and valid `(..., J)` bool.
  """
  if image_size % patch_size:
    raise ValueError(f"pose_maps: image_size={image_size} is not a multiple of "
                     f"patch_size={patch_size}")
  x, y = keypoints[..., 0], keypoints[..., 1]
  valid = ((mask > 0) & jnp.isfinite(x) & jnp.isfinite(y)
           & (x >= 0) & (x < image_size) & (y >= 0) & (y < image_size))
  grid = image_size // patch_size
  col = jnp.floor(jnp.where(valid, x, 0) / patch_size).astype(jnp.int32)
  row = jnp.floor(jnp.where(valid, y, 0) / patch_size).astype(jnp.int32)
  # Guard float rounding at the last pixel (x just below S).
  col, row = jnp.clip(col, 0, grid - 1), jnp.clip(row, 0, grid - 1)
  return jnp.where(valid, row * grid + col, 0), valid


def dilate(p2d: Array, grid: int, k: int) -> Array:
  """k x k max filter of a `(..., g*g)` row-major patch map (stride 1, zero padding)."""
  if k == 1:
    return p2d
  lead = p2d.shape[:-1]
  m = p2d.reshape((-1, grid, grid))
  m = jax.lax.reduce_window(m, jnp.zeros((), m.dtype), jax.lax.max, (1, k, k), (1, 1, 1),
                            "SAME")
  return m.reshape(lead + (grid * grid,))


def pose_maps(keypoints: Array, mask: Array, *, image_size: int, patch_size: int,
              dilation: int = 1, num_persons: int = 1) -> tuple[Array, Array]:
  """P^2D and P^3D (Eq. 4 max-pooled per patch).

  Args:
    keypoints: `(..., T, J, 2)` pixel (x, y) in the model input (pixel i covers [i, i+1)).
    mask: `(..., T, J)`, > 0 where the keypoint is present.
    image_size: S; patch_size: p (S % p == 0).
    dilation: k (odd); P^2D is dilated by a k x k max filter on the patch grid (the public
      code's default is 3; the paper does not dilate: 1). P^3D is never dilated.
    num_persons: n; J = n * K joints, person-major; P^3D is the union over persons.

  Returns:
    p2d `(..., T, N)` and p3d `(..., T, N, K)`, float32 in {0, 1}, N = (S // p)^2 row-major.
  """
  if keypoints.shape[-1] != 2 or keypoints.shape[:-1] != mask.shape:
    raise ValueError(f"pose_maps: keypoints {keypoints.shape} must be (..., T, J, 2) and mask "
                     f"{mask.shape} (..., T, J)")
  if not isinstance(dilation, int) or dilation < 1 or dilation % 2 == 0:
    raise ValueError(f"pose_maps: dilation={dilation!r}; expected an odd integer >= 1")
  j = keypoints.shape[-2]
  if num_persons < 1 or j % num_persons:
    raise ValueError(f"pose_maps: J={j} joints is not a multiple of num_persons={num_persons}")
  grid = image_size // patch_size
  idx, valid = keypoint_patch_index(keypoints, mask, image_size=image_size,
                                    patch_size=patch_size)
  onehot = jax.nn.one_hot(idx, grid * grid, dtype=jnp.float32) * valid[..., None]  # (.., J, N)
  k = j // num_persons
  onehot = onehot.reshape(onehot.shape[:-2] + (num_persons, k, grid * grid)).max(-3)
  p3d = jnp.swapaxes(onehot, -1, -2)                                                # (.., N, K)
  p2d = dilate(p3d.max(-1), grid, dilation)
  return p2d, p3d


def random_keypoints(rng: Array, keypoints: Array, image_size: int) -> Array:
  """Table 2 "random pose maps": every keypoint moved to a uniform random pixel.

  The mask is kept, so the maps keep the number of active entries per frame but lose where
  the person is ("values activated irrespective of the actual presence of keypoints").
  """
  return jax.random.uniform(rng, keypoints.shape, jnp.float32, 0.0, float(image_size))


def jitter_keypoints(rng: Array, keypoints: Array, eps: int) -> Array:
  """Fig. 4 keypoint noise: + a random integer in [0, eps] pixels to each coordinate."""
  return keypoints + jax.random.randint(rng, keypoints.shape, 0, eps + 1).astype(
      keypoints.dtype)
