"""notebooks/walkthrough.ipynb runs end to end (train, evaluate, export, index, search) without errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_walkthrough_notebook_runs(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = tmp_path / "walkthrough.ipynb"
    shutil.copyfile(ROOT / "notebooks" / "walkthrough.ipynb", notebook)
    nb = nbformat.read(notebook, as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert sum("image/jpeg" in o.get("data", {}) for o in outputs) == 2  # the retrieval grid and the search results
    text = "".join(o.get("text", "") for o in outputs)
    assert "photo -> catalogue recall@1" in text and "onnx max abs difference" in text
    assert (tmp_path / "walkthrough" / "catalog.lkidx").is_file()
