r"""Input-pipeline throughput: clips/s per CPU core, from ArrayRecord records.

Writes a small TFDS ArrayRecord dataset in the data contract's schema (JPEG
frames at short side 256, COCO-17 keypoints), then times the training
pipeline (16 frames at 224 px + 48 aligned pose frames, random resized crop,
flip; frames leave as uint8, normalised later on the device) and the 3-crop eval pipeline.

Frames come from a real clip (mmaction2's demo.mp4, 340x256, in
../shared/realdata) when present, else from smooth synthetic images; each
record holds `--frames` stored frames (Diving48's median is 144).

  python benchmarks/input_pipeline.py                 # all settings
  python benchmarks/input_pipeline.py --records=8 --batches=4   # quick

With --config, times that config's own training pipeline (its frame counts,
image size, crops, pose format, batch size) with one thread, on records of
the config's shape: the built-in synthetic dataset (its generator, fewer
clips) when the config uses it, else the records above (Diving48's shape):

  python benchmarks/input_pipeline.py --config=configs/demo.py
  python benchmarks/input_pipeline.py --config=configs/diving48.py --records=16

"clips per CPU-second" is what to compare with the train step's clips/s
(benchmarks/train_step.py): ratio >= 2 means one core of input feeds the
step twice over.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import os
import pathlib
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils

from data_prep import records
from pgvt_jax import config_files, data

REALDATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "realdata"


def _source_frames(num: int) -> list[np.ndarray]:
  """`num` RGB frames with short side 256."""
  clip = REALDATA / "mmaction2_demo.mp4"
  if clip.exists():
    import av  # pylint: disable=g-import-not-at-top
    with av.open(str(clip)) as container:
      frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    frames = (frames * (num // len(frames) + 1))[:num]
    h, w = frames[0].shape[:2]
    if min(h, w) != 256:
      size = (round(w * 256 / min(h, w)), round(h * 256 / min(h, w)))
      frames = [np.asarray(Image.fromarray(f).resize(size)) for f in frames]
    return frames
  yy, xx = np.mgrid[0:256, 0:340]
  return [np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256,
                    (xx + yy) // 3 % 256], -1).astype(np.uint8)
          for i in range(num)]


def _jpeg(frame: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


class BenchRecords(tfds.core.GeneratorBasedBuilder):
  """Records with data_prep's features (the data contract's schema)."""
  VERSION = tfds.core.Version("1.0.0")
  NUM_RECORDS = 48
  NUM_FRAMES = 144

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default needs `importlib_resources`, not installed here.
    return epath.Path(inspect.getfile(cls))

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=records.features(num_joints=17, num_classes=4),
        metadata=tfds.core.MetadataDict(joint_layout="coco17"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    t = self.NUM_FRAMES
    frames = _source_frames(t)
    jpegs = [_jpeg(f) for f in frames]
    h, w = frames[0].shape[:2]
    rng = np.random.default_rng(0)
    for i in range(self.NUM_RECORDS):
      m = 1 + i % 2
      yield i, {
          "video_id": f"bench{i}", "label": i % 4, "frames": jpegs,
          "frame_indices": np.arange(t, dtype=np.int32),
          "keypoints": (rng.random((t, m, 17, 2)) * (w, h)).astype(np.float32),
          "keypoint_score": rng.random((t, m, 17)).astype(np.float32),
          "fps": np.float32(30), "original_size": np.array([h, w], np.int32)}


def _cpu_seconds() -> float:
  """CPU time of this process and its live children (grain's workers).

  Clips per CPU-second is the per-core rate even when other jobs share the
  machine, where wall-clock rates drop.
  """
  total = time.process_time()
  tick = os.sysconf("SC_CLK_TCK")
  me = str(os.getpid())
  for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
    try:
      fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if fields[1] == me:  # ppid
      total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
  return total


def _time(iterator, batches: int, batch_size: int,
          warmup: int) -> tuple[float, float]:
  """(clips per wall second, clips per CPU second) after `warmup` batches."""
  for _ in range(warmup):
    next(iterator)
  wall, cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(batches):
    next(iterator)
  clips = batches * batch_size
  return (clips / (time.perf_counter() - wall),
          clips / (_cpu_seconds() - cpu))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--records", type=int, default=None,
                 help="records to write (default 48; with --config and the "
                      "synthetic dataset: the config's num_train)")
  p.add_argument("--frames", type=int, default=144)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--batches", type=int, default=8)
  p.add_argument("--cores", type=int, default=0,
                 help="threads/workers for the parallel settings "
                      "(default: all CPU cores)")
  p.add_argument("--json", default="", help="also write the results here")
  p.add_argument("--config", default="",
                 help="time this experiment config's training pipeline only "
                      "(e.g. configs/demo.py, configs/diving48.py:vit_l14)")
  p.add_argument("--threads", type=int, default=1,
                 help="with --config: grain threads (1 = the per-core rate)")
  args = p.parse_args()
  if args.config:
    result = measure_config(args)
    if args.json:
      pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
    return

  args.records = args.records or 48
  BenchRecords.NUM_RECORDS, BenchRecords.NUM_FRAMES = args.records, args.frames
  with tempfile.TemporaryDirectory(prefix="pgvt_bench_") as tmp:
    start = time.perf_counter()
    builder = BenchRecords(data_dir=tmp, file_format="array_record")
    builder.download_and_prepare()
    size = sum(f.stat().st_size for f in pathlib.Path(builder.data_dir).glob(
        "*.array_record*"))
    print(f"wrote {args.records} records x {args.frames} frames "
          f"({size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f}s; "
          f"frames from {'demo.mp4' if REALDATA.exists() else 'synthetic'}")
    results, cores = _measure(args, str(builder.data_dir))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(dict(
        args=vars(args), cores=cores, results=results), indent=2))


def _measure(args, builder_dir: str) -> tuple[list[dict], int]:
  """Times each setting; prints a table."""
  cfg = data.get_config()
  cfg.update(dict(builder_dir=builder_dir, num_frames=16,
                  pose_frames=48, image_size=224, short_side=224,
                  train_split="train", eval_split="train",
                  train_batch_size=args.batch, eval_batch_size=args.batch,
                  eval_crops=3, eval_clips=1, prefetch=4))
  cores = args.cores or os.cpu_count() or 1
  settings = [  # (name, pipeline, cores used, overrides)
      ("train, 1 thread", "train", 1, dict(num_threads=1)),
      (f"train, {cores} threads", "train", cores, dict(num_threads=cores)),
      (f"train, {cores} worker processes", "train", cores,
       dict(num_workers=cores, num_threads=1)),
      ("train + 112px heatmaps, 1 thread", "train", 1,
       dict(num_threads=1, pose_format="heatmap")),
      ("eval 3 crops, 1 thread", "eval", 1, dict(num_threads=1)),
  ]
  results = []
  print(f"\n{'setting':36s} {'clips/s':>8s} {'per core':>9s} "
        f"{'per CPU-s':>9s}")
  for name, kind, used, overrides in settings:
    c = cfg.copy_and_resolve_references()
    c.update(overrides)
    if kind == "train":
      it = data.make_train_iterator(c, process_index=0, process_count=1)
    else:
      it = _cycle(c)
    rate, per_cpu_s = _time(it, args.batches, args.batch,
                            warmup=max(2, c.num_workers))
    if hasattr(it, "close"):
      it.close()
    results.append(dict(setting=name, clips_per_s=rate,
                        clips_per_s_per_core=rate / used,
                        clips_per_cpu_second=per_cpu_s))
    print(f"{name:36s} {rate:8.1f} {rate / used:9.1f} {per_cpu_s:9.1f}")
  return results, cores


def load_config(spec: str):
  """An experiment config from 'configs/x.py[:arg]' (as `--config` of main)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = config_files.resolve(spec).partition(":")
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def measure_config(args) -> dict:
  """Clips/s and clips per CPU-second of `args.config`'s training pipeline."""
  config = load_config(args.config)
  cfg = config.data
  with tempfile.TemporaryDirectory(prefix="pgvt_bench_") as tmp:
    syn = config.get("synthetic_data")
    start = time.perf_counter()
    if syn and syn.get("enabled", False):
      args.records = args.records or syn.num_train
      from data_prep.datasets import synthetic  # pylint: disable=g-import-not-at-top
      builder_dir = synthetic.build(
          tmp, num_train=args.records, num_test=4, num_classes=syn.num_classes,
          num_frames=syn.num_frames, image_size=syn.image_size, seed=syn.seed,
          num_workers=1, class_set=syn.get("class_set", "fine"))
      what = (f"{args.records} synthetic clips x {syn.num_frames} frames at "
              f"{syn.image_size} px (data_prep/synthetic.py)")
    else:
      args.records = args.records or 48
      BenchRecords.NUM_RECORDS, BenchRecords.NUM_FRAMES = args.records, args.frames
      builder = BenchRecords(data_dir=tmp, file_format="array_record")
      builder.download_and_prepare()
      builder_dir = builder.data_dir
      what = (f"{args.records} records x {args.frames} JPEG frames, short side 256, "
              "COCO-17 keypoints")
    print(f"wrote {what} in {time.perf_counter() - start:.1f}s")
    cfg.update(dict(builder_dir=str(builder_dir), name="", train_split="train",
                    num_threads=args.threads, num_workers=0))
    batch = cfg.train_batch_size
    it = data.make_train_iterator(cfg, process_index=0, process_count=1)
    rate, per_cpu_s = _time(it, args.batches, batch, warmup=2)
    if hasattr(it, "close"):
      it.close()
  result = dict(config=args.config, records=what, batch=batch, threads=args.threads,
                batches=args.batches, num_frames=cfg.num_frames,
                pose_frames=cfg.pose_frames, image_size=cfg.image_size,
                pose_format=cfg.pose_format, clips_per_s=rate,
                clips_per_cpu_second=per_cpu_s, load_average=os.getloadavg())
  print(f"{args.config}: train pipeline ({cfg.num_frames} frames at "
        f"{cfg.image_size} px + {cfg.pose_frames} pose frames, {cfg.pose_format}, "
        f"batch {batch}, {args.threads} thread(s)): {rate:.1f} clips/s, "
        f"{per_cpu_s:.1f} clips per CPU-second (load average "
        f"{os.getloadavg()[0]:.1f})")
  return result


def _cycle(cfg):
  """Eval batches, restarting the pass so any number can be timed."""
  while True:
    it, _ = data.make_eval_iterator(cfg, process_index=0, process_count=1)
    yield from it


if __name__ == "__main__":
  main()
