"""TimeSformer: parity with Hugging Face `TimesformerModel` (random init, offline) through both
checkpoint layouts (HF directory, official `.pyth`), strict conversion, embedding resizing,
loading into the classifier, and the family plumbing (factory, freezing, pixel statistics)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top

from pgvt_jax import convert_timesformer as ct  # pylint: disable=g-import-not-at-top
from pgvt_jax.models import common, factory, timesformer, timesformer_model  # pylint: disable=g-import-not-at-top
from pgvt_jax.models.config import ModelConfig, model_config  # pylint: disable=g-import-not-at-top
from pgvt_jax.weights_io import CheckpointError  # pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.usefixtures("fast_compiles")

TINY = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=256)


def hf_model(seed=0, **kw):
  """A random HF TimesformerModel; every param redrawn (HF inits time embeddings to zero and
  biases to 0, which would hide order and bias mistakes)."""
  torch.manual_seed(seed)
  model = transformers.TimesformerModel(transformers.TimesformerConfig(**kw)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.1)
  return model


# Official facebookresearch/TimeSformer names (timesformer/models/vit.py), written from the HF
# names independently of the converter's table.
_HF_TO_OFFICIAL = [
    ("embeddings.patch_embeddings.projection", "patch_embed.proj"),
    ("embeddings.position_embeddings", "pos_embed"), ("embeddings.time_embeddings", "time_embed"),
    ("embeddings.cls_token", "cls_token"), ("encoder.layer.", "blocks."),
    ("temporal_attention.attention.qkv", "temporal_attn.qkv"),
    ("temporal_attention.output.dense", "temporal_attn.proj"),
    ("temporal_layernorm", "temporal_norm1"), ("temporal_dense", "temporal_fc"),
    ("attention.attention.qkv", "attn.qkv"), ("attention.output.dense", "attn.proj"),
    ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
    ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"), ("layernorm", "norm"),
]


def official_state(hf_sd):
  """A `.pyth`-style checkpoint: {"model_state": {"model.<official name>": tensor}, ...}."""
  out = {}
  for k, v in hf_sd.items():
    for a, b in _HF_TO_OFFICIAL:
      k = k.replace(a, b)
    out["model." + k] = v.clone()
  return {"epoch": 15, "model_state": out, "cfg": "TRAIN:\n  ENABLE: True\n",
          "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.005, "params": [0]}]}}


def hf_reference(model, video):
  """(CLS (B, D), patch tokens (B, T, N, D)) of HF, both after the final LayerNorm."""
  with torch.no_grad():
    out = model(torch.from_numpy(video).permute(0, 1, 4, 2, 3)).last_hidden_state.numpy()
  b, t = video.shape[:2]
  n = (out.shape[1] - 1) // t
  # HF/official token 1 + n*T + t  ->  (t, n): tokens are in (h w t) order.
  return out[:, 0], out[:, 1:].reshape(b, n, t, -1).transpose(0, 2, 1, 3)


def rel_err(a, b):
  return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def _video(cfg, b=2, seed=0):
  return np.random.default_rng(seed).standard_normal(
      (b, cfg.num_frames, cfg.image_size, cfg.image_size, 3)).astype(np.float32)


def test_tiny_parity_hf_dir_and_official_pyth(tmp_path):
  model = hf_model(**TINY)
  model.save_pretrained(tmp_path / "hf")
  torch.save(official_state(model.state_dict()), tmp_path / "ts.pyth")
  hf_out = ct.convert(tmp_path / "hf", tmp_path / "conv_hf")
  off_out = ct.convert(tmp_path / "ts.pyth", tmp_path / "conv_off", heads=4)
  cfg_h, p_h = ct.load(hf_out)
  cfg_o, p_o = ct.load(off_out)
  assert cfg_h == cfg_o == timesformer.TimeSformerConfig(
      width=64, layers=2, heads=4, patch_size=8, image_size=32, num_frames=4)
  flat_h, flat_o = common.flatten(p_h), common.flatten(p_o)
  assert flat_h.keys() == flat_o.keys()
  for k in flat_h:  # both layouts give identical params
    np.testing.assert_array_equal(flat_h[k], flat_o[k], err_msg=k)

  video = _video(cfg_h)
  ref_cls, ref_tokens = hf_reference(model, video)
  for path in (hf_out, off_out, tmp_path / "hf", tmp_path / "ts.pyth"):
    kw = {"heads": 4} if str(path).endswith(".pyth") else {}
    assert rel_err(ct.encode_video(path, video, **kw), ref_cls) < 1e-4, path
  backbone = timesformer.TimeSformer(cfg_h)
  tokens = jax.jit(lambda p, x: backbone.apply(
      {"params": p}, x, method=lambda m, v: m.norm(m(v)["patches"])))(p_h, video)
  assert tokens.shape == ref_tokens.shape == (2, 4, 16, 64)
  assert rel_err(tokens, ref_tokens) < 1e-4


@pytest.mark.slow
def test_b16_parity_both_layouts():
  """ViT-B/16 at 224 (2 frames, batch 1 to keep it to seconds), in-memory state dicts."""
  model = hf_model(num_frames=2)
  hf_sd = {k: v.numpy() for k, v in model.state_dict().items()}
  off_sd = {k: v.numpy() for k, v in official_state(model.state_dict())["model_state"].items()}
  cfg, params, _ = ct.convert_state_dict(hf_sd, hf_cfg=model.config.to_dict())
  cfg_o, params_o, _ = ct.convert_state_dict(off_sd)  # heads = 768 // 64, as released
  assert cfg == cfg_o == timesformer.get_config("B/16", num_frames=2)
  for k, v in common.flatten(params).items():
    np.testing.assert_array_equal(v, common.flatten(params_o)[k], err_msg=k)
  video = _video(cfg, b=1)
  ref_cls, _ = hf_reference(model, video)
  backbone = timesformer.TimeSformer(cfg)
  got = jax.jit(lambda p, x: backbone.apply({"params": p}, x)["pooled"])(params_o, video)
  assert rel_err(got, ref_cls) < 1e-4


def test_classifier_head_kept_and_official_keys_visited():
  model = hf_model(**TINY)
  off = {k: v.numpy() for k, v in official_state(model.state_dict())["model_state"].items()}
  off["model.head.weight"] = np.zeros((7, 64), np.float32)
  off["model.head.bias"] = np.arange(7, dtype=np.float32)
  cfg, params, num_classes = ct.convert_state_dict(off, heads=4)
  assert num_classes == 7 and params["head"]["kernel"].shape == (64, 7)
  np.testing.assert_array_equal(params["head"]["bias"], np.arange(7))
  # HF's classifier sits outside the `timesformer.` prefix.
  hf = {"timesformer." + k: v.numpy() for k, v in model.state_dict().items()}
  hf["classifier.weight"], hf["classifier.bias"] = off["model.head.weight"], off["model.head.bias"]
  cfg_h, params_h, n_h = ct.convert_state_dict(hf, hf_cfg=model.config.to_dict())
  assert n_h == 7 and cfg_h == cfg
  np.testing.assert_array_equal(params_h["blocks_1"]["temporal_fc"]["kernel"],
                                params["blocks_1"]["temporal_fc"]["kernel"])


def test_strict_conversion_names_the_bad_key():
  sd = {k: v.numpy() for k, v in
        official_state(hf_model(**TINY).state_dict())["model_state"].items()}
  bad = dict(sd)
  del bad["model.blocks.1.temporal_fc.bias"]
  with pytest.raises(CheckpointError, match="blocks.1.temporal_fc.bias"):
    ct.convert_state_dict(bad, heads=4)
  bad = dict(sd, **{"model.blocks.0.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(CheckpointError, match="blocks.0.extra.weight"):
    ct.convert_state_dict(bad, heads=4)
  with pytest.raises(CheckpointError, match="not a divided space-time TimeSformer"):
    ct.convert_state_dict({"conv1.weight": np.zeros((4, 3, 2, 2), np.float32)})
  with pytest.raises(CheckpointError, match="attention_type"):
    ct.convert_state_dict({k[len("model."):]: v for k, v in sd.items()},
                          hf_cfg={"attention_type": "joint_space_time"})
  with pytest.raises(CheckpointError, match="attn.qkv.weight"):  # a wrong shape
    ct.convert_state_dict(dict(sd, **{"model.blocks.0.attn.qkv.weight": np.zeros((9, 64))}),
                          heads=4)


def test_converter_overwrites_only_its_own_output(tmp_path):
  model = hf_model(**TINY)
  model.save_pretrained(tmp_path / "hf")
  ct.convert(tmp_path / "hf", tmp_path / "out")
  with pytest.raises(FileExistsError, match="--overwrite"):
    ct.convert(tmp_path / "hf", tmp_path / "out")
  ct.convert(tmp_path / "hf", tmp_path / "out", overwrite=True)
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json",
                                                                 "params.safetensors"]
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep")
  with pytest.raises(FileExistsError, match="not a convert_timesformer output"):
    ct.convert(tmp_path / "hf", tmp_path / "mine", overwrite=True)
  assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("n_in,n_out", [(8, 16), (8, 4), (8, 6), (3, 8)])
def test_time_embed_resize_matches_torch_nearest(n_in, n_out):
  x = np.random.default_rng(0).standard_normal((1, n_in, 5)).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(x).transpose(1, 2), size=n_out,
                                        mode="nearest").transpose(1, 2).numpy()
  np.testing.assert_array_equal(timesformer.resize_time_embed(x, n_out), ref)


@pytest.mark.parametrize("g_in,g_out", [(14, 16), (14, 7), (4, 6)])
def test_pos_embed_resize_matches_torch_nearest(g_in, g_out):
  d = 3
  x = np.random.default_rng(0).standard_normal((1, 1 + g_in * g_in, d)).astype(np.float32)
  other = torch.from_numpy(x[0, 1:]).T.reshape(1, d, g_in, g_in)
  new = torch.nn.functional.interpolate(other, size=(g_out, g_out), mode="nearest")
  ref = np.concatenate([x[:, :1], new.flatten(2).transpose(1, 2).numpy()], axis=1)
  np.testing.assert_array_equal(timesformer.resize_pos_embed(x, g_out), ref)


def _tiny_model_cfg(**kw):
  base = dict(family="timesformer", variant="video_only", backbone="Ti/8", image_size=32,
              video_frames=4, pose_frames=4, num_classes=5, dropout=0.0, drop_path=0.0)
  return model_config(**{**base, **kw})


def test_pretrained_load_resizes_frames_and_ignores_head(tmp_path):
  hf = hf_model(**TINY)
  hf.save_pretrained(tmp_path / "hf")
  ct.convert(tmp_path / "hf", tmp_path / "conv")
  mcfg = _tiny_model_cfg(video_frames=8, pose_frames=8)     # checkpoint has 4 frames
  model = factory.create_model(mcfg)
  params = factory.init_params(model, jax.random.key(0))
  config = ml_collections.ConfigDict(dict(model=mcfg, timesformer_dir=str(tmp_path / "conv"),
                                          clip_dir=""))
  merged, file = factory.load_pretrained(config, params)
  assert file.name == "params.safetensors"
  te = hf.embeddings.time_embeddings.detach().numpy()
  np.testing.assert_array_equal(merged["time_embed"], np.repeat(te, 2, axis=1))
  np.testing.assert_array_equal(merged["head"]["kernel"], params["head"]["kernel"])
  # With T equal to the checkpoint's, the classifier's feature is the converter's CLS.
  mcfg4 = _tiny_model_cfg()
  model4 = factory.create_model(mcfg4)
  config.model = mcfg4
  merged4, _ = factory.load_pretrained(config, factory.init_params(model4, jax.random.key(1)))
  video = _video(ModelConfig.from_config(mcfg4).timesformer)
  _, out = jax.jit(model4.apply)({"params": merged4}, {"frames": video})
  ref_cls, _ = hf_reference(hf, video)
  assert rel_err(out["feature"], ref_cls) < 1e-4


def test_pretrained_load_is_strict(tmp_path):
  hf_model(**TINY).save_pretrained(tmp_path / "hf")
  ct.convert(tmp_path / "hf", tmp_path / "conv")
  ts_cfg, ts_params = ct.load(tmp_path / "conv")
  mcfg = _tiny_model_cfg()
  init = factory.init_params(factory.create_model(mcfg), jax.random.key(0))
  broken = {k: v for k, v in ts_params.items() if k != "norm"}
  with pytest.raises(ValueError, match="missing params.*norm/bias"):
    timesformer_model.load_pretrained(mcfg, init, ts_cfg, broken)
  extra = dict(ts_params, stray={"kernel": np.zeros(2)})
  with pytest.raises(ValueError, match="unexpected params.*stray/kernel"):
    timesformer_model.load_pretrained(mcfg, init, ts_cfg, extra)
  with pytest.raises(ValueError, match="heads: model 4 vs checkpoint 2"):
    timesformer_model.load_pretrained(mcfg, init, ts_cfg.replace(heads=2), ts_params)
  wrong = ml_collections.ConfigDict(dict(model=mcfg, timesformer_dir="", clip_dir="/x"))
  with pytest.raises(ValueError, match="config.clip_dir is set"):
    factory.pretrained_dir(wrong)


def test_family_config_guards():
  with pytest.raises(ValueError, match="config.model.variant='pgvt'.*video_only"):
    model_config(family="timesformer", backbone="Ti/8")
  with pytest.raises(ValueError, match="config.model.backbone='L/14'"):
    model_config(family="timesformer", variant="video_only", backbone="L/14")
  with pytest.raises(ValueError, match="config.model.family='vivit'"):
    model_config(family="vivit")
  config = ml_collections.ConfigDict(dict(model=_tiny_model_cfg(), freeze_backbone=True))
  with pytest.raises(ValueError, match="freeze_backbone=False"):
    factory.check_freezing(config)


def test_full_fine_tuning_every_param_gets_a_gradient():
  mcfg = _tiny_model_cfg()
  model = factory.create_model(mcfg)
  params = factory.init_params(model, jax.random.key(0))
  trainable, frozen = factory.split_params(mcfg, params)
  assert frozen == {} and set(factory.param_labels(mcfg)(params)) == set(params)
  video = _video(ModelConfig.from_config(mcfg).timesformer)
  loss = lambda p: model.apply({"params": p}, {"frames": video})[0].sum()
  grads = common.flatten(jax.jit(jax.grad(loss))(trainable))
  # Block 1's temporal_fc starts at zero (official init), so only parameters upstream of it in
  # the temporal branch get no gradient at step 0: the rest must.
  dead = sorted(k for k, g in grads.items() if not np.any(np.asarray(g))
                and not k.startswith("blocks_1/temporal_"))
  assert not dead, dead


def test_data_uses_the_family_pixel_statistics():
  from pgvt_jax import data  # pylint: disable=g-import-not-at-top
  from pgvt_jax.data import augment  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(dict(model=_tiny_model_cfg(), data=data.get_config()))
  factory.configure_data(config)
  assert tuple(config.data.pixel_mean) == (0.45,) * 3
  assert tuple(config.data.pixel_std) == (0.225,) * 3
  x = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  got = augment.normalize_frames(x, *data.config.pixel_stats(config.data))
  np.testing.assert_allclose(got, (x / 255.0 - 0.45) / 0.225, atol=1e-5)
  config.data.pixel_mean = (0.5, 0.5, 0.5)  # an explicit setting wins
  factory.configure_data(config)
  assert tuple(config.data.pixel_mean) == (0.5,) * 3


def _pose_batch(mcfg, b=2, seed=0):
  m = ModelConfig.from_config(mcfg)
  rng = np.random.default_rng(seed)
  batch = {"frames": _video(m.timesformer, b, seed),
           "pose": rng.uniform(0, 1, (b, m.pose_frames, m.num_joints, 2)).astype(np.float32),
           "pose_mask": (rng.uniform(size=(b, m.pose_frames, m.num_joints)) > 0.3
                         ).astype(np.float32)}
  return m, batch


def test_paab_sits_after_block_l_on_the_clip_level_cls():
  """The model's PAAB path = backbone blocks 1..l, PAAB(cls (B,1,D), patches, P2D), the rest."""
  from pgvt_jax.models import paab, pose_maps  # pylint: disable=g-import-not-at-top
  mcfg = _tiny_model_cfg(paab_layers=(1,))
  m, batch = _pose_batch(mcfg)
  model = factory.create_model(mcfg)
  params = factory.init_params(model, jax.random.key(0))
  assert set(params) >= {"paab_1", "head", "blocks_1"} and "paat_head" not in params
  logits, out = jax.jit(lambda p, b: model.apply({"params": p}, b))(params, batch)

  ts = m.timesformer
  s, p = ts.image_size, ts.patch_size
  p2d, _ = pose_maps.pose_maps(batch["pose"] * s, batch["pose_mask"], image_size=s,
                               patch_size=p)
  backbone = timesformer.TimeSformer(ts)
  bb = {k: v for k, v in params.items() if k not in ("paab_1", "head")}
  block = lambda p_, i, c, x: backbone.apply({"params": p_}, i, c, x, method="block")

  def manual(params, batch):
    cls, patches = backbone.apply({"params": bb}, batch["frames"], method="embed")
    cls, patches = block(bb, 0, cls, patches)
    cls, patches = paab.PAAB(num_heads=ts.heads, ln_eps=timesformer.LN_EPS).apply(
        {"params": params["paab_1"]}, cls, patches, p2d)
    cls, patches = block(bb, 1, cls, patches)
    feat = backbone.apply({"params": bb}, cls[:, 0], method="final_norm")
    return feat @ params["head"]["kernel"] + params["head"]["bias"], feat

  ref_logits, ref_feat = jax.jit(manual)(params, batch)
  np.testing.assert_allclose(out["feature"], ref_feat, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  # The pose maps matter: without any pose token PAAB changes only the CLS.
  empty = dict(batch, pose_mask=np.zeros_like(batch["pose_mask"]))
  logits_empty, _ = jax.jit(lambda p, b: model.apply({"params": p}, b))(params, empty)
  assert not np.allclose(logits_empty, logits)


def test_paat_is_training_only_on_timesformer():
  from pgvt_jax.models import paat, pose_maps  # pylint: disable=g-import-not-at-top
  mcfg = _tiny_model_cfg(paat_layer=1)
  m, batch = _pose_batch(mcfg)
  model = factory.create_model(mcfg)
  params = factory.init_params(model, jax.random.key(0))
  assert "paat_head" in params
  rngs = {"dropout": jax.random.key(1), "drop_path": jax.random.key(2)}
  _, out = jax.jit(lambda p, b: model.apply({"params": p}, b, train=True, rngs=rngs))(
      params, batch)
  s = m.timesformer.image_size
  _, p3d = pose_maps.pose_maps(batch["pose"] * s, batch["pose_mask"], image_size=s,
                               patch_size=m.timesformer.patch_size)
  assert out["paat_logits"].shape == (2, 4, 16, 17)
  np.testing.assert_array_equal(out["paat_targets"], p3d)
  infer = jax.jit(lambda p, b: model.apply({"params": p}, b)[0])
  with_pose = infer(params, batch)
  frames_only = infer(paat.strip_training_only(params), {"frames": batch["frames"]})
  np.testing.assert_array_equal(with_pose, frames_only)
