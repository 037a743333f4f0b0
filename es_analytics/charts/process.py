"""Charts of process analytics: results of ``es_analytics.process`` in, Altair charts out.

- :func:`process_map` — the directly-follows graph laid out left to right (an activity's column is its
  distance from the start activities), edge width by frequency, edge colour by median time;
- :func:`variant_explorer` — the most frequent variants as rows of activity steps, with their share;
- :func:`dotted_chart` — every event of the first cases as a dot: time across, case down, activity colour;
- :func:`performance_spectrum` — for the most frequent directly-follows pairs, one line per occurrence
  from the time of the first activity to the time of the second;
- :func:`case_durations` — the distribution of case durations in a unit chosen from the data.

The layout of the map is computed here (a breadth-first ranking and the edges' frequencies), so no
Graphviz binary is needed and the chart renders offline like every other.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import altair as alt
import polars as pl

from ..errors import InvalidArgumentError
from ._theme import ACCENT, NEUTRAL, WIDTH, check_rows, finish

__all__ = ["case_durations", "dotted_chart", "performance_spectrum", "process_map", "variant_explorer"]

_UNITS = (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0), ("seconds", 1.0))


def _unit(seconds: pl.Series) -> tuple[str, float]:
    """The largest unit in which the median value is at least 1."""
    middle = seconds.drop_nulls().median()
    for name, size in _UNITS:
        if middle is not None and float(middle) >= size:  # type: ignore[arg-type]
            return name, size
    return "seconds", 1.0


def _colour(activities: int) -> alt.Scale:
    """Ten distinct colours up to ten activities, twenty beyond (never eight colours repeated)."""
    return alt.Scale(scheme="tableau10") if activities <= 10 else alt.Scale(scheme="category20")


def _layout(graph: pl.DataFrame, starts: list[str]) -> pl.DataFrame:
    """Columns by breadth-first distance from the start activities (most frequent edges first), rows by
    frequency inside a column: ``activity, column, row, frequency``."""
    edges = graph.sort("frequency", descending=True)
    following: dict[str, list[str]] = {}
    weight: dict[str, int] = {}
    for source, target, frequency in edges.select("source", "target", "frequency").iter_rows():
        following.setdefault(source, []).append(target)
        weight[target] = weight.get(target, 0) + frequency
        weight.setdefault(source, 0)
    nodes = set(weight)
    roots = [a for a in starts if a in nodes] or sorted(nodes - set(edges["target"].to_list())) or sorted(nodes)[:1]
    column = {root: 0 for root in roots}
    queue = deque(roots)
    while queue:
        node = queue.popleft()
        for target in following.get(node, []):
            if target not in column:
                column[target] = column[node] + 1
                queue.append(target)
    last = max(column.values(), default=0)
    for node in sorted(nodes - set(column)):
        column[node] = last + 1
    frame = pl.DataFrame({"activity": list(column), "column": list(column.values()),
                          "frequency": [weight.get(a, 0) for a in column]})
    return frame.with_columns(
        pl.col("frequency").rank("ordinal", descending=True).over("column").cast(pl.Int64).alias("row"))


def process_map(graph: pl.DataFrame, *, starts: pl.DataFrame | None = None, min_frequency: int = 1,
                title: str = "Process map") -> Any:
    """The directly-follows graph (``process.directly_follows``) as a map read left to right.

    ``starts`` (``process.start_activities``) anchors the first column; edges seen fewer than
    ``min_frequency`` times are left out. Self-loops show in the activity's tooltip.
    """
    check_rows(graph, "process_map", required=("source", "target", "frequency", "median_seconds"))
    graph = graph.filter(pl.col("frequency") >= min_frequency)
    if graph.height == 0:
        raise InvalidArgumentError("process_map: no edge is seen min_frequency times or more")
    first = [] if starts is None else check_rows(starts, "process_map starts", required=("activity",))["activity"].to_list()
    loops = graph.filter(pl.col("source") == pl.col("target")).select(
        pl.col("source").alias("activity"), pl.col("frequency").alias("repeats"))
    nodes = _layout(graph.filter(pl.col("source") != pl.col("target")), first).join(loops, on="activity", how="left")
    nodes = nodes.with_columns(pl.col("repeats").fill_null(0))
    unit, size = _unit(graph["median_seconds"])
    at = nodes.select("activity", "column", "row")
    edges = (
        graph.filter(pl.col("source") != pl.col("target"))
        .join(at.rename({"activity": "source", "column": "x", "row": "y"}), on="source")
        .join(at.rename({"activity": "target", "column": "x2", "row": "y2"}), on="target")
        .with_columns((pl.col("median_seconds") / size).round(2).alias(f"median_{unit}"))
        .select("source", "target", "frequency", f"median_{unit}", "x", "y", "x2", "y2")
    )
    x = alt.X("x:Q", axis=None, scale=alt.Scale(padding=60))
    y = alt.Y("y:Q", axis=None, scale=alt.Scale(reverse=True, padding=30))
    lines = alt.Chart(edges).mark_rule(opacity=0.75, strokeCap="round").encode(
        x=x, y=y, x2="x2:Q", y2="y2:Q",
        strokeWidth=alt.StrokeWidth("frequency:Q", scale=alt.Scale(range=[1, 10]), title="Frequency"),
        color=alt.Color(f"median_{unit}:Q", scale=alt.Scale(scheme="oranges"), title=f"Median {unit}"),
        tooltip=["source:N", "target:N", alt.Tooltip("frequency:Q", format=","),
                 alt.Tooltip(f"median_{unit}:Q", title=f"median ({unit})")],
    )
    dots = alt.Chart(nodes.rename({"column": "x", "row": "y"})).mark_circle(size=420, color=ACCENT, opacity=1).encode(
        x=x, y=y, tooltip=["activity:N", alt.Tooltip("frequency:Q", title="arrivals", format=","),
                           alt.Tooltip("repeats:Q", title="self-loops")])
    labels = alt.Chart(nodes.rename({"column": "x", "row": "y"})).mark_text(dy=-18, fontSize=11, limit=150).encode(
        x=x, y=y, text="activity:N")  # long names end in an ellipsis; the tooltip has them whole
    height = int(40 + 70 * max(1, int(nodes["row"].max())))  # type: ignore[arg-type]
    return finish(alt.layer(lines, dots, labels), title=title,
                  subtitle=f"{nodes.height} activities, {edges.height} edges; width = frequency, colour = median time",
                  width=max(WIDTH, 190 * (int(nodes["column"].max()) + 1)), height=min(height, 900))  # type: ignore[arg-type]


def variant_explorer(variants: pl.DataFrame, *, top: int = 12, title: str = "Variants") -> Any:
    """The ``top`` most frequent variants (``process.variants``): one row of activity steps each, the
    row label giving its case count and share."""
    check_rows(variants, "variant_explorer", required=("variant", "cases", "share"))
    shown = variants.sort("cases", descending=True).head(top).with_row_index("rank", offset=1)
    steps = shown.select(
        "rank", "cases", "share",
        pl.col("variant").list.eval(pl.element()).alias("activity"),
        pl.int_ranges(0, pl.col("variant").list.len()).alias("step"),
    ).explode("activity", "step").with_columns(
        pl.format("#{} · {} cases · {}%", "rank", "cases", (pl.col("share") * 100).round(1)).alias("label"))
    activities = steps["activity"].n_unique()
    chart = alt.Chart(steps).mark_rect(stroke="white", strokeWidth=2).encode(
        x=alt.X("step:O", title="Step"),
        y=alt.Y("label:N", title=None, sort=alt.SortField("rank")),
        color=alt.Color("activity:N", scale=_colour(activities), title="Activity"),
        tooltip=["label:N", alt.Tooltip("step:O"), "activity:N"],
    )
    return finish(chart, title=title, subtitle=f"the {shown.height} most frequent of {variants.height} variants",
                  height=28 * shown.height)


def dotted_chart(events: pl.DataFrame, *, title: str = "Dotted chart") -> Any:
    """Every event of ``process.events`` as a dot: time across, cases down in order of start."""
    check_rows(events, "dotted_chart", required=("case_id", "activity", "occurred_at", "case_start"))
    order = events.select("case_id", "case_start").unique().sort("case_start", "case_id")["case_id"].to_list()
    chart = alt.Chart(events.select("case_id", "activity", "occurred_at")).mark_circle(size=28, opacity=0.8).encode(
        x=alt.X("occurred_at:T", title="Time (UTC)"),
        y=alt.Y("case_id:N", sort=order, title=f"Case ({len(order)}, by start)", axis=alt.Axis(labels=len(order) <= 40)),
        color=alt.Color("activity:N", scale=_colour(events["activity"].n_unique()), title="Activity"),
        tooltip=["case_id:N", "activity:N", alt.Tooltip("occurred_at:T", format="%Y-%m-%d %H:%M")],
    )
    return finish(chart, title=title, height=min(900, max(200, 6 * len(order))))


def performance_spectrum(events: pl.DataFrame, *, pairs: int = 6, title: str = "Performance spectrum") -> Any:
    """For the ``pairs`` most frequent directly-follows pairs in ``process.events``: one line per
    occurrence, from when the first activity happened (top) to when the second did (bottom)."""
    check_rows(events, "performance_spectrum", required=("case_id", "activity", "occurred_at", "version"))
    steps = events.sort("case_id", "version").with_columns(
        pl.col("activity").shift(-1).over("case_id").alias("next"),
        pl.col("occurred_at").shift(-1).over("case_id").alias("next_at"),
    ).drop_nulls("next")
    steps = steps.with_columns(pl.format("{} → {}", "activity", "next").alias("pair"))
    top = steps.group_by("pair").len().sort(["len", "pair"], descending=[True, False]).head(pairs)["pair"].to_list()
    segments = steps.filter(pl.col("pair").is_in(top)).with_columns(
        ((pl.col("next_at") - pl.col("occurred_at")).dt.total_seconds()).alias("seconds"))
    check_rows(segments, "performance_spectrum segments")
    unit, size = _unit(segments["seconds"].cast(pl.Float64))
    segments = segments.select("pair", "case_id", "occurred_at", "next_at",
                               (pl.col("seconds") / size).round(2).alias(unit))
    base = alt.Chart(segments).encode(tooltip=["pair:N", "case_id:N", alt.Tooltip(f"{unit}:Q", title=unit)])
    lines = base.mark_rule(opacity=0.5).encode(
        x=alt.X("occurred_at:T", title="Time (UTC)"), x2="next_at:T",
        y=alt.value(0), y2=alt.value(60),
        color=alt.Color(f"{unit}:Q", scale=alt.Scale(scheme="oranges"), title=unit.capitalize()),
    )
    chart = lines.properties(height=60).facet(row=alt.Row("pair:N", title=None, sort=top,
                                                           header=alt.Header(labelAngle=0, labelAlign="left")))
    return finish(chart, title=title, subtitle="one line per occurrence: from the first activity to the second",
                  width=None, height=None)


def case_durations(cases: pl.DataFrame, *, bins: int = 30, title: str = "Case durations") -> Any:
    """The distribution of ``duration_seconds`` in ``process.cases``, in days, hours, minutes or seconds
    as the median calls for, with the median marked."""
    check_rows(cases, "case_durations", required=("duration_seconds",))
    unit, size = _unit(cases["duration_seconds"])
    values = cases.select((pl.col("duration_seconds") / size).alias(unit))
    median = float(values[unit].median() or 0.0)  # type: ignore[arg-type]
    bars = alt.Chart(values).mark_bar(color=ACCENT).encode(
        x=alt.X(f"{unit}:Q", bin=alt.Bin(maxbins=bins), title=f"Duration ({unit})"),
        y=alt.Y("count():Q", title="Cases"),
        tooltip=[alt.Tooltip(f"{unit}:Q", bin=True, title=unit), alt.Tooltip("count():Q", title="cases")],
    )
    rule = alt.Chart(pl.DataFrame({unit: [median]})).mark_rule(color=NEUTRAL, strokeDash=[4, 3]).encode(
        x=f"{unit}:Q")
    return finish(alt.layer(bars, rule), title=title,
                  subtitle=f"{cases.height:,} cases; median {median:.1f} {unit} (dashed)")
