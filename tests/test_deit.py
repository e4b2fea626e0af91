"""DeiT backbone (family "deit"): parity with `transformers` ViTModel at random init (tiny size,
offline), the strict converter, and PAAB/PAAT plugged in (image = one-frame video)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgvt_jax.models import deit, factory
from pgvt_jax.models.config import ModelConfig


def _model_config(**kw) -> ModelConfig:
  """The alignment task's setting: one frame per clip, no head."""
  base = dict(family="deit", variant="video_only", backbone="test", video_frames=1,
              pose_frames=1, num_classes=0, dtype="float32", drop_path=0.0)
  return ModelConfig(**{**base, **kw})


def _hf_model(cfg):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  hf_cfg = transformers.ViTConfig(
      hidden_size=cfg.width, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
      intermediate_size=int(cfg.width * cfg.mlp_ratio), image_size=cfg.image_size,
      patch_size=cfg.patch_size, layer_norm_eps=cfg.ln_eps, hidden_act="gelu",
      qkv_bias=True)
  model = transformers.ViTModel(hf_cfg, add_pooling_layer=False).eval()
  # Random init leaves the CLS/position embeddings at zero or tiny values: make them count.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model, torch


def test_parity_with_transformers_vit():
  cfg = deit.get_config("test")
  model, torch = _hf_model(cfg)
  params = deit.convert_hf_vit({k: v.numpy() for k, v in model.state_dict().items()}, cfg)
  x = np.random.default_rng(0).normal(size=(2, cfg.image_size, cfg.image_size, 3))
  with torch.no_grad():
    ref = model(pixel_values=torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32)
                ).last_hidden_state[:, 0].numpy()
  model = factory.create_model(_model_config())
  assert model.config.arch == cfg
  emb, out = model.apply({"params": params}, {"frames": jnp.asarray(x[:, None], jnp.float32)})
  assert not {"paat_logits", "paat_targets"} & set(out)
  np.testing.assert_allclose(np.asarray(emb), ref, atol=2e-5, rtol=1e-4)
  # The converted tree has exactly the shapes of the model's own init.
  shapes = factory.param_shapes(model)
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), shapes, params)


def test_converter_is_strict():
  cfg = deit.get_config("test")
  model, _ = _hf_model(cfg)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  # Hub files / transformers 4 name the same tensors differently: both convert identically.
  v4 = {}
  for k, v in state.items():
    for old, new in reversed(deit._V5_NAMES):
      k = k.replace(new, old)
    v4["vit." + k] = v
  assert "vit.encoder.layer.1.attention.output.dense.weight" in v4
  jax.tree.map(np.testing.assert_array_equal, deit.convert_hf_vit(v4, cfg),
               deit.convert_hf_vit(state, cfg))
  with pytest.raises(KeyError, match="unexpected keys"):
    deit.convert_hf_vit({**state, "embeddings.distillation_token": np.zeros((1, 1, 64))}, cfg)
  del state["layernorm.bias"]
  with pytest.raises(KeyError, match="layernorm.bias"):
    deit.convert_hf_vit(state, cfg)


def test_paab_and_paat_plug_in():
  model = factory.create_model(_model_config(joints_per_person=3, paab_layers=(2,),
                                             paat_layer=1, paat_hidden=16))
  cfg = model.config.arch
  params = factory.init_params(model, jax.random.PRNGKey(0))
  assert {"paab_2", "paat_head"} <= set(params)
  batch = factory.dummy_batch(model.config, 2)
  batch["frames"] = jax.random.normal(jax.random.PRNGKey(1), batch["frames"].shape)
  batch["pose_mask"] = jnp.ones_like(batch["pose_mask"])
  # Keypoints in [0, 1) of the frame (models/pose_aware.py): pixels / S.
  batch["pose"] = jnp.array([[[[1.0, 1.0], [20.0, 9.0], [31.0, 31.0]]]] * 2) / cfg.image_size
  emb, out = model.apply({"params": params}, batch, train=True,
                         rngs={"drop_path": jax.random.PRNGKey(2)})
  grid = cfg.image_size // cfg.patch_size
  assert emb.shape == (2, cfg.width)
  assert out["paat_logits"].shape == (2, 1, grid * grid, 3)
  # P3D targets: joint k active exactly in its patch (row-major y // p * grid + x // p).
  tgt = np.asarray(out["paat_targets"][0, 0])
  for k, (x, y) in enumerate([(1, 1), (20, 9), (31, 31)]):
    assert tgt[:, k].sum() == 1 and tgt[(y // 8) * grid + x // 8, k] == 1
  # Inference: no PAAT head needed, PAAB changes the embedding, keypoints matter.
  from pgvt_jax.models import paat
  emb_eval, out_eval = model.apply({"params": paat.strip_training_only(params)}, batch)
  assert not {"paat_logits", "paat_targets"} & set(out_eval)
  moved = dict(batch, pose=batch["pose"] + 8.0 / cfg.image_size)
  emb_moved, _ = model.apply({"params": paat.strip_training_only(params)}, moved)
  assert not np.allclose(emb_eval, emb_moved)
  with pytest.raises(ValueError, match="pose"):
    model.apply({"params": params}, {"frames": batch["frames"]})


def test_config_guards():
  with pytest.raises(ValueError, match="paab_layers"):
    _model_config(paab_layers=(3,))
  with pytest.raises(ValueError, match="num_classes"):
    _model_config(family="timesformer", backbone="Ti/8")  # only an embedder may have no head
  with pytest.raises(ValueError, match="drop_path_mode"):
    _model_config(drop_path_mode="aim")
  with pytest.raises(ValueError, match="unknown DeiT size"):
    deit.get_config("XL")
