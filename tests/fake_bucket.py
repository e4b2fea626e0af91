"""An offline `gs://` for tests: epath's fsspec backend over an in-memory file system.

`with fake_gcs() as store:` routes every `epath.Path("gs://...")` to a fresh in-memory
object store (`store` maps "bucket/key" -> bytes). Like a bucket, it has no file descriptors,
no `flock` and no append: opening an object in "a" mode raises, so code that still appends
or goes through `os` on a bucket path shows up. Code that used `pathlib` or `os` on the URL
instead writes to a local `gs:` directory; `local_gs_dirs(cwd)` finds such leftovers.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator
from unittest import mock

from etils.epath import backend as backend_lib
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem


class _BucketFileSystem(MemoryFileSystem):
  """Memory file system keyed like a bucket ("bucket/key", no leading slash), no appends."""
  protocol = ("gs", "gcs")
  root_marker = ""
  cachable = False  # one fresh store per `fake_gcs()`

  def __init__(self):
    super().__init__()
    self.store, self.pseudo_dirs = {}, [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = os.fspath(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return path.strip("/")

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode:
      raise OSError(f"{path}: objects in a bucket cannot be appended to (mode {mode!r})")
    return super()._open(path, mode, **kwargs)


class _Backend(backend_lib._FileSystemSpecBackend):  # pylint: disable=protected-access

  def __init__(self):
    self.filesystem = _BucketFileSystem()

  def fs(self, path):
    del path
    return self.filesystem


@contextlib.contextmanager
def fake_gcs() -> Iterator[dict]:
  """Routes gs:// epath paths to an in-memory store for the duration; yields the store."""
  backend = _Backend()
  with mock.patch.dict(gpath._PREFIX_TO_BACKEND, {"gs": backend}):  # pylint: disable=protected-access
    yield backend.filesystem.store


def local_gs_dirs(root: str | os.PathLike) -> list[str]:
  """Local `gs:` directories under `root`: a gs:// URL that went through pathlib or os."""
  return [os.path.join(d, n) for d, dirs, _ in os.walk(root) for n in dirs
          if n.startswith("gs:")]
