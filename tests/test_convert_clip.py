"""Converter round trips over every file format people get CLIP weights in, and bad input."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from pgvt_jax import convert_clip, weights_io
from pgvt_jax.weights_io import CheckpointError
from tests import clip_torch_refs as refs
from tests.conftest import REALDATA

REAL = REALDATA if REALDATA.is_dir() else None
TOL = dict(atol=1e-4, rtol=1e-4)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images():
  return refs.natural_images(64, REAL)


@pytest.fixture(scope="module")
def openai_tiny():
  return refs.openai_clip(refs.TINY)


def _no_leftovers(parent: Path):
  assert not [p for p in parent.iterdir() if ".tmp-" in p.name], list(parent.iterdir())


def test_cli_round_trip_openai_state_dict(tmp_path, openai_tiny, images):
  """PyTorch file -> CLI -> directory -> load -> embeddings equal to the PyTorch model's."""
  model, _, run = openai_tiny
  ckpt = tmp_path / "clip_tiny.pt"
  torch.save(model.state_dict(), ckpt)
  out = tmp_path / "converted"
  proc = subprocess.run([sys.executable, "-m", "pgvt_jax.convert_clip", f"--checkpoint={ckpt}",
                         f"--output_dir={out}"], cwd=REPO, capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  cfg, params = convert_clip.load(out)
  assert cfg.activation == "quick_gelu" and cfg.output_dim == refs.TINY["out"]
  info = json.loads((out / "config.json").read_text())
  assert info["source_layout"] == "openai"
  np.testing.assert_allclose(convert_clip.encode_image(out, images), run(images)["embedding"],
                             **TOL)
  # Same answer straight from the PyTorch file.
  np.testing.assert_allclose(convert_clip.encode_image(ckpt, images), run(images)["embedding"],
                             **TOL)
  _no_leftovers(tmp_path)


def test_cli_reports_errors_cleanly(tmp_path):
  bad = tmp_path / "bad.safetensors"
  safetensors.torch.save_file({"foo.weight": torch.zeros(2, 2)}, str(bad))
  proc = subprocess.run([sys.executable, "-m", "pgvt_jax.convert_clip", f"--checkpoint={bad}",
                         f"--output_dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True,
                        text=True, check=False)
  assert proc.returncode != 0
  assert "unknown key layout" in proc.stderr and "bad.safetensors" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "out").exists()


def test_torchscript_archive(tmp_path, openai_tiny, images):
  """OpenAI's released .pt files are traced TorchScript archives of the full CLIP model."""
  model, _, run = openai_tiny
  text = torch.zeros(1, 8, dtype=torch.long)
  traced = torch.jit.trace(model, (torch.zeros(1, 3, 64, 64), text), check_trace=False)
  ckpt = tmp_path / "ViT-tiny.pt"
  traced.save(str(ckpt))
  with pytest.raises(Exception):  # the safe loader refuses TorchScript...
    torch.load(str(ckpt), weights_only=True)
  with pytest.warns(UserWarning, match="TorchScript"):  # ...so jit.load, when trusted
    cfg, params = convert_clip.load_any(ckpt, trust_torchscript=True)
  out = convert_clip.save(tmp_path / "conv", cfg, params)
  np.testing.assert_allclose(convert_clip.encode_image(out, images), run(images)["embedding"],
                             **TOL)


def test_fp16_weights_are_upcast(tmp_path, openai_tiny, images):
  model, _, _ = openai_tiny
  half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
  ckpt = tmp_path / "half.pt"
  torch.save(half, ckpt)
  # Reference: the PyTorch model computing in fp32 with the fp16-rounded weights.
  ref_model, _, ref_run = refs.openai_clip(refs.TINY)
  ref_model.load_state_dict({k: v.float() for k, v in half.items()})
  cfg, params = convert_clip.load_any(ckpt)
  assert params["conv1"]["kernel"].dtype == np.float32
  out = convert_clip.encode_image(ckpt, images)
  np.testing.assert_allclose(out, ref_run(images)["embedding"], **TOL)


@pytest.mark.parametrize("quickgelu", [True, False])
def test_open_clip_files(tmp_path, images, quickgelu):
  """open_clip checkpoints: .bin with a training wrapper and 'module.' prefix; .safetensors."""
  model, _, run = refs.open_clip_tower(refs.TINY, quickgelu)
  sd = {f"module.visual.{k}": v for k, v in model.state_dict().items()}
  torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "epoch_3.pt")
  safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                              str(tmp_path / "open_clip_model.safetensors"))
  act = "quick_gelu" if quickgelu else "gelu"
  for path in (tmp_path / "epoch_3.pt", tmp_path / "open_clip_model.safetensors", tmp_path):
    out = convert_clip.convert(path, tmp_path / f"out_{path.name}", activation=act)
    np.testing.assert_allclose(convert_clip.encode_image(out, images), run(images)["embedding"],
                               **TOL)


def test_hf_save_pretrained_dirs(tmp_path, images):
  """HF model dirs: single safetensors, sharded index.json, .bin; activation from config.json."""
  model, _, run = refs.hf_clip(refs.TINY, quickgelu=False)
  single, sharded = tmp_path / "single", tmp_path / "sharded"
  model.save_pretrained(single)
  model.save_pretrained(sharded, max_shard_size="200KB")
  assert (sharded / "model.safetensors.index.json").exists()
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
  (bin_dir / "config.json").write_text((single / "config.json").read_text())
  for path in (single, sharded, bin_dir):
    cfg, _ = convert_clip.load_any(path)
    assert cfg.activation == "gelu"  # read from config.json, not assumed
    np.testing.assert_allclose(convert_clip.encode_image(path, images), run(images)["embedding"],
                               **TOL)


