"""The converter never runs a file's code unasked, never keeps poisoned weights, and never
deletes anything that is not its own output."""

import shutil
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

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def openai_tiny():
  return refs.openai_clip(refs.TINY)


@pytest.fixture(scope="module")
def torchscript_file(tmp_path_factory, openai_tiny):
  model, _, _ = openai_tiny
  traced = torch.jit.trace(model, (torch.zeros(1, 3, 64, 64), torch.zeros(1, 8, dtype=torch.long)),
                           check_trace=False)
  path = tmp_path_factory.mktemp("ts") / "ViT-tiny.pt"
  traced.save(str(path))
  return path


def _save_sd(path, sd):
  safetensors.torch.save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
                               sd.items()}, str(path))
  return path


def test_torchscript_needs_an_explicit_opt_in(tmp_path, torchscript_file):
  with pytest.raises(CheckpointError) as err:
    convert_clip.load_any(torchscript_file)
  msg = str(err.value)
  assert str(torchscript_file) in msg and "TorchScript" in msg and "trust_torchscript" in msg
  assert ".safetensors" in msg and "state_dict" in msg  # names the safer formats
  with pytest.raises(CheckpointError, match="trust_torchscript"):
    convert_clip.convert(torchscript_file, tmp_path / "out")
  assert not (tmp_path / "out").exists()
  with pytest.warns(UserWarning, match="TorchScript"):
    cfg, _ = convert_clip.load_any(torchscript_file, trust_torchscript=True)
  assert cfg.width == refs.TINY["width"]


def test_cli_refuses_torchscript_without_the_flag(tmp_path, torchscript_file):
  cmd = [sys.executable, "-m", "pgvt_jax.convert_clip", f"--checkpoint={torchscript_file}",
         f"--output_dir={tmp_path / 'out'}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
  assert proc.returncode != 0 and "--trust_torchscript" in proc.stderr
  assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
  proc = subprocess.run(cmd + ["--trust_torchscript"], cwd=REPO, capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert convert_clip.is_converted_dir(tmp_path / "out")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_are_refused_unless_allowed(tmp_path, openai_tiny, bad):
  _, sd, _ = openai_tiny
  sd = dict(sd)
  w = sd["visual.transformer.resblocks.1.mlp.c_fc.weight"].copy()
  w[3, 5] = bad
  sd["visual.transformer.resblocks.1.mlp.c_fc.weight"] = w
  path = _save_sd(tmp_path / "m.safetensors", sd)
  with pytest.raises(CheckpointError, match=r"non-finite.*resblocks\.1\.mlp\.c_fc\.weight"):
    convert_clip.convert(path, tmp_path / "out")
  assert not (tmp_path / "out").exists()
  out = convert_clip.convert(path, tmp_path / "out", allow_nonfinite=True)
  # A converted directory holding non-finite values is refused at load time too.
  with pytest.raises(CheckpointError, match="non-finite"):
    convert_clip.load(out)
  cfg, params = convert_clip.load(out, allow_nonfinite=True)
  assert not np.isfinite(params["resblocks_1"]["mlp"]["c_fc"]["kernel"]).all()


@pytest.fixture
def converted(tmp_path, openai_tiny):
  _, sd, _ = openai_tiny
  src = _save_sd(tmp_path / "m.safetensors", sd)
  return src, convert_clip.convert(src, tmp_path / "out")


@pytest.mark.parametrize("kind", ["user_dir", "extra_file", "file", "missing_config"])
def test_overwrite_refuses_anything_but_a_converter_output(tmp_path, converted, kind):
  src, _ = converted
  target = tmp_path / "target"
  if kind == "user_dir":
    target.mkdir()
    (target / "thesis.tex").write_text("precious")
  elif kind == "extra_file":
    shutil.copytree(tmp_path / "out", target)
    (target / "notes.txt").write_text("precious")
  elif kind == "file":
    target.write_text("precious")
  else:
    shutil.copytree(tmp_path / "out", target)
    (target / convert_clip.CONFIG_FILE).unlink()
  before = sorted(p.name for p in target.iterdir()) if target.is_dir() else None
  with pytest.raises(FileExistsError, match="not a convert_clip output"):
    convert_clip.convert(src, target, overwrite=True)
  if kind == "file":
    assert target.read_text() == "precious"
  else:
    assert sorted(p.name for p in target.iterdir()) == before
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_overwrite_swaps_the_new_output_in_before_deleting_the_old(tmp_path, converted,
                                                                    monkeypatch):
  src, out = converted
  old_params = convert_clip.load(out)[1]
  removed = []
  real_rmtree = shutil.rmtree

  def spy(path, *args, **kwargs):
    # Whenever anything is deleted, `out` must already be the new, complete output.
    removed.append(Path(path))
    assert Path(path).resolve() != out.resolve()
    assert convert_clip.is_converted_dir(out)
    assert "image_size" in (out / convert_clip.CONFIG_FILE).read_text()
    assert convert_clip.load(out)[0].image_size == 96
    real_rmtree(path, *args, **kwargs)

  monkeypatch.setattr(weights_io.shutil, "rmtree", spy)
  convert_clip.convert(src, out, overwrite=True, image_size=96)
  assert removed  # the old output was removed, after the swap
  assert convert_clip.load(out)[0].image_size == 96
  assert old_params["positional_embedding"].shape[0] == 17
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_failed_overwrite_keeps_the_old_output(tmp_path, converted, monkeypatch):
  src, out = converted

  def boom(*a, **k):
    raise OSError("disk full")

  monkeypatch.setattr(weights_io.safetensors.numpy, "save_file", boom)
  with pytest.raises(OSError, match="disk full"):
    convert_clip.convert(src, out, overwrite=True, image_size=96)
  assert convert_clip.load(out)[0].image_size == 64
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
