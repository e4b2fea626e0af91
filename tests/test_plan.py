"""The planner (pgvt_jax.plan / planner / step_builder / hardware) on this machine's CPU.

Compile-only TPU topologies need libtpu: tests/test_plan_tpu.py runs those in the `[tpu]`
virtualenv. Here: the batch search on a fake fit function, the chip table, step building on
explicit devices, "auto" decided from the mesh's devices and not the host, and a real plan of
the demo config on the local CPU.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from configs import demo
from pgvt_jax import accelerators, fitting, hardware, partitioning, planner, step_builder, targets
from pgvt_jax import plan as plan_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------- batch search
@pytest.mark.parametrize("capacity", [0, 3, 4, 7, 8, 20, 64, 100, 1000])
@pytest.mark.parametrize("start", [4, 16, 256])
def test_search_finds_the_largest_fitting_multiple(capacity, start):
  calls = []

  def fits(b):
    calls.append(b)
    return b <= capacity

  r = fitting.search_max_batch(fits, 4, start=start, max_probes=20, limit=4096)
  assert r["max_batch"] == capacity // 4 * 4
  assert r["exact"]
  assert all(b % 4 == 0 for b in calls) and len(set(calls)) == len(calls)  # no probe twice
  assert [b for b, _ in r["probes"]] == calls


def test_search_is_monotone_and_bounded():
  found = [fitting.search_max_batch(lambda b, c=c: b <= c, 8, start=64, max_probes=3,
                                    limit=1 << 12) for c in range(0, 600, 37)]
  best = [r["max_batch"] for r in found]
  assert best == sorted(best)                               # more memory never fits less
  assert all(len(r["probes"]) <= 3 for r in found)          # the compile budget holds
  for c, r in zip(range(0, 600, 37), found):
    assert r["max_batch"] <= c                              # never claims an unfit batch
    if r["first_failing"] is not None:
      assert r["first_failing"] > c
  capped = fitting.search_max_batch(lambda b: True, 8, start=8, max_probes=30, limit=100)
  assert capped["max_batch"] == 96 and capped["first_failing"] is None and capped["exact"]


def test_xla_out_of_memory_message_is_parsed():
  msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
         "temporaries (320.00G) exceeds available HBM (15.75G).")
  assert planner.parse_oom(msg) == {"required": 320 * 2 ** 30,
                                    "available": int(15.75 * 2 ** 30)}
  assert planner.parse_oom("something else") == {}


# ------------------------------------------------------------------------------- chip table
def test_peak_per_device_counts_a_v2_v3_chip_once():
  v3 = hardware.lookup("TPU v3")
  assert v3.devices_per_chip == 2
  assert hardware.peak_flops_per_device("TPU v3") == 123e12 / 2
  assert hardware.peak_flops_per_device("TPU v2") == 46e12 / 2
  assert hardware.lookup("TPU v5 lite").name == "v5e"   # not v5p: "TPU v5" is a prefix
  assert hardware.lookup("TPU v5").name == "v5p"
  assert hardware.lookup("TPU v6 lite").name == "v6e"
  assert hardware.peak_flops_per_device("TPU v4") == 275e12
  assert hardware.lookup("NVIDIA A100-SXM4-80GB").name == "A100-80GB"
  assert hardware.lookup("NVIDIA A100-SXM4-40GB").name == "A100-40GB"
  assert hardware.lookup("NVIDIA L4").name == "L4"
  assert hardware.lookup("NVIDIA L40S") is None         # whole words only
  assert hardware.peak_flops_per_device("Tesla T4", "float32") == pytest.approx(8.1e12)
  assert hardware.lookup("cpu") is None


def test_benchmark_mfu_peak_uses_the_table_per_device():
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  peak, source = train_step.table_peak("TPU v3", 8, "bfloat16")  # a v3-8: 4 chips
  assert peak == pytest.approx(4 * 123e12) and "v3" in source
  peak, _ = train_step.table_peak("TPU v5 lite", 4, "bfloat16")
  assert peak == pytest.approx(4 * 197e12)
  peak, _ = train_step.table_peak("NVIDIA H100 80GB HBM3", 1, "bfloat16")
  assert peak == pytest.approx(989e12)
  peak, source = train_step.table_peak("Mystery Accelerator", 1, "bfloat16")
  assert peak != peak and "--peak_tflops" in source    # NaN: asks for the flag


# ------------------------------------------------------------------------------- step building
def _tiny():
  c = fitting.fixed(demo.get_config())  # remat/micro-batches "auto" as none / 1
  c.data.train_batch_size, c.data.eval_batch_size = 4, 4
  return c


def test_auto_is_decided_by_the_mesh_devices_not_the_host(monkeypatch):
  """A CPU host building for (pretend) TPU devices gets bfloat16 in the traced program."""
  assert jax.default_backend() == "cpu"
  fake_tpu = accelerators.Choice("bfloat16", "xla", "fake TPU")
  monkeypatch.setattr(step_builder.accelerators, "choose", lambda devices: fake_tpu)
  mesh = partitioning.make_mesh(_tiny().mesh, jax.devices()[:1])
  built = step_builder.build(_tiny(), mesh)
  assert built.config.model.dtype == "bfloat16" and built.config.model.attention_impl == "xla"
  assert built.model.config.compute_dtype == jnp.bfloat16
  text = built.eval_step.lower(built.abstract_state["params"], built.abstract_frozen,
                               built.eval_batch).as_text()
  assert "bf16" in text                                  # the model really computes in bf16
  # An explicit dtype is the user's choice and stays.
  cfg = _tiny()
  cfg.model.dtype = "float32"
  assert step_builder.build(cfg, mesh).config.model.dtype == "float32"


def test_auto_on_cpu_devices_is_float32():
  mesh = partitioning.make_mesh(_tiny().mesh, jax.devices()[:1])
  built = step_builder.build(_tiny(), mesh)
  assert built.config.model.dtype == "float32" and built.choice.dtype == "float32"
  assert built.model.config.compute_dtype == jnp.float32


_SUBSET = textwrap.dedent("""
    import json, jax
    from configs import demo
    from pgvt_jax import fitting, partitioning, step_builder
    c = fitting.fixed(demo.get_config())
    c.mesh.fsdp, c.mesh.fsdp_min_size = 2, 1   # shard every leaf that divides
    c.data.train_batch_size = c.data.eval_batch_size = 4
    devices = jax.devices()[1:3]               # 2 of 4: not the default devices
    built = step_builder.build(c, partitioning.make_mesh(c.mesh, devices))
    leaves = jax.tree.leaves(built.abstract_state) + jax.tree.leaves(built.abstract_frozen)
    leaves += list(built.train_batch.values())
    lowered = built.train_step.lower(built.abstract_state, built.abstract_frozen,
                                     built.train_batch)
    print(json.dumps({
        "ids": sorted({d.id for x in leaves for d in x.sharding.device_set}),
        "fsdp_leaves": sum("fsdp" in str(x.sharding.spec) for x in leaves),
        "leaves": len(leaves),
        "num_partitions": lowered.compiler_ir().operation.attributes[
            "mhlo.num_partitions"].value}))
    """)


@pytest.mark.slow
def test_steps_build_on_explicit_devices():
  """Two of four CPU devices: every sharding (state, frozen, batch) is over exactly those."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  out = subprocess.run([sys.executable, "-c", _SUBSET], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True, timeout=300).stdout
  r = json.loads(out.strip().splitlines()[-1])
  assert r["ids"] == [1, 2]
  assert 0 < r["fsdp_leaves"] < r["leaves"]
  assert r["num_partitions"] == 2


