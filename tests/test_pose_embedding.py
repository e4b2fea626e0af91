"""Pose Embedding (coords): the keypoints, not a constant, make up the pose tokens at init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_prep import synthetic
from pgvt_jax.models import embeddings

SIZE, FRAMES = 32, 8


def _demo_poses(n: int = 32) -> np.ndarray:
  """(n, T, 17, 2) keypoints of the demo's clips in [0, 1] crop coordinates."""
  defs = synthetic.class_definitions(4, "pose_video")
  poses = [synthetic.motion(defs[i % 4], FRAMES, SIZE, np.random.default_rng(i)) / SIZE
           for i in range(n)]
  return np.clip(np.stack(poses), 0.0, 1.0).astype(np.float32)


def test_centre_coordinates_maps_the_crop_to_minus_one_one():
  got = np.asarray(embeddings.centre_coordinates(jnp.array([[0.0, 1.0], [0.5, 0.25]])))
  np.testing.assert_allclose(got, [[-1.0, 1.0], [0.0, -0.5]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joint_tokens_at_init_vary_with_the_keypoints(seed):
  """Across clips, a joint's token must change by a good part of its size at init.

  With uncentred [0, 1] inputs (fc1's bias is 0) every joint's token was ~fc1(0.5, 0.5): the
  clip-to-clip std was 0.08-0.10 of the token's rms on these poses (seeds 0-2), and the demo's
  pose stream sat on a loss plateau for hundreds of steps. Centred, it is 0.25-0.29.
  """
  pose = jnp.asarray(_demo_poses())
  batch = {"pose": pose, "pose_mask": jnp.ones(pose.shape[:-1])}
  emb = embeddings.PoseEmbedding(64, FRAMES, 17)
  params = emb.init(jax.random.key(seed), batch)
  tokens = np.asarray(emb.apply(params, batch))[:, :, 1:]   # (B, T, J, D) joints only
  ratio = tokens.std(0).mean() / np.sqrt((tokens ** 2).mean())
  assert ratio > 0.18, ratio
