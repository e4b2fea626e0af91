"""Command-line plumbing shared by the pgvt_jax tools: flags defined at launch, --help exits 0.

Why flags are defined at launch: absl keeps one process-wide flag registry, so two tools that
each defined `--workdir` at import time could not be imported into one process (a notebook, a
test), and importing a tool should not change another tool's command line. So each absl tool
defines its flags in a function that `run_app` calls only when the tool is launched
(`python -m pgvt_jax.<tool>`), and the tools that parse their own argv (predict, visualize)
define theirs on a private `flags.FlagValues`.

Why `--help` is handled here: absl prints the usage on `--help` but exits with status 1, and a
private FlagValues has no help flag at all ("Unknown command line flag 'help'"). Here `-h`,
`--help`, `-?` and `--helpshort` print the module docstring and the tool's flags, `--helpfull`
every flag of the process, on stdout, and exit 0.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from absl import app, flags

_HELP_SHORT = frozenset({"-h", "--h", "-help", "--help", "-?", "--?", "-helpshort",
                         "--helpshort"})
_HELP_FULL = frozenset({"-helpfull", "--helpfull"})


def _flag_args(argv: Sequence[str]) -> list[str]:
  """argv without the program name and without what follows a `--` (not flags)."""
  args = list(argv[1:])
  return args[:args.index("--")] if "--" in args else args


def help_requested(argv: Sequence[str]) -> Optional[str]:
  """"short", "full" or None: whether argv (program name first) asks for the usage."""
  args = _flag_args(argv)
  if any(a in _HELP_FULL for a in args):
    return "full"
  if any(a in _HELP_SHORT for a in args):
    return "short"
  return None


def usage(doc: Optional[str], help_text: str) -> str:
  """A tool's usage: `doc` (its module docstring), then `help_text` (its flags)."""
  flag_lines = help_text.strip("\n")
  return f"{(doc or '').strip()}\n\nflags:\n{flag_lines}\n"


def private_usage(doc: Optional[str], fv: flags.FlagValues) -> str:
  """The usage of a tool whose flags live on its own FlagValues `fv`."""
  return usage(doc, fv.get_help(prefix="  ", include_special_flags=False))


def run_app(main: Callable[[list[str]], None], define_flags: Callable[[], None],
            doc: Optional[str]) -> None:
  """`absl.app.run(main)` after `define_flags()`; a help flag prints the usage and exits 0.

  `doc` is the tool's module docstring (the `__main__` docstring is not the tool's under a
  console-script entry point). Call it from the tool's `if __name__ == "__main__":` block.
  """
  fv = flags.FLAGS
  before = set(fv)
  define_flags()
  which = help_requested(sys.argv)
  if not which:
    app.run(main)
    return
  new = sorted(set(fv) - before)
  if which == "full":
    text = fv.get_help()
  elif new:  # the modules that defined the tool's flags (--config: ml_collections), theirs only
    modules = dict.fromkeys(fv.find_module_defining_flag(n) for n in new)
    text = "\n".join(fv.module_help(m) for m in modules)
  else:  # defined by an earlier launch in this process (a notebook): absl's own choice
    text = fv.main_module_help()
  print(usage(doc, text))
  sys.exit(0)
