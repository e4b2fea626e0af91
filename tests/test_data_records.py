"""The pipeline on TFDS ArrayRecord records (the data contract's schema),
written here by a minimal builder: frames stay JPEG until sampled."""

import inspect
import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils
from data_prep import skeletons

from pgvt_jax import data

LW = skeletons.COCO17.index("left_wrist")
CLASSES = ("jump", "spin", "wave")


def _jpeg(frame):
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def _example(i):
  """Video i: 6+3i grey frames, a red dot at the left wrist of person 0.

  The dot stays put in training videos (any pose frame then matches any
  video frame) and jumps every frame in test videos (i >= 5).
  """
  t, h, w = 6 + 3 * i, 48, 64
  rng = np.random.default_rng(i)
  frames = np.full((t, h, w, 3), 128, np.uint8)
  kp = np.zeros((t, 2, 17, 2), np.float32)
  score = np.zeros((t, 2, 17), np.float32)
  x, y = rng.integers(8, w - 8), rng.integers(8, h - 8)
  for f in range(t):
    if i >= 5:
      x, y = rng.integers(8, w - 8), rng.integers(8, h - 8)
    frames[f, y - 3:y + 4, x - 3:x + 4] = (255, 0, 0)
    kp[f, 0, LW] = (x + 0.5, y + 0.5)  # centre of pixel (x, y)
    score[f, 0, LW] = 0.9
  return {"video_id": f"vid{i}", "label": i % 3,
          "frames": [_jpeg(f) for f in frames],
          "frame_indices": np.arange(t, dtype=np.int32) * 2,
          "keypoints": kp, "keypoint_score": score, "fps": np.float32(12.5),
          "original_size": np.array([96, 128], np.int32)}


class DotsTiny(tfds.core.GeneratorBasedBuilder):
  """The contract's features; joint layout in metadata["joint_layout"]."""
  VERSION = tfds.core.Version("1.0.0")

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default needs `importlib_resources` (not installed) for classes
    # defined in packages; the file of the class is the answer.
    return epath.Path(inspect.getfile(cls))

  def _info(self):
    zlib = tfds.features.Encoding.ZLIB
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "video_id": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=list(CLASSES)),
            "frames": tfds.features.Sequence(tfds.features.Image(
                shape=(None, None, 3), encoding_format="jpeg")),
            "frame_indices": tfds.features.Tensor(shape=(None,),
                                                  dtype=np.int32),
            "keypoints": tfds.features.Tensor(
                shape=(None, None, 17, 2), dtype=np.float32, encoding=zlib),
            "keypoint_score": tfds.features.Tensor(
                shape=(None, None, 17), dtype=np.float32, encoding=zlib),
            "fps": tfds.features.Scalar(dtype=np.float32),
            "original_size": tfds.features.Tensor(shape=(2,),
                                                  dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(joint_layout="coco17"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(range(5)),
            "test": self._generate_examples(range(5, 8))}

  def _generate_examples(self, ids):
    for i in ids:
      yield f"vid{i}", _example(i)


@pytest.fixture(scope="module")
def builder_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  builder = DotsTiny(data_dir=str(root), file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_dir), str(root)


def _config(builder_dir, **kw):
  cfg = data.get_config()
  cfg.update(dict(builder_dir=builder_dir, num_frames=4, pose_frames=12,
                  image_size=32, short_side=32, crop_area=(0.4, 1.0),
                  max_persons=2, train_batch_size=2, eval_batch_size=4,
                  num_threads=2, prefetch=2))
  cfg.update(kw)
  return cfg


def test_open_source_reads_layout_labels_and_jpeg_frames(builder_dir):
  src = data.open_source(_config(builder_dir[0]), "train")
  assert src.skeleton is skeletons.COCO17
  assert src.num_classes == 3 and src.class_names == CLASSES
  assert len(src) == 5
  rec = src.records[0]
  assert isinstance(rec["frames"][0], bytes)  # not decoded on access
  assert rec["keypoints"].shape[1:] == (2, 17, 2)


def _dot_hits(batch, rows, num_frames):
  """Asserts every visible left wrist sits on red; returns how many."""
  rgb = batch["frames"] / 255.0  # uint8 pixels
  hits = 0
  for b in rows:
    for t in range(num_frames):
      if batch["pose_mask"][b, t, LW]:
        col, row = (batch["pose"][b, t, LW] * 32).astype(int)
        np.testing.assert_allclose(rgb[b, t, row, col] * 255, (255, 0, 0),
                                   atol=45)
        hits += 1
  return hits


def test_train_batches_from_records_keypoints_on_dots(builder_dir):
  cfg = _config(builder_dir[0])
  src = data.open_source(cfg, "train")
  it = data.make_train_iterator(cfg)
  hits = 0
  for _ in range(8):
    batch = next(it)
    assert batch["frames"].shape == (2, 4, 32, 32, 3)
    assert batch["pose"].shape == (2, 12, 34, 2)
    for b in range(2):
      rec = src.records[int(batch["video_index"][b])]
      assert batch["label"][b] == rec["label"]
    # Static dots: pose frame 3i lies in segment i like video frame i.
    batch["pose"], batch["pose_mask"] = (batch["pose"][:, ::3],
                                         batch["pose_mask"][:, ::3])
    hits += _dot_hits(batch, range(2), 4)
  assert hits > 10


def test_eval_views_from_records_keypoints_on_dots(builder_dir):
  # pose_frames == num_frames and centre sampling: pose frame i is video
  # frame i, so each visible left wrist must sit on the red dot.
  cfg = _config(builder_dir[0], pose_frames=4, eval_crops=3)
  it, info = data.make_eval_iterator(cfg)
  assert (info.num_videos, info.num_views, info.num_batches) == (3, 3, 3)
  checked = sum(_dot_hits(b, np.nonzero(b["valid"])[0], 4) for b in it)
  assert checked > 10


def test_worker_process_reads_records_like_the_main_process(builder_dir):
  cfg = _config(builder_dir[0], num_threads=0)
  in_process = data.make_train_iterator(cfg)
  expected = [next(in_process), next(in_process)]
  cfg.num_workers = 1  # the tfds source and processor travel by pickle
  it = data.make_train_iterator(cfg)
  try:
    for want in expected:
      got = next(it)
      for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  finally:
    it.close()


def test_name_and_data_dir_open_the_same_dataset(builder_dir):
  cfg = _config("", name="dots_tiny", data_dir=builder_dir[1])
  src = data.open_source(cfg, "test")
  assert len(src) == 3 and src.skeleton.name == "coco17"


def test_missing_split_and_layout_errors(builder_dir):
  with pytest.raises(ValueError, match="no split 'val'"):
    data.open_source(_config(builder_dir[0]), "val")
  with pytest.raises(ValueError, match="unknown skeleton"):
    data.open_source(_config(builder_dir[0], skeleton="coco18"), "train")
