"""Read PyTorch-world checkpoint files into flat `{name: np.ndarray}` dicts, safely.

Order of preference, safest first:
  * `.safetensors` (and HF sharded `*.safetensors.index.json`): read without torch, no code runs.
  * plain state dicts (`.bin`/`.pt`/`.pth`): `torch.load(weights_only=True)` refuses pickled code.
  * TorchScript archives (OpenAI's released `ViT-B-16.pt` etc.): only `torch.jit.load` reads them,
    which can run code stored in the archive, so they are refused unless the caller opts in
    (`trust_torchscript=True`, `--trust_torchscript` on the CLI).
Every tensor comes back as float32 numpy (OpenAI weights are mixed fp16/fp32; bf16 is upcast).
Weights holding NaN/inf are refused (`allow_nonfinite=True` lets them through).

`save_converted` writes a converter's output directory (convert_clip, convert_timesformer):
`params.safetensors` (flat `a/b/c` keys) + `config.json`, written aside and swapped in.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

from flax import traverse_util
import ml_dtypes
import numpy as np
import safetensors.numpy

from pgvt_jax import paths

from pgvt_jax import replace_dir

StateDict = dict[str, np.ndarray]

# File names that Hugging Face / open_clip use inside a model directory, in preference order.
_DIR_CANDIDATES = (
    "model.safetensors.index.json", "model.safetensors", "open_clip_model.safetensors",
    "pytorch_model.bin.index.json", "pytorch_model.bin", "open_clip_pytorch_model.bin",
)
# Wrappers that training scripts put around a state dict ("model_state": the .pyth files of
# facebookresearch's SlowFast/TimeSformer trainers).
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state")


# A converter output directory holds exactly these two files.
PARAMS_FILE, CONFIG_FILE = "params.safetensors", "config.json"
OUTPUT_FILES = frozenset({PARAMS_FILE, CONFIG_FILE})


class CheckpointError(ValueError):
  """A checkpoint file that cannot be read or does not hold what was expected."""


def save_converted(output_dir: str | os.PathLike, params: dict, info: dict, *,
                   overwrite: bool, what: str) -> Path:
  """Writes `params` (nested dict) + `info` (config.json) aside, then swaps the directory in.

  A crash never leaves a partial or missing output; `overwrite` only ever replaces a directory
  holding exactly OUTPUT_FILES (`what` names such an output in the refusal).
  """
  if paths.is_url(output_dir):  # the swap below is a local rename
    raise ValueError(f"{output_dir}: converters write to a local directory; convert there, "
                     "then copy the directory to the bucket (e.g. `gsutil cp -r`) and point "
                     "config.clip_dir / config.timesformer_dir at the copy")
  out = Path(output_dir)
  replace_dir.check_replaceable(out, overwrite, OUTPUT_FILES, what)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
  try:
    flat = {"/".join(k): np.ascontiguousarray(v, np.float32)
            for k, v in traverse_util.flatten_dict(params).items()}
    safetensors.numpy.save_file(flat, str(tmp / PARAMS_FILE))
    (tmp / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
    replace_dir.check_replaceable(out, overwrite, OUTPUT_FILES, what)  # nothing else appeared
    replace_dir.swap_into_place(tmp, out)
  except BaseException:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def resolve_checkpoint(path: str | os.PathLike) -> Path:
  """A file path, or a model directory -> the weights file (or shard index) inside it.

  Local paths and buckets (gs://...: converted directories and .safetensors files) alike.
  """
  path = paths.as_path(path)
  if path.is_dir():
    for name in _DIR_CANDIDATES:
      if (path / name).exists():
        return path / name
    raise CheckpointError(f"{path}: directory holds none of {list(_DIR_CANDIDATES)}")
  if not path.exists():
    raise CheckpointError(f"{path}: no such file")
  return path


def hf_config(path: str | os.PathLike) -> dict | None:
  """The `config.json` next to a Hugging Face checkpoint (its `vision_config` if nested)."""
  cfg_path = resolve_checkpoint(path).parent / "config.json"
  if not cfg_path.exists():
    return None
  try:
    cfg = json.loads(cfg_path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
  return cfg.get("vision_config", cfg)


TORCHSCRIPT_HELP = (
    "TorchScript archives (OpenAI's released ViT-*.pt files) can run code stored in the file "
    "when loaded. Safer formats carry the same weights: a .safetensors file (e.g. open_clip's "
    "'open_clip_model.safetensors' or Hugging Face 'openai/clip-vit-base-patch16' "
    "model.safetensors) or a plain state dict saved with torch.save(model.state_dict()) "
    "(read with torch.load(weights_only=True)). If you trust this file (e.g. downloaded from "
    "OpenAI with a matching SHA-256), pass --trust_torchscript (trust_torchscript=True in "
    "Python).")


def read_state_dict(path: str | os.PathLike, *, trust_torchscript: bool = False,
                    allow_nonfinite: bool = False) -> StateDict:
  """Any supported checkpoint file/directory -> flat float32 numpy state dict.

  Args:
    path: weights file, shard index or model directory.
    trust_torchscript: allow `torch.jit.load` on TorchScript archives (runs their code).
    allow_nonfinite: keep tensors holding NaN/inf instead of refusing the file.
  """
  path = resolve_checkpoint(path)
  name = path.name
  if name.endswith(".index.json"):
    sd = _read_sharded(path, trust_torchscript)
  elif name.endswith(".safetensors"):
    sd = _read_safetensors(path)
  else:
    sd = _read_torch(path, trust_torchscript)
  if not allow_nonfinite:
    check_finite(sd, str(path))
  return sd


def check_finite(sd: StateDict, source: str) -> None:
  """Raises CheckpointError naming the tensors that hold NaN/inf."""
  bad = [k for k, v in sd.items()
         if np.issubdtype(v.dtype, np.inexact) and not np.isfinite(v).all()]
  if bad:
    raise CheckpointError(
        f"{source}: {len(bad)} tensors hold non-finite values (NaN/inf), e.g. {bad[:5]}; "
        "the file is corrupt or from a diverged run. Pass --allow_nonfinite "
        "(allow_nonfinite=True) to read it anyway.")


def _read_sharded(index_path: Path, trust_torchscript: bool = False) -> StateDict:
  try:
    weight_map = json.loads(index_path.read_text())["weight_map"]
  except (json.JSONDecodeError, KeyError) as e:
    raise CheckpointError(f"{index_path}: expected a JSON object with a 'weight_map' "
                          f"({type(e).__name__}: {e})") from e
  out: StateDict = {}
  for shard in sorted(set(weight_map.values())):
    shard_path = index_path.parent / shard
    if not shard_path.exists():
      raise CheckpointError(f"{index_path}: shard {shard!r} listed in weight_map is missing")
    part = _read_safetensors(shard_path) if shard.endswith(".safetensors") else _read_torch(
        shard_path, trust_torchscript)
    out.update(part)
  missing = sorted(set(weight_map) - set(out))
  if missing:
    raise CheckpointError(f"{index_path}: tensors listed in weight_map but absent from shards: "
                          f"{missing[:5]}")
  return out


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def _read_safetensors(path: Path) -> StateDict:
  """Parses the safetensors layout directly (8-byte header size, JSON header, raw data).

  The `safetensors` package's numpy reader cannot return bf16, so reading the documented format
  here keeps bf16 checkpoints torch-free; a size check catches truncated downloads.
  """
  data = path.read_bytes()
  try:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
  except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: not a safetensors file (bad header: {e})") from e
  body = memoryview(data)[8 + n:]
  out: StateDict = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
    if dtype is None:
      raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info.get('dtype')}")
    start, end = info["data_offsets"]
    if end > len(body):
      raise CheckpointError(f"{path}: truncated file: tensor {key!r} needs bytes up to {end} of "
                            f"the data section, file has {len(body)}")
    arr = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"])
    out[key] = _to_f32(arr)
  return out


def _is_torchscript(path: Path) -> bool:
  """TorchScript archives are zips with a `constants.pkl` / `code/` next to `data.pkl`."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as zf:
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _read_torch(path: Path, trust_torchscript: bool = False) -> StateDict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError(f"{path}: reading PyTorch files needs torch: "
                          "pip install 'pgvt_jax[convert]' (or use .safetensors)") from e
  if _is_torchscript(path):
    if not trust_torchscript:
      raise CheckpointError(f"{path}: refusing to load a TorchScript archive. {TORCHSCRIPT_HELP}")
    warnings.warn(f"{path} is a TorchScript archive; loading it with torch.jit.load as asked "
                  "(trust_torchscript): it may run code stored in it.", stacklevel=3)
    try:
      sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception as e:  # torch raises RuntimeError for corrupt or truncated archives.
      raise CheckpointError(f"{path}: cannot read TorchScript archive ({e})") from e
  else:
    try:
      sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
      raise CheckpointError(f"{path}: cannot read as a PyTorch state dict with "
                            f"weights_only=True (truncated, or not a weights file?): {e}") from e
  sd = _unwrap(sd, path)
  out: StateDict = {}
  for key, value in sd.items():
    if not isinstance(value, torch.Tensor):
      continue  # e.g. a stored epoch number next to the tensors
    out[key] = _to_f32(value.detach().float().numpy() if value.is_floating_point()
                       else value.numpy())
  return out


def _unwrap(sd, path: Path) -> dict:
  """{'state_dict': {...}} / {'model': ...} and DataParallel's 'module.' prefix -> plain dict."""
  for _ in range(3):
    if isinstance(sd, dict) and not any(hasattr(v, "shape") for v in sd.values()):
      inner = next((sd[k] for k in _WRAPPER_KEYS if isinstance(sd.get(k), dict)), None)
      if inner is None:
        break
      sd = inner
  if not isinstance(sd, dict):
    raise CheckpointError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  return sd


def _to_f32(arr: np.ndarray) -> np.ndarray:
  if np.issubdtype(arr.dtype, np.floating) or arr.dtype == ml_dtypes.bfloat16:
    return np.asarray(arr, np.float32)
  return np.asarray(arr)

