r"""Train-step and inference throughput of a config: time, FLOP/s, MFU, memory, page faults.

    python -m benchmarks.train_step --config=configs/diving48.py --batch=1
    python -m benchmarks.train_step --config=configs/diving48.py:vit_l14 --batch=8
    python -m benchmarks.train_step --config=configs/diving48.py:variant=video_only \
        --batch=2 --frames=16 --mode=both --json=/tmp/r.json
    python -m benchmarks.train_step --impl=torch --config=configs/diving48.py:variant=video_only \
        --batch=1 --frames=8                  # the PyTorch AIM reference (benchmarks/torch_step.py)
    python -m benchmarks.compare ...         # JAX vs PyTorch, interleaved rounds

Random weights and a synthetic in-memory batch (no records, no CLIP checkpoint): the step
is the trainer's (`steps.make_train_step`, jitted over the config's mesh with the same
shardings and donated state), so its time is the training loop's minus input.

Printed / written (--json) fields (the same for --impl=torch; torch_step.py says what
compile_s / hlo_flops / peak mean there), top level: impl, impl_version, threads, ...; per mode:
  compile_s         lower + compile of the jitted step
  step_s            median of --steps timed steps after --warmup, each synchronised
                    with block_until_ready (also step_s_min / step_s_max)
  clips_per_s       batch / step_s (inference: videos/s; views_per_s counts every view)
  model_flops       2 x multiply-adds of the step's jaxpr (pgvt_jax/tools/flops.py)
  hlo_flops         the compiled step's XLA cost analysis (includes element-wise work)
  flops_per_s       model_flops / step_s;  mfu = flops_per_s / peak_flops_per_s
  peak_flops_per_s  GPU/TPU: the devices' dense peak in the compute dtype (per device from
                    pgvt_jax/hardware.py x device count: a TPU v2/v3 core is a device, half a
                    chip; or --peak_tflops); CPU: a float32 matmul this harness times now
  peak_memory_bytes device peak_bytes_in_use (GPU/TPU); CPU: the process's peak RSS
  rss_after_compile_bytes, peak_rss_after_compile_bytes  CPU: resident and peak RSS once the
                    (first) step is compiled, before it runs (how much of the peak is compiling)
  rss_after_steps_bytes  CPU: resident RSS after the timed steps (what the allocator kept)
  temp_bytes        the compiled step's scratch (memory_analysis temp_size_in_bytes):
                    XLA's buffer plan, deterministic and load-free (remat policies)
  minor_faults_per_step, system_s_per_step  getrusage deltas over the timed steps
  step_s_each, minor_faults_each_step, peak_rss_each_step_bytes  per timed step (the
                    allocator's state can change mid-run: benchmarks/NOTES.md 1, 10)

On a CPU-only Linux/glibc host the harness re-execs itself with pgvt_jax.malloc_tuning's
tunables like `pgvt_jax.main` does; PGVT_JAX_MALLOC_TUNING=0 measures without them, and
`python -m benchmarks.malloc_ab` compares malloc settings interleaved. It also adds
pgvt_jax.xla_flags' CPU flags to XLA_FLAGS (as pgvt_jax.main does); the XLA_FLAGS in effect
are recorded (field xla_flags), and
`XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=true` measures XLA's default.
"""

from __future__ import annotations

import json
import os
import sys
import time

from benchmarks import timing
from pgvt_jax import malloc_tuning, xla_flags

if __name__ == "__main__":
  malloc_tuning.reexec_with_tunables()
  xla_flags.set_cpu_flags()  # as pgvt_jax.main does

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from pgvt_jax import cli, config_files, fitting, hardware, optim, partitioning, steps
from pgvt_jax.models import clip_family, pgvt
from pgvt_jax.models.config import ModelConfig
from pgvt_jax.tools import flops as flops_lib

time_steps = timing.time_steps


def _define_flags() -> None:
  """Flags only when run as a script: importing the harness (tests, notebooks) next to
  other tools must not define --mode/--json/... twice."""
  # pylint: disable-next=global-statement
  global _CONFIG, _BATCH, _FRAMES, _POSE_FRAMES, _MODE, _STEPS, _WARMUP, _PEAK, _JSON, _IMPL
  _CONFIG = config_files.DEFINE_config_file("config", None, "Experiment config file.")
  _BATCH = flags.DEFINE_integer("batch", 1, "Global batch (clips; inference: videos).")
  _FRAMES = flags.DEFINE_integer("frames", None, "Override config.model.video_frames.")
  _POSE_FRAMES = flags.DEFINE_integer("pose_frames", None, "Override config.model.pose_frames.")
  _MODE = flags.DEFINE_enum("mode", "train", ["train", "inference", "both"], "What to time.")
  _STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (median reported).")
  _WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
  _PEAK = flags.DEFINE_float("peak_tflops", None, "Device peak TFLOP/s (default: table/measured).")
  _JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
  _IMPL = flags.DEFINE_enum("impl", "jax", ["jax", "torch"],
                            "jax: pgvt_jax's step; torch: the PyTorch AIM reference "
                            "(benchmarks/torch_step.py; video_only configs).")


