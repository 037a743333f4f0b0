"""Patterns in the event history: distributions, trends, anomalies, latencies, funnels, cohorts, mixes.

Every function reads the lake through DuckDB, aggregates there, and returns a frozen result object that
holds small polars DataFrames, ready for ``es_analytics.charts``.

Conventions shared by all analyses:

- **Business time.** Events are placed by ``occurred_at`` (when they happened), not ``recorded_at``.
- **Half-open windows.** ``start`` and ``end`` are timezone-aware; an event counts when
  ``start <= occurred_at < end``, so consecutive windows never count an event twice. The exception is
  ``analyze``, the seed's ``analyzeEventPatterns``: inclusive at both ends by default, any other window
  with ``closed="left"|"right"|"none"`` (polars' convention).
- **An explicit time zone.** Hours, days, weekdays, weeks and months are those of the IANA zone ``tz``
  (default ``"UTC"``). On a daylight-saving day a local day has 23 or 25 hours; the repeated local hour of
  the autumn change collects the events of both passes, and the skipped spring hour has none.
- **Days without events.** Daily series list every calendar day of the window, with 0 for days without
  events. ``analyze``'s ``average_per_day`` divides by the days that had at least one event (the seed's
  ``averagePerDay``, what a loop over the events' own days gives), ``average_per_calendar_day`` by every
  calendar day of the window.
- **Stream order.** Sequences inside one aggregate (latency, funnel) follow ``aggregate_version``.

Speed: time buckets are computed on 15-minute UTC slots (an integer division), and only the few thousand
slots are converted to local time; every zone in use today has offsets in whole quarter hours (zones that
do not are detected and bucketed row by row). Only ``occurred_at``, ``event_type`` (and the filters'
columns) are read.
"""

from __future__ import annotations

from datetime import date, datetime

from ._common import _calendar, _window, _zone
from ._rollup import prepare
from .distributions import (
    AnomalyResult,
    HeatmapResult,
    MixResult,
    PatternResult,
    TrendResult,
    analyze,
    anomalies,
    heatmap,
    mix,
    trend,
)
from .sequences import CohortResult, FunnelResult, LatencyResult, TopResult, cohorts, funnel, latency, top

__all__ = [
    "AnomalyResult",
    "CohortResult",
    "FunnelResult",
    "HeatmapResult",
    "LatencyResult",
    "MixResult",
    "PatternResult",
    "TopResult",
    "TrendResult",
    "analyze",
    "anomalies",
    "calendar_days",
    "cohorts",
    "funnel",
    "heatmap",
    "latency",
    "mix",
    "prepare",
    "top",
    "trend",
]


def calendar_days(start: datetime, end: datetime, tz: str = "UTC") -> list[date]:
    """The local calendar days the half-open window ``[start, end)`` touches (what ``daily`` lists).

    Examples
    --------
    >>> from datetime import timezone
    >>> [d.isoformat() for d in calendar_days(datetime(2025, 3, 1, 23, tzinfo=timezone.utc),
    ...                                       datetime(2025, 3, 2, 1, tzinfo=timezone.utc), "Europe/Berlin")]
    ['2025-03-02']
    """
    lo, hi = _window(start, end)
    assert lo is not None and hi is not None
    return _calendar(lo, hi, _zone(tz)).to_list()
