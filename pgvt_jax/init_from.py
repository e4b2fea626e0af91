"""Two-stage training (PGVT Table 4 row 3): start a two-stream model from trained streams.

The paper trains the pose-only and the video-only model first, then fuses them and fine-tunes.

    python -m pgvt_jax.main --config=configs/ablations/table4.py:row=1  --workdir=runs/t4_row1
    python -m pgvt_jax.main --config=configs/ablations/table4.py:row=2i --workdir=runs/t4_row2i
    python -m pgvt_jax.main --config=configs/ablations/table4.py:row=3  --workdir=runs/t4_row3 \
        --config.init_from.pose=runs/t4_row1 --config.init_from.video=runs/t4_row2i

Each stream's trainable params (adapters, embeddings, ln_post) come from the FINAL checkpoint
of its workdir (`checkpoints/`, the latest step). The fused head starts as the mean of the two
heads' logits: kernel = [W_pose; W_video] / 2, bias = (b_pose + b_video) / 2. Params neither
workdir has (the R-Adapter of a PGVT variant) keep their initialisation. A workdir of the
fused run that already holds a checkpoint resumes from it instead (init_from is then unused).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging

from pgvt_jax import checkpointing
from pgvt_jax.models import common


def config() -> ml_collections.ConfigDict:
  """`config.init_from`: workdirs of trained single-stream runs ("" = none)."""
  return ml_collections.ConfigDict(dict(pose="", video=""))


def read_trained(workdir: str, field: str) -> tuple[dict, dict]:
  """(trainable params, meta) of the latest finished checkpoint in `workdir`, as host arrays
  (any topology wrote it; a save killed mid-write, `<step>.orbax-checkpoint-tmp-*`, is not a
  step and a damaged step is skipped, both with the previous step used instead)."""
  try:
    ref = checkpointing.find_step(workdir, which="latest")
  except FileNotFoundError:
    raise FileNotFoundError(
        f"config.init_from.{field}={workdir!r}: no finished checkpoint under "
        f"{checkpointing.as_path(workdir) / 'checkpoints'}; train the {field}-only model into "
        "that workdir first (see pgvt_jax/init_from.py)") from None
  logging.info("init_from.%s: step %d of %s", field, ref.step, workdir)
  params = checkpointing.to_host(checkpointing.read(ref)["params"])
  return params, dict(ref.meta or {})


def fused_head(init_head: Mapping[str, Any], pose_head: Mapping[str, Any],
               video_head: Mapping[str, Any]) -> dict:
  """Head on [pose feature; video feature] whose logits are the mean of the two heads'."""
  kernel = np.concatenate([pose_head["kernel"], video_head["kernel"]], axis=0) / 2
  if kernel.shape != tuple(init_head["kernel"].shape):
    raise ValueError(f"init_from: fused head kernel {kernel.shape} does not match the "
                     f"model's {tuple(init_head['kernel'].shape)} (num_classes or widths differ)")
  return {"kernel": kernel, "bias": (np.asarray(pose_head["bias"])
                                     + np.asarray(video_head["bias"])) / 2}


def apply(cfg: ml_collections.ConfigDict, params: Mapping, meta: Mapping) -> dict:
  """`params` with both streams taken from config.init_from's workdirs (if set).

  Args:
    cfg: the run's config (reads cfg.init_from and cfg.model).
    params: the full initialised param tree (frozen backbone included).
    meta: this run's backbone meta; each source must have been trained on the same backbone.
  """
  src = cfg.get("init_from") or {}
  pose_dir, video_dir = src.get("pose", ""), src.get("video", "")
  if not pose_dir and not video_dir:
    return dict(params)
  if not (pose_dir and video_dir):
    raise ValueError("config.init_from: set both .pose and .video (two-stage late fusion), "
                     f"got pose={pose_dir!r} video={video_dir!r}")
  sources = {}
  for field, workdir in (("pose", pose_dir), ("video", video_dir)):
    trained, src_meta = read_trained(workdir, field)
    if src_meta.get("backbone_sha256") != meta.get("backbone_sha256"):
      raise ValueError(
          f"config.init_from.{field}={workdir!r} was trained on backbone "
          f"{src_meta.get('backbone')!r} (sha256 {src_meta.get('backbone_sha256')}); this run "
          f"loads {meta.get('backbone')!r} (sha256 {meta.get('backbone_sha256')})")
    if "head" not in trained:
      raise ValueError(f"config.init_from.{field}={workdir!r}: its checkpoint has no head")
    sources[field] = trained
  merged = common.merge_stream_params(params, sources["pose"], sources["video"])
  merged["head"] = fused_head(params["head"], sources["pose"]["head"],
                              sources["video"]["head"])
  return merged


def maybe_apply(cfg: ml_collections.ConfigDict, params: Any, meta: Mapping,
                shardings: Any) -> Any:
  """`apply` on device params, placed back with `shardings`; a no-op without init_from."""
  src = cfg.get("init_from") or {}
  if not src.get("pose", "") and not src.get("video", ""):
    return params
  merged = apply(cfg, checkpointing.to_host(params), meta)  # gathered on every host
  return jax.device_put(jax.tree.map(np.asarray, merged), shardings)
