r"""`python -m benchmarks.train_step --impl=torch`: the PyTorch AIM reference, timed like JAX.

    python -m benchmarks.train_step --impl=torch \
        --config=configs/diving48.py:variant=video_only --batch=1 --frames=8 --mode=both

The harness process (which imports JAX to read the config and count FLOPs) writes a spec and
runs the timing in a fresh child `python -m benchmarks.torch_step --spec=IN --out=OUT` that
imports only torch and NumPy, so the reference's peak RSS holds no JAX memory. The child
inherits the harness's environment, malloc tunables included (`malloc_tuned` says which).

Fields are the JAX harness's (benchmarks/train_step.py), with these meanings for torch:
  compile_s    the first step's time (eager: no compilation; includes first-touch allocation)
  step_s       median of --steps steps after --warmup, each synchronised (CUDA) or blocking
  model_flops  the JAX jaxpr count of the same config, step and batch (so MFU compares)
  hlo_flops    torch's own count (torch.utils.flop_counter.FlopCounterMode, matmul/conv/SDPA)
  peak_flops_per_s  CPU: a float32 2048^3 torch.mm timed in the child; GPU: the JAX table
  temp_bytes   -1 (XLA's compiled scratch plan has no eager-torch counterpart)
Threads: torch.set_num_threads(the cores XLA:CPU uses, `timing.cpu_threads()`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchmarks import timing
from pgvt_jax import hardware  # no JAX import: the child stays torch-only

# ------------------------------------------------------------------ harness side (has JAX)


def spec_from_config(config) -> dict:
  """The reference's architecture/optimizer from an experiment config; refuses what it lacks."""
  # pylint: disable-next=g-import-not-at-top
  from pgvt_jax.models.config import ModelConfig, auto_dtype
  from pgvt_jax.optim import AIM_NO_DECAY as NO_DECAY  # pylint: disable=g-import-not-at-top
  m = ModelConfig.from_config(config.model)
  unsupported = {"family": (m.family, "clip"), "variant": (m.variant, "video_only"),
                 "paab_layers": (m.paab_layers, ()), "paat_layer": (m.paat_layer, 0)}
  for field, (got, want) in unsupported.items():
    if got != want:
      raise ValueError(f"config.model.{field}={got!r}: the PyTorch reference (--impl=torch) "
                       f"is AIM's video backbone only; it needs {want!r}")
  o = config.optim
  if o.optimizer != "adamw" or o.get("decay_rule", "aim") != "aim" or o.grad_accum_steps > 1:
    raise ValueError("config.optim: the PyTorch reference times AdamW with the 'aim' decay "
                     "rule and no gradient accumulation")
  clip = m.clip
  return {"model": dict(width=clip.width, layers=clip.layers, patch_size=clip.patch_size,
                        image_size=clip.image_size, frames=m.video_frames,
                        num_classes=m.num_classes, heads=clip.heads,
                        adapter_ratio=m.adapter_ratio, adapter_scale=m.adapter_scale,
                        drop_path=m.drop_path, dropout=m.dropout, activation=clip.activation,
                        drop_path_mode=m.drop_path_mode),
          "optim": dict(lr=o.lr, weight_decay=o.weight_decay, betas=[o.b1, o.b2], eps=o.eps,
                        no_decay=list(o.get("no_decay", NO_DECAY))),
          "label_smoothing": o.label_smoothing, "clip_norm": o.grad_clip_norm,
          "dtype": auto_dtype() if m.dtype == "auto" else m.dtype,  # as the JAX side computes
          "views": config.data.eval_clips * config.data.eval_crops}


def benchmark(config, *, batch: int, mode: str = "train", n_steps: int = 10, warmup: int = 2,
              peak_tflops: float | None = None) -> dict:
  """The JAX harness's result dict, measured on the PyTorch reference in a child process."""
  # JAX on the harness side only: the torch child imports this module too.
  from benchmarks import step_flops  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from pgvt_jax import malloc_tuning  # pylint: disable=g-import-not-at-top
  spec = {**spec_from_config(config), "batch": batch, "mode": mode, "steps": n_steps,
          "warmup": warmup, "threads": timing.cpu_threads(), "peak_tflops": peak_tflops}
  with tempfile.TemporaryDirectory() as tmp:
    spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
    with open(spec_path, "w") as f:
      json.dump(spec, f)
    subprocess.run([sys.executable, "-m", "benchmarks.torch_step", f"--spec={spec_path}",
                    f"--out={out_path}"], check=True, cwd=os.getcwd())
    with open(out_path) as f:
      child = json.load(f)
  r = {"config": config.model.to_dict(), "batch": batch, "backend": child["backend"],
       "device_kind": child["device_kind"], "device_count": 1, "impl": "torch",
       "impl_version": child["torch_version"], "jax_version": jax.__version__,
       "threads": child["threads"], "peak_flops_per_s": child["peak_flops_per_s"],
       "peak_source": child["peak_source"],
       "malloc_tuned": os.environ.get(malloc_tuning.MARKER) == "1",
       "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
       "xla_flags": os.environ.get("XLA_FLAGS", "")}  # same keys as the JAX side; unused here
  counts = step_flops.jaxpr_flops(config, batch, mode)
  for name in ("train", "inference"):
    if name in child:
      s = dict(child[name])
      own = s.pop("torch_flops")
      s.update(timing.summarise(s, batch, s.pop("compile_s"), counts[name], own,
                                r["peak_flops_per_s"]))
      r[name] = {**s, "temp_bytes": -1}
  if "inference" in r:
    r["inference"]["views_per_s"] = batch * r["inference"]["views_per_video"] / r[
        "inference"]["step_s"]
  return {**r, "peak_memory_bytes": child["peak_memory_bytes"],
          "peak_memory_source": child["peak_memory_source"]}


