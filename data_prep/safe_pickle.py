"""An allow-listed unpickler for the pose pickles the community publishes.

mmaction2/PoseC3D pose files (`diving48_2d.pkl`, `gym_2d.pkl`, `ntu60_2d.pkl`,
`k400_2d.pkl` and its kpfiles) and NTU's `*.skeleton.npy` files are pickles
downloaded from the internet. `pickle.load` on such a file can run any code
(a `__reduce__` returning `os.system`). This module only rebuilds plain
containers and numpy arrays; any other global is refused with an error naming
the file and the global.

Allowed, exactly (FACTS.md, checked on the real files in shared/realdata):
  * built-in containers/scalars, which pickle encodes as opcodes, not globals
    (dict, list, tuple, set, str, bytes, int, float, bool, None);
  * `numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`
    (numpy 1.x and 2.x paths of the same function), `numpy.ndarray`,
    `numpy.dtype`;
  * `_codecs.encode`, which protocol-2 pickles use to store byte strings
    (array buffers) as latin-1 text.

`numpy.core.multiarray.scalar` is deliberately not allowed: no real pose file
needs it, and a file that does is refused (the error says so).
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format


class UnsafePickleError(pickle.UnpicklingError):
  """A pickle referenced a global outside the allow-list."""


def _reconstruct():
  # numpy 2 moved numpy.core -> numpy._core; both names point to one function.
  try:
    from numpy._core import multiarray  # pylint: disable=g-import-not-at-top
  except ImportError:  # numpy < 2
    from numpy.core import multiarray  # pylint: disable=g-import-not-at-top
  return multiarray._reconstruct  # pylint: disable=protected-access


def _codecs_encode(obj: str, encoding: str = "utf-8", errors: str = "strict"):
  """`_codecs.encode` restricted to text -> bytes (what pickles use it for)."""
  if not isinstance(obj, str):
    raise UnsafePickleError(
        f"_codecs.encode called on {type(obj).__name__}, expected str")
  return codecs.encode(obj, encoding, errors)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _codecs_encode,
}

ALLOWED_GLOBALS = tuple(f"{m}.{n}" for m, n in _ALLOWED)


class _AllowListUnpickler(pickle.Unpickler):
  """Resolves only the globals in `_ALLOWED`."""

  def __init__(self, file: BinaryIO, source: str):
    super().__init__(file)
    self._source = source

  def find_class(self, module: str, name: str) -> Any:
    factory = _ALLOWED.get((module, name))
    if factory is None:
      raise UnsafePickleError(
          f"{self._source}: refusing to unpickle global '{module}.{name}'. "
          f"Pose pickles may only contain dicts/lists/str/int/float and numpy "
          f"arrays (allowed globals: {', '.join(ALLOWED_GLOBALS)}). If you "
          f"trust this file, convert it to .npz/.json yourself.")
    return factory()

  def persistent_load(self, pid):
    raise UnsafePickleError(
        f"{self._source}: persistent ids are not allowed (got {pid!r})")


def loads(data: bytes, source: str = "<bytes>") -> Any:
  """Unpickles `data` with the allow-list; `source` names it in errors."""
  return _AllowListUnpickler(io.BytesIO(data), source).load()


def load(path: str | os.PathLike) -> Any:
  """Unpickles the file at `path` with the allow-list.

  Raises:
    UnsafePickleError: the pickle references a disallowed global.
    pickle.UnpicklingError / EOFError: the file is not a (complete) pickle.
  """
  with open(path, "rb") as f:
    return _AllowListUnpickler(f, os.fspath(path)).load()


def load_npy_object(path: str | os.PathLike) -> Any:
  """Reads a `.npy` holding a pickled object (e.g. NTU `*.skeleton.npy`).

  `np.load(path, allow_pickle=True)` would run the embedded pickle
  unrestricted; here the header is parsed by numpy and the payload goes
  through the allow-list. Plain (non-object) arrays are returned as arrays.

  Returns:
    The stored object (`arr.item()` for a 0-d object array, else the array).
  """
  with open(path, "rb") as f:
    version = npy_format.read_magic(f)
    if version == (1, 0):
      shape, fortran, dtype = npy_format.read_array_header_1_0(f)
    else:
      shape, fortran, dtype = npy_format.read_array_header_2_0(f)
    if not dtype.hasobject:
      f.seek(0)
      return np.load(f, allow_pickle=False)
    obj = _AllowListUnpickler(f, os.fspath(path)).load()
  if shape == () and isinstance(obj, np.ndarray) and obj.dtype.hasobject:
    return obj.item()
  if isinstance(obj, np.ndarray) and fortran:
    obj = obj.reshape(shape, order="F")
  return obj
