r"""Convert PyTorch CLIP image towers (OpenAI, open_clip, Hugging Face) to pgvt_jax Flax params.

    python -m pgvt_jax.convert_clip --checkpoint=ViT-B-16.pt --output_dir=weights/clip_b16 \
        [--image_size=256] [--activation=quick_gelu|gelu] [--overwrite] [--trust_torchscript]

OpenAI's released `.pt` files are TorchScript archives, which can run code when loaded: they are
refused unless `--trust_torchscript` is passed (prefer .safetensors or plain state dicts).
Weights holding NaN/inf are refused unless `--allow_nonfinite`. `--overwrite` only ever replaces
a directory this converter wrote (exactly `params.safetensors` + `config.json`); the new output
is swapped in atomically and only then is the old one deleted.

The source layout is detected from key names; width, layers, heads, patch size and resolution
are read from tensor shapes. The output directory holds `params.safetensors` (flat keys
`resblocks_0/attn/query/kernel`, ...) and `config.json` (the `ClipVitConfig`); `load(dir)` returns
`(config, params)`. The directory appears only when complete (written aside, then renamed).

Python API:
    config, params = convert_clip.load("weights/clip_b16")
    emb = convert_clip.encode_image("weights/clip_b16" or "ViT-B-16.pt", images)  # (B, E)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

from absl import app, flags, logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from pgvt_jax import cli, paths, replace_dir, weights_io
from pgvt_jax.models import clip_vit
from pgvt_jax.weights_io import CheckpointError, StateDict

FORMAT_VERSION = 1
PARAMS_FILE, CONFIG_FILE = weights_io.PARAMS_FILE, weights_io.CONFIG_FILE

# (source key, flax path, transform). One source key may feed several paths (fused q|k|v).
Entry = tuple[str, tuple[str, ...], Callable[[np.ndarray], np.ndarray]]


# --------------------------------------------------------------------------- layout detection
def detect_layout(sd: StateDict, source: str = "<state dict>") -> tuple[str, str]:
  """Returns (layout, prefix): layout "openai" (OpenAI clip and open_clip) or "hf"."""
  for key in sd:
    if key.endswith("conv1.weight") and key[:-len("conv1.weight")] + "class_embedding" in sd:
      return "openai", key[:-len("conv1.weight")]
    if key.endswith("embeddings.patch_embedding.weight"):
      return "hf", key[:-len("embeddings.patch_embedding.weight")]
  raise CheckpointError(
      f"{source}: unknown key layout. Expected OpenAI/open_clip keys ('[visual.]conv1.weight', "
      f"'[visual.]class_embedding', ...) or Hugging Face CLIPVision keys "
      f"('[vision_model.]embeddings.patch_embedding.weight', ...); first keys found: "
      f"{sorted(sd)[:5]}")


def _count_layers(sd: StateDict, stem: str) -> int:
  ids = {int(k[len(stem):].split(".", 1)[0]) for k in sd
         if k.startswith(stem) and k[len(stem):].split(".", 1)[0].isdigit()}
  if ids != set(range(len(ids))):
    raise CheckpointError(f"transformer layer indices under {stem!r} are not contiguous: "
                          f"{sorted(ids)}")
  return len(ids)


def infer_config(sd: StateDict, layout: str, prefix: str, *, activation: Optional[str] = None,
                 hf_cfg: Optional[dict] = None, source: str = "<state dict>"
                 ) -> clip_vit.ClipVitConfig:
  """Reads the architecture from tensor shapes (heads from width // 64 unless HF says)."""
  p = prefix
  try:
    if layout == "openai":
      conv, pos = sd[p + "conv1.weight"], sd[p + "positional_embedding"]
      layers = _count_layers(sd, p + "transformer.resblocks.")
      hidden = sd[p + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
      proj = sd.get(p + "proj")
      output_dim = None if proj is None else proj.shape[1]
    else:
      conv = sd[p + "embeddings.patch_embedding.weight"]
      pos = sd[p + "embeddings.position_embedding.weight"]
      layers = _count_layers(sd, p + "encoder.layers.")
      hidden = sd[p + "encoder.layers.0.mlp.fc1.weight"].shape[0]
      proj = sd.get("visual_projection.weight")
      output_dim = None if proj is None else proj.shape[0]
  except KeyError as e:
    raise CheckpointError(f"{source}: {layout} layout but tensor {e.args[0]!r} is missing") from e
  width, patch = conv.shape[0], conv.shape[-1]
  grid = int(round((pos.shape[0] - 1) ** 0.5))
  if grid * grid + 1 != pos.shape[0]:
    raise CheckpointError(f"{source}: positional embedding has {pos.shape[0]} rows; expected "
                          "1 + g*g for a square patch grid")
  heads = None
  if hf_cfg:
    heads = hf_cfg.get("num_attention_heads")
    eps = hf_cfg.get("layer_norm_eps", clip_vit.LN_EPS)
    if abs(eps - clip_vit.LN_EPS) > 1e-12:
      raise CheckpointError(f"{source}: config.json layer_norm_eps={eps}; CLIP uses 1e-5")
    activation = activation or hf_cfg.get("hidden_act")
  if activation is None:
    logging.warning("%s: the activation is not stored in the weights; assuming quick_gelu "
                    "(OpenAI CLIP). Pass --activation=gelu for open_clip models trained with "
                    "nn.GELU (e.g. LAION ViT-B-16).", source)
    activation = "quick_gelu"
  return clip_vit.ClipVitConfig(width=width, layers=layers, patch_size=patch,
                                image_size=grid * patch, output_dim=output_dim, heads=heads,
                                activation=activation, mlp_ratio=hidden // width)


# --------------------------------------------------------------------------- name maps
def _linear(w):       # torch Linear (out, in) -> flax Dense kernel (in, out)
  return w.T


def _heads_in(cfg, part=None):  # (3D|D, D) rows q|k|v -> DenseGeneral kernel (D, H, hd)
  d, h = cfg.width, cfg.heads
  def fn(w):
    w = w if part is None else w[part * d:(part + 1) * d]
    return w.T.reshape(d, h, d // h) if w.ndim == 2 else w.reshape(h, d // h)
  return fn


def _heads_out(cfg):  # out_proj (D, D) -> (H, hd, D)
  return lambda w: w.T.reshape(cfg.heads, cfg.width // cfg.heads, cfg.width)


def _ident(x):
  return x


def _conv(w):         # OIHW -> HWIO
  return w.transpose(2, 3, 1, 0)


def name_map(cfg: clip_vit.ClipVitConfig, layout: str, prefix: str, has_proj: bool
             ) -> list[Entry]:
  """Every source tensor and where it lands in the Flax tree."""
  p, e = prefix, []
  def ln(src, dst):
    e.extend([(src + ".weight", (*dst, "scale"), _ident), (src + ".bias", (*dst, "bias"), _ident)])
  def dense(src, dst, w_fn=_linear, b_fn=_ident):
    e.extend([(src + ".weight", (*dst, "kernel"), w_fn), (src + ".bias", (*dst, "bias"), b_fn)])
  if layout == "openai":
    e += [(p + "conv1.weight", ("conv1", "kernel"), _conv),
          (p + "class_embedding", ("class_embedding",), _ident),
          (p + "positional_embedding", ("positional_embedding",), _ident)]
    ln(p + "ln_pre", ("ln_pre",))
    for i in range(cfg.layers):
      s, d = f"{p}transformer.resblocks.{i}.", f"resblocks_{i}"
      for part, name in enumerate(("query", "key", "value")):
        e.append((s + "attn.in_proj_weight", (d, "attn", name, "kernel"), _heads_in(cfg, part)))
        e.append((s + "attn.in_proj_bias", (d, "attn", name, "bias"), _heads_in(cfg, part)))
      dense(s + "attn.out_proj", (d, "attn", "out"), _heads_out(cfg))
      ln(s + "ln_1", (d, "ln_1"))
      ln(s + "ln_2", (d, "ln_2"))
      dense(s + "mlp.c_fc", (d, "mlp", "c_fc"))
      dense(s + "mlp.c_proj", (d, "mlp", "c_proj"))
    ln(p + "ln_post", ("ln_post",))
    if has_proj:
      e.append((p + "proj", ("proj",), _ident))
  else:
    e += [(p + "embeddings.patch_embedding.weight", ("conv1", "kernel"), _conv),
          (p + "embeddings.class_embedding", ("class_embedding",), _ident),
          (p + "embeddings.position_embedding.weight", ("positional_embedding",), _ident)]
    ln(p + "pre_layrnorm", ("ln_pre",))  # sic: HF's spelling
    for i in range(cfg.layers):
      s, d = f"{p}encoder.layers.{i}.", f"resblocks_{i}"
      for src, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
        dense(s + "self_attn." + src, (d, "attn", name), _heads_in(cfg), _heads_in(cfg))
      dense(s + "self_attn.out_proj", (d, "attn", "out"), _heads_out(cfg))
      ln(s + "layer_norm1", (d, "ln_1"))
      ln(s + "layer_norm2", (d, "ln_2"))
      dense(s + "mlp.fc1", (d, "mlp", "c_fc"))
      dense(s + "mlp.fc2", (d, "mlp", "c_proj"))
    ln(p + "post_layernorm", ("ln_post",))
    if has_proj:
      e.append(("visual_projection.weight", ("proj",), _linear))
  return e


def _vision_keys(sd: StateDict, layout: str, prefix: str) -> set[str]:
  """Keys that belong to the image tower (others, e.g. the text tower, are ignored)."""
  keys = {k for k in sd if k.startswith(prefix)} if prefix else set(sd)
  if layout == "hf":
    keys.discard(prefix + "embeddings.position_ids")  # a buffer, not a weight
    keys |= {k for k in sd if k == "visual_projection.weight"}
    if not prefix:  # HF v5 un-prefixed: a full CLIPModel would also carry these
      keys = {k for k in keys if not k.startswith(("text_model.", "text_projection",
                                                   "logit_scale"))}
  return keys


def expected_shapes(cfg: clip_vit.ClipVitConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  model = clip_vit.ClipVisionTransformer(cfg)
  images = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
  return {k: v.shape for k, v in traverse_util.flatten_dict(shapes).items()}


def convert_state_dict(sd: StateDict, *, activation: Optional[str] = None,
                       image_size: Optional[int] = None, hf_cfg: Optional[dict] = None,
                       source: str = "<state dict>") -> tuple[clip_vit.ClipVitConfig, dict]:
  """Strict conversion: every image-tower tensor is used once, every Flax param is filled."""
  layout, prefix = detect_layout(sd, source)
  cfg = infer_config(sd, layout, prefix, activation=activation, hf_cfg=hf_cfg, source=source)
  entries = name_map(cfg, layout, prefix, has_proj=cfg.output_dim is not None)
  shapes = expected_shapes(cfg)
  src_keys = {src for src, _, _ in entries}
  missing = sorted(src_keys - set(sd))
  if missing:
    raise CheckpointError(f"{source}: {len(missing)} tensors expected by the {layout} layout are "
                          f"missing, e.g. {missing[:5]}")
  extra = sorted(_vision_keys(sd, layout, prefix) - src_keys)
  if extra:
    raise CheckpointError(f"{source}: {len(extra)} unexpected image-tower tensors (not part of a "
                          f"standard CLIP ViT), e.g. {extra[:5]}")
  flat = {}
  for src, path, fn in entries:
    value = np.ascontiguousarray(fn(sd[src]), dtype=np.float32)
    if value.shape != shapes[path]:
      raise CheckpointError(f"{source}: tensor {src!r} {sd[src].shape} maps to "
                            f"{'/'.join(path)} with shape {value.shape}; expected "
                            f"{shapes[path]} for {cfg}")
    flat[path] = value
  assert set(flat) == set(shapes), sorted(set(shapes) ^ set(flat))[:5]
  if image_size is not None and image_size != cfg.image_size:
    if image_size % cfg.patch_size:
      raise ValueError(f"image_size={image_size} is not a multiple of patch size "
                       f"{cfg.patch_size}")
    flat[("positional_embedding",)] = np.asarray(clip_vit.resize_pos_embed(
        flat[("positional_embedding",)], image_size // cfg.patch_size))
    cfg = cfg.replace(image_size=image_size)
  return cfg, traverse_util.unflatten_dict(flat)


# --------------------------------------------------------------------------- save / load


def check_replaceable(out: str | os.PathLike, overwrite: bool) -> None:
  """Raises unless `out` is absent, or `overwrite` and `out` is exactly a converter output."""
  replace_dir.check_replaceable(out, overwrite, weights_io.OUTPUT_FILES,
                                "a convert_clip output")


def save(output_dir: str | os.PathLike, cfg: clip_vit.ClipVitConfig, params: dict,
         metadata: Optional[dict] = None, overwrite: bool = False) -> Path:
  """Writes aside and swaps in, so a crash never leaves a partial or missing directory."""
  info = {"format_version": FORMAT_VERSION, "architecture": cfg.to_dict(), **(metadata or {})}
  return weights_io.save_converted(output_dir, params, info, overwrite=overwrite,
                                   what="a convert_clip output")


def is_converted_dir(path: str | os.PathLike) -> bool:
  path = paths.as_path(path)  # local or a bucket (gs://...)
  return (path / PARAMS_FILE).exists() and (path / CONFIG_FILE).exists()


def load(directory: str | os.PathLike, *, allow_nonfinite: bool = False
         ) -> tuple[clip_vit.ClipVitConfig, dict]:
  """A converted directory -> `(ClipVitConfig, params)`, params a nested dict of float32 arrays."""
  directory = paths.as_path(directory)  # local or a bucket (gs://...)
  if not is_converted_dir(directory):
    raise CheckpointError(f"{directory}: not a converted CLIP directory (expected {PARAMS_FILE} "
                          f"and {CONFIG_FILE}); create one with python -m pgvt_jax.convert_clip")
  info = json.loads((directory / CONFIG_FILE).read_text())
  cfg = clip_vit.ClipVitConfig(**info["architecture"])
  flat = weights_io.read_state_dict(directory / PARAMS_FILE, allow_nonfinite=allow_nonfinite)
  params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
  shapes = expected_shapes(cfg)
  got = {k: v.shape for k, v in traverse_util.flatten_dict(params).items()}
  if got != shapes:
    bad = sorted(set(got.items()) ^ set(shapes.items()))[:5]
    raise CheckpointError(f"{directory / PARAMS_FILE}: params do not match config.json; "
                          f"differing (path, shape) e.g. {bad}")
  return cfg, params


def load_any(path: str | os.PathLike, *, activation: Optional[str] = None,
             image_size: Optional[int] = None, trust_torchscript: bool = False,
             allow_nonfinite: bool = False) -> tuple[clip_vit.ClipVitConfig, dict]:
  """A converted directory or any PyTorch checkpoint -> `(config, params)`.

  `trust_torchscript` lets TorchScript archives load (they may run code); `allow_nonfinite`
  keeps NaN/inf weights instead of refusing them.
  """
  if is_converted_dir(path):
    cfg, params = load(path, allow_nonfinite=allow_nonfinite)
    if image_size is not None and image_size != cfg.image_size:
      params = dict(params, positional_embedding=np.asarray(clip_vit.resize_pos_embed(
          params["positional_embedding"], image_size // cfg.patch_size)))
      cfg = cfg.replace(image_size=image_size)
    return cfg, params
  sd = weights_io.read_state_dict(path, trust_torchscript=trust_torchscript,
                                  allow_nonfinite=allow_nonfinite)
  return convert_state_dict(sd, activation=activation, image_size=image_size,
                            hf_cfg=weights_io.hf_config(path), source=str(path))


def convert(checkpoint: str | os.PathLike, output_dir: str | os.PathLike, *,
            activation: Optional[str] = None, image_size: Optional[int] = None,
            overwrite: bool = False, trust_torchscript: bool = False,
            allow_nonfinite: bool = False) -> Path:
  """Checkpoint file/dir -> converted directory (see module docstring)."""
  check_replaceable(output_dir, overwrite)  # fail before the slow part
  sd = weights_io.read_state_dict(checkpoint, trust_torchscript=trust_torchscript,
                                  allow_nonfinite=allow_nonfinite)
  cfg, params = convert_state_dict(sd, activation=activation, image_size=image_size,
                                   hf_cfg=weights_io.hf_config(checkpoint), source=str(checkpoint))
  meta = {"source": str(Path(checkpoint).resolve()),
          "source_layout": detect_layout(sd, str(checkpoint))[0]}
  out = save(output_dir, cfg, params, meta, overwrite=overwrite)
  logging.info("Wrote %s: %s, %d params", out, cfg, clip_vit.count_params(params))
  return out


def encode_image(path: str | os.PathLike, images: np.ndarray, *, batch_size: int = 32,
                 activation: Optional[str] = None, trust_torchscript: bool = False
                 ) -> np.ndarray:
  """`(B, S, S, 3)` CLIP-normalised float32 images -> `(B, E)` projected embeddings.

  `path` is a converted directory or a PyTorch checkpoint; the result equals PyTorch's
  `model.encode_image` (NCHW there, NHWC here).
  """
  cfg, params = load_any(path, activation=activation, trust_torchscript=trust_torchscript)
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[1:] != (cfg.image_size, cfg.image_size, 3):
    raise ValueError(f"images have shape {images.shape}; expected (B, {cfg.image_size}, "
                     f"{cfg.image_size}, 3) NHWC for {path} (convert with --image_size for "
                     "other resolutions)")
  model = clip_vit.ClipVisionTransformer(cfg)
  fn = jax.jit(lambda p, x: model.apply({"params": p}, x)["embedding"])
  return np.concatenate([np.asarray(fn(params, images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


# --------------------------------------------------------------------------- CLI
def _define_flags() -> None:
  """The command line, defined at launch only: importing this module defines no flags
  (pgvt_jax/cli.py says why)."""
  flags.DEFINE_string("checkpoint", None,
                      "PyTorch/safetensors CLIP checkpoint file or HF model dir.")
  flags.DEFINE_string("output_dir", None,
                      "Directory to write (must not exist unless --overwrite).")
  flags.DEFINE_integer("image_size", None, "Resize the positional embedding for this input size.")
  flags.DEFINE_enum("activation", None, sorted(clip_vit.ACTIVATIONS),
                    "Override the MLP activation (not stored in OpenAI/open_clip weights).")
  flags.DEFINE_bool("overwrite", False,
                    "Replace an existing output directory (only one this converter wrote).")
  flags.DEFINE_bool("trust_torchscript", False,
                    "Load TorchScript archives (OpenAI's .pt releases) with torch.jit.load, which "
                    "can run code stored in the file: only for files from a source you trust.")
  flags.DEFINE_bool("allow_nonfinite", False, "Convert weights that hold NaN/inf.")


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.checkpoint or not f.output_dir:
    raise app.UsageError("--checkpoint and --output_dir are required")
  try:
    convert(f.checkpoint, f.output_dir, activation=f.activation, image_size=f.image_size,
            overwrite=f.overwrite, trust_torchscript=f.trust_torchscript,
            allow_nonfinite=f.allow_nonfinite)
  except (CheckpointError, FileExistsError, ValueError) as e:
    raise SystemExit(f"convert_clip: error: {e}") from None


def run():
  """The `pgvt-convert-clip` console script and `python -m pgvt_jax.convert_clip`."""
  cli.run_app(main, _define_flags, __doc__)


if __name__ == "__main__":
  run()
