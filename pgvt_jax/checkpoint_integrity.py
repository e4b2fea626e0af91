"""Checkpoint step directories: which are finished, and whether their bytes are intact.

A finished step is a directory named by its step number alone: orbax writes a step aside
(`<step>.orbax-checkpoint-tmp-<n>`) and renames it when complete, so a name that is all digits
is a whole step and anything else is a save in progress or one killed mid-write.

Once a step is complete, `<step>/checksums.json` records the SHA-256 of every file in it.
`verify` re-reads them: None (intact), UNVERIFIED (no checksums: written before they existed,
or killed in the instant after orbax finished), or a sentence saying what is damaged.

Paths are `etils.epath` paths, so a workdir may be a bucket (`gs://...`) as well as a local or
shared file system.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from etils import epath

from pgvt_jax.paths import as_path

CHECKSUMS_FILE = "checksums.json"
UNVERIFIED = "unverified"


def finished_steps(directory: str | os.PathLike) -> list[int]:
  """The whole steps under `directory` (names all digits), oldest first; [] if none."""
  directory = as_path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def file_checksum(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
  h = hashlib.sha256()
  with as_path(path).open("rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def _step_files(step_dir: epath.Path) -> list[epath.Path]:
  # walk(), not rglob("**"): epath refuses recursive globs (one RPC per match on a bucket).
  files = [epath.Path(root) / name for root, _, names in step_dir.walk() for name in names]
  return sorted((p for p in files if p.name != CHECKSUMS_FILE), key=str)


def _relative(path: epath.Path, root: epath.Path) -> str:
  return os.fspath(path)[len(os.fspath(root)):].lstrip("/")


def write_checksums(step_dir: str | os.PathLike) -> None:
  """Records the SHA-256 of every file of a complete step (written aside, then renamed)."""
  step_dir = as_path(step_dir)
  sums = {_relative(p, step_dir): file_checksum(p) for p in _step_files(step_dir)}
  tmp = step_dir / f".{CHECKSUMS_FILE}.tmp"
  tmp.write_text(json.dumps({"sha256": sums}, indent=1, sort_keys=True) + "\n")
  tmp.rename(step_dir / CHECKSUMS_FILE)


def verify(step_dir: str | os.PathLike) -> Optional[str]:
  """None if the step matches its checksums, UNVERIFIED without them, else what is wrong."""
  step_dir = as_path(step_dir)
  path = step_dir / CHECKSUMS_FILE
  if not path.exists():
    return UNVERIFIED
  try:
    sums = json.loads(path.read_text())["sha256"]
  except (ValueError, KeyError, TypeError) as e:
    return f"{path} is unreadable ({e})"
  for rel, digest in sums.items():
    f = step_dir / rel
    if not f.is_file():
      return f"{f} is missing"
    try:
      if file_checksum(f) != digest:
        return f"{f} does not match its checksum (modified or truncated)"
    except OSError as e:  # an unreadable file is damage too
      return f"{f} is unreadable ({e})"
  extra = {_relative(p, step_dir) for p in _step_files(step_dir)} - set(sums)
  if extra:
    return f"{step_dir} holds files not in its checksums: {sorted(extra)[:3]}"
  return None


class CheckpointIntegrityError(RuntimeError):
  """No kept checkpoint is intact (damaged ones were moved aside, or none is left)."""


class CheckpointRestoreError(RuntimeError):
  """An intact checkpoint that does not restore here; nothing was moved."""


def restore_cause(e: BaseException) -> str:
  """The cause of a failed restore of intact bytes, with the likely reason."""
  text = f"{type(e).__name__}: {str(e)[:600]}"
  if isinstance(e, OSError):
    hint = "a storage problem (is every host reading the same workdir? is it reachable?)"
  elif "structure" in text.lower() or "shape" in text.lower():
    hint = ("the checkpoint holds another model/optimizer tree than this config builds (a "
            "changed model or optimizer field, or a workdir of another run)")
  else:
    hint = "a storage or topology problem (is every host reading the same workdir?)"
  return f"{text}. Likely cause: {hint}"


