"""`--config=configs/<name>.py[:arg]` from any working directory.

The experiment configs are a package (`configs`, shipped by `pip install`).
A config path that exists is used as given; otherwise a path starting with
`configs/` is looked up in the importable `configs` package (the repository's
when run from its root, else the installed one). So both of these work from
anywhere once the package is installed:

  python -m pgvt_jax.main --config=configs/diving48.py:runlocal --workdir=...
  python -m pgvt_jax.main --config=/my/own/config.py --workdir=...

`DEFINE_config_file` is ml_collections' flag of the same name with that
lookup; entry points (main, tools) define their `--config` with it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from absl import flags
from ml_collections.config_flags import config_flags

PACKAGE = "configs"


def package_dir() -> Path | None:
  """Directory of the importable `configs` package, or None."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    return None
  return Path(list(spec.submodule_search_locations)[0])


def resolve(spec: str) -> str:
  """'configs/x.py:arg' -> '<existing file>:arg' (see the module docstring).

  Raises:
    ValueError: no such file, naming the places looked at and the configs
      that exist (absl turns it into a one-line flag error).
  """
  path, colon, arg = spec.partition(":")
  expanded = os.path.expanduser(path)
  if os.path.isfile(expanded):
    return expanded + colon + arg
  parts = Path(path).parts
  tried = [os.path.abspath(expanded)]
  pkg = package_dir()
  if parts and parts[0] == PACKAGE and pkg is not None:
    candidate = pkg.joinpath(*parts[1:])
    if candidate.is_file():
      return str(candidate) + colon + arg
    tried.append(str(candidate))
  known = (sorted(str(p.relative_to(pkg.parent)) for p in pkg.rglob("*.py")
                  if p.name not in ("__init__.py", "common.py"))
           if pkg is not None else [])
  raise ValueError(
      f"config file {path!r} not found (looked at {', '.join(tried)}); "
      f"configs shipped with pgvt_jax: {', '.join(known) or 'none found'}")


_HOLDERS: dict[tuple[str, int], flags.FlagHolder] = {}


class _ResolvingParser(config_flags.ConfigFileFlagParser):

  def parse(self, path):
    return super().parse(resolve(path))


def DEFINE_config_file(  # pylint: disable=invalid-name
    name: str = "config", default: str | None = None,
    help_string: str = "Experiment config file.",
    flag_values: flags.FlagValues = flags.FLAGS, lock_config: bool = False,
    **kwargs) -> flags.FlagHolder:
  """ml_collections' `DEFINE_config_file` with the lookup of `resolve`.

  Idempotent per (name, flag_values): several tools that each define `--config` (main,
  model_stats, the benchmarks) can be imported into one process (tests, notebooks).
  """
  key = (name, id(flag_values))
  if key in _HOLDERS and name in flag_values:
    return _HOLDERS[key]
  holder = config_flags.DEFINE_config_file(
      name, default, help_string, flag_values=flag_values,
      lock_config=lock_config, **kwargs)
  flag_values[name].parser = _ResolvingParser(name=name,
                                              lock_config=lock_config)
  _HOLDERS[key] = holder
  return holder
