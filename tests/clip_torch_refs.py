"""Independent PyTorch CLIP image towers (randomly initialised, offline) and test images.

Each builder returns `(state_dict, run)` where `run(images_nhwc) -> dict(embedding=(B,E),
tokens=(B,1+N,D) pre-ln_post, or tokens_ln=(B,N,D) post-ln_post patch tokens)` from the
reference package's own forward pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pgvt_jax.models.clip_vit import CLIP_MEAN, CLIP_STD

TINY = dict(width=128, layers=2, heads=2, patch=16, image=64, out=32)
B16 = dict(width=768, layers=12, heads=12, patch=16, image=224, out=512)


def natural_images(size: int, realdata: Path | None, n: int = 2) -> np.ndarray:
  """`(n, size, size, 3)` CLIP-normalised frames of a real video (a textured fallback if absent)."""
  frames = []
  video = None if realdata is None else realdata / "k400_tai_chi.mp4"
  if video is not None and video.exists():
    import av  # pylint: disable=g-import-not-at-top
    with av.open(str(video)) as container:
      for i, frame in enumerate(container.decode(video=0)):
        if i % 40 == 0:
          frames.append(frame.to_image())
        if len(frames) == n:
          break
  while len(frames) < n:  # smooth gradients + shapes + noise: not constant, not white noise
    rng = np.random.RandomState(len(frames))
    yy, xx = np.mgrid[0:256, 0:320] / 256.0
    img = np.stack([np.sin(6 * xx + rng.rand()), np.cos(4 * yy), xx * yy], -1) * 0.5 + 0.5
    img += 0.05 * rng.randn(*img.shape)
    frames.append(Image.fromarray(np.uint8(np.clip(img, 0, 1) * 255)))
  out = []
  for img in frames:  # CLIP preprocessing: bicubic short-side resize, centre crop
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), np.float32) / 255.0
    out.append((arr - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32))
  return np.stack(out).astype(np.float32)


def _nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _sd(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}


def openai_clip(size: dict, seed: int = 0):
  """OpenAI's `clip` package (clip-anytorch): full CLIP model, keys `visual.*` (+ text tower)."""
  import clip.model  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  if size is B16:
    model = clip.model.CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12)
  else:
    model = clip.model.CLIP(size["out"], size["image"], size["layers"], size["width"],
                            size["patch"], 8, 64, 64, 1, 1)
  model.eval()
  tokens = {}
  model.visual.transformer.register_forward_hook(
      lambda m, i, o: tokens.__setitem__("tokens", o.permute(1, 0, 2)))  # LND -> NLD

  def run(images):
    with torch.no_grad():
      emb = model.encode_image(_nchw(images))
    return {"embedding": emb.numpy(), "tokens": tokens["tokens"].numpy()}
  return model, _sd(model), run


def open_clip_tower(size: dict, quickgelu: bool, seed: int = 0):
  """open_clip: B/16 via `create_model` (keys `visual.*`), tiny as a bare VisionTransformer."""
  import open_clip  # pylint: disable=g-import-not-at-top
  from open_clip import transformer  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  if size is B16:
    model = open_clip.create_model("ViT-B-16-quickgelu" if quickgelu else "ViT-B-16",
                                   pretrained=None)
    visual = model.visual
  else:
    act = transformer.QuickGELU if quickgelu else torch.nn.GELU
    model = visual = transformer.VisionTransformer(
        image_size=size["image"], patch_size=size["patch"], width=size["width"],
        layers=size["layers"], heads=size["heads"], mlp_ratio=4.0, output_dim=size["out"],
        act_layer=act)
  model.eval()
  visual.output_tokens = True

  def run(images):
    with torch.no_grad():
      emb, toks = visual(_nchw(images))
    return {"embedding": emb.numpy(), "tokens_ln": toks.numpy()}
  return model, _sd(model), run


def hf_clip(size: dict, quickgelu: bool = True, seed: int = 0):
  """transformers CLIPVisionModelWithProjection: keys `vision_model.*` + `visual_projection`."""
  from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  config = CLIPVisionConfig(
      hidden_size=size["width"], intermediate_size=4 * size["width"],
      num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
      patch_size=size["patch"], image_size=size["image"], projection_dim=size["out"],
      hidden_act="quick_gelu" if quickgelu else "gelu", layer_norm_eps=1e-5)
  model = CLIPVisionModelWithProjection(config).eval()

  def run(images):
    with torch.no_grad():
      out = model(pixel_values=_nchw(images))
    return {"embedding": out.image_embeds.numpy(), "tokens": out.last_hidden_state.numpy()}
  return model, _sd(model), run
