"""What keeps a workdir sane across runs: config checks, a lock, and the config history.

* `validate_config(config)`: values that would divide by zero or silently train nothing are
  `ConfigError`s, raised before anything is compiled or written.
* `WorkdirLock`: one run per workdir. `<workdir>/.lock` names the holder (pid, host, start);
  the lock itself is an `flock` on that file, which the kernel releases when the holder dies
  (kill -9 included), so a lock left behind by a dead run is stale and simply taken over.
  A bucket (`gs://...`) has no `flock`: there the lock is the lock object itself, created when
  absent (not atomically: two runs started within moments of each other can both pass) and
  deleted on a clean exit. A run that died without exiting cleanly (kill -9, a lost host)
  leaves it behind, and since a bucket cannot tell a live holder from a dead one it is never
  taken over: the next run refuses, naming the holder and the object to delete.
* `check_resume(config, meta)`: each checkpoint stores the flattened config it was trained
  with. On resume every changed field is named; fields that change parameter or optimizer-state
  shapes are refused, other training fields need `--config.allow_config_changes=True`, and
  bookkeeping fields (logging, checkpoint cadence, threads, mesh) may change freely.
* `record_config(...)`: every run appends its config to `config_history.jsonl`; `config.json`
  holds the config of the latest training run and is never written by `--mode=evaluate`.

Paths go through `pgvt_jax.paths.as_path`: a workdir may be local or a `gs://` bucket.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import socket
from typing import Any, Callable, Optional

import ml_collections
from absl import logging
from etils import epath

from pgvt_jax import paths

LOCK_FILE = ".lock"
HISTORY_FILE = "config_history.jsonl"
CONFIG_FILE = "config.json"

# Fields that change the shapes/structure of the saved state: never changed on resume.
SHAPE_FIELDS = ("model.", "freeze_backbone", "clip_dir", "optim.optimizer", "optim.momentum",
                "optim.nesterov", "optim.grad_accum_steps", "data.num_joints",
                "data.num_frames", "data.pose_frames")
# Bookkeeping that does not change what is trained: free to change on resume. (remat and
# micro-batches change how a step holds its batch in memory, not the recipe: "auto" decides
# them again on every start, for the devices of that start.)
FREE_FIELDS = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
               "async_checkpoints", "restore_step", "allow_config_changes", "best_metric",
               "mesh.", "data.num_threads", "data.prefetch", "data.device_prefetch",
               "data.eval_batch_size", "model.remat", "optim.micro_batches",
               "data.builder_dir", "synthetic_data.data_dir",
               "alignment.eval_batch_size", "synthetic_world.data_dir", "eval_retrieval.")


class ConfigError(ValueError):
  """A config value that cannot work; raised before compiling."""


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


# ----------------------------------------------------------------------------- validation
def validate_config(config: ml_collections.ConfigDict, *, train: bool = True) -> None:
  """Raises ConfigError naming the field for values that cannot work."""
  def need(ok: bool, field: str, expected: str):
    if not ok:
      raise ConfigError(f"config.{field}={_get(config, field)!r}: expected {expected}")

  d = config.data
  for field in ("data.eval_batch_size", "alignment.eval_batch_size"):  # the task's eval batch
    if _has(config, field):
      need(_get(config, field) > 0, field, "a positive batch size")
  if train:
    need(d.train_batch_size > 0, "data.train_batch_size", "a positive batch size")
    if "num_epochs" in config:
      need(config.total_steps >= 0, "total_steps", ">= 0 (0 = use num_epochs)")
      need(config.total_steps > 0 or config.num_epochs > 0, "num_epochs",
           "> 0 when total_steps is 0 (otherwise the run trains nothing)")
    else:  # a task counted in steps only (alignment)
      need(config.total_steps > 0, "total_steps", "> 0 (otherwise the run trains nothing)")
    need(config.log_every > 0, "log_every", "> 0 (steps between metric logs)")
    need(config.checkpoint_every > 0, "checkpoint_every", "> 0 (steps between checkpoints)")
    need(config.eval_every >= 0, "eval_every", ">= 0 (0 = only at the end)")
    need(config.keep_checkpoints >= 1, "keep_checkpoints", ">= 1")
    need(config.get("restore_step", 0) >= 0, "restore_step", ">= 0 (0 = the latest)")
    need(config.optim.get("grad_accum_steps", 1) >= 1, "optim.grad_accum_steps", ">= 1")
    k = config.optim.get("micro_batches", 1)
    need(k == "auto" or (isinstance(k, int) and not isinstance(k, bool) and k >= 1)
         or (isinstance(k, str) and k.isdigit() and int(k) >= 1),
         "optim.micro_batches", '"auto" or an integer >= 1')


def _get(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def _has(config, dotted: str) -> bool:
  for part in dotted.split("."):
    if part not in config:
      return False
    config = config[part]
  return True


# ----------------------------------------------------------------------------- lock
class WorkdirLock:
  """Exclusive lock on a workdir for the lifetime of a run (see module docstring)."""

  def __init__(self, workdir: str | os.PathLike, mode: str):
    self.path = paths.as_path(workdir) / LOCK_FILE
    self.mode = mode
    self._fd: Optional[int] = None
    self._object: Optional[str] = None   # what this run wrote into a bucket's lock object

  def acquire(self) -> "WorkdirLock":
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if not paths.is_local(self.path):
      return self._acquire_object()
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirLockedError(
          f"{_in_use(self.path.parent, holder)}. Two runs on one workdir would train every "
          "step twice or overwrite each other's checkpoints: wait for it, stop it, or use "
          "another --workdir. (The lock is released automatically when that process exits, "
          "even if killed.)") from None
    stale = _read_holder(fd)
    if stale:
      logging.warning("taking over a stale lock on %s left by pid %s on %s (that process is "
                      "gone)", self.path.parent, stale.get("pid"), stale.get("host"))
    os.ftruncate(fd, 0)
    os.pwrite(fd, self._holder_line().encode(), 0)
    self._fd = fd
    return self

  def _acquire_object(self) -> "WorkdirLock":
    """A bucket: create the lock object if absent; an existing one is never taken over."""
    holder = _parse_holder(self.path.read_text()) if self.path.exists() else {}
    if holder:
      raise WorkdirLockedError(
          f"{_in_use(self.path.parent, holder)}, or was until it died: on a bucket the lock "
          "cannot tell a live run from a dead one (there is no flock), so it is never taken "
          "over. If that run is still going, wait for it, stop it, or use another --workdir. "
          f"If it is gone (killed, lost host), delete {self.path} (e.g. `gsutil rm "
          f"{self.path}`) and start again.")
    line = self._holder_line()
    self.path.write_text(line)
    if self.path.read_text() != line:  # another run wrote it in between: it keeps it
      raise WorkdirLockedError(
          f"{_in_use(self.path.parent, _parse_holder(self.path.read_text()))}: it took the "
          "lock while this run was taking it. Use another --workdir or wait for it.")
    logging.warning("workdir %s is a bucket: its lock is the object %s, created when absent "
                    "(not atomically) and deleted when this run exits cleanly; if this run "
                    "dies without that, delete it before the next run.", self.path.parent,
                    self.path)
    self._object = line
    return self

  def _holder_line(self) -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "mode": self.mode,
                       "started": _now()}) + "\n"

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)   # an empty lock file = nobody holds it
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
    if self._object is not None:
      try:  # only our own lock: never delete one that another run holds
        if self.path.read_text() == self._object:
          self.path.unlink()
      except FileNotFoundError:
        pass
      self._object = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _in_use(workdir: epath.Path, holder: dict) -> str:
  return (f"workdir {workdir} is in use by pid {holder.get('pid', '?')} on host "
          f"{holder.get('host', '?')} ({holder.get('mode', '?')}, started "
          f"{holder.get('started', '?')})")


def _read_holder(fd: int) -> dict:
  try:
    return _parse_holder(os.pread(fd, 4096, 0).decode())
  except (ValueError, OSError):
    return {"pid": "?", "host": "?"}


def _parse_holder(raw: str) -> dict:
  """The holder a lock file names; {} when empty (nobody); unknown fields for garbage."""
  try:
    return json.loads(raw) if raw.strip() else {}
  except ValueError:
    return {"pid": "?", "host": "?"}


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- fingerprint
def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'optim.lr': 3e-3, ...}: JSON-able leaves of the config, dotted names."""
  out = {}

  def walk(prefix, node):
    for k, v in node.items():
      name = f"{prefix}{k}"
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        walk(name + ".", v)
      else:
        out[name] = json.loads(json.dumps(v, default=str))

  walk("", json.loads(config.to_json_best_effort()))
  return out