# ------------------------------------------------------------------ child side (torch only)


def _torch_peak(torch, device: str, override: float | None) -> tuple[float, str]:
  if override:
    return override * 1e12, "--peak_tflops"
  if device == "cuda":
    name = torch.cuda.get_device_name()
    chip = hardware.lookup(name)
    if chip is not None:
      return chip.peak_per_device("float32"), f"table:{chip.name} (float32)"
    return float("nan"), f"unknown device {name!r}: pass --peak_tflops"
  n = 2048
  a = torch.ones(n, n)
  torch.mm(a, a)
  best = min(timing.timed(lambda: torch.mm(a, a)) for _ in range(5))
  return 2 * n ** 3 / best, "measured f32 2048^3 torch.mm (all threads)"


def _count_flops(torch, fn) -> float:
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  counter = FlopCounterMode(display=False)
  with counter:
    fn()
  return float(counter.get_total_flops())


def run_child(spec: dict) -> dict:
  """Builds the reference, times what `spec["mode"]` asks for; JSON-able result."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_aim  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(spec["threads"])
  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec["dtype"]]
  autocast = lambda: torch.autocast(device, dtype=dtype, enabled=dtype is not None)
  cfg = torch_aim.AimConfig(**spec["model"])
  torch.manual_seed(0)
  model = torch_aim.AimVideoClip(cfg).to(device)
  torch_aim.freeze_backbone(model)
  peak, peak_source = _torch_peak(torch, device, spec["peak_tflops"])
  out = {"backend": "gpu" if device == "cuda" else "cpu", "torch_version": torch.__version__,
         "device_kind": torch.cuda.get_device_name() if device == "cuda" else "cpu",
         "threads": torch.get_num_threads(), "peak_flops_per_s": peak,
         "peak_source": peak_source}
  b, mode = spec["batch"], spec["mode"]
  frames_of = lambda n: torch.randn(n, 3, cfg.frames, cfg.image_size, cfg.image_size,
                                    device=device)
  if mode in ("train", "both"):
    frames = frames_of(b)
    labels = torch.randint(0, cfg.num_classes, (b,), device=device)
    opt = torch_aim.make_optimizer(model, **spec["optim"])
    model.train()

    def train():
      with autocast():
        torch_aim.train_step(model, opt, frames, labels, spec["label_smoothing"],
                             spec["clip_norm"])
      sync()

    out["train"] = _measure(torch, train, spec, rss=True)
  if mode in ("inference", "both"):
    frames = frames_of(b * spec["views"])
    model.eval()

    def infer():
      with torch.inference_mode(), autocast():
        torch.softmax(model(frames).float(), -1)
      sync()

    out["inference"] = _measure(torch, infer, spec)
    out["inference"].update(views_per_video=spec["views"])
  if device == "cuda":
    out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    out["peak_memory_source"] = "torch.cuda.max_memory_allocated"
  else:
    out["peak_memory_bytes"] = timing.peak_rss_bytes()
    out["peak_memory_source"] = "process peak RSS (torch-only child)"
  return out


def _measure(torch, fn, spec: dict, rss: bool = False) -> dict:
  first = timing.timed(fn)                # "compile_s": eager first step
  own = _count_flops(torch, fn)           # one more untimed step under the FLOP counter
  before = timing.rss_bytes()             # the JAX side's "once compiled"
  out = {**timing.time_steps(fn, spec["steps"], spec["warmup"]), "compile_s": first,
         "torch_flops": own}
  if rss:
    out.update(rss_after_compile_bytes=before[0], peak_rss_after_compile_bytes=before[1],
               rss_after_steps_bytes=timing.rss_bytes()[0])
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--spec", required=True, help="JSON written by torch_step.benchmark")
  p.add_argument("--out", required=True, help="where to write the result JSON")
  args = p.parse_args(argv)
  with open(args.spec) as f:
    spec = json.load(f)
  result = run_child(spec)
  with open(args.out, "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main()
