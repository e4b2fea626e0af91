r"""Convert PyTorch TimeSformer checkpoints (official facebookresearch, Hugging Face) to Flax.

    python -m pgvt_jax.convert_timesformer --checkpoint=TimeSformer_divST_8x32_224_K400.pyth \
        --output_dir=weights/timesformer_k400 [--heads=12] [--overwrite]
    python -m pgvt_jax.convert_timesformer --checkpoint=path/to/hf_timesformer_dir \
        --output_dir=weights/timesformer_hf

Sources (the layout is detected from key names):
  official  `.pyth` files of facebookresearch/TimeSformer: `{"model_state": {"model.cls_token",
            "model.blocks.0.attn.qkv.weight", ...}, "optimizer_state", "epoch", "cfg"}`, read
            with `torch.load(weights_only=True)` (tensors, numbers and strings only; no code
            runs). A bare `VisionTransformer` state dict (no `model.` prefix) works too.
  hf        a `TimesformerModel` / `TimesformerForVideoClassification` directory (config.json +
            model.safetensors or pytorch_model.bin), keys `[timesformer.]embeddings.*`,
            `encoder.layer.N.*`, `layernorm.*`, `classifier.*`.
Width, depth, patch size, resolution and frames come from tensor shapes; heads from config.json
(HF), `--heads`, or width // 64 (every official release). Every source tensor is used exactly
once; a missing or unexpected one is an error naming it. A classifier (`head` / `classifier`) is
kept as `head/{kernel,bias}`; training on a new dataset ignores it.

The output directory (written aside, then renamed) holds `params.safetensors` (flat keys
`blocks_0/attn/qkv/kernel`, ...) and `config.json` (the `TimeSformerConfig`, `num_classes`).

Python API:
    config, params = convert_timesformer.load("weights/timesformer_k400")
    cls = convert_timesformer.encode_video("weights/timesformer_k400" or a .pyth/HF dir, video)
"""

from __future__ import annotations

import functools
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
from pgvt_jax.models import timesformer
from pgvt_jax.weights_io import CheckpointError, StateDict

FORMAT_VERSION = 1
PARAMS_FILE, CONFIG_FILE = weights_io.PARAMS_FILE, weights_io.CONFIG_FILE
Entry = tuple[str, tuple[str, ...], Callable[[np.ndarray], np.ndarray]]

# Per block: Flax sub-path -> (official name, HF name), each + ".weight"/".bias".
_BLOCK = {
    ("temporal_norm1",): ("temporal_norm1", "temporal_layernorm"),
    ("temporal_attn", "qkv"): ("temporal_attn.qkv", "temporal_attention.attention.qkv"),
    ("temporal_attn", "proj"): ("temporal_attn.proj", "temporal_attention.output.dense"),
    ("temporal_fc",): ("temporal_fc", "temporal_dense"),
    ("norm1",): ("norm1", "layernorm_before"),
    ("attn", "qkv"): ("attn.qkv", "attention.attention.qkv"),
    ("attn", "proj"): ("attn.proj", "attention.output.dense"),
    ("norm2",): ("norm2", "layernorm_after"),
    ("mlp", "fc1"): ("mlp.fc1", "intermediate.dense"),
    ("mlp", "fc2"): ("mlp.fc2", "output.dense"),
}
_NORMS = {"temporal_norm1", "norm1", "norm2"}
# Top level: Flax path -> (official name, HF name).
_TOP = {
    ("cls_token",): ("cls_token", "embeddings.cls_token"),
    ("pos_embed",): ("pos_embed", "embeddings.position_embeddings"),
    ("time_embed",): ("time_embed", "embeddings.time_embeddings"),
}
_CONV = ("patch_embed.proj", "embeddings.patch_embeddings.projection")
_NORM = ("norm", "layernorm")
_HEAD = ("head", "classifier")
_LAYERS = ("blocks.", "encoder.layer.")


def _ident(x):
  return x


def _linear(w):  # torch Linear (out, in) -> Dense kernel (in, out)
  return w.T


def _conv(w):    # OIHW -> HWIO
  return w.transpose(2, 3, 1, 0)