def test_hf_unprefixed_keys_and_bf16(tmp_path, images):
  """transformers v5 CLIPVisionModel keys carry no 'vision_model.' prefix; bf16 reads torch-free."""
  model, sd, _ = refs.hf_clip(refs.TINY)
  plain = {k.replace("vision_model.", ""): torch.from_numpy(v) for k, v in sd.items()}
  safetensors.torch.save_file({k: v.bfloat16() for k, v in plain.items()},
                              str(tmp_path / "model.safetensors"))
  read = weights_io.read_state_dict(tmp_path / "model.safetensors")
  assert all(v.dtype == np.float32 for v in read.values())
  bf16_rounded = {k: v.bfloat16().float() for k, v in plain.items()}
  np.testing.assert_array_equal(read["pre_layrnorm.weight"],
                                bf16_rounded["pre_layrnorm.weight"].numpy())
  cfg, _ = convert_clip.load_any(tmp_path / "model.safetensors", activation="quick_gelu")
  assert cfg.width == refs.TINY["width"] and cfg.output_dim == refs.TINY["out"]


def test_image_size_option_and_mismatch_error(tmp_path, openai_tiny):
  model, _, _ = openai_tiny
  torch.save(model.state_dict(), tmp_path / "m.pt")
  out = convert_clip.convert(tmp_path / "m.pt", tmp_path / "c96", image_size=96)
  cfg, params = convert_clip.load(out)
  assert cfg.image_size == 96 and params["positional_embedding"].shape == (1 + 36, 128)
  with pytest.raises(ValueError, match=r"expected \(B, 96, 96, 3\)"):
    convert_clip.encode_image(out, np.zeros((1, 64, 64, 3), np.float32))
  with pytest.raises(FileExistsError):
    convert_clip.convert(tmp_path / "m.pt", out)


# ----------------------------------------------------------------------------- bad input
def _save_sd(path, sd):
  safetensors.torch.save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
                               sd.items()}, str(path))
  return path


@pytest.mark.parametrize("case", ["missing", "extra", "shape", "unknown"])
def test_bad_state_dicts_name_the_keys(tmp_path, openai_tiny, case):
  _, sd, _ = openai_tiny
  sd = dict(sd)
  if case == "missing":
    del sd["visual.transformer.resblocks.1.mlp.c_fc.bias"]
    match = r"missing.*visual\.transformer\.resblocks\.1\.mlp\.c_fc\.bias"
  elif case == "extra":
    sd["visual.transformer.resblocks.0.ls_1.gamma"] = np.ones(128, np.float32)
    match = r"unexpected.*ls_1\.gamma"
  elif case == "shape":
    sd["visual.ln_pre.weight"] = np.ones(129, np.float32)
    match = r"visual\.ln_pre\.weight.*\(129,\).*expected \(128,\)"
  else:
    sd = {"encoder.weight": np.ones((4, 4), np.float32)}
    match = r"unknown key layout.*encoder\.weight"
  path = _save_sd(tmp_path / f"{case}.safetensors", sd)
  with pytest.raises(CheckpointError, match=match) as err:
    convert_clip.convert(path, tmp_path / "out")
  assert str(path) in str(err.value)
  assert not (tmp_path / "out").exists()
  _no_leftovers(tmp_path)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_truncated_files(tmp_path, openai_tiny, suffix):
  model, sd, _ = openai_tiny
  path = tmp_path / f"m{suffix}"
  if suffix == ".bin":
    torch.save(model.state_dict(), path)
  else:
    _save_sd(path, sd)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(CheckpointError, match=str(path)):
    convert_clip.convert(path, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_pickled_code_is_never_run(tmp_path):
  """A .bin whose unpickling would call os.system is refused (weights_only=True)."""
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = tmp_path / "pytorch_model.bin"
  with open(path, "wb") as f:
    pickle.dump({"conv1.weight": Evil()}, f)
  with pytest.raises(CheckpointError, match="weights_only"):
    weights_io.read_state_dict(path)
  assert not marker.exists()


def test_failure_while_writing_leaves_nothing(tmp_path, openai_tiny, monkeypatch):
  _, sd, _ = openai_tiny
  cfg, params = convert_clip.convert_state_dict(sd)

  def boom(*a, **k):
    raise OSError("disk full")
  monkeypatch.setattr(weights_io.safetensors.numpy, "save_file", boom)
  with pytest.raises(OSError, match="disk full"):
    convert_clip.save(tmp_path / "out", cfg, params)
  assert not (tmp_path / "out").exists()
  _no_leftovers(tmp_path)


def test_load_rejects_a_mismatched_directory(tmp_path, openai_tiny):
  _, sd, _ = openai_tiny
  cfg, params = convert_clip.convert_state_dict(sd)
  out = convert_clip.save(tmp_path / "c", cfg, params)
  info = json.loads((out / "config.json").read_text())
  info["architecture"]["layers"] = 3
  (out / "config.json").write_text(json.dumps(info))
  with pytest.raises(CheckpointError, match="do not match config.json"):
    convert_clip.load(out)
  with pytest.raises(CheckpointError, match="not a converted CLIP directory"):
    convert_clip.load(tmp_path)
