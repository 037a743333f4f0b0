"""Projections (read models) defined once, built as polars DataFrames, and kept current incrementally.

Two kinds cover the read models of an event-sourced application:

- :class:`StateProjection` — one row per aggregate, each column a reducer over the aggregate's events
  (``Sum``, ``Count``, ``Last``, ``First``, ``Min``, ``Max`` from :mod:`es_analytics.temporal`), e.g. an
  account summary;
- :class:`EventProjection` — one row per (selected) event, with columns taken from the event and
  :class:`Running` totals per aggregate in stream order, e.g. an account's transactions with the balance
  after each one.

A full build (:func:`build`, ``lake.project``) is one DuckDB query over the ``events`` view (columnar,
never a Python loop per event). ``lake.materialize`` stores a projection in the lake and ``lake.refresh``
keeps it current from the events after its checkpoint (:mod:`es_analytics.materialized`); reducers are
mergeable (sums add, "last" keeps the value with the highest version), so a refreshed table equals a full
rebuild exactly.

Projections read the payloads as stored, like the temporal engine's reducers: for an event type with
old schema versions, give ``Json`` the other versions' paths as ``alternatives``.

Personal fields (see :mod:`es_analytics.privacy`) are stored as they are in the events, encrypted, and
opened on read, so a materialised projection never holds plaintext personal data and a forgotten subject
reads as ``[erased]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from .errors import InvalidArgumentError
from .events import check_identifier
from .privacy import ENVELOPE_KEY, Privacy, SubjectCipher
from .temporal.bounds import Bounds, LakeLike
from .temporal.reducers import Column, Const, Json, Neg, Reducer, Reducers, Value, _check_dtype

__all__ = [
    "EventProjection",
    "Projection",
    "Running",
    "StateProjection",
    "build",
    "latest_sql",
    "open_personal",
    "registered",
]

_RESERVED = {"events", "events_upcast"}
_REGISTRY: dict[str, Projection] = {}
ValueSpec = Value | Mapping[str, Value]


def _value_sql(spec: ValueSpec, what: str) -> tuple[str, list[str] | None]:
    """SQL of a value (or a CASE over event types) and the event types a mapping names."""
    if isinstance(spec, Value):
        return spec.sql(), None
    if isinstance(spec, Mapping) and spec and all(isinstance(v, Value) for v in spec.values()):
        for event_type in spec:
            Const(event_type)  # rejects non-text and control characters
        cases = " ".join(f"WHEN {Const(t).sql()} THEN {v.sql()}" for t, v in spec.items())
        return f"CASE event_type {cases} END", list(spec)
    raise InvalidArgumentError(f"{what} must be Json(...), Const(...), Column(...) or a mapping of event type to one")


def _types_sql(types: Sequence[str]) -> str:
    return ", ".join(Const(t).sql() for t in types)


def _q(name: str) -> str:
    return f'"{name}"'


@dataclass(frozen=True)
class Running:
    """A running total per aggregate in stream (version) order, e.g. the balance after each transaction.

    ``value`` is the per-event amount (a value or a mapping of event type to value, such as
    ``-Json("amount")`` for withdrawals); ``dtype`` the SQL type of the total (DECIMAL stays exact).
    """

    value: ValueSpec
    dtype: str = "DECIMAL(38,4)"

    def __post_init__(self) -> None:
        _value_sql(self.value, "Running value")
        object.__setattr__(self, "dtype", _check_dtype(self.dtype, "Running dtype"))


class Projection:
    """What every projection has: a ``name`` (an identifier: folder and SQL view name) and its columns."""

    kind: Literal["state", "events"]
    name: str
    aggregate_type: str
    key: str
    columns: list[str]
    personal: dict[str, str]

    def _check_common(self, name: str, aggregate_type: str, key: str) -> None:
        check_identifier(name, "a projection name")
        if name.lower() in _RESERVED:
            raise InvalidArgumentError(f"{name!r} is the name of a lake view; pick another projection name")
        check_identifier(aggregate_type, "aggregate_type")
        check_identifier(key, "the key column name")
        self.name, self.aggregate_type, self.key = name, aggregate_type, key

    def fingerprint(self) -> str:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, columns={self.columns!r})"


class StateProjection(Projection):
    """One row per aggregate of ``aggregate_type``; each column a reducer over its events.

    Parameters
    ----------
    name
        The projection's name: its folder under ``projections/`` and its SQL view.
    aggregate_type
        The stream type it reads.
    fields
        The reducers, by column name.
    columns
        The public columns in order: ``key``, ``"version"`` (the aggregate's last version) and field names.
        Fields left out are hidden helpers.
    key
        The name under which ``aggregate_id`` is shown (e.g. ``"account_id"``).
    personal
        Columns that hold a personal payload field, mapped to its JSON path: they are stored encrypted
        and opened on read (the column's reducer must be ``Last`` or ``First``).
    """

    kind: Literal["state", "events"] = "state"

    def __init__(self, name: str, *, aggregate_type: str, fields: Reducers, columns: Sequence[str],
                 key: str = "aggregate_id", personal: Mapping[str, str] | None = None) -> None:
        self._check_common(name, aggregate_type, key)
        if not isinstance(fields, Reducers):
            raise InvalidArgumentError(f"fields must be a Reducers(...) declaration, got {type(fields).__name__}")
        extra: dict[str, Reducer] = {}
        self.personal = dict(personal or {})
        for column, path in self.personal.items():
            reducer = fields.fields.get(column)
            if reducer is None or reducer.kind not in ("last", "first"):
                raise InvalidArgumentError(f"personal column {column!r} must be a Last or First field")
            _check_path(path)
            extra[f"{column}__e"] = Reducer(reducer.kind, tuple((t, Column("event_id")) for t in reducer.event_types),
                                            "VARCHAR")
        self.reducers = Reducers(**fields.fields, **extra)
        allowed = {key, "version", *fields.names}
        self.columns = list(columns)
        unknown = [c for c in self.columns if c not in allowed]
        if unknown or key not in self.columns or len(set(self.columns)) != len(self.columns):
            raise InvalidArgumentError(
                f"columns must name {key!r}, 'version' and fields {fields.names!r} once each, got {list(columns)!r}")
        _REGISTRY[name] = self

    def fingerprint(self) -> str:
        return f"state:{self.aggregate_type}:{self.reducers.fingerprint()}"

    def _keys(self) -> list[str]:
        return [f"{n}__k" for n, r in self.reducers.fields.items() if r.kind in ("last", "first")]

    def stored_columns(self) -> list[str]:
        return ["aggregate_id", "version", *self.reducers.names, *self._keys()]

    def _payload_values(self) -> dict[str, tuple[str, list[str]]]:
        """Each distinct payload value (``Json``) the reducers read: its SQL, a column name, its event types.

        Extracting each once, only on the event types that use it, parses a payload at most once per
        value instead of once per reducer (the amount feeds three sums).
        """
        found: dict[str, tuple[str, list[str]]] = {}
        for reducer in self.reducers.fields.values():
            for event_type, value in reducer.values:
                leaf = value.inner if isinstance(value, Neg) else value
                if isinstance(leaf, Json):
                    column, types = found.setdefault(leaf.sql(), (f"_v{len(found)}", []))
                    types.append(event_type)
        return found

    def _events_sql(self, source: str, where: list[str]) -> tuple[str, Any]:
        """The events of the type with their payload values extracted once, and the value rewriter."""
        values = self._payload_values()
        extracted = [f"CASE WHEN event_type IN ({_types_sql(sorted(set(types)))}) THEN {sql} END AS {column}"
                     for sql, (column, types) in values.items()]
        columns = ["aggregate_id", "aggregate_version", "event_type", "event_id", "position", "occurred_at",
                   "recorded_at", "schema_version", *extracted]
        order = sorted(values, key=len, reverse=True)

        def rewrite(name: str, reducer: Reducer) -> str:
            text = reducer.value_sql()
            for sql in order:
                text = text.replace(sql, values[sql][0])
            return text

        conditions = " AND ".join(["aggregate_type = ?", *where])
        return f"SELECT {', '.join(columns)} FROM {source} WHERE {conditions}", rewrite

    def full_sql(self, source: str, where: list[str]) -> str:
        """Every aggregate's stored row (finished values plus the merge keys) from ``source``."""
        events, rewrite = self._events_sql(source, where)
        partial = ", ".join(["aggregate_id", "max(aggregate_version) AS version",
                             *self.reducers.partial_select(rewrite)])
        finish = ", ".join(["aggregate_id", "version", *self.reducers.finish_select(), *map(_q, self._keys())])
        return (f"WITH e AS ({events}), p AS (SELECT {partial} FROM e GROUP BY aggregate_id) "
                f"SELECT {finish} FROM p ORDER BY aggregate_id")

    def refresh_sql(self, source: str, old: str) -> str:
        """The new rows of the aggregates that have events in ``source``: their stored rows merged with those."""
        events, rewrite = self._events_sql(source, [])
        partial = ", ".join(["aggregate_id", "max(aggregate_version) AS version",
                             *self.reducers.partial_select(rewrite)])
        merged = ", ".join(["aggregate_id", "max(version) AS version", *self.reducers.merge_select()])
        finish = ", ".join(["aggregate_id", "version", *self.reducers.finish_select(), *map(_q, self._keys())])
        return (f"WITH e AS ({events}), d AS (SELECT {partial} FROM e GROUP BY aggregate_id), "
                f"o AS ({latest_sql(old, touched='d')}), "
                f"m AS (SELECT {merged}, NOT bool_or(__stored) AS __new FROM (SELECT *, TRUE AS __stored FROM o "
                "UNION ALL BY NAME SELECT *, FALSE AS __stored FROM d) GROUP BY aggregate_id) "
                f"SELECT {finish}, __new FROM m ORDER BY aggregate_id")


def latest_sql(view: str, *, touched: str | None = None) -> str:
    """The newest row per aggregate among a state projection's files (each refresh writes changed rows anew).

    With ``touched`` (a relation with ``aggregate_id``), only those aggregates: a join, which DuckDB runs
    faster here than ``IN (subquery)`` (measured 0.20 s against 0.27 s on 526,000 stored rows).
    """
    source = view if touched is None else (
        f"(SELECT s.* FROM {view} AS s JOIN (SELECT DISTINCT aggregate_id FROM {touched}) USING (aggregate_id))")
    return (f"SELECT * FROM {source} "
            "QUALIFY row_number() OVER (PARTITION BY aggregate_id ORDER BY version DESC) = 1")


def _check_path(path: object) -> str:
    """A personal column's JSON path, validated like a :class:`Json` path."""
    if not isinstance(path, str):
        raise InvalidArgumentError(f"a personal field's path must be text, got {path!r}")
    return Json(path).path


class EventProjection(Projection):
    """One row per event of ``event_types`` in ``aggregate_type``, ordered by ``position``.

    Parameters
    ----------
    columns
        The columns after ``key`` and ``position``, in order: a value (``Json``, ``Const``, ``Column``),
        a mapping of event type to value, or a :class:`Running` total.
    personal
        Columns that hold a personal payload field (a ``Json`` value), mapped to its JSON path: stored
        encrypted, opened on read with the row's ``event_id`` (which must be one of the columns).
    where
        Per event type, a condition an event of that type must meet to get a row, e.g.
        ``{"AccountOpened": Json("initialDeposit", "DECIMAL(18,4)") > 0}``; events of other types always
        get one. A :class:`Running` total adds up the rows kept.
    """

    kind: Literal["state", "events"] = "events"

    def __init__(self, name: str, *, aggregate_type: str, event_types: Sequence[str],
                 columns: Mapping[str, ValueSpec | Running], key: str = "aggregate_id",
                 personal: Mapping[str, str] | None = None, where: Mapping[str, Value] | None = None) -> None:
        self._check_common(name, aggregate_type, key)
        self.event_types = [check_event_type(t) for t in event_types]
        if not self.event_types:
            raise InvalidArgumentError("event_types must name at least one event type")
        self.values: dict[str, str] = {}
        self.running: dict[str, tuple[str, str]] = {}
        for column, spec in columns.items():
            check_identifier(column, "a projection column name")
            if column in (key, "position", "aggregate_id") or column.endswith("__v"):
                raise InvalidArgumentError(f"{column!r} is a reserved column name in an event projection")
            if isinstance(spec, Running):
                self.running[column] = (_value_sql(spec.value, column)[0], spec.dtype)
            else:
                self.values[column] = _value_sql(spec, column)[0]
        self.personal = {c: _check_path(p) for c, p in (personal or {}).items()}
        if self.personal and "event_id" not in self.values:
            raise InvalidArgumentError("an event projection with personal columns needs an 'event_id' column")
        self.columns = [key, "position", *columns]
        self._order = list(columns)
        self.where = _where_sql(where or {}, self.event_types)
        _REGISTRY[name] = self

    def fingerprint(self) -> str:
        import hashlib

        text = repr((self.aggregate_type, self.event_types, self.values, self.running, self._order))
        text += "" if self.where is None else self.where
        return "events:" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def stored_columns(self) -> list[str]:
        return ["aggregate_id", "position", *self._order]

    def _select(self, running: Mapping[str, str]) -> str:
        items = ["aggregate_id", "position"]
        for column in self._order:
            if column in self.values:
                items.append(f"{self.values[column]} AS {_q(column)}")
            else:
                items.append(f"CAST({running[column]} AS {self.running[column][1]}) AS {_q(column)}")
        return ", ".join(items)

    def full_sql(self, source: str, where: list[str]) -> str:
        window = "OVER (PARTITION BY aggregate_id ORDER BY aggregate_version ROWS UNBOUNDED PRECEDING)"
        running = {c: f"sum({v}) {window}" for c, (v, _) in self.running.items()}
        conditions = [*self._conditions(), *where]
        return f"SELECT {self._select(running)} FROM {source} WHERE {' AND '.join(conditions)} ORDER BY position"

    def _conditions(self) -> list[str]:
        """Which events get a row: the aggregate type (a parameter), the event types, the ``where``."""
        types = ["aggregate_type = ?", f"event_type IN ({_types_sql(self.event_types)})"]
        return types if self.where is None else [*types, self.where]

    def refresh_sql(self, source: str, carry: str | None) -> str:
        """The rows of the events in ``source``; running totals continue from the ``carry`` files."""
        window = "OVER (PARTITION BY aggregate_id ORDER BY aggregate_version ROWS UNBOUNDED PRECEDING)"
        conditions = " AND ".join(self._conditions())
        if not (carry and self.running):
            running = {c: f"sum({v}) {window}" for c, (v, _) in self.running.items()}
            return f"SELECT {self._select(running)} FROM {source} WHERE {conditions} ORDER BY position"
        running = {c: f"coalesce(c.{_q(c)}, 0) + sum({v}) {window}" for c, (v, _) in self.running.items()}
        last = ", ".join(f"arg_max({_q(c)}, position) AS {_q(c)}" for c in self.running)
        before = (f"(SELECT aggregate_id, {last} FROM {carry} JOIN (SELECT DISTINCT aggregate_id FROM {source}) "
                  "USING (aggregate_id) GROUP BY aggregate_id) AS c")
        return (f"SELECT {self._select(running)} FROM {source} LEFT JOIN {before} USING (aggregate_id) "
                f"WHERE {conditions} ORDER BY position")

    def carry_sql(self, rows: str) -> str:
        """Each aggregate's latest running totals in ``rows`` (what the next refresh continues from)."""
        cols = ", ".join(f"arg_max({_q(c)}, position) AS {_q(c)}" for c in self.running)
        return f"SELECT aggregate_id, max(position) AS position, {cols} FROM {rows} GROUP BY aggregate_id"


def _where_sql(where: Mapping[str, Value], event_types: Sequence[str]) -> str | None:
    """The SQL of an event projection's row conditions (None without any)."""
    if not isinstance(where, Mapping):
        raise InvalidArgumentError(f"where must map event types to conditions, got {type(where).__name__}")
    if not where:
        return None
    cases = []
    for event_type, condition in where.items():
        if event_type not in event_types:
            raise InvalidArgumentError(
                f"where names {event_type!r}, which is not one of the event types {list(event_types)!r}")
        if not isinstance(condition, Value) or condition.dtype != "BOOLEAN":
            raise InvalidArgumentError(f"the condition for {event_type!r} must be a BOOLEAN value such as "
                                       f"Json('amount', 'DECIMAL(18,4)') > 0, got {condition!r}")
        cases.append(f"WHEN {Const(event_type).sql()} THEN coalesce({condition.sql()}, FALSE)")
    return f"(CASE event_type {' '.join(cases)} ELSE TRUE END)"


def check_event_type(value: object) -> str:
    if not isinstance(value, str) or not value or any(ord(c) < 32 for c in value) or len(value) > 255:
        raise InvalidArgumentError(f"an event type must be non-empty text without control characters, got {value!r}")
    return value


def registered() -> dict[str, Projection]:
    """Projections defined in this process, by name (``lake.refresh`` finds them here; the last definition
    of a name wins)."""
    return dict(_REGISTRY)


# -- opening personal fields -----------------------------------------------------------------------
def open_personal(frame: pl.DataFrame, privacy: Privacy, column: str, id_column: str, path: str) -> pl.DataFrame:
    """Replace encrypted values of ``column`` by their plaintext (or ``[erased]``)."""
    if frame.height == 0 or column not in frame.columns:
        return frame
    values = frame[column]
    hits = values.str.starts_with('{"' + ENVELOPE_KEY + '"').fill_null(False).arg_true()
    if hits.len() == 0:
        return frame
    opened = _open_values(privacy, values.gather(hits).to_list(), frame[id_column].gather(hits).to_list(), path)
    out = values.to_list()
    for row, value in zip(hits.to_list(), opened):
        out[row] = value
    return frame.with_columns(pl.Series(column, out, pl.String))


def _open_values(privacy: Privacy, texts: list[str], event_ids: list[str], path: str) -> list[str | None]:
    envelopes = [json.loads(t) for t in texts]
    keys = privacy.key_store.keys_for(sorted({e["sub"] for e in envelopes}))
    out: list[str | None] = []
    for envelope, event_id in zip(envelopes, event_ids):
        value = SubjectCipher.open_value(envelope, event_id, path, keys)
        out.append(value if isinstance(value, str) or value is None else json.dumps(value))
    return out


def _present(lake: LakeLike, projection: Projection, frame: pl.DataFrame) -> pl.DataFrame:
    privacy: Privacy = lake._privacy  # type: ignore[attr-defined]
    for column, path in projection.personal.items():
        id_column = f"{column}__e" if projection.kind == "state" else "event_id"
        frame = open_personal(frame, privacy, column, id_column, path)
    return frame.rename({"aggregate_id": projection.key}).select(projection.columns)


# -- full builds -------------------------------------------------------------------------------
def _check(projection: object) -> Projection:
    if not isinstance(projection, Projection):
        raise InvalidArgumentError(
            f"expected a projection (StateProjection or EventProjection), got {type(projection).__name__} "
            f"{projection!r:.60}")
    return projection


def _stored(lake: LakeLike, projection: Projection, bounds: Bounds) -> pl.DataFrame:
    clauses, params = bounds.where()
    sql = projection.full_sql("events", clauses)  # type: ignore[attr-defined]
    return lake._query(sql, [projection.aggregate_type, *params], what=f"projection {projection.name}")


def build(lake: LakeLike, projection: Projection, bounds: Bounds) -> pl.DataFrame:
    """The projection built from the events within ``bounds`` (one DuckDB query)."""
    _check(projection)
    return _present(lake, projection, _stored(lake, projection, bounds))
