r"""Stored-frame size vs decode speed for a few (short_side, jpeg_quality).

  python -m data_prep.measure ../shared/realdata/*.mp4 ../shared/realdata/*.avi

For each setting and clip: JPEG bytes per stored frame, build cost per frame
(video decode + resize + JPEG encode) and the cost of decoding one stored JPEG
(what the input pipeline pays per sampled frame). Prints a markdown table
(docs/data.md quotes it).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from data_prep import video as video_lib

SETTINGS = ((256, 90), (256, 75), (224, 90), (320, 90), (None, 90))


def measure(path: str, short_side: int | None, quality: int,
            max_frames: int = 64) -> dict[str, float]:
  t0 = time.perf_counter()
  v = video_lib.decode_video(path, short_side)
  t_decode = time.perf_counter() - t0
  frames = v.frames[video_lib.uniform_indices(len(v.frames), max_frames)]
  t0 = time.perf_counter()
  jpegs = [video_lib.encode_jpeg(f, quality) for f in frames]
  t_encode = (time.perf_counter() - t0) / len(frames)
  t0 = time.perf_counter()
  for _ in range(3):
    for j in jpegs:
      video_lib.decode_jpeg(j)
  t_read = (time.perf_counter() - t0) / (3 * len(jpegs))
  return {"h": v.size[0], "w": v.size[1],
          "kb": float(np.mean([len(j) for j in jpegs])) / 1024,
          "build_ms": 1000 * (t_decode / v.num_source_frames + t_encode),
          "read_ms": 1000 * t_read}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("videos", nargs="+")
  args = p.parse_args(argv)
  print("| clip | short side | quality | stored HxW | KiB/frame | build ms/frame"
        " | JPEG decode ms/frame |")
  print("|---|---|---|---|---|---|---|")
  for path in args.videos:
    for side, q in SETTINGS:
      r = measure(path, side, q)
      print(f"| {os.path.basename(path)} | {side or 'source'} | {q} | "
            f"{r['h']}x{r['w']} | {r['kb']:.1f} | {r['build_ms']:.2f} | "
            f"{r['read_ms']:.2f} |")


if __name__ == "__main__":
  main()
