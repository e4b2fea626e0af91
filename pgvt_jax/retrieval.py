r"""k-NN video retrieval with a trained model's clip features (PAAB/PAAT Sec. 4.3, Fig. 5).

    python -m pgvt_jax.retrieval --workdir=RUN \
        --query=~/tensorflow_datasets/nucla/cv3/1.0.0:test \
        --gallery=~/tensorflow_datasets/nucla/cv3/1.0.0:train

The model of RUN (its config.json, or --config, and its best checkpoint, else its latest)
encodes every video of both record sets: the clip feature (`out["feature"]`, the
final-LayerNorm CLS token(s) before the head) of each test view, averaged over the views, then
L2-normalised. Each query's gallery videos are ranked by cosine similarity; R@k is the fraction
of queries with a video of their class among the k nearest (the paper's "successful if the
top k nearest neighbours contain one video of the same class"). When query and gallery are
the same records, a video is never its own neighbour. Classes are matched by name when both
record sets name their classes, else by index.

Writes <out>/retrieval.json (R@k, counts, the sets) and <out>/neighbours.csv (query, rank,
neighbour, similarity, labels); <out> defaults to RUN/retrieval.

During training, retrieval is one of the loop's evaluators (`make_evaluator`): with
`--config.eval_retrieval.query=DIR[:SPLIT] --config.eval_retrieval.gallery=DIR[:SPLIT]` every
evaluation also reports `eval/retrieval_R@k` (and the last one writes RUN/retrieval/).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Sequence

from absl import app, flags, logging
import jax
import ml_collections
import numpy as np

from pgvt_jax import checkpointing, data, experiment, partitioning, paths, steps
from pgvt_jax.models import common, factory

DEFAULT_KS = (1, 5, 10)


# ------------------------------------------------------------------ metric

def cosine_similarity(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
  """`(Q, D)`, `(G, D)` -> `(Q, G)` cosine similarities (zero vectors give 0)."""
  def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  return unit(query) @ unit(gallery).T


def rank_gallery(sim: np.ndarray, exclude_self: bool = False) -> np.ndarray:
  """`(Q, G)` similarities -> `(Q, G)` gallery indices, most similar first (ties: lower
  index first). With `exclude_self` (query i is gallery i) each query's own video is last."""
  sim = np.array(sim, np.float64)
  if exclude_self:
    np.fill_diagonal(sim, -np.inf)
  return np.argsort(-sim, axis=1, kind="stable")


def recall_at_k(order: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                ks: Sequence[int] = DEFAULT_KS, num_candidates: int | None = None
                ) -> dict[str, float]:
  """R@k: fraction of queries whose k nearest gallery videos include their class.

  Args:
    order: `(Q, G)` from `rank_gallery`.
    query_labels, gallery_labels: `(Q,)`, `(G,)` comparable class ids.
    ks: the k's; k larger than the candidates counts all of them.
    num_candidates: gallery videos a query may retrieve (G - 1 when it excludes itself).
  """
  n = order.shape[1] if num_candidates is None else num_candidates
  hits = np.asarray(gallery_labels)[order[:, :n]] == np.asarray(query_labels)[:, None]
  first = np.where(hits.any(axis=1), hits.argmax(axis=1), np.iinfo(np.int64).max)
  return {f"R@{k}": float(np.mean(first < k)) for k in ks}


# ------------------------------------------------------------------ records and model

def parse_records(spec: str) -> tuple[str, str | None]:
  """'DIR[:SPLIT]' -> (DIR, SPLIT or None)."""
  path, sep, split = spec.rpartition(":")
  if not sep or "/" in split or not split:
    return spec, None
  return path, split


