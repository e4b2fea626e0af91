"""Multiply-accumulate counts from a function's jaxpr, in fvcore's convention.

fvcore (which the PGVT and AIM papers use for "GFLOPs") counts one multiply-add as one FLOP and
only counts matmul-like ops (linear, matmul, bmm, einsum) and convolutions; element-wise ops,
softmax, normalisation and bias adds are free. Here: every `dot_general` and
`conv_general_dilated` in the traced program, including those inside nested jaxprs (jit, remat,
custom_jvp, scan x length, cond: the most expensive branch). Nothing is executed: tracing from
ShapeDtypeStructs takes seconds even for ViT-L.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core

COUNTED = ("dot_general", "conv_general_dilated")


def dot_general_macs(lhs_shape, rhs_shape, dimension_numbers) -> int:
  """prod(lhs) * prod(rhs free dims): every output element costs `contracted` MACs."""
  (_, rhs_contract), (_, rhs_batch) = dimension_numbers
  rhs_free = [d for i, d in enumerate(rhs_shape) if i not in rhs_contract and i not in rhs_batch]
  return math.prod(lhs_shape) * math.prod(rhs_free)


def conv_macs(out_shape, rhs_shape, dimension_numbers) -> int:
  """prod(out) * (kernel spatial size * input features per group)."""
  rhs_spec = dimension_numbers.rhs_spec  # (out feature dim, in feature dim, spatial...)
  return math.prod(out_shape) * math.prod(rhs_shape) // rhs_shape[rhs_spec[0]]


def _sub_jaxprs(params: dict[str, Any]):
  for value in params.values():
    items = value if isinstance(value, (tuple, list)) else (value,)
    for item in items:
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def _walk(jaxpr, counts: collections.Counter, mult: int) -> None:
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
      counts[name] += mult * dot_general_macs(lhs, rhs, eqn.params["dimension_numbers"])
    elif name == "conv_general_dilated":
      counts[name] += mult * conv_macs(eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape,
                                       eqn.params["dimension_numbers"])
    elif name == "cond":
      branch_counts = []
      for branch in eqn.params["branches"]:
        c = collections.Counter()
        _walk(branch.jaxpr, c, mult)
        branch_counts.append(c)
      counts.update(max(branch_counts, key=lambda c: sum(c.values())))
    else:
      inner = mult * (eqn.params["length"] if name == "scan" else 1)
      if name == "while":
        counts["uncounted_while_loops"] += 1  # unknown trip count: body counted once
      for sub in _sub_jaxprs(eqn.params):
        _walk(sub, counts, inner)


def count_macs(fn: Callable, *args, **kwargs) -> dict[str, int]:
  """MACs of `fn(*args, **kwargs)` by primitive; args may be ShapeDtypeStructs.

  Returns {"dot_general": n, "conv_general_dilated": m, "total": n + m}.
  """
  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  counts: collections.Counter = collections.Counter()
  _walk(closed.jaxpr, counts, 1)
  out = {k: int(counts[k]) for k in COUNTED}
  out["total"] = sum(out.values())
  if counts["uncounted_while_loops"]:
    out["uncounted_while_loops"] = int(counts["uncounted_while_loops"])
  return out
