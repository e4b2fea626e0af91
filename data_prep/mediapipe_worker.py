"""BlazePose worker run by `extractors.MediaPipePose` in a mediapipe venv.

Usage: python mediapipe_worker.py frames.npy out.npy
  frames.npy  (T, H, W, 3) uint8 RGB
  out.npy     (T, 33, 4) float32: x, y (normalised to the frame), z,
              visibility; NaN rows where no person was found.

Imports only numpy and mediapipe (0.10.21: `mp.solutions.pose`, whose
`model_complexity=1` model ships inside the wheel, so nothing is downloaded).
"""

import sys

import mediapipe as mp
import numpy as np


def main(src: str, dst: str) -> None:
  frames = np.load(src, allow_pickle=False)
  out = np.full((len(frames), 33, 4), np.nan, np.float32)
  with mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1,
                              enable_segmentation=False) as pose:
    for t, frame in enumerate(frames):
      result = pose.process(np.ascontiguousarray(frame))
      if result.pose_landmarks is None:
        continue
      out[t] = [(p.x, p.y, p.z, p.visibility)
                for p in result.pose_landmarks.landmark]
  np.save(dst, out)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
