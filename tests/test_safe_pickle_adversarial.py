"""Hostile pose pickles: forged dtypes, object arrays, short buffers, recursion.

Each pickle here is built the way an attacker would (numpy's own globals with crafted
arguments/states); the allow-listed loader must refuse it with a clear error instead of
building an array that reads forged pointers or out-of-bounds memory.
"""

import pickle

import numpy as np
import pytest

from data_prep import safe_pickle

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct


class _Dtype:
  """Pickles as numpy.dtype(spec) followed by BUILD with an arbitrary state."""

  def __init__(self, spec, state):
    self.spec, self.state = spec, state

  def __reduce__(self):
    return (np.dtype, (self.spec, False, True), self.state)


class _Array:
  """Pickles as numpy's _reconstruct + ndarray.__setstate__(state) with a crafted state."""

  def __init__(self, shape, dtype, data, fortran=False):
    self.state = (1, shape, dtype, fortran, data)

  def __reduce__(self):
    return (_RECONSTRUCT, (np.ndarray, (0,), b"b"), self.state)


def _load(obj):
  return safe_pickle.loads(pickle.dumps({"annotations": [{"keypoint": obj}]}, protocol=2),
                           "evil.pkl")


def test_forged_dtype_state_with_object_flags_is_refused():
  # float64 whose state claims the object flags: the array's bytes become PyObject pointers.
  forged = _Dtype("f8", (3, "<", None, None, None, -1, -1, 63))
  with pytest.raises(safe_pickle.UnsafePickleError, match="evil.pkl.*dtype"):
    _load(_Array((2,), forged, b"\x41" * 16))


def test_item_size_smaller_than_the_field_is_refused():
  # A 2-byte item size for float64: each element reads past its slot.
  forged = _Dtype("f8", (3, "<", None, None, None, 2, 1, 0))
  with pytest.raises(safe_pickle.UnsafePickleError, match="dtype"):
    _load(_Array((4,), forged, b"\x00" * 8))
  structured = _Dtype("V4", (3, "|", None, ("a",), {"a": (np.dtype("f8"), 0)}, 4, 1, 16))
  with pytest.raises(safe_pickle.UnsafePickleError, match="structured|void"):
    _load(_Array((1,), structured, b"\x00" * 4))


@pytest.mark.parametrize("spec", ["O8", "V4", "M8", "m8"])
def test_object_void_and_datetime_dtypes_are_refused(spec):
  state = np.dtype(spec).__reduce__()[2]
  with pytest.raises(safe_pickle.UnsafePickleError, match="object|dtype"):
    _load(_Array((1,), _Dtype(spec, state), b"\x00" * 8))


def test_object_arrays_are_refused():
  with pytest.raises(safe_pickle.UnsafePickleError, match="object"):
    _load(np.array([{"a": 1}, None], dtype=object))
  forged = _Dtype("O8", (3, "|", None, None, None, -1, -1, 63))  # pointer bytes
  with pytest.raises(safe_pickle.UnsafePickleError, match="object"):
    _load(_Array((1,), forged, b"\x41" * 8))


@pytest.mark.parametrize("shape", [(10**12,), (1 << 62, 4), (-1,), (2, -3), ("3",)])
def test_shape_must_match_the_buffer(shape):
  f4 = np.dtype("f4")
  with pytest.raises(safe_pickle.UnsafePickleError, match="shape|buffer"):
    _load(_Array(shape, f4, b"\x00" * 8))


def test_buffer_longer_than_the_shape_is_refused():
  with pytest.raises(safe_pickle.UnsafePickleError, match="buffer"):
    _load(_Array((1,), np.dtype("f4"), b"\x00" * 64))


def test_deep_nesting_is_refused():
  depth = 100_000
  data = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
  with pytest.raises(safe_pickle.UnsafePickleError, match="nested"):
    safe_pickle.loads(data, "deep.pkl")


def test_self_referencing_container_is_refused():
  loop = []
  loop.append(loop)
  with pytest.raises(safe_pickle.UnsafePickleError, match="itself"):
    safe_pickle.loads(pickle.dumps({"annotations": loop}), "loop.pkl")


def test_calling_ndarray_directly_is_refused():
  class _Alloc:
    def __reduce__(self):
      return (np.ndarray, ((1 << 40,),))

  with pytest.raises(safe_pickle.UnsafePickleError):
    _load(_Alloc())


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("arr", [
    np.array(["ab", "c"]), np.array([b"xy", b"z"]), np.array([True, False]),
    np.arange(6, dtype=">i2").reshape(2, 3), np.asfortranarray(np.arange(6.).reshape(2, 3)),
    np.zeros((0, 3), np.float16), np.complex64(1j) * np.ones(2, np.complex64),
    np.array(3.5, np.float32)])
def test_plain_arrays_still_round_trip(arr, protocol):
  out = safe_pickle.loads(pickle.dumps({"x": arr, "y": [arr, arr]}, protocol=protocol))
  for got in (out["x"], *out["y"]):
    assert type(got) is np.ndarray and got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
  dt = safe_pickle.loads(pickle.dumps(arr.dtype, protocol=protocol))
  assert isinstance(dt, np.dtype) and dt == arr.dtype


def test_npy_object_wrapper_is_the_only_object_array(tmp_path):
  path = tmp_path / "nested.skeleton.npy"
  np.save(path, {"rgb_body0": np.array([None], dtype=object)}, allow_pickle=True)
  with pytest.raises(safe_pickle.UnsafePickleError, match="object"):
    safe_pickle.load_npy_object(path)
