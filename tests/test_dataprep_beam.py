"""An Apache Beam build (DirectRunner, worker processes) writes the same records as the local
build: same examples in the same order and shards, every field equal (frames as stored JPEG
bytes). Files are not compared byte for byte: TFDS serializes each example's feature map
without `deterministic=True`, and protobuf orders map entries differently in every process, so
even two local builds differ in bytes (same size, same content). Needs the `[beam]` extra
(apache-beam); skipped where it is not installed.
"""

import os
import pickle

import numpy as np

import pytest
import tensorflow_datasets as tfds

from data_prep import build
from data_prep import builder as builder_lib
from data_prep import records
from data_prep.datasets import Kinetics400
from tests.test_dataprep_builders import _diving48_manual

tfds.disable_progress_bar()


def _records(b, split):
  """The split's records in file order, every field as stored (frames as JPEG bytes)."""
  src = tfds.builder_from_directory(b.data_dir).as_data_source(
      split, decoders={"frames": records.RawFrames()})
  return [src[i] for i in range(len(src))]


def test_pickled_builder_keeps_its_arguments(tmp_path):
  """Beam workers get a pickled builder; TFDS alone would rebuild it with default options."""
  opts = builder_lib.BuildOptions(short_side=48, max_frames=7, progress=False)
  b = Kinetics400(data_dir=str(tmp_path), options=opts, box_thr=0.3)
  copy = pickle.loads(pickle.dumps(b))
  assert copy.options == opts and copy.box_thr == 0.3 and copy.data_dir == b.data_dir


def test_beam_build_equals_local_build(tmp_path):
  if os.environ.get("PGVT_REQUIRE_BEAM"):  # .ci/run's Beam venv: a skip would hide a break
    import apache_beam  # pylint: disable=g-import-not-at-top,unused-import
  else:
    pytest.importorskip("apache_beam")
  manual, _ = _diving48_manual(tmp_path)  # good, messy, skipped and bad-label videos
  opts = builder_lib.BuildOptions(short_side=48, progress=False, num_workers=2)
  local, local_summary = build.build_dataset("diving48", str(tmp_path / "local"), str(manual),
                                             options=opts)
  beamed, beam_summary = build.build_dataset(
      "diving48", str(tmp_path / "beam"), str(manual), options=opts,
      beam_options="--runner=DirectRunner --direct_num_workers=2 "
                   "--direct_running_mode=multi_processing")  # workers unpickle the builder
  assert beamed._beam and not local._beam  # pylint: disable=protected-access
  for split in ("train", "test"):
    ours, theirs = _records(local, split), _records(beamed, split)
    assert [r["video_id"] for r in theirs] == [r["video_id"] for r in ours]
    for a, b in zip(ours, theirs):  # example by example, field by field
      assert a.keys() == b.keys()
      for key in a:
        if key == "frames":
          assert list(a[key]) == list(b[key]), (a["video_id"], key)  # JPEG bytes
        else:
          np.testing.assert_array_equal(a[key], b[key], err_msg=f"{a['video_id']} {key}")
  assert beam_summary.to_json() == local_summary.to_json()
  assert beam_summary.splits["train"].written == 4
  assert len(beam_summary.splits["train"].skipped) == 3
  info_l = tfds.builder_from_directory(local.data_dir).info
  info_b = tfds.builder_from_directory(beamed.data_dir).info
  assert info_b.metadata["build_summary"] == info_l.metadata["build_summary"]
  assert {k: v.shard_lengths for k, v in info_b.splits.items()} == {
      k: v.shard_lengths for k, v in info_l.splits.items()}
  assert not [f for f in os.listdir(beamed.data_dir) if "beam_report" in f]
