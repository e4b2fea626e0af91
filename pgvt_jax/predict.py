r"""Classify videos with a trained run: the evaluation's multi-view averaging on new clips.

    python -m pgvt_jax.predict --workdir=runs/d48 --video=clip.mp4 [--keypoints=clip.pkl] \
        [--step=N] [--topk=5] [--json]
    python -m pgvt_jax.predict --workdir=runs/d48 --video=videos/ --out=predictions.csv

    from pgvt_jax import predict
    predictor = predict.load("runs/d48")
    probs = predictor(frames, keypoints)        # frames (T, H, W, 3) uint8; keypoints (T, V, 2)
    predictor.top_k(probs, 5)                   # [(class name, probability), ...]

A clip goes through the same code as an evaluation row: `pgvt_jax.data.ClipProcessor.view`
samples every test view (config.data.eval_clips x eval_crops) and the per-view softmax
probabilities are averaged (`evaluation.ViewAccumulator`). Keypoints are read by data_prep's
readers (mmaction2 pickle/annotation, PAAB/PAAT per-video JSON, NTU `.skeleton`/`.skeleton.npy`,
`.npz`) and aligned to the decoded frames by `data_prep.align`; models without a pose stream
need none. Bad input raises `PredictError` (a ValueError) with a message naming the file and
what was expected; the command line prints it without a traceback.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from data_prep import align, extractors, poses, skeletons, worlds
from data_prep import video as video_lib
from pgvt_jax import checkpointing, data, evaluation, paths, steps
from pgvt_jax.models import common, factory

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


class PredictError(ValueError):
  """Input that predict cannot use; the message says what was expected."""


# ---------------------------------------------------------------------------- workdir


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The config a run was trained with (`<workdir>/config.json`, written by the trainer)."""
  path = paths.as_path(workdir) / "config.json"  # local or a bucket (gs://...)
  if not path.is_file():
    raise PredictError(f"{workdir}: no config.json, not a pgvt_jax workdir (train with "
                       "`python -m pgvt_jax.main --workdir=...` first, or pass --config)")
  cfg = json.loads(path.read_text())
  # JSON turned tuples into lists; the data config reads these as pairs.
  for key in ("crop_area", "crop_aspect"):
    if key in cfg.get("data", {}):
      cfg["data"][key] = tuple(cfg["data"][key])
  return ml_collections.ConfigDict(cfg)


def class_names(config: ml_collections.ConfigDict, workdir: Path, meta: dict) -> list[str]:
  """Label names: the checkpoint's meta, the synthetic generator, the eval split, else indices."""
  n = int(config.model.num_classes)
  names = meta.get("class_names")
  syn = config.get("synthetic_data")
  if not names and syn and syn.get("enabled", False):
    names = worlds.class_names(syn.num_classes, syn.get("class_set", "fine"))
  if not names and (config.data.get("builder_dir") or config.data.get("name")):
    try:
      names = data.open_source(config.data, config.data.eval_split).class_names
    except Exception:  # pylint: disable=broad-except  # the records may live elsewhere
      names = None
  per_class = workdir / "eval_per_class_accuracy.json"
  if not names and per_class.is_file():
    names = list(json.loads(per_class.read_text()))  # written in label order
  if not names or len(names) != n:
    names = [f"class_{i}" for i in range(n)]
  return list(names)


def skeleton_of(config: ml_collections.ConfigDict) -> skeletons.Skeleton:
  """The joint layout the model was trained on (config.data.skeleton, else by joint count)."""
  if config.data.get("skeleton"):
    return skeletons.get(config.data.skeleton)
  v = int(config.model.joints_per_person)
  match = [s for s in skeletons.SKELETONS.values() if s.num_joints == v]
  if len(match) != 1:
    raise PredictError(f"config.model.joints_per_person={v} matches {len(match)} joint layouts; "
                       f"set config.data.skeleton to one of {sorted(skeletons.SKELETONS)}")
  return match[0]


