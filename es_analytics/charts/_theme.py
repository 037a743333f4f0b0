"""The one look of every es_analytics chart: palette, fonts, sizes, and the helpers that apply it.

Every chart function in ``es_analytics.charts`` (and in its sibling modules) builds its chart, then calls
:func:`finish` with a title; ``finish`` applies :data:`THEME_CONFIG` through ``configure`` so that the chart
carries its own look, whatever Altair theme the notebook has enabled. :func:`register_theme` also offers
the look as the Altair theme ``"es_analytics"`` for a user's own charts.

Data is checked with :func:`check_rows` before it goes into a chart: charts show aggregated data (Altair
refuses more than 5,000 inline rows by default), so aggregate in DuckDB first.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    import altair as alt

__all__ = [
    "ACCENT",
    "CATEGORY",
    "FONT",
    "HEIGHT",
    "MAX_ROWS",
    "NEGATIVE",
    "NEUTRAL",
    "POSITIVE",
    "SEQUENTIAL_SCHEME",
    "THEME_CONFIG",
    "THEME_NAME",
    "WIDTH",
    "check_rows",
    "finish",
    "lean",
    "register_theme",
    "theme_dict",
]

THEME_NAME: Final = "es_analytics"
FONT: Final = "Inter, 'Segoe UI', 'Helvetica Neue', Arial, sans-serif"
WIDTH: Final = 640
HEIGHT: Final = 260
MAX_ROWS: Final = 5_000

#: Categorical colours, in order (colour-blind friendly, Okabe-Ito based).
CATEGORY: Final = ["#2f6fb0", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#7f7f7f", "#f0e442"]
ACCENT: Final = CATEGORY[0]
POSITIVE: Final = "#009e73"
NEGATIVE: Final = "#d55e00"
NEUTRAL: Final = "#9aa5b1"
#: Vega scheme for counts on a sequential scale (heatmaps, retention).
SEQUENTIAL_SCHEME: Final = "blues"

_INK = "#1f2933"
_MUTED = "#52606d"
_GRID = "#e4e7eb"

THEME_CONFIG: Final[dict[str, Any]] = {
    "background": "#ffffff",
    "font": FONT,
    "padding": 8,
    "view": {"stroke": None, "continuousWidth": WIDTH, "continuousHeight": HEIGHT},
    "title": {"anchor": "start", "fontSize": 15, "fontWeight": 600, "color": _INK, "subtitleColor": _MUTED,
              "subtitleFontSize": 12, "offset": 10},
    "axis": {"labelColor": _MUTED, "titleColor": _MUTED, "labelFontSize": 11, "titleFontSize": 12,
             "titleFontWeight": 500, "gridColor": _GRID, "domainColor": _GRID, "tickColor": _GRID},
    "axisX": {"grid": False, "labelAngle": 0},
    "axisY": {"domain": False, "ticks": False},
    "legend": {"labelColor": _MUTED, "titleColor": _MUTED, "labelFontSize": 11, "titleFontSize": 12,
               "orient": "right"},
    "header": {"labelColor": _INK, "titleColor": _MUTED, "labelFontSize": 12},
    "range": {"category": CATEGORY, "heatmap": {"scheme": SEQUENTIAL_SCHEME},
              "ramp": {"scheme": SEQUENTIAL_SCHEME}},
    "bar": {"color": ACCENT},
    "line": {"color": ACCENT, "strokeWidth": 2},
    "point": {"color": ACCENT, "filled": True, "size": 40},
    "area": {"color": ACCENT, "opacity": 0.25},
    "rect": {"stroke": "#ffffff", "strokeWidth": 1},
    "rule": {"color": _MUTED},
    "text": {"color": _INK, "fontSize": 11},
}


def register_theme(*, enable: bool = False) -> str:
    """Register the es_analytics look as the Altair theme ``"es_analytics"`` (optionally enable it).

    Charts made by es_analytics carry the look already; this is for a user's own charts. As Altair documents
    for themes, the theme is ``{"config": THEME_CONFIG}``: a chart made while it is enabled has the look under
    its ``config``.

    Examples
    --------
    >>> register_theme()
    'es_analytics'
    >>> sorted(theme_dict()), theme_dict()["config"]["font"] == FONT
    (['config'], True)
    """
    import altair as alt

    if THEME_NAME not in alt.theme.names():
        alt.theme.register(THEME_NAME, enable=False)(theme_dict)
    if enable:
        alt.theme.enable(THEME_NAME)
    return THEME_NAME


def theme_dict() -> alt.theme.ThemeConfig:
    """The Altair theme ``"es_analytics"``: a fresh ``{"config": THEME_CONFIG}``."""
    return {"config": copy.deepcopy(THEME_CONFIG)}  # type: ignore[typeddict-item]


def check_rows(frame: pl.DataFrame, what: str, *, required: tuple[str, ...] = ()) -> pl.DataFrame:
    """Check that ``frame`` is a DataFrame with ``required`` columns and few enough rows for a chart.

    Raises
    ------
    InvalidArgumentError
        Not a polars DataFrame, a column is missing, or more than :data:`MAX_ROWS` rows (aggregate first).
    """
    if not isinstance(frame, pl.DataFrame):
        raise InvalidArgumentError(f"{what} needs a polars DataFrame, got {type(frame).__name__}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InvalidArgumentError(f"{what} needs the columns {missing!r}; the frame has {frame.columns!r}")
    if frame.height > MAX_ROWS:
        raise InvalidArgumentError(
            f"{what} got {frame.height:,} rows, more than a chart should embed ({MAX_ROWS:,}); "
            "aggregate first (the es_analytics.patterns functions do this in DuckDB)"
        )
    return frame


def lean(frame: pl.DataFrame, *columns: str, decimals: int = 4) -> pl.DataFrame:
    """Only the ``columns`` of ``frame`` a chart uses (those present), floats rounded to ``decimals``.

    A chart embeds its data twice in a notebook output (the Vega spec, and the SVG drawn from it): columns no
    encoding reads and 17-digit floats behind a ``.1f`` tooltip only make the output heavier.

    >>> lean(pl.DataFrame({"a": [1 / 3], "b": ["x"], "c": [1]}), "a", "c").to_dicts()
    [{'a': 0.3333, 'c': 1}]
    """
    keep = [c for c in columns if c in frame.columns]
    return frame.select(keep).with_columns(pl.col(pl.Float32, pl.Float64).round(decimals))


def finish(
    chart: alt.TopLevelMixin,
    *,
    title: str,
    subtitle: str | list[str] | None = None,
    width: int | str | None = WIDTH,
    height: int | None = HEIGHT,
) -> Any:
    """Give ``chart`` its title and size and apply the es_analytics look (the last step of every chart).

    ``width``/``height`` of ``None`` leave the size to the chart (e.g. for facets and concatenations).
    """
    import altair as alt

    params: dict[str, Any] = {"title": alt.TitleParams(title, subtitle=subtitle) if subtitle else title}
    if width is not None and not isinstance(chart, (alt.HConcatChart, alt.VConcatChart)):
        params["width"] = width
    if height is not None and not isinstance(chart, (alt.HConcatChart, alt.VConcatChart)):
        params["height"] = height
    return chart.properties(**params).configure(**copy.deepcopy(THEME_CONFIG))
