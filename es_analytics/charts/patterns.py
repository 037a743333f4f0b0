"""One chart per pattern analysis: a result of ``es_analytics.patterns`` in, an Altair chart out.

Each function reads only the result's small, already aggregated DataFrames, adds tooltips, labelled axes
and a title, and finishes with the es_analytics look (:func:`._theme.finish`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import altair as alt
import polars as pl

from ..errors import InvalidArgumentError
from ._theme import ACCENT, MAX_ROWS, NEGATIVE, NEUTRAL, POSITIVE, SEQUENTIAL_SCHEME, WIDTH, check_rows, finish, lean

if TYPE_CHECKING:
    from ..patterns import (
        AnomalyResult,
        CohortResult,
        FunnelResult,
        HeatmapResult,
        LatencyResult,
        MixResult,
        PatternResult,
        TopResult,
        TrendResult,
    )

__all__ = [
    "anomalies",
    "cohorts",
    "daily",
    "format_duration",
    "funnel",
    "heatmap",
    "hourly",
    "latency",
    "mix",
    "overview",
    "top",
    "trend",
]


def format_duration(seconds: float | None) -> str:
    """A duration in the largest unit that keeps it readable.

    Examples
    --------
    >>> [format_duration(s) for s in (42, 5400, 3 * 86400 + 7200, None)]
    ['42 s', '1.5 h', '3.1 days', '–']
    """
    if seconds is None:
        return "–"
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _what(event_type: str | tuple[str, ...] | None) -> str:
    if event_type is None:
        return "All events"
    return event_type if isinstance(event_type, str) else " + ".join(event_type)


def _span(start: datetime, end: datetime, tz: str) -> str:
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC · local time {tz}"


# -- analyze ------------------------------------------------------------------------------------
def hourly(result: PatternResult) -> Any:
    """Bars of events per local hour of day; the busiest hour stands out.

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> from es_analytics.patterns import PatternResult
    >>> at = datetime(2025, 1, 1, tzinfo=timezone.utc)
    >>> result = PatternResult("MoneyDeposited", at, at, "UTC", None, 3,
    ...     pl.DataFrame({"hour": range(24), "count": [0] * 9 + [3] + [0] * 14}),
    ...     pl.DataFrame({"date": [at.date()], "count": [3]}), 3.0, 3.0)
    >>> spec = hourly(result).to_dict()
    >>> spec["mark"]["type"], spec["encoding"]["x"]["field"], spec["encoding"]["y"]["field"]
    ('bar', 'hour', 'count')
    """
    frame = check_rows(result.hourly, "charts.hourly", required=("hour", "count"))
    total = max(result.total_events, 1)
    data = frame.with_columns(
        (pl.col("count") / total).alias("share"),
        pl.format("{}:00–{}:59", pl.col("hour").cast(pl.String).str.zfill(2),
                  pl.col("hour").cast(pl.String).str.zfill(2)).alias("hours"),
        (pl.col("hour") == result.peak_hour if result.peak_hour is not None else pl.lit(False)).alias("peak"),
    )
    chart = alt.Chart(data).mark_bar().encode(
        x=alt.X("hour:O", title=f"Hour of day ({result.tz})", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("count:Q", title="Events"),
        color=alt.condition("datum.peak", alt.value(ACCENT), alt.value(NEUTRAL)),
        tooltip=[alt.Tooltip("hours:N", title="Hours"), alt.Tooltip("count:Q", title="Events", format=","),
                 alt.Tooltip("share:Q", title="Share", format=".1%")],
    )
    return finish(chart, title=f"{_what(result.event_type)} by hour of day",
                  subtitle=f"{result.total_events:,} events · {_span(result.start, result.end, result.tz)}")


ANOMALY_PANELS = 8  # event types drawn by charts.anomalies at most (one panel each)
# Days per bar of the daily chart by the window's length, and the axis labels that fit that span.
_GRAINS = ((400, "day", "%b %d"), (2_000, "week", "%b %Y"), (float("inf"), "month", "%Y"))


def daily(result: PatternResult) -> Any:
    """Events per local calendar day (days without events at 0) with the average per day as a rule.

    Over more than 400 days the counts are summed per week (Monday), over more than 2,000 per month, and
    the axis is labelled by month or year, so a window of any length draws one readable chart.
    """
    if not isinstance(result.daily, pl.DataFrame) or "date" not in result.daily.columns:
        check_rows(result.daily, "charts.daily", required=("date", "count"))
    days = result.daily.height
    limit, grain, label = next(g for g in _GRAINS if days <= g[0])
    frame = result.daily if grain == "day" else result.daily.group_by(
        pl.col("date").dt.truncate("1w" if grain == "week" else "1mo")).agg(pl.col("count").sum()).sort("date")
    frame = check_rows(frame, "charts.daily", required=("date", "count"))
    data = lean(frame, "date", "count")
    per = {"day": "Day", "week": "Week from", "month": "Month"}[grain]
    tooltip = [alt.Tooltip("date:T", title=per, format="%Y-%m-%d"),
               alt.Tooltip("count:Q", title="Events", format=",")]
    if grain == "day":
        tooltip.insert(1, alt.Tooltip("date:T", title="Weekday", format="%A"))
    base = alt.Chart(data).encode(
        x=alt.X("date:T", title=per if grain != "week" else "Week", axis=alt.Axis(format=label, labelAngle=0)))
    line = base.mark_area(line={"color": ACCENT}).encode(y=alt.Y("count:Q", title=f"Events per {grain}"),
                                                          tooltip=tooltip)
    # Invisible points give every day its tooltip (the static SVG leaves them out).
    # Drag to move along the days, scroll to zoom in on a time range (where the viewer runs Vega).
    points = base.mark_point(opacity=0, size=60).encode(y="count:Q", tooltip=tooltip).add_params(
        alt.selection_interval(name="days", bind="scales", encodings=["x"]))
    layers = [line, points]
    if grain == "day":  # the average per calendar day is a level only on a chart of days
        layers.append(alt.Chart(pl.DataFrame({"average": [result.average_per_calendar_day]})).mark_rule(
            strokeDash=[4, 4]).encode(y="average:Q", tooltip=[alt.Tooltip("average:Q", title="Average per calendar day",
                                                                              format=".2f")]))
    return finish(
        alt.layer(*layers), title=f"{_what(result.event_type)} per {grain}",
        subtitle=(f"average {result.average_per_calendar_day:.2f} per calendar day{' (dashed)' if grain == 'day' else ''}, "
                  f"{result.average_per_day:.2f} per active day · {result.active_days} of "
                  f"{result.days} days had events · {result.tz}"),
    )


def overview(result: PatternResult) -> Any:
    """The hourly and the daily chart of one result, stacked."""
    parts = [hourly(result), daily(result)]
    config = parts[0].config
    for part in parts:
        part.config = alt.Undefined
    return alt.vconcat(*parts, spacing=24).configure(**config.to_dict())


# -- heatmap ------------------------------------------------------------------------------------
def heatmap(result: HeatmapResult, *, value: str = "average") -> Any:
    """Weekday × hour heatmap; ``value`` is ``"average"`` (events per such day and hour) or ``"count"``."""
    if value not in ("average", "count"):
        raise InvalidArgumentError(f"value must be 'average' or 'count', got {value!r}")
    data = check_rows(result.cells, "charts.heatmap", required=("weekday", "day_name", "hour", "count"))
    data = lean(data, "weekday", "day_name", "hour", "count", "average")
    title = "Average events per day" if value == "average" else "Events"
    chart = alt.Chart(data).mark_rect().encode(
        x=alt.X("hour:O", title=f"Hour of day ({result.tz})", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("day_name:O", title=None, sort=alt.EncodingSortField("weekday", op="min", order="ascending")),
        color=alt.Color(f"{value}:Q", title=title, scale=alt.Scale(scheme=SEQUENTIAL_SCHEME)),
        tooltip=[alt.Tooltip("day_name:N", title="Weekday"), alt.Tooltip("hour:O", title="Hour"),
                 alt.Tooltip("count:Q", title="Events", format=","),
                 alt.Tooltip("average:Q", title="Per such day", format=".2f")],
    )
    return finish(chart, title=f"{_what(result.event_type)}: weekday × hour",
                  subtitle=f"local time {result.tz}", height=220)


# -- trend --------------------------------------------------------------------------------------
def trend(result: TrendResult) -> Any:
    """Daily counts with the rolling mean on top, and week-over-week change below."""
    days = check_rows(result.daily, "charts.trend", required=("date", "count", "rolling_mean"))
    weeks = check_rows(result.weekly, "charts.trend", required=("week", "count", "change", "complete"))
    days = lean(days, "date", "count", "rolling_mean")
    x = alt.X("date:T", title=None, axis=alt.Axis(format="%b %d", labelAngle=0))
    tooltip = [alt.Tooltip("date:T", format="%Y-%m-%d", title="Day"), alt.Tooltip("count:Q", title="Events"),
               alt.Tooltip("rolling_mean:Q", title=f"{result.window}-day mean", format=".1f")]
    # Daily counts as an area (one shape, not hundreds of bars that overlap on a long window); invisible
    # points give every day its tooltip.
    counts = alt.Chart(days).mark_area(color=NEUTRAL, opacity=0.5).encode(
        x=x, y=alt.Y("count:Q", title="Events per day"), tooltip=tooltip)
    line = alt.Chart(days).mark_line(color=ACCENT).encode(x=x, y="rolling_mean:Q", tooltip=tooltip)
    points = alt.Chart(days).mark_point(opacity=0, size=60).encode(x=x, y="count:Q", tooltip=tooltip)
    top = alt.layer(counts, line, points).properties(width=WIDTH, height=220,
                                          title=f"Daily events and {result.window}-day rolling mean")
    shade = (pl.when(~pl.col("complete")).then(pl.lit("partial week"))
             .when(pl.col("change").fill_null(0) >= 0).then(pl.lit("up")).otherwise(pl.lit("down")))
    weeks = lean(weeks.with_columns(shade.alias("direction")), "week", "days", "count", "change", "change_pct",
                 "direction")
    change = alt.Chart(weeks).mark_bar().encode(
        x=alt.X("week:T", title=f"Week starting Monday ({result.tz})", axis=alt.Axis(format="%b %d")),
        y=alt.Y("change:Q", title="Change vs previous week"),
        color=alt.Color("direction:N", title=None, legend=alt.Legend(orient="top"),
                        scale=alt.Scale(domain=["up", "down", "partial week"], range=[POSITIVE, NEGATIVE, NEUTRAL])),
        tooltip=[alt.Tooltip("week:T", format="%Y-%m-%d", title="Week of"),
                 alt.Tooltip("days:Q", title="Days in window"),
                 alt.Tooltip("count:Q", title="Events", format=","),
                 alt.Tooltip("change:Q", title="Change", format="+,"),
                 alt.Tooltip("change_pct:Q", title="Change %", format="+.1f")],
    ).properties(width=WIDTH, height=140, title="Week-over-week change")
    return finish(alt.vconcat(top, change), title=f"{_what(result.event_type)}: trend", width=None, height=None)


# -- anomalies ----------------------------------------------------------------------------------
def anomalies(result: AnomalyResult, *, event_type: str | list[str] | None = None) -> Any:
    """Daily counts per event type (one row of panels each) with anomalous days marked."""
    data = result.daily
    if event_type is not None:
        wanted = [event_type] if isinstance(event_type, str) else list(event_type)
        data = data.filter(pl.col("event_type").is_in(wanted))
        if data.is_empty():
            raise InvalidArgumentError(f"no daily counts for event_type {event_type!r} in this result")
    if not isinstance(data, pl.DataFrame) or "event_type" not in data.columns or "anomaly" not in data.columns:
        check_rows(data, "charts.anomalies", required=("event_type", "date", "count", "robust_z", "anomaly"))
    days = max(1, data["date"].n_unique())
    shown = max(1, min(ANOMALY_PANELS, MAX_ROWS // days))
    ranked = (data.group_by("event_type").agg(pl.col("anomaly").sum().alias("n"), pl.col("count").sum().alias("c"))
              .sort(["n", "c", "event_type"], descending=[True, True, False]))
    if ranked.height > shown:  # the types with the most anomalous days, so the chart stays a readable size
        data = data.filter(pl.col("event_type").is_in(ranked["event_type"].head(shown).to_list()))
    data = check_rows(data, "charts.anomalies", required=("event_type", "date", "count", "robust_z", "anomaly"))
    data = lean(data, "event_type", "date", "count", "median", "robust_z", "anomaly", decimals=2)
    tooltip = [alt.Tooltip("event_type:N", title="Event type"), alt.Tooltip("date:T", format="%Y-%m-%d", title="Day"),
               alt.Tooltip("count:Q", title="Events"), alt.Tooltip("median:Q", title="Median day"),
               alt.Tooltip("robust_z:Q", title="Robust z", format=".1f")]
    base = alt.Chart(data).encode(x=alt.X("date:T", title=None, axis=alt.Axis(format="%b %d", labelAngle=0)))
    line = base.mark_line(color=NEUTRAL, strokeWidth=1.5).encode(y=alt.Y("count:Q", title="Events per day"),
                                                                 tooltip=tooltip)
    marks = base.mark_point(color=NEGATIVE, size=60).encode(y="count:Q", tooltip=tooltip).transform_filter(
        "datum.anomaly")
    chart = alt.layer(line, marks).properties(width=WIDTH, height=110).facet(
        row=alt.Row("event_type:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left")),
    ).resolve_scale(y="independent")
    flagged = int(data["anomaly"].sum())
    more = f" · the {min(shown, ranked.height)} of {ranked.height} event types with the most" if ranked.height > shown else ""
    return finish(chart, title="Anomalous days", width=None, height=None,
                  subtitle=f"{flagged} days with |robust z| ≥ {result.threshold:g} (red){more} · local time {result.tz}")


# -- latency ------------------------------------------------------------------------------------
def latency(result: LatencyResult) -> Any:
    """Histogram of the latency per aggregate in human-sized buckets, percentiles in the subtitle."""
    data = check_rows(result.histogram, "charts.latency", required=("bucket", "order", "aggregates"))
    data = data.with_columns((pl.col("aggregates") / max(result.converted, 1)).alias("share"))
    chart = alt.Chart(data).mark_bar().encode(
        x=alt.X("bucket:N", title="Time to the next step", sort=alt.EncodingSortField("order", op="min"),
                axis=alt.Axis(labelAngle=-30)),
        y=alt.Y("aggregates:Q", title="Aggregates"),
        tooltip=[alt.Tooltip("bucket:N", title="Latency"), alt.Tooltip("aggregates:Q", title="Aggregates", format=","),
                 alt.Tooltip("share:Q", title="Share", format=".1%")],
    )
    marks = ", ".join(f"p{p:g} {format_duration(s)}" for p, s in result.percentiles.iter_rows())
    return finish(chart, title=f"{result.from_type} → {result.to_type}",
                  subtitle=f"{result.converted:,} of {result.started:,} aggregates ({result.conversion:.1%}) · {marks}")


# -- funnel -------------------------------------------------------------------------------------
def funnel(result: FunnelResult) -> Any:
    """Horizontal bars per funnel step, labelled with the share of step 1 that got there."""
    data = check_rows(result.steps, "charts.funnel", required=("step", "event_type", "aggregates", "conversion"))
    data = data.with_columns(
        pl.format("{}. {}", pl.col("step"), pl.col("event_type")).alias("label"),
        pl.col("median_seconds").map_elements(format_duration, return_dtype=pl.String, skip_nulls=False)
        .alias("median_time"),
    )
    base = alt.Chart(data).encode(y=alt.Y("label:N", title=None, sort=alt.EncodingSortField("step", op="min")))
    bars = base.mark_bar().encode(
        x=alt.X("aggregates:Q", title="Aggregates"),
        tooltip=[alt.Tooltip("label:N", title="Step"), alt.Tooltip("aggregates:Q", title="Aggregates", format=","),
                 alt.Tooltip("conversion:Q", title="Of step 1", format=".1%"),
                 alt.Tooltip("step_conversion:Q", title="Of previous step", format=".1%"),
                 alt.Tooltip("median_time:N", title="Median time from previous")],
    )
    labels = base.mark_text(align="left", dx=4).encode(x="aggregates:Q", text=alt.Text("conversion:Q", format=".1%"))
    within = f" within {result.within}" if result.within is not None else ""
    return finish(alt.layer(bars, labels), title="Funnel", height=40 * data.height,
                  subtitle=f"aggregates reaching each step in stream order{within}")


# -- cohorts ------------------------------------------------------------------------------------
def cohorts(result: CohortResult) -> Any:
    """Cohort retention triangle: cohort month × months since, coloured and labelled by retention."""
    data = check_rows(result.table, "charts.cohorts", required=("cohort", "month", "cohort_size", "retention"))
    data = lean(data.with_columns(pl.col("cohort").dt.strftime("%Y-%m").alias("cohort_month")),
                "cohort_month", "month", "cohort_size", "active", "retention")
    base = alt.Chart(data).encode(
        x=alt.X("month:O", title="Months since first event", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("cohort_month:O", title="Cohort"),
    )
    tooltip = [alt.Tooltip("cohort_month:N", title="Cohort"), alt.Tooltip("month:O", title="Month"),
               alt.Tooltip("cohort_size:Q", title="Cohort size", format=","),
               alt.Tooltip("active:Q", title="Active", format=","),
               alt.Tooltip("retention:Q", title="Retention", format=".0%")]
    rect = base.mark_rect().encode(
        color=alt.Color("retention:Q", title="Retention", scale=alt.Scale(scheme=SEQUENTIAL_SCHEME, domain=[0, 1]),
                        legend=alt.Legend(format=".0%")),
        tooltip=tooltip)
    text = base.mark_text(fontSize=9).encode(
        text=alt.Text("retention:Q", format=".0%"),
        color=alt.condition("datum.retention > 0.6", alt.value("white"), alt.value("#1f2933")),
        tooltip=tooltip)
    rows = max(data["cohort_month"].n_unique(), 1)
    return finish(alt.layer(rect, text), title="Monthly cohort retention", height=22 * rows,
                  subtitle=f"share of each cohort active in later months · local time {result.tz}")


# -- mix ----------------------------------------------------------------------------------------
def mix(result: MixResult, *, normalize: bool = True) -> Any:
    """The mix of event types per period, as shares (``normalize=True``) or counts.

    Months and weeks are stacked bars (one per period); days are a stacked area.
    """
    data = check_rows(result.table, "charts.mix", required=("period", "event_type", "count", "share"))
    types = data["event_type"].n_unique()
    label = "%b %Y" if result.grain == "month" else "%d %b"
    data = data.with_columns(pl.col("period").dt.strftime(label).alias("label"))
    title = f"{result.grain.capitalize()} ({result.tz})" + (", starting Monday" if result.grain == "week" else "")
    if result.grain == "day":
        x = alt.X("period:T", title=title, axis=alt.Axis(format="%b %d", labelAngle=0))
        base = alt.Chart(data).mark_area()
    else:
        x = alt.X("label:O", title=title, sort=alt.EncodingSortField("period", op="min"),
                  axis=alt.Axis(labelAngle=0 if result.grain == "month" else -45))
        base = alt.Chart(data).mark_bar()
    picked = alt.selection_point(name="picked", fields=["event_type"], bind="legend")
    chart = base.add_params(picked).encode(
        x=x,
        y=alt.Y("count:Q", title="Share of events" if normalize else "Events",
                stack="normalize" if normalize else "zero", axis=alt.Axis(format=".0%" if normalize else ",")),
        # Ten distinct colours up to ten types, twenty beyond (not eight repeated); a long legend in columns.
        color=alt.Color("event_type:N", title="Event type",
                        scale=alt.Scale(scheme="tableau10") if types <= 10 else alt.Scale(scheme="category20"),
                        legend=alt.Legend(columns=1 if types <= 14 else 2, labelLimit=180, symbolLimit=0)),
        order=alt.Order("event_type:N"),
        # Click an event type in the legend to pick it out (shift-click for more, double-click for all).
        opacity=alt.condition(picked, alt.value(1.0), alt.value(0.25)),
        tooltip=[alt.Tooltip("period:T", title=result.grain.capitalize(), format="%Y-%m-%d"),
                 alt.Tooltip("event_type:N", title="Event type"), alt.Tooltip("count:Q", title="Events", format=","),
                 alt.Tooltip("share:Q", title="Share", format=".1%")],
    )
    return finish(chart, title="Event-type mix over time", subtitle=f"per {result.grain}")


# -- top ------------------------------------------------------------------------------------------
def top(result: TopResult) -> Any:
    """Horizontal bars of the most frequent values of a metadata key."""
    data = check_rows(result.table, "charts.top", required=("value", "events"))
    base = alt.Chart(data).encode(y=alt.Y("value:N", title=result.key, sort="-x"))
    bars = base.mark_bar().encode(
        x=alt.X("events:Q", title="Events"),
        tooltip=[alt.Tooltip("value:N", title=result.key), alt.Tooltip("events:Q", title="Events", format=","),
                 alt.Tooltip("share:Q", title="Share", format=".1%"),
                 alt.Tooltip("aggregates:Q", title="Aggregates", format=","),
                 alt.Tooltip("event_types:Q", title="Event types"),
                 alt.Tooltip("first_at:T", title="First", format="%Y-%m-%d %H:%M"),
                 alt.Tooltip("last_at:T", title="Last", format="%Y-%m-%d %H:%M")],
    )
    return finish(bars, title=f"Top {result.key} values", height=max(22 * data.height, 60),
                  subtitle=f"of {result.events_with_key:,} events that carry {result.key}")
