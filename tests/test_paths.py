"""Workdirs, records, weights and outputs on buckets (gs://) and as relative paths.

The bucket is `fake_bucket.fake_gcs()`: epath's own fsspec backend over an in-memory object
store that, like GCS, cannot append; each test runs in a scratch cwd so a URL that went
through pathlib/os (and became a local `gs:/bucket/...` directory) is caught.
"""

from __future__ import annotations

import json
import os

from etils import epath
from flax import traverse_util
import numpy as np
import pytest

from pgvt_jax import evaluation, metric_writer, paths, workdir as workdir_lib
from tests.fake_bucket import fake_gcs, local_gs_dirs

RUN = "gs://bucket/run"


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The fake gs:// store; cwd is a scratch directory checked for local `gs:` leftovers."""
  monkeypatch.chdir(tmp_path)
  with fake_gcs() as store:
    yield store
  assert not local_gs_dirs(tmp_path), "a gs:// URL was treated as a local path"


def _text(store, key: str) -> str:
  return bytes(store[key].getbuffer()).decode()


# ---------------------------------------------------------------------------- paths.as_path
def test_urls_are_kept_and_local_paths_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  for url in (RUN, "s3://b/k/x", RUN + "/"):
    assert paths.as_str(url) == url.rstrip("/")
  assert str(paths.as_path(RUN) / "checkpoints") == RUN + "/checkpoints"
  assert paths.as_path(epath.Path(RUN)) == epath.Path(RUN)
  assert paths.as_path("runs/d48") == epath.Path(tmp_path / "runs" / "d48")
  assert paths.as_path("~/runs") == epath.Path(tmp_path / "home" / "runs")
  assert paths.as_path("a/../b") == epath.Path(tmp_path / "b")
  monkeypatch.chdir("/")  # made absolute once: later chdirs do not move it
  assert paths.as_path(paths.as_path(str(tmp_path / "x"))) == epath.Path(tmp_path / "x")
  assert not paths.is_local(RUN) and paths.is_local("runs/d48")


@pytest.mark.parametrize("bad, match", [("gs:/bucket/run", "one slash lost"),
                                        ("", "empty path"), ("ftp://h/x", "unsupported URL")])
def test_unusable_paths_are_refused_with_the_reason(bad, match):
  with pytest.raises(ValueError, match=match):
    paths.as_path(bad)


