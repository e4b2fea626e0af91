"""Recipes that fit: remat / micro-batches "auto" (pgvt_jax/fitting.py, planner.Planner.fit,
steps.accumulate_gradients) on this machine's CPU devices.

The choice order on a fake fit function; the micro-batched step against one pass (4 CPU
devices, in a subprocess); the planner splitting the batch when the memory limit says so; and
the trainer doing it and deciding again on resume.
"""

import itertools
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import demo
from pgvt_jax import fitting, planner, steps, step_builder, targets, train, workdir
from pgvt_jax import partitioning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------- the order
def _expected(per_device, thresholds):
  """The documented order: none before full; per policy the smallest fitting divisor k."""
  for remat, t in thresholds:
    ks = [k for k in fitting.micro_batch_options(per_device) if k >= t]
    if ks:
      return remat, ks[0]
  return None


@pytest.mark.parametrize("per_device", [1, 2, 6, 8, 12, 64])
def test_choose_takes_the_cheapest_setting_that_fits(per_device):
  for t_none, t_full in itertools.product(range(per_device + 3), repeat=2):
    for guess in (None, 0.5, 1.5, 3.0, 7.0, 100.0):
      need = {"none": t_none, "full": t_full}   # fits iff k >= need (k in divisors)
      fits = lambda r, k, need=need: k >= need[r]
      overshoot = (lambda r, k, g=guess: g) if guess else None
      choice, probes = fitting.choose(fits, "auto", "auto", per_device, overshoot=overshoot)
      assert choice == _expected(per_device, [("none", t_none), ("full", t_full)])
      assert len({(r, k) for r, k, _ in probes}) == len(probes)        # nothing twice
      assert all(ok == fits(r, k) for r, k, ok in probes)
      assert probes[0] == ("none", 1, fits("none", 1))                 # one pass first


def test_a_good_guess_costs_three_compiles():
  fits = lambda r, k: r == "none" and k >= 8
  _, probes = fitting.choose(fits, "auto", "auto", 64, overshoot=lambda r, k: 7.3)
  assert probes == [("none", 1, False), ("none", 8, True), ("none", 4, False)]


def test_an_explicit_setting_is_kept():
  fits = lambda r, k: k >= 4
  assert fitting.choose(fits, "full", "auto", 16)[0] == ("full", 4)
  choice, probes = fitting.choose(fits, "auto", 2, 16)
  assert choice is None and [(r, k) for r, k, _ in probes] == [("none", 2), ("full", 2)]
  assert fitting.choose(lambda r, k: True, "save_dots", 8, 16)[0] == ("save_dots", 8)


def test_fixed_reads_undecided_auto_as_one_pass():
  c = demo.get_config()
  assert c.model.remat == "auto" and c.optim.micro_batches == "auto"   # the shipped default
  f = fitting.fixed(c)
  assert (f.model.remat, f.optim.micro_batches) == ("none", 1)
  assert (c.model.remat, c.optim.micro_batches) == ("auto", "auto")    # the input is kept
  f = fitting.fixed(json_roundtrip(c), "full", 4)                      # types from JSON
  assert (f.model.remat, f.optim.micro_batches) == ("full", 4)


def json_roundtrip(c):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(json.loads(c.to_json_best_effort()))


# ------------------------------------------------------------------------------- the step
def test_micro_batches_take_strided_rows():
  x = np.arange(12 * 3).reshape(12, 3)
  out = steps.split_micro_batches({"x": x}, 4)["x"]
  assert out.shape == (4, 3, 3)
  for i in range(4):
    np.testing.assert_array_equal(out[i], x[i::4])


def test_bad_micro_batch_settings_are_refused_by_name():
  c = fitting.fixed(demo.get_config(), micro=3)
  mesh = partitioning.make_mesh(c.mesh, jax.devices()[:1])
  with pytest.raises(ValueError, match=r"config.optim.micro_batches=3 does not divide the 16"):
    step_builder.build(c, mesh)
  c = demo.get_config()
  with pytest.raises(ValueError, match=r"micro_batches='auto'.*pgvt_jax.fitting"):
    step_builder.build(c, mesh)  # a train step is never built with an undecided "auto"
  for bad in (0, -2, "two", True):
    c = demo.get_config()
    with c.optim.ignore_type():
      c.optim.micro_batches = bad
    with pytest.raises(workdir.ConfigError, match="config.optim.micro_batches"):
      workdir.validate_config(c)


