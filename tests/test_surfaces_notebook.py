"""examples/surfaces_tour.ipynb runs top to bottom, in this venv's kernel, and shows figures."""

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "surfaces_tour.ipynb"


@pytest.mark.slow
def test_surfaces_tour_notebook_executes(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)"))
    # kernel_name="python3" with argv[0] "python" starts sys.executable: this venv's python.
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    assert notebook.cells[0].outputs[0]["text"].strip() == sys.prefix
    shown = [
        kind
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        for kind in output.get("data", {})
    ]
    assert shown.count("image/png") >= 2 and "image/gif" in shown and "text/markdown" in shown
    errors = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not errors
