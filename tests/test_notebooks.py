"""Every notebook in notebooks/ is committed without outputs and runs top to bottom on the sample lake.

The sample lake is generated once per session; each notebook runs on a fresh copy of it, found through
``ES_ANALYTICS_LAKE`` (the convention in notebooks/README.md), with the notebooks folder as working directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from es_analytics import Lake
from es_analytics.notebook import LAKE_ENV
from es_analytics.sample import generate

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))
SAMPLE_EVENTS = 20_000


@pytest.fixture(scope="session")
def sample_lake_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "lake"
    with Lake.open(path) as lake:
        generate(lake, events=SAMPLE_EVENTS, seed=7)
    return path


def run(notebook: Path, lake_copy: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    nb = nbformat.read(notebook, as_version=4)
    monkeypatch.setenv(LAKE_ENV, str(lake_copy))  # the kernel inherits the environment
    client = NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[dict[str, Any]]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def test_there_are_notebooks() -> None:
    names = {p.name for p in ALL}
    assert {"01_quickstart.ipynb", "04_patterns.ipynb"} <= names


@pytest.mark.parametrize("notebook", ALL, ids=[p.stem for p in ALL])
def test_committed_without_outputs(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{notebook.name}: clear outputs before committing "
                "(jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)"
            )


# Notebooks that display the lake and draw charts (the others may too; these must).
SHOWCASES = {"01_quickstart.ipynb", "04_patterns.ipynb"}


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ALL, ids=[p.stem for p in ALL])
def test_notebook_runs_top_to_bottom(notebook: Path, sample_lake_path: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    lake_copy = tmp_path / "lake"
    shutil.copytree(sample_lake_path, lake_copy)
    nb = run(notebook, lake_copy, monkeypatch)  # raises CellExecutionError on the first failing cell
    produced = outputs(nb)
    assert not [o for o in produced if o["output_type"] == "error"]
    tracebacks = [o["text"] for o in produced if o.get("name") == "stderr" and "Traceback" in o["text"]]
    assert not tracebacks, tracebacks
    if notebook.name in SHOWCASES:
        html = [str(o.get("data", {}).get("text/html", "")) for o in produced]
        # It used the lake named by ES_ANALYTICS_LAKE (the summary card shows its path) ...
        assert any(str(lake_copy) in h for h in html)
        # ... and drew charts offline: Vega is inlined, nothing is loaded from a CDN.
        charts = [h for h in html if "vegaEmbed(" in h]
        assert charts, f"{notebook.name} shows no chart"
        assert all("cdn.jsdelivr.net/npm/vega" not in h and '<script src="http' not in h for h in charts)