# ---------------------------------------------------------------------------- (a) gs:// kept
def test_gs_urls_survive_every_conversion(bucket, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from pgvt_jax import data, retrieval  # pylint: disable=g-import-not-at-top
  from pgvt_jax.data import sources  # pylint: disable=g-import-not-at-top
  assert str(workdir_lib.WorkdirLock(RUN, "train").path) == RUN + "/.lock"
  assert str(metric_writer.MetricWriter(RUN, enabled=False).workdir) == RUN

  records = "gs://bucket/records/d48/1.0.0"
  epath.Path(records, "dataset_info.json").write_text("{}")
  sources.check_records(records)  # found in the bucket: no RecordsNotFoundError
  with pytest.raises(sources.RecordsNotFoundError, match="gs://bucket/nothing"):
    sources.check_records("gs://bucket/nothing")
  opened = []

  def builder_from_directory(d):
    opened.append(d)
    raise RuntimeError("stop")

  monkeypatch.setattr(tfds, "builder_from_directory", builder_from_directory)
  cfg = data.get_config()
  cfg.builder_dir = records
  with pytest.raises(RuntimeError, match="stop"):
    data.open_source(cfg, "train")
  monkeypatch.setattr(retrieval.data, "open_source", lambda c, s: c.builder_dir)
  got, got_cfg, split = retrieval.open_records(records + ":test", cfg)
  assert opened == [records] and got == got_cfg.builder_dir == records and split == "test"


def test_converted_weights_are_read_from_a_bucket(bucket, tmp_path):
  from pgvt_jax import convert_clip, weights_io  # pylint: disable=g-import-not-at-top
  from pgvt_jax.models import clip_vit  # pylint: disable=g-import-not-at-top
  cfg = clip_vit.ClipVitConfig(width=64, layers=1, patch_size=8, image_size=16, output_dim=8)
  rng = np.random.default_rng(0)
  params = traverse_util.unflatten_dict(
      {k: rng.standard_normal(s).astype(np.float32)
       for k, s in convert_clip.expected_shapes(cfg).items()})
  local = convert_clip.save(tmp_path / "clip", cfg, params)
  remote = epath.Path("gs://bucket/weights/clip")
  for name in os.listdir(local):  # what `gsutil cp -r` would do
    (remote / name).write_bytes((local / name).read_bytes())
  got_cfg, got = convert_clip.load(str(remote))
  assert got_cfg == cfg
  np.testing.assert_array_equal(got["proj"], params["proj"])
  with pytest.raises(ValueError, match="converters write to a local directory"):
    weights_io.save_converted(str(remote) + "2", params, {}, overwrite=False, what="x")


def test_outputs_are_written_into_the_bucket(bucket):
  evaluation.save_confusion(np.eye(3, dtype=np.int64), RUN + "/eval_confusion", ["a", "b", "c"])
  with epath.Path(RUN, "eval_confusion.npy").open("rb") as f:
    np.testing.assert_array_equal(np.load(f), np.eye(3))
  assert bytes(bucket["bucket/run/eval_confusion.png"].getbuffer())[:4] == b"\x89PNG"
  w = metric_writer.MetricWriter(RUN, enabled=True)
  w.write(1, {"train/loss": 1.0})
  w.close()
  out = metric_writer.plot_curves(RUN)
  assert str(out) == RUN + "/training_curves.png"
  assert bytes(bucket["bucket/run/training_curves.png"].getbuffer())[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- (b) behaviour
def test_metric_writer_on_a_bucket_uploads_whole_files(bucket):
  w = metric_writer.MetricWriter(RUN, enabled=True)
  w.upload_every_s = 1e9  # only flush uploads
  w.write(1, {"train/loss": 1.0})
  w.write(2, {"train/loss": 0.5})
  assert metric_writer.read_metrics(RUN) == []  # buffered, not appended
  w.flush()
  assert [r["step"] for r in metric_writer.read_metrics(RUN)] == [1, 2]
  w.upload_every_s = 0.0  # every row uploads
  w.write(3, {"eval/top1": float("nan")})
  assert metric_writer.read_metrics(RUN)[-1] == {"step": 3, "eval/top1": "nan"}
  assert w.drop_after(1) == 2
  assert [r["step"] for r in metric_writer.read_metrics(RUN)] == [1]
  w.write_json("final_metrics.json", {"step": 1})
  w.close()
  assert json.loads(_text(bucket, "bucket/run/final_metrics.json")) == {"step": 1}
  epath.Path(RUN, "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "tr')  # torn tail
  w = metric_writer.MetricWriter(RUN, enabled=True)  # repairs, keeps the earlier rows
  w.write(2, {"train/loss": 0.25})
  w.close()
  assert _text(bucket, "bucket/run/metrics.jsonl") == (
      '{"step": 1}\n{"step": 2, "train/loss": 0.25}\n')


def test_workdir_lock_on_a_bucket(bucket):
  lock = workdir_lib.WorkdirLock(RUN, "train").acquire()
  holder = json.loads(_text(bucket, "bucket/run/.lock"))
  assert holder["pid"] == os.getpid() and holder["mode"] == "train"
  with pytest.raises(workdir_lib.WorkdirLockedError, match=f"delete {RUN}/.lock"):
    workdir_lib.WorkdirLock(RUN, "evaluate").acquire()
  lock.release()
  assert "bucket/run/.lock" not in bucket  # a clean exit leaves no lock
  with workdir_lib.WorkdirLock(RUN, "train"):
    assert "bucket/run/.lock" in bucket
  # A lock left by a run that died is never taken over on a bucket: refused, with the way out.
  epath.Path(RUN, ".lock").write_text(json.dumps({"pid": 999999, "host": "gone"}))
  with pytest.raises(workdir_lib.WorkdirLockedError, match="pid 999999 on host gone"):
    workdir_lib.WorkdirLock(RUN, "train").acquire()
  epath.Path(RUN, ".lock").unlink()  # what the message says to do
  workdir_lib.WorkdirLock(RUN, "train").acquire().release()


def test_release_leaves_another_runs_lock_alone(bucket):
  lock = workdir_lib.WorkdirLock(RUN, "train").acquire()
  other = json.dumps({"pid": 1, "host": "other"}) + "\n"
  epath.Path(RUN, ".lock").write_text(other)  # e.g. someone deleted ours and started
  lock.release()
  assert _text(bucket, "bucket/run/.lock") == other


def test_record_config_on_a_bucket(bucket):
  from pgvt_jax.experiment import trainer_config  # pylint: disable=g-import-not-at-top
  config = trainer_config()
  workdir_lib.record_config(RUN, config, mode="train", start_step=None, changed=[])
  config.total_steps = 7
  workdir_lib.record_config(RUN, config, mode="train", start_step=3, changed=["total_steps"])
  workdir_lib.record_config(RUN, config, mode="evaluate", start_step=7, changed=[])
  history = [json.loads(l) for l in _text(bucket, "bucket/run/config_history.jsonl").splitlines()]
  assert [(h["mode"], h["start_step"]) for h in history] == [
      ("train", None), ("train", 3), ("evaluate", 7)]
  assert json.loads(_text(bucket, "bucket/run/config.json"))["total_steps"] == 7


# ---------------------------------------------------------------------------- experiment setup
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  from tests.predict_fixtures import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config(str(tmp_path_factory.mktemp("synthetic")), steps=2)
  config.synthetic_data.update(num_train=16, num_test=8)
  config.data.train_batch_size = config.data.eval_batch_size = 8
  return config


_PARAMS = []  # load_params of the tiny model, compiled once (10 s) for every setup below


def _setup_spy(monkeypatch):
  """setup_experiment with the checkpointer and init_from stubbed (orbax's bucket I/O is
  tensorstore's, not epath's); returns the list of calls each stub saw."""
  from pgvt_jax import experiment  # pylint: disable=g-import-not-at-top
  load_params = experiment.load_params
  monkeypatch.setattr(experiment, "load_params", lambda *a: _PARAMS[0] if _PARAMS else
                      _PARAMS.append(load_params(*a)) or _PARAMS[0])
  seen = {"checkpointer": [], "init_from": []}
  monkeypatch.setattr(experiment.checkpointing, "Checkpointer",
                      lambda workdir, **kw: seen["checkpointer"].append(workdir))
  monkeypatch.setattr(experiment.init_from, "maybe_apply",
                      lambda config, params, *a: seen["init_from"].append(1) or params)
  return experiment, seen


def test_experiment_setup_on_a_bucket_workdir(bucket, tiny, monkeypatch):
  experiment, seen = _setup_spy(monkeypatch)
  exp = experiment.setup_experiment(tiny, RUN, train=False)
  assert str(exp.workdir) == RUN and [str(w) for w in seen["checkpointer"]] == [RUN]
  assert seen["init_from"] == [1]  # no checkpoints/<step> yet: init_from applies
  assert epath.Path(RUN).is_dir()
  epath.Path(RUN, "checkpoints", "5").mkdir(parents=True)
  experiment.setup_experiment(tiny, RUN, train=False)
  assert seen["init_from"] == [1]  # a resumed run keeps its own weights


# ---------------------------------------------------------------------------- (c) relative
def test_relative_workdir_is_absolute_for_the_whole_run(tmp_path, tiny, monkeypatch):
  from pgvt_jax import train  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  experiment, seen = _setup_spy(monkeypatch)
  exp = experiment.setup_experiment(tiny, "runs/a", train=False)
  assert exp.workdir == epath.Path(tmp_path / "runs" / "a") and exp.workdir.is_absolute()
  assert [str(w) for w in seen["checkpointer"]] == [str(tmp_path / "runs" / "a")]

  got = []

  def locked(config, workdir, *rest):
    got.append(workdir)
    assert (workdir / ".lock").exists()
    return {}

  monkeypatch.setattr(train, "_train_locked", locked)
  monkeypatch.setattr(train, "_evaluate_locked", locked)
  monkeypatch.setattr(train.checkpointing, "has_checkpoint", lambda w: True)
  train.train_and_evaluate(tiny, "runs/d48")
  train.evaluate(tiny, "./runs/../runs/d48")
  assert got == [epath.Path(tmp_path / "runs" / "d48")] * 2
