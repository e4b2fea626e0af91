"""Every model family through the same checks (issue 21): build, freezing, PAAB + PAAT, and, on
a short real training run of each, checkpoint round trip, predict and visualize.

A new family (docs/models.md "Adding a backbone") gets these checks by being in
`factory.FAMILIES`; its tiny backbone goes into `TINY`.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pgvt_jax.models import clip_family, common, factory, family, paat
from pgvt_jax.models.config import ModelConfig

# family -> a seconds-on-CPU backbone (2 blocks, 32 px, patch 8).
TINY = {"clip": "Ti/8", "timesformer": "Ti/8", "deit": "test"}
FAMILIES = sorted(factory.FAMILIES)
J = 17


def test_every_family_has_a_tiny_backbone():
  assert set(TINY) == set(factory.FAMILIES)


def tiny(name: str, **kw) -> ModelConfig:
  base = dict(family=name, variant="video_only", backbone=TINY[name], image_size=32,
              video_frames=4, pose_frames=8, num_classes=5, joints_per_person=J, drop_path=0.1,
              dropout=0.0, dtype="float32")
  return ModelConfig(**{**base, **kw})


def batch_for(m: ModelConfig, b: int = 2, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  batch = {k: jnp.asarray(rng.integers(0, 255, v.shape) if v.dtype == jnp.uint8
                          else rng.uniform(0.05, 0.95, v.shape), v.dtype)
           for k, v in factory.input_spec(m, b).items()}
  if "pose_mask" in batch:
    batch["pose_mask"] = jnp.ones_like(batch["pose_mask"])
  return batch


@pytest.mark.parametrize("name", FAMILIES)
def test_build(name):
  m = tiny(name)
  model = factory.create_model(m)
  assert factory.get_family(m).name == name and model.config == m
  params = factory.init_params(model, jax.random.key(0))
  shapes = factory.param_shapes(model)
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  logits, out = model.apply({"params": params}, batch_for(m))
  assert logits.shape == (2, 5) and np.isfinite(np.asarray(logits)).all()
  assert out["feature"].shape[0] == 2
  assert set(factory.input_spec(m)) == {"frames"}  # video only, no plug-ins: no keypoints
  with pytest.raises(ValueError, match="frames"):
    model.apply({"params": params}, {})


@pytest.mark.parametrize("name", FAMILIES)
def test_freezing(name):
  m = tiny(name, paab_layers=(2,), paat_layer=1)
  fam = factory.get_family(m)
  shapes = factory.param_shapes(factory.create_model(m))
  trainable, frozen = factory.split_params(m, shapes)
  assert common.merge_params(trainable, frozen).keys() == shapes.keys()
  assert common.count(trainable) + common.count(frozen) == common.count(shapes)
  flat_frozen = common.flatten(frozen)
  # Plug-ins and the head always train.
  assert not any(re.match(r"(paab_|paat_head|head/)", p) for p in flat_frozen)
  config = ml_collections.ConfigDict(dict(
      model=ml_collections.ConfigDict(dataclasses.asdict(m)), freeze_backbone=True))
  if fam.freezes:  # exactly the CLIP tower's weights are frozen
    assert flat_frozen and all(clip_family.label_of(p) == family.FROZEN for p in flat_frozen)
    factory.check_freezing(config)
  else:
    assert not flat_frozen
    with pytest.raises(ValueError, match="freeze_backbone"):
      factory.check_freezing(config)


@pytest.mark.parametrize("name", FAMILIES)
def test_paab_and_paat(name):
  m = tiny(name, paab_layers=(2,), paat_layer=1)
  model = factory.create_model(m)
  params = factory.init_params(model, jax.random.key(0))
  assert {"paab_2", "paat_head"} <= set(params)
  assert {"pose", "pose_mask"} <= set(factory.input_spec(m))
  batch = batch_for(m)
  rngs = {"dropout": jax.random.key(1), "drop_path": jax.random.key(2)}
  _, out = model.apply({"params": params}, batch, train=True, rngs=rngs)
  logits, targets = out["paat_logits"], out["paat_targets"]
  assert logits.shape == targets.shape and logits.shape[-1] == J
  n = (32 // m.arch.patch_size) ** 2
  assert logits.shape[-2] == n and int(np.prod(logits.shape[:-2])) == 2 * m.video_frames
  assert set(np.unique(np.asarray(targets))) <= {0.0, 1.0} and np.asarray(targets).sum() > 0
  # Inference: no PAAT head, no PAAT output; PAAB reads the keypoints.
  eval_params = paat.strip_training_only(params)
  assert "paat_head" not in eval_params
  y, out = model.apply({"params": eval_params}, batch)
  assert "paat_logits" not in out
  moved = dict(batch, pose=jnp.clip(1.0 - batch["pose"], 0.0, 0.99))
  y_moved, _ = model.apply({"params": eval_params}, moved)
  assert not np.allclose(np.asarray(y), np.asarray(y_moved))
  with pytest.raises(ValueError, match="pose"):
    model.apply({"params": eval_params}, {"frames": batch["frames"]})


@pytest.mark.parametrize("name", FAMILIES)
def test_remat_keeps_outputs_and_gradients(name):
  """config.model.remat (what "auto" may choose on a TPU) wraps each family's blocks without
  changing what they compute: same train-mode loss and gradients as remat="none"."""
  results = []
  for remat in ("none", "full"):
    m = tiny(name, paab_layers=(2,), paat_layer=1, remat=remat)
    model = factory.create_model(m)
    params = factory.init_params(model, jax.random.key(0))
    batch = batch_for(m)
    rngs = {"dropout": jax.random.key(1), "drop_path": jax.random.key(2)}

    def loss(p):
      y, out = model.apply({"params": p}, batch, train=True, rngs=rngs)
      return y.sum() + out["paat_logits"].sum()

    results.append(jax.value_and_grad(loss)(params))
  (l0, g0), (l1, g1) = results
  np.testing.assert_allclose(l0, l1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g0, g1)


# ------------------------------------------------------------------ real runs (main trainer)
@pytest.fixture(scope="module")
def family_runs(tmp_path_factory, synthetic_dir):
  """{family: workdir}: 3 steps of PAAB (block 2) + PAAT (block 1) on the demo world, the same
  trainer as every config (CLIP: frozen backbone; the others: every param trains)."""
  from tests.predict_fixtures import tiny_config, train_run  # pylint: disable=g-import-not-at-top
  out = {}
  for name in FAMILIES:
    workdir = tmp_path_factory.mktemp(f"family_{name}")
    config = tiny_config(synthetic_dir, "video_only", steps=3, pose_format="coords")
    config.model.update(dict(family=name, backbone=TINY[name], paab_layers=(2,), paat_layer=1,
                             dtype="float32"))
    config.aux_losses.paat = 1.0
    config.freeze_backbone = factory.FAMILIES[name].freezes
    config.checkpoint_every = 3
    train_run(config, workdir, evaluate=False)
    out[name] = workdir
  return out


@pytest.mark.e2e
@pytest.mark.parametrize("name", FAMILIES)
def test_checkpoint_round_trip_and_predict(name, family_runs, tmp_path):
  from pgvt_jax import checkpointing, predict, train  # pylint: disable=g-import-not-at-top
  from pgvt_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from tests.predict_fixtures import render_mp4  # pylint: disable=g-import-not-at-top
  workdir = family_runs[name]
  pred = predict.load(workdir)
  assert pred.model.config.family == name
  # The restored params are the trained ones: the plug-ins moved away from their init.
  init = factory.init_params(pred.model, jax.random.key(0))
  trained = common.flatten(paat.strip_training_only(pred.params))
  assert set(common.flatten(paat.strip_training_only(init))) == set(trained)
  moved = [p for p, v in common.flatten(paat.strip_training_only(init)).items()
           if p.startswith("paab_2/") and not np.array_equal(np.asarray(v), trained[p])]
  assert moved, "PAAB params are still at their init after 3 steps"
  assert checkpointing.find_step(workdir).step == 3
  # Resuming a finished run from its own config.json (derived fields written out) trains
  # nothing; a changed recipe is still refused by name.
  config = predict.load_config(workdir)
  train.train_and_evaluate(config, str(workdir), run_evals=False)
  assert checkpointing.find_step(workdir, which="latest").step == 3
  config.optim.lr = 0.5
  with pytest.raises(workdir_lib.ConfigError, match="optim.lr"):
    train.train_and_evaluate(config, str(workdir), run_evals=False)
  # Predict a fresh clip with its keypoints (PAAB reads them at inference).
  video = tmp_path / "clip.mp4"
  kp = render_mp4(video, 1, seed=7)
  np.savez(tmp_path / "clip.npz", keypoint=kp[None], keypoint_score=np.ones((1,) + kp.shape[:2]))
  probs = pred.predict_file(video, tmp_path / "clip.npz")
  assert probs.shape == (3,) and np.isclose(probs.sum(), 1.0, atol=1e-4)
  assert len(pred.top_k(probs, 2)) == 2


@pytest.mark.e2e
@pytest.mark.parametrize("name", FAMILIES)
def test_visualize(name, family_runs, tmp_path):
  from pgvt_jax import visualize  # pylint: disable=g-import-not-at-top
  from tests.predict_fixtures import render_mp4  # pylint: disable=g-import-not-at-top
  video = tmp_path / "clip.mp4"
  kp = render_mp4(video, 2, seed=12)
  np.savez(tmp_path / "clip.npz", keypoint=kp[None], keypoint_score=np.ones((1,) + kp.shape[:2]))
  out = tmp_path / "figs"
  rc = visualize.run(["visualize", f"--workdir={family_runs[name]}", f"--video={video}",
                      f"--keypoints={tmp_path / 'clip.npz'}", f"--out={out}"])
  assert rc == 0
  pngs = sorted(out.glob("*.png"))
  assert pngs
  from PIL import Image  # pylint: disable=g-import-not-at-top
  assert all(np.asarray(Image.open(p)).std() > 5 for p in pngs)
