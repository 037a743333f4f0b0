"""Charts of the ordering diagnostics (``es_analytics.ordering``): a diagnostic DataFrame in, an Altair chart out.

- :func:`lateness` — how long after occurring events were recorded (bars per bucket, by event type if given);
- :func:`backwards` — events whose ``occurred_at`` runs backwards within their stream (when, by how much);
- :func:`gaps` — version gaps per stream, or position gaps, as bars of the missing count.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import polars as pl

from ._theme import ACCENT, NEGATIVE, NEUTRAL, check_rows, finish
from .patterns import format_duration

__all__ = ["backwards", "gaps", "lateness"]


def _seconds(column: str) -> pl.Expr:
    return pl.col(column).dt.total_microseconds() / 1e6


def _readable(column: str, name: str) -> pl.Expr:
    return _seconds(column).map_elements(format_duration, return_dtype=pl.String, skip_nulls=False).alias(name)


def lateness(frame: pl.DataFrame) -> Any:
    """Bars of the lateness distribution from ``ordering.lateness`` (stacked by ``event_type`` if present).

    Examples
    --------
    >>> import polars as pl
    >>> from datetime import timedelta
    >>> from es_analytics.ordering import LATENESS_BUCKETS
    >>> frame = pl.DataFrame({"bucket": [b for _, b in LATENESS_BUCKETS], "upper_seconds": [u for u, _ in LATENESS_BUCKETS],
    ...                       "events": [0, 90, 5, 3, 1, 1, 0, 0], "share": [0.0, .9, .05, .03, .01, .01, 0.0, 0.0],
    ...                       "max_lateness": [None] + [timedelta(seconds=1)] * 7})
    >>> lateness(frame).to_dict()["mark"]["type"]
    'bar'
    """
    data = check_rows(frame, "charts.lateness", required=("bucket", "upper_seconds", "events", "share"))
    data = data.with_columns(_readable("max_lateness", "longest") if "max_lateness" in data.columns
                             else pl.lit("–").alias("longest"))
    data = data.drop("max_lateness", strict=False)
    order = data.select("bucket", "upper_seconds").unique().sort("upper_seconds")["bucket"].to_list()
    tooltip = [alt.Tooltip("bucket:N", title="Recorded after"), alt.Tooltip("events:Q", title="Events", format=","),
               alt.Tooltip("share:Q", title="Share", format=".1%"), alt.Tooltip("longest:N", title="Longest")]
    encoding: dict[str, Any] = {
        "x": alt.X("bucket:N", title="Recorded after it occurred", sort=order, axis=alt.Axis(labelAngle=-30)),
        # symlog: the few very late events stay visible next to the many on-time ones
        "y": alt.Y("events:Q", title="Events (symlog scale)", scale=alt.Scale(type="symlog")),
    }
    if "event_type" in data.columns:
        encoding["color"] = alt.Color("event_type:N", title="Event type")
        tooltip.insert(0, alt.Tooltip("event_type:N", title="Event type"))
    chart = alt.Chart(data).mark_bar().encode(**encoding, tooltip=tooltip)
    total = int(data["events"].sum())
    late = int(data.filter(pl.col("upper_seconds") > 3600)["events"].sum())
    early = int(data.filter(pl.col("upper_seconds") == 0)["events"].sum())
    subtitle = f"{total:,} events · {late:,} recorded more than an hour late · {early:,} recorded before they occurred"
    return finish(chart, title="Lateness: recorded_at − occurred_at", subtitle=subtitle)


def backwards(frame: pl.DataFrame) -> Any:
    """Each event whose ``occurred_at`` runs backwards (``ordering.backwards_in_time``): when, and by how much.

    One point per event: x is its ``occurred_at``, y how far before the stream's latest earlier event it lies.
    Pass at most 5,000 rows (the frame is sorted by the size of the jump, so ``.head(5000)`` keeps the largest).
    """
    data = check_rows(frame, "charts.backwards", required=("aggregate_id", "aggregate_version", "occurred_at",
                                                           "backwards", "event_type"))
    data = data.with_columns((_seconds("backwards") / 86400).alias("days"), _readable("backwards", "by"))
    data = data.select(pl.exclude(pl.Duration))
    chart = alt.Chart(data).mark_point(color=NEGATIVE, opacity=0.7).encode(
        x=alt.X("occurred_at:T", title="Occurred at (UTC)"),
        y=alt.Y("days:Q", title="Days before the stream's latest earlier event"),
        tooltip=[alt.Tooltip("aggregate_id:N", title="Stream"), alt.Tooltip("aggregate_version:Q", title="Version"),
                 alt.Tooltip("event_type:N", title="Event type"), alt.Tooltip("occurred_at:T", title="Occurred",
                                                                               format="%Y-%m-%d %H:%M"),
                 alt.Tooltip("by:N", title="Backwards by")],
    )
    streams = data["aggregate_id"].n_unique()
    return finish(chart, title="Events running backwards in business time",
                  subtitle=f"{data.height:,} events in {streams:,} streams occurred before an earlier version")


def gaps(frame: pl.DataFrame) -> Any:
    """Bars of missing versions per stream (``ordering.version_gaps``) or missing positions (``position_gaps``)."""
    if isinstance(frame, pl.DataFrame) and "aggregate_id" in frame.columns:
        data = check_rows(frame, "charts.gaps", required=("aggregate_id", "after_version", "next_version", "missing"))
        data = data.with_columns(kind=pl.when(pl.col("missing") < 0).then(pl.lit("repeated version"))
                                 .otherwise(pl.lit("missing versions")), size=pl.col("missing").abs())
        y = alt.Y("aggregate_id:N", title="Stream", sort="-x")
        tooltip = [alt.Tooltip("aggregate_id:N", title="Stream"), alt.Tooltip("after_version:Q", title="After version"),
                   alt.Tooltip("next_version:Q", title="Next version"), alt.Tooltip("kind:N", title="Kind"),
                   alt.Tooltip("size:Q", title="Versions")]
        title = "Version gaps per stream"
    else:
        data = check_rows(frame, "charts.gaps", required=("after_position", "next_position", "missing"))
        data = data.with_columns(kind=pl.lit("missing positions"), size=pl.col("missing"),
                                 label=pl.format("{} → {}", pl.col("after_position"), pl.col("next_position")))
        y = alt.Y("label:N", title="Positions", sort="-x")
        tooltip = [alt.Tooltip("after_position:Q", title="After position"),
                   alt.Tooltip("next_position:Q", title="Next position"), alt.Tooltip("size:Q", title="Missing")]
        title = "Position gaps"
    chart = alt.Chart(data).mark_bar().encode(
        x=alt.X("size:Q", title="Versions or positions"), y=y,
        color=alt.Color("kind:N", title=None, scale=alt.Scale(domain=["missing versions", "repeated version",
                                                                       "missing positions"],
                                                               range=[ACCENT, NEGATIVE, NEUTRAL])),
        tooltip=tooltip,
    )
    subtitle = "none found" if data.height == 0 else f"{data.height:,} gaps, {int(data['size'].sum()):,} missing"
    return finish(chart, title=title, subtitle=subtitle, height=max(60, min(18 * data.height, 600)))
