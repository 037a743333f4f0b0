"""Patterns in the event history: distributions, trends, anomalies, latencies, funnels, cohorts, mixes.

Every function reads the lake through DuckDB, aggregates there, and returns a frozen result object that
holds small polars DataFrames, ready for ``es_analytics.charts``.

Conventions shared by all analyses:

- **Business time.** Events are placed by ``occurred_at`` (when they happened), not ``recorded_at``.
- **Half-open windows.** ``start`` and ``end`` are timezone-aware; an event counts when
  ``start <= occurred_at < end``, so consecutive windows never count an event twice.
- **An explicit time zone.** Hours, days, weekdays, weeks and months are those of the IANA zone ``tz``
  (default ``"UTC"``). On a daylight-saving day a local day has 23 or 25 hours; the repeated local hour of
  the autumn change collects the events of both passes, and the skipped spring hour has none.
- **Days without events.** Daily series list every calendar day of the window, with 0 for days without
  events; ``average_per_day`` divides by those calendar days, and ``average_per_active_day`` by the days
  that had at least one event (what a loop over the events' own days gives).
- **Stream order.** Sequences inside one aggregate (latency, funnel) follow ``aggregate_version``.

Speed: time buckets are computed on 15-minute UTC slots (an integer division), and only the few thousand
slots are converted to local time; every zone in use today has offsets in whole quarter hours (zones that
do not are detected and bucketed row by row). Only ``occurred_at``, ``event_type`` (and the filters'
columns) are read.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import polars as pl

from ._time import to_utc, to_utc_or_none
from .errors import InvalidArgumentError
from .events import check_aggregate_id, check_aggregate_type

if TYPE_CHECKING:
    from .lake import Lake

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
    "cohorts",
    "funnel",
    "heatmap",
    "latency",
    "mix",
    "top",
    "trend",
]

Grain = Literal["day", "week", "month"]
_GRAINS = {"day": "1d", "week": "1w", "month": "1mo"}
_SLOT_US = 900_000_000  # 15 minutes
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LATENCY_BINS: tuple[tuple[float, str], ...] = (
    (60, "< 1 min"), (300, "1–5 min"), (900, "5–15 min"), (3600, "15–60 min"), (3 * 3600, "1–3 h"),
    (12 * 3600, "3–12 h"), (86400, "12–24 h"), (3 * 86400, "1–3 days"), (7 * 86400, "3–7 days"),
    (30 * 86400, "1–4 weeks"), (90 * 86400, "1–3 months"), (float("inf"), "> 3 months"),
)


# -- input checks -------------------------------------------------------------------------------
def _zone(tz: object) -> str:
    if not isinstance(tz, str) or not tz:
        raise InvalidArgumentError(f"tz must be an IANA time zone name such as 'Europe/Berlin', got {tz!r}")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgumentError(
            f"tz {tz!r} is not a known IANA time zone; use a name such as 'UTC' or 'America/New_York'"
        ) from exc
    return tz


def _types(value: object, name: str = "event_type", *, allow_none: bool = True) -> tuple[str, ...] | None:
    if value is None and allow_none:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(t, str) and t for t in items):
        raise InvalidArgumentError(f"{name} must be an event type or a non-empty list of them, got {value!r}")
    return tuple(items)


def _one_type(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{name} must be one event type such as 'MoneyWithdrawn', got {value!r}")
    return value


def _window(start: object, end: object, *, optional: bool = False) -> tuple[datetime | None, datetime | None]:
    lo = to_utc_or_none(start, "start") if optional else to_utc(start, "start")
    hi = to_utc_or_none(end, "end") if optional else to_utc(end, "end")
    if lo is not None and hi is not None and lo >= hi:
        raise InvalidArgumentError(f"start {lo.isoformat()} must be before end {hi.isoformat()} (end is exclusive)")
    return lo, hi


@dataclass(frozen=True)
class _Filter:
    """The WHERE clause shared by the analyses, with its bound parameters (no user text in SQL)."""

    start: datetime | None
    end: datetime | None
    types: tuple[str, ...] | None = None
    aggregate_id: str | None = None
    aggregate_type: str | None = None

    def sql(self, alias: str = "") -> tuple[str, list[Any]]:
        p = f"{alias}." if alias else ""
        clauses, params = ["TRUE"], []  # type: tuple[list[str], list[Any]]
        if self.start is not None:
            clauses.append(f"{p}occurred_at >= ?")
            params.append(self.start)
        if self.end is not None:
            clauses.append(f"{p}occurred_at < ?")
            params.append(self.end)
        if self.types is not None:
            clauses.append(f"{p}event_type IN ({', '.join('?' * len(self.types))})")
            params.extend(self.types)
        if self.aggregate_id is not None:
            clauses.append(f"{p}aggregate_id = ?")
            params.append(self.aggregate_id)
        if self.aggregate_type is not None:
            clauses.append(f"{p}aggregate_type = ?")
            params.append(self.aggregate_type)
        return " AND ".join(clauses), params


def _make_filter(start: object, end: object, event_type: object = None, *, aggregate_id: object = None,
                 aggregate_type: object = None, optional: bool = False) -> _Filter:
    lo, hi = _window(start, end, optional=optional)
    return _Filter(
        lo, hi, _types(event_type),
        None if aggregate_id is None else check_aggregate_id(aggregate_id),
        None if aggregate_type is None else check_aggregate_type(aggregate_type),
    )


def _calendar(start: datetime, end: datetime, tz: str) -> pl.Series:
    """Every local date the half-open window [start, end) touches."""
    zone = ZoneInfo(tz)
    first = start.astimezone(zone).date()
    last = (end - timedelta(microseconds=1)).astimezone(zone).date()
    return pl.date_range(first, last, "1d", eager=True).alias("date")


# -- the one scan: counts per local 15-minute slot ----------------------------------------------
def _local_slots(lake: Lake, where: _Filter, tz: str, *, by_type: bool = False) -> pl.DataFrame:
    """Event counts per local 15-minute slot: columns ``local`` (naive local datetime)[, ``event_type``], ``count``."""
    clause, params = where.sql()
    key = ", event_type" if by_type else ""
    slots = lake._query(
        f"WITH s AS (SELECT epoch_us(occurred_at) // {_SLOT_US} AS slot{key}, count(*) AS n "
        f"FROM events WHERE {clause} GROUP BY ALL) "
        f"SELECT timezone(?, to_timestamp(slot * {_SLOT_US // 1_000_000})) AS local{key}, n AS count, "
        f"(epoch_us(timezone(?, to_timestamp(slot * {_SLOT_US // 1_000_000}))) - slot * {_SLOT_US}) % {_SLOT_US} <> 0 "
        "AS misaligned FROM s",
        [*params, tz, tz],
        what="patterns",
    )
    if slots.height and slots["misaligned"].any():
        # A zone offset that is not whole quarter hours (historic local mean time): convert row by row.
        slots = lake._query(
            f"SELECT date_trunc('minute', timezone(?, occurred_at)) AS local{key}, count(*) AS count "
            f"FROM events WHERE {clause} GROUP BY ALL",
            [tz, *params],
            what="patterns",
        )
    return slots.select("local", *(["event_type"] if by_type else []), pl.col("count").cast(pl.Int64))


def _zero_fill_daily(counts: pl.DataFrame, calendar: pl.Series) -> pl.DataFrame:
    return (
        pl.DataFrame({"date": calendar})
        .join(counts, on="date", how="left")
        .with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
    )


# -- analyze ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatternResult:
    """Hourly and daily distribution of one event type (or several) in a window.

    Attributes
    ----------
    total_events
        Events in the window.
    hourly
        ``hour`` (0–23, local) and ``count``: all 24 hours, 0 where none.
    daily
        ``date`` (local) and ``count``: every calendar day of the window, 0 for days without events.
    average_per_day
        ``total_events`` over the calendar days of the window (days without events count).
    average_per_active_day
        ``total_events`` over the days with at least one event (the seed's figure).
    """

    event_type: str | tuple[str, ...] | None
    start: datetime
    end: datetime
    tz: str
    aggregate_id: str | None
    total_events: int
    hourly: pl.DataFrame
    daily: pl.DataFrame
    average_per_day: float
    average_per_active_day: float

    @property
    def days(self) -> int:
        """Calendar days in the window."""
        return self.daily.height

    @property
    def active_days(self) -> int:
        """Days with at least one event."""
        return int((self.daily["count"] > 0).sum())

    @property
    def active_daily(self) -> pl.DataFrame:
        """``daily`` without the days that had no events."""
        return self.daily.filter(pl.col("count") > 0)

    @property
    def peak_hour(self) -> int | None:
        """The local hour with the most events (the earliest on a tie), None without events."""
        if self.total_events == 0:
            return None
        return int(self.hourly.sort(["count", "hour"], descending=[True, False])["hour"][0])

    def __repr__(self) -> str:
        return (
            f"PatternResult({self.event_type!r}, {self.start:%Y-%m-%d %H:%M}–{self.end:%Y-%m-%d %H:%M} UTC, "
            f"tz={self.tz!r}, total_events={self.total_events}, average_per_day={self.average_per_day:.2f})"
        )


def analyze(
    lake: Lake,
    event_type: str | Sequence[str] | None,
    start: datetime,
    end: datetime,
    *,
    aggregate_id: str | None = None,
    tz: str = "UTC",
) -> PatternResult:
    """Hourly and daily distribution of ``event_type`` between ``start`` (inclusive) and ``end`` (exclusive).

    Parameters
    ----------
    lake
        The lake to read.
    event_type
        One event type, a list of them, or ``None`` for every type.
    start, end
        Timezone-aware bounds on ``occurred_at``; ``start <= occurred_at < end``.
    aggregate_id
        Only this stream.
    tz
        IANA time zone of the hours and days (``"UTC"``, ``"Europe/Berlin"`` …).

    Returns
    -------
    PatternResult

    Raises
    ------
    InvalidArgumentError
        A naive or reversed window, an unknown time zone, a malformed event type or aggregate id.

    Examples
    --------
    >>> import tempfile
    >>> from datetime import datetime, timezone
    >>> from es_analytics import Event, Lake
    >>> at = lambda d, h: datetime(2025, 3, d, h, tzinfo=timezone.utc)
    >>> with Lake.open(tempfile.mkdtemp()) as lake:
    ...     _ = lake.append("acc-1", [Event("MoneyDeposited", {"amount": 5}, occurred_at=at(d, h))
    ...                               for d, h in [(1, 9), (1, 9), (3, 17)]],
    ...                     expected_version=0, aggregate_type="BankAccount")
    ...     result = analyze(lake, "MoneyDeposited", at(1, 0), at(5, 0))
    >>> result.total_events, result.days, result.active_days
    (3, 4, 2)
    >>> result.average_per_day, result.average_per_active_day
    (0.75, 1.5)
    >>> result.hourly.filter(pl.col("count") > 0).rows()
    [(9, 2), (17, 1)]
    """
    zone = _zone(tz)
    where = _make_filter(start, end, event_type, aggregate_id=aggregate_id)
    assert where.start is not None and where.end is not None
    slots = _local_slots(lake, where, zone)
    hourly = (
        pl.DataFrame({"hour": pl.int_range(0, 24, eager=True, dtype=pl.Int32)})
        .join(slots.group_by(pl.col("local").dt.hour().cast(pl.Int32).alias("hour")).agg(pl.col("count").sum()),
              on="hour", how="left")
        .with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
    )
    daily = _zero_fill_daily(
        slots.group_by(pl.col("local").dt.date().alias("date")).agg(pl.col("count").sum()),
        _calendar(where.start, where.end, zone),
    )
    total = int(daily["count"].sum())
    active = int((daily["count"] > 0).sum())
    return PatternResult(
        event_type=where.types[0] if where.types and len(where.types) == 1 else where.types,
        start=where.start, end=where.end, tz=zone, aggregate_id=where.aggregate_id,
        total_events=total, hourly=hourly, daily=daily,
        average_per_day=total / daily.height,
        average_per_active_day=total / active if active else 0.0,
    )


# -- weekday x hour -----------------------------------------------------------------------------
@dataclass(frozen=True)
class HeatmapResult:
    """Events per local weekday and hour.

    ``cells``: ``weekday`` (1 = Monday … 7 = Sunday), ``day_name``, ``hour`` (0–23), ``count`` (all 168
    cells, 0 where none), ``days`` (how many of that weekday the window holds) and ``average`` (events per
    such day in that hour).
    """

    event_type: str | tuple[str, ...] | None
    tz: str
    cells: pl.DataFrame


def heatmap(lake: Lake, event_type: str | Sequence[str] | None, start: datetime, end: datetime, *,
            tz: str = "UTC", aggregate_type: str | None = None) -> HeatmapResult:
    """Weekday × hour counts of ``event_type`` in ``[start, end)``, in the time zone ``tz``."""
    zone = _zone(tz)
    where = _make_filter(start, end, event_type, aggregate_type=aggregate_type)
    assert where.start is not None and where.end is not None
    slots = _local_slots(lake, where, zone)
    counts = slots.group_by(
        pl.col("local").dt.weekday().cast(pl.Int8).alias("weekday"),
        pl.col("local").dt.hour().cast(pl.Int8).alias("hour"),
    ).agg(pl.col("count").sum())
    days = pl.DataFrame({"date": _calendar(where.start, where.end, zone)}).group_by(
        pl.col("date").dt.weekday().cast(pl.Int8).alias("weekday")).agg(pl.len().cast(pl.Int64).alias("days"))
    grid = pl.DataFrame({"weekday": pl.Series(range(1, 8), dtype=pl.Int8)}).join(
        pl.DataFrame({"hour": pl.Series(range(24), dtype=pl.Int8)}), how="cross")
    cells = (
        grid.join(counts, on=["weekday", "hour"], how="left").join(days, on="weekday", how="left")
        .with_columns(pl.col("count").fill_null(0).cast(pl.Int64), pl.col("days").fill_null(0))
        .with_columns(
            pl.col("weekday").map_elements(lambda d: _DAY_NAMES[d - 1], return_dtype=pl.String).alias("day_name"),
            pl.when(pl.col("days") > 0).then(pl.col("count") / pl.col("days")).otherwise(0.0).alias("average"),
        )
        .select("weekday", "day_name", "hour", "count", "days", "average")
    )
    return HeatmapResult(_label(where), zone, cells)


def _label(where: _Filter) -> str | tuple[str, ...] | None:
    return where.types[0] if where.types and len(where.types) == 1 else where.types


# -- trend ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrendResult:
    """Daily counts with a rolling average, and weekly totals with the change from the week before.

    ``daily``: ``date``, ``count``, ``rolling_mean`` (mean of the ``window`` days ending that day; null
    until ``window`` days are known). ``weekly``: ``week`` (local Monday), ``count``, ``days`` (days of that
    week inside the window), ``complete`` (all 7 days inside), ``change`` and ``change_pct`` against the
    previous week (null for the first week, and ``change_pct`` null when the previous week had no events).
    The first and last week are usually partial: compare them with care.
    """

    event_type: str | tuple[str, ...] | None
    tz: str
    window: int
    daily: pl.DataFrame
    weekly: pl.DataFrame


def trend(lake: Lake, event_type: str | Sequence[str] | None, start: datetime, end: datetime, *,
          tz: str = "UTC", window: int = 7, aggregate_type: str | None = None) -> TrendResult:
    """Daily trend of ``event_type`` in ``[start, end)`` with a ``window``-day rolling mean and week-over-week change."""
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 366:
        raise InvalidArgumentError(f"window must be a number of days from 1 to 366, got {window!r}")
    zone = _zone(tz)
    where = _make_filter(start, end, event_type, aggregate_type=aggregate_type)
    assert where.start is not None and where.end is not None
    slots = _local_slots(lake, where, zone)
    daily = _zero_fill_daily(
        slots.group_by(pl.col("local").dt.date().alias("date")).agg(pl.col("count").sum()),
        _calendar(where.start, where.end, zone),
    ).with_columns(pl.col("count").cast(pl.Float64).rolling_mean(window).alias("rolling_mean"))
    weekly = (
        daily.group_by(pl.col("date").dt.truncate("1w").alias("week"))
        .agg(pl.col("count").sum(), pl.len().cast(pl.Int64).alias("days"))
        .sort("week")
        .with_columns((pl.col("days") == 7).alias("complete"))
        .with_columns((pl.col("count") - pl.col("count").shift(1)).alias("change"))
        .with_columns(
            pl.when(pl.col("count").shift(1) > 0)
            .then(pl.col("change") / pl.col("count").shift(1) * 100.0)
            .otherwise(None)
            .alias("change_pct")
        )
    )
    return TrendResult(_label(where), zone, window, daily, weekly)


# -- anomalies ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AnomalyResult:
    """Days whose count is far from the usual count of their event type (robust z-score).

    ``daily``: ``event_type``, ``date``, ``count``, ``median`` and ``mad`` (median absolute deviation) of
    the baseline, ``robust_z`` and ``anomaly`` (``|robust_z| >= threshold`` and the count differs from the
    median by at least ``min_deviation`` events, so that one event more on a quiet day is not news), every
    calendar day for every type. ``robust_z = 0.6745 · (count − median) / mad`` (Iglewicz and Hoaglin); when more than half the
    baseline days share one count (``mad`` = 0) the mean absolute deviation is used,
    ``(count − median) / (1.2533 · meanAD)``, and a perfectly flat baseline gives ``robust_z`` 0.
    The baseline is the ``baseline`` days before each day (so a trend does not look anomalous), or the
    whole window when ``baseline`` is None; days with fewer than ``min_history`` baseline days have a null
    ``robust_z`` and are never anomalous.
    """

    tz: str
    threshold: float
    baseline: int | None
    min_deviation: int
    daily: pl.DataFrame

    @property
    def anomalies(self) -> pl.DataFrame:
        """Only the anomalous days, the strongest first."""
        return self.daily.filter(pl.col("anomaly")).sort(pl.col("robust_z").abs(), descending=True)


def anomalies(lake: Lake, start: datetime, end: datetime, *, event_type: str | Sequence[str] | None = None,
              tz: str = "UTC", threshold: float = 3.5, baseline: int | None = 28, min_history: int = 7,
              min_deviation: int = 3, aggregate_type: str | None = None) -> AnomalyResult:
    """Anomalous days per event type in ``[start, end)`` by the robust (median/MAD) z-score."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise InvalidArgumentError(f"threshold must be a positive number, got {threshold!r}")
    for name, value in (("baseline", baseline), ("min_history", min_history)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3660):
            raise InvalidArgumentError(f"{name} must be a number of days from 1 to 3660, got {value!r}")
    if isinstance(min_deviation, bool) or not isinstance(min_deviation, int) or min_deviation < 0:
        raise InvalidArgumentError(f"min_deviation must be a non-negative number of events, got {min_deviation!r}")
    if baseline is not None and min_history > baseline:
        raise InvalidArgumentError(f"min_history ({min_history}) cannot exceed baseline ({baseline})")
    zone = _zone(tz)
    where = _make_filter(start, end, event_type, aggregate_type=aggregate_type)
    assert where.start is not None and where.end is not None
    slots = _local_slots(lake, where, zone, by_type=True)
    counts = slots.group_by("event_type", pl.col("local").dt.date().alias("date")).agg(pl.col("count").sum())
    types = sorted(set(where.types or ()) | set(counts["event_type"].to_list()))
    grid = pl.DataFrame({"event_type": types}, schema={"event_type": pl.String}).join(
        pl.DataFrame({"date": _calendar(where.start, where.end, zone)}), how="cross")
    daily = (
        grid.join(counts, on=["event_type", "date"], how="left")
        .with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
        .sort("event_type", "date")
    )
    parts = [_robust_z(daily.filter(pl.col("event_type") == t), baseline, min_history) for t in types]
    daily = pl.concat(parts) if parts else daily.with_columns(
        median=pl.lit(None, pl.Float64), mad=pl.lit(None, pl.Float64), robust_z=pl.lit(None, pl.Float64))
    flagged = (pl.col("robust_z").abs() >= threshold) & ((pl.col("count") - pl.col("median")).abs() >= min_deviation)
    daily = daily.with_columns(flagged.fill_null(False).alias("anomaly"))
    return AnomalyResult(zone, float(threshold), baseline, min_deviation, daily)


def _robust_z(frame: pl.DataFrame, baseline: int | None, min_history: int) -> pl.DataFrame:
    """Median, MAD and robust z of one type's daily counts against its baseline days (numpy, small)."""
    x = frame["count"].to_numpy().astype(np.float64)
    n = x.size
    if baseline is None:
        windows = np.broadcast_to(x, (n, n))
    else:
        padded = np.concatenate([np.full(baseline, np.nan), x[:-1]]) if n else x
        windows = np.lib.stride_tricks.sliding_window_view(padded, baseline)[:n]
    enough = np.sum(~np.isnan(windows), axis=1) >= (min_history if baseline is not None else 1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows of days without history
        median = np.nanmedian(windows, axis=1)
        deviation = np.abs(windows - median[:, None])
        mad = np.nanmedian(deviation, axis=1)
        mean_ad = np.nanmean(deviation, axis=1)
        diff = x - median
        z = np.where(mad > 0, 0.6745 * diff / np.where(mad > 0, mad, 1.0),
                     np.where(mean_ad > 0, diff / (1.253314 * np.where(mean_ad > 0, mean_ad, 1.0)), 0.0))
    nulls = ~enough
    return frame.with_columns(
        pl.Series("median", np.where(nulls, np.nan, median)).fill_nan(None),
        pl.Series("mad", np.where(nulls, np.nan, mad)).fill_nan(None),
        pl.Series("robust_z", np.where(nulls, np.nan, z)).fill_nan(None),
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


# -- event-type mix -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MixResult:
    """Event types per period: ``period`` (local start of the day/week/month), ``event_type``, ``count``, ``share``."""

    grain: Grain
    tz: str
    table: pl.DataFrame


def mix(lake: Lake, start: datetime, end: datetime, *, every: Grain = "week", tz: str = "UTC",
        aggregate_type: str | None = None, event_type: str | Sequence[str] | None = None) -> MixResult:
    """The mix of event types over time, per ``every`` (``"day"``, ``"week"`` starting Monday, ``"month"``)."""
    if every not in _GRAINS:
        raise InvalidArgumentError(f"every must be one of {sorted(_GRAINS)!r}, got {every!r}")
    zone = _zone(tz)
    where = _make_filter(start, end, event_type, aggregate_type=aggregate_type)
    slots = _local_slots(lake, where, zone, by_type=True)
    table = (
        slots.group_by(pl.col("local").dt.date().dt.truncate(_GRAINS[every]).alias("period"), "event_type")
        .agg(pl.col("count").sum())
        .with_columns((pl.col("count") / pl.col("count").sum().over("period")).alias("share"))
        .sort("period", "event_type")
    )
    return MixResult(every, zone, table)


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