def fingerprint(flat: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def _category(field: str) -> str:
  if any(field == f or (f.endswith(".") and field.startswith(f)) for f in FREE_FIELDS):
    return "free"
  if any(field == f or (f.endswith(".") and field.startswith(f)) for f in SHAPE_FIELDS):
    return "shape"
  return "training"


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  missing = object()
  return {k: (saved.get(k, "<absent>"), now.get(k, "<absent>"))
          for k in sorted(set(saved) | set(now))
          if saved.get(k, missing) != now.get(k, missing)}


def _unflat(flat: dict[str, Any]) -> ml_collections.ConfigDict:
  nested: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split(".")
    node = nested
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return ml_collections.ConfigDict(nested)


def check_resume(config: ml_collections.ConfigDict, meta: dict, step: int,
                 workdir: str | os.PathLike,
                 derive: Optional[Callable[[ml_collections.ConfigDict], Any]] = None
                 ) -> list[str]:
  """Compares the config with the one saved at `step`; returns the accepted changed fields.

  `derive(config)` fills the fields a run derives in place (J, pixel statistics): both sides
  are compared after it, so the run's own config.json (derived fields written out) resumes
  a run started from the experiment file (derived fields unset), and vice versa.
  """
  saved = meta.get("config")
  if saved is None:  # checkpoint written before fingerprints existed
    return []
  now = flat_config(config)
  if derive is not None:
    try:
      saved_cfg, now_cfg = _unflat(saved), ml_collections.ConfigDict(config.to_dict())
      derive(saved_cfg)
      derive(now_cfg)
      saved, now = flat_config(saved_cfg), flat_config(now_cfg)
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # compare as written
      logging.info("resume check: the saved config cannot be derived (%s)", e)
  changes = config_changes(saved, now)
  by_kind = {"free": [], "shape": [], "training": []}
  for field in changes:
    by_kind[_category(field)].append(field)
  describe = lambda fields: ", ".join(f"{f}: {changes[f][0]!r} -> {changes[f][1]!r}"
                                      for f in fields)
  if by_kind["shape"]:
    raise ConfigError(
        f"cannot resume {workdir} (checkpoint at step {step}) with a changed architecture/"
        f"optimizer structure: {describe(by_kind['shape'])}. These change the shapes of the "
        "saved parameters or optimizer state; use a new --workdir (or restore the old values).")
  if by_kind["training"] and not config.get("allow_config_changes", False):
    raise ConfigError(
        f"resuming {workdir} (checkpoint at step {step}) with a changed config: "
        f"{describe(by_kind['training'])}. Pass --config.allow_config_changes=True to continue "
        "from the checkpoint with these values (recorded in config_history.jsonl), or rerun "
        "with the saved values.")
  return by_kind["training"] + by_kind["free"]


def record_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict, *,
                  mode: str, start_step: Optional[int], changed: list[str],
                  fit: Optional[dict] = None) -> None:
  """Appends this run to config_history.jsonl; training runs also refresh config.json.

  `fit`: what remat / micro-batches "auto" became on this run's devices (experiment.build_steps).
  """
  workdir = paths.as_path(workdir)
  flat = flat_config(config)
  entry = {"time": _now(), "mode": mode, "host": socket.gethostname(), "pid": os.getpid(),
           "start_step": start_step, "changed_on_resume": changed, "fit": fit,
           "config_sha256": fingerprint(flat), "config": flat}
  append_line(workdir / HISTORY_FILE, json.dumps(entry))
  if mode != "evaluate":
    paths.write_atomic(workdir / CONFIG_FILE,
                       json.dumps(json.loads(config.to_json_best_effort()), indent=2) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
  """Appends one whole line.

  Locally: a single O_APPEND write (no interleaving, no half lines from this writer; a crash
  mid-write can only tear the last line, which readers repair). A bucket object cannot be
  appended to: it is read and written back whole (fine for a few lines per run; a metrics
  stream buffers instead, see metric_writer).
  """
  path = paths.as_path(path)
  data = (line.rstrip("\n") + "\n").encode()
  if not paths.is_local(path):
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
      old += b"\n"
    path.write_bytes(old + data)
    return
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    written = os.write(fd, data)
    while written < len(data):  # regular files write fully; loop for completeness
      written += os.write(fd, data[written:])
  finally:
    os.close(fd)
