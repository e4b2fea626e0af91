"""The planner on compile-only TPU devices: the demo config compiled for a v5e 2x2 slice on a
CPU host. Needs libtpu (the `[tpu]` extra), which makes JAX prefer a TPU backend that a machine
without TPUs cannot start: so it runs in a virtualenv of its own (.ci/run, like the Beam test),
with the host on the CPU (conftest sets JAX_PLATFORMS=cpu). Skipped where libtpu is not
installed, unless PGVT_REQUIRE_TPU=1 (CI), where its absence is a failure. ~1-3 min: two XLA:TPU
compiles of the tiny model.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from configs import demo
from pgvt_jax import planner

if importlib.util.find_spec("libtpu") is None:
  if os.environ.get("PGVT_REQUIRE_TPU") == "1":
    raise ImportError("PGVT_REQUIRE_TPU=1 but libtpu is not installed: "
                      "pip install '.[tpu]' pytest (see .ci/run)")
  pytest.skip("libtpu not installed (the [tpu] extra); compile-only TPU tests skipped",
              allow_module_level=True)


@pytest.fixture(scope="module")
def v5e():
  """Planner and plan of the demo with a 2 x 2 (data x fsdp) mesh on v5e:2x2."""
  config = demo.get_config()
  config.mesh.fsdp = 2
  config.mesh.fsdp_min_size = 2 ** 10  # the tiny model's larger leaves shard over fsdp
  p = planner.Planner(config, planner.target("v5e:2x2"))
  return p, p.plan(remats=("none",), search=False)


def test_host_is_cpu_and_targets_are_compile_only_tpus(v5e):
  p, _ = v5e
  assert jax.default_backend() == "cpu"                  # nothing here runs on a TPU
  assert len(p.target.devices) == 4
  assert {d.device_kind for d in p.target.devices} == {"TPU v5 lite"}
  assert p.target.chip.name == "v5e"


def test_shardings_are_over_the_four_tpus_as_the_mesh_says(v5e):
  p, plan = v5e
  built = p.built
  tpus = set(p.target.devices)
  mesh = built.batch_sharding.mesh
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2} and set(mesh.devices.flat) == tpus
  trees = (built.abstract_state, built.abstract_frozen, built.train_batch, built.eval_batch)
  leaves = [x for tree in trees for x in jax.tree.leaves(tree)]
  assert all(x.sharding.device_set == tpus for x in leaves)
  specs = [str(x.sharding.spec) for x in jax.tree.leaves((built.abstract_state,
                                                          built.abstract_frozen))]
  assert any("fsdp" in s for s in specs)                 # large leaves split over fsdp
  assert any("fsdp" not in s for s in specs)             # small ones replicated
  assert all(x.sharding.spec == P(("data", "fsdp")) for x in built.train_batch.values())
  assert plan["shardings"]["mesh"] == {"data": 2, "fsdp": 2}


def test_fit_report_chooses_bfloat16_and_fits(v5e):
  p, plan = v5e
  assert plan["model"]["dtype"] == "bfloat16"            # decided by the TPUs, not the host
  assert p.built.model.config.compute_dtype == jnp.bfloat16
  assert plan["target"]["limit_bytes_per_device"] == int(15.75 * 2 ** 30)
  assert plan["target"]["peak_flops_per_device"] == 197e12
  for step in ("train", "eval"):
    r = plan[step]
    assert r["fits"] and r["error"] is None
    assert 0 < r["total_bytes"] < r["limit_bytes"] and r["argument_bytes"] > 0
    assert r["flops"] > 0 and r["roofline_s"] > 0 and r["clips_per_s"] > 0
  assert plan["train"]["alias_bytes"] > 0                # donated state


def test_a_short_tpu_splits_the_batch_and_keeps_it():
  """XLA:TPU holds B/k clips per pass of the micro-batched step; with memory for a quarter
  of the demo's batch but not for all of it, "auto" splits the batch and keeps the recipe's."""
  config = demo.get_config()                             # remat / micro-batches "auto"
  config.data.train_batch_size = 256                     # activations that show on a TPU
  one = planner.Planner(config, planner.target("v5e-1"))
  full, quarter = (one.report("train", None, "none", k) for k in (1, 4))
  assert full.fits and quarter.fits and quarter.temp_bytes < full.temp_bytes / 2
  one.set_limit((quarter.total_bytes + full.total_bytes) // 2)  # the compiles are reused
  r = one.fit()
  assert r.fits and r.micro_batches in (2, 4) and r.remat == "none"
  assert r.global_batch == config.data.train_batch_size
  assert r.probes[0] == ("none", 1, False)
