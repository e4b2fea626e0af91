r"""Look inside a trained model (the PGVT paper's Fig. 2) and check the input pipeline.

    # Fig. 2: baseline and PGVT streams side by side, one row group per workdir
    python -m pgvt_jax.visualize --workdir=runs/pgvt,runs/video_only,runs/pose_only \
        --video=clip.mp4 --keypoints=clip.pkl --out=figs/ [--layers=-1] [--frames=8]
    # Skeleton overlays on training batches, after crop/flip/sampling (a data check)
    python -m pgvt_jax.visualize --records=~/tensorflow_datasets/diving48/v2/1.0.0 \
        --split=train --n=8 --out=figs/

Attention weights come from an explicit-softmax path that runs only when the model is applied
with `mutable=["attention"]` (`layers.attend`, shared by every family and PAAB); training and
evaluation keep the fused kernel. Per chosen layer the figure shows, over the clip's frames:
  Video Attn         CLS -> patch attention of the video stream's spatial attention (heatmap);
                     TimeSformer: its divided block's spatial attention (the clip's CLS copied
                     into each frame, as the block computes it)
  Pose Attn          CLS -> joint attention of the pose stream's spatial attention (dots on the
                     skeleton: size and brightness per joint)
  R-Adapter pose->video   the pose queries' (mean over joints) attention over video patches
  R-Adapter video->pose   the video CLS query's attention over the pose joints (dots)
  PAAB Attn          CLS -> patch attention of a PAAB inserted after that block (masked to the
                     pose tokens; joint PA-STA: the first CLS over every frame's patches)
"Refined" rows (PGVT) and baseline rows (video_only / pose_only) differ only by workdir, as
"Video Attn" / "Refined Video Attn" in Fig. 2.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from pgvt_jax import paths as paths_lib  # `paths` names lists of written files below
from data_prep import skeletons
from pgvt_jax import steps
from pgvt_jax.data import augment
from pgvt_jax.models import common
from pgvt_jax.models.layers import ATTENTION  # (`layers` names block lists below)

# ---------------------------------------------------------------------------- recording


def record_attention(model, params, batch: Mapping[str, Any]
                     ) -> tuple[np.ndarray, dict, dict[str, np.ndarray]]:
  """Runs the model in eval mode recording every attention map.

  Returns:
    logits `(B, C)`, the model's out dict, and {path: weights `(B', Lq, Lk)` averaged over
    heads}. Paths: CLIP family "resblocks_{i}/attn/<name>", names pose_temporal,
    video_temporal, pose_spatial, video_spatial, and "resblocks_{i}/R_Adapter/<name>",
    names pose_to_video, video_to_pose; TimeSformer "blocks_{i}/{temporal_attn,attn}/
    video_{temporal,spatial}"; PAAB after block l "paab_{l}[_{j}]/attn/{spatial,joint}" and
    "paab_{l}[_{j}]/temporal_attn/temporal" (models/paab.py).
  """
  apply = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False,
                                           mutable=[ATTENTION]))
  (logits, out), state = apply(params, steps.model_inputs(batch))
  recorded = state.get(ATTENTION, {})
  if not recorded:
    raise ValueError(f"{type(model).__name__} recorded no attention: its attention layers "
                     "are not layers.Attention / layers.attend calls with record=...")
  flat = common.flatten(jax.device_get(recorded))
  # sow stores a tuple per name, one entry per call; each name is called once per block.
  attn = {k: np.asarray(v[0] if isinstance(v, (tuple, list)) else v) for k, v in flat.items()}
  return np.asarray(logits), jax.device_get(out), attn


BLOCK_PREFIXES = ("resblocks", "blocks")  # CLIP family, TimeSformer: block i is <prefix>_{i}


def _get(attn: dict, layer: int, name: str) -> Optional[np.ndarray]:
  """Block `layer`'s (0-based) recorded weights called `name`, whatever the family."""
  for k, v in attn.items():
    if k.split("/")[0] in [f"{p}_{layer}" for p in BLOCK_PREFIXES] and k.endswith("/" + name):
      return v
  return None


def _cls_maps(row: np.ndarray, batch_size: int) -> np.ndarray:
  """CLS -> patch weights `(B', g*g)` (or `(B, T*g*g)`) -> `(B, T, g, g)` maps."""
  row = row.reshape(batch_size, -1, row.shape[-1])
  return row.reshape(batch_size, -1, *(2 * [int(round(np.sqrt(row.shape[-1])))]))


def video_cls_maps(attn: dict, layer: int, batch_size: int, name: str = "video_spatial"
                   ) -> Optional[np.ndarray]:
  """CLS -> patch weights of one layer as `(B, T, g, g)` maps (rows of `name`, query CLS)."""
  w = _get(attn, layer, name)
  return None if w is None else _cls_maps(w[:, 0, 1:], batch_size)   # rows (B*T, g*g)


def pose_cls_weights(attn: dict, layer: int, batch_size: int) -> Optional[np.ndarray]:
  """CLS -> joint weights of the pose stream's spatial attention: `(B, T_h, J)`."""
  w = _get(attn, layer, "pose_spatial")
  return None if w is None else w[:, 0, 1:].reshape(batch_size, -1, w.shape[-1] - 1)


def pose_to_video_maps(attn: dict, layer: int, batch_size: int) -> Optional[np.ndarray]:
  """R-Adapter: pose queries (mean over the joints) over video patches: `(B, T_l, g, g)`."""
  w = _get(attn, layer, "pose_to_video")
  return None if w is None else _cls_maps(w[:, 1:, 1:].mean(1), batch_size)


def video_to_pose_weights(attn: dict, layer: int, batch_size: int) -> Optional[np.ndarray]:
  """R-Adapter: the video CLS query over the pose joints: `(B, T_l, J)`."""
  w = _get(attn, layer, "video_to_pose")
  return None if w is None else w[:, 0, 1:].reshape(batch_size, -1, w.shape[-1] - 1)


def paab_cls_maps(attn: dict, layer: int, batch_size: int, frames: int
                  ) -> list[tuple[str, np.ndarray]]:
  """[(name, `(B, T, g, g)`)]: the CLS query's weights over the patches of each PAAB placed
  after block `layer` (0-based, so `paab_{layer + 1}`, then `_2`, ... for paab_depth > 1).

  PA-SA (`attn/spatial`, `(B*T, 1+N, 1+N)`): each frame's CLS over that frame's patches. Joint
  PA-STA (`attn/joint`, `(B, C+T*N, C+T*N)`, C = 1 or T CLS tokens): the first CLS over every
  frame's patches; C is the one that leaves T*N patch keys.
  """
  out = []
  for k in sorted(attn):
    block = k.split("/")[0]
    if not (block == f"paab_{layer + 1}" or block.startswith(f"paab_{layer + 1}_")):
      continue
    w = attn[k]
    if k.endswith("/attn/spatial"):
      out.append((block, _cls_maps(w[:, 0, 1:], batch_size)))
    elif k.endswith("/attn/joint"):
      c = 1 if (w.shape[-1] - 1) % frames == 0 else frames
      out.append((block, _cls_maps(w[:, 0, c:].reshape(batch_size * frames, -1), batch_size)))
  return out


# ---------------------------------------------------------------------------- drawing


def denormalize(frames: np.ndarray) -> np.ndarray:
  """Batch frames `(..., S, S, 3)` -> [0, 1] RGB for display: uint8 pixels (what the
  pipeline sends) directly; float frames are taken as CLIP-normalised."""
  if frames.dtype == np.uint8:
    return frames.astype(np.float32) / 255.0
  return np.clip(frames * np.asarray(augment.CLIP_STD) + np.asarray(augment.CLIP_MEAN), 0, 1)


def upsample(m: np.ndarray, size: int) -> np.ndarray:
  """`(g, g)` -> `(size, size)` by nearest repetition (each patch covers its pixels)."""
  rep = size // m.shape[0]
  out = np.kron(m, np.ones((rep, rep)))
  return np.pad(out, ((0, size - out.shape[0]), (0, size - out.shape[1])), mode="edge")


def draw_skeleton(ax, xy: np.ndarray, mask: np.ndarray, skeleton: skeletons.Skeleton,
                  weights: Optional[np.ndarray] = None, color: str = "white") -> None:
  """Bones of every person, and joints as dots sized/brightened by `weights` (J,).

  xy `(J, 2)` pixels, J = V * persons (person-major); mask `(J,)`.
  """
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  v = skeleton.num_joints
  for person in range(len(xy) // v):
    o = person * v
    for a, b in skeleton.bones:
      if mask[o + a] > 0 and mask[o + b] > 0:
        ax.plot(xy[[o + a, o + b], 0], xy[[o + a, o + b], 1], "-", color=color, lw=0.8,
                alpha=0.8)
  keep = mask > 0
  if weights is None:
    ax.scatter(xy[keep, 0], xy[keep, 1], s=6, c=color)
    return
  w = weights / max(float(weights.max()), 1e-12)
  ax.scatter(xy[keep, 0], xy[keep, 1], s=5 + 120 * w[keep], c=w[keep], cmap=plt.cm.hot,
             vmin=0, vmax=1, edgecolors="black", linewidths=0.3)


def _pose_frame(t_video: int, t_low: int, t_high: int) -> int:
  """The middle pose frame of video segment t (T_h = k * T_l pose frames per clip)."""
  k = t_high // t_low
  return t_video * k + k // 2


def fig2_rows(model_config, batch: Mapping[str, np.ndarray], attn: dict, layers: Sequence[int],
              label: str, skeleton: skeletons.Skeleton) -> list[tuple[str, list]]:
  """Rows of the figure for one model and its (single-clip) batch: [(title, [panel, ...])].

  A panel is ("heat", frame, map) or ("dots", frame, xy, mask, weights) for one video frame.
  """
  frames = denormalize(np.asarray(batch["frames"][0]))          # (T_l, S, S, 3)
  t_low, size = frames.shape[0], frames.shape[1]
  pose = np.asarray(batch["pose"][0]) * size                    # (T_h, J, 2) pixels
  mask = np.asarray(batch["pose_mask"][0])
  t_high = pose.shape[0]
  pf = [_pose_frame(t, t_low, t_high) for t in range(t_low)]
  rows = []
  depth = model_config.arch.layers
  for layer in layers:
    li = layer % depth
    tag = f"{label} L{li + 1}"
    v = video_cls_maps(attn, li, 1)
    if v is not None:
      rows.append((f"Video Attn\n{tag}", [("heat", frames[t], v[0, t]) for t in range(t_low)]))
    p = pose_cls_weights(attn, li, 1)
    if p is not None and model_config.pose_format == "coords":
      rows.append((f"Pose Attn\n{tag}", [("dots", frames[t], pose[pf[t]], mask[pf[t]],
                                          p[0, pf[t]]) for t in range(t_low)]))
    pv = pose_to_video_maps(attn, li, 1)
    if pv is not None:
      rows.append((f"R-Adapter pose->video\n{tag}",
                   [("heat", frames[t], pv[0, t]) for t in range(t_low)]))
    vp = video_to_pose_weights(attn, li, 1)
    if vp is not None and model_config.pose_format == "coords":
      rows.append((f"R-Adapter video->pose\n{tag}",
                   [("dots", frames[t], pose[pf[t]], mask[pf[t]], vp[0, t])
                    for t in range(t_low)]))
    for block, maps in paab_cls_maps(attn, li, 1, t_low):
      rows.append((f"PAAB Attn\n{label} {block}",
                   [("heat", frames[t], maps[0, t]) for t in range(t_low)]))
  return rows


def save_grid(rows: list[tuple[str, list]], path: str | Path, skeleton: skeletons.Skeleton,
              max_frames: int = 8, title: str = "") -> Path:
  """Writes rows of frame panels as one PNG (columns: up to `max_frames` evenly spread)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ncol = max(min(max_frames, len(r[1])) for r in rows)
  fig, axes = plt.subplots(len(rows), ncol, figsize=(1.6 * ncol + 1.2, 1.6 * len(rows) + 0.4),
                           squeeze=False)
  for r, (name, panels) in enumerate(rows):
    pick = np.unique(np.linspace(0, len(panels) - 1, min(ncol, len(panels))).round().astype(int))
    for c in range(ncol):
      ax = axes[r, c]
      ax.set_xticks([])
      ax.set_yticks([])
      if c >= len(pick):
        ax.axis("off")
        continue
      panel = panels[pick[c]]
      kind, frame = panel[0], panel[1]
      if kind == "heat":  # grey frame under the map, so the map's colours read alone
        ax.imshow(frame.mean(-1), cmap="gray", vmin=0, vmax=1)
        m = upsample(panel[2], frame.shape[0])
        ax.imshow(m / max(float(m.max()), 1e-12), cmap="jet", alpha=0.55, vmin=0, vmax=1)
      elif kind == "dots":
        ax.imshow(frame * 0.6)
        draw_skeleton(ax, panel[2], panel[3], skeleton, panel[4])
      else:  # "frame": frame with its skeleton
        ax.imshow(frame)
        if panel[2] is not None:
          draw_skeleton(ax, panel[2], panel[3], skeleton, None, color="lime")
      ax.set_xlim(0, frame.shape[1])
      ax.set_ylim(frame.shape[0], 0)
      if c == 0:
        ax.set_ylabel(name, fontsize=7)
      if r == 0:
        ax.set_title(f"frame {pick[c]}", fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  path = paths_lib.as_path(path)  # may be a bucket: matplotlib writes bytes, epath the file
  path.parent.mkdir(parents=True, exist_ok=True)
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  path.write_bytes(png.getvalue())
  return path


def input_rows(batch: Mapping[str, np.ndarray], skeleton: skeletons.Skeleton, label: str,
               index: int = 0) -> tuple[str, list]:
  """One row: the clip's frames after the pipeline with its keypoints drawn on them."""
  frames = denormalize(np.asarray(batch["frames"][index]))
  t_low, size = frames.shape[0], frames.shape[1]
  pose = np.asarray(batch["pose"][index]) * size
  mask = np.asarray(batch["pose_mask"][index])
  pf = [_pose_frame(t, t_low, pose.shape[0]) for t in range(t_low)]
  return label, [("frame", frames[t], pose[pf[t]], mask[pf[t]]) for t in range(t_low)]


# ---------------------------------------------------------------------------- entry points


def attention_figure(predictors: Sequence[Any], video: str, keypoints: Optional[str],
                     out_dir: str | Path, layers: Sequence[int] = (-1,),
                     max_frames: int = 8) -> list[Path]:
  """Fig. 2 for one video: `fig2.png` (every model's rows, side by side) + one PNG per model."""
  out_dir = paths_lib.as_path(out_dir)
  all_rows, paths = [], []
  for i, pred in enumerate(predictors):
    record = pred.load_video(video, keypoints)
    batch = pred.views(record)
    batch = {k: v[:1] for k, v in batch.items()}              # the first view (centre crop)
    logits, _, attn = record_attention(pred.model, pred.params, batch)
    name = pred.model.config.variant
    top = pred.class_names[int(np.argmax(logits[0]))]
    rows = [input_rows(batch, pred.skeleton, f"input\n{name}")]
    rows += fig2_rows(pred.model.config, batch, attn, layers, name, pred.skeleton)
    paths.append(save_grid(rows, out_dir / f"attention_{i}_{name}.png", pred.skeleton,
                           max_frames, title=f"{name}: predicts {top!r}"))
    all_rows += rows
  paths.insert(0, save_grid(all_rows, out_dir / "fig2.png", predictors[0].skeleton, max_frames,
                            title=f"{Path(video).name}: attention (brighter/bigger = more)"))
  return paths


def records_figure(records: str, split: str, n: int, out_dir: str | Path,
                   config=None, max_frames: int = 8) -> Path:
  """Skeleton overlays on `n` training (or eval) clips after the input pipeline."""
  from pgvt_jax import data  # pylint: disable=g-import-not-at-top
  cfg = data.get_config() if config is None else config.data
  cfg.builder_dir = paths_lib.as_str(records)  # a gs:// URL stays whole
  cfg.train_split = cfg.eval_split = split
  if config is None:  # a quick look: small frames, one view
    cfg.num_frames, cfg.pose_frames, cfg.image_size, cfg.short_side = 8, 8, 224, 0
    cfg.eval_crops = 1
  cfg.train_batch_size = cfg.eval_batch_size = n
  cfg.num_workers, cfg.num_threads = 0, 0
  source = data.open_source(cfg, split)
  if config is None:
    cfg.flip = source.flip_safe  # a flip would relabel e.g. the synthetic actions
  if split == cfg.get("train_split", "train") and "train" in split:
    batch = next(data.make_train_iterator(cfg, source))
  else:
    batch = next(data.make_eval_iterator(cfg, source)[0])
  names = source.class_names
  rows = [input_rows(batch, source.skeleton,
                     f"#{int(batch['video_index'][i])}\n"
                     f"{(names[int(batch['label'][i])] if names else batch['label'][i])!s:.24}", i)
          for i in range(n)]
  return save_grid(rows, paths_lib.as_path(out_dir) / f"records_{split}.png", source.skeleton,
                   max_frames, title=f"{records} [{split}] after the input pipeline")


def run(argv: Sequence[str]) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from pgvt_jax import cli  # pylint: disable=g-import-not-at-top
  from pgvt_jax import predict  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  flags.DEFINE_list("workdir", [], "Workdir(s): one row group each (e.g. pgvt,video_only,"
                    "pose_only runs for Fig. 2).", flag_values=fv)
  flags.DEFINE_string("video", None, "Video to look at.", flag_values=fv)
  flags.DEFINE_string("keypoints", None, "Its keypoints (any format predict reads).",
                      flag_values=fv)
  flags.DEFINE_list("layers", ["-1"], "Blocks to show (0-based; negative from the end).",
                    flag_values=fv)
  flags.DEFINE_integer("frames", 8, "Frames (columns) per row.", flag_values=fv)
  flags.DEFINE_string("records", None, "A prepared TFDS dataset directory (skeleton overlays).",
                      flag_values=fv)
  flags.DEFINE_string("split", "train", "Split for --records.", flag_values=fv)
  flags.DEFINE_integer("n", 8, "Clips for --records.", flag_values=fv)
  flags.DEFINE_string("out", "visualize", "Output directory.", flag_values=fv)
  if cli.help_requested(argv):  # a private FlagValues has no --help of its own
    print(cli.private_usage(__doc__, fv))
    return 0
  try:
    fv(list(argv))
    if fv.records:
      paths = [records_figure(fv.records, fv.split, fv.n, fv.out, max_frames=fv.frames)]
    elif fv.workdir and fv.video:
      preds = [predict.load(w) for w in fv.workdir]
      paths = attention_figure(preds, fv.video, fv.keypoints, fv.out,
                               [int(x) for x in fv.layers], fv.frames)
    else:
      raise predict.PredictError("pass --workdir=RUN[,RUN...] --video=FILE, or --records=DIR")
  except (ValueError, flags.Error) as e:
    print(f"visualize: error: {e}", file=sys.stderr)
    return 2
  for p in paths:
    print(p)
  return 0


def main():
  sys.exit(run(sys.argv))


if __name__ == "__main__":
  from pgvt_jax import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.set_cpu_flags()  # before JAX starts (pgvt_jax/xla_flags.py)
  main()