def synthetic_batch(model_cfg, batch: int, num_classes: int, seed: int = 0) -> dict:
  """A batch of the shapes and dtypes the model reads (uint8 frames), plus labels (host numpy)."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, spec in pgvt.input_spec(model_cfg, batch).items():
    if k == "pose_mask":
      out[k] = np.ones(spec.shape, np.float32)
    elif k == "pose":
      out[k] = rng.uniform(0, 1, spec.shape).astype(np.float32)
    elif spec.dtype == np.uint8:  # frames: pixels, normalised in the step
      out[k] = rng.integers(0, 256, spec.shape, dtype=np.uint8)
    else:
      out[k] = rng.standard_normal(spec.shape, dtype=np.float32)
  out["label"] = rng.integers(0, num_classes, (batch,)).astype(np.int32)
  return out


def measured_matmul_peak(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` n x n x n matmuls on the default device."""
  a = jnp.ones((n, n), dtype)
  mm = jax.jit(lambda x, y: x @ y)
  mm(a, a).block_until_ready()
  best = min(timing.timed(lambda: mm(a, a).block_until_ready()) for _ in range(repeats))
  return 2 * n ** 3 / best


def table_peak(device_kind: str, device_count: int, dtype: str) -> tuple[float, str]:
  """Dense peak FLOP/s of `device_count` JAX devices of `device_kind` (pgvt_jax/hardware.py).

  Per device, then times the devices: on TPU v2/v3, where each chip's two cores are two JAX
  devices, a chip is counted once (a v3-8 is 4 x 123 TFLOP/s, not 8 x 123)."""
  chip = hardware.lookup(device_kind)
  if chip is None:
    return float("nan"), f"unknown device {device_kind!r}: pass --peak_tflops"
  per_device = chip.peak_per_device(dtype)
  return per_device * device_count, (f"table:{chip.name} {per_device / 1e12:.1f} TFLOP/s per "
                                     f"device ({chip.devices_per_chip} per chip) x "
                                     f"{device_count}")


def device_peak(dtype: str, override_tflops: float | None) -> tuple[float, str]:
  if override_tflops:
    return override_tflops * 1e12, "--peak_tflops"
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return measured_matmul_peak(), "measured f32 2048^3 matmul (all cores)"
  return table_peak(dev.device_kind, jax.device_count(), dtype)


def compute_dtype_name(config) -> str:
  """config.model.dtype with "auto" resolved on this backend ("float32", "bfloat16", ...)."""
  return str(jnp.dtype(ModelConfig.from_config(config.model).compute_dtype))


