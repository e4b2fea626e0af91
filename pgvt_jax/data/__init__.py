"""Input pipeline: TFDS ArrayRecord records -> grain -> per-host batches.

Typical use in a trainer (`cfg` = `config.data`, see `get_config()`):

  train_it = data.make_train_iterator(cfg)          # per-host, infinite
  batch = data.to_global(next(train_it), sharding)   # global jax.Arrays
  # or, staging batches on device during the step (checkpoint consumed_state()):
  # batches = data.DevicePrefetcher(train_it, sharding, depth=2)
  ...
  eval_it, info = data.make_eval_iterator(cfg)      # one pass, padded
  for batch in eval_it: ...                          # rows with valid=False
                                                     # are padding

Batches (dict of numpy arrays per host, B = global batch // process_count):
  frames        (B, T_l, S, S, 3) uint8     RGB pixels after crop/resize/flip; the model
                                            normalises them on the device with
                                            config.data.pixel_mean/std (copied to
                                            config.model; `normalize`)
  pose          (B, T_h, J, 2)    float32   (x, y) in [0, 1) of the crop,
                                            masked joints 0; J = V * max_persons,
                                            person-major
  pose_mask     (B, T_h, J)       float32   1 = visible, in crop, score ok
  pose_heatmap  (B, T_h, Hh, Hh, J) float32 only if pose_format == "heatmap"
  label         (B,)              int32
  video_index   (B,)              int32     record index in its split
  eval only:
  view_index    (B,)              int32     clip * eval_crops + crop
  valid         (B,)              bool      False on padding rows (their
                                            label/video_index/view_index = -1)
Pose frames k*i .. k*(i+1)-1 (k = T_h / T_l) span video segment i.

Records (from data_prep, or any random-access sequence of dicts in the same
format; wrap it in `Source(records, skeleton, num_classes)`):
  frames (T, H, W, 3) uint8 (or T uint8 frames, or T JPEG byte strings),
  keypoints (T, M, V, 2) float32 in the stored frames' continuous pixel
  coordinates (pixel i covers [i, i+1)), keypoint_score (T, M, V) float32
  (0 = missing), label int, video_id str. The layout name comes from the
  dataset metadata ("joint_layout") or config.data.skeleton.
"""

from pgvt_jax.data.augment import CLIP_MEAN, CLIP_STD
from pgvt_jax.models.pixels import normalize
from pgvt_jax.data.config import get_config, validate
from pgvt_jax.data.pipeline import (EvalInfo, batch_spec, eval_dataset,
                                    make_eval_iterator, make_train_iterator,
                                    position, seek,
                                    train_dataset)
from pgvt_jax.data.prefetch import DevicePrefetcher
from pgvt_jax.data.processing import ClipProcessor, example_spec
from pgvt_jax.data.sharding import batch_sharding, to_global, whole_to_global
from pgvt_jax.data.sources import RecordsNotFoundError, Source, open_source

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "ClipProcessor", "DevicePrefetcher", "EvalInfo",
    "RecordsNotFoundError", "Source", "batch_sharding", "batch_spec", "eval_dataset",
    "example_spec", "get_config", "make_eval_iterator", "make_train_iterator", "normalize",
    "open_source",
    "position", "seek", "to_global", "train_dataset", "validate", "whole_to_global",
]
