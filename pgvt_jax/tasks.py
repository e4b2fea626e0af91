"""What a task gives the one training loop: an `Experiment`, built from the config.

`pgvt_jax/train.py` runs every task with the same loop: it validates the config and locks the
workdir, checks the config on resume, restores or starts the state, stages train batches on
the devices (device prefetch), runs the train step, logs, saves (never a non-finite state, and
on SIGTERM), evaluates, keeps the best checkpoint and writes the summary. A task supplies what
differs: its module's `setup_experiment(config, workdir, *, train) -> Experiment`, which
`train.setup_experiment` calls for `config.task`:

  classification (experiment.py): loss losses.total_loss (cross entropy + aux losses); train
      batches from a grain iterator over the records; evaluator: eval/top1, top5, mean class
      accuracy (higher is better), and config.data.test_split at the end.
  alignment (alignment.py): loss tcn.time_contrastive_loss (+ aux losses: PAAT); train
      batches a pure function of (seed, step) (`StepBatches`); evaluator: eval/alignment_error
      on held-out episodes (lower is better), reference errors at step 0.

The train step of every task is `steps.make_loss_step(loss_fn, ...)` over the task's loss, so
micro-batches (and remat where the model has it) apply to all; `build_steps` below decides
their "auto" settings by compiling the task's own step builder (fitting.py, planner.py).

Train batches: either a grain iterator (per-host rows; its state is saved in each checkpoint
and restored or seeked on resume), or a `StepBatches` (every host draws the whole global batch
from (seed, step); checkpoints save no iterator state: the position is the step).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from pgvt_jax import checkpointing, data, fitting, metric_writer, planner, step_builder

TASKS = ("classification", "alignment")  # config.task (absent: classification)

# An evaluator: (trainable params, frozen params, *, save_dir) -> {"eval/<name>": float, ...}.
# With save_dir (the last evaluation of a run), it may also write its figures/files there.
Evaluator = Callable[..., dict]


@dataclasses.dataclass
class Experiment:
  """Everything the loop needs, built once; the loop never looks at `config.task`."""
  config: ml_collections.ConfigDict   # a copy of the given config, derived fields filled in
  workdir: epath.Path
  mesh: Any
  batch_sharding: Any
  writer: metric_writer.MetricWriter
  checkpointer: checkpointing.Checkpointer  # its best_metric / best_mode are the task's
  model: Any
  train_iter: Any                     # grain iterator | StepBatches | None (evaluation)
  frozen: Any                         # params the step does not train ({} when none)
  state: dict                         # steps.init_state(...), sharded; replaced on resume
  train_step: Optional[Callable]      # jit (state, frozen, global batch) -> (state, metrics)
  total_steps: int
  meta: dict                          # saved in every checkpoint (backbone, fit, task, ...)
  evaluators: dict[str, Evaluator] = dataclasses.field(default_factory=dict)
  # Run at the end only, on the final params and on the best checkpoint's (its figures under
  # "best"): e.g. classification's config.data.test_split.
  final_evaluators: dict[str, Evaluator] = dataclasses.field(default_factory=dict)
  # (params, frozen) -> reference metrics, written at step 0 before training (run_evals only).
  references: Optional[Callable[[Any, Any], dict]] = None
  # Host batch -> global arrays: per-host rows (grain) or the whole batch on every host.
  put_batch: Callable = data.to_global
  # What train_and_evaluate returns: the last eval metrics (classification), or, as the
  # alignment trainer always has, {"step": ..., references..., last eval metrics...}.
  result_with_step: bool = False
  backbone_field: str = ""            # the config field naming pretrained weights, for messages

  def evaluate(self, params, *, save_dir: Optional[epath.Path] = None) -> dict:
    """Every evaluator on `params`, their metrics merged."""
    out: dict = {}
    for fn in self.evaluators.values():
      out.update(fn(params, self.frozen, save_dir=save_dir))
    return out

  def check_backbone(self, meta: dict) -> None:
    """A checkpoint's trainable params only make sense on the backbone they were trained on."""
    saved, now = meta.get("backbone_sha256"), self.meta.get("backbone_sha256")
    if saved != now:
      where = (f"config.{self.backbone_field}" if self.backbone_field
               else "the pretrained-weights field of the config")
      raise ValueError(
          f"checkpoint in {self.workdir} was trained on backbone {meta.get('backbone')!r} "
          f"(sha256 {saved}); this run loads {self.meta.get('backbone')!r} (sha256 {now}). "
          f"Point {where} at the original weights or use a new workdir.")


