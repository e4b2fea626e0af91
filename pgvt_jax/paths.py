"""User path strings -> `etils.epath.Path`, the path type orbax and TFDS use.

Workdirs, records, converted weights and outputs may live in a bucket (`gs://bucket/run` on a
TPU pod) or on a local / shared file system. `pathlib.Path` turns `gs://bucket/run` into the
local directory `gs:/bucket/run`, which every host of a pod then creates for itself, so
nothing reaches the bucket and the hosts silently disagree. `as_path` keeps URLs intact and
makes local paths absolute (`~` expanded, relative paths resolved against the current
directory), so a path means the same thing for the whole run: a relative `--workdir=runs/d48`
stays valid after a library changes directory, and orbax, which refuses relative checkpoint
paths, gets an absolute one.

Local paths are made absolute without resolving symlinks (like `os.path.abspath`): a workdir
reached through a symlinked shared mount keeps the name the user gave.
"""

from __future__ import annotations

import os
import re

from etils import epath

# `scheme:/x` with a single slash: what pathlib leaves of `scheme://x`.
_MANGLED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/(?!/)")


def is_url(path: str | os.PathLike) -> bool:
  """True for `gs://...`, `s3://...` and other `scheme://` paths (not the local disk)."""
  return "://" in os.fspath(path)


def is_local(path: str | os.PathLike) -> bool:
  """True when `path` is on a file system the OS mounts (local disk, NFS, a FUSE bucket)."""
  return not is_url(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an absolute `epath.Path`; URLs (`gs://`, `s3://`, ...) kept as they are.

  Raises:
    ValueError: empty path, a URL that pathlib already mangled (`gs:/bucket/run`), or a URL
      scheme that epath cannot open.
  """
  if isinstance(path, epath.Path) and is_url(path):
    return path
  text = os.fspath(path)
  if not text:
    raise ValueError("empty path: expected a directory or file name, or a gs:// URL")
  if _MANGLED_URL.match(text):
    raise ValueError(
        f"{text!r} looks like a URL with one slash lost ({text.split(':', 1)[0]}://...): "
        "something passed it through pathlib.Path, which treats URLs as local paths. "
        "Pass the original string (or an etils.epath.Path).")
  if is_url(text):
    try:
      return epath.Path(text)
    except KeyError:  # etils' registry raises KeyError for schemes it has no backend for
      raise ValueError(f"{text!r}: unsupported URL scheme; epath opens gs://, s3://, az:// "
                       "and hf:// paths, and local paths") from None
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def as_str(path: str | os.PathLike) -> str:
  """`as_path(path)` as a string, for APIs that take strings (TFDS `builder_dir`, orbax)."""
  return os.fspath(as_path(path))


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes `path` whole: a reader (or a crash) sees the old content or the new, never half.

  Locally the data is written aside and renamed over `path`. A bucket publishes an object only
  when its upload completes, so there a direct write is already whole (and a rename would be
  a copy plus a delete).
  """
  path = as_path(path)
  mode = "wb" if isinstance(data, bytes) else "w"
  if not is_local(path):
    with path.open(mode) as f:
      f.write(data)
    return
  tmp = path.with_name(f".{path.name}.tmp")
  with tmp.open(mode) as f:
    f.write(data)
  os.replace(tmp, path)