def _flat_shapes(tree) -> dict[str, tuple]:
  return {k: tuple(v.shape) for k, v in common.flatten(tree).items()}


def check_params_fit(saved: dict[str, tuple], expected: dict[str, tuple], where: str,
                     config: ml_collections.ConfigDict) -> None:
  """Raises PredictError when a checkpoint's trainable params do not fit the model config."""
  missing = sorted(set(expected) - set(saved))
  extra = sorted(set(saved) - set(expected))
  shapes = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
  if not (missing or extra or shapes):
    return
  m = config.model
  lines = [f"{where} does not fit config.model (variant={m.variant!r}, backbone={m.backbone!r}, "
           f"num_classes={m.num_classes}):"]
  head = [k for k in shapes if k.startswith("head/")]
  if head:
    lines.append(f"  head: checkpoint {saved[head[0]]}, config {expected[head[0]]} -- a "
                 f"checkpoint of {saved.get('head/bias', ('?',))[0]} classes")
  for k in shapes[:5]:
    lines.append(f"  {k}: checkpoint {saved[k]}, config {expected[k]}")
  if missing:
    lines.append(f"  {len(missing)} params the config needs are not in the checkpoint, e.g. "
                 f"{missing[:3]}")
  if extra:
    lines.append(f"  {len(extra)} params in the checkpoint the config does not have, e.g. "
                 f"{extra[:3]}")
  if missing or extra:
    lines.append("  -- the checkpoint was trained as another variant/architecture")
  lines.append("Use the workdir's own config.json (drop --config) or the matching workdir.")
  raise PredictError("\n".join(lines))


def restore_trainable(config, model, workdir, step: Optional[int] = None):
  """(trainable params, meta, step) of the best checkpoint (else the latest), or `step`.

  Read through `checkpointing.find_step`/`read` (any topology wrote it; damaged steps are
  skipped, never moved). The saved params are compared with the ones the config's model has
  before any array is read, so a checkpoint of another variant or class count is named as such.
  """
  shapes = factory.param_shapes(model)
  expected = factory.split_params(model.config, shapes)[0] if config.freeze_backbone else shapes
  try:
    ref = checkpointing.find_step(workdir, step=step)
  except (FileNotFoundError, checkpointing.CheckpointIntegrityError) as e:
    raise PredictError(str(e)) from None
  saved = ref.saved_tree()
  if not isinstance(saved, dict) or "params" not in saved:
    raise PredictError(f"{ref.directory}: not a pgvt_jax train state (no params)")
  check_params_fit(_flat_shapes(saved["params"]), _flat_shapes(expected),
                   f"checkpoint {ref.directory}", config)
  try:
    state = checkpointing.read(ref)
  except checkpointing.CheckpointRestoreError as e:
    raise PredictError(str(e)) from None
  return checkpointing.to_host(state["params"]), dict(ref.meta or {}), ref.step


# ---------------------------------------------------------------------------- predictor