# ------------------------------------------------------------------------------- the plan
@pytest.fixture(scope="module")
def demo_plan(fast_compiles):  # pylint: disable=unused-argument,redefined-outer-name
  """The demo config planned on one local CPU device (train + eval: two compiles)."""
  tgt = planner.target("local", devices=jax.devices()[:1], peak_tflops=0.1, hbm_gbps=20)
  return planner.Planner(demo.get_config(), tgt).plan(remats=("none",), search=False)


def test_plan_of_the_demo_on_cpu(demo_plan):  # pylint: disable=redefined-outer-name
  p = json.loads(planner.to_json(demo_plan))           # everything is JSON
  assert p["target"]["num_devices"] == 1 and p["target"]["platform"] == "cpu"
  assert p["model"]["dtype"] == "float32" and p["shardings"]["mesh"] == {"data": 1, "fsdp": 1}
  for step, batch in (("train", 16), ("eval", 32)):
    r = p[step]
    assert r["fits"] and r["error"] is None and r["global_batch"] == batch
    assert r["argument_bytes"] > 0 and r["temp_bytes"] >= 0 and r["flops"] > 0
    assert 0 < r["total_bytes"] <= r["limit_bytes"]
    assert r["roofline_s"] > 0 and r["clips_per_s"] == pytest.approx(batch / r["roofline_s"])
    assert r["bound"] in ("compute", "memory")
  train = p["train"]
  assert train["alias_bytes"] > 0                      # the state is donated
  assert train["extra_bytes"] > 0                      # device_prefetch=2 staged batches
  assert p["eval"]["extra_bytes"] > train["extra_bytes"]  # + the optimizer state
  assert p["compiles"] == 2 and p["max_batch"] == []