_EQUAL = textwrap.dedent("""
    import json, jax, numpy as np
    from configs import demo
    from pgvt_jax import fitting, partitioning, step_builder, steps
    from pgvt_jax.models import factory
    base = demo.get_config()
    base.model.drop_path, base.model.dropout = 0.0, 0.0  # nothing random: passes must agree
    mesh = partitioning.make_mesh(base.mesh)
    rng = np.random.default_rng(0)
    out = {}
    for k in (1, 2, 4):
      b = step_builder.build(fitting.fixed(base, micro=k), mesh, total_steps=10)
      if k == 1:
        spec = b.train_batch
        host = {n: (rng.integers(0, 4, s.shape) if np.issubdtype(s.dtype, np.integer)
                    else rng.random(s.shape)).astype(s.dtype) for n, s in spec.items()}
        params = jax.jit(lambda r: b.model.init(r, factory.dummy_batch(b.model.config))[
            "params"], out_shardings=b.param_shardings)(jax.random.PRNGKey(0))
        tr, fr = factory.split_params(b.model.config, params)
      batch = {n: jax.device_put(v, b.batch_sharding) for n, v in host.items()}
      state = jax.jit(lambda p: steps.init_state(p, b.tx, 0),
                      out_shardings=b.state_shardings)(tr)
      compiled = b.train_step.lower(b.abstract_state, b.abstract_frozen, b.train_batch).compile()
      new, m = compiled(state, fr, batch)
      out[k] = {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
                "temp": compiled.memory_analysis().temp_size_in_bytes,
                "params": [np.asarray(x).tolist() for x in jax.tree.leaves(new["params"])[:6]]}
    print(json.dumps(out))
    """)


@pytest.mark.slow
def test_micro_batched_step_equals_one_pass_on_four_devices():
  """k = 1, 2, 4 passes over one global batch of 16 sharded over 4 devices: the same loss,
  gradient norm and update; less temporary memory with more passes."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  out = subprocess.run([sys.executable, "-c", _EQUAL], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True, timeout=600).stdout
  r = {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
  for k in (2, 4):
    assert r[k]["loss"] == pytest.approx(r[1]["loss"], rel=1e-6)
    assert r[k]["grad_norm"] == pytest.approx(r[1]["grad_norm"], rel=1e-4)
    for a, b in zip(r[k]["params"], r[1]["params"]):
      np.testing.assert_allclose(a, b, atol=1e-4)   # one AdamW update (lr 5e-3) from each
  assert r[4]["temp"] < r[2]["temp"] < r[1]["temp"]  # activations of B/k clips at a time


# ------------------------------------------------------------------------------- the planner
@pytest.fixture(scope="module")
def demo_sizes(fast_compiles):  # pylint: disable=unused-argument
  """Per-device bytes of the demo's train step (batch 16) in 1 and 16 passes, one CPU device."""
  p = planner.Planner(demo.get_config(), planner.target("local", devices=jax.devices()[:1]))
  return {k: p.report("train", None, "none", k).total_bytes for k in (1, 2, 16)}


def _limited(gib):
  return planner.target("local", devices=jax.devices()[:1], hbm_gib=gib)


def test_planner_splits_the_batch_when_one_pass_does_not_fit(demo_sizes):
  assert demo_sizes[16] < demo_sizes[2] < demo_sizes[1]
  limit = (demo_sizes[1] + demo_sizes[2]) / 2          # 2 passes fit, 1 does not
  p = planner.Planner(demo.get_config(), _limited(limit / 2 ** 30))
  r = p.fit()
  assert (r.remat, r.micro_batches) == ("none", 2) and r.fits and r.total_bytes <= limit
  assert r.probes[0] == ("none", 1, False) and r.probes[-1][2] in (True, False)
  assert r.global_batch == 16                          # the recipe's batch is kept
  plan = p.plan(search=False)                          # the CLI's view of the same choice
  assert plan["fit"]["micro_batches"] == 2 and plan["train"]["micro_batches"] == 2


def test_planner_says_when_nothing_fits(demo_sizes):
  tiny = demo_sizes[16] / 4 / 2 ** 30
  p = planner.Planner(demo.get_config(), _limited(tiny))
  with pytest.raises(fitting.DoesNotFit, match=r"train_batch_size=16 over 1 device.*remat=full"):
    p.fit()
  plan = p.plan(search=False)
  assert plan["fit"] is None and "does not fit" in plan["fit_error"]
  assert not plan["train"]["fits"]


