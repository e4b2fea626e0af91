"""The input pipeline's configuration (`config.data`) and its validation.

Experiment configs start from `get_config()` and override fields:

  config.data = pgvt_jax.data.get_config()
  config.data.builder_dir = "/data/tfds/diving48/v2/1.0.0"
  config.data.num_frames, config.data.pose_frames = 16, 48
"""

from __future__ import annotations

import ml_collections

POSE_FORMATS = ("coords", "heatmap", "heatmap_rgb")
SAMPLING = ("segments", "fixed_rate")


def get_config() -> ml_collections.ConfigDict:
  """Defaults: the PGVT/AIM fine-grained recipe (16 + 48 frames at 224 px)."""
  c = ml_collections.ConfigDict()

  # Where the records are. `builder_dir` (a prepared TFDS dataset directory,
  # e.g. <data_dir>/diving48/v2/1.0.0) wins over `name` + `data_dir`
  # (`tfds.data_source(name, data_dir=...)`, name like "diving48/v2").
  c.builder_dir = ""
  c.name = ""
  c.data_dir = ""
  c.train_split = "train"
  c.eval_split = "test"
  # Optional: evaluated once at the end, for the final and the best/ checkpoint (best/ is
  # picked on eval_split). With a validation split carved from train, e.g.
  # train_split="train[:90%]", eval_split="train[90%:]", test_split="test".
  c.test_split = ""
  # Joint layout (data_prep.skeletons name). "" = read it from the dataset's
  # metadata (key "skeleton").
  c.skeleton = ""

  # Temporal sampling: T_l video frames by segment sampling and T_h = k * T_l
  # pose frames, k per video segment, spanning the same time (see sampling.py).
  c.num_frames = 16        # T_l
  c.pose_frames = 48       # T_h, a multiple of num_frames
  # "segments" (above) | "fixed_rate": T frames `sampling_rate` apart at
  # `target_fps` (TimeSformer/SlowFast dense sampling; the PAAB/PAAT recipe:
  # 8 frames at rate 32 on Smarthome, 16 at rate 4 on NTU). The window is
  # converted to stored frames with the record's fps.
  c.sampling = "segments"
  c.sampling_rate = 4
  c.target_fps = 30.0

  # Spatial: train = random resized crop of the stored frames (AIM: area
  # 0.08-1, aspect 3/4-4/3) + flip; eval = resize short side to `short_side`,
  # then `eval_crops` crops of image_size (1 = centre, 3 = both ends + centre).
  c.image_size = 224       # S
  c.short_side = 0         # eval resize of the short side; 0 = image_size
  c.crop_area = (0.08, 1.0)
  c.crop_aspect = (3 / 4, 4 / 3)
  c.flip = True            # horizontal flip with p=0.5, swaps left/right joints
  # Pixel normalisation (x / 255 - mean) / std, RGB, applied by the model on the
  # device (batches carry uint8 frames). () = the model family's statistics:
  # experiment.setup_experiment fills them in and copies them to
  # config.model.pixel_mean/std (models.factory.configure_data). TimeSformer's
  # are (0.45,) * 3 / (0.225,) * 3, CLIP's clip_vit.CLIP_MEAN/STD.
  c.pixel_mean = ()
  c.pixel_std = ()
  # Person-centred crop (PAAB/PAAT): crops are drawn from the square around
  # the union box of the video's keypoints (grown by person_crop_margin x its
  # side on each side) instead of from the whole frame.
  c.person_crop = False
  c.person_crop_margin = 0.1

  # Pose: up to max_persons persons by mean score, J = V * max_persons joints,
  # person-major. Joints with score <= score_threshold are masked.
  c.max_persons = 1
  # "iou": link each frame's persons into tracks by box IoU before choosing the persons with
  # the highest mean score over the whole record (detector pickles list persons per frame in
  # no stable order). "none": use the stored person slots as tracks (tracked data, e.g. NTU).
  c.person_tracking = "iou"
  c.num_joints = 0         # if > 0: asserted == V * max_persons (model's J)
  c.score_threshold = 0.1
  c.pose_format = "coords"  # "coords" | "heatmap" | "heatmap_rgb" (both add "pose_heatmap")
  c.heatmap_size = 112     # Hh
  c.heatmap_sigma = 1.2    # Gaussian std in heatmap pixels (PoseC3D: 0.6 @ 56)

  # Test-time views per video = eval_clips x eval_crops
  # (AIM: Diving48 1 clip x 3 crops, K400 3 clips x 1 crop).
  c.eval_clips = 1
  c.eval_crops = 3
  # How a test clip picks its frames: "segment" (one frame per segment, AIM's Diving48 test
  # with frame_uniform) or "dense" (T_l consecutive frames dense_span / T_l apart, AIM's K400
  # test: 8 x 16 or 16 x 8 source frames at ~30 fps; spans scale with the stored fps).
  c.eval_sampling = "segment"
  c.dense_span = 128.0
  c.dense_source_fps = 30.0

  # Batches: GLOBAL sizes; each host produces global // process_count rows.
  c.train_batch_size = 64
  c.eval_batch_size = 64
  c.seed = 0

  # Host-side parallelism (batches are identical for any setting).
  # num_threads: threads per process that read, decode and augment (PIL and
  # numpy release the GIL, so threads scale; 0 = in the calling thread).
  # num_workers: grain worker processes (0 = none, all in this process).
  # prefetch: batches buffered ahead per process (grain's read-ahead).
  # device_prefetch: global batches the trainer stages on device ahead of the
  # step, in a background thread (pgvt_jax.data.prefetch; 0 = off).
  c.num_workers = 0
  c.num_threads = 2
  c.prefetch = 2
  c.device_prefetch = 2
  return c


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the offending `config.data` field."""
  def fail(field, msg):
    raise ValueError(f"config.data.{field}: {msg}")

  for f in ("num_frames", "pose_frames", "image_size", "max_persons", "train_batch_size", "eval_batch_size",
            "eval_clips", "eval_crops", "heatmap_size"):
    if int(cfg[f]) <= 0:
      fail(f, f"must be a positive integer, got {cfg[f]!r}")
  if cfg.pose_frames % cfg.num_frames:
    fail("pose_frames", f"T_h={cfg.pose_frames} must be a multiple of "
         f"num_frames T_l={cfg.num_frames} (k pose frames per video segment)")
  if cfg.get("sampling", "segments") not in SAMPLING:
    fail("sampling", f"{cfg.sampling!r} is not one of {SAMPLING}")
  if cfg.get("sampling", "segments") == "fixed_rate" and (
      cfg.sampling_rate <= 0 or cfg.target_fps <= 0):
    fail("sampling_rate", "sampling_rate and target_fps must be > 0, got "
         f"{cfg.sampling_rate}, {cfg.target_fps}")
  if cfg.get("person_crop_margin", 0.0) < 0:
    fail("person_crop_margin", f"must be >= 0, got {cfg.person_crop_margin}")
  if cfg.pose_format not in POSE_FORMATS:
    fail("pose_format", f"{cfg.pose_format!r} is not one of {POSE_FORMATS}")
  if cfg.get("eval_sampling", "segment") not in ("segment", "dense"):
    fail("eval_sampling", f"{cfg.eval_sampling!r} is not 'segment' or 'dense'")
  if cfg.eval_crops not in (1, 3):
    fail("eval_crops", f"must be 1 (centre) or 3, got {cfg.eval_crops}")
  if cfg.short_side < 0:
    fail("short_side", f"must be >= 0 (0 = image_size), got {cfg.short_side}")
  if cfg.short_side and cfg.short_side < cfg.image_size:
    fail("short_side", f"{cfg.short_side} is smaller than image_size "
         f"{cfg.image_size}: the eval crop would not fit")
  lo, hi = cfg.crop_area
  if not 0 < lo <= hi <= 1:
    fail("crop_area", f"need 0 < min <= max <= 1, got {tuple(cfg.crop_area)}")
  lo, hi = cfg.crop_aspect
  if not 0 < lo <= hi:
    fail("crop_aspect", f"need 0 < min <= max, got {tuple(cfg.crop_aspect)}")
  for f in ("pixel_mean", "pixel_std"):
    v = tuple(cfg.get(f, ()) or ())
    if v and (len(v) != 3 or (f == "pixel_std" and min(v) <= 0)):
      fail(f, f"expected () or 3 RGB values (std > 0), got {v!r}")
  if cfg.heatmap_sigma <= 0:
    fail("heatmap_sigma", f"must be > 0, got {cfg.heatmap_sigma}")
  if cfg.num_workers < 0 or cfg.num_threads < 0 or cfg.prefetch < 0:
    fail("num_workers", "num_workers, num_threads, prefetch must be >= 0")
  if cfg.get("device_prefetch", 0) < 0:
    fail("device_prefetch", f"must be >= 0 (0 = off), got {cfg.device_prefetch}")


def pixel_stats(cfg: ml_collections.ConfigDict) -> tuple[tuple, tuple]:
  """(mean, std) of config.data.pixel_mean/std, CLIP's if () (the model normalises the uint8
  frames with these once configure_data has copied them to config.model)."""
  from pgvt_jax.models import clip_vit  # pylint: disable=g-import-not-at-top
  mean = tuple(cfg.get("pixel_mean", ()) or ()) or clip_vit.CLIP_MEAN
  std = tuple(cfg.get("pixel_std", ()) or ()) or clip_vit.CLIP_STD
  return mean, std


def check_num_joints(cfg: ml_collections.ConfigDict, num_joints: int,
                     layout: str) -> int:
  """Returns J = V * max_persons; raises if config.data.num_joints disagrees."""
  j = num_joints * cfg.max_persons
  if cfg.num_joints and cfg.num_joints != j:
    raise ValueError(
        f"config.data.num_joints={cfg.num_joints} but layout {layout!r} has "
        f"V={num_joints} joints x max_persons={cfg.max_persons} = {j}")
  return j


def per_host_batch_size(global_batch_size: int, process_count: int,
                        field: str) -> int:
  """global // process_count, asserting it divides (big_vision convention)."""
  if global_batch_size % process_count:
    raise ValueError(
        f"config.data.{field}={global_batch_size} is not divisible by the "
        f"number of processes ({process_count})")
  return global_batch_size // process_count
