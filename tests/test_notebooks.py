"""Every notebook in notebooks/ is committed without outputs and runs top to bottom on the sample lake.

The sample lake is generated once per session and named by ``ES_ANALYTICS_LAKE`` (the convention in
notebooks/README.md); the notebooks run with the notebooks folder as working directory. Each notebook opens a
private copy of it (``sample_lake()``), so the shared lake's files must be the same after every run, and the
notebooks that change their lake must show the same outputs run twice, in two orders.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from es_analytics import Lake
from es_analytics.notebook import COPY_PREFIX, LAKE_ENV
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


def run(notebook: Path, lake: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    nb = nbformat.read(notebook, as_version=4)
    monkeypatch.setenv(LAKE_ENV, str(lake))  # the kernel inherits the environment
    client = NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[dict[str, Any]]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def test_there_are_notebooks() -> None:
    names = {p.name for p in ALL}
    assert {"00_the_seed.ipynb", "01_quickstart.ipynb", "04_patterns.ipynb"} <= names


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
def test_notebook_runs_top_to_bottom(notebook: Path, sample_lake_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = fingerprint(sample_lake_path)
    nb = run(notebook, sample_lake_path, monkeypatch)  # raises CellExecutionError on the first failing cell
    assert fingerprint(sample_lake_path) == before, "the notebook changed the shared sample lake"
    nbformat.validate(nb)  # every output is one nbformat accepts
    produced = outputs(nb)
    assert not [o for o in produced if o["output_type"] == "error"]
    tracebacks = [o["text"] for o in produced if o.get("name") == "stderr" and "Traceback" in o["text"]]
    assert not tracebacks, tracebacks
    if notebook.name in SHOWCASES:
        html = [str(o.get("data", {}).get("text/html", "")) for o in produced]
        # The summary card shows the notebook's private copy, with the events of the lake named by
        # ES_ANALYTICS_LAKE.
        with Lake.open(sample_lake_path) as shared:
            events = shared.sql("SELECT count(*) AS n FROM events")["n"].item()
        assert any(f"<code>{COPY_ROOT}" in h and f"{events:,}" in h for h in html)
        assert chart_outputs(nb), f"{notebook.name} shows no chart"
    check_charts(nb)


VEGA = "application/vnd.vega.v5+json"
MAX_CHART_BYTES = 50_000


def chart_outputs(nb: nbformat.NotebookNode) -> list[dict[str, Any]]:
    return [o for o in outputs(nb) if VEGA in o.get("data", {})]


def check_charts(nb: nbformat.NotebookNode) -> None:
    """Every chart is a Vega v5 spec with an SVG beside it, small, with no script or CDN in it; no HTML chart."""
    for out in outputs(nb):
        data = out.get("data", {})
        assert "vegaEmbed(" not in str(data.get("text/html", "")), "a chart that needs JavaScript in its output"
        if VEGA in data:
            assert data["image/svg+xml"].startswith("<svg") and "<script" not in data["image/svg+xml"]
            assert data[VEGA]["$schema"].endswith("/vega/v5.json")
            size = len(json.dumps(out, separators=(",", ":")))
            assert size < MAX_CHART_BYTES, f"a chart output of {size:,} bytes (aggregate before charting)"
            assert "cdn.jsdelivr" not in json.dumps(out)


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the SHA-256 of its content, but the readers' pins: empty lock files
    that a reader of the lake holds while it reads (``store/pins.py``)."""
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file() and f.parent.name != "pins"}


COPY_ROOT = str(Path(tempfile.gettempdir()) / COPY_PREFIX)
# Parts of an output that differ from one run to the next whatever the lake holds: the private copy's
# folder, folders made by tempfile, the wall clock (recorded_at of new events, report and erasure times)
# and measured durations.
VOLATILE = [
    (re.compile(re.escape(COPY_ROOT) + r"[^/\s\"'<]+"), "<copy>"),
    (re.compile(re.escape(tempfile.gettempdir()) + r"/[A-Za-z0-9_.-]+"), "<tmp>"),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:\+00:00|Z| UTC)?"), "<time>"),
    (re.compile(r"\b\d+(?:\.\d+)? ms\b|\b\d+\.\d+ s\b"), "<duration>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),  # new event ids
]


def first_difference(a: str, b: str) -> tuple[str, str]:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return a[max(at - 150, 0):at + 150], b[max(at - 150, 0):at + 150]


def comparable(nb: nbformat.NotebookNode, today: str) -> list[str]:
    """Every output as a viewer shows it, volatile parts masked; ``today`` (this run's date) too."""
    texts = []
    for out in outputs(nb):
        shown = {k: v for k, v in out.items() if k != "execution_count"}
        if "text/html" in shown.get("data", {}):  # what a viewer shows; the text twin wraps times over lines
            shown["data"] = {k: v for k, v in shown["data"].items() if k != "text/plain"}
        text = json.dumps(shown, sort_keys=True)
        for pattern, mask in VOLATILE:
            text = pattern.sub(mask, text)
        texts.append(text.replace(today, "<today>"))
    return texts


