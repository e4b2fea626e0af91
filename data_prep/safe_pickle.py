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
  * numpy arrays, pickled as `numpy(._)core.multiarray._reconstruct(ndarray, (0,), b"b")`
    followed by a BUILD with `(version, shape, dtype, fortran, buffer)`, and `numpy.dtype`;
  * `_codecs.encode` (text -> bytes) and `bytes()`, which protocol-2 pickles use to store
    byte strings (array buffers) as latin-1 text.

Memory safety: numpy's own `_reconstruct` and `dtype.__setstate__` trust their arguments
(a forged dtype state can claim object flags or an item size smaller than its type, and the
array then reads forged pointers or past its buffer). None of them runs here: the globals
resolve to placeholders that only record what the pickle asked for, and every dtype and array
is rebuilt afterwards from a checked description. Only booleans, integers, floats, complex
numbers and fixed-width str/bytes come out; object, void (structured), datetime and any dtype
whose state differs from what numpy itself writes for that type are refused, as are shapes that
do not match the buffer exactly, containers nested deeper than `MAX_DEPTH` or containing
themselves. Object arrays are refused, except the one 0-d object array numpy wraps around a
`.npy`'s pickled payload (`load_npy_object`), whose elements have been checked like the rest.

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


MAX_DEPTH = 64   # real pose pickles nest 4 deep
_KINDS = "biufcSU"  # bool, int, uint, float, complex, bytes, str: plain memory, no pointers
_ARRAY_VERSION = 1  # ndarray.__setstate__'s format


class _Placeholder:
  """Records what a pickle asked numpy for; turned into a checked value by `_resolve`."""
  __slots__ = ("args", "state", "source")
  __hash__ = None  # a real ndarray is unhashable; a placeholder used as a key is refused

  def __init__(self, source, args):
    self.source, self.args, self.state = source, args, None

  def __setstate__(self, state):
    if self.state is not None:
      raise UnsafePickleError(f"{self.source}: a {self.what} is given its state twice")
    self.state = state

  def __reduce__(self):
    raise TypeError("placeholders are not picklable")


class _DtypeSpec(_Placeholder):
  what = "numpy dtype"
  __slots__ = ()


class _ArraySpec(_Placeholder):
  what = "numpy array"
  __slots__ = ()


class _NdarrayClass:
  """Stands for `numpy.ndarray` as `_reconstruct`'s first argument; not callable."""

  def __repr__(self):
    return "numpy.ndarray"


_NDARRAY = _NdarrayClass()


def _dtype_value(spec: _DtypeSpec) -> np.dtype:
  """A dtype built from a checked description: `np.dtype(str)` + byte order, nothing else."""
  src = spec.source
  args = spec.args
  if not (1 <= len(args) <= 3 and isinstance(args[0], str) and len(args[0]) <= 16
          and all(isinstance(a, bool) for a in args[1:])):
    raise UnsafePickleError(f"{src}: numpy dtype with unexpected arguments {args!r:.200}")
  try:
    base = np.dtype(args[0])
  except TypeError as e:
    raise UnsafePickleError(f"{src}: unknown numpy dtype {args[0]!r:.50}") from e
  if base.kind not in _KINDS or base.fields is not None or base.subdtype is not None:
    what = {"O": "object", "V": "void/structured", "M": "datetime", "m": "timedelta"}.get(
        base.kind, base.kind)
    raise UnsafePickleError(
        f"{src}: refusing {what} numpy dtype {args[0]!r}: pose pickles may only hold "
        f"bool/int/float/complex/str/bytes arrays")
  state = spec.state
  if state is None:
    return base
  if not (isinstance(state, tuple) and len(state) == 8 and state[1] in ("<", ">", "|", "=")):
    raise UnsafePickleError(f"{src}: numpy dtype {args[0]!r} with a malformed state "
                            f"{state!r:.200}")
  value = base.newbyteorder(state[1]) if state[1] in "<>" and base.itemsize > 1 else base
  expected = value.__reduce__()[2]
  if tuple(state) != tuple(expected):
    raise UnsafePickleError(
        f"{src}: forged numpy dtype state {state!r:.200} for {args[0]!r} (numpy writes "
        f"{expected!r}): refusing a dtype whose flags, fields or item size were altered")
  return value


def _array_value(spec: _ArraySpec, resolve, allow_object: bool) -> np.ndarray:
  """An array copied out of a buffer whose size matches shape x itemsize exactly."""
  src = spec.source
  if spec.args != (_NDARRAY, (0,), b"b"):
    raise UnsafePickleError(f"{src}: numpy _reconstruct with unexpected arguments "
                            f"{spec.args!r:.200}")
  state = spec.state
  if not (isinstance(state, tuple) and len(state) == 5 and state[0] == _ARRAY_VERSION
          and isinstance(state[3], bool)):
    raise UnsafePickleError(f"{src}: numpy array with a malformed state {state!r:.200}")
  _, shape, dtype, fortran, payload = state
  if not (isinstance(shape, tuple) and len(shape) <= 32
          and all(type(d) is int and 0 <= d < 1 << 48 for d in shape)):
    raise UnsafePickleError(f"{src}: numpy array with an invalid shape {shape!r:.200}")
  if isinstance(dtype, _DtypeSpec) and dtype.args[:1] in (("O8",), ("O4",), ("O",)):
    if not allow_object or not isinstance(payload, list):
      raise UnsafePickleError(
          f"{src}: refusing a numpy object array (arbitrary Python objects inside an "
          "array); pose pickles hold numeric arrays only")
    if shape != () or len(payload) != 1:
      raise UnsafePickleError(f"{src}: only a 0-d object array may wrap a .npy payload")
    out = np.empty((), dtype=object)
    out[()] = resolve(payload[0])
    return out
  if not isinstance(dtype, _DtypeSpec):
    raise UnsafePickleError(f"{src}: numpy array whose dtype is {type(dtype).__name__}")
  dt = _dtype_value(dtype)
  if not isinstance(payload, bytes):
    raise UnsafePickleError(f"{src}: numpy array buffer is {type(payload).__name__}, "
                            "expected bytes")
  count = 1
  for d in shape:
    count *= d
  if count * dt.itemsize != len(payload):
    raise UnsafePickleError(
        f"{src}: numpy array of shape {shape} and dtype {dt} needs "
        f"{count * dt.itemsize} bytes but its buffer has {len(payload)}")
  flat = np.frombuffer(payload, dtype=dt).copy()
  return flat.reshape(shape, order="F" if fortran else "C")


