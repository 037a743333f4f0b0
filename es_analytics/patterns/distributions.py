"""Distributions over time: hourly and daily (``analyze``), weekday × hour, trend, anomalies, type mix."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from ..errors import InvalidArgumentError
from ._common import GRAINS, Closed, Grain, _calendar, _label, _make_filter, _zero_fill_daily, _zone
from ._rollup import local_slots

if TYPE_CHECKING:
    from ..lake import Lake

__all__ = ["AnomalyResult", "HeatmapResult", "MixResult", "PatternResult", "TrendResult", "analyze", "anomalies",
           "heatmap", "mix", "trend"]

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


# -- analyze ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatternResult:
    """Hourly and daily distribution of one event type (or several) in a window (the seed's
    ``analyzeEventPatterns``).

    Attributes
    ----------
    total_events
        Events in the window (the seed's ``totalEvents``).
    hourly
        ``hour`` (0–23, local) and ``count``: all 24 hours, 0 where none (the seed's
        ``hourlyDistribution`` lists only hours with events).
    daily
        ``date`` (local) and ``count``: every calendar day of the window, 0 for days without events
        (:attr:`active_daily` is the seed's ``dailyTotals``: only days with events).
    average_per_day
        ``total_events`` over the days with at least one event (the seed's ``averagePerDay``; 0.0
        without events, where the seed divides 0 by 0).
    average_per_calendar_day
        ``total_events`` over every calendar day of the window (days without events count).
    closed
        Which ends of the window were inclusive (``"both"``, as in the seed, by default).
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
    average_per_calendar_day: float
    closed: Closed = "both"

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
    closed: Closed = "both",
) -> PatternResult:
    """Hourly and daily distribution of ``event_type`` between ``start`` and ``end``, both inclusive.

    The seed's ``analyzeEventPatterns(aggregateId, eventType, timeWindow)``: its window is inclusive at
    both ends, and its ``averagePerDay`` divides by the days that have events. Unlike the seed, the
    stream is optional (``aggregate_id=None`` analyses every stream) and the hours and days are those of
    an explicit time zone.

    Parameters
    ----------
    lake
        The lake to read.
    event_type
        One event type, a list of them, or ``None`` for every type.
    start, end
        Timezone-aware bounds on ``occurred_at``; ``start <= occurred_at <= end`` by default.
    aggregate_id
        Only this stream (the seed's ``aggregateId``).
    tz
        IANA time zone of the hours and days (``"UTC"``, ``"Europe/Berlin"`` …).
    closed
        Which ends of the window are inclusive, as in polars: ``"both"`` (default, the seed's),
        ``"left"`` (``start <= occurred_at < end``, the half-open window of the other analyses, so
        consecutive windows never count an event twice), ``"right"`` or ``"none"``. ``daily`` lists the
        date of ``end`` itself only when ``end`` is inclusive.

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
    ...     result = analyze(lake, "MoneyDeposited", at(1, 0), at(4, 23))
    ...     half_open = analyze(lake, "MoneyDeposited", at(1, 9), at(3, 17), closed="left")
    >>> result.total_events, result.days, result.active_days
    (3, 4, 2)
    >>> result.average_per_day, result.average_per_calendar_day
    (1.5, 0.75)
    >>> result.hourly.filter(pl.col("count") > 0).rows()
    [(9, 2), (17, 1)]
    >>> half_open.total_events  # the event at 17:00 on the 3rd is at the excluded end
    2
    """
    zone = _zone(tz)
    where = _make_filter(start, end, event_type, aggregate_id=aggregate_id, closed=closed)
    assert where.start is not None and where.end is not None
    slots = local_slots(lake, where, zone)
    hourly = (
        pl.DataFrame({"hour": pl.int_range(0, 24, eager=True, dtype=pl.Int32)})
        .join(slots.group_by(pl.col("local").dt.hour().cast(pl.Int32).alias("hour")).agg(pl.col("count").sum()),
              on="hour", how="left")
        .with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
    )
    daily = _zero_fill_daily(
        slots.group_by(pl.col("local").dt.date().alias("date")).agg(pl.col("count").sum()),
        _calendar(where.start, where.end, zone, where.closed),
    )
    total = int(daily["count"].sum())
    active = int((daily["count"] > 0).sum())
    return PatternResult(
        event_type=where.types[0] if where.types and len(where.types) == 1 else where.types,
        start=where.start, end=where.end, tz=zone, aggregate_id=where.aggregate_id,
        total_events=total, hourly=hourly, daily=daily,
        average_per_day=total / active if active else 0.0,
        average_per_calendar_day=total / daily.height,
        closed=where.closed,
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
    slots = local_slots(lake, where, zone)
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
    slots = local_slots(lake, where, zone)
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
    slots = local_slots(lake, where, zone, by_type=True)
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
    if every not in GRAINS:
        raise InvalidArgumentError(f"every must be one of {sorted(GRAINS)!r}, got {every!r}")
    zone = _zone(tz)
    where = _make_filter(start, end, event_type, aggregate_type=aggregate_type)
    slots = local_slots(lake, where, zone, by_type=True)
    table = (
        slots.group_by(pl.col("local").dt.date().dt.truncate(GRAINS[every]).alias("period"), "event_type")
        .agg(pl.col("count").sum())
        .with_columns((pl.col("count") / pl.col("count").sum().over("period")).alias("share"))
        .sort("period", "event_type")
    )
    return MixResult(every, zone, table)
