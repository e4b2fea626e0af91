"""Every built-in class set behind one `cells` / `class_names`: the one-figure worlds of
`data_prep.synthetic` ("fine", "coarse", "pose_video", "interaction", "reach") and the
two-figure world of `data_prep.clutter` ("held_ball", the PAAB/PAAT demo).

    cells = worlds.cells(num_classes, class_set)      # clip i renders cells[i % len(cells)]
    names = worlds.class_names(num_classes, class_set)

A module of its own because `clutter` builds on `synthetic` (its figure, motions, rendering):
dispatching from `synthetic` would import in both directions.
"""

from __future__ import annotations

from data_prep import clutter
from data_prep import synthetic

CLASS_SETS = synthetic.CLASS_SETS + (clutter.CLASS_SET,)


def cells(num_classes: int, class_set: str = "fine") -> list:
  """The kinds of clip a class set's records cycle through (each has `.label` and `.render`)."""
  if class_set == clutter.CLASS_SET:
    return clutter.cells(num_classes)
  return synthetic.cells(num_classes, class_set)


def class_names(num_classes: int, class_set: str = "fine") -> list[str]:
  if class_set == clutter.CLASS_SET:
    return clutter.class_names(num_classes)
  return synthetic.class_names(num_classes, class_set)
