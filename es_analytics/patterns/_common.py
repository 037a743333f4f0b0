"""Shared by the pattern analyses: input checks, the WHERE clause with bound parameters, the calendar."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from .._time import to_utc, to_utc_or_none
from ..errors import InvalidArgumentError
from ..events import check_aggregate_id, check_aggregate_type

if TYPE_CHECKING:
    from ..lake import Lake

Grain = Literal["day", "week", "month"]
Closed = Literal["both", "left", "right", "none"]
CLOSED = ("both", "left", "right", "none")
GRAINS = {"day": "1d", "week": "1w", "month": "1mo"}
SLOT_US = 900_000_000  # 15 minutes


# -- input checks -------------------------------------------------------------------------------
def _zone(tz: object) -> str:
    if not isinstance(tz, str) or not tz:
        raise InvalidArgumentError(f"tz must be an IANA time zone name such as 'Europe/Berlin', got {tz!r}")
    try:
        ZoneInfo(tz)
        pl.Series([datetime(2000, 1, 1)]).dt.replace_time_zone(tz)  # polars converts the slots: it must know it too
    except (ZoneInfoNotFoundError, ValueError, OSError, pl.exceptions.PolarsError) as exc:
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


def _closed(value: object) -> Closed:
    if value not in CLOSED:
        raise InvalidArgumentError(f"closed must be one of {', '.join(map(repr, CLOSED))}, got {value!r}")
    return value  # type: ignore[return-value]


def _window(start: object, end: object, *, optional: bool = False,
            closed: Closed = "left") -> tuple[datetime | None, datetime | None]:
    lo = to_utc_or_none(start, "start") if optional else to_utc(start, "start")
    hi = to_utc_or_none(end, "end") if optional else to_utc(end, "end")
    if lo is not None and hi is not None and (lo > hi or (lo == hi and closed != "both")):
        bounds = {"both": "both ends inclusive", "left": "end exclusive", "right": "start exclusive",
                  "none": "both ends exclusive"}[closed]
        raise InvalidArgumentError(f"start {lo.isoformat()} must be before end {hi.isoformat()} ({bounds})")
    return lo, hi


@dataclass(frozen=True)
class _Filter:
    """The WHERE clause shared by the analyses, with its bound parameters (no user text in SQL)."""

    start: datetime | None
    end: datetime | None
    types: tuple[str, ...] | None = None
    aggregate_id: str | None = None
    aggregate_type: str | None = None
    closed: Closed = "left"  # which bounds are inclusive: the analyses' half-open windows by default

    def sql(self, alias: str = "") -> tuple[str, list[Any]]:
        p = f"{alias}." if alias else ""
        clauses: list[str] = ["TRUE"]
        params: list[Any] = []
        if self.start is not None:
            clauses.append(f"{p}occurred_at {'>=' if self.closed in ('both', 'left') else '>'} ?")
            params.append(self.start)
        if self.end is not None:
            clauses.append(f"{p}occurred_at {'<=' if self.closed in ('both', 'right') else '<'} ?")
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
                 aggregate_type: object = None, optional: bool = False, closed: Closed = "left") -> _Filter:
    lo, hi = _window(start, end, optional=optional, closed=_closed(closed))
    return _Filter(
        lo, hi, _types(event_type),
        None if aggregate_id is None else check_aggregate_id(aggregate_id),
        None if aggregate_type is None else check_aggregate_type(aggregate_type),
        closed,
    )


def _calendar(start: datetime, end: datetime, tz: str, closed: Closed = "left") -> pl.Series:
    """Every local date the window touches: [start, end), or up to ``end`` itself when it is inclusive."""
    zone = ZoneInfo(tz)
    first = start.astimezone(zone).date()
    last = (end if closed in ("both", "right") else end - timedelta(microseconds=1)).astimezone(zone).date()
    return pl.date_range(first, last, "1d", eager=True).alias("date")


def _zero_fill_daily(counts: pl.DataFrame, calendar: pl.Series) -> pl.DataFrame:
    return (
        pl.DataFrame({"date": calendar})
        .join(counts, on="date", how="left")
        .with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
    )


def _label(where: _Filter) -> str | tuple[str, ...] | None:
    return where.types[0] if where.types and len(where.types) == 1 else where.types
