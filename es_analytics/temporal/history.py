"""Time windows over the whole lake: events between two times, the system as of T, and diffs of states."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import polars as pl

from .._time import to_utc
from ..errors import InvalidArgumentError
from ..events import check_event_types
from .bounds import Bounds, LakeLike, make_bounds
from .states import Method, aggregate_type_of, states

__all__ = ["Clock", "diff", "events_between", "system_state"]

Clock = Literal["as_of", "known_at"]
_EVENT_FIELDS = ["position", "aggregate_version", "event_type", "occurred_at", "recorded_at", "event_id"]




def events_between(lake: LakeLike, start: datetime, end: datetime, *, types: str | Sequence[str] | None = None,
                   known_at: Any = None) -> pl.DataFrame:
    """Events with ``start <= occurred_at <= end`` (as known at ``known_at``), by ``occurred_at`` then position."""
    start, end = to_utc(start, "start"), to_utc(end, "end")
    if end < start:
        raise InvalidArgumentError(f"end ({end.isoformat()}) lies before start ({start.isoformat()})")
    bounds = make_bounds(None, known_at)
    clauses, params = bounds.where()
    clauses = ["occurred_at >= ?", "occurred_at <= ?", *clauses]
    params = [start, end, *params]
    listed = check_event_types(types)
    if listed is not None:
        clauses.append("list_contains(?, event_type)")
        params.append(listed)
    sql = f"SELECT * FROM events WHERE {' AND '.join(clauses)} ORDER BY occurred_at, position"
    return lake._present(lake._query(sql, params, what="events_between"))


def system_state(lake: LakeLike, as_of: datetime, *, known_at: Any = None,
                 aggregate_type: str | None = None) -> pl.DataFrame:
    """Every aggregate's events up to ``as_of``, grouped: ``aggregate_type, aggregate_id, version, events``.

    ``events`` is a list of structs (the event record) in version order: the whole system as it was.
    """
    bounds = make_bounds(to_utc(as_of, "as_of"), known_at)
    clauses, params = bounds.where()
    if aggregate_type is not None:
        from ..events import check_aggregate_type

        clauses.append("aggregate_type = ?")
        params.append(check_aggregate_type(aggregate_type))
    sql = f"SELECT * FROM events WHERE {' AND '.join(clauses)} ORDER BY aggregate_type, aggregate_id, aggregate_version"
    frame = lake._present(lake._query(sql, params, what="system_state"))
    record = [c for c in frame.columns if c not in ("aggregate_type", "aggregate_id")]
    return frame.group_by("aggregate_type", "aggregate_id", maintain_order=True).agg(
        pl.col("aggregate_version").max().alias("version"),
        pl.struct(record).alias("events"),
    )


def diff(lake: LakeLike, cls: type, t1: datetime, t2: datetime, *, clock: Clock = "as_of",
         as_of: datetime | None = None, known_at: Any = None, method: Method = "auto") -> pl.DataFrame:
    """What changed between two times: one row per aggregate and changed field, with its causes.

    With ``clock="as_of"`` the states valid at ``t1`` and ``t2`` are compared (both as known at
    ``known_at``); with ``clock="known_at"`` the states valid at ``as_of`` as the lake knew them at
    ``t1`` and at ``t2`` ("what did we learn this week about 15 February").

    Returns ``aggregate_id, change ('created' | 'changed'), field, old, new, old_version, new_version,
    events`` (old and new as text; ``events`` lists the events that made the difference).
    """
    t1, t2 = to_utc(t1, "t1"), to_utc(t2, "t2")
    if t2 < t1:
        raise InvalidArgumentError(f"t2 ({t2.isoformat()}) lies before t1 ({t1.isoformat()}); pass them in order")
    if clock == "as_of":
        if as_of is not None:
            raise InvalidArgumentError("with clock='as_of', t1 and t2 are the as_of times; leave as_of unset")
        before, after = make_bounds(t1, known_at), make_bounds(t2, known_at)
        window = ("occurred_at > ?", "occurred_at <= ?")
    elif clock == "known_at":
        if known_at is not None:
            raise InvalidArgumentError("with clock='known_at', t1 and t2 are the known_at times; leave known_at unset")
        before, after = make_bounds(as_of, t1), make_bounds(as_of, t2)
        window = ("recorded_at > ?", "recorded_at <= ?")
    else:
        raise InvalidArgumentError(f"clock must be 'as_of' or 'known_at', got {clock!r}")
    old = states(lake, cls, before, method)
    new = states(lake, cls, after, method)
    changes = _field_changes(old, new)
    causes = _causes(lake, aggregate_type_of(cls), after, window, (t1, t2))
    return changes.join(causes, on="aggregate_id", how="left").sort("aggregate_id", "field", maintain_order=True)


def _field_changes(old: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    fields = [c for c in new.columns if c not in ("aggregate_id", "version")]
    joined = new.join(old.rename({c: f"{c}__old" for c in old.columns if c != "aggregate_id"}),
                      on="aggregate_id", how="left")
    change = pl.when(pl.col("version__old").is_null()).then(pl.lit("created")).otherwise(pl.lit("changed"))
    frames = [
        joined.filter(pl.col(f).ne_missing(pl.col(f"{f}__old"))).select(
            "aggregate_id",
            change.alias("change"),
            pl.lit(f).alias("field"),
            _text(pl.col(f"{f}__old"), joined.schema[f"{f}__old"]).alias("old"),
            _text(pl.col(f), joined.schema[f]).alias("new"),
            pl.col("version__old").alias("old_version"),
            pl.col("version").alias("new_version"),
        )
        for f in fields
    ]
    schema = {"aggregate_id": pl.String, "change": pl.String, "field": pl.String, "old": pl.String,
              "new": pl.String, "old_version": pl.Int64, "new_version": pl.Int64}
    return pl.concat([f.cast(schema) for f in frames]) if frames else pl.DataFrame(schema=schema)  # type: ignore[arg-type]


def _text(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A value as text; decimals without their padding zeros (``175``, ``12.5``, not ``175.0000``)."""
    text = expr.cast(pl.String)
    if isinstance(dtype, pl.Decimal):
        text = text.str.replace(r"(\.\d*?)0+$", "${1}").str.replace(r"\.$", "")
    return text


def _causes(lake: LakeLike, aggregate_type: str, bounds: Bounds, window: tuple[str, str],
            times: tuple[datetime, datetime]) -> pl.DataFrame:
    clauses, params = bounds.where()
    where = " AND ".join(["aggregate_type = ?", *window, *clauses])
    sql = (f"SELECT aggregate_id, {', '.join(_EVENT_FIELDS)} FROM events WHERE {where} "
           "ORDER BY aggregate_id, aggregate_version")
    frame = lake._query(sql, [aggregate_type, *times, *params], what="diff").with_columns(
        pl.col("occurred_at", "recorded_at").dt.convert_time_zone("UTC"))
    return frame.group_by("aggregate_id", maintain_order=True).agg(pl.struct(_EVENT_FIELDS).alias("events"))
