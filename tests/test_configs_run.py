"""Every experiment config trains and evaluates at tiny size, and type-checks at full size.

Tiny: `<config>:runlocal` through the real trainer (`train.train_and_evaluate`) for 2 steps,
on stick-figure clips held in memory in the record format (the dataset's records are not
here). Full size: the jitted train step of the real config under `jax.eval_shape` (global
batch 64, ViT-B/16 or L/14, 224 px): every shape and the optimizer wiring, no FLOPs spent.
"""

import importlib
import json

import jax
import numpy as np
import pytest

from data_prep import synthetic
from data_prep import skeletons
from pgvt_jax import data, fitting, optim, steps
from pgvt_jax import train
from pgvt_jax.models import clip_family, pgvt

pytestmark = pytest.mark.usefixtures("fast_compiles")

# gym99/gym288 differ from diving48 only in class count and record path (their loading is
# covered by tests/test_models_configs.py); the rest cover every distinct model/data layout.
CONFIGS = [("configs.diving48", None), ("configs.k400", None),
           ("configs.ablations.table4", "row=3"), ("configs.ablations.table6", "form=heatmap")]


def _get_config(module, arg):
  return importlib.import_module(module).get_config(arg)


def _memory_source(num_classes: int, n: int = 4) -> data.Source:
  defs = synthetic.class_definitions(8)
  records = []
  for i in range(n):
    video, kps = synthetic.render_clip(defs[i % 8], (7, i), num_frames=12, size=40)
    records.append(dict(frames=video.frames, keypoints=kps[:, None],
                        keypoint_score=np.ones((12, 1, 17), np.float32),
                        label=i % num_classes, video_id=f"clip{i}"))
  return data.Source(records, skeletons.get("coco17"), num_classes)


@pytest.mark.e2e  # a whole training run (20-40 s)
@pytest.mark.parametrize("module,arg", CONFIGS)
def test_runlocal_config_trains_and_evaluates(module, arg, tmp_path, monkeypatch):
  config = _get_config(module, ",".join(filter(None, [arg, "runlocal"])))
  source = _memory_source(config.model.num_classes)
  monkeypatch.setattr(data, "open_source", lambda cfg, split: source)
  config.async_checkpoints = False
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert set(metrics) == {"eval/top1", "eval/top5", "eval/mean_class_accuracy"}
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == config.total_steps and np.all(np.isfinite(losses))
  assert (tmp_path / "checkpoints" / str(config.total_steps)).is_dir()


@pytest.mark.parametrize("module,arg", CONFIGS)
def test_full_size_train_step_shapes(module, arg):
  config = _get_config(module, arg)
  model = pgvt.create_model(config.model)
  trainable, frozen = clip_family.split_params(pgvt.param_shapes(model))
  schedule = optim.make_schedule(config.optim, 1000, 100)
  tx = optim.make_optimizer(config.optim, schedule, labels=clip_family.param_labels)
  state = jax.eval_shape(lambda p: steps.init_state(p, tx, 0), trainable)
  batch = data.batch_spec(config.data, 17)
  new_state, metrics = jax.eval_shape(steps.make_train_step(model, tx, fitting.fixed(config), schedule),
                                      state, frozen, batch)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), new_state) == jax.tree.map(
      lambda x: (x.shape, x.dtype), state)
  assert metrics["loss"].shape == ()
  assert batch["frames"].shape[0] == config.data.train_batch_size == 64
