"""How charts reach a notebook: an Altair renderer every viewer shows, and a data transformer for every frame.

- The renderer ``"es_analytics"`` (:func:`mimebundle`) turns a chart into a mime bundle with a **Vega v5
  spec** (``application/vnd.vega.v5+json``, compiled from the Vega-Lite spec by vl-convert), which JupyterLab's
  built-in Vega extension draws interactively (tooltips), trusted or not, after a reload too; an **SVG**
  (``image/svg+xml``, also rendered by vl-convert) for viewers that cannot run Vega (nbviewer, GitHub, the
  HTML export); and ``text/plain``. No JavaScript is inside the output, so every chart of a page draws, and
  an output weighs what its data and marks weigh (a few KB for aggregated data).
- The data transformer ``"es_analytics"`` (:func:`chart_values`) makes every frame es_analytics returns
  chartable as it is: ``Decimal`` money becomes a float, a ``Duration`` its seconds as a float, a time of day
  its ISO text, **in the chart's copy only** (the frame keeps its exact values). Then Altair's default
  transformer applies, with its limit of 5,000 rows.

``es_analytics.notebook.setup()`` registers and enables both; :func:`enable` does the same without a notebook.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any, Final

import polars as pl

__all__ = [
    "DATA_TRANSFORMER_NAME",
    "RENDERER_NAME",
    "VEGA_MIME",
    "chart_frame",
    "chart_values",
    "enable",
    "mimebundle",
    "register_data_transformer",
    "register_renderer",
]

RENDERER_NAME: Final = "es_analytics"
DATA_TRANSFORMER_NAME: Final = "es_analytics"
VEGA_MIME: Final = "application/vnd.vega.v5+json"
SVG_MIME: Final = "image/svg+xml"
#: The Vega-Lite version vl-convert compiles with: the last of v5, whose Vega output is the Vega 5 that
#: JupyterLab's Vega extension runs (Vega-Lite 6 compiles to Vega 6). A spec only Vega-Lite 6 compiles falls
#: back to it.
COMPILE_WITH: Final = "5.21"
#: vega-embed options for JupyterLab: SVG marks (crisp text, searchable), no "..." action menu.
EMBED_OPTIONS: Final[dict[str, Any]] = {"renderer": "svg", "actions": False}
_MAX_ROWS: Final = 5_000
_COLUMNAR_FROM: Final = 20


def mimebundle(spec: dict[str, Any], **metadata: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Altair renderer ``"es_analytics"``: a Vega v5 spec, an SVG and a text line for one chart.

    Examples
    --------
    >>> import altair as alt, polars as pl
    >>> chart = alt.Chart(pl.DataFrame({"a": [1, 2]})).mark_bar().encode(x="a:O", y="a:Q")
    >>> bundle, meta = mimebundle(chart.to_dict())
    >>> sorted(bundle), bundle[VEGA_MIME]["$schema"]
    (['application/vnd.vega.v5+json', 'image/svg+xml', 'text/plain'], 'https://vega.github.io/schema/vega/v5.json')
    >>> bundle["image/svg+xml"].startswith("<svg") and "<script" not in bundle["image/svg+xml"]
    True
    """
    import vl_convert as vlc

    vega = _compile(spec)
    vega["$schema"] = "https://vega.github.io/schema/vega/v5.json"
    vega["data"] = [_columnar(entry) for entry in vega.get("data", [])]
    svg = static_svg(spec)
    title = spec.get("title")
    text = title.get("text") if isinstance(title, dict) else title
    label = f"<es_analytics chart: {text}>" if isinstance(text, str) else "<es_analytics chart>"
    embed = {**EMBED_OPTIONS, **metadata.get("embed_options", {})}
    return ({VEGA_MIME: vega, SVG_MIME: svg, "text/plain": label},
            {VEGA_MIME: {"embed_options": embed}})


def _compile(spec: dict[str, Any]) -> dict[str, Any]:
    """The Vega spec of a Vega-Lite spec, by Vega-Lite :data:`COMPILE_WITH` (else the newest vl-convert has)."""
    import vl_convert as vlc

    try:
        vega: dict[str, Any] = vlc.vegalite_to_vega(spec, vl_version=COMPILE_WITH)
    except ValueError:
        vega = vlc.vegalite_to_vega(spec)
    return vega


