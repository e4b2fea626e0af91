"""SGD + momentum and the multi-step schedule (the PAAB/PAAT recipe) against PyTorch."""

import ml_collections
import numpy as np
import pytest

from pgvt_jax import optim


def _cfg(**kw):
  c = optim.get_config()
  c.update(dict(optimizer="sgd", lr=0.005, momentum=0.9, weight_decay=1e-4, schedule="steps",
                lr_step_epochs=(11, 14), lr_step_factor=0.1, warmup_epochs=0.0,
                warmup_ratio=0.0, decay_rule="ndim"), **kw)
  return c


def test_steps_schedule_matches_relative_lrs():
  # TimeSformer's steps_with_relative_lrs, STEPS [0, 11, 14], LRS [1, 0.1, 0.01], per epoch.
  spe = 7
  sched = optim.make_schedule(_cfg(), 15 * spe, spe)
  for epoch in range(15):
    want = 0.005 * (1 if epoch < 11 else 0.1 if epoch < 14 else 0.01)
    for s in (epoch * spe, epoch * spe + spe - 1):
      np.testing.assert_allclose(float(sched(s)), want, rtol=1e-6)


def test_steps_schedule_with_warmup_and_bad_epochs():
  sched = optim.make_schedule(_cfg(warmup_epochs=1.0), 150, 10)
  np.testing.assert_allclose([float(sched(s)) for s in (0, 5, 10, 109, 110)],
                             [0.0, 0.0025, 0.005, 0.005, 0.0005], rtol=1e-6)
  with pytest.raises(ValueError, match="lr_step_epochs"):
    optim.make_schedule(_cfg(lr_step_epochs=(14, 11)), 150, 10)
  with pytest.raises(ValueError, match="schedule='linear'"):
    optim.make_schedule(_cfg(schedule="linear"), 150, 10)


def _problem(seed: int):
  """A (4, 3) kernel, a (3,) bias and 6 steps of random gradients."""
  rng = np.random.default_rng(seed)
  w0 = rng.normal(size=(4, 3)).astype(np.float32)
  b0 = rng.normal(size=(3,)).astype(np.float32)
  grads = [(rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32))
           for _ in range(6)]
  return w0, b0, grads


def _optax_steps(cfg, w0, b0, grads):
  """The params after our optimizer's steps over `grads` (one step per epoch)."""
  import optax  # pylint: disable=g-import-not-at-top
  tx = optim.make_optimizer(cfg, optim.make_schedule(cfg, len(grads), 1))
  params = {"dense": {"kernel": w0, "bias": b0}}
  state = tx.init(params)
  for gw, gb in grads:
    updates, state = tx.update({"dense": {"kernel": gw, "bias": gb}}, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _torch_steps_match(torch, opt, lr_sched, grads, tw, tb, params):
  """Runs the torch optimizer over `grads` and compares with the optax `params`."""
  for gw, gb in grads:
    tw.grad, tb.grad = torch.tensor(gw), torch.tensor(gb)
    opt.step()
    lr_sched.step()
  np.testing.assert_allclose(params["dense"]["kernel"], tw.detach().numpy(), rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(params["dense"]["bias"], tb.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_sgd_matches_torch_sgd():
  torch = pytest.importorskip("torch")
  w0, b0, grads = _problem(0)
  cfg = _cfg(lr_step_epochs=(2, 4))
  spe = 1
  sched = optim.make_schedule(cfg, 6, spe)
  tx = optim.make_optimizer(cfg, sched)
  params = {"dense": {"kernel": w0, "bias": b0}}
  state = tx.init(params)
  import optax  # pylint: disable=g-import-not-at-top
  for gw, gb in grads:
    updates, state = tx.update({"dense": {"kernel": gw, "bias": gb}}, state, params)
    params = optax.apply_updates(params, updates)

  # torch: decay on the kernel only (decay_mask: biases are not decayed), lr x0.1 at 2 and 4.
  tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
  opt = torch.optim.SGD([{"params": [tw], "weight_decay": 1e-4},
                         {"params": [tb], "weight_decay": 0.0}], lr=0.005, momentum=0.9)
  lr_sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)
  _torch_steps_match(torch, opt, lr_sched, grads, tw, tb, params)


def test_unknown_optimizer_is_named():
  with pytest.raises(ValueError, match="optimizer='lamb'"):
    optim.make_optimizer(_cfg(optimizer="lamb"), lambda s: 0.1)


def test_decay_rule_all_decays_every_leaf():
  """"all" (the public PAAB/PAAT run: TimeSformer's construct_optimizer decays every param
  whose name lacks "bn") decays every leaf; the default rule ("aim") and "ndim" do not."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  z = lambda *s: np.zeros(s, np.float32)
  params = {"dense": {"kernel": z(4, 3), "bias": z(3)}, "ln_1": {"scale": z(3), "bias": z(3)},
            "class_embedding": z(3), "pos_embed": z(1, 5, 3), "cls_token": z(1, 1, 3)}
  mask = lambda rule: {"/".join(k): v for k, v in traverse_util.flatten_dict(
      optim.decay_mask(params, rule=rule)).items()}
  assert all(mask("all").values()) and len(mask("all")) == 7
  default = mask(optim.get_config().decay_rule)
  assert not default["ln_1/bias"] and not default["ln_1/scale"]
  assert not default["class_embedding"] and default["dense/kernel"]
  ndim = mask("ndim")
  assert not ndim["dense/bias"] and not ndim["ln_1/scale"] and ndim["dense/kernel"]
  with pytest.raises(ValueError, match="config.optim.decay_rule='none'"):
    optim.make_optimizer(_cfg(decay_rule="none"), lambda s: 0.1)


def test_public_sgd_nesterov_decay_all_matches_torch():
  """The public run's optimizer: torch.optim.SGD(nesterov=True, dampening=0, weight_decay on
  every tensor) (TimeSformer timesformer/models/optimizer.py, SOLVER.NESTEROV=True)."""
  torch = pytest.importorskip("torch")
  w0, b0, grads = _problem(1)
  cfg = _cfg(lr_step_epochs=(2, 4), nesterov=True, decay_rule="all", weight_decay=0.05)
  params = _optax_steps(cfg, w0, b0, grads)
  tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
  opt = torch.optim.SGD([tw, tb], lr=0.005, momentum=0.9, weight_decay=0.05, dampening=0.0,
                        nesterov=True)
  lr_sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)
  _torch_steps_match(torch, opt, lr_sched, grads, tw, tb, params)
  # Plain momentum gives other weights: the comparison above can fail.
  p2 = _optax_steps(_cfg(lr_step_epochs=(2, 4), decay_rule="all", weight_decay=0.05), w0, b0,
                    grads)
  assert not np.allclose(p2["dense"]["kernel"], tw.detach().numpy(), rtol=1e-5, atol=1e-7)
