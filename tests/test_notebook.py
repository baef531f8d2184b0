"""notebooks/quickstart.ipynb runs top to bottom (nbclient, a fresh ipykernel of this interpreter) on the tiny
synthetic world, offline, and is committed with its outputs stripped."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_is_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[dev]')")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code), "strip the notebook's outputs"


@pytest.mark.slow
def test_quickstart_notebook_runs_without_errors(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[dev]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[dev]')")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e '.[dev]')")
    monkeypatch.setenv("CAPTIONLESS3D_CKPT", "fast-dev")  # hermetic: train the tiny fast-dev checkpoint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # its working directory (tempfile.mkdtemp) lands in tmp_path
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    client.execute()  # CellExecutionError (with the cell's traceback) if any cell fails
    seconds = time.perf_counter() - started
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
                     if out.get("output_type") == "stream")
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    assert not errors
    assert ("trained a fast-dev checkpoint" in text and "top-1:" in text and "ShapeIndex(" in text
            and "the query shape ranks itself" in text)
    images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if "image/png" in out.get("data", {})]
    assert len(images) >= 5, "the notebook shows its shapes, predictions and search hits as images"
    assert seconds < 60, f"the quick start took {seconds:.0f} s"