def open_records(spec: str, data_cfg: ml_collections.ConfigDict
                 ) -> tuple[data.Source, ml_collections.ConfigDict, str]:
  """A record set as a Source, with the data config that reads it; split defaults to the
  config's eval split, then test / val / train, whichever the records have."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path, split = parse_records(spec)
  cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  cfg.builder_dir, cfg.name = paths.as_str(path), ""  # absolute, or a gs:// URL kept whole
  cfg.num_joints = 0  # another dataset may have another joint layout
  cfg.skeleton = ""
  if split is None:
    if not paths.as_path(cfg.builder_dir).is_dir():
      raise FileNotFoundError(f"--query/--gallery {spec!r}: no records directory "
                              f"{cfg.builder_dir}")
    have = set(tfds.builder_from_directory(cfg.builder_dir).info.splits)
    for cand in (data_cfg.eval_split, "test", "val", "train"):
      if cand in have:
        split = cand
        break
    else:
      raise ValueError(f"{spec!r}: choose a split with {spec}:<split> ({sorted(have)})")
  cfg.eval_split = split
  return data.open_source(cfg, split), cfg, split


def load_run_config(workdir: Path) -> ml_collections.ConfigDict:
  """The config a run was trained with (`<workdir>/config.json`, lists back to tuples)."""
  path = workdir / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: pass the training config with --config")
  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(tuples(v) for v in x)
    return x
  return ml_collections.ConfigDict(tuples(json.loads(path.read_text())))


def restore_params(config: ml_collections.ConfigDict, workdir: Path):
  """(model, params, mesh): initialised/backbone params with the run's trained params over
  them (best checkpoint, else latest), every restored leaf matched by path."""
  mesh_cfg = partitioning.fit_to_devices(config.mesh)  # trained on a pod, read on one GPU
  mesh = partitioning.make_mesh(mesh_cfg)
  model = factory.create_model(config.model)
  shapes = jax.eval_shape(
      lambda r: model.init(r, factory.dummy_batch(model.config))["params"],
      jax.random.PRNGKey(0))
  params, _ = experiment.load_params(config, model,
                                     partitioning.tree_shardings(shapes, mesh, mesh_cfg))
  ref = checkpointing.find_step(workdir)  # best, else latest; any topology wrote it
  restored = checkpointing.read(ref)
  logging.info("Restored %s step %d", ref.kind, ref.step)
  flat, trained = common.flatten(params), common.flatten(restored["params"])
  unknown = sorted(set(trained) - set(flat))
  if unknown:
    raise ValueError(f"checkpoint of {workdir} has params the model of its config lacks: "
                     f"{unknown[:5]}")
  for k, v in trained.items():
    if tuple(v.shape) != tuple(flat[k].shape):
      raise ValueError(f"checkpoint param {k} has shape {v.shape}, the model "
                       f"{flat[k].shape}")
    flat[k] = jax.device_put(v, flat[k].sharding)  # replicated -> the run's mesh
  return model, common.unflatten(flat), mesh


def fit_joints(batch: dict, num_joints: int) -> dict:
  """A batch whose pose has J joints for a model that reads `num_joints`: extra slots are
  masked (PAAB's inference reads only P2D, the union of the visible joints, so this is exact);
  more joints than the model has cannot be represented (error)."""
  j = batch["pose"].shape[2]
  if j == num_joints:
    return batch
  if j > num_joints:
    raise ValueError(f"these records have {j} joints per frame, the model's PAAB reads "
                     f"{num_joints}: PAAB pose maps of this set cannot be formed")
  pad = num_joints - j
  out = dict(batch)
  out["pose"] = np.pad(batch["pose"], ((0, 0), (0, 0), (0, pad), (0, 0)))
  out["pose_mask"] = np.pad(batch["pose_mask"], ((0, 0), (0, 0), (0, pad)))
  return out


def make_feature_fn(model, mesh=None):
  """jit (params, batch) -> `(B, D)` clip features (`out["feature"]`, eval mode); replicated
  over `mesh` when given (every host of a multi-host run reads them whole)."""
  out = partitioning.replicated(mesh) if mesh is not None else None
  return jax.jit(lambda p, b: model.apply(
      {"params": p}, steps.model_inputs(b), train=False)[1]["feature"], out_shardings=out)


def extract_features(model, params, mesh, source: data.Source,
                     data_cfg: ml_collections.ConfigDict, feature_fn=None
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """`(N, D)` view-averaged clip features, `(N,)` labels, video ids of a record set."""
  feature_fn = feature_fn or make_feature_fn(model)
  sharding = partitioning.batch_sharding(mesh)
  it, info = data.make_eval_iterator(data_cfg, source)
  sums, counts = None, np.zeros(info.num_videos, np.int64)
  reads_pose = bool(getattr(model.config, "paab_layers", ()))
  for host_batch in it:
    host_batch = dict(host_batch)
    if reads_pose:  # PAAB's pose maps also at inference; another dataset's joint count
      host_batch = fit_joints(host_batch, model.config.num_joints)
    batch = data.to_global(host_batch, sharding)
    feats = np.asarray(jax.device_get(feature_fn(params, batch)), np.float64)
    if sums is None:
      sums = np.zeros((info.num_videos, feats.shape[-1]), np.float64)
    keep = np.asarray(host_batch["valid"], bool)
    vid = np.asarray(host_batch["video_index"])[keep]
    np.add.at(sums, vid, feats[keep])
    np.add.at(counts, vid, 1)
  if np.any(counts == 0):
    raise ValueError("some videos received no view")
  labels = np.array([int(source.records[i]["label"]) for i in range(len(source))])
  ids = []
  for i in range(len(source)):
    v = source.records[i].get("video_id", str(i))
    ids.append(v.decode() if isinstance(v, bytes) else str(v))
  return sums / counts[:, None], labels, ids


def _comparable(q_src: data.Source, g_src: data.Source, q_labels, g_labels):
  """Labels both sets can be compared by: class names when both sets name them and the
  names differ, else indices."""
  qn, gn = q_src.class_names, g_src.class_names
  if qn and gn and tuple(qn) != tuple(gn):
    return (np.array([qn[i] for i in q_labels], object),
            np.array([gn[i] for i in g_labels], object))
  return q_labels, g_labels


def retrieve(model, params, mesh, query: tuple, gallery: tuple, ks: Sequence[int] = DEFAULT_KS,
             feature_fn=None) -> tuple[dict, dict]:
  """R@k of the gallery for the query set, each `(source, data config, split)` from
  `open_records`; `params` all of them (trainable and frozen merged). Returns (result, details
  for `write_results`)."""
  (q_src, q_cfg, q_split), (g_src, g_cfg, g_split) = query, gallery
  feature_fn = feature_fn or make_feature_fn(model)
  qf, ql, qid = extract_features(model, params, mesh, q_src, q_cfg, feature_fn)
  same = (os.path.abspath(q_cfg.builder_dir) == os.path.abspath(g_cfg.builder_dir)
          and q_split == g_split)
  if same:
    gf, gl, gid = qf, ql, qid
  else:
    gf, gl, gid = extract_features(model, params, mesh, g_src, g_cfg, feature_fn)
  ql_c, gl_c = _comparable(q_src, g_src, ql, gl)
  sim = cosine_similarity(qf, gf)
  order = rank_gallery(sim, exclude_self=same)
  candidates = len(gid) - 1 if same else len(gid)
  result = {**recall_at_k(order, ql_c, gl_c, ks, candidates),
            "num_queries": len(qid), "num_gallery": len(gid), "exclude_self": same,
            "query": f"{q_cfg.builder_dir}:{q_split}",
            "gallery": f"{g_cfg.builder_dir}:{g_split}"}
  details = dict(sim=sim, order=order, qid=qid, gid=gid, ql=ql_c, gl=gl_c,
                 candidates=candidates)
  return result, details


def write_results(out, result: dict, details: dict, neighbours: int = 10) -> None:
  """<out>/retrieval.json and <out>/neighbours.csv (the first `neighbours` per query)."""
  out = paths.as_path(out)  # may be a bucket
  out.mkdir(parents=True, exist_ok=True)
  (out / "retrieval.json").write_text(json.dumps(result, indent=2))
  d = details
  with (out / "neighbours.csv").open("wb") as raw, io.TextIOWrapper(
      raw, encoding="utf-8", newline="") as f:  # epath opens bytes; csv wants newline=""
    w = csv.writer(f)
    w.writerow(["query", "query_label", "rank", "neighbour", "neighbour_label", "similarity",
                "same_class"])
    for i in range(len(d["qid"])):
      for r, j in enumerate(d["order"][i, :min(neighbours, d["candidates"])]):
        w.writerow([d["qid"][i], d["ql"][i], r + 1, d["gid"][j], d["gl"][j],
                    f"{d['sim'][i, j]:.6f}", int(d["ql"][i] == d["gl"][j])])


def make_evaluator(config: ml_collections.ConfigDict, model, mesh):
  """The training loop's retrieval evaluator (pgvt_jax/tasks.py): (trainable, frozen, *,
  save_dir) -> {"eval/retrieval_R@k": ...} for config.eval_retrieval's query and gallery
  record sets ("DIR[:SPLIT]", read with the run's data config; opened once). With save_dir
  (the run's last evaluation) it also writes save_dir/retrieval/."""
  spec = config.eval_retrieval
  sets = [open_records(spec.query, config.data), open_records(spec.gallery, config.data)]
  ks = tuple(spec.get("ks", DEFAULT_KS))
  feature_fn = make_feature_fn(model, mesh)

  def evaluate(trainable, frozen, *, save_dir=None) -> dict:
    params = common.merge_params(trainable, frozen)
    result, details = retrieve(model, params, mesh, *sets, ks=ks, feature_fn=feature_fn)
    if save_dir is not None and jax.process_index() == 0:
      write_results(paths.as_path(save_dir) / "retrieval", result, details)
    return {f"eval/retrieval_R@{k}": result[f"R@{k}"] for k in ks}

  return evaluate


def run(workdir: str, query: str, gallery: str, *, config: ml_collections.ConfigDict | None
        = None, ks: Sequence[int] = DEFAULT_KS, out_dir: str | None = None,
        batch_size: int = 0, clips: int = 0, crops: int = 0, neighbours: int = 10) -> dict:
  """Features of both record sets, R@k, files in `out_dir`; returns the result dict."""
  workdir = paths.as_path(workdir)
  config = config if config is not None else load_run_config(workdir)
  factory.configure_data(config)  # the model family's pixel statistics, J
  d = config.data
  if batch_size:
    d.eval_batch_size = batch_size
  if clips:
    d.eval_clips = clips
  if crops:
    d.eval_crops = crops
  model, params, mesh = restore_params(config, workdir)
  result, details = retrieve(model, params, mesh, open_records(query, d),
                             open_records(gallery, d), ks)
  result["workdir"] = str(workdir)
  write_results(paths.as_path(out_dir) if out_dir else workdir / "retrieval", result, details,
                neighbours)
  logging.info("Retrieval: %s", result)
  return result


# ------------------------------------------------------------------ CLI

def _define_flags() -> None:
  """The command line, defined at launch only: importing this module defines no flags
  (pgvt_jax/cli.py says why)."""
  from pgvt_jax import config_files  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "A training run (checkpoints, config.json).")
  flags.DEFINE_string("query", None, "Query records: TFDS directory[:split].")
  flags.DEFINE_string("gallery", None, "Gallery records: TFDS directory[:split].")
  flags.DEFINE_string("out", None, "Output directory; default <workdir>/retrieval.")
  flags.DEFINE_list("ks", ["1", "5", "10"], "The k of R@k.")
  flags.DEFINE_integer("batch_size", 0, "Eval batch size (0: the config's).")
  flags.DEFINE_integer("clips", 0, "Test clips per video (0: the config's).")
  flags.DEFINE_integer("crops", 0, "Test crops per clip, 1 or 3 (0: the config's).")
  flags.DEFINE_integer("neighbours", 10, "Neighbours per query in the CSV.")
  config_files.DEFINE_config_file("config", None, "Training config (default: <workdir>/"
                                  "config.json).", lock_config=False)
  flags.mark_flags_as_required(["workdir", "query", "gallery"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  result = run(f.workdir, f.query, f.gallery, config=f.config,
               ks=[int(k) for k in f.ks], out_dir=f.out, batch_size=f.batch_size,
               clips=f.clips, crops=f.crops, neighbours=f.neighbours)
  print(json.dumps({k: result[k] for k in result if k.startswith("R@")}))


if __name__ == "__main__":
  from pgvt_jax import cli, xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.set_cpu_flags()  # before JAX starts (pgvt_jax/xla_flags.py)
  cli.run_app(main, _define_flags, __doc__)