@dataclasses.dataclass
class Predictor:
  """A trained model plus its test-time input processing. `predictor(frames, keypoints)`."""
  config: ml_collections.ConfigDict
  model: Any
  trainable: Any
  frozen: Any
  class_names: list[str]
  skeleton: skeletons.Skeleton
  step: int
  extractor: Any = None

  def __post_init__(self):
    self._eval_step = jax.jit(steps.make_eval_step(self.model))
    self.processor = data.ClipProcessor(self.config.data, self.skeleton)

  @property
  def needs_pose(self) -> bool:
    """Whether inference reads keypoints: a pose stream (pose_only, PGVT) or PAAB's pose maps.
    video_only and PAAT-trained models (PAAT is training-only) need none."""
    m = self.model.config
    return m.streams.pose or bool(getattr(m, "paab_layers", ()))

  @property
  def params(self) -> dict:
    return common.merge_params(self.trainable, self.frozen)

  # -- inputs -----------------------------------------------------------------
  def record(self, frames: np.ndarray, keypoints: Optional[np.ndarray] = None,
             scores: Optional[np.ndarray] = None, video_id: str = "input") -> dict:
    """A record in the data contract's format, checked against the model.

    frames `(T, H, W, 3)` uint8; keypoints `(T, V, 2)` (one person) or `(T, M, V, 2)` in pixels
    of `frames` (pixel i covers [i, i+1)); scores `(T, [M,] V)`, default 1 where finite.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
      raise PredictError(f"{video_id}: frames have shape {frames.shape} {frames.dtype}; "
                         "expected (T, H, W, 3) uint8 with T >= 1")
    v = self.skeleton.num_joints
    rec = {"frames": frames, "label": 0, "video_id": video_id}
    if keypoints is None:
      if self.needs_pose:
        raise PredictError(self._no_pose_message(video_id))
      return rec
    kp = np.asarray(keypoints, np.float32)
    if kp.ndim == 3:
      kp = kp[:, None]
    if kp.ndim != 4 or kp.shape[-1] != 2 or kp.shape[0] != len(frames):
      raise PredictError(f"{video_id}: keypoints have shape {np.shape(keypoints)}; expected "
                         f"(T={len(frames)}, V, 2) or (T, M, V, 2) pixel coordinates")
    if kp.shape[2] != v:
      raise PredictError(f"{video_id}: keypoints have {kp.shape[2]} joints per person; the "
                         f"model was trained on layout {self.skeleton.name!r} with {v} joints")
    if scores is None:
      sc = np.isfinite(kp).all(-1).astype(np.float32)
    else:
      sc = np.asarray(scores, np.float32).reshape(kp.shape[:3])
    rec["keypoints"] = np.nan_to_num(kp)
    rec["keypoint_score"] = sc
    return rec

  def views(self, record: dict) -> dict[str, np.ndarray]:
    """Every test view of a record as one batch (the rows an evaluation pass would build)."""
    rows = [self.processor.view(record, 0, i) for i in range(self.processor.num_views)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  # -- prediction ---------------------------------------------------------------
  def probs_of_views(self, batch: dict) -> np.ndarray:
    """Per-view probabilities averaged as in evaluation: `(C,)`."""
    probs = np.asarray(jax.device_get(
        self._eval_step(self.trainable, self.frozen, steps.model_inputs(batch))))
    acc = evaluation.ViewAccumulator(1, probs.shape[-1])
    n = len(probs)
    acc.add(probs, np.zeros(n, np.int64), np.zeros(n, np.int64), np.ones(n, bool))
    return (acc.scores[0] / acc.views[0]).astype(np.float32)

  def __call__(self, frames: np.ndarray, keypoints: Optional[np.ndarray] = None,
               scores: Optional[np.ndarray] = None) -> np.ndarray:
    """Class probabilities `(C,)` of one clip (see `record` for the inputs)."""
    return self.probs_of_views(self.views(self.record(frames, keypoints, scores)))

  def load_video(self, video: str | os.PathLike, keypoints: str | os.PathLike | None = None
                 ) -> dict:
    """Decodes a video file and reads/extracts its keypoints -> a record."""
    d = self.config.data
    try:
      decoded = video_lib.decode_video(video, short_side=max(d.short_side, d.image_size))
    except video_lib.VideoDecodeError as e:
      raise PredictError(f"cannot read the video: {e}") from None
    name = Path(video).name
    v = self.skeleton.num_joints
    if keypoints is None and self.needs_pose and self.extractor is not None:
      kp, sc = self.extractor(decoded.frames)
      pose = poses.PoseSequence(np.asarray(kp).transpose(1, 0, 2, 3),
                                np.asarray(sc).transpose(1, 0, 2), decoded.size,
                                f"{self.extractor.name} on {name}")
      decoded = dataclasses.replace(decoded, original_size=decoded.size)
    elif keypoints is not None and self.needs_pose:
      try:
        pose = poses.load_pose_file(keypoints, v, frame_dir=Path(video).stem)
      except (poses.PoseFormatError, OSError) as e:
        raise PredictError(f"cannot read the keypoints: {e}") from None
    else:
      return self.record(decoded.frames, None, video_id=name)
    try:
      aligned = align.align_to_video(pose, decoded, v, self.config.data.max_persons)
    except poses.PoseFormatError as e:
      raise PredictError(f"keypoints do not fit the model (layout {self.skeleton.name!r}, "
                         f"{v} joints): {e}") from None
    rec = self.record(decoded.frames, aligned.keypoint, aligned.score, video_id=name)
    return rec

  def predict_file(self, video: str | os.PathLike, keypoints: str | os.PathLike | None = None
                   ) -> np.ndarray:
    return self.probs_of_views(self.views(self.load_video(video, keypoints)))

  def top_k(self, probs: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(self.class_names[i], float(probs[i])) for i in order]

  def _no_pose_message(self, where: str) -> str:
    return (f"{where}: variant {self.model.config.variant!r} reads body keypoints and none "
            "were given. Pass them (--keypoints=FILE: an mmaction2 .pkl, a PAAB/PAAT per-video "
            ".json, an NTU .skeleton/.skeleton.npy or an .npz with keypoint (M, T, V, 2); "
            "`keypoints=` (T, V, 2) in Python), or configure a pose extractor "
            "(--extractor=mediapipe:<python of a mediapipe-0.10.21 venv>, see "
            "data_prep/extractors.py), or use a pose-free model (variant video_only, or a "
            "PAAT-trained one without PAAB).")


def load(workdir: str | os.PathLike, *, step: Optional[int] = None,
         config: Optional[ml_collections.ConfigDict] = None,
         extractor: Any = None) -> Predictor:
  """A Predictor from a training workdir (its config.json and best, else latest, checkpoint).

  Args:
    workdir: the run's workdir.
    step: a checkpoint step under `checkpoints/` (default: best, else latest).
    config: use this config instead of the workdir's config.json.
    extractor: a pose extractor (`data_prep.extractors`) or its CLI spec, used when a model
      that needs pose gets a video without keypoints; default `config.get("pose_extractor")`.
  """
  from pgvt_jax import experiment  # pylint: disable=g-import-not-at-top
  workdir = checkpointing.as_path(workdir)  # relative paths and buckets both work
  if not workdir.is_dir():
    raise PredictError(f"{workdir}: no such workdir")
  config = load_config(workdir) if config is None else config
  try:
    factory.configure_data(config)  # J; config.data's pixel statistics into the model
    model = factory.create_model(config.model)
  except (ValueError, TypeError) as e:
    raise PredictError(f"{workdir}/config.json: {e}") from None
  skeleton = skeleton_of(config)
  config.data.num_joints = model.config.num_joints
  trainable, meta, step = restore_trainable(config, model, workdir, step)
  params, backbone = experiment.load_params(config, model, None)
  if meta.get("backbone_sha256") != backbone.get("backbone_sha256"):
    raise PredictError(f"{workdir} was trained on backbone {meta.get('backbone')!r}; this "
                       f"config loads {backbone.get('backbone')!r}. Set config."
                       f"{factory.pretrained_dir(config)[0]} to the original weights.")
  if config.freeze_backbone:
    _, frozen = factory.split_params(model.config, params)
  else:
    frozen = {}
  extractor = extractor if extractor is not None else (config.get("pose_extractor") or None)
  if isinstance(extractor, str):
    extractor = extractors.from_spec(extractor)
  return Predictor(config=config, model=model, trainable=trainable, frozen=frozen,
                   class_names=class_names(config, workdir, meta), skeleton=skeleton,
                   step=step, extractor=extractor)


# ---------------------------------------------------------------------------- command line


def _videos_in(path: Path) -> list[Path]:
  return sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)


def _keypoints_for(video: Path, keypoints: Optional[str]) -> Optional[str]:
  """A keypoint file for `video` in a directory of videos: same stem, any reader's extension."""
  if keypoints is None:
    return None
  kp = Path(keypoints)
  if not kp.is_dir():
    return str(kp)  # e.g. one mmaction2 pickle holding every video (matched by frame_dir)
  for ext in (".pkl", ".json", ".npz", ".skeleton", ".skeleton.npy"):
    if (kp / (video.stem + ext)).is_file():
      return str(kp / (video.stem + ext))
  return None