def temp_bytes(compiled) -> int:
  """The compiled program's scratch allocation (XLA buffer assignment), -1 if not reported."""
  try:
    return int(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return -1


def peak_memory_bytes() -> tuple[int, str]:
  stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  return timing.peak_rss_bytes(), "process peak RSS"


def hlo_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def setup(config, batch: int):
  """(model, mesh shardings, trainable, frozen, tx, schedule) as the trainer builds them."""
  mesh = partitioning.make_mesh(config.mesh)
  partitioning.check_batch_divisible(batch, mesh, "--batch")
  model = pgvt.create_model(config.model)
  shapes = pgvt.param_shapes(model)
  param_sh = partitioning.tree_shardings(shapes, mesh, config.mesh)
  init = lambda rng: model.init(rng, pgvt.dummy_batch(model.config))["params"]
  params = jax.jit(init, out_shardings=param_sh)(jax.random.PRNGKey(0))
  if config.freeze_backbone:
    trainable, frozen = clip_family.split_params(params)
  else:
    trainable, frozen = params, {}
  schedule = optim.make_schedule(config.optim, 1000, 100)
  tx = optim.make_optimizer(config.optim, schedule,
                            labels=clip_family.param_labels if config.freeze_backbone else None)
  return model, mesh, trainable, frozen, tx, schedule


def benchmark(config, *, batch: int, mode: str = "train", n_steps: int = 10, warmup: int = 2,
              peak: tuple[float, str] | None = None) -> dict:
  """Times the train step and/or the multi-view inference step of `config` (see docstring)."""
  model, mesh, trainable, frozen, tx, schedule = setup(config, batch)
  batch_sh = partitioning.batch_sharding(mesh)
  dtype = compute_dtype_name(config)
  peak_flops, peak_source = peak or device_peak(dtype, None)
  common_fields = {
      "config": config.model.to_dict(), "batch": batch, "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
      "impl": "jax", "impl_version": jax.__version__, "jax_version": jax.__version__,
      "threads": timing.cpu_threads(), "peak_flops_per_s": peak_flops, "peak_source": peak_source,
      "malloc_tuned": os.environ.get(malloc_tuning.MARKER) == "1",
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "xla_flags": os.environ.get("XLA_FLAGS", "")}
  results = {}
  if mode in ("train", "both"):
    host = synthetic_batch(config.model, batch, config.model.num_classes)
    # A copy: the step donates its state, and inference below still reads `trainable`.
    state = steps.init_state(jax.tree.map(jnp.copy, trainable), tx, 0)
    fn = steps.make_train_step(model, tx, fitting.fixed(config), schedule)
    glob = jax.device_put(host, batch_sh)
    model_flops = 2 * flops_lib.count_macs(fn, state, frozen, glob)["total"]
    jitted = jax.jit(fn, donate_argnums=(0,))
    t = time.perf_counter()
    compiled = jitted.lower(state, frozen, glob).compile()
    compile_s = time.perf_counter() - t
    rss_compiled = timing.rss_bytes()
    holder = [state]

    def run():
      holder[0], metrics = compiled(holder[0], frozen, glob)
      jax.block_until_ready((holder[0], metrics))

    results["train"] = timing.summarise(time_steps(run, n_steps, warmup), batch, compile_s,
                                  model_flops, hlo_flops(compiled), peak_flops)
    results["train"].update(rss_after_compile_bytes=rss_compiled[0],
                            peak_rss_after_compile_bytes=rss_compiled[1],
                            rss_after_steps_bytes=timing.rss_bytes()[0])
    results["train"]["temp_bytes"] = temp_bytes(compiled)
  if mode in ("inference", "both"):
    views = config.data.eval_clips * config.data.eval_crops
    host = synthetic_batch(config.model, batch * views, config.model.num_classes)
    predict = steps.make_eval_step(model)
    glob = jax.device_put(host, batch_sh)
    model_flops = 2 * flops_lib.count_macs(predict, trainable, frozen, glob)["total"]
    t = time.perf_counter()
    compiled = jax.jit(predict).lower(trainable, frozen, glob).compile()
    compile_s = time.perf_counter() - t
    run = lambda: jax.block_until_ready(compiled(trainable, frozen, glob))
    r = timing.summarise(time_steps(run, n_steps, warmup), batch, compile_s, model_flops,
                   hlo_flops(compiled), peak_flops)
    r["temp_bytes"] = temp_bytes(compiled)
    r.update(views_per_video=views, views_per_s=batch * views / r["step_s"])
    results["inference"] = r
  mem, mem_source = peak_memory_bytes()
  return {**common_fields, **results, "peak_memory_bytes": mem, "peak_memory_source": mem_source}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if _FRAMES.value:
    config.model.video_frames = _FRAMES.value
  if _POSE_FRAMES.value:
    config.model.pose_frames = _POSE_FRAMES.value
  dtype = compute_dtype_name(config)
  kw = dict(batch=_BATCH.value, mode=_MODE.value, n_steps=_STEPS.value, warmup=_WARMUP.value)
  if _IMPL.value == "torch":
    from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
    r = torch_step.benchmark(config, **kw, peak_tflops=_PEAK.value)
  else:
    r = benchmark(config, **kw, peak=device_peak(dtype, _PEAK.value))
  m = r["config"]
  print(f"{r['impl']}: {m['variant']} ViT-{m['backbone']} {m['image_size']}px video "
        f"{m['video_frames']}f pose {m['pose_frames']}f batch {r['batch']} {dtype} "
        f"remat={m.get('remat')} attention={m.get('attention_impl')} on "
        f"{r['device_count']}x {r['device_kind']} ({r['impl']} {r['impl_version']}, "
        f"{r['threads']} threads, malloc tuned: {r['malloc_tuned']})")
  print(f"  peak {r['peak_flops_per_s'] / 1e12:.3f} TFLOP/s ({r['peak_source']}); peak memory "
        f"{r['peak_memory_bytes'] / 2**30:.2f} GiB ({r['peak_memory_source']})")
  for mode in ("train", "inference"):
    if mode in r:
      s = r[mode]
      print(f"  {mode:9s} compile {s['compile_s']:.1f} s  step {s['step_s']:.4f} s "
            f"(min {s['step_s_min']:.4f}, max {s['step_s_max']:.4f}, n={s['timed_steps']})  "
            f"{s['clips_per_s']:.2f} clips/s  {s['flops_per_s'] / 1e12:.3f} TFLOP/s  "
            f"MFU {100 * s['mfu']:.1f}%  faults/step {s['minor_faults_per_step']:.0f}  "
            f"sys {s['system_s_per_step']:.3f} s/step  "
            f"temp {s.get('temp_bytes', -1) / 2**30:.3f} GiB")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(r, f, indent=1, default=str)
  sys.stdout.flush()


def _define_all_flags() -> None:
  _define_flags()
  flags.mark_flag_as_required("config")


if __name__ == "__main__":
  cli.run_app(main, _define_all_flags, __doc__)  # --help: usage, exit 0
