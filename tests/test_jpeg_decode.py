"""The JPEG fast path of the input pipeline (processing.decode_jpeg) decodes exactly what PIL's
Image.open does, and hands every JPEG it does not handle to Image.open."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pgvt_jax.data import processing


def _jpeg(array: np.ndarray, **save) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="JPEG", **save)
  return buf.getvalue()


def _reference(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("shape,save", [
    ((32, 32, 3), dict(quality=90)),
    ((17, 45, 3), dict(quality=75, subsampling=0)),            # odd size, 4:4:4
    ((64, 48, 3), dict(quality=95, subsampling=2)),            # 4:2:0
    ((40, 24, 3), dict(quality=90, progressive=True)),
    ((24, 40, 3), dict(quality=90, exif=b"Exif\x00\x00" + b"\x00" * 64)),  # APP1 before SOF
])
def test_fast_path_equals_pil_open(shape, save):
  rng = np.random.default_rng(sum(shape))
  data = _jpeg(rng.integers(0, 256, shape, dtype=np.uint8), **save)
  assert processing.jpeg_header(data) == (shape[1], shape[0])
  np.testing.assert_array_equal(np.asarray(processing.decode_jpeg(data)), _reference(data))


def test_what_the_fast_path_does_not_handle_goes_to_pil():
  rng = np.random.default_rng(0)
  grey = _jpeg(rng.integers(0, 256, (16, 16), dtype=np.uint8))
  cmyk = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("CMYK").save(
      cmyk, format="JPEG")
  for data in (grey, cmyk.getvalue()):  # 1 / 4 components (CMYK carries an Adobe segment)
    assert processing.jpeg_header(data) is None
    np.testing.assert_array_equal(
        np.asarray(processing.decode_jpeg(data).convert("RGB")), _reference(data))
  assert processing.jpeg_header(b"\x89PNG\r\n\x1a\n") is None
  rgb = _jpeg(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
  assert processing.jpeg_header(rgb[:20]) is None  # truncated before the frame header
  with pytest.raises(Exception):  # not an image at all: PIL's error, as before
    processing.decode_jpeg(b"not an image")


def test_frames_size_comes_from_the_header_without_decoding():
  data = _jpeg(np.zeros((20, 36, 3), np.uint8))
  frames = processing._Frames([data, data], "v")  # pylint: disable=protected-access
  assert (frames.width, frames.height, frames.count) == (36, 20, 2)
