"""Sequences inside streams and who does what: latency, funnels, cohort retention, top metadata values."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import polars as pl

from ..errors import InvalidArgumentError
from ._common import _make_filter, _one_type, _types, _zone

if TYPE_CHECKING:
    from ..lake import Lake

__all__ = ["CohortResult", "FunnelResult", "LatencyResult", "TopResult", "cohorts", "funnel", "latency", "top"]

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_LATENCY_BINS: tuple[tuple[float, str], ...] = (
    (60, "< 1 min"), (300, "1–5 min"), (900, "5–15 min"), (3600, "15–60 min"), (3 * 3600, "1–3 h"),
    (12 * 3600, "3–12 h"), (86400, "12–24 h"), (3 * 86400, "1–3 days"), (7 * 86400, "3–7 days"),
    (30 * 86400, "1–4 weeks"), (90 * 86400, "1–3 months"), (float("inf"), "> 3 months"),
)



# -- latency --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyResult:
    """Time from an aggregate's first ``from_type`` event to its first later ``to_type`` event.

    ``pairs``: ``aggregate_id``, ``from_at``, ``to_at`` (null if it never happened), ``latency_seconds``.
    ``percentiles``: ``percentile`` (0–100) and ``seconds`` over the converted aggregates.
    ``histogram``: ``bucket`` (human-sized ranges, in order), ``order``, ``aggregates``.
    """

    from_type: str
    to_type: str
    pairs: pl.DataFrame
    percentiles: pl.DataFrame
    histogram: pl.DataFrame

    @property
    def started(self) -> int:
        """Aggregates with a ``from_type`` event in the window."""
        return self.pairs.height

    @property
    def converted(self) -> int:
        """Aggregates that went on to a ``to_type`` event."""
        return int(self.pairs["to_at"].is_not_null().sum())

    @property
    def conversion(self) -> float:
        """``converted / started`` (0 when nothing started)."""
        return self.converted / self.started if self.started else 0.0


def latency(lake: Lake, from_type: str, to_type: str, *, start: datetime | None = None,
            end: datetime | None = None, percentiles: Sequence[float] = (50, 90, 95, 99),
            aggregate_type: str | None = None) -> LatencyResult:
    """Latency between two event types per aggregate, e.g. ``AccountOpened`` → first ``MoneyWithdrawn``.

    ``start``/``end`` (optional) select the aggregates whose first ``from_type`` event falls in the window;
    the ``to_type`` event may come any time after it (in stream order). Percentiles are linear
    interpolations over the converted aggregates.
    """
    first, second = _one_type(from_type, "from_type"), _one_type(to_type, "to_type")
    pcts = _percentiles(percentiles)
    where = _make_filter(start, end, first, aggregate_type=aggregate_type, optional=True)
    clause, params = where.sql()
    pairs = lake._query(
        "WITH f AS (SELECT aggregate_id, min(aggregate_version) AS v, arg_min(occurred_at, aggregate_version) AS from_at "
        f"FROM events WHERE {clause} GROUP BY aggregate_id), "
        "t AS (SELECT e.aggregate_id, arg_min(e.occurred_at, e.aggregate_version) AS to_at "
        "FROM events e JOIN f ON e.aggregate_id = f.aggregate_id "
        "WHERE e.event_type = ? AND e.aggregate_version > f.v GROUP BY e.aggregate_id) "
        "SELECT f.aggregate_id, f.from_at, t.to_at, "
        "(epoch_us(t.to_at) - epoch_us(f.from_at)) / 1e6 AS latency_seconds "
        "FROM f LEFT JOIN t ON f.aggregate_id = t.aggregate_id ORDER BY f.aggregate_id",
        [*params, second],
        what="patterns.latency",
    )
    done = pairs.filter(pl.col("latency_seconds").is_not_null())["latency_seconds"]
    quantiles = [done.quantile(p / 100, interpolation="linear") if done.len() else None for p in pcts]
    table = pl.DataFrame({"percentile": pcts, "seconds": quantiles}, schema={"percentile": pl.Float64,
                                                                          "seconds": pl.Float64})
    return LatencyResult(first, second, pairs, table, _latency_histogram(done))


def _percentiles(values: object) -> list[float]:
    if not isinstance(values, (list, tuple)) or not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 100 for v in values):
        raise InvalidArgumentError(f"percentiles must be a non-empty list of numbers from 0 to 100, got {values!r}")
    return [float(v) for v in values]


def _latency_histogram(seconds: pl.Series) -> pl.DataFrame:
    edges = [edge for edge, _ in _LATENCY_BINS]
    labels = [label for _, label in _LATENCY_BINS]
    frame = pl.DataFrame({"seconds": seconds.cast(pl.Float64)})
    order = frame.select(
        pl.sum_horizontal(*[(pl.col("seconds") >= edge).cast(pl.Int32) for edge in edges[:-1]]).alias("order"))
    counts = order.group_by("order").agg(pl.len().cast(pl.Int64).alias("aggregates"))
    return (
        pl.DataFrame({"order": pl.Series(range(len(labels)), dtype=pl.Int32), "bucket": labels})
        .join(counts, on="order", how="left")
        .with_columns(pl.col("aggregates").fill_null(0))
        .select("bucket", "order", "aggregates")
    )


# -- funnel ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FunnelResult:
    """How many aggregates went through each step of a sequence of event types, in stream order.

    ``steps``: ``step`` (1 …), ``event_type``, ``aggregates`` (reached this step after all earlier ones),
    ``conversion`` (share of step 1), ``step_conversion`` (share of the previous step) and
    ``median_seconds`` (median time from the previous step; null for step 1).
    """

    steps: pl.DataFrame
    within: timedelta | None


def funnel(lake: Lake, steps: Sequence[str], *, start: datetime | None = None, end: datetime | None = None,
           within: timedelta | None = None, aggregate_type: str | None = None) -> FunnelResult:
    """Funnel over a sequence of event types per aggregate.

    An aggregate reaches step *k* when it has an event of type ``steps[k-1]`` after (in stream order) the
    event that matched step *k-1*; step 1 is its first ``steps[0]`` event with ``occurred_at`` in
    ``[start, end)``. With ``within``, later steps must occur within that time of step 1.
    """
    sequence = _types(steps, "steps", allow_none=False) or ()
    if len(sequence) < 2 or isinstance(steps, str):
        raise InvalidArgumentError(f"steps must list at least two event types, got {steps!r}")
    if within is not None and (not isinstance(within, timedelta) or within <= timedelta(0)):
        raise InvalidArgumentError(f"within must be a positive timedelta, got {within!r}")
    where = _make_filter(start, end, sequence[0], aggregate_type=aggregate_type, optional=True)
    clause, params = where.sql()
    ctes = [f"s1 AS (SELECT aggregate_id, min(aggregate_version) AS v, arg_min(occurred_at, aggregate_version) AS t, "
            f"arg_min(occurred_at, aggregate_version) AS t0, NULL::DOUBLE AS dt FROM events WHERE {clause} "
            "GROUP BY aggregate_id)"]
    for k in range(2, len(sequence) + 1):
        limit = " AND e.occurred_at <= p.t0 + ?" if within is not None else ""
        ctes.append(
            f"s{k} AS (SELECT e.aggregate_id, min(e.aggregate_version) AS v, "
            "arg_min(e.occurred_at, e.aggregate_version) AS t, any_value(p.t0) AS t0, "
            "(epoch_us(arg_min(e.occurred_at, e.aggregate_version)) - epoch_us(any_value(p.t))) / 1e6 AS dt "
            f"FROM events e JOIN s{k - 1} p ON e.aggregate_id = p.aggregate_id "
            f"WHERE e.event_type = ? AND e.aggregate_version > p.v{limit} GROUP BY e.aggregate_id)"
        )
        params.append(sequence[k - 1])
        if within is not None:
            params.append(within)
    union = " UNION ALL ".join(
        f"SELECT {k} AS step, count(*) AS aggregates, median(dt) AS median_seconds FROM s{k}"
        for k in range(1, len(sequence) + 1))
    counts = lake._query(f"WITH {', '.join(ctes)} {union} ORDER BY step", params, what="patterns.funnel")
    first = pl.col("aggregates").first()
    table = counts.with_columns(
        pl.col("step").cast(pl.Int32), pl.col("aggregates").cast(pl.Int64),
        pl.Series("event_type", list(sequence)),
    ).with_columns(
        pl.when(first > 0).then(pl.col("aggregates") / first).otherwise(0.0).alias("conversion"),
        pl.when(pl.col("aggregates").shift(1) > 0).then(pl.col("aggregates") / pl.col("aggregates").shift(1))
        .when(pl.col("step") == 1).then(1.0).otherwise(0.0).alias("step_conversion"),
    ).select("step", "event_type", "aggregates", "conversion", "step_conversion", "median_seconds")
    return FunnelResult(table, within)


# -- cohorts --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CohortResult:
    """Monthly cohort retention.

    ``table``: ``cohort`` (local month of the aggregate's first event), ``month`` (0, 1, … months later),
    ``cohort_size``, ``active`` (aggregates of the cohort with an activity event that month) and
    ``retention`` (``active / cohort_size``). Month 0 counts the first event itself when it is an activity.
    """

    tz: str
    table: pl.DataFrame

    @property
    def matrix(self) -> pl.DataFrame:
        """Retention as a cohort × month matrix (one column per month offset)."""
        return self.table.pivot(on="month", index=["cohort", "cohort_size"], values="retention",
                                sort_columns=True).sort("cohort")


def cohorts(lake: Lake, *, start: datetime | None = None, end: datetime | None = None, tz: str = "UTC",
            aggregate_type: str | None = None, activity: str | Sequence[str] | None = None) -> CohortResult:
    """Cohorts by the local month of each aggregate's first event, and the share active in later months.

    ``start``/``end`` bound the events considered (cohorts and activity); ``activity`` limits which event
    types count as activity (default: every type).
    """
    zone = _zone(tz)
    where = _make_filter(start, end, aggregate_type=aggregate_type, optional=True)
    clause, params = where.sql()
    acts = _types(activity, "activity")
    act_clause = f"AND event_type IN ({', '.join('?' * len(acts))})" if acts else ""
    table = lake._query(
        "WITH e AS (SELECT aggregate_id, event_type, date_trunc('month', timezone(?, occurred_at))::DATE AS m "
        f"FROM events WHERE {clause}), "
        "c AS (SELECT aggregate_id, min(m) AS cohort FROM e GROUP BY aggregate_id), "
        "s AS (SELECT cohort, count(*) AS cohort_size FROM c GROUP BY cohort), "
        "a AS (SELECT c.cohort, datediff('month', c.cohort, e.m) AS month, count(DISTINCT e.aggregate_id) AS active "
        f"FROM e JOIN c ON e.aggregate_id = c.aggregate_id WHERE TRUE {act_clause} GROUP BY ALL) "
        "SELECT a.cohort, a.month, s.cohort_size, a.active, a.active / s.cohort_size AS retention "
        "FROM a JOIN s ON a.cohort = s.cohort ORDER BY a.cohort, a.month",
        [zone, *params, *(acts or ())],
        what="patterns.cohorts",
    )
    table = table.with_columns(pl.col("month").cast(pl.Int32), pl.col("cohort_size").cast(pl.Int64),
                               pl.col("active").cast(pl.Int64), pl.col("retention").cast(pl.Float64))
    return CohortResult(zone, table)


# -- top actors / correlation ids ---------------------------------------------------------------
@dataclass(frozen=True)
class TopResult:
    """The most frequent values of one metadata key (an actor, a correlation id …).

    ``table``: ``value``, ``events``, ``share`` (of the events that have the key), ``aggregates`` (distinct
    streams), ``event_types`` (distinct), ``first_at``, ``last_at``; most events first.
    """

    key: str
    events_with_key: int
    table: pl.DataFrame


def top(lake: Lake, key: str = "user_id", *, start: datetime | None = None, end: datetime | None = None,
        n: int = 10, event_type: str | Sequence[str] | None = None,
        aggregate_type: str | None = None) -> TopResult:
    """The ``n`` most frequent values of metadata ``key`` (e.g. ``"user_id"``, ``"correlation_id"``)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidArgumentError(f"key must be a metadata field name such as 'user_id', got {key!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
        raise InvalidArgumentError(f"n must be an int from 1 to 1000, got {n!r}")
    where = _make_filter(start, end, event_type, aggregate_type=aggregate_type, optional=True)
    clause, params = where.sql()
    table = lake._query(
        "WITH k AS (SELECT json_extract_string(metadata, ?) AS value, aggregate_id, event_type, occurred_at "
        f"FROM events WHERE {clause}), "
        "g AS (SELECT value, count(*) AS events, count(DISTINCT aggregate_id) AS aggregates, "
        "count(DISTINCT event_type) AS event_types, min(occurred_at) AS first_at, max(occurred_at) AS last_at "
        "FROM k WHERE value IS NOT NULL GROUP BY value) "
        "SELECT *, events / sum(events) OVER () AS share, sum(events) OVER () AS total FROM g "
        "ORDER BY events DESC, value LIMIT ?",
        [f"$.{key}", *params, n],
        what="patterns.top",
    )
    total = int(table["total"][0]) if table.height else 0
    table = table.select("value", pl.col("events").cast(pl.Int64), "share", pl.col("aggregates").cast(pl.Int64),
                         pl.col("event_types").cast(pl.Int64), "first_at", "last_at")
    return TopResult(key, total, table)