def _resolve(obj: Any, source: str, allow_object: bool = False) -> Any:
  """Replaces placeholders by checked values; refuses cycles and deep nesting."""
  done: dict[int, Any] = {}
  active: set[int] = set()

  def walk(x, depth):
    if isinstance(x, (str, bytes, int, float, complex, bool, type(None))):
      return x
    key = id(x)
    if key in done:
      return done[key]
    if key in active:
      raise UnsafePickleError(f"{source}: a container refers to itself (a cycle); pose "
                              "pickles are trees")
    if depth > MAX_DEPTH:
      raise UnsafePickleError(f"{source}: containers nested deeper than {MAX_DEPTH} levels")
    active.add(key)
    if isinstance(x, _DtypeSpec):
      out = _dtype_value(x)
    elif isinstance(x, _ArraySpec):
      out = _array_value(x, lambda v: walk(v, depth + 1), allow_object and depth == 0)
    elif type(x) is list:
      out = x
      out[:] = [walk(v, depth + 1) for v in x]
    elif type(x) is dict:
      out = x
      items = [(walk(k, depth + 1), walk(v, depth + 1)) for k, v in x.items()]
      out.clear()
      out.update(items)
    elif type(x) in (tuple, set, frozenset):
      out = type(x)(walk(v, depth + 1) for v in x)
    else:
      raise UnsafePickleError(f"{source}: unexpected {type(x).__name__} in a pose pickle")
    active.discard(key)
    done[key] = out
    return out

  return walk(obj, 0)


def _codecs_encode(obj: str, encoding: str = "utf-8", errors: str = "strict"):
  """`_codecs.encode` restricted to text -> bytes (what pickles use it for)."""
  if not isinstance(obj, str):
    raise UnsafePickleError(
        f"_codecs.encode called on {type(obj).__name__}, expected str")
  return codecs.encode(obj, encoding, errors)


def _empty_bytes(*args):
  if args:  # protocol 2 writes bytes() for b"" only
    raise UnsafePickleError(f"bytes() called with arguments {args!r:.100}")
  return b""


_RECONSTRUCT = "_reconstruct"
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeSpec,
    ("_codecs", "encode"): _codecs_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}

ALLOWED_GLOBALS = tuple(f"{m}.{n}" for m, n in _ALLOWED)


class _AllowListUnpickler(pickle.Unpickler):
  """Resolves only the globals in `_ALLOWED`."""

  def __init__(self, file: BinaryIO, source: str):
    super().__init__(file)
    self._source = source

  def find_class(self, module: str, name: str) -> Any:
    value = _ALLOWED.get((module, name))
    if value is None:
      raise UnsafePickleError(
          f"{self._source}: refusing to unpickle global '{module}.{name}'. "
          f"Pose pickles may only contain dicts/lists/str/int/float and numpy "
          f"arrays (allowed globals: {', '.join(ALLOWED_GLOBALS)}). If you "
          f"trust this file, convert it to .npz/.json yourself.")
    if value is _RECONSTRUCT:
      return lambda *args: _ArraySpec(self._source, args)
    if value is _DtypeSpec:
      return lambda *args: _DtypeSpec(self._source, args)
    return value

  def persistent_load(self, pid):
    raise UnsafePickleError(
        f"{self._source}: persistent ids are not allowed (got {pid!r})")


def _load(f: BinaryIO, source: str, allow_object: bool = False) -> Any:
  try:
    raw = _AllowListUnpickler(f, source).load()
  except TypeError as e:  # e.g. a placeholder used as a dict key or set member
    raise UnsafePickleError(f"{source}: malformed pose pickle ({e})") from e
  return _resolve(raw, source, allow_object)


def loads(data: bytes, source: str = "<bytes>") -> Any:
  """Unpickles `data` with the allow-list; `source` names it in errors."""
  return _load(io.BytesIO(data), source)


def load(path: str | os.PathLike) -> Any:
  """Unpickles the file at `path` with the allow-list.

  Raises:
    UnsafePickleError: the pickle references a disallowed global, dtype or layout.
    pickle.UnpicklingError / EOFError: the file is not a (complete) pickle.
  """
  with open(path, "rb") as f:
    return _load(f, os.fspath(path))


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
    obj = _load(f, os.fspath(path), allow_object=True)
  if shape == () and isinstance(obj, np.ndarray) and obj.dtype.hasobject:
    return obj.item()
  if isinstance(obj, np.ndarray) and fortran:
    obj = obj.reshape(shape, order="F")
  return obj
