"""Jupyter niceties: the sample lake, offline charts and a ``%%lake_sql`` magic bound to a lake.

Every notebook in ``notebooks/`` starts the same way::

    from es_analytics.notebook import sample_lake, setup
    lake = sample_lake()   # a private copy of $ES_ANALYTICS_LAKE, else of data/sample-lake
    setup(lake)            # offline charts, %%lake_sql bound to this lake

- :func:`sample_lake` takes the lake named by the environment variable ``ES_ANALYTICS_LAKE`` (what
  ``es-analytics lab`` and the notebook tests set), else ``data/sample-lake`` of the source checkout, fills
  it with :func:`es_analytics.sample.generate` (with a progress bar) when it is empty, and opens a private
  copy of it in a temporary folder: what a notebook changes never reaches the shared lake.
- :func:`setup` makes Altair render offline with the renderer of :mod:`es_analytics.charts.display` (a
  Vega v5 spec that JupyterLab draws with tooltips, trusted or not, plus a static SVG for other viewers; or
  static images only with ``renderer="svg"``/``"png"``), makes every es_analytics frame chartable (Decimal
  money as floats in the chart only), enables the es_analytics chart theme for the user's own charts, and
  registers the ``%lake_sql`` / ``%%lake_sql`` magic (its own name, so that it never shadows jupysql's
  ``%sql`` in an environment that has both).
- The magic runs read-only DuckDB SQL through ``lake.sql`` (the view ``events`` on the newest snapshot)
  and returns a polars DataFrame. ``$name`` in the query is bound to the notebook variable ``name``, never
  pasted into the text. ``%%lake_sql -o result`` also stores the frame in ``result``; ``--lake other`` uses
  another lake variable. Load it alone with ``%load_ext es_analytics.notebook``.
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from .errors import InvalidArgumentError
from .lake import Lake

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = [
    "COPY_PREFIX",
    "LAKE_ENV",
    "MAGIC",
    "SAMPLE_EVENTS_ENV",
    "default_lake_path",
    "load_ipython_extension",
    "private_copy",
    "run_sql_magic",
    "sample_lake",
    "setup",
]

LAKE_ENV = "ES_ANALYTICS_LAKE"
#: The magic's name: ``%lake_sql`` (line) and ``%%lake_sql`` (cell).
MAGIC = "lake_sql"
SAMPLE_EVENTS_ENV = "ES_ANALYTICS_SAMPLE_EVENTS"
Renderer = Literal["interactive", "svg", "png"]
_RENDERERS = ("interactive", "svg", "png")
_PARAM = re.compile(r"(?<![\w$])\$([A-Za-z_][A-Za-z0-9_]*)")
#: The name of each private copy's temporary folder starts so.
COPY_PREFIX = "es-analytics-sample-"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_state: dict[str, Lake] = {}


def default_lake_path() -> Path:
    """Where :func:`sample_lake` looks: ``$ES_ANALYTICS_LAKE``, else ``data/sample-lake`` of the checkout.

    Outside a source checkout (an installed package) the default is ``~/.cache/es_analytics/sample-lake``.
    """
    configured = os.environ.get(LAKE_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / "data" / "sample-lake"
    return Path.home() / ".cache" / "es_analytics" / "sample-lake"


def sample_lake(path: str | os.PathLike[str] | None = None, *, events: int | None = None, seed: int = 7,
                progress: bool = True, copy: bool = True) -> Lake:
    """Open the sample lake, generating its deterministic history first if the lake is empty.

    By default the lake returned is **a private copy** of the shared sample lake, in a temporary folder that
    is removed when the Python process (the notebook's kernel) exits: a notebook may append, forget or
    verify (which moves the integrity checkpoint) without changing the shared lake, so every notebook, run
    twice or in any order, starts from the same history. Only an empty shared lake is written to, once, by
    generating the sample into it.

    Parameters
    ----------
    path
        The shared lake folder (default: :func:`default_lake_path`).
    events
        How many events to generate into an empty lake (default ``$ES_ANALYTICS_SAMPLE_EVENTS`` or 20,000).
    seed
        The sample's seed: same seed, same events.
    progress
        Show a progress bar while generating.
    copy
        ``False`` opens the shared lake itself (changes then stay in it).
    """
    from . import patterns
    from .sample import generate

    count = events if events is not None else int(os.environ.get(SAMPLE_EVENTS_ENV) or 20_000)
    shared = Path(default_lake_path() if path is None else path)
    lake = Lake.open(shared)
    try:
        if lake.watermark().position == 0:
            generate(lake, events=count, seed=seed, progress=progress)
            patterns.prepare(lake)  # pattern rollups of the new files, so the first chart is quick
    except BaseException:
        lake.close()
        raise
    if not copy:
        return lake
    lake.close()  # closed: the hot tier's write-ahead log is folded into hot.sqlite before the copy
    return private_copy(shared)


def private_copy(source: str | os.PathLike[str]) -> Lake:
    """Open a copy of the lake folder ``source`` in a new temporary folder, removed when the process exits.

    The copy is made file by file with :func:`shutil.copytree`; ``source`` should not be written to meanwhile
    (:func:`sample_lake` copies a lake it has just closed).
    """
    folder = Path(tempfile.mkdtemp(prefix=COPY_PREFIX))
    target = folder / "lake"
    try:
        shutil.copytree(Path(source), target)
        lake = Lake.open(target)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    atexit.register(_remove_copy, lake, folder)
    return lake


def _remove_copy(lake: Lake, folder: Path) -> None:
    lake.close()
    shutil.rmtree(folder, ignore_errors=True)


def setup(lake: Lake | None = None, *, renderer: Renderer = "interactive", magic: bool = True,
          theme: bool = True) -> None:
    """Prepare a notebook: offline charts, the es_analytics chart theme, and ``%%lake_sql`` bound to ``lake``.

    Parameters
    ----------
    lake
        The lake the ``%lake_sql`` magic queries (it can be changed later with ``setup(other)`` or ``--lake``).
    renderer
        ``"interactive"`` (a Vega v5 spec JupyterLab draws with tooltips, with an SVG beside it for viewers
        that cannot run Vega; no JavaScript in the output, no network), ``"svg"`` or ``"png"`` (static
        images rendered by vl-convert).
    magic
        Register the ``%lake_sql`` / ``%%lake_sql`` magic (needs a running IPython).
    theme
        Enable the es_analytics Altair theme for charts made by hand.
    """
    if renderer not in _RENDERERS:
        raise InvalidArgumentError(f"renderer must be one of {_RENDERERS!r}, got {renderer!r}")
    import altair as alt

    from .charts import register_theme

    from .charts import display

    if renderer == "interactive":
        display.register_renderer(enable=True)
    else:
        alt.renderers.enable(renderer)
    display.register_data_transformer(enable=True)
    if theme:
        register_theme(enable=True)
    pl.Config.set_tbl_rows(20)
    pl.Config.set_fmt_str_lengths(60)
    if lake is not None:
        _state["lake"] = lake
    if magic:
        shell = _shell()
        if shell is not None:
            load_ipython_extension(shell)


def _shell() -> InteractiveShell | None:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the notebooks extra
        return None
    shell: InteractiveShell | None = get_ipython()
    return shell


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register ``%lake_sql`` / ``%%lake_sql`` (``%load_ext es_analytics.notebook``)."""

    def lake_sql(line: str, cell: str | None = None) -> pl.DataFrame:
        return run_sql_magic(line, cell, ipython.user_ns)

    ipython.register_magic_function(lake_sql, magic_kind="line_cell", magic_name=MAGIC)  # type: ignore[call-arg, arg-type]


def run_sql_magic(line: str, cell: str | None, namespace: dict[str, Any]) -> pl.DataFrame:
    """What the ``%lake_sql`` magic does: parse options, bind ``$name`` variables, run ``lake.sql``.

    Examples
    --------
    >>> import tempfile
    >>> from datetime import datetime, timezone
    >>> from es_analytics import Event, Lake
    >>> with Lake.open(tempfile.mkdtemp()) as lake:
    ...     _ = lake.append("acc-1", [Event("AccountOpened", {"initialDeposit": 100})],
    ...                     expected_version=0, aggregate_type="BankAccount")
    ...     ns = {"lake": lake, "kind": "AccountOpened"}
    ...     frame = run_sql_magic("--lake lake -o found",
    ...                           "SELECT count(*) AS n FROM events WHERE event_type = $kind", ns)
    >>> frame["n"].item(), ns["found"]["n"].item()
    (1, 1)
    """
    options, inline_query = _parse_options(line, has_cell=cell is not None)
    query = cell if cell is not None else inline_query
    if not query.strip():
        raise InvalidArgumentError("%lake_sql needs a query, e.g. %lake_sql SELECT count(*) FROM events")
    lake = _magic_lake(options.get("lake"), namespace)
    names = list(dict.fromkeys(_PARAM.findall(query)))
    missing = [n for n in names if n not in namespace]
    if missing:
        raise InvalidArgumentError(f"%lake_sql binds $name to notebook variables; not defined: {missing!r}")
    params = {name: namespace[name] for name in names} or None
    frame = lake.sql(query, params)
    if "output" in options:
        namespace[options["output"]] = frame
    return frame


def _parse_options(line: str, *, has_cell: bool) -> tuple[dict[str, str], str]:
    """Options ``-o NAME``/``--output NAME`` and ``--lake NAME`` at the start of the line; the rest is SQL."""
    tokens = shlex.split(line, posix=True) if has_cell else line.split()
    options: dict[str, str] = {}
    consumed = 0
    while consumed < len(tokens) and tokens[consumed] in ("-o", "--output", "--lake"):
        if consumed + 1 >= len(tokens) or not _IDENT.fullmatch(tokens[consumed + 1]):
            raise InvalidArgumentError(f"%lake_sql option {tokens[consumed]} needs a variable name")
        key = "lake" if tokens[consumed] == "--lake" else "output"
        options[key] = tokens[consumed + 1]
        consumed += 2
    if has_cell and consumed < len(tokens):
        raise InvalidArgumentError(f"%%lake_sql takes only -o NAME and --lake NAME on its first line, got {line!r}")
    rest = line
    for _ in range(consumed):
        rest = rest.lstrip().split(None, 1)[1] if len(rest.split(None, 1)) > 1 else ""
    return options, rest


def _magic_lake(name: str | None, namespace: dict[str, Any]) -> Lake:
    if name is not None:
        candidate = namespace.get(name)
        if not isinstance(candidate, Lake):
            raise InvalidArgumentError(f"--lake {name}: the notebook variable {name!r} is not a Lake")
        return candidate
    if "lake" in _state:
        return _state["lake"]
    lakes = [v for v in namespace.values() if isinstance(v, Lake)]
    if len(lakes) == 1:
        return lakes[0]
    raise InvalidArgumentError(
        "%lake_sql does not know which lake to query: call es_analytics.notebook.setup(lake) or pass --lake NAME"
    )
