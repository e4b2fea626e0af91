"""The record schema (one example per video), its encoding and a thin decoder.

Schema (the data contract; read without TensorFlow through
`tfds.builder_from_directory(dir).as_data_source(split)`):

  video_id        Text                      -> bytes (str after `decode_example`)
  label           ClassLabel                -> int64
  frames          Sequence(Image(jpeg))     -> T arrays (H, W, 3) uint8
                                               ((T, H, W, 3) after decode_example)
  frame_indices   Tensor (None,) int32      -> (T,) source frame of each frame
  keypoints       Tensor (None, None, V, 2) float32, zlib -> (T, M, V, 2)
  keypoint_score  Tensor (None, None, V) float32, zlib    -> (T, M, V)
  fps             float32 (of the stored frames)
  original_size   Tensor (2,) int32 (h, w) of the source video

Keypoints are in the stored frames' pixel coordinates; score 0 = missing.
`keypoints`/`keypoint_score` have two dynamic dimensions, which TFDS stores as
zlib-compressed bytes plus shape, decoded back to the arrays above by TFDS.
The joint layout name is in `builder.info.metadata["joint_layout"]`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_prep import video as video_lib


def features(num_joints: int, class_names: Sequence[str] | None = None,
             num_classes: int | None = None) -> tfds.features.FeaturesDict:
  """The FeaturesDict of every builder (V = `num_joints`)."""
  if class_names is not None:
    label = tfds.features.ClassLabel(names=list(class_names))
  else:  # Names are read from the manual files in _split_generators.
    label = tfds.features.ClassLabel(num_classes=num_classes)
  zlib = tfds.features.Encoding.ZLIB
  return tfds.features.FeaturesDict({
      "video_id": tfds.features.Text(),
      "label": label,
      "frames": tfds.features.Sequence(
          tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")),
      "frame_indices": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "keypoints": tfds.features.Tensor(
          shape=(None, None, num_joints, 2), dtype=np.float32, encoding=zlib),
      "keypoint_score": tfds.features.Tensor(
          shape=(None, None, num_joints), dtype=np.float32, encoding=zlib),
      "fps": tfds.features.Scalar(dtype=np.float32),
      "original_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
  })


def make_example(video_id: str, label: int, video: video_lib.DecodedVideo,
                 keypoints: np.ndarray, keypoint_score: np.ndarray,
                 jpeg_quality: int = 90) -> dict[str, Any]:
  """The feature dict of one record; frames are JPEG-encoded here.

  Args:
    keypoints: (T, M, V, 2) float32, stored-frame pixels.
    keypoint_score: (T, M, V) float32.
  """
  t = len(video.frames)
  if keypoints.shape[0] != t or keypoint_score.shape != keypoints.shape[:3]:
    raise ValueError(
        f"{video_id}: keypoints {keypoints.shape} / scores "
        f"{keypoint_score.shape} do not match {t} stored frames")
  return {
      "video_id": video_id,
      "label": int(label),
      # Encoded bytes are passed through unchanged by tfds.features.Image.
      "frames": [video_lib.encode_jpeg(f, jpeg_quality) for f in video.frames],
      "frame_indices": video.frame_indices.astype(np.int32),
      "keypoints": keypoints.astype(np.float32),
      "keypoint_score": keypoint_score.astype(np.float32),
      "fps": np.float32(video.fps),
      "original_size": np.asarray(video.original_size, np.int32),
  }


def decode_example(example: dict[str, Any]) -> dict[str, Any]:
  """A data-source example -> the contract's arrays.

  `frames` (list of (H, W, 3), or of JPEG bytes when read with `RawFrames`)
  becomes (T, H, W, 3) uint8; `video_id` becomes str. Other fields pass through.
  """
  out = dict(example)
  frames = example["frames"]
  if len(frames) and isinstance(frames[0], bytes):
    frames = [video_lib.decode_jpeg(f) for f in frames]
  out["frames"] = (np.stack(frames) if len(frames) else
                   np.zeros((0, 0, 0, 3), np.uint8))
  vid = example["video_id"]
  out["video_id"] = vid.decode() if isinstance(vid, bytes) else str(vid)
  return out


class RawFrames(tfds.decode.Decoder):
  """Leaves `frames` as a list of JPEG bytes (decode only the frames you use).

    src = builder.as_data_source("train", decoders={"frames": RawFrames()})
    jpegs = src[i]["frames"]          # list of T bytes objects
    frame = video.decode_jpeg(jpegs[k])
  """

  def decode_example(self, serialized_example):
    return serialized_example

  def decode_example_np(self, serialized_example):
    return serialized_example

  def decode_batch_example_np(self, serialized_example):
    return list(serialized_example)


# --------------------------------------------------------------- summary


@dataclasses.dataclass
class SplitSummary:
  """What happened to the videos of one split."""
  listed: int = 0
  written: int = 0
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)
  warnings: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  counts: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)

  def skip(self, video_id: str, reason: str) -> None:
    self.skipped[video_id] = reason
    self.counts["skipped: " + reason.split(":")[0].strip()] += 1

  def warn(self, video_id: str, messages: list[str]) -> None:
    if messages:
      self.warnings.setdefault(video_id, []).extend(messages)


@dataclasses.dataclass
class BuildSummary:
  """Per-split counts, skipped video ids with reasons, warnings."""
  dataset: str
  splits: dict[str, SplitSummary] = dataclasses.field(default_factory=dict)

  def split(self, name: str) -> SplitSummary:
    return self.splits.setdefault(name, SplitSummary())

  def to_json(self) -> dict[str, Any]:
    return {"dataset": self.dataset, "splits": {
        k: {"listed": s.listed, "written": s.written,
            "skipped": len(s.skipped), "counts": dict(s.counts),
            "skipped_videos": s.skipped, "warnings": s.warnings}
        for k, s in self.splits.items()}}

  def save(self, path) -> None:
    with open(path, "w") as f:
      json.dump(self.to_json(), f, indent=1, sort_keys=True)

  def format(self, max_lines: int = 20) -> str:
    """A human-readable report (first `max_lines` skipped/warned per split)."""
    lines = [f"Build summary: {self.dataset}"]
    for name, s in self.splits.items():
      lines.append(f"  [{name}] listed {s.listed}, written {s.written}, "
                   f"skipped {len(s.skipped)}, with warnings "
                   f"{len(s.warnings)}")
      for key, n in sorted(s.counts.items()):
        lines.append(f"    {key}: {n}")
      for i, (vid, why) in enumerate(sorted(s.skipped.items())):
        if i == max_lines:
          lines.append(f"    ... {len(s.skipped) - max_lines} more skipped")
          break
        lines.append(f"    skipped {vid}: {why}")
      for i, (vid, msgs) in enumerate(sorted(s.warnings.items())):
        if i == max_lines:
          lines.append(f"    ... {len(s.warnings) - max_lines} more warned")
          break
        lines.append(f"    warning {vid}: {'; '.join(msgs)}")
    return "\n".join(lines)
