"""Every aggregate of a type at once, as of any time: the vectorised path and the fold fallback.

A class that declares ``reducers`` (a :class:`~es_analytics.temporal.reducers.Reducers`) is rebuilt by
one ``GROUP BY aggregate_id`` over the ``events`` view, or by a checkpoint plus the events after it (see
:mod:`.checkpoints`). A class without reducers is folded in Python, stream by stream, through its own
``when``-handlers — the same code that ``lake.aggregate`` runs, so the two paths cannot drift apart.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import polars as pl

from ..errors import InvalidArgumentError
from ..events import check_aggregate_type
from .bounds import Bounds, LakeLike
from .reducers import Reducers

__all__ = ["FOLD_WARN_EVENTS", "Method", "PerformanceWarning", "aggregate_type_of", "reducers_of", "scan_sql", "states"]

Method = Literal["auto", "scan", "checkpoint", "fold"]
_METHODS = ("auto", "scan", "checkpoint", "fold")
FOLD_WARN_EVENTS = 1_000_000


class PerformanceWarning(UserWarning):
    """Warned when an allowed call will be slow and a cheaper one exists (it names the cheaper one)."""


def aggregate_type_of(cls: type) -> str:
    """The stream type a class's events are stored under (its ``aggregate_type``, else its name)."""
    if not isinstance(cls, type):
        raise InvalidArgumentError(f"expected an aggregate class, got {type(cls).__name__} {cls!r:.60}")
    return check_aggregate_type(getattr(cls, "aggregate_type", None) or cls.__name__)


def reducers_of(cls: type) -> Reducers | None:
    """The class's declared ``reducers``, or None when it only has a fold."""
    found = getattr(cls, "reducers", None)
    if found is None:
        return None
    if not isinstance(found, Reducers):
        raise InvalidArgumentError(
            f"{cls.__name__}.reducers must be a Reducers(...) declaration, got {type(found).__name__}"
        )
    return found


def scan_sql(reducers: Reducers, bounds: Bounds, aggregate_type: str) -> tuple[str, list[Any]]:
    """The one query of the vectorised path: filter on both clocks, reduce per aggregate in version order."""
    clauses, params = bounds.where()
    where = " AND ".join(["aggregate_type = ?", *clauses])
    select = ",\n  ".join(["aggregate_id", "max(aggregate_version) AS version", *reducers.final_select()])
    sql = f"SELECT\n  {select}\nFROM events\nWHERE {where}\nGROUP BY aggregate_id\nORDER BY aggregate_id"
    return sql, [aggregate_type, *params]


def states(lake: LakeLike, cls: type, bounds: Bounds, method: Method = "auto") -> pl.DataFrame:
    """Every aggregate of ``cls`` within ``bounds``: ``aggregate_id``, ``version``, one column per field."""
    if method not in _METHODS:
        raise InvalidArgumentError(f"method must be one of {', '.join(map(repr, _METHODS))}, got {method!r}")
    aggregate_type = aggregate_type_of(cls)
    reducers = reducers_of(cls)
    if method == "fold" or (reducers is None and method == "auto"):
        return fold_states(lake, cls, bounds)
    if reducers is None:
        raise InvalidArgumentError(
            f"method={method!r} needs reducers, and {cls.__name__} declares none; use method='fold' or 'auto'"
        )
    from . import checkpoints

    if method == "checkpoint" or (method == "auto" and checkpoints.exists(lake, aggregate_type, reducers)):
        return checkpoints.states(lake, reducers, aggregate_type, bounds)
    sql, params = scan_sql(reducers, bounds, aggregate_type)
    return lake._query(sql, params, what=f"states of {aggregate_type}")


# -- the fold fallback ------------------------------------------------------------------------
def fold_states(lake: LakeLike, cls: type, bounds: Bounds) -> pl.DataFrame:
    """Replay every stream of the type through the class's handlers (the repository's fold, stream by stream)."""
    from ..aggregates import Aggregate
    from ..repository import domain_events

    if not issubclass(cls, Aggregate):
        raise InvalidArgumentError(f"{cls.__name__} is not an Aggregate subclass and declares no reducers")
    aggregate_type = aggregate_type_of(cls)
    sealed = sum(f.rows for f in lake._store.manifest().files if f.aggregate_type == aggregate_type)
    if sealed > FOLD_WARN_EVENTS:
        warnings.warn(
            f"states({cls.__name__}) folds {sealed:,} events in Python, which takes minutes and holds them all "
            f"in memory; declare {cls.__name__}.reducers (es_analytics.temporal) for a one-query rebuild",
            PerformanceWarning, stacklevel=4,
        )
    clauses, params = bounds.where()
    where = " AND ".join(["aggregate_type = ?", *clauses])
    sql = f"SELECT * FROM events WHERE {where} ORDER BY aggregate_id, aggregate_version"
    frame = lake._present(lake._query(sql, [aggregate_type, *params], what=f"events of {aggregate_type}"))
    rows = []
    for group in frame.partition_by("aggregate_id", maintain_order=True):
        aggregate = cls.replay(group["aggregate_id"][0], domain_events(group))
        rows.append({"aggregate_id": aggregate.aggregate_id, "version": aggregate.version, **aggregate.state()})
    if not rows:
        fields = list(cls(f"{cls.__name__}-empty").state())
        return pl.DataFrame(schema={"aggregate_id": pl.String, "version": pl.Int64, **{f: pl.Null for f in fields}})
    return pl.DataFrame(rows, infer_schema_length=None)