class StepBatches:
  """Train batches that are a pure function of the step: `draw(step) -> global host batch`.

  Every host draws the whole global batch (numpy); `Experiment.put_batch` =
  `data.whole_to_global` copies in each host's rows. The state is the number of batches
  drawn, under grain's key ("next_index"), so `data.position` / `data.seek` and the device
  prefetcher read it like a grain iterator's; checkpoints save no state for it (the loop
  positions it at the restored step's data position).
  """

  def __init__(self, draw: Callable[[int], dict]):
    self._draw = draw
    self._next = 0

  def __iter__(self) -> "StepBatches":
    return self

  def __next__(self) -> dict:
    batch = self._draw(self._next)
    self._next += 1
    return batch

  def get_state(self) -> dict:
    return {"next_index": self._next}

  def set_state(self, state: dict) -> None:
    self._next = int(state["next_index"])


def task_name(config: ml_collections.ConfigDict) -> str:
  name = config.get("task", "classification")
  if name not in TASKS:
    raise ValueError(f"config.task={name!r}; expected one of {TASKS}")
  return name


def build_steps(config: ml_collections.ConfigDict, mesh, *, train: bool, total_steps: int,
                steps_per_epoch: int, build: Callable = step_builder.build
                ) -> tuple[step_builder.Built, Optional[Callable], Optional[dict]]:
  """(built, train step, fit): the task's steps for `mesh` (`build(config, mesh, train=...,
  total_steps=..., steps_per_epoch=...) -> step_builder.Built`), with remat/micro-batches
  "auto" decided.

  With an "auto" setting and `train`, `planner.Planner.fit` compiles the train step for the
  mesh's own devices, cheapest setting first, and the trainer runs the compiled program it
  chose (no second compile). Every process decides; process 0's choice is the one taken (the
  compiles are deterministic, so they agree; if not, the agreed setting is compiled here).
  `fit` says what was chosen and tried (None: nothing was "auto"). Without training (evaluate)
  "auto" means none / 1: a forward pass keeps nothing for a backward pass.
  """
  kwargs = dict(total_steps=total_steps, steps_per_epoch=steps_per_epoch)
  if not (train and fitting.needs_fit(config)):
    built = build(fitting.fixed(config, micro=None if train else 1), mesh, train=train,
                  **kwargs)
    return built, built.train_step, None
  plan = planner.Planner(config, planner.target("local", devices=list(mesh.devices.flat)),
                         mesh=mesh, keep_compiled=True, build=build, **kwargs)
  report = plan.fit()
  choice, probes = (report.remat, report.micro_batches), report.probes or []
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    remats = list(fitting.AUTO_REMATS) + [report.remat]  # an explicit policy: the same everywhere
    agreed = multihost_utils.broadcast_one_to_all(
        np.array([remats.index(report.remat), report.micro_batches]))
    choice = (remats[int(agreed[0])], int(agreed[1]))
    if choice != (report.remat, report.micro_batches):
      logging.warning("process 0 chose remat=%s micro_batches=%d; this process had chosen "
                      "remat=%s micro_batches=%d: taking process 0's", *choice, report.remat,
                      report.micro_batches)
      report = plan.report("train", None, *choice)
  compiled = report.compiled
  if compiled is None:  # process 0's choice did not fit here (or was not kept): jit it
    compiled = plan.build(None, choice[0], "train", choice[1]).train_step
  fit = {"remat": choice[0], "micro_batches": choice[1],
         "per_device_bytes": report.total_bytes, "limit_bytes": report.limit_bytes,
         "tried": [f"remat={r} micro_batches={k}: {'fits' if ok else 'does not fit'}"
                   for r, k, ok in probes]}  # this process's own probes
  logging.info("Fits: remat=%s, %d micro-batch(es) per step (%.2f of %.2f GiB per device; "
               "tried %s)", choice[0], choice[1], report.total_bytes / 2 ** 30,
               report.limit_bytes / 2 ** 30, "; ".join(fit["tried"]))
  return report.built or plan.build(None, choice[0], "train", choice[1]), compiled, fit
