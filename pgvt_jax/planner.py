"""Will it fit, and how fast can it be? The trainer's steps compiled for devices you may not have.

    target = planner.target("v5e-4")               # compile-only TPU devices (needs libtpu)
    p = planner.Planner(config, target)
    train = p.report("train")                      # config's batch and remat policy
    fit = p.fit()                                  # remat / micro-batches "auto" decided
    best = p.max_batch("full")                     # largest global train batch that fits
    print(planner.to_json(p.plan(remats=("none", "full"))))

Targets (targets.py, re-exported here): compile-only TPU slices by name (`TOPOLOGIES`: "v2-8", "v3-8", "v4-8", "v5p-8",
"v5e-1/4/8", "v6e-1/4/8", or a raw topology such as "v5e:4x4"), or "local" (this process's
devices). Compile-only devices come from `jax.experimental.topologies` (libtpu, the `[tpu]`
extra); the host backend may be the CPU (JAX_PLATFORMS=cpu): nothing runs, XLA:TPU compiles.

Per device, from the compiled program (`memory_analysis`): arguments + outputs - aliased
(donated state) + temporaries + code, plus what else the trainer keeps on the device then:
the train step's `config.data.device_prefetch` staged batches; during an in-training eval, the
train state the eval step does not take (optimizer state) and those staged batches. Fits when
that total is within the device's usable HBM (`hardware.py`) and XLA did not refuse the
program (RESOURCE_EXHAUSTED; XLA:TPU rematerialises by itself before it refuses, so fitting
programs can show temporaries near the limit: search the batch, do not extrapolate temps).

Roofline (a lower bound on step time, per device since the program is SPMD): max(FLOPs /
peak FLOP/s, bytes accessed / HBM bandwidth), both from `cost_analysis` of the compiled
per-device program and the chip table; clips/s = global batch / that bound.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
from absl import logging
import numpy as np

from pgvt_jax import fitting, partitioning, step_builder
from pgvt_jax.targets import TOPOLOGIES, Target, target  # noqa: F401  (planner.target(...))

REMATS = ("none", "full", "save_dots")

# ------------------------------------------------------------------------------- reports
@dataclasses.dataclass
class StepReport:
  """One compiled step on one target. Bytes and FLOPs are PER DEVICE."""
  step: str                  # "train" | "eval"
  global_batch: int          # clips (train) / views (eval) per step, all devices
  remat: str
  micro_batches: int = 1     # the train step's batch split into this many passes
  compile_s: float = 0.0
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0       # outputs written into donated arguments (the train state)
  temp_bytes: int = 0
  code_bytes: int = 0
  extra_bytes: int = 0       # kept on device beside the program (prefetch, train state)
  total_bytes: int = 0
  limit_bytes: int = 0
  flops: float = 0.0
  bytes_accessed: float = 0.0
  roofline_s: Optional[float] = None
  clips_per_s: Optional[float] = None
  bound: Optional[str] = None  # "compute" | "memory"
  error: Optional[str] = None  # XLA's RESOURCE_EXHAUSTED line when it refused the program
  probes: Optional[list] = None  # Planner.fit: the (remat, k, fits) it tried
  # Planner(keep_compiled=True), fitting train steps only; never reported.
  compiled: Any = dataclasses.field(default=None, repr=False, compare=False)
  built: Any = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def fits(self) -> bool:
    """XLA accepted the program and it, with what stays beside it, is within the limit."""
    return self.error is None and 0 < self.total_bytes <= self.limit_bytes

  def as_dict(self) -> dict:
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
           if f.name not in ("compiled", "built")}
    return {**out, "fits": self.fits}


def device_bytes(tree: Any) -> int:
  """Bytes of the largest shard of a sharded abstract tree on one device."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
    total += int(np.prod(shape)) * np.dtype(x.dtype).itemsize
  return total