def _columnar(entry: dict[str, Any]) -> dict[str, Any]:
    """An inline data set as one datum of parallel columns, zipped back into rows by Vega's ``flatten``.

    Rows repeat every field name in every row; columns name each field once. A text column of few distinct
    values is sent as indices into its values, a text column whose values share a start or an end (dates at
    midnight) without it; Vega formulas restore both before any other transform reads the rows. A year of
    daily counts of two event types: 14 KB instead of 41 KB. Only plain inline sets of flat rows with one set
    of fields are rewritten.
    """
    rows = entry.get("values")
    if entry.get("format") == {}:
        entry = {k: v for k, v in entry.items() if k != "format"}
    if set(entry) != {"name", "values"} or not isinstance(rows, list) or len(rows) < _COLUMNAR_FROM:
        return entry
    if not all(isinstance(row, dict) for row in rows):
        return entry
    fields = list(rows[0])
    if not fields or any(list(row) != fields for row in rows):
        return entry
    if any(isinstance(value, (list, dict)) for row in rows for value in row.values()):
        return entry
    columns: dict[str, list[Any]] = {}
    restore: list[dict[str, Any]] = []
    for field in fields:
        values = [row[field] for row in rows]
        if all(isinstance(v, str) for v in values):
            values, expr = _compact_text(values, f"datum[{json.dumps(field)}]")
            if expr is not None:
                restore.append({"type": "formula", "expr": expr, "as": field})
        columns[field] = values
    return {"name": entry["name"], "values": [columns],
            "transform": [{"type": "flatten", "fields": fields, "as": fields}, *restore]}