def test_plan_table_names_what_matters(demo_plan):  # pylint: disable=redefined-outer-name
  text = plan_cli.format_plan(demo_plan)
  assert "on local: 1 x cpu" in text and "dtype float32" in text
  assert "train     16 none        1 yes" in text and "eval      32" in text
  assert "recipe fits with remat=none, 1 micro-batch(es)" in text


def test_fit_needs_the_whole_total_within_the_limit():
  r = planner.StepReport("train", 8, "none", total_bytes=100, limit_bytes=100)
  assert r.fits and r.as_dict()["fits"]
  r.limit_bytes = 99
  assert not r.fits
  r = planner.StepReport("train", 8, "none", total_bytes=10, limit_bytes=100, error="OOM")
  assert not r.fits


def test_topology_names_map_to_jax_topologies():
  assert targets.topology_args("v3-8") == ("v3:2x2", {})
  assert targets.topology_args("v4-8") == ("v4:2x2x1", {"chip_config_name": "megacore"})
  assert targets.topology_args("v5e-1") == ("v5e:1x1", {"chips_per_host_bounds": (1, 1, 1)})
  assert targets.topology_args("v6e-8") == ("v6e:2x4", {})
  assert targets.topology_args("v6e:1x2") == ("v6e:1x2", {"chips_per_host_bounds": (1, 2, 1)})
  assert targets.topology_args("v4:2x2x2") == ("v4:2x2x2", {"chip_config_name": "megacore"})
  assert targets.topology_args("v5p:2x2x2") == ("v5p:2x2x2", {})
  assert targets.topology_args("v5e:4x4") == ("v5e:4x4", {})


def test_unknown_topology_is_a_clear_error():
  with pytest.raises(RuntimeError, match="compile-only TPU devices"):
    planner.target("v9z-8")


# ------------------------------------------------------------------------------- the command
def _plan_cli(*args, timeout=600):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "pgvt_jax.plan", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_without_libtpu_says_how_to_get_it():
  if importlib.util.find_spec("libtpu") is not None:
    pytest.skip("libtpu is installed here")
  r = _plan_cli("--config=configs/demo.py", "--topology=v5e-4", timeout=120)
  assert r.returncode != 0
  assert "pip install 'pgvt_jax[tpu]'" in r.stderr and "v5e-4" in r.stderr


@pytest.mark.e2e
def test_cli_plans_the_demo_locally_as_json():
  r = _plan_cli("--config=configs/demo.py", "--remat=full", "--max_compiles=2",
                "--peak_tflops=0.1", "--hbm_gbps=20", "--json=-")
  assert r.returncode == 0, r.stderr[-3000:]
  (p,) = json.loads(r.stdout)
  assert p["train"]["fits"] and p["eval"]["fits"] and p["train"]["remat"] == "none"
  search = p["max_batch"][0]
  assert search["remat"] == "full" and len(search["probes"]) == 2
  assert search["max_batch"] == 32 and search["first_failing"] is None  # 16, 32 fit on CPU
  assert p["compiles"] == 4  # train + eval at the config's batch, two search probes