_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def parse_oom(message: str) -> dict:
  """Numbers of an XLA RESOURCE_EXHAUSTED message: {"required": bytes, "available": bytes}
  where present (formats differ between XLA versions; absent numbers are left out)."""
  out, num = {}, r"([\d.]+)\s*([KMGT]?)i?B?"
  for key, pattern in (("required", r"required[^(]*\(" + num + r"\)"),
                       ("available", r"available HBM\s*\(" + num + r"\)"),
                       ("required", r"Used " + num + r" of"),
                       ("available", r"of " + num + r" hbm")):
    m = re.search(pattern, message)
    if m and key not in out:
      out[key] = int(float(m.group(1)) * _UNITS[m.group(2)])
  return out


def _cost(compiled) -> tuple[float, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0] if cost else {}
  cost = cost or {}
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


class Planner:
  """Compiles a config's steps for one target; every (step, batch, remat, k) compiles once.

  `mesh`: the trainer's own mesh (its devices must be the target's); default: one made from
  `config.mesh` over the target's devices. `total_steps`/`steps_per_epoch` set the schedule
  compiled into the train step (shapes do not depend on them). `keep_compiled`: reports of
  fitting train steps keep the executable and the `Built` it came from, so the trainer runs
  the program it measured instead of compiling it again. `build`: the task's step builder
  (`step_builder.build`, classification's; `alignment.build`): `build(config, mesh, train=...,
  total_steps=..., steps_per_epoch=...) -> step_builder.Built`.
  """

  def __init__(self, config: ml_collections.ConfigDict, tgt: Target, *,
               mesh: Optional[jax.sharding.Mesh] = None, total_steps: int = 1000,
               steps_per_epoch: int = 100, keep_compiled: bool = False,
               build: Callable[..., step_builder.Built] = step_builder.build):
    self.target = tgt
    self.mesh = mesh
    self._build = build
    self.schedule_steps = dict(total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    self.keep_compiled = keep_compiled
    self.notes: list[str] = []
    # Batches are split over every device: a config batch that does not divide is planned at
    # the next multiple (and said so), rather than refused, so one config serves all targets.
    self.config = copy.deepcopy(config)
    for field in ("train_batch_size", "eval_batch_size"):
      if field not in self.config.data:  # a task whose eval batches are configured elsewhere
        continue
      b = int(self.config.data[field])
      if b % self.unit:
        self.config.data[field] = -(-b // self.unit) * self.unit
        self.notes.append(f"config.data.{field}={b} is not a multiple of the {self.unit} "
                          f"devices: planned at {self.config.data[field]}")
    self._cache: dict[tuple, StepReport] = {}

  @functools.cached_property
  def built(self) -> step_builder.Built:
    """The config as given ("auto" as none / 1): shardings, dtype, for the plan's header."""
    return self.build()

  @property
  def unit(self) -> int:
    """Global batches must be multiples of the device count (the batch is split over all)."""
    return len(self.target.devices)

  def build(self, batch: Optional[int] = None, remat: Optional[str] = None,
            step: str = "train", micro: Optional[int] = None) -> step_builder.Built:
    cfg = fitting.fixed(self.config, remat, micro)
    if batch is not None:
      cfg.data["train_batch_size" if step == "train" else "eval_batch_size"] = batch
    mesh = self.mesh or partitioning.make_mesh(cfg.mesh, self.target.devices)
    return self._build(cfg, mesh, train=True, **self.schedule_steps)

  def report(self, step: str = "train", batch: Optional[int] = None,
             remat: Optional[str] = None, micro: Optional[int] = None) -> StepReport:
    """The compiled `step` at global `batch` (default: the config's) with `remat` and `micro`
    batches (default: the config's; an undecided "auto" as none / 1)."""
    data_cfg = self.config.data
    batch = batch or (data_cfg.train_batch_size if step == "train" else data_cfg.eval_batch_size)
    fixed = fitting.fixed(self.config, remat, micro)
    remat, micro = fixed.model.remat, fixed.optim.micro_batches
    if step == "eval":
      micro = 1  # the eval step is never split
    key = (step, batch, remat, micro)
    if key not in self._cache:
      self._cache[key] = self._compile(step, batch, remat, micro)
    return self._cache[key]

  def _compile(self, step: str, batch: int, remat: str, micro: int) -> StepReport:
    built = self.build(batch, remat, step, micro)
    prefetch = int(built.config.data.get("device_prefetch", 0)) * device_bytes(built.train_batch)
    if step == "train":
      lowered = built.train_step.lower(built.abstract_state, built.abstract_frozen,
                                       built.train_batch)
      extra = prefetch
    else:
      lowered = built.eval_step.lower(built.abstract_state["params"], built.abstract_frozen,
                                      built.eval_batch)
      # Evaluating during training: the rest of the train state and the staged batches stay.
      rest = {k: v for k, v in built.abstract_state.items() if k != "params"}
      extra = device_bytes(rest) + prefetch
    report = StepReport(step, batch, remat, micro_batches=micro, extra_bytes=extra,
                        limit_bytes=self.target.limit_bytes)
    logging.info("compiling the %s step for %s: global batch %d, remat %s, %d micro-batch(es)",
                 step, self.target.name, batch, remat, micro)
    t = time.perf_counter()
    try:
      compiled = lowered.compile()
    except Exception as e:  # pylint: disable=broad-except
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      report.compile_s = time.perf_counter() - t
      report.error = next((line for line in str(e).splitlines() if "RESOURCE_EXHAUSTED" in line),
                          str(e))[:500]
      report.total_bytes = parse_oom(str(e)).get("required", 0) + extra
      return report
    report.compile_s = time.perf_counter() - t
    logging.info("compiled in %.1f s", report.compile_s)
    mem = compiled.memory_analysis()
    report.argument_bytes = int(mem.argument_size_in_bytes)
    report.output_bytes = int(mem.output_size_in_bytes)
    report.alias_bytes = int(mem.alias_size_in_bytes)
    report.temp_bytes = int(mem.temp_size_in_bytes)
    report.code_bytes = int(mem.generated_code_size_in_bytes)
    report.total_bytes = (report.argument_bytes + report.output_bytes - report.alias_bytes
                          + report.temp_bytes + report.code_bytes + extra)
    report.flops, report.bytes_accessed = _cost(compiled)
    if micro > 1:  # XLA's cost analysis counts a loop body once; the step runs it k times
      report.flops, report.bytes_accessed = report.flops * micro, report.bytes_accessed * micro
    self._roofline(report, str(built.config.model.get("dtype", "float32")))
    if self.keep_compiled and step == "train" and report.fits:
      report.compiled, report.built = compiled, built
    return report

  def _roofline(self, report: StepReport, dtype: str) -> None:
    peak, bw = self.target.peak_flops(dtype), self.target.bandwidth()
    if not peak or not bw or report.flops <= 0:
      return  # unknown chip (CPU without --peak_tflops/--hbm_gbps): no bound
    compute, memory = report.flops / peak, report.bytes_accessed / bw
    report.roofline_s = max(compute, memory)
    report.bound = "compute" if compute >= memory else "memory"
    report.clips_per_s = report.global_batch / report.roofline_s

  def set_limit(self, limit_bytes: int) -> None:
    """Plan for `limit_bytes` per device from now on (e.g. what another job leaves free);
    compiled reports are kept (a program XLA refused stays refused)."""
    self.target.limit_bytes = int(limit_bytes)
    for r in self._cache.values():
      r.limit_bytes = int(limit_bytes)

  def fit(self) -> StepReport:
    """The train step at the config's batch with its "auto" remat/micro-batches decided
    (fitting.choose's order). Raises fitting.DoesNotFit (with `.probes`) when nothing fits."""
    batch = int(self.config.data.train_batch_size)
    fits = lambda r, k: self.report("train", batch, r, k).fits

    def overshoot(r, k):  # memory needed / the limit, from XLA's refusal or the analysis
      rep = self.report("train", batch, r, k)
      return rep.total_bytes / rep.limit_bytes if rep.total_bytes else None

    choice, probes = fitting.choose(fits, self.config.model.get("remat", "none"),
                                    self.config.optim.get("micro_batches", 1),
                                    batch // self.unit, overshoot=overshoot)
    if choice is None:
      last = self.report("train", batch, *probes[-1][:2])
      detail = (f"; the last needs {last.total_bytes / 2 ** 30:.2f} GiB of "
                f"{last.limit_bytes / 2 ** 30:.2f} per device" if last.total_bytes else "")
      err = fitting.DoesNotFit(fitting.does_not_fit_message(
          f"{self.target.name} ({self.target.device_kind})", batch, self.unit, probes, detail))
      err.probes = probes
      raise err
    report = self.report("train", batch, *choice)
    report.probes = list(probes)
    return report

  def max_batch(self, remat: str, *, max_compiles: int = 4, limit: int = 1 << 16,
                micro: int = 1) -> dict:
    """Largest fitting global train batch (a multiple of the device count) with `remat`."""
    fits = lambda b: self.report("train", b, remat, micro).fits
    start = self.config.data.train_batch_size
    found = fitting.search_max_batch(fits, self.unit, start=start, max_probes=max_compiles,
                                     limit=limit)
    return {"remat": remat, "micro_batches": micro, **found}

  def plan(self, remats: Sequence[str] = REMATS, search: bool = True,
           max_compiles: int = 4, max_batch: int = 1 << 16) -> dict:
    """Everything the CLI prints: target, choice, shardings, train/eval reports, searches.

    "train" is the step as the trainer would run it: with an "auto" remat or micro-batch
    setting, the fitting choice ("fit": what was tried), or, when nothing fits, the last
    setting tried ("fit_error" says so)."""
    out = {"target": describe_target(self.target, self.built), "model": describe_model(
        self.config, self.built), "shardings": describe_shardings(self.built),
           "notes": list(self.notes), "fit": None, "fit_error": None}
    train = None
    if fitting.needs_fit(self.config):
      try:
        train = self.fit()
        out["fit"] = {"remat": train.remat, "micro_batches": train.micro_batches,
                      "probes": train.probes}
      except fitting.DoesNotFit as e:
        out["fit_error"] = str(e)
        train = self.report("train", None, *e.probes[-1][:2])
    out["train"] = (train or self.report("train")).as_dict()
    out["eval"] = self.report("eval").as_dict()
    out["max_batch"] = []
    if search:
      out["max_batch"] = [self.max_batch(r, max_compiles=max_compiles, limit=max_batch)
                          for r in remats]
    out["compiles"] = len(self._cache)
    out["compile_s"] = sum(r.compile_s for r in self._cache.values())
    return out


# ------------------------------------------------------------------------------- describing
def describe_target(tgt: Target, built: step_builder.Built) -> dict:
  dtype = str(built.config.model.dtype)
  return {"name": tgt.name, "device_kind": tgt.device_kind, "platform": tgt.devices[0].platform,
          "num_devices": len(tgt.devices), "chip": tgt.chip.name if tgt.chip else None,
          "devices_per_chip": tgt.chip.devices_per_chip if tgt.chip else 1,
          "limit_bytes_per_device": tgt.limit_bytes,
          "peak_flops_per_device": tgt.peak_flops(dtype),
          "hbm_bytes_per_s_per_device": tgt.bandwidth()}


def describe_model(config: ml_collections.ConfigDict, built: step_builder.Built) -> dict:
  m = built.config.model
  return {"family": m.family, "variant": m.variant, "backbone": m.backbone,
          "image_size": m.image_size, "video_frames": m.video_frames,
          "pose_frames": m.pose_frames, "remat": str(config.model.remat),
          "dtype": str(m.dtype), "attention_impl": str(m.attention_impl),
          "auto_reason": built.choice.reason}


def _spec(sharding) -> str:
  return str(tuple(sharding.spec))


def describe_shardings(built: step_builder.Built) -> dict:
  """Mesh axes and how many leaves of each tree use each partition spec."""
  def count(tree) -> dict:
    out: dict[str, int] = {}
    for s in jax.tree.leaves(tree):
      out[_spec(s)] = out.get(_spec(s), 0) + 1
    return out
  mesh = built.batch_sharding.mesh
  return {"mesh": {k: int(v) for k, v in mesh.shape.items()},
          "mesh_devices": int(mesh.devices.size),
          "batch": _spec(built.batch_sharding),
          "params": count(built.param_shardings), "state": count(built.state_shardings),
          "frozen": count(built.frozen_shardings)}


def to_json(plan: dict) -> str:
  return json.dumps(plan, indent=1, default=str)
