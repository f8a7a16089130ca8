"""The Colab notebook runs top to bottom (on this CPU, with a short training)."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

# Trains models, serves exports or starts processes: `make test` runs it, `make test-fast`
# does not.
pytestmark = pytest.mark.large

REPO = Path(__file__).resolve().parents[1]


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("TOWERREC_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("TOWERREC_NOTEBOOK_RANKER_EPOCHS", "2")
    monkeypatch.setenv("TOWERREC_NOTEBOOK_RUN_DIR", str(tmp_path / "run"))
    # The flow, not the default towers' quality (test_end_to_end trains attention and
    # calibrates): the mean history, 5x faster, and the prior's configured weights.
    monkeypatch.setenv("TOWERREC_NOTEBOOK_SETTINGS", json.dumps(
        {"towers.history_encoder": "mean", "prior.calibrate": False}))
    notebook = nbformat.read(REPO / "notebooks" / "towerrec_colab.ipynb", as_version=4)
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = {cell.source.splitlines()[0]: "".join(o.get("text", "") for o in cell.outputs)
               for cell in notebook.cells if cell.cell_type == "code"}
    served = next(text for first, text in outputs.items() if "serving.client" in first)
    assert "recommender version 1" in served
    assert len([line for line in served.splitlines() if line[:2].strip().isdigit()]) == 10
