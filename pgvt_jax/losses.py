"""Classification loss plus pluggable auxiliary losses.

An auxiliary loss (e.g. PAAT's patch-keypoint loss) is a function
`(outputs: dict, batch: dict) -> scalar` registered under a name; a config turns it on with a
weight (`config.aux_losses = {"paat": 1.0}`) and the training loop never changes.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

AuxLoss = Callable[[Mapping[str, Any], Mapping[str, Any]], jax.Array]
_AUX_LOSSES: dict[str, AuxLoss] = {}


def register_aux_loss(name: str):
  """Decorator: `@register_aux_loss("paat") def paat_loss(outputs, batch): ...`."""
  def deco(fn: AuxLoss) -> AuxLoss:
    if name in _AUX_LOSSES and _AUX_LOSSES[name] is not fn:
      raise ValueError(f"auxiliary loss {name!r} is registered twice")
    _AUX_LOSSES[name] = fn
    return fn
  return deco


def get_aux_loss(name: str) -> AuxLoss:
  if name not in _AUX_LOSSES:
    raise ValueError(f"config.aux_losses names unknown loss {name!r}; registered: "
                     f"{sorted(_AUX_LOSSES)}")
  return _AUX_LOSSES[name]


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                          label_smoothing: float = 0.0) -> jax.Array:
  """Mean cross-entropy, `logits (B, C)`, integer `labels (B,)`; computed in float32."""
  onehot = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot))


def total_loss(outputs: Mapping[str, Any], batch: Mapping[str, Any], *, num_classes: int,
               label_smoothing: float = 0.0, aux_weights: Mapping[str, float] | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Classification loss + weighted auxiliary losses -> (loss, per-term metrics)."""
  logits = outputs["logits"]
  ce = softmax_cross_entropy(logits, batch["label"], num_classes, label_smoothing)
  metrics = {"ce": ce,
             "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
  loss = ce
  for name, weight in (aux_weights or {}).items():
    if weight:
      aux = get_aux_loss(name)(outputs, batch)
      metrics[f"aux_{name}"] = aux
      loss = loss + weight * aux
  return loss, metrics


@register_aux_loss("paat")
def paat_aux_loss(outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> jax.Array:
  """PAAT (PAAB/PAAT paper Eq. 8): BCE of the patch-keypoint logits a model with
  `config.model.paat_layer > 0` puts into its outputs in train mode; weight = lambda."""
  del batch
  from pgvt_jax.models import paat  # pylint: disable=g-import-not-at-top
  if "paat_logits" not in outputs or "paat_targets" not in outputs:
    raise ValueError("config.aux_losses.paat is set but the model produced no PAAT outputs "
                     "(paat_logits / paat_targets): set config.model.paat_layer > 0, or drop "
                     "config.aux_losses.paat")
  return paat.paat_loss(outputs["paat_logits"], outputs["paat_targets"])