def _compact_text(values: list[str], ref: str) -> tuple[list[Any], str | None]:
    """``values`` in fewer bytes, and the Vega expression that gives each original back from ``ref``."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) <= len(values) // 4:
        index = {v: i for i, v in enumerate(distinct)}
        return [index[v] for v in values], f"{json.dumps(distinct)}[{ref}]"
    prefix = os.path.commonprefix(values)
    suffix = os.path.commonprefix([v[::-1] for v in values])[::-1]
    if len(prefix) + len(suffix) < 3 or any(len(v) < len(prefix) + len(suffix) for v in values):
        return values, None
    cut = [v[len(prefix):len(v) - len(suffix)] for v in values]
    return cut, f"{json.dumps(prefix)} + {ref} + {json.dumps(suffix)}"


def static_svg(spec: dict[str, Any]) -> str:
    """The chart as a lean static SVG: no ARIA labels or roles (an image has no marks to explore, the chart's
    title and axis texts are there to read), no invisible or empty marks, coordinates to 0.1 px, one font.

    The SVG of a year of daily points is about half the size of vl-convert's default output. It is drawn from
    the Vega spec of the same compiler as the interactive chart, so both look alike.
    """
    import vl_convert as vlc

    lean = {**spec, "config": {**spec.get("config", {}), "aria": False}}
    svg = str(vlc.vega_to_svg(_compile(lean)))
    svg = _INVISIBLE.sub("", svg)
    svg = _INERT.sub("", svg)
    svg = _RGB.sub(lambda m: "#" + "".join(f"{int(c):02x}" for c in m.groups()), svg)
    svg = _GEOMETRY.sub(lambda m: m.group(1) + _DECIMALS.sub(_round, m.group(2)) + '"', svg)
    fonts = set(_FONT.findall(svg))
    if len(fonts) == 1 and svg.startswith("<svg "):  # one font for every text: say it once, on the root
        font = fonts.pop()
        svg = "<svg " + f'font-family="{font}" ' + _FONT.sub("", svg[5:])
    return svg


def _round(match: re.Match[str]) -> str:
    text = f"{float(match.group(0)):.1f}"
    return text[:-2] if text.endswith(".0") else text


_FONT = re.compile(r' font-family="([^"]*)"')
_INVISIBLE = re.compile(r'<(?:path|line|rect)\b[^>]*\s(?:opacity="0"|display="none"|d="(?:M0,0h0v0h0Z)?")[^>]*/>')
_RGB = re.compile(r"rgb\((\d{1,3}), ?(\d{1,3}), ?(\d{1,3})\)")
#: Attributes for readers and pointers of a live chart; a static image has neither.
_INERT = re.compile(r'\s(?:role|aria-roledescription|aria-hidden|pointer-events)="[^"]*"')
_GEOMETRY = re.compile(r'(\s(?:d|transform|points|x|y|x2|y2|width|height)=")([^"]*)"')
_DECIMALS = re.compile(r"-?\d+\.\d{2,}(?:e-?\d+)?")


def chart_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """A copy of ``frame`` whose columns Vega-Lite accepts: Decimal → Float64, Duration → seconds, Time → text.

    Examples
    --------
    >>> from decimal import Decimal
    >>> from datetime import timedelta
    >>> frame = pl.DataFrame({"balance": [Decimal("10.25")], "took": [timedelta(minutes=2)]})
    >>> chart_frame(frame).to_dicts(), frame["balance"].dtype
    ([{'balance': 10.25, 'took': 120.0}], Decimal(precision=38, scale=2))
    """
    changes: list[pl.Expr] = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Duration):
            changes.append((pl.col(name).dt.total_microseconds() / 1e6).alias(name))
        elif isinstance(dtype, pl.Time):
            changes.append(pl.col(name).dt.strftime("%H:%M:%S%.f").alias(name))
        elif isinstance(dtype, pl.Binary):
            changes.append(pl.col(name).bin.encode("hex").alias(name))
        else:
            target = _without_decimals(dtype)
            if target != dtype:
                changes.append(pl.col(name).cast(target).alias(name))
    return frame.with_columns(changes) if changes else frame


def _without_decimals(dtype: Any) -> Any:
    if isinstance(dtype, pl.Decimal):
        return pl.Float64
    if isinstance(dtype, (pl.List, pl.Array)):
        inner = _without_decimals(dtype.inner)
        return pl.List(inner) if inner != dtype.inner else dtype
    if isinstance(dtype, pl.Struct):
        fields = [pl.Field(f.name, _without_decimals(f.dtype)) for f in dtype.fields]
        return pl.Struct(fields) if fields != list(dtype.fields) else dtype
    return dtype


def chart_values(data: Any = None, max_rows: int | None = _MAX_ROWS) -> Any:
    """The Altair data transformer ``"es_analytics"``: :func:`chart_frame`, then Altair's default transformer."""
    from altair.utils.data import limit_rows, to_values

    def pipe(data: Any, /) -> Any:
        if isinstance(data, pl.DataFrame):
            data = chart_frame(data)
        return to_values(limit_rows(data, max_rows=max_rows))  # what Altair's "default" transformer does

    return pipe if data is None else pipe(data)


def register_renderer(*, enable: bool = False) -> str:
    """Register the renderer ``"es_analytics"`` (:func:`mimebundle`) with Altair; optionally enable it."""
    import altair as alt

    if RENDERER_NAME not in alt.renderers.names():
        alt.renderers.register(RENDERER_NAME, mimebundle)
    if enable:
        alt.renderers.enable(RENDERER_NAME)
    return RENDERER_NAME


def register_data_transformer(*, enable: bool = False) -> str:
    """Register the data transformer ``"es_analytics"`` (:func:`chart_values`); optionally enable it."""
    import altair as alt

    if DATA_TRANSFORMER_NAME not in alt.data_transformers.names():
        transformer: Callable[..., Any] = chart_values
        alt.data_transformers.register(DATA_TRANSFORMER_NAME, transformer)
    if enable:
        alt.data_transformers.enable(DATA_TRANSFORMER_NAME)
    return DATA_TRANSFORMER_NAME


def enable() -> None:
    """Register and enable the es_analytics renderer and data transformer (what ``notebook.setup()`` does)."""
    register_renderer(enable=True)
    register_data_transformer(enable=True)
