"""Replacing an output directory safely: only one we wrote, swapped in atomically.

`check_replaceable` refuses to replace anything that is not recognisably our own output (a
directory holding exactly the expected files); `swap_into_place` puts a finished directory in
place and deletes the old one only afterwards, so a crash never leaves the output missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from absl import logging


def check_replaceable(out: str | os.PathLike, overwrite: bool, files: frozenset[str],
                      what: str) -> None:
  """Raises FileExistsError unless `out` is absent, or `overwrite` and it holds exactly `files`."""
  out = Path(out)
  if not out.exists() and not out.is_symlink():
    return
  if not overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  names = {p.name for p in out.iterdir()} if out.is_dir() and not out.is_symlink() else None
  if names != files:
    found = ("a file or symlink" if names is None else
             f"a directory holding {sorted(names)[:8]}")
    raise FileExistsError(
        f"{out} is not {what} ({found}; such an output holds exactly {sorted(files)}); "
        "--overwrite only replaces those, so nothing was deleted. Choose another output "
        "directory or remove it yourself.")


def _exchange(a: Path, b: Path) -> bool:
  """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd, rename_exchange = -100, 2
  if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return True
  err = ctypes.get_errno()
  if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: filesystem/kernel cannot exchange
    return False
  raise OSError(err, os.strerror(err), str(a))


def swap_into_place(tmp: Path, out: Path) -> None:
  """`tmp` becomes `out`; an old `out` is deleted only once the new one is in place."""
  if not out.exists():
    os.replace(tmp, out)
    return
  if _exchange(tmp, out):  # tmp now holds the old output
    shutil.rmtree(tmp)
    return
  old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
  os.replace(out, old / out.name)   # two renames: a crash in between leaves the old output
  os.replace(tmp, out)              # in .<name>.old-*/, never deleted
  logging.info("Replaced %s (old output moved aside, now deleted)", out)
  shutil.rmtree(old)
