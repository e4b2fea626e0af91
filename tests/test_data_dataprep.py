"""End to end: dataset files in their published layouts -> data_prep's TFDS
builders -> pgvt_jax.data batches. Keypoints must still land on the dot the
fixture videos show, after H.264, resizing, JPEG, cropping and normalising."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import builder as builder_lib
from data_prep.datasets import synthetic
from data_prep.datasets import Diving48
from pgvt_jax import data
from tests.dataprep_fixtures import (mmaction_ann, write_dot_video,
                                     write_json, write_pickle)

tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def diving48_dir(tmp_path_factory):
  """Diving48 V2 layout: 4 train + 2 test dot videos, mmaction2 pose pickle."""
  root = tmp_path_factory.mktemp("diving48")
  m = root / "manual"
  names = [f"Back+{i}som+NoTwis+TUCK" for i in range(48)]
  write_json(m / "Diving48_vocab.json", [n.split("+") for n in names])
  videos = {"a": (3, 12), "b": (5, 20), "c": (3, 7), "d": (9, 16),
            "t1": (7, 15), "t2": (1, 6)}  # name: (label, frames)
  anns = [mmaction_ann(v, label, n, persons=2)
          for v, (label, n) in videos.items()]
  write_pickle(m / "diving48_2d.pkl", {"split": {}, "annotations": anns})
  for v, (_, n) in videos.items():
    write_dot_video(m / "rgb" / f"{v}.mp4", n)
  entry = lambda v: {"vid_name": v, "label": videos[v][0], "start_frame": 0,
                     "end_frame": videos[v][1]}
  write_json(m / "Diving48_V2_train.json", [entry(v) for v in "abcd"])
  write_json(m / "Diving48_V2_test.json", [entry("t1"), entry("t2")])
  b = Diving48(data_dir=str(root / "data"), options=builder_lib.BuildOptions(
      short_side=48, progress=False, num_workers=1))
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(m)))
  return str(b.data_dir)


def _config(builder_dir, **kw):
  cfg = data.get_config()
  cfg.update(dict(builder_dir=builder_dir, num_frames=4, pose_frames=8,
                  image_size=32, short_side=32, max_persons=2,
                  train_batch_size=2, eval_batch_size=4, num_threads=1,
                  prefetch=1))
  cfg.update(kw)
  return cfg


def test_diving48_records_train_batches(diving48_dir):
  cfg = _config(diving48_dir)
  src = data.open_source(cfg, "train")
  assert src.skeleton.name == "coco17" and src.num_classes == 48
  assert len(src) == 4 and src.flip_safe
  it = data.make_train_iterator(cfg)
  for _ in range(4):
    b = next(it)
    assert b["frames"].shape == (2, 4, 32, 32, 3)
    assert b["pose"].shape == (2, 8, 34, 2)
    for i, vi in enumerate(b["video_index"]):
      assert b["label"][i] == src.records[int(vi)]["label"]
  assert b["pose_mask"].any()


def test_diving48_eval_keypoints_on_the_dot(diving48_dir):
  # 1 pose frame per video frame, both at segment centres: the same frames.
  cfg = _config(diving48_dir, pose_frames=4, eval_crops=3)
  it, info = data.make_eval_iterator(cfg)
  assert (info.num_videos, info.num_views) == (2, 3)
  checked = 0
  for b in it:
    rgb = b["frames"].astype(np.float32)  # uint8 pixels
    for r in np.nonzero(b["valid"])[0]:
      for t in range(4):
        for j in np.nonzero(b["pose_mask"][r, t])[0]:
          col, row = (b["pose"][r, t, j] * 32).astype(int)
          if j < 17:  # person 0 is on the dot
            assert rgb[r, t, row, col].mean() > 150, (r, t, j)
            checked += 1
          else:  # person 1 stands 40 source px right of it, on black
            assert rgb[r, t, row, col].mean() < 60, (r, t, j)
  assert checked > 100


def test_synthetic_records_and_flip_guard(tmp_path):
  builder_dir = synthetic.build(str(tmp_path), num_train=6, num_test=3,
                                num_classes=3, num_frames=8, image_size=40,
                                num_workers=1)
  cfg = _config(builder_dir, max_persons=1, flip=True)
  with pytest.raises(ValueError, match="config.data.flip"):
    data.make_train_iterator(cfg)
  cfg.flip = False
  b = next(data.make_train_iterator(cfg))
  assert b["pose"].shape == (2, 8, 17, 2)
  it, info = data.make_eval_iterator(cfg)
  rows = sum(int(x["valid"].sum()) for x in it)
  assert rows == info.num_rows == 3 * 3
