"""examples/quickstart.ipynb runs headlessly, top to bottom, in a real Jupyter kernel (nbclient): any cell
that raises fails the test. It writes into a temporary folder, never into the repository's stores."""

from __future__ import annotations

import json

import pytest

from conftest import PROJECT

nbclient = pytest.importorskip("nbclient", reason="pip install -r requirements-dev.txt (nbclient, ipykernel)")
nbformat = pytest.importorskip("nbformat")

pytestmark = pytest.mark.slow
NOTEBOOK = PROJECT / "examples" / "quickstart.ipynb"


def html_outputs(cell) -> str:
    return "".join(out.get("data", {}).get("text/html", "") for out in cell.get("outputs", []))


def text_outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", "") if out.get("output_type") == "stream" else "")
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_the_quickstart_notebook_runs_and_shows_its_tables_and_graph(tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    monkeypatch.setenv("QUICKSTART_DIR", str(tmp_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(PROJECT)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error

    def output_of(start: str, kind: str = "text/html") -> str:
        cell = next(c for c in notebook.cells if c.cell_type == "code" and c.source.startswith(start))
        return html_outputs(cell) if kind == "text/html" else text_outputs(cell)

    grouped = output_of('split.table(group_by="split")')
    assert "keras-lineage-table" in grouped and ">train<" in grouped
    assert "data:image/jpeg;base64," in output_of("split.table(filter=")
    assert "<svg" in output_of("ws.lineage()")
    assert "keras-lineage-comparison" in output_of("val_slow, = ")
    assert output_of("try:", "text").strip() == "model:v99 does not exist: model has v1..v2 and aliases fast-lr, latest"
    store = tmp_path / "store"
    runs = sorted(json.loads(p.read_text())["stage"] for p in (store / "runs").glob("*.json"))
    assert runs == ["infer", "ingest", "split", "train", "train"]