# --------------------------------------------------------------------------- layout
def detect_layout(sd: StateDict, source: str = "<state dict>") -> tuple[str, str]:
  """(layout, prefix): "official" (prefix "model." in .pyth files, or "") or "hf"."""
  for key in sd:
    if key.endswith("time_embed") and key[:-len("time_embed")] + "cls_token" in sd:
      return "official", key[:-len("time_embed")]
    if key.endswith("embeddings.time_embeddings"):
      return "hf", key[:-len("embeddings.time_embeddings")]
  raise CheckpointError(
      f"{source}: not a divided space-time TimeSformer. Expected official keys "
      "('[model.]cls_token', '[model.]time_embed', '[model.]blocks.0.temporal_fc.weight', ...) "
      "or Hugging Face keys ('[timesformer.]embeddings.time_embeddings', ...); first keys "
      f"found: {sorted(sd)[:5]}")


def _count_layers(sd: StateDict, stem: str, source: str) -> int:
  ids = {int(k[len(stem):].split(".", 1)[0]) for k in sd
         if k.startswith(stem) and k[len(stem):].split(".", 1)[0].isdigit()}
  if not ids or ids != set(range(len(ids))):
    raise CheckpointError(f"{source}: block indices under {stem!r} are missing or not "
                          f"contiguous: {sorted(ids)}")
  return len(ids)


def infer_config(sd: StateDict, layout: str, prefix: str, *, heads: Optional[int] = None,
                 hf_cfg: Optional[dict] = None, source: str = "<state dict>"
                 ) -> timesformer.TimeSformerConfig:
  """Architecture from tensor shapes; heads from HF config.json, `heads`, else width // 64."""
  col = 0 if layout == "official" else 1
  name = lambda flax_path: prefix + _TOP[flax_path][col]
  try:
    conv = sd[prefix + _CONV[col] + ".weight"]
    pos, time = sd[name(("pos_embed",))], sd[name(("time_embed",))]
    layers = _count_layers(sd, prefix + _LAYERS[col], source)
    hidden = sd[f"{prefix}{_LAYERS[col]}0.{_BLOCK[('mlp', 'fc1')][col]}.weight"].shape[0]
  except KeyError as e:
    raise CheckpointError(f"{source}: {layout} layout but tensor {e.args[0]!r} is missing") from e
  width, patch = conv.shape[0], conv.shape[-1]
  grid = int(round((pos.shape[1] - 1) ** 0.5))
  if pos.ndim != 3 or grid * grid + 1 != pos.shape[1]:
    raise CheckpointError(f"{source}: position embedding has shape {pos.shape}; expected "
                          "(1, 1 + g*g, D) for a square patch grid")
  if hf_cfg:
    checks = {"attention_type": "divided_space_time", "hidden_act": "gelu", "qkv_bias": True}
    bad = {k: hf_cfg[k] for k, v in checks.items() if k in hf_cfg and hf_cfg[k] != v}
    eps = hf_cfg.get("layer_norm_eps", timesformer.LN_EPS)
    if abs(eps - timesformer.LN_EPS) > 1e-12:
      bad["layer_norm_eps"] = eps
    if bad:
      raise CheckpointError(f"{source}: config.json has {bad}; this converter supports "
                            f"{checks} and layer_norm_eps=1e-6")
    heads = heads or hf_cfg.get("num_attention_heads")
  if heads is None:
    heads = max(1, width // 64)
    logging.info("%s: heads not stored in the weights; using width // 64 = %d (every official "
                 "release; pass --heads otherwise)", source, heads)
  return timesformer.TimeSformerConfig(width=width, layers=layers, heads=heads, patch_size=patch,
                                       image_size=grid * patch, num_frames=time.shape[1],
                                       mlp_ratio=hidden // width)


def name_map(cfg: timesformer.TimeSformerConfig, layout: str, prefix: str,
             has_head: bool) -> list[Entry]:
  """Every source tensor and the Flax path it lands in."""
  col, p, e = (0 if layout == "official" else 1), prefix, []

  def pair(src, dst, is_norm):
    e.append((src + ".weight", (*dst, "scale" if is_norm else "kernel"),
              _ident if is_norm else _linear))
    e.append((src + ".bias", (*dst, "bias"), _ident))

  e.append((p + _CONV[col] + ".weight", ("patch_embed", "proj", "kernel"), _conv))
  e.append((p + _CONV[col] + ".bias", ("patch_embed", "proj", "bias"), _ident))
  for dst, names in _TOP.items():
    e.append((p + names[col], dst, _ident))
  for i in range(cfg.layers):
    for sub, names in _BLOCK.items():
      pair(f"{p}{_LAYERS[col]}{i}.{names[col]}", (f"blocks_{i}", *sub), sub[0] in _NORMS)
  pair(p + _NORM[col], ("norm",), True)
  if has_head:  # HF's classifier sits outside the `timesformer.` prefix
    pair((p if layout == "official" else "") + _HEAD[col], ("head",), False)
  return e


def expected_shapes(cfg: timesformer.TimeSformerConfig, num_classes: Optional[int] = None
                    ) -> dict[tuple[str, ...], tuple[int, ...]]:
  model = timesformer.TimeSformer(cfg)
  frames = jax.ShapeDtypeStruct((1, cfg.num_frames, cfg.image_size, cfg.image_size, 3),
                                jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), frames)["params"]
  out = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}
  if num_classes:
    out.update({("head", "kernel"): (cfg.width, num_classes), ("head", "bias"): (num_classes,)})
  return out