def test_process_zeros_choice_wins_when_processes_disagree(monkeypatch, caplog, tmp_path):
  """Multi-host: every process fits, process 0's setting is taken (broadcast). Here this
  process found one pass fits while "process 0" chose 2: the step is compiled for 2."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from pgvt_jax import partitioning, tasks  # pylint: disable=g-import-not-at-top
  config = demo.get_config()
  config.synthetic_data.data_dir = str(tmp_path / "never_built")
  mesh = partitioning.make_mesh(config.mesh, devices=jax.devices()[:1])
  sent = []

  def broadcast(x):
    sent.append(np.asarray(x).tolist())
    return np.array([fitting.AUTO_REMATS.index("none"), 2])  # process 0: 2 passes

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
  with caplog.at_level("WARNING"):
    built, step, fit = tasks.build_steps(config, mesh, train=True, total_steps=4,
                                         steps_per_epoch=2)
  assert sent == [[fitting.AUTO_REMATS.index("none"), 1]]    # this process's own choice
  assert (fit["remat"], fit["micro_batches"]) == ("none", 2)
  assert fit["tried"] == ["remat=none micro_batches=1: fits"]
  assert "taking process 0's" in caplog.text
  assert built.config.optim.micro_batches == 2 and step is not None


# ------------------------------------------------------------------------------- the trainer
def _short_run(tmp_path, name, steps_, **over):
  c = demo.get_config()
  c.synthetic_data.data_dir = str(tmp_path / "data")
  c.total_steps, c.log_every, c.checkpoint_every = steps_, 1, 2
  c.eval_every = 0
  c.async_checkpoints = False
  for key, value in over.items():
    section, field = key.split("__")
    c[section][field] = value
  return c, str(tmp_path / name)


def _losses(wd):
  with open(os.path.join(wd, "metrics.jsonl")) as fh:
    rows = [json.loads(line) for line in fh]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.e2e
def test_trainer_fits_by_splitting_and_decides_again_on_resume(tmp_path, monkeypatch,
                                                               demo_sizes):
  """Short memory: the trainer runs 2+ passes per step with the losses of one pass; resumed
  with enough memory, the same workdir continues in one pass (no config change refused)."""
  ref_cfg, ref_wd = _short_run(tmp_path, "one_pass", 4)
  train.train_and_evaluate(ref_cfg, ref_wd, run_evals=False)

  limit = int((demo_sizes[1] + demo_sizes[2]) / 2)
  monkeypatch.setattr(targets, "_local_limit", lambda device: limit)
  cfg, wd = _short_run(tmp_path, "split", 4)
  train.train_and_evaluate(cfg, wd, run_evals=False)          # 2 passes per step
  monkeypatch.undo()
  cfg, _ = _short_run(tmp_path, "split", 4)
  cfg.restore_step = 2                                        # steps 3-4 again, one pass
  train.train_and_evaluate(cfg, wd, run_evals=False)

  ref = _losses(ref_wd)
  split = _losses(wd)                                         # steps 3-4: the second leg's
  assert sorted(split) == [1, 2, 3, 4]
  for step, loss in split.items():
    assert loss == pytest.approx(ref[step], rel=1e-5)
  with open(os.path.join(wd, "config_history.jsonl")) as fh:
    runs = [json.loads(line) for line in fh if '"mode": "train"' in line]
  assert [r["start_step"] for r in runs] == [0, 2]
  assert [r["fit"]["micro_batches"] for r in runs] == [2, 1]  # decided again on resume
  assert all(r["config"]["optim.micro_batches"] == "auto" for r in runs)  # recorded as given


@pytest.mark.e2e  # builds the demo records and compiles four probes
def test_trainer_stops_before_training_when_nothing_fits(tmp_path, monkeypatch):
  """No memory at all: a DoesNotFit naming the batch and what was tried, no step trained."""
  monkeypatch.setattr(targets, "_local_limit", lambda device: 1)
  cfg, wd = _short_run(tmp_path, "nothing_fits", 2)
  with pytest.raises(fitting.DoesNotFit, match=r"train_batch_size=16.*remat=none.*remat=full"):
    train.train_and_evaluate(cfg, wd, run_evals=False)
  assert not os.path.exists(os.path.join(wd, "checkpoints")) or not os.listdir(
      os.path.join(wd, "checkpoints"))
