"""Searching what fits: the recipe's remat policy and micro-batches, and the largest batch.

A recipe fixes the global batch and the learning rate; the hardware decides how a step holds
it. `config.model.remat="auto"` and `config.optim.micro_batches="auto"` are decided by
compiling the train step for the devices (`planner.Planner.fit`), trying the cheapest first:

  1. remat "none", the global batch in one pass (k = 1);
  2. remat "none", the batch split into k micro-batches whose gradients are averaged before
     the one update (`steps.accumulate_gradients`): the smallest k, among the divisors of the
     per-device batch, that fits. No extra FLOPs, only smaller matrices per pass;
  3. remat "full" (every block recomputes its forward in the backward: about +50% FLOPs with
     a frozen backbone, whose backward is activation gradients only), k = 1, then the smallest
     k that fits.

A setting given explicitly is kept and only the other one is searched. Neither changes the
train state's structure, so a run resumed on other hardware decides again (a v5e-8 run moved
to one v5e chip splits its batch 8 ways and trains the same recipe).

`search_max_batch` finds the largest global batch that fits for a policy (the planner's
table). Both searches assume "fits" is monotone: more micro-batches or a smaller batch never
need more memory.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

AUTO = "auto"
AUTO_REMATS = ("none", "full")  # "save_dots" keeps every matmul output: more, not less, memory
                                # than "none" for the B/16 step on TPU (docs/planning.md)


class DoesNotFit(ValueError):
  """No remat policy and micro-batch split tried lets the train step fit the devices."""


def is_auto(value) -> bool:
  return isinstance(value, str) and value == AUTO


def needs_fit(config) -> bool:
  """Whether the config leaves remat or micro-batches to the devices."""
  return (is_auto(config.model.get("remat", "none"))
          or is_auto(config.optim.get("micro_batches", 1)))


def fixed(config, remat: Optional[str] = None, micro: Optional[int] = None):
  """A copy of `config` with remat and micro-batches set: the given values, else the config's,
  an "auto" left undecided read as the first candidate ("none", 1): one pass, nothing
  recomputed, what a forward-only use or a benchmark at a given batch wants."""
  cfg = copy.deepcopy(config)
  remat = remat or str(cfg.model.get("remat", "none"))
  micro = micro or cfg.optim.get("micro_batches", 1)
  cfg.model.remat = "none" if is_auto(remat) else remat
  with cfg.optim.ignore_type():  # "auto" (a str) -> an int, also in configs read from JSON
    cfg.optim.micro_batches = 1 if is_auto(micro) else int(micro)
  return cfg


def micro_batch_options(per_device: int) -> list[int]:
  """Splits k that give every device the same whole number of clips: divisors, ascending."""
  return [k for k in range(1, per_device + 1) if per_device % k == 0]


def choose(fits: Callable[[str, int], bool], remat, micro, per_device: int, *,
           overshoot: Optional[Callable[[str, int], Optional[float]]] = None
           ) -> tuple[Optional[tuple[str, int]], list[tuple[str, int, bool]]]:
  """The first (remat, k) in the module docstring's order for which `fits(remat, k)` holds.

  `remat`/`micro` are the config's settings ("auto" or a value); `per_device` is the global
  batch over the device count. Per policy: k = 1; if that fails, a guess (the smallest k >=
  `overshoot(remat, 1)`, the memory needed over the limit, when known; else the largest k),
  then larger k until one fits, then the k just below it, then bisection: a good guess costs
  three compiles in all. Returns (choice or None, probes made).
  """
  probes: list[tuple[str, int, bool]] = []

  def probe(r: str, i: int) -> bool:
    ok = bool(fits(r, ks[i]))
    probes.append((r, ks[i], ok))
    return ok

  remats = AUTO_REMATS if is_auto(remat) else (str(remat),)
  ks = micro_batch_options(per_device) if is_auto(micro) else [int(micro)]
  last = len(ks) - 1
  for r in remats:
    if probe(r, 0):
      return (r, ks[0]), probes
    if not last:
      continue
    ratio = overshoot(r, ks[0]) if overshoot else None
    i = max(1, next((j for j, k in enumerate(ks) if ratio and k >= ratio), last))
    lo, hi = 0, None  # ks[lo] fails; ks[hi] fits
    while True:
      if probe(r, i):
        hi = i
        break
      lo = i
      if i == last:
        break
      i = min(last, i * 2)
    if hi is None:
      continue
    if hi - lo > 1 and not probe(r, hi - 1):
      lo = hi - 1
    elif hi - lo > 1:
      hi -= 1
    while hi - lo > 1:
      mid = (lo + hi) // 2
      if probe(r, mid):
        hi = mid
      else:
        lo = mid
    return (r, ks[hi]), probes
  return None, probes


def does_not_fit_message(where: str, batch: int, devices: int,
                         probes: Sequence[tuple[str, int, bool]], detail: str = "") -> str:
  tried = ", ".join(f"remat={r} micro_batches={k}" for r, k, _ in probes)
  return (f"the train step does not fit {where} at config.data.train_batch_size={batch} over "
          f"{devices} device(s) with any setting tried ({tried}){detail}. Shard the params over "
          "more devices (config.mesh.fsdp), use more devices, or lower the batch (that changes "
          "the recipe: scale config.optim.lr with it). `python -m pgvt_jax.plan` shows the "
          "memory per device.")


def search_max_batch(fits: Callable[[int], bool], unit: int, *, start: int = 0,
                     max_probes: int = 8, limit: int = 1 << 16) -> dict:
  """The largest multiple of `unit` (<= `limit`) for which `fits` holds, `fits` monotone.

  Doubles up from `start` (rounded to a multiple of `unit`) while it fits, halves down while
  it does not, then bisects; at most `max_probes` calls. Returns {"max_batch": largest known
  to fit (0: none), "first_failing": smallest known not to (None: none found below `limit`),
  "exact": whether they are adjacent multiples, "probes": [(batch, fits), ...]}.
  """
  probes: list[tuple[int, bool]] = []

  def probe(b: int) -> bool:
    ok = bool(fits(b))
    probes.append((b, ok))
    return ok

  lo, hi = 0, None  # largest known fitting, smallest known failing
  b = min(max(unit, start // unit * unit), limit // unit * unit)
  if b < unit:
    return {"max_batch": 0, "first_failing": None, "exact": True, "probes": probes}
  if probe(b):
    lo = b
    while len(probes) < max_probes and b * 2 <= limit:
      b *= 2
      if probe(b):
        lo = b
      else:
        hi = b
        break
  else:
    hi = b
    while len(probes) < max_probes and b > unit:
      b = max(unit, b // 2 // unit * unit)
      if probe(b):
        lo = b
        break
      hi = b
  top = hi if hi is not None else (limit // unit + 1) * unit
  while len(probes) < max_probes and top - lo > unit and (hi is not None or lo < limit):
    mid = (lo + top) // 2 // unit * unit
    if mid <= lo:
      break
    if probe(mid):
      lo = mid
    else:
      hi = top = mid
  exact = (hi is not None and hi - lo <= unit) or (hi is None and lo + unit > limit)
  return {"max_batch": lo, "first_failing": hi, "exact": bool(exact), "probes": probes}