def convert_state_dict(sd: StateDict, *, heads: Optional[int] = None,
                       hf_cfg: Optional[dict] = None, source: str = "<state dict>"
                       ) -> tuple[timesformer.TimeSformerConfig, dict, Optional[int]]:
  """Strict: every tensor used once, every Flax param filled -> (config, params, num_classes)."""
  layout, prefix = detect_layout(sd, source)
  cfg = infer_config(sd, layout, prefix, heads=heads, hf_cfg=hf_cfg, source=source)
  head_key = (prefix if layout == "official" else "") + _HEAD[layout == "hf"] + ".weight"
  num_classes = sd[head_key].shape[0] if head_key in sd else None
  entries = name_map(cfg, layout, prefix, has_head=num_classes is not None)
  used = {src for src, _, _ in entries}
  missing = sorted(used - set(sd))
  if missing:
    raise CheckpointError(f"{source}: {len(missing)} tensors of the {layout} layout are "
                          f"missing, e.g. {missing[:5]}")
  extra = sorted(set(sd) - used)
  if extra:
    raise CheckpointError(f"{source}: {len(extra)} unexpected tensors (not part of a divided "
                          f"space-time TimeSformer), e.g. {extra[:5]}")
  shapes = expected_shapes(cfg, num_classes)
  flat = {}
  for src, path, fn in entries:
    value = np.ascontiguousarray(fn(sd[src]), dtype=np.float32)
    if value.shape != shapes[path]:
      raise CheckpointError(f"{source}: tensor {src!r} {sd[src].shape} maps to "
                            f"{'/'.join(path)} with shape {value.shape}; expected "
                            f"{shapes[path]} for {cfg}")
    flat[path] = value
  assert set(flat) == set(shapes), sorted(set(shapes) ^ set(flat))[:5]
  return cfg, traverse_util.unflatten_dict(flat), num_classes


# --------------------------------------------------------------------------- save / load


def save(output_dir: str | os.PathLike, params: dict, info: dict, *,
         overwrite: bool = False) -> Path:
  """Writes aside and swaps in (weights_io.save_converted): a crash never leaves a partial or
  missing directory; `overwrite` only ever replaces a previous converter output."""
  return weights_io.save_converted(output_dir, params, info, overwrite=overwrite,
                                   what="a convert_timesformer output")


def is_converted_dir(path: str | os.PathLike) -> bool:
  path = paths.as_path(path)  # local or a bucket (gs://...)
  return (path / PARAMS_FILE).exists() and (path / CONFIG_FILE).exists()


def load(directory: str | os.PathLike) -> tuple[timesformer.TimeSformerConfig, dict]:
  """A converted directory -> `(TimeSformerConfig, params)` (float32 numpy leaves)."""
  directory = paths.as_path(directory)  # local or a bucket (gs://...)
  if not is_converted_dir(directory):
    raise CheckpointError(f"{directory}: not a converted TimeSformer directory (expected "
                          f"{PARAMS_FILE} and {CONFIG_FILE}); create one with "
                          "python -m pgvt_jax.convert_timesformer")
  info = json.loads((directory / CONFIG_FILE).read_text())
  if info.get("family") != "timesformer":
    raise CheckpointError(f"{directory / CONFIG_FILE}: family={info.get('family')!r}; expected "
                          "'timesformer' (a convert_clip output goes in config.clip_dir)")
  cfg = timesformer.TimeSformerConfig(**info["architecture"])
  flat = weights_io.read_state_dict(directory / PARAMS_FILE)
  params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
  got = {k: v.shape for k, v in traverse_util.flatten_dict(params).items()}
  want = expected_shapes(cfg, info.get("num_classes"))
  if got != want:
    bad = sorted(set(got.items()) ^ set(want.items()))[:5]
    raise CheckpointError(f"{directory / PARAMS_FILE}: params do not match config.json; "
                          f"differing (path, shape) e.g. {bad}")
  return cfg, params


