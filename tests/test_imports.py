"""The import graph of the repo's own files has one direction and no cycles.

Imports follow the data path, raw files -> records -> batches -> step -> checkpoint: a stage
imports the stages before it, never one after. `data_prep` (raw files -> records, and what
records are: schema, joint layouts, video decoding, pose readers, the synthetic worlds) imports
no other repo package; `pgvt_jax` (records -> batches -> step -> checkpoint, predict) imports
`data_prep`; `configs` and `benchmarks` sit on top (docs/data.md "Import direction"). Every
`import` in every file is read with `ast`, those inside functions included (a lazy import
dodges an import-time cycle but keeps the two files tied), so a new cycle is listed here, not
found by a newcomer's ImportError.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("pgvt_jax", "data_prep", "benchmarks", "configs")
# package -> repo packages it must never import (the direction of the data path).
FORBIDDEN = {
    "data_prep": ("pgvt_jax", "configs", "benchmarks"),
    "pgvt_jax": ("configs", "benchmarks"),
    "configs": ("benchmarks",),
}


def _modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every .py under PACKAGES (`a/b/__init__.py` is `a.b`)."""
  out = {}
  for package in PACKAGES:
    for path in sorted((root / package).rglob("*.py")):
      parts = path.relative_to(root).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = path
  return out


def _imported_modules(module: str, path: pathlib.Path, modules) -> dict[str, int]:
  """Repo module -> first line, for every import in one file, anywhere in it. `import a.b.c`
  points at the longest of `a.b.c`, `a.b`, `a` that is a repo module; `from a.b import c` at
  `a.b.c` when that is a file, else at `a.b` (its `__init__`). Parent packages that Python
  runs implicitly are not edges: a package `__init__` re-exporting its submodules is no cycle."""
  is_package = path.name == "__init__.py"
  edges: dict[str, int] = {}

  def add(name, line):
    if name in modules and name != module:
      edges.setdefault(name, line)

  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        parts = alias.name.split(".")
        found = [".".join(parts[:i]) for i in range(len(parts), 0, -1)
                 if ".".join(parts[:i]) in modules]
        if found:
          add(found[0], node.lineno)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolved against this file's package
        package = module.split(".")
        package = package if is_package else package[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
      for alias in node.names:
        child = f"{base}.{alias.name}"
        add(child if child in modules else base, node.lineno)
  return edges


def import_graph(root: pathlib.Path = ROOT) -> dict[str, dict[str, int]]:
  """module -> {imported repo module: first line it is imported on}."""
  modules = _modules(root)
  return {module: _imported_modules(module, path, modules) for module, path in modules.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return sorted(out)


def _describe(component: list[str], graph) -> str:
  members = set(component)
  edges = [f"    {a} -> {b} (line {graph[a][b]})" for a in component for b in sorted(graph[a])
           if b in members]
  return "  " + ", ".join(component) + ":\n" + "\n".join(edges)


def test_no_import_cycles_between_files():
  graph = import_graph()
  found = cycles(graph)
  assert not found, "import cycles between files (imports inside functions count):\n" + (
      "\n".join(_describe(c, graph) for c in found))


def test_no_import_cycles_between_packages():
  graph = import_graph()
  packages: dict[str, dict[str, int]] = {p: {} for p in PACKAGES}
  for a, edges in graph.items():
    for b in edges:
      if a.split(".")[0] != b.split(".")[0]:
        packages[a.split(".")[0]].setdefault(b.split(".")[0], 0)
  assert not cycles(packages), f"packages import each other: {cycles(packages)}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package):
  graph = import_graph()
  wrong = [f"  {a} -> {b} (line {line})" for a, edges in sorted(graph.items())
           if a.split(".")[0] == package for b, line in sorted(edges.items())
           if b.split(".")[0] in FORBIDDEN[package]]
  assert not wrong, (f"{package} must not import {', '.join(FORBIDDEN[package])} "
                     "(docs/data.md \"Import direction\"):\n" + "\n".join(wrong))


def test_graph_reads_lazy_relative_and_from_imports(tmp_path):
  """The reader itself: an import inside a function, a relative one, `from pkg import mod`
  and `from pkg import name` (the package's __init__) are all edges; a cycle is found."""
  for name, text in {
      "pgvt_jax/__init__.py": "",
      "pgvt_jax/a.py": "def f():\n  from data_prep import b\n",
      "pgvt_jax/c.py": "from . import a\nfrom pgvt_jax.data import thing\n",
      "pgvt_jax/data/__init__.py": "thing = 1\n",
      "data_prep/__init__.py": "",
      "data_prep/b.py": "import pgvt_jax.a\n",
      "benchmarks/__init__.py": "", "configs/__init__.py": "",
  }.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text)
  graph = import_graph(tmp_path)
  assert graph["pgvt_jax.a"] == {"data_prep.b": 2}
  assert graph["pgvt_jax.c"] == {"pgvt_jax.a": 1, "pgvt_jax.data": 2}
  assert cycles(graph) == [["data_prep.b", "pgvt_jax.a"]]