# The notebooks that change their lake (append, forget, verify) and one that only reads it.
CHANGING = ["01_quickstart.ipynb", "06_privacy_and_forgetting.ipynb", "05_compliance_report.ipynb"]


@pytest.mark.slow
def test_notebooks_run_twice_in_two_orders_show_the_same(sample_lake_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import date

    before = fingerprint(sample_lake_path)
    today = date.today().isoformat()
    first = {name: comparable(run(NOTEBOOKS / name, sample_lake_path, monkeypatch), today) for name in CHANGING}
    again = {name: comparable(run(NOTEBOOKS / name, sample_lake_path, monkeypatch), today)
             for name in reversed(CHANGING)}
    for name in CHANGING:
        assert len(first[name]) == len(again[name]) > 0, name
        differ = [first_difference(a, b) for a, b in zip(first[name], again[name]) if a != b]
        assert not differ, (name, differ[:2])
    assert fingerprint(sample_lake_path) == before


# -- es_analytics.notebook, without a kernel ---------------------------------------------------------
def small_lake(path: Path) -> Lake:
    from datetime import datetime, timezone

    from es_analytics import Event

    lake = Lake.open(path)
    lake.append("acc-1", [Event("AccountOpened", {"initialDeposit": 5},
                                occurred_at=datetime(2025, 1, 2, tzinfo=timezone.utc)),
                          Event("MoneyDeposited", {"amount": 7}, occurred_at=datetime(2025, 1, 3, tzinfo=timezone.utc))],
                expected_version=0, aggregate_type="BankAccount")
    return lake


def test_sql_magic_binds_notebook_variables(tmp_path: Path) -> None:
    from es_analytics.notebook import run_sql_magic

    lake = small_lake(tmp_path / "lake")
    ns: dict[str, Any] = {"lake": lake, "kind": "MoneyDeposited", "cents": 7}
    cell = "SELECT count(*) AS n FROM events WHERE event_type = $kind AND CAST(data->>'amount' AS INT) = $cents"
    assert run_sql_magic("-o found", cell, ns)["n"].item() == 1
    assert ns["found"]["n"].item() == 1
    # A hostile value is a bound parameter, not SQL.
    ns["kind"] = "x' OR '1'='1"
    assert run_sql_magic("", cell, ns)["n"].item() == 0
    # Line magic, and '$' inside a JSON path is not a parameter.
    assert run_sql_magic("SELECT data->>'$.amount' AS a FROM events WHERE aggregate_version = 2", None, ns)[
        "a"].item() == "7"


def test_sql_magic_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from es_analytics import notebook
    from es_analytics.errors import InvalidArgumentError, ReadOnlyQueryError
    from es_analytics.notebook import run_sql_magic

    monkeypatch.setattr(notebook, "_state", {})  # no lake bound by an earlier setup()

    lake = small_lake(tmp_path / "lake")
    ns: dict[str, Any] = {"lake": lake, "other": 3}
    with pytest.raises(InvalidArgumentError, match="not defined: \\['missing'\\]"):
        run_sql_magic("", "SELECT $missing", ns)
    with pytest.raises(InvalidArgumentError, match="needs a query"):
        run_sql_magic("", "  ", ns)
    with pytest.raises(InvalidArgumentError, match="is not a Lake"):
        run_sql_magic("--lake other", "SELECT 1", ns)
    with pytest.raises(InvalidArgumentError, match="needs a variable name"):
        run_sql_magic("-o", "SELECT 1", ns)
    with pytest.raises(InvalidArgumentError, match="takes only -o NAME"):
        run_sql_magic("-o x extra", "SELECT 1", ns)
    with pytest.raises(ReadOnlyQueryError):
        run_sql_magic("", "DELETE FROM events", ns)
    with pytest.raises(InvalidArgumentError, match="does not know which lake"):
        run_sql_magic("", "SELECT 1", {"a": lake, "b": small_lake(tmp_path / "other")})


def test_sample_lake_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from es_analytics.notebook import SAMPLE_EVENTS_ENV, default_lake_path, sample_lake

    monkeypatch.setenv(LAKE_ENV, str(tmp_path / "from-env"))
    monkeypatch.setenv(SAMPLE_EVENTS_ENV, "500")
    assert default_lake_path() == tmp_path / "from-env"
    with sample_lake(progress=False) as lake:
        n = lake.sql("SELECT count(*) AS n FROM events")["n"].item()
        assert 400 <= n <= 600
    with sample_lake(progress=False) as again:  # an existing lake is opened, not generated twice
        assert again.sql("SELECT count(*) AS n FROM events")["n"].item() == n
    monkeypatch.delenv(LAKE_ENV)
    assert default_lake_path() == NOTEBOOKS.parent / "data" / "sample-lake"


def test_sample_lake_is_a_private_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from es_analytics import Event, notebook
    from es_analytics.notebook import SAMPLE_EVENTS_ENV, sample_lake

    shared = tmp_path / "shared"
    monkeypatch.setenv(LAKE_ENV, str(shared))
    monkeypatch.setenv(SAMPLE_EVENTS_ENV, "300")
    one, two = sample_lake(progress=False), sample_lake(progress=False)
    generated = fingerprint(shared)
    assert one.path != two.path and one.path.parent.name.startswith(COPY_PREFIX) and one.path.parent != shared
    n = one.sql("SELECT count(*) AS n FROM events")["n"].item()
    one.append("acc-new", [Event("AccountOpened", {"initialDeposit": 1})], expected_version=0,
               aggregate_type="BankAccount")
    one.forget(one.key_store.subjects()[0][0])
    one.verify()
    assert one.sql("SELECT count(*) AS n FROM events")["n"].item() == n + 2  # the event and the tombstone
    assert two.sql("SELECT count(*) AS n FROM events")["n"].item() == n  # the other copy did not see it
    assert fingerprint(shared) == generated  # nor did the shared lake
    folder = one.path.parent
    notebook._remove_copy(one, folder)  # what runs at exit
    assert not folder.exists() and "(closed)" in one._repr_html_()
    two.close()
    with sample_lake(progress=False, copy=False) as itself:
        assert itself.path == shared and itself.sql("SELECT count(*) AS n FROM events")["n"].item() == n


def test_setup_renders_offline_and_checks_its_renderer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import altair as alt

    from es_analytics import notebook

    monkeypatch.setattr(notebook, "_state", {})

    from es_analytics.errors import InvalidArgumentError
    from es_analytics.notebook import setup

    before = alt.renderers.active, alt.theme.active, alt.data_transformers.active
    try:
        lake = small_lake(tmp_path / "lake")
        setup(lake, magic=True)  # no IPython running: the magic is skipped
        assert notebook._state["lake"] is lake
        assert alt.renderers.active == "es_analytics" and alt.theme.active == "es_analytics"
        assert alt.data_transformers.active == "es_analytics"
        setup(renderer="svg", theme=False)
        assert alt.renderers.active == "svg"
        with pytest.raises(InvalidArgumentError, match="renderer must be one of"):
            setup(renderer="canvas")  # type: ignore[arg-type]
    finally:
        alt.renderers.enable(before[0])
        alt.theme.enable(before[1])
        alt.data_transformers.enable(before[2])


def test_lake_summary_card(tmp_path: Path) -> None:
    lake = small_lake(tmp_path / "lake<b>")
    html = lake._repr_html_()
    assert "lake&lt;b&gt;" in html and "<td style=\"padding:2px 10px;text-align:left\">BankAccount</td>" in html
    assert "2 events in 1 streams" in html and "2 events in the hot tier" in html
    lake.seal()
    assert "1 Parquet files" in lake._repr_html_() and "0 events in the hot tier" in lake._repr_html_()
    lake.close()
    assert "(closed)" in lake._repr_html_()


def test_the_magic_is_lake_sql_and_leaves_sql_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a real IPython shell: ``%%lake_sql`` and ``%lake_sql`` query the lake; ``%sql`` is not ours."""
    from IPython.core.interactiveshell import InteractiveShell

    from es_analytics import notebook

    monkeypatch.setattr(notebook, "_state", {})
    shell = InteractiveShell.instance()
    try:
        lake = small_lake(tmp_path / "lake")
        shell.user_ns.update({"lake": lake, "kind": "MoneyDeposited"})
        notebook.load_ipython_extension(shell)
        assert "lake_sql" in shell.magics_manager.magics["cell"]
        assert "lake_sql" in shell.magics_manager.magics["line"]
        assert "sql" not in shell.magics_manager.magics["cell"] and "sql" not in shell.magics_manager.magics["line"]
        result = shell.run_cell("%%lake_sql -o found\nSELECT count(*) AS n FROM events WHERE event_type = $kind")
        assert result.success and shell.user_ns["found"]["n"].item() == 1
        line = shell.run_cell("%lake_sql SELECT max(aggregate_version) AS v FROM events")
        assert line.success and line.result["v"].item() == 2
        lake.close()
    finally:
        InteractiveShell.clear_instance()


def test_no_jupysql_in_the_notebooks_extra() -> None:
    import tomllib

    extras = tomllib.loads((NOTEBOOKS.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [d for deps in extras.values() for d in deps if d.lower().startswith("jupysql")]
