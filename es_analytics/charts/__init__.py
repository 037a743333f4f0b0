"""Altair charts of es_analytics results: a DataFrame (or a result object) in, an ``alt.Chart`` out.

Every chart has tooltips, labelled axes, a title and the one es_analytics look (``charts._theme``);
``daily`` (also in ``overview``) zooms and pans its time axis, and ``mix`` picks an event type from its legend.
Charts embed only aggregated data; the ``patterns`` functions aggregate in DuckDB first.

Saving works offline: :func:`save` writes ``.png``/``.svg``/``.pdf`` through vl-convert and ``.html`` with
Vega inlined; :func:`to_svg` returns the SVG text (for reports). In a notebook call
``es_analytics.notebook.setup()`` once: it enables the renderer and the data transformer of
:mod:`es_analytics.charts.display` (registered with Altair when this package is imported, as
``"es_analytics"``), so charts render offline in every viewer and every es_analytics frame is chartable.

This package imports polars, Altair and the error hierarchy only; nothing from the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from ..errors import InvalidArgumentError
from ._theme import THEME_CONFIG, THEME_NAME, register_theme
from .patterns import (
    anomalies,
    cohorts,
    daily,
    format_duration,
    funnel,
    heatmap,
    hourly,
    latency,
    mix,
    overview,
    top,
    trend,
)
from . import ordering  # noqa: E402,F401  charts.ordering.lateness / backwards / gaps
from . import process  # noqa: E402,F401  charts.process.process_map / variant_explorer / dotted_chart / ...
from . import display  # noqa: E402  the renderer and data transformer "es_analytics"

display.register_renderer()
display.register_data_transformer()

if TYPE_CHECKING:
    import os

    import altair as alt

__all__ = [
    "THEME_CONFIG",
    "THEME_NAME",
    "anomalies",
    "cohorts",
    "daily",
    "display",
    "format_duration",
    "funnel",
    "heatmap",
    "hourly",
    "latency",
    "mix",
    "overview",
    "register_theme",
    "save",
    "to_svg",
    "top",
    "trend",
]

_FORMATS = ("png", "svg", "pdf", "html", "json")


def save(chart: alt.TopLevelMixin, path: str | os.PathLike[str], *, scale: float = 2.0) -> Path:
    """Save ``chart`` to ``path`` offline; the format follows the suffix (png, svg, pdf, html, json).

    HTML files inline Vega, Vega-Lite and vega-embed (about 900 KB), so they open without a network.

    Raises
    ------
    InvalidArgumentError
        The suffix names no supported format.
    """
    target = Path(path)
    fmt = target.suffix.lower().lstrip(".")
    if fmt not in _FORMATS:
        raise InvalidArgumentError(f"cannot save a chart as {target.name!r}; use one of the suffixes {_FORMATS!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        chart.save(str(target), format="html", inline=True)
    elif fmt in ("png", "pdf"):
        chart.save(str(target), format=cast("Literal['png', 'pdf']", fmt), scale_factor=scale)
    else:
        chart.save(str(target), format=cast("Literal['svg', 'json']", fmt))
    return target


def to_svg(chart: alt.TopLevelMixin) -> str:
    """The chart rendered as SVG text, offline (for HTML reports that inline their charts)."""
    import vl_convert as vlc

    spec: dict[str, Any] = chart.to_dict()
    return str(vlc.vegalite_to_svg(spec))
