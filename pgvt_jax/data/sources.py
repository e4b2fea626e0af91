"""Random-access record sources: a prepared TFDS ArrayRecord dataset, or any
in-memory sequence of records in the contract's format (tests, notebooks).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import ml_collections

from data_prep import commands, skeletons
from pgvt_jax import paths

# DatasetInfo metadata keys that may name the joint layout.
_LAYOUT_KEYS = ("skeleton", "joint_layout", "layout")


@dataclasses.dataclass(frozen=True)
class Source:
  """A split's records plus what the model needs to know about them.

  Attributes:
    records: random-access sequence of record dicts (`len`, `[i]`), e.g. a
      tfds ArrayRecord data source or a list.
    skeleton: their joint layout.
    num_classes: number of labels.
    class_names: label names if known.
    flip_safe: False when a horizontal flip changes the label (the dataset's
      metadata "horizontal_flip_safe", e.g. the synthetic actions, whose
      classes differ in left vs right limbs); training then refuses flips.
  """
  records: Sequence[Mapping[str, Any]]
  skeleton: skeletons.Skeleton
  num_classes: int
  class_names: tuple[str, ...] | None = None
  flip_safe: bool = True

  def __len__(self) -> int:
    return len(self.records)


def _keep_encoded_decoder():
  """A tfds decoder that leaves `frames` as a sequence of JPEG bytes.

  tfds would otherwise decode every stored frame of a record on access
  (often 100+ JPEGs) while a clip uses 16: `processing.py` decodes only the
  sampled ones.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class KeepEncoded(tfds.decode.Decoder):

    def decode_example(self, serialized):
      return serialized

    def decode_example_np(self, serialized):
      return serialized

    def decode_batch_example_np(self, serialized):
      return serialized

  return KeepEncoded()


def _layout_name(cfg: ml_collections.ConfigDict, info: Any, where: str) -> str:
  if cfg.skeleton:
    return cfg.skeleton
  metadata = dict(info.metadata or {})
  for key in _LAYOUT_KEYS:
    if metadata.get(key):
      return str(metadata[key])
  raise ValueError(
      f"{where}: the dataset's metadata names no joint layout (looked for "
      f"{_LAYOUT_KEYS} in {sorted(metadata)}); set config.data.skeleton to "
      f"one of {sorted(skeletons.SKELETONS)}")


class RecordsNotFoundError(FileNotFoundError):
  """The configured records directory holds no prepared dataset; the message
  says which directory was read and the command that builds it."""


def check_records(builder_dir: str) -> None:
  """Raises RecordsNotFoundError unless `builder_dir` holds built records."""
  path = paths.as_path(builder_dir)  # local, or a bucket (gs://...) read through epath
  if (path / "dataset_info.json").is_file():
    return
  why = ("does not exist" if not path.exists() else
         "holds no dataset_info.json")
  command = commands.build_command(builder_dir)
  how = (f"Build them with\n  {command}\n" if command else
         "Build them with `python -m data_prep.build` (docs/data.md).\n")
  raise RecordsNotFoundError(
      f"no records: config.data.builder_dir={builder_dir!r} ({path}) {why}.\n"
      f"{how}or point --config.data.builder_dir at the directory that "
      f"`python -m data_prep.build` printed (docs/data.md).")


def open_source(cfg: ml_collections.ConfigDict, split: str) -> Source:
  """Opens `split` of the TFDS dataset named by config.data.

  Uses `config.data.builder_dir` if set, else `config.data.name` (+ data_dir).
  Frames stay JPEG-encoded until a clip samples them.

  Raises:
    RecordsNotFoundError: builder_dir holds no built records.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if cfg.builder_dir:
    where = f"config.data.builder_dir={cfg.builder_dir!r}"
    check_records(cfg.builder_dir)
    # A string: TFDS opens gs:// itself; a local path made absolute (~ expanded).
    builder = tfds.builder_from_directory(paths.as_str(cfg.builder_dir))
  elif cfg.name:
    where = f"config.data.name={cfg.name!r} (data_dir={cfg.data_dir!r})"
    builder = tfds.builder(cfg.name, data_dir=cfg.data_dir or None)
  else:
    raise ValueError("config.data: set builder_dir (a prepared TFDS dataset "
                     "directory) or name (+ data_dir)")
  info = builder.info
  if split.split("[")[0] not in info.splits:  # "train[:10%]" is fine
    raise ValueError(f"{where}: no split {split!r}; available: "
                     f"{sorted(info.splits)}")
  records = builder.as_data_source(
      split, decoders={"frames": _keep_encoded_decoder()})
  label = info.features["label"]
  return Source(
      records=records,
      skeleton=skeletons.get(_layout_name(cfg, info, where)),
      num_classes=label.num_classes,
      class_names=tuple(label.names),
      flip_safe=bool(dict(info.metadata or {}).get("horizontal_flip_safe",
                                                    True)),
  )
