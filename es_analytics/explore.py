"""``lake.explore(cls)``: every aggregate of a type as of a moment, with sliders for both clocks.

A notebook widget (ipywidgets, in the ``notebooks`` extra): one slider moves "as of" (business time) across
the span of the events' ``occurred_at``, a second moves "known at" (system time) across their
``recorded_at``. Each move runs ``lake.states(cls, as_of=..., known_at=...)`` (one DuckDB query) and updates
the table of states, a chart of how many aggregates are in each group (a text column such as ``status``) and
what they hold (the first numeric column, such as ``balance``), and a line with the counts and the query's
time.

Examples
--------
In a notebook::

    from es_analytics.examples.bank import BankAccount
    lake.explore(BankAccount)          # the last expression of a cell shows the widget
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .lake import Lake

__all__ = ["Explorer"]

_NUMERIC = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt32, pl.UInt64, pl.Float32, pl.Float64)


def _widgets() -> Any:
    try:
        import ipywidgets
    except ImportError as exc:  # the notebooks extra is not installed
        raise InvalidArgumentError("lake.explore needs ipywidgets: pip install 'es_analytics[notebooks]'") from exc
    return ipywidgets


def _moments(low: datetime, high: datetime, steps: int) -> list[datetime]:
    if high <= low:
        return [high]
    step = (high - low) / (steps - 1)
    return [low + step * i for i in range(steps - 1)] + [high]


class Explorer:
    """The widget behind :meth:`es_analytics.Lake.explore` (see the module docstring).

    ``as_of`` and ``known_at`` are the two sliders (their ``value`` is a datetime), ``frame`` the states
    shown, ``drawn`` the chart of them, ``seconds`` how long their query took.
    """

    def __init__(self, lake: Lake, aggregate_class: type, *, steps: int = 120, rows: int = 12) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise InvalidArgumentError(f"steps must be an int of at least 2, got {steps!r}")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise InvalidArgumentError(f"rows must be a positive int, got {rows!r}")
        widgets = _widgets()
        self.lake, self.aggregate_class, self.rows = lake, aggregate_class, rows
        from .temporal.states import aggregate_type_of

        span = lake.sql(
            "SELECT min(occurred_at) AS o0, max(occurred_at) AS o1, min(recorded_at) AS r0, max(recorded_at) AS r1 "
            "FROM events WHERE aggregate_type = ?", [aggregate_type_of(aggregate_class)]).row(0)
        if span[0] is None:
            raise InvalidArgumentError(f"the lake holds no {aggregate_class.__name__} events to explore")

        def slider(description: str, low: datetime, high: datetime) -> Any:
            options = [(moment.strftime("%Y-%m-%d %H:%M UTC"), moment) for moment in _moments(low, high, steps)]
            return widgets.SelectionSlider(options=options, value=options[-1][1], description=description,
                                           continuous_update=False, readout=True,
                                           layout=widgets.Layout(width="720px"),
                                           style={"description_width": "80px"})

        self.as_of = slider("as of", span[0], span[1])
        self.known_at = slider("known at", span[2], span[3])
        self.summary = widgets.HTML()
        self.table = widgets.HTML()
        self.chart = widgets.Output()
        self.frame = pl.DataFrame()
        self.drawn: Any = None  # the chart last drawn
        self.seconds = 0.0
        self.widget = widgets.VBox([self.as_of, self.known_at, self.summary,
                                    widgets.HBox([self.table, self.chart])])
        self.as_of.observe(self._moved, names="value")
        self.known_at.observe(self._moved, names="value")
        self.update()

    def _moved(self, change: Any) -> None:
        self.update()

    def update(self) -> pl.DataFrame:
        """Run the states query for the sliders' moments and redraw; returns the states."""
        started = time.perf_counter()
        frame = self.lake.states(self.aggregate_class, as_of=self.as_of.value, known_at=self.known_at.value)
        self.seconds = time.perf_counter() - started
        self.frame = frame
        group, value = _group_column(frame), _value_column(frame)
        shown = frame.sort(value, descending=True) if value else frame
        self.table.value = shown.head(self.rows)._repr_html_()
        self.summary.value = (
            f"<b>{frame.height:,}</b> {self.aggregate_class.__name__} as of <b>{self.as_of.label}</b>, "
            f"known at <b>{self.known_at.label}</b> &middot; query {self.seconds * 1000:.0f} ms")
        self.chart.clear_output(wait=True)
        self.drawn = self._chart(frame, group, value) if group is not None and frame.height else None
        if self.drawn is not None and _in_kernel():
            with self.chart:  # the widget shows it (Vega, interactive)
                from IPython.display import display

                display(self.drawn)  # type: ignore[no-untyped-call]
        return frame

    def _chart(self, frame: pl.DataFrame, group: str, value: str | None) -> Any:
        import altair as alt

        from .charts._theme import finish

        parts = [pl.len().alias("aggregates")]
        if value:
            parts.append(pl.col(value).cast(pl.Float64).sum().alias(value))
        data = frame.group_by(group).agg(parts).sort(group)
        tooltip = [alt.Tooltip(f"{group}:N"), alt.Tooltip("aggregates:Q", format=",")]
        if value:
            tooltip.append(alt.Tooltip(f"{value}:Q", format=",.2f", title=f"total {value}"))
        bars = alt.Chart(data).mark_bar().encode(
            y=alt.Y(f"{group}:N", title=group), x=alt.X("aggregates:Q", title="Aggregates"),
            color=alt.Color(f"{group}:N", legend=None), tooltip=tooltip)
        return finish(bars, title=f"{self.aggregate_class.__name__} by {group}", width=300, height=160)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)  # type: ignore[no-untyped-call]


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def _group_column(frame: pl.DataFrame) -> str | None:
    """The first text column with a few distinct values (a status), to group the chart by."""
    for name, dtype in frame.schema.items():
        if name != "aggregate_id" and dtype == pl.String and 0 < frame[name].n_unique() <= 20:
            return name
    return None


def _value_column(frame: pl.DataFrame) -> str | None:
    """The first numeric column that is not a version or count (a balance), to sum and sort by."""
    for name, dtype in frame.schema.items():
        if name in ("version", "aggregate_version", "position"):
            continue
        if dtype in _NUMERIC or isinstance(dtype, pl.Decimal):
            return name
    return None
