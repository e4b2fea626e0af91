"""An Apache Beam build (DirectRunner) writes the same records as the local build.

Needs the `[beam]` extra (apache-beam); skipped where it is not installed.
"""

import os

import pytest
import tensorflow_datasets as tfds

beam = pytest.importorskip("apache_beam")

from data_prep import build  # pylint: disable=g-import-not-at-top
from data_prep import builder as builder_lib  # pylint: disable=g-import-not-at-top
from tests.test_dataprep_builders import _diving48_manual  # pylint: disable=g-import-not-at-top

tfds.disable_progress_bar()


def _files(b):
  root = b.data_dir
  return {f: os.path.join(root, f) for f in sorted(os.listdir(root))
          if ".array_record" in f}


def test_beam_build_equals_local_build(tmp_path):
  manual, _ = _diving48_manual(tmp_path)  # good, messy, skipped and bad-label videos
  opts = builder_lib.BuildOptions(short_side=48, progress=False, num_workers=2)
  local, local_summary = build.build_dataset("diving48", str(tmp_path / "local"), str(manual),
                                             options=opts)
  beamed, beam_summary = build.build_dataset(
      "diving48", str(tmp_path / "beam"), str(manual), options=opts,
      beam_options="--runner=DirectRunner --direct_num_workers=2")
  assert beamed._beam and not local._beam  # pylint: disable=protected-access
  files = _files(local)
  assert files and list(files) == list(_files(beamed))
  for name, path in files.items():  # the ArrayRecord shards, byte for byte
    with open(path, "rb") as f, open(_files(beamed)[name], "rb") as g:
      assert f.read() == g.read(), name
  assert beam_summary.to_json() == local_summary.to_json()
  assert beam_summary.splits["train"].written == 4
  assert len(beam_summary.splits["train"].skipped) == 3
  info_l = tfds.builder_from_directory(local.data_dir).info
  info_b = tfds.builder_from_directory(beamed.data_dir).info
  assert info_b.metadata["build_summary"] == info_l.metadata["build_summary"]
  assert {k: v.shard_lengths for k, v in info_b.splits.items()} == {
      k: v.shard_lengths for k, v in info_l.splits.items()}
  assert not [f for f in os.listdir(beamed.data_dir) if "beam_report" in f]
