"""Configs load from any working directory (also after `pip install`); training without
records stops with the directory it read and the build command; the commands the tools print
agree with the configs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from data_prep import commands
from pgvt_jax import config_files, data

REPO = Path(__file__).resolve().parents[1]


def test_resolve_existing_path_and_package_lookup(tmp_path, monkeypatch):
  own = tmp_path / "mine.py"
  own.write_text("def get_config(): return {}\n")
  monkeypatch.chdir(tmp_path)
  assert config_files.resolve("mine.py:a=1") == "mine.py:a=1"
  # Not in the cwd: found in the importable `configs` package, argument kept.
  resolved = config_files.resolve("configs/diving48.py:runlocal,variant=pose_only")
  path, arg = resolved.split(":", 1)
  assert Path(path) == config_files.package_dir() / "diving48.py" and Path(path).is_file()
  assert arg == "runlocal,variant=pose_only"
  assert Path(config_files.resolve("configs/ablations/table4.py")).is_file()
  with pytest.raises(ValueError, match=r"'configs/nope.py' not found.*configs/diving48.py"):
    config_files.resolve("configs/nope.py")


def test_missing_records_error_names_dir_and_command(tmp_path):
  cfg = ml_collections.ConfigDict(dict(builder_dir=str(tmp_path / "d" / "ntu60_2d" / "xsub"
                                                       / "1.0.0"), name="", data_dir="",
                                       skeleton=""))
  with pytest.raises(data.RecordsNotFoundError) as e:
    data.open_source(cfg, "train")
  msg = str(e.value)
  assert cfg.builder_dir in msg and "does not exist" in msg
  assert (f"python -m data_prep.build --dataset=ntu60 --config=xsub --manual_dir=<your ntu60 "
          f"files> --data_dir={tmp_path / 'd'}") in msg
  (tmp_path / "d" / "ntu60_2d" / "xsub" / "1.0.0").mkdir(parents=True)  # empty: same error
  with pytest.raises(data.RecordsNotFoundError, match="holds no dataset_info.json"):
    data.open_source(cfg, "train")


def test_commands_agree_with_configs():
  """Each dataset config reads the directory `data_prep.build` writes by default, and the
  build command printed for that directory names the dataset/config it came from."""
  import importlib  # pylint: disable=g-import-not-at-top
  names = commands.builder_names()
  for (dataset, builder_config), cfg_file in commands.TRAIN_CONFIGS.items():
    path, _, arg = cfg_file.partition(":")
    module = importlib.import_module(path[:-3].replace("/", "."))
    builder_dir = module.get_config(arg or None).data.builder_dir
    name, config, _ = builder_dir.split("/")[-3:]
    assert names[name] == dataset and config == builder_config, cfg_file
    assert builder_dir.startswith(commands.DEFAULT_DATA_DIR + "/")
    assert commands.build_command(builder_dir) == (
        f"python -m data_prep.build --dataset={dataset} --config={builder_config} "
        f"--manual_dir=<your {dataset} files> --data_dir={commands.DEFAULT_DATA_DIR}")
    default = os.path.expanduser(builder_dir)
    assert commands.train_command(dataset, builder_config, default, "w") == (
        f"python -m pgvt_jax.main --config={cfg_file} --workdir=w")
    assert commands.train_command(dataset, builder_config, "/x/" + builder_dir[2:], "w") == (
        f"python -m pgvt_jax.main --config={cfg_file} "
        f"--config.data.builder_dir=/x/{builder_dir[2:]} --workdir=w")


def test_every_dataset_config_is_printed():
  """Each protocol of the daily-living configs is reachable from the records it reads."""
  from configs import adl_common  # pylint: disable=g-import-not-at-top
  names = commands.builder_names()
  printed = {(d, c): f for (d, c), f in commands.TRAIN_CONFIGS.items()}
  for dataset, spec in adl_common.DATASETS.items():
    for protocol, (builder_config, *_) in spec["protocols"].items():
      assert names[spec["builder"]] == dataset
      assert printed[(dataset, builder_config)].startswith(f"configs/{dataset}.py:protocol=")


@pytest.mark.e2e
@pytest.mark.slow
def test_installed_configs_from_another_directory(tmp_path):
  """`pip install` (no deps) into a folder, run from an unrelated cwd: `configs/...` loads from
  the installed package, and the run without records exits 1 with a message, no traceback."""
  src = tmp_path / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, src)
  for name in ("pgvt_jax", "data_prep", "configs"):
    shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                  "--no-build-isolation", "--target", str(site), str(src)],
                 check=True, capture_output=True)
  assert (site / "configs" / "diving48.py").is_file()
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
  missing = cwd / "tfds" / "diving48" / "v2" / "1.0.0"
  r = subprocess.run([sys.executable, "-m", "pgvt_jax.main",
                      "--config=configs/diving48.py:runlocal", "--workdir=w",
                      f"--config.data.builder_dir={missing}"],
                     cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1, r.stderr[-3000:]
  assert "No module named" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
  assert f"no records: config.data.builder_dir='{missing}'" in r.stderr
  assert (f"python -m data_prep.build --dataset=diving48 --config=v2 "
          f"--manual_dir=<your diving48 files> --data_dir={cwd / 'tfds'}") in r.stderr


def test_custom_config_reads_the_records(tmp_path):
  """configs/custom.py takes class count, joint layout, eval split and flip safety from the
  records it is given; without records it still loads (training then names the directory)."""
  from configs import custom  # pylint: disable=g-import-not-at-top
  from data_prep import build, builder as builder_lib  # pylint: disable=g-import-not-at-top
  from data_prep.datasets import synthetic  # pylint: disable=g-import-not-at-top
  from tests.dataprep_fixtures import write_dot_video, write_text  # pylint: disable=g-import-not-at-top
  m = tmp_path / "m"
  for name in ("a", "b", "c"):
    write_dot_video(m / f"{name}.mp4", 3)
  write_text(m / "train.csv", ["a.mp4,run", "b.mp4,sit"])
  write_text(m / "val.csv", ["c.mp4,eat"])
  b, _ = build.build_dataset("custom", str(tmp_path / "d"), str(m), "openpose18",
                             builder_lib.BuildOptions(short_side=32, progress=False))
  c = custom.get_config(f"builder_dir={b.data_dir},runlocal")
  assert c.model.num_classes == 3 and c.model.joints_per_person == 18
  assert c.data.skeleton == "openpose18" and c.data.eval_split == "val" and c.data.flip
  assert c.data.builder_dir == str(b.data_dir) and c.total_steps == 2
  syn = synthetic.build(tmp_path / "s", num_train=2, num_test=2, num_classes=2,
                        num_frames=2, image_size=32)
  c = custom.get_config(f"builder_dir={syn}")
  assert c.model.num_classes == 2 and c.data.eval_split == "test" and not c.data.flip
  c = custom.get_config(f"builder_dir={tmp_path / 'none'}")
  assert c.data.builder_dir == str(tmp_path / "none")
  with pytest.raises(data.RecordsNotFoundError):
    data.open_source(c.data, c.data.train_split)