def run(argv: Sequence[str]) -> int:
  """The command line; returns the exit status (2 on bad input, with a one-paragraph message)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from pgvt_jax import cli  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "Training workdir.", flag_values=fv)
  flags.DEFINE_string("video", None, "A video file, or a directory of videos (-> CSV).",
                      flag_values=fv)
  flags.DEFINE_string("keypoints", None, "Keypoint file (or directory, by video stem).",
                      flag_values=fv)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: best, else latest).",
                       flag_values=fv)
  flags.DEFINE_integer("topk", 5, "Classes to print.", flag_values=fv)
  flags.DEFINE_bool("json", False, "Print JSON.", flag_values=fv)
  flags.DEFINE_string("out", None, "CSV path for --video=DIR (default: stdout).",
                      flag_values=fv)
  flags.DEFINE_string("extractor", None, "Pose extractor spec, e.g. mediapipe:~/mp/bin/python.",
                      flag_values=fv)
  config_flags.DEFINE_config_file("config", None, "Use this config instead of the workdir's.",
                                  flag_values=fv, lock_config=False)
  if cli.help_requested(argv):  # a private FlagValues has no --help of its own
    print(cli.private_usage(__doc__, fv))
    return 0
  try:
    fv(list(argv))
    for name in ("workdir", "video"):
      if not fv[name].value:
        raise PredictError(f"--{name} is required")
    predictor = load(fv.workdir, step=fv.step, config=fv.config, extractor=fv.extractor)
    video = Path(fv.video)
    if video.is_dir():
      return _predict_dir(predictor, video, fv.keypoints, fv.topk, fv.out)
    probs = predictor.predict_file(video, fv.keypoints)
  except (PredictError, flags.Error) as e:
    print(f"predict: error: {e}", file=sys.stderr)
    return 2
  top = predictor.top_k(probs, fv.topk)
  if fv.json:
    print(json.dumps({"video": str(video), "step": predictor.step,
                      "top_k": [{"class": c, "probability": p} for c, p in top]}))
  else:
    for c, p in top:
      print(f"{p:8.4f}  {c}")
  return 0


def _predict_dir(predictor: Predictor, folder: Path, keypoints: Optional[str], k: int,
                 out: Optional[str]) -> int:
  videos = _videos_in(folder)
  if not videos:
    raise PredictError(f"{folder}: no videos ({', '.join(VIDEO_EXTENSIONS)})")
  k = min(k, len(predictor.class_names))
  header = ["video"] + [f"{w}{i + 1}" for i in range(k) for w in ("class", "prob")] + ["error"]
  f = open(out, "w", newline="") if out else sys.stdout
  failed = 0
  try:
    writer = csv.writer(f)
    writer.writerow(header)
    for v in videos:
      try:
        top = predictor.top_k(predictor.predict_file(v, _keypoints_for(v, keypoints)), k)
        writer.writerow([v.name] + [x for c, p in top for x in (c, f"{p:.6f}")] + [""])
      except PredictError as e:  # one bad file does not stop the others
        failed += 1
        writer.writerow([v.name] + [""] * (2 * k) + [str(e).splitlines()[0]])
  finally:
    if out:
      f.close()
  if failed:
    print(f"predict: {failed} of {len(videos)} videos failed (see the error column)",
          file=sys.stderr)
  return 0


def main():
  sys.exit(run(sys.argv))


if __name__ == "__main__":
  from pgvt_jax import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.set_cpu_flags()  # before JAX starts (pgvt_jax/xla_flags.py)
  main()
