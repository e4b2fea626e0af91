"""Flax CLIP tower vs the three PyTorch CLIP packages, fp32 on CPU, on real video frames."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from pgvt_jax import convert_clip
from pgvt_jax.models import clip_vit
from tests import clip_torch_refs as refs
from tests.conftest import REALDATA

# Real video frames when ../shared/realdata is present, else a textured fallback pattern.
REAL = REALDATA if REALDATA.is_dir() else None

TOL = dict(atol=1e-4, rtol=1e-4)


def _flax_forward(cfg, params, images):
  model = clip_vit.ClipVisionTransformer(cfg)
  out = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, images)
  return jax.tree_util.tree_map(np.asarray, out)


def _ln_post(params, x):
  """ln_post in NumPy (eps 1e-5), to compare with open_clip's post-LN patch tokens."""
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * params["ln_post"]["scale"] + params["ln_post"]["bias"]


def _check(sd, run, images, activation=None, size=None):
  cfg, params = convert_clip.convert_state_dict(sd, activation=activation)
  if size is not None:
    assert (cfg.width, cfg.layers, cfg.heads, cfg.patch_size, cfg.image_size, cfg.output_dim) == (
        size["width"], size["layers"], size["heads"], size["patch"], size["image"], size["out"])
  ref = run(images)
  out = _flax_forward(cfg, params, images)
  # Guard against a vacuous comparison: real images give non-trivial embeddings.
  assert np.std(ref["embedding"]) > 1e-3
  np.testing.assert_allclose(out["embedding"], ref["embedding"], **TOL)
  if "tokens" in ref:
    np.testing.assert_allclose(out["tokens"], ref["tokens"], **TOL)
  if "tokens_ln" in ref:
    np.testing.assert_allclose(_ln_post(params, out["tokens"][:, 1:]), ref["tokens_ln"], **TOL)
  return cfg, params


SIZES = [pytest.param(refs.TINY, id="tiny"), pytest.param(refs.B16, id="B16", marks=pytest.mark.slow)]


@pytest.mark.parametrize("size", SIZES)
def test_openai_clip_parity(size):
  _, sd, run = refs.openai_clip(size)
  _check(sd, run, refs.natural_images(size["image"], REAL), size=size)


@pytest.mark.parametrize("quickgelu", [True, False], ids=["quickgelu", "gelu"])
@pytest.mark.parametrize("size", SIZES)
def test_open_clip_parity(size, quickgelu):
  _, sd, run = refs.open_clip_tower(size, quickgelu)
  _check(sd, run, refs.natural_images(size["image"], REAL),
         activation="quick_gelu" if quickgelu else "gelu", size=size)


@pytest.mark.parametrize("size", SIZES)
def test_hf_parity(size):
  _, sd, run = refs.hf_clip(size)
  _check(sd, run, refs.natural_images(size["image"], REAL), activation="quick_gelu",
         size=size)


def test_wrong_activation_is_detectably_different():
  """The parity tolerance is tight enough to tell QuickGELU from exact GELU."""
  images = refs.natural_images(64, REAL)
  _, sd, run = refs.open_clip_tower(refs.TINY, quickgelu=False)
  with pytest.raises(AssertionError):
    _check(sd, run, images, activation="quick_gelu")


def test_b16_param_count_equals_pytorch():
  model, _, _ = refs.open_clip_tower(refs.B16, quickgelu=True)
  torch_count = sum(p.numel() for p in model.visual.parameters())
  cfg = clip_vit.get_config("B/16")
  shapes = jax.eval_shape(clip_vit.ClipVisionTransformer(cfg).init, jax.random.key(0),
                          jnp.zeros((1, 224, 224, 3)))
  assert clip_vit.count_params(shapes["params"]) == torch_count == 86_192_640


@pytest.mark.slow
def test_pos_embed_resize_matches_open_clip():
  """--image_size 288 on a 224 model == open_clip's resize_pos_embed + force_image_size."""
  import open_clip  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  src = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
  sd = src.state_dict()
  dst = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None, force_image_size=288).eval()
  open_clip.model.resize_pos_embed(sd, dst)  # in place, bicubic + antialias
  dst.load_state_dict(sd)
  images = refs.natural_images(288, REAL)
  with torch.no_grad():
    ref = dst.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  np_sd = {k: v.numpy() for k, v in src.state_dict().items()}
  cfg, params = convert_clip.convert_state_dict(np_sd, image_size=288)
  assert cfg.image_size == 288 and params["positional_embedding"].shape == (1 + 18 * 18, 768)
  out = _flax_forward(cfg, params, images)
  np.testing.assert_allclose(out["embedding"], ref, **TOL)


def test_resize_pos_embed_keeps_cls_and_identity():
  pos = np.random.RandomState(0).randn(1 + 7 * 7, 16).astype(np.float32)
  same = np.asarray(clip_vit.resize_pos_embed(pos, 7))
  np.testing.assert_array_equal(same, pos)
  bigger = np.asarray(clip_vit.resize_pos_embed(pos, 9))
  assert bigger.shape == (82, 16)
  np.testing.assert_array_equal(bigger[0], pos[0])
  with pytest.raises(ValueError, match="1 \\+ g\\*g"):
    clip_vit.resize_pos_embed(pos[:-1], 9)
