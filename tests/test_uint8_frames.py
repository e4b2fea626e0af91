"""Frames travel as uint8 and are normalised on the device (models/pixels.py): batch dtypes,
the device formula against the host one, bytes per batch, and every model family reading
uint8 frames exactly as it read the host-normalised float32 frames."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from data_prep import skeletons

from pgvt_jax import data, visualize
from pgvt_jax.data import augment
from pgvt_jax.models import deit, factory, pgvt, pixels, timesformer
from pgvt_jax.models.config import ModelConfig, model_config


def _records(n=3, seed=0):
  rng = np.random.default_rng(seed)
  return [{"video_id": f"v{i}", "label": i % 2,
           "frames": rng.integers(0, 256, (6 + i, 30, 40, 3), dtype=np.uint8),
           "keypoints": (rng.random((6 + i, 1, 17, 2)) * (40, 30)).astype(np.float32),
           "keypoint_score": np.ones((6 + i, 1, 17), np.float32)} for i in range(n)]


def _data_config(**kw):
  cfg = data.get_config()
  cfg.update(dict(num_frames=4, pose_frames=4, image_size=16, short_side=18, max_persons=1,
                  train_batch_size=2, eval_batch_size=2, num_threads=0, prefetch=0))
  cfg.update(kw)
  return cfg


def test_batches_carry_uint8_frames():
  cfg = _data_config()
  src = data.Source(_records(), skeletons.COCO17, 2)
  batch = next(data.make_train_iterator(cfg, src))
  assert batch["frames"].dtype == np.uint8 and batch["frames"].shape == (2, 4, 16, 16, 3)
  assert data.batch_spec(cfg, 17)["frames"].dtype == np.uint8
  eval_batch = next(data.make_eval_iterator(cfg, src)[0])
  assert eval_batch["frames"].dtype == np.uint8
  assert batch["pose"].dtype == np.float32  # pose formats stay float
  # The model's own spec (init, eval_shape, FLOPs) agrees with the pipeline.
  assert pgvt.input_spec(ModelConfig(backbone="Ti/8"))["frames"].dtype == jnp.uint8


def test_device_normalisation_equals_the_host_formula():
  x = np.random.default_rng(0).integers(0, 256, (2, 3, 5, 7, 3), dtype=np.uint8)
  x[0, 0, 0, :3] = [[0, 0, 0], [255, 255, 255], [128, 64, 1]]  # the ends of the range
  for mean, std in ((augment.CLIP_MEAN, augment.CLIP_STD), ((0.45,) * 3, (0.225,) * 3)):
    host = augment.normalize_frames(x, mean, std)         # what the pipeline used to send
    device = jax.jit(lambda f: data.normalize(f, mean, std))(x)
    assert device.dtype == jnp.float32
    np.testing.assert_allclose(device, host, rtol=0, atol=2e-6)
    exact = (x / 255.0 - np.asarray(mean)) / np.asarray(std)
    np.testing.assert_allclose(device, exact, rtol=0, atol=2e-6)
  assert pixels.normalize(jnp.asarray(x), augment.CLIP_MEAN, augment.CLIP_STD,
                          jnp.bfloat16).dtype == jnp.bfloat16


def test_example_pixels_are_the_ones_the_float_pipeline_normalised():
  # The crop is resampled by PIL on uint8 images, which rounds to uint8 itself: the uint8
  # example holds exactly the pixels the float32 pipeline normalised, so the model's input
  # differs from the old host output by float32 rounding only (far below 0.5 / 255 / std).
  cfg = _data_config()
  proc = data.ClipProcessor(cfg, skeletons.COCO17)
  rec = _records()[0]
  ex = proc.train(rec, 0, np.random.default_rng(1))
  box = augment.random_resized_crop_box(np.random.default_rng(1), 30, 40, cfg.crop_area,
                                        cfg.crop_aspect)
  crop = augment.crop_resize(proc._parse(rec)[0].image(0), box, 16)
  assert crop.dtype == np.uint8
  old = augment.normalize_frames(ex["frames"])           # the former host output
  new = pixels.normalize(ex["frames"], augment.CLIP_MEAN, augment.CLIP_STD)
  assert float(np.max(np.abs(new - old))) < 0.5 / 255 / max(augment.CLIP_STD) / 100


def test_host_to_device_bytes_are_a_quarter():
  # B/16 PGVT 48+16 at the trainer's global batch 64 (config.data as the diving48 config has).
  cfg = _data_config(num_frames=16, pose_frames=48, image_size=224, train_batch_size=64)
  spec = data.batch_spec(cfg, 17)
  frames = spec["frames"]
  nbytes = lambda s: int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize
  float32_frames = int(np.prod(frames.shape)) * 4
  assert nbytes(frames) * 4 == float32_frames == 64 * 16 * 224 * 224 * 3 * 4
  total_now = sum(nbytes(s) for s in spec.values())
  total_before = total_now - nbytes(frames) + float32_frames
  assert total_now / total_before < 0.26  # frames are ~all of a batch's bytes


def _uint8_and_float(shape, mean, std, seed=0):
  x = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
  return x, augment.normalize_frames(x, mean, std)


def test_clip_family_reads_uint8_as_host_normalised_float():
  m = ModelConfig(variant="video_only", backbone="Ti/8", image_size=32, video_frames=2,
                  num_classes=3, dtype="float32")
  model = pgvt.PoseVideoTransformer(m)
  params = pgvt.init_params(model, jax.random.key(0))
  u8, f32 = _uint8_and_float((2, 2, 32, 32, 3), *m.pixel_stats)
  a = model.apply({"params": params}, {"frames": u8})[0]
  b = model.apply({"params": params}, {"frames": f32})[0]
  np.testing.assert_allclose(a, b, atol=1e-5)
  c = model.apply({"params": params}, {"frames": np.zeros_like(f32)})[0]
  assert float(jnp.abs(a - c).max()) > 1e-4  # the frames matter


def test_timesformer_family_uses_its_statistics():
  m = ModelConfig(family="timesformer", variant="video_only", backbone="Ti/8", image_size=16,
                  video_frames=2, num_classes=3, dtype="float32", dropout=0.0)
  assert m.pixel_stats == (timesformer.MEAN, timesformer.STD)
  model = factory.create_model(m)
  params = factory.init_params(model, jax.random.key(0))
  u8, f32 = _uint8_and_float((2, 2, 16, 16, 3), timesformer.MEAN, timesformer.STD)
  np.testing.assert_allclose(model.apply({"params": params}, {"frames": u8})[0],
                             model.apply({"params": params}, {"frames": f32})[0], atol=1e-5)


def test_deit_normalises_with_imagenet_statistics():
  m = ModelConfig(family="deit", variant="video_only", backbone="test", video_frames=1,
                  pose_frames=1, num_classes=0, dtype="float32")
  assert m.pixel_stats == (deit.IMAGENET_MEAN, deit.IMAGENET_STD)
  model = factory.create_model(m)
  params = factory.init_params(model, jax.random.key(0))
  u8, f32 = _uint8_and_float((2, 1, 32, 32, 3), deit.IMAGENET_MEAN, deit.IMAGENET_STD)
  np.testing.assert_allclose(model.apply({"params": params}, {"frames": u8})[0],
                             model.apply({"params": params}, {"frames": f32})[0], atol=1e-5)


def test_configure_data_gives_the_model_the_data_statistics():
  config = ml_collections.ConfigDict(dict(
      model=model_config(family="timesformer", variant="video_only", backbone="Ti/8"),
      data=data.get_config()))
  factory.configure_data(config)
  assert tuple(config.model.pixel_mean) == tuple(config.data.pixel_mean) == (0.45,) * 3
  config.data.pixel_std = (0.5, 0.5, 0.5)  # config.data is the knob
  factory.configure_data(config)
  m = ModelConfig.from_config(config.model)
  assert m.pixel_stats == ((0.45,) * 3, (0.5,) * 3)
  with pytest.raises(ValueError, match="config.model.pixel_std"):
    ModelConfig(pixel_std=(0.5, 0.0, 0.5))


def test_visualize_shows_uint8_frames_directly():
  x = np.array([[[0, 128, 255]]], np.uint8)
  np.testing.assert_allclose(visualize.denormalize(x), x / 255.0)
  f = augment.normalize_frames(x)  # float frames: still read as CLIP-normalised
  np.testing.assert_allclose(visualize.denormalize(f), x / 255.0, atol=1e-6)