def load_any(path: str | os.PathLike, *, heads: Optional[int] = None
             ) -> tuple[timesformer.TimeSformerConfig, dict]:
  """A converted directory or any official/HF checkpoint -> `(config, params)`."""
  if is_converted_dir(path):
    return load(path)
  sd = weights_io.read_state_dict(path)
  cfg, params, _ = convert_state_dict(sd, heads=heads, hf_cfg=weights_io.hf_config(path),
                                      source=str(path))
  return cfg, params


def convert(checkpoint: str | os.PathLike, output_dir: str | os.PathLike, *,
            heads: Optional[int] = None, overwrite: bool = False) -> Path:
  """Checkpoint file/dir -> converted directory (see module docstring)."""
  replace_dir.check_replaceable(output_dir, overwrite, weights_io.OUTPUT_FILES,
                                "a convert_timesformer output")  # fail before the slow part
  sd = weights_io.read_state_dict(checkpoint)
  cfg, params, num_classes = convert_state_dict(
      sd, heads=heads, hf_cfg=weights_io.hf_config(checkpoint), source=str(checkpoint))
  info = {"format_version": FORMAT_VERSION, "family": "timesformer",
          "architecture": cfg.to_dict(), "num_classes": num_classes,
          "source": str(Path(checkpoint).resolve()),
          "source_layout": detect_layout(sd, str(checkpoint))[0]}
  out = save(output_dir, params, info, overwrite=overwrite)
  logging.info("Wrote %s: %s, %d params", out, cfg, timesformer.count_params(params))
  return out


@functools.lru_cache(maxsize=8)
def _encoder(cfg: timesformer.TimeSformerConfig):
  """One jitted CLS encoder per architecture (compiled once per input shape)."""
  model = timesformer.TimeSformer(cfg)
  return jax.jit(lambda p, x: model.apply({"params": p}, x)["pooled"])


def encode_video(path: str | os.PathLike, video: np.ndarray, *, batch_size: int = 8,
                 heads: Optional[int] = None) -> np.ndarray:
  """`(B, T, H, W, 3)` normalised float32 video -> `(B, D)` final-LayerNorm CLS.

  `path` is a converted directory or an official/HF checkpoint. Equals the official
  `VisionTransformer.forward_features` (input `(B, 3, T, H, W)` there) and HF
  `TimesformerModel(...).last_hidden_state[:, 0]` (input `(B, T, 3, H, W)`).
  """
  cfg, params = load_any(path, heads=heads)
  video = np.asarray(video, np.float32)
  want = (cfg.num_frames, cfg.image_size, cfg.image_size, 3)
  if video.ndim != 5 or video.shape[1:] != want:
    raise ValueError(f"video has shape {video.shape}; expected (B, {', '.join(map(str, want))})"
                     f" (B, T, H, W, 3) for {path}")
  params = {k: v for k, v in params.items() if k != "head"}
  fn = _encoder(cfg)
  return np.concatenate([np.asarray(fn(params, video[i:i + batch_size]))
                         for i in range(0, len(video), batch_size)])


# --------------------------------------------------------------------------- CLI
def _define_flags() -> None:
  """The command line, defined at launch only: importing this module defines no flags
  (pgvt_jax/cli.py says why; convert_clip's flags share these names)."""
  flags.DEFINE_string("checkpoint", None, "Official .pyth/.pth file or Hugging Face model dir.")
  flags.DEFINE_string("output_dir", None, "Directory to write (must not exist unless "
                      "--overwrite).")
  flags.DEFINE_integer("heads", None, "Attention heads (not stored in official checkpoints; "
                       "default width // 64).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.checkpoint or not f.output_dir:
    raise app.UsageError("--checkpoint and --output_dir are required")
  try:
    convert(f.checkpoint, f.output_dir, heads=f.heads, overwrite=f.overwrite)
  except (CheckpointError, FileExistsError, ValueError) as e:
    raise SystemExit(f"convert_timesformer: error: {e}") from None


if __name__ == "__main__":
  cli.run_app(main, _define_flags, __doc__)
