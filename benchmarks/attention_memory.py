r"""Memory of the trainer's train step, attention probabilities saved vs recomputed, compiled
without running (no weights, no data): `memory_analysis()` of the compiled step.

    # CPU: temp bytes of PGVT B/16 8+24 frames, batch 1, float32
    python -m benchmarks.attention_memory --frames=8 --pose_frames=24 --batch=1
    # compile-only for one TPU chip (a venv with jax[tpu]; JAX_PLATFORMS=cpu for the host):
    TPU_SKIP_MDS_QUERY=1 JAX_PLATFORMS=cpu ALLOW_MULTIPLE_LIBTPU_LOAD=1 \
        /work/tpu-venv/bin/python -m benchmarks.attention_memory --topology=v5e:1x1 \
        --batch=4 [--max_batch=32]

Per attention implementation (`--impls`, default "xla_saved,xla": before / after
models/attention.py) and frame dtype (`--frames_dtype`, uint8 as the pipeline sends them or
float32 as it used to): argument / output / temp bytes of the compiled step (TPU: per chip;
with `--max_batch` also the largest batch that compiles, by bisection: XLA:TPU fails with
RESOURCE_EXHAUSTED when a program does not fit). The step is `steps.make_train_step` on
configs/diving48.py (PGVT 48+16 unless --frames/--pose_frames), remat "none", bf16 on TPU
(dtype "auto" would be decided by the CPU host here), float32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import diving48
from pgvt_jax import fitting, optim, steps
from pgvt_jax.models import attention as attention_lib
from pgvt_jax.models import clip_family, pgvt


def _config(args, impl: str, dtype: str):
  config = diving48.get_config(",".join(filter(None, [args.config, f"variant={args.variant}"])))
  m = config.model
  m.video_frames = args.frames or m.video_frames
  m.pose_frames = args.pose_frames or m.pose_frames
  m.attention_impl, m.dtype, m.remat = impl, dtype, "none"
  return config


def _step_and_args(config, batch: int, frames_dtype: str, device):
  """The jitted train step and ShapeDtypeStructs of (state, frozen, batch) on `device`."""
  model = pgvt.create_model(config.model)
  trainable, frozen = clip_family.split_params(pgvt.param_shapes(model))
  schedule = optim.make_schedule(config.optim, 1000, 100)
  tx = optim.make_optimizer(config.optim, schedule, labels=clip_family.param_labels)
  state = jax.eval_shape(lambda p: steps.init_state(p, tx, 0), trainable)
  spec = dict(pgvt.input_spec(config.model, batch),
              label=jax.ShapeDtypeStruct((batch,), jnp.int32))
  if frames_dtype == "float32":
    spec["frames"] = jax.ShapeDtypeStruct(spec["frames"].shape, jnp.float32)
  sharding = jax.sharding.SingleDeviceSharding(device)
  place = lambda t: jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), t)
  fn = jax.jit(steps.make_train_step(model, tx, fitting.fixed(config), schedule), donate_argnums=(0,))
  return fn, (place(state), place(frozen), place(spec))


def compile_step(config, batch: int, frames_dtype: str, device) -> dict:
  """Bytes of the compiled step, or {"fits": False} when XLA reports it does not fit."""
  fn, args = _step_and_args(config, batch, frames_dtype, device)
  t = time.perf_counter()
  try:
    compiled = fn.lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except
    if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
      return {"batch": batch, "fits": False, "compile_s": round(time.perf_counter() - t, 1)}
    raise
  mem = compiled.memory_analysis()
  return {"batch": batch, "fits": True, "compile_s": round(time.perf_counter() - t, 1),
          "argument_bytes": int(mem.argument_size_in_bytes),
          "output_bytes": int(mem.output_size_in_bytes),
          "temp_bytes": int(mem.temp_size_in_bytes),
          "batch_bytes": int(sum(np.prod(s.shape) * np.dtype(s.dtype).itemsize
                                 for s in jax.tree.leaves(args[2])))}


def attention_stack(impl: str, device, batch: int, layers: int = 4, tokens: int = 197,
                    heads: int = 12, head_dim: int = 64, dtype=jnp.bfloat16) -> dict:
  """Temp bytes of the gradient of `layers` (projection -> attention -> tanh residual)
  blocks alone: the attention's share without the rest of the model."""
  width = heads * head_dim

  def f(x, ws):
    for w in ws:
      q, k, v = ((x @ m).reshape(batch, tokens, heads, head_dim) for m in (w, w.T, 2 * w))
      y = attention_lib.dot_product_attention(q, k, v, implementation=impl)
      x = x + jnp.tanh(y.reshape(batch, tokens, width))
    return jnp.sum(x.astype(jnp.float32))

  sharding = jax.sharding.SingleDeviceSharding(device)
  x = jax.ShapeDtypeStruct((batch, tokens, width), dtype, sharding=sharding)
  ws = jax.ShapeDtypeStruct((layers, width, width), dtype, sharding=sharding)
  compiled = jax.jit(jax.grad(f)).lower(x, ws).compile()
  return {"batch": batch, "layers": layers,
          "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes)}


def max_batch(config, frames_dtype: str, device, lo: int, hi: int) -> tuple[int, list]:
  """Largest batch in [lo, hi] that compiles (bisection; lo is assumed to fit)."""
  tried = []
  while lo < hi:
    mid = (lo + hi + 1) // 2
    r = compile_step(config, mid, frames_dtype, device)
    tried.append(r)
    print(json.dumps(r), flush=True)
    lo, hi = (mid, hi) if r["fits"] else (lo, mid - 1)
  return lo, tried


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="", help='configs/diving48.py argument, e.g. "tiny"')
  p.add_argument("--variant", default="pgvt")
  p.add_argument("--frames", type=int, default=0, help="T_l (0: the config's, 16)")
  p.add_argument("--pose_frames", type=int, default=0, help="T_h (0: the config's, 48)")
  p.add_argument("--batch", type=int, default=1, help="per device")
  p.add_argument("--impls", default="xla_saved,xla")
  p.add_argument("--frames_dtype", default="uint8", choices=("uint8", "float32"))
  p.add_argument("--topology", default="", help='compile-only TPU, e.g. "v5e:1x1"')
  p.add_argument("--max_batch", type=int, default=0, help="bisect the batch up to this")
  p.add_argument("--stack", type=int, default=0,
                  help="instead of the model: N attention blocks alone (B/16 sizes), batch "
                  "= --batch images")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)

  if args.topology:
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    # A chip-count topology smaller than a host ("v5e:1x1") needs its own host bounds.
    dims = [int(x) for x in args.topology.split(":")[1].split("x")]
    kw = {"chips_per_host_bounds": tuple(dims + [1] * (3 - len(dims)))} if np.prod(dims) < 4 else {}
    device = topologies.get_topology_desc(topology_name=args.topology, platform="tpu",
                                          **kw).devices[0]
    dtype = "bfloat16"
  else:
    device, dtype = jax.devices()[0], "float32"
  out = {"device": device.device_kind, "topology": args.topology or "host",
         "variant": args.variant, "frames_dtype": args.frames_dtype, "dtype": dtype,
         "results": {}}
  for impl in args.impls.split(","):
    if args.stack:
      out["results"][impl] = attention_stack(impl, device, args.batch, args.stack,
                                             dtype=jnp.dtype(dtype))
      print(impl, json.dumps(out["results"][impl]), flush=True)
      continue
    config = _config(args, impl, dtype)
    out["frames"] = (config.model.video_frames, config.model.pose_frames)
    r = compile_step(config, args.batch, args.frames_dtype, device)
    print(impl, json.dumps(r), flush=True)
    if args.max_batch and r["fits"]:
      r["max_batch"], r["tried"] = max_batch(config, args.frames_dtype, device, args.batch,
                                             args.max_batch)
      print(impl, "max batch", r["max_batch"], flush=True)
    out["results"][impl] = r
  print(json.dumps(out, indent=1))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  return out


if __name__ == "__main__":
  main()
