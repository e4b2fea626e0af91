"""The PyTorch AIM reference (benchmarks/torch_aim.py) computes what pgvt_jax's video_only does.

Same random weights in both (every param perturbed, so the zero-initialised adapter outputs and
the temporal embedding take part): equal logits and equal gradients of the trainable params;
after one torch AdamW step the frozen weights are unchanged and every trainable one moved.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_aim, torch_step  # noqa: E402  pylint: disable=g-import-not-at-top
from configs import diving48  # noqa: E402
from pgvt_jax import losses  # noqa: E402
from pgvt_jax.models import clip_family, common, pgvt# noqa: E402


@pytest.fixture(scope="module")
def tiny(fast_compiles):
  """(config, ModelConfig, AimConfig, randomised flax params, batch): Ti/8 32 px, 4 frames."""
  del fast_compiles
  config = diving48.get_config("tiny,runlocal,variant=video_only")
  model = pgvt.create_model(config.model)
  params = pgvt.init_params(model, jax.random.PRNGKey(0))
  rng = np.random.default_rng(1)
  # N(x, 0.05^2) around every init value: LN scales stay near 1, zero inits become non-zero.
  params = jax.tree.map(
      lambda x: np.asarray(x) + np.float32(0.05) * rng.standard_normal(x.shape, np.float32),
      params)
  m = model.config
  frames = rng.standard_normal(
      (2, m.video_frames, m.clip.image_size, m.clip.image_size, 3)).astype(np.float32)
  labels = np.array([3, 17], np.int32)
  aim = torch_aim.AimConfig(**torch_step.spec_from_config(config)["model"])
  return model, aim, params, frames, labels


def _torch_model(aim, params):
  torch.manual_seed(0)
  net = torch_aim.AimVideoClip(aim)
  torch_aim.load_flax_params(net, common.flatten(jax.device_get(params)))
  torch_aim.freeze_backbone(net)
  return net


def _to_torch(frames):
  return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, S, S)


def test_same_logits_and_trainable_gradients(tiny):
  model, aim, params, frames, labels = tiny
  trainable, frozen = clip_family.split_params(params)

  def loss_fn(tr):
    logits, _ = model.apply({"params": common.merge_params(tr, frozen)},
                            {"frames": jnp.asarray(frames)}, train=False)
    return losses.softmax_cross_entropy(logits, labels, model.config.num_classes), logits

  with jax.default_matmul_precision("highest"):
    (_, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(trainable)
  net = _torch_model(aim, params).eval()
  out = net(_to_torch(frames))
  np.testing.assert_allclose(out.detach().numpy(), np.asarray(logits), atol=1e-5, rtol=1e-5)
  # The logits depend on the adapters: zeroing one block's MLP-Adapter changes them.
  assert float(jnp.abs(logits).max()) > 1e-2
  torch.nn.functional.cross_entropy(out, torch.from_numpy(labels).long()).backward()
  g_torch = {k: p.grad for k, p in net.named_parameters() if p.requires_grad}
  g_flax = torch_aim.state_dict_from_flax(common.flatten(jax.device_get(grads))
                                          | _zeros_like(frozen), aim)
  for k, g in g_torch.items():
    np.testing.assert_allclose(g.numpy(), g_flax[k].numpy(), atol=2e-5, rtol=1e-3,
                               err_msg=k)


def _zeros_like(tree):
  return {k: np.zeros(v.shape, np.float32) for k, v in common.flatten(tree).items()}


def test_freezes_what_pgvt_jax_freezes(tiny):
  _, aim, params, _, _ = tiny
  net = _torch_model(aim, params)
  trainable, frozen = clip_family.split_params(params)
  # Map each flax subtree alone (the other zero-filled) and see which torch tensors it fills.
  from_trainable = torch_aim.state_dict_from_flax(
      {**common.flatten(jax.device_get(trainable)), **_zeros_like(frozen)}, aim)
  expected = {k for k, v in from_trainable.items() if v.abs().sum() > 0}
  got = {k for k, p in net.named_parameters() if p.requires_grad}
  assert got == expected
  assert len(got) == len(common.flatten(trainable))


def test_train_step_moves_adapters_only(tiny):
  _, aim, params, frames, labels = tiny
  net = _torch_model(aim, params).train()
  before = {k: p.detach().clone() for k, p in net.named_parameters()}
  opt = torch_aim.make_optimizer(net)
  n_opt = sum(len(g["params"]) for g in opt.param_groups)
  assert n_opt == sum(p.requires_grad for p in net.parameters()) > 0
  loss = torch_aim.train_step(net, opt, _to_torch(frames), torch.from_numpy(labels).long())
  assert np.isfinite(loss.item())
  for k, p in net.named_parameters():
    if p.requires_grad:
      assert not torch.equal(p, before[k]), f"trainable {k} did not move"
    else:
      assert torch.equal(p, before[k]), f"frozen {k} moved"
      assert p.grad is None, f"frozen {k} got a gradient"


def test_mapping_names_unused_params(tiny):
  _, aim, params, _, _ = tiny
  flat = common.flatten(jax.device_get(params))
  with pytest.raises(ValueError, match="R_Adapter"):
    torch_aim.state_dict_from_flax({**flat, "resblocks_0/R_Adapter/x/kernel": 0}, aim)
  del flat["resblocks_1/attn/query/kernel"]
  with pytest.raises(KeyError, match="resblocks_1/attn/query/kernel"):
    torch_aim.state_dict_from_flax(flat, aim)
