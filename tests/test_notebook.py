"""notebooks/quickstart.ipynb runs top to bottom, as a Jupyter or Colab user runs it (nbclient, a real kernel).

GPT2KIT_NOTEBOOK_QUICK=1 is the notebook's own switch to smaller settings (it shows and explains it): the
issue asks for the whole run within 5 minutes on 2 cores.
"""

import time
from datetime import datetime
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
LIMIT_S = 300


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2KIT_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("GPT2KIT_OFFLINE", "1")  # the notebook needs no download: prove it
    # OpenMP threads that wait passively (PyTorch's and the C kernels' would otherwise spin against each other
    # on 2 cores): the same results in a fraction of the CPU time.
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.monotonic()
    nbclient.NotebookClient(
        nb, timeout=LIMIT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    took = time.monotonic() - start
    per_cell = ", ".join(f"cell {i}: {_seconds(c):.0f} s" for i, c in enumerate(nb.cells) if c.cell_type == "code")
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "GPT2KIT_NOTEBOOK_QUICK is 1" in text
    assert "saved:" in text and (tmp_path / "checkpoint" / "phoenix").is_dir()
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the loss plot and the next-token chart are shown inline"
    assert took < LIMIT_S, f"the notebook took {took:.0f} s ({per_cell}); the issue allows {LIMIT_S} s on 2 cores"


def _seconds(cell) -> float:
    """How long a cell ran, from the timestamps nbclient records in its metadata."""
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.status.busy"), timing.get("iopub.status.idle")
    if not (start and end):
        return 0.0
    return (
        datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))
    ).total_seconds()
