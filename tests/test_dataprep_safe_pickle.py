"""The allow-listed unpickler refuses code and accepts the real pose pickles."""

import os
import pickle

import numpy as np
import pytest

from data_prep import poses
from data_prep import safe_pickle
from tests.dataprep_fixtures import realdata


class _CallsSystem:
  """Unpickling this calls os.system (the classic pickle exploit)."""

  def __reduce__(self):
    return (os.system, ("touch /tmp/pgvt_pwned",))


class _CallsEval:

  def __reduce__(self):
    return (eval, ("1+1",))


@pytest.mark.parametrize("payload", [_CallsSystem(), _CallsEval()])
def test_malicious_pickle_is_refused(tmp_path, payload):
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"annotations": [payload]}))
  with pytest.raises(safe_pickle.UnsafePickleError) as err:
    safe_pickle.load(path)
  msg = str(err.value)
  assert str(path) in msg and "refusing" in msg
  assert ("system" in msg) or ("eval" in msg)
  assert not os.path.exists("/tmp/pgvt_pwned")


def test_numpy_scalar_and_other_numpy_globals_refused():
  data = pickle.dumps(np.float32(1.5))  # numpy..scalar is not allow-listed.
  with pytest.raises(safe_pickle.UnsafePickleError, match="scalar"):
    safe_pickle.loads(data, "x.pkl")


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_arrays_and_containers_round_trip(protocol):
  obj = {"split": {"train": ["a", "b"]}, "annotations": [
      {"frame_dir": "a", "label": 3, "img_shape": (480, 640),
       "keypoint": np.arange(24, dtype=np.float32).reshape(1, 2, 6, 2),
       "frame_inds": np.array([1, 3], np.int16), "f": 0.5, "b": b"\x00\xff"}]}
  out = safe_pickle.loads(pickle.dumps(obj, protocol=protocol))
  a = out["annotations"][0]
  np.testing.assert_array_equal(a["keypoint"], obj["annotations"][0]["keypoint"])
  assert a["frame_inds"].dtype == np.int16 and a["img_shape"] == (480, 640)
  assert a["b"] == b"\x00\xff" and out["split"] == obj["split"]


def test_protocol5_numpy_buffers_are_outside_the_allow_list():
  # numpy pickles arrays through numpy._core.numeric._frombuffer at protocol
  # 5; published pose files use protocols 2-4, so it is refused (clearly).
  data = pickle.dumps(np.ones(3), protocol=5)
  with pytest.raises(safe_pickle.UnsafePickleError, match="_frombuffer"):
    safe_pickle.loads(data, "p5.pkl")


def test_numpy_core_path_is_mapped():
  # A numpy-1.x pickle names numpy.core.multiarray._reconstruct.
  data = pickle.dumps(np.ones((2, 3), np.float32), protocol=2)
  data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
  assert b"numpy.core.multiarray" in data
  np.testing.assert_array_equal(safe_pickle.loads(data), np.ones((2, 3)))


def test_npy_object_file(tmp_path):
  path = tmp_path / "S001C001P001R001A001.skeleton.npy"
  np.save(path, {"rgb_body0": np.ones((3, 25, 2)), "njoints": 25},
          allow_pickle=True)
  out = safe_pickle.load_npy_object(path)
  assert out["njoints"] == 25 and out["rgb_body0"].shape == (3, 25, 2)
  evil = tmp_path / "evil.npy"
  np.save(evil, np.array([_CallsSystem()], dtype=object), allow_pickle=True)
  with pytest.raises(safe_pickle.UnsafePickleError):
    safe_pickle.load_npy_object(evil)


@pytest.mark.parametrize("name", ["k400_realpose_2d.pkl",
                                  "ntu60_realpose_2d.pkl",
                                  "mmaction2_k400_skeleton_index_sample.pkl"])
def test_real_pickles_load(name):
  path = realdata(name)
  ours = poses.load_mmaction_pickle(path)
  with open(path, "rb") as f:
    reference = pickle.load(f)  # Trusted: shipped with the project's data.
  assert ours["split"] == reference["split"]
  assert len(ours["annotations"]) == len(reference["annotations"])
  for a, b in zip(ours["annotations"], reference["annotations"]):
    assert a.keys() == b.keys()
    for k in a:
      if isinstance(a[k], np.ndarray):
        np.testing.assert_array_equal(a[k], b[k])
      else:
        assert a[k] == b[k]
