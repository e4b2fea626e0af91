"""The Colab notebooks execute end to end (smoke mode, CPU) and are stored without outputs."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_quickstart.ipynb", "02_convert_clip_weights.ipynb", "03_diving48_on_tpu.ipynb")


def read(name):
  nbformat = pytest.importorskip("nbformat")
  return nbformat.read(ROOT / "colab" / name, as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs_and_with_a_parameters_cell(name):
  nb = read(name)
  code = [c for c in nb.cells if c.cell_type == "code"]
  for c in code:
    assert c.outputs == [] and c.execution_count is None, (
        f"colab/{name}: a cell has outputs; clear them before committing")
  params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1 and "PGVT_NOTEBOOK_SMOKE" in params[0].source


def test_readme_links_every_notebook():
  readme = (ROOT / "README.md").read_text()
  linked = set(re.findall(r"colab\.research\.google\.com/github/[^)]*?/colab/([\w.]+\.ipynb)",
                          readme))
  assert linked == set(NOTEBOOKS)


@pytest.mark.e2e
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_in_smoke_mode(name, monkeypatch):
  pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  nb = read(name)
  monkeypatch.setenv("PGVT_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT),
                                                                 os.environ.get("PYTHONPATH")])))
  client = NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(ROOT)}})
  client.execute()  # raises CellExecutionError naming the failing cell
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors
