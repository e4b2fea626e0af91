"""A new user's first run, with nothing but the commands the tools print.

From the datasets' own files (tiny fixtures in the published layouts) to a trained checkpoint:
each step runs as its own process from an unrelated working directory, with HOME in a temp
folder so that the default record location (`~/tensorflow_datasets`) is used as-is. The only
edits a user makes are allowed here too: the manual_dir placeholder of a printed build command
is filled in, and `runlocal` is added to the printed config argument (seconds-sized training).
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.dataprep_fixtures import dot_keypoints, write_dot_video, write_text
from tests.test_dataprep_builders import _ntu_skeleton_text

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _run(command: str, home: Path, cwd: Path, ok: bool = True):
  """Runs a printed `python -m ...` command line; returns the finished process."""
  argv = shlex.split(command)
  assert argv[:2] == ["python", "-m"], command
  env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")  # tiny models: compile fast
  r = subprocess.run([sys.executable] + argv[1:], cwd=cwd, env=env, capture_output=True,
                     text=True, timeout=600)
  if ok:
    assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
  return r


def _printed_train_command(stdout: str) -> str:
  lines = stdout.strip().splitlines()
  assert lines[-2].startswith("Train on them with"), stdout[-2000:]
  return lines[-1].strip()


def _runlocal(command: str) -> str:
  """Adds `runlocal` to the command's config argument."""
  def add(m):
    return m.group(0) + ("," if ":" in m.group(0) else ":") + "runlocal"
  out, n = re.subn(r"--config=\S+", add, command, count=1)
  assert n == 1, command
  return out


def _train_and_check(command: str, home: Path, cwd: Path):
  _run(_runlocal(command), home, cwd)
  workdir = cwd / shlex.split(command)[-1].split("=", 1)[1]
  assert (workdir / "metrics.jsonl").is_file()
  assert (workdir / "checkpoints" / "2").is_dir()  # runlocal: 2 steps


def test_custom_videos_build_then_train(tmp_path):
  home, cwd, m = tmp_path / "home", tmp_path / "cwd", tmp_path / "my_videos"
  for d in (home, cwd):
    d.mkdir()
  rows = []
  for i, (name, label) in enumerate((("a", "jump"), ("b", "wave"), ("c", "sit"),
                                     ("d", "jump"), ("e", "wave"))):
    write_dot_video(m / "clips" / f"{name}.mp4", 10)
    kp, score = dot_keypoints(10)
    (m / "poses").mkdir(exist_ok=True)
    np.savez(m / "poses" / f"{name}.npz", keypoint=kp, keypoint_score=score,
             img_shape=np.array([96, 128]))
    rows.append(f"clips/{name}.mp4,{label},poses/{name}.npz")
  write_text(m / "train.csv", ["video,label,keypoints"] + rows[:4])
  write_text(m / "test.csv", rows[4:] + [rows[0]])
  # The build command of docs/data.md ("Your own videos").
  r = _run(f"python -m data_prep.build --dataset=custom --config=coco17 --manual_dir={m} "
           f"--data_dir=~/tensorflow_datasets", home, cwd)
  command = _printed_train_command(r.stdout)
  records = home / "tensorflow_datasets" / "custom_videos" / "coco17" / "1.0.0"
  assert command == (f"python -m pgvt_jax.main --config=configs/custom.py:builder_dir="
                     f"{records} --workdir=workdirs/custom_coco17")
  _train_and_check(command, home, cwd)
  cfg = (cwd / "workdirs" / "custom_coco17" / "config.json").read_text()
  assert '"num_classes": 3' in cfg and '"joints_per_person": 17' in cfg


def test_ntu60_first_run_then_build_then_train(tmp_path):
  home, cwd, m = tmp_path / "home", tmp_path / "cwd", tmp_path / "NTU"
  for d in (home, cwd):
    d.mkdir()
  # Cross-subject: performers 1 and 2 train, 3 is held out. 16:9 videos, Kinect skeletons.
  ids = ["S001C001P001R001A001", "S001C002P001R001A002", "S001C001P002R002A003",
         "S001C003P002R001A004", "S001C001P003R001A001", "S001C002P003R002A002"]
  for vid in ids:
    write_dot_video(m / "nturgb+d_rgb" / f"{vid}_rgb.avi", 10, h=72)
    write_text(m / "nturgb+d_skeletons" / f"{vid}.skeleton", [_ntu_skeleton_text(10)])
  # 1. Training first, as the config's docstring shows: no records yet.
  r = _run("python -m pgvt_jax.main --config=configs/ntu60.py:protocol=xsub,runlocal "
           "--workdir=workdirs/first", home, cwd, ok=False)
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
  build = re.search(r"python -m data_prep\.build .*", r.stderr).group(0)
  assert build == ("python -m data_prep.build --dataset=ntu60 --config=xsub_kinect "
                   "--manual_dir=<your ntu60 files> --data_dir=~/tensorflow_datasets")
  # 2. The printed build command, with the user's folder filled in.
  r = _run(build.replace("<your ntu60 files>", str(m)), home, cwd)
  assert "[train] listed 4, written 4" in r.stdout and "[val] listed 2, written 2" in r.stdout
  command = _printed_train_command(r.stdout)
  assert command == ("python -m pgvt_jax.main --config=configs/ntu60.py:protocol=xsub "
                     "--workdir=workdirs/ntu60_xsub_kinect")
  # 3. The printed training command.
  _train_and_check(command, home, cwd)
