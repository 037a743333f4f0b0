"""Declarative reducers: an aggregate type's state as fields reduced over its events, compiled to SQL.

An aggregate class states its fields once, for example::

    reducers = Reducers(
        balance=Sum({"AccountOpened": Json("initialDeposit", "DECIMAL(18,4)"),
                     "MoneyDeposited": Json("amount", "DECIMAL(18,4)"),
                     "MoneyWithdrawn": -Json("amount", "DECIMAL(18,4)")}, dtype="DOUBLE"),
        status=Last({"AccountOpened": Const("active"), "AccountClosed": Const("closed")}, default="pending"),
        account_holder=Last(Json("accountHolder"), on="AccountOpened"),
    )

Each field compiles to one DuckDB aggregate with a ``FILTER`` on its event types, so the state of every
aggregate of the type is one ``GROUP BY aggregate_id`` over the ``events`` view. "Last" and "first" are
taken in stream (``aggregate_version``) order, as the fold applies events. Every reducer is also
*mergeable*: :meth:`Reducers.partial_sql` reduces any subset of events to a partial state and
:meth:`Reducers.merge_sql` combines partial states exactly, which is what the checkpoints rest on.

The declarations are code, not user input, but they are still validated (event types, JSON paths, SQL
types, column names) before any of them is written into SQL; times and positions are always bound.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InvalidArgumentError
from ..events import check_event_type, check_identifier

__all__ = [
    "Column",
    "Const",
    "Count",
    "First",
    "Json",
    "Last",
    "Max",
    "Min",
    "Reducer",
    "Reducers",
    "Sum",
    "Value",
]

Kind = Literal["last", "first", "sum", "count", "min", "max"]
_DTYPE = re.compile(r"BIGINT|INTEGER|DOUBLE|VARCHAR|BOOLEAN|DATE|TIMESTAMPTZ|DECIMAL\(([1-9]|[1-3][0-9]),([0-9]|[1-3][0-9])\)")
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*|\[[0-9]{1,6}\])*")
_COLUMNS = {
    "occurred_at": "TIMESTAMPTZ",
    "recorded_at": "TIMESTAMPTZ",
    "position": "BIGINT",
    "aggregate_version": "BIGINT",
    "event_type": "VARCHAR",
    "event_id": "VARCHAR",
    "schema_version": "INTEGER",
}


def _check_dtype(dtype: object, name: str) -> str:
    text = dtype.replace(" ", "").upper() if isinstance(dtype, str) else dtype
    if not isinstance(text, str) or not _DTYPE.fullmatch(text):
        raise InvalidArgumentError(
            f"{name} must be one of BIGINT, INTEGER, DOUBLE, VARCHAR, BOOLEAN, DATE, TIMESTAMPTZ, "
            f"DECIMAL(p,s), got {dtype!r}"
        )
    return text


# -- value expressions ------------------------------------------------------------------------
class Value:
    """An expression evaluated on one event: a JSON field of its payload, a constant or a column."""

    dtype: str

    def sql(self) -> str:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def __neg__(self) -> Value:
        return Neg(self)

    def __gt__(self, bound: object) -> Value:
        """``value > bound`` for a number ``bound``: a BOOLEAN value (e.g. a projection's row filter)."""
        return Greater(self, bound)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Json(Value):
    """A field of the event's ``data``, e.g. ``Json("amount", "DECIMAL(18,4)")`` or ``Json("profile.email")``.

    Alternative paths (``Json("email", alternatives=("profile.email",))``) are tried in order, which is
    how one reducer reads several schema versions of a payload. ``default`` stands in where the payload
    lacks the field (``Json("preferences.newsletter", "BOOLEAN", default=False)``).
    """

    path: str
    dtype: str = "VARCHAR"
    alternatives: tuple[str, ...] = ()
    default: str | int | float | bool | None = None

    def __post_init__(self) -> None:
        for path in (self.path, *self.alternatives):
            if not isinstance(path, str) or not _PATH.fullmatch(path):
                raise InvalidArgumentError(
                    f"a JSON path must be field names joined by '.' (and [n] indexes), got {path!r}"
                )
        object.__setattr__(self, "dtype", _check_dtype(self.dtype, "Json dtype"))

    def sql(self) -> str:
        # Paths were validated above: letters, digits, '_', '.', '[n]' only, so quoting is safe.
        parts = [f"json_extract_string(data, '$.{p}')" for p in (self.path, *self.alternatives)]
        text = parts[0] if len(parts) == 1 else f"coalesce({', '.join(parts)})"
        if self.dtype == "BOOLEAN":
            text = f"CAST({text} AS BOOLEAN)"
        elif self.dtype != "VARCHAR":
            text = f"TRY_CAST({text} AS {self.dtype})"
        if self.default is not None:
            text = f"coalesce({text}, {_literal(self.default, self.dtype)})"
        return text


@dataclass(frozen=True)
class Const(Value):
    """A constant, e.g. ``Const("closed")`` for the status an ``AccountClosed`` event sets."""

    value: str | int | float | bool | None
    dtype: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        v = self.value
        if isinstance(v, bool):
            dtype = "BOOLEAN"
        elif isinstance(v, int):
            dtype = "BIGINT"
        elif isinstance(v, float):
            dtype = "DOUBLE"
        elif isinstance(v, str) or v is None:
            dtype = "VARCHAR"
        else:
            raise InvalidArgumentError(f"Const takes str, int, float, bool or None, got {type(v).__name__}")
        object.__setattr__(self, "dtype", self.dtype and _check_dtype(self.dtype, "Const dtype") or dtype)

    def sql(self) -> str:
        return _literal(self.value, self.dtype)


@dataclass(frozen=True)
class Column(Value):
    """A column of the event record: ``occurred_at``, ``recorded_at``, ``position``, ``aggregate_version``…"""

    name: str
    dtype: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.name not in _COLUMNS:
            raise InvalidArgumentError(f"Column must be one of {sorted(_COLUMNS)}, got {self.name!r}")
        object.__setattr__(self, "dtype", _COLUMNS[self.name])

    def sql(self) -> str:
        return self.name


@dataclass(frozen=True)
class Neg(Value):
    """The negation of a numeric value (``-Json("amount")`` for withdrawals)."""

    inner: Value
    dtype: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", self.inner.dtype)

    def sql(self) -> str:
        return f"(-{self.inner.sql()})"


@dataclass(frozen=True)
class Greater(Value):
    """Whether a numeric value exceeds a number (``Json("initialDeposit", "DECIMAL(18,4)") > 0``)."""

    inner: Value
    bound: int | float
    dtype: str = field(default="BOOLEAN", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.bound, bool) or not isinstance(self.bound, (int, float)) or self.bound != self.bound:
            raise InvalidArgumentError(f"a value can only be compared with a number, got {self.bound!r}")

    def sql(self) -> str:
        return f"({self.inner.sql()} > {self.bound!r})"


def _literal(value: object, dtype: str) -> str:
    if value is None:
        return f"CAST(NULL AS {dtype})"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return f"CAST({value!r} AS {dtype})"
    text = str(value)
    if any(ord(c) < 32 for c in text):
        raise InvalidArgumentError(f"a constant must not hold control characters, got {text!r}")
    return "'" + text.replace("'", "''") + "'"


# -- reducers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reducer:
    """One state field: how the values of its events reduce to one value per aggregate."""

    kind: Kind
    values: tuple[tuple[str, Value | None], ...]
    dtype: str
    default: Any = None

    @property
    def event_types(self) -> list[str]:
        return [t for t, _ in self.values]

    def value_sql(self) -> str:
        """The per-event value: one expression, or a CASE over the event types."""
        exprs = {v.sql() if v is not None else "NULL" for _, v in self.values}
        if len(exprs) == 1:
            expr = exprs.pop()
            if all(isinstance(v, (Const, Column)) or v is None for _, v in self.values):
                return expr
            # Parse the payload only on rows of the reducer's own types (DuckDB would otherwise compute
            # the aggregate's input for every row before applying its FILTER).
            return f"CASE WHEN event_type IN ({_types_sql(self)}) THEN {expr} END"
        cases = " ".join(f"WHEN {_literal(t, 'VARCHAR')} THEN {v.sql() if v else 'NULL'}" for t, v in self.values)
        return f"CASE event_type {cases} END"

    def value_dtype(self) -> str:
        types = {v.dtype for _, v in self.values if v is not None}
        if len(types) > 1:
            raise InvalidArgumentError(f"the values of one reducer must share a type, got {sorted(types)}")
        return types.pop() if types else "BIGINT"


def _make(kind: Kind, value: Value | Mapping[str, Value] | None, on: str | Sequence[str] | None,
          dtype: str | None, default: Any) -> Reducer:
    if isinstance(value, Mapping):
        if on is not None:
            raise InvalidArgumentError("give either a mapping of event type to value, or a value and on=, not both")
        pairs: list[tuple[str, Value | None]] = list(value.items())
    else:
        if on is None:
            raise InvalidArgumentError(f"{kind}: on= must name the event types the value is taken from")
        types = [on] if isinstance(on, str) else list(on)
        pairs = [(t, value) for t in types]
    if not pairs:
        raise InvalidArgumentError(f"{kind}: at least one event type is needed")
    pairs = [(check_event_type(event_type, f"{kind}: the event type"), item) for event_type, item in pairs]
    for event_type, item in pairs:
        if item is not None and not isinstance(item, Value):
            raise InvalidArgumentError(
                f"{kind}: the value for {event_type!r} must be Json(...), Const(...) or Column(...), got {item!r}"
            )
    reducer = Reducer(kind, tuple(pairs), "", default)
    out = dtype if dtype is not None else ("BIGINT" if kind == "count" else reducer.value_dtype())
    if dtype is None and kind == "sum":
        out = _sum_type(reducer) or out  # sums of DECIMAL(18,s) widen to DECIMAL(38,s), as DuckDB's do
    return Reducer(kind, tuple(pairs), _check_dtype(out, f"{kind} dtype"), default)


def Last(value: Value | Mapping[str, Value], on: str | Sequence[str] | None = None, *,
         dtype: str | None = None, default: Any = None) -> Reducer:
    """The value of the last matching event in stream order (``default`` if there is none)."""
    return _make("last", value, on, dtype, default)


def First(value: Value | Mapping[str, Value], on: str | Sequence[str] | None = None, *,
          dtype: str | None = None, default: Any = None) -> Reducer:
    """The value of the first matching event in stream order (``default`` if there is none)."""
    return _make("first", value, on, dtype, default)


def Sum(value: Value | Mapping[str, Value], on: str | Sequence[str] | None = None, *,
        dtype: str | None = None, default: Any = 0) -> Reducer:
    """The sum of the matching events' values (``default``, 0, if there is none).

    Sum DECIMAL values for money: merging partial sums is then exact, so checkpoints give results
    identical to a full scan (a DOUBLE sum depends on the order of additions).
    """
    return _make("sum", value, on, dtype, default)


def Count(on: str | Sequence[str]) -> Reducer:
    """How many matching events there are."""
    return _make("count", None, on, "BIGINT", 0)


def Min(value: Value | Mapping[str, Value], on: str | Sequence[str] | None = None, *,
        dtype: str | None = None, default: Any = None) -> Reducer:
    """The smallest value among the matching events."""
    return _make("min", value, on, dtype, default)


def Max(value: Value | Mapping[str, Value], on: str | Sequence[str] | None = None, *,
        dtype: str | None = None, default: Any = None) -> Reducer:
    """The largest value among the matching events."""
    return _make("max", value, on, dtype, default)


# -- the set of fields ------------------------------------------------------------------------
class Reducers:
    """The state fields of an aggregate type, each a :class:`Reducer`, in declaration order.

    Examples
    --------
    >>> r = Reducers(deposits=Count(on="MoneyDeposited"), holder=Last(Json("accountHolder"), on="AccountOpened"))
    >>> r.names
    ['deposits', 'holder']
    >>> print(r.final_select()[0])
    CAST(coalesce(count(*) FILTER (WHERE event_type IN ('MoneyDeposited')), CAST(0 AS BIGINT)) AS BIGINT) AS "deposits"
    """

    def __init__(self, **fields: Reducer) -> None:
        if not fields:
            raise InvalidArgumentError("Reducers needs at least one field")
        for name, reducer in fields.items():
            check_identifier(name, "a reducer field name")
            if name in ("aggregate_id", "version") or name.endswith("__k"):
                raise InvalidArgumentError(f"{name!r} is a reserved column name; pick another field name")
            if not isinstance(reducer, Reducer):
                raise InvalidArgumentError(f"field {name!r} must be a reducer (Last, Sum, …), got {reducer!r}")
        self.fields: dict[str, Reducer] = dict(fields)

    @property
    def names(self) -> list[str]:
        return list(self.fields)

    def __repr__(self) -> str:
        return f"Reducers({', '.join(f'{n}={r.kind}' for n, r in self.fields.items())})"

    def fingerprint(self) -> str:
        """A short hash of the compiled SQL: a changed declaration never reuses old checkpoints."""
        text = "|".join(self.final_select() + self.partial_select(lambda n, r: r.value_sql()))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    # Direct aggregation over events, one pass ------------------------------------------------
    def final_select(self) -> list[str]:
        """One SELECT item per field, aggregating raw events straight to the final value."""
        out = []
        for name, r in self.fields.items():
            where = f"FILTER (WHERE event_type IN ({_types_sql(r)}))"
            agg = _direct(r, r.value_sql(), where)
            present = f"max(aggregate_version) {where}" if r.kind in ("last", "first") else None
            out.append(f"{_finish(r, agg, present)} AS {_q(name)}")
        return out

    # Partial states and their merge -------------------------------------------------------------
    def partial_select(self, value_of: Any) -> list[str]:
        """SELECT items reducing any subset of events to mergeable partial columns.

        ``value_of(name, reducer)`` gives the SQL of a field's per-event value (raw JSON over ``events``,
        or a precomputed column of the checkpoint inputs).
        """
        out = []
        for name, r in self.fields.items():
            where = f"FILTER (WHERE event_type IN ({_types_sql(r)}))"
            value = value_of(name, r)
            if r.kind in ("last", "first"):
                fn = "arg_max_null" if r.kind == "last" else "arg_min_null"
                key = "max" if r.kind == "last" else "min"
                out.append(f"{fn}({value}, aggregate_version) {where} AS {_q(name)}")
                out.append(f"{key}(aggregate_version) {where} AS {_q(name + '__k')}")
            else:
                out.append(f"{_direct(r, value, where)} AS {_q(name)}")
        return out

    def merge_select(self) -> list[str]:
        """SELECT items combining partial rows of one aggregate into one partial row."""
        out = []
        for name, r in self.fields.items():
            v, k = _q(name), _q(name + "__k")
            if r.kind in ("last", "first"):
                fn, key = ("arg_max_null", "max") if r.kind == "last" else ("arg_min_null", "min")
                out.append(f"{fn}({v}, {k}) FILTER (WHERE {k} IS NOT NULL) AS {v}")
                out.append(f"{key}({k}) AS {k}")
            elif r.kind == "count":
                out.append(f"CAST(sum({v}) AS BIGINT) AS {v}")
            else:
                out.append(f"{_sum_cast(r, f'sum({v})') if r.kind == 'sum' else f'{r.kind}({v})'} AS {v}")
        return out

    def combine_select(self, left: str, right: str) -> list[str]:
        """SELECT items combining two partial rows of one aggregate side by side (after a full outer join).

        The two sides hold disjoint events, so versions never tie; ``greatest``/``least`` skip NULLs.
        """
        out = [f"coalesce({left}.aggregate_id, {right}.aggregate_id) AS aggregate_id",
               f"greatest({left}.version, {right}.version) AS version"]
        for name, r in self.fields.items():
            v, k = _q(name), _q(name + "__k")
            a, b = f"{left}.{v}", f"{right}.{v}"
            if r.kind in ("last", "first"):
                newer, pick = (">", "greatest") if r.kind == "last" else ("<", "least")
                ka, kb = f"{left}.{k}", f"{right}.{k}"
                out.append(f"CASE WHEN {kb} IS NOT NULL AND ({ka} IS NULL OR {kb} {newer} {ka}) THEN {b} ELSE {a} END AS {v}")
                out.append(f"{pick}({ka}, {kb}) AS {k}")
            elif r.kind in ("sum", "count"):
                out.append(f"CASE WHEN {b} IS NULL THEN {a} WHEN {a} IS NULL THEN {b} ELSE {a} + {b} END AS {v}")
            else:
                out.append(f"{'least' if r.kind == 'min' else 'greatest'}({a}, {b}) AS {v}")
        return out

    def finish_select(self) -> list[str]:
        """SELECT items turning a partial row into the final field values."""
        return [
            f"{_finish(r, _q(name), _q(name + '__k') if r.kind in ('last', 'first') else None)} AS {_q(name)}"
            for name, r in self.fields.items()
        ]

    def input_columns(self) -> list[str]:
        """The per-event value of every field that needs one (checkpoint inputs keep these)."""
        return [f"{r.value_sql()} AS {_q(name)}" for name, r in self.fields.items() if r.kind != "count"]


def _q(name: str) -> str:
    return f'"{name}"'


def _types_sql(r: Reducer) -> str:
    return ", ".join(_literal(t, "VARCHAR") for t in r.event_types)


def _sum_type(r: Reducer) -> str | None:
    """The type partial sums are kept in: wide decimals stay exact, integers stay integers."""
    inner = r.value_dtype()
    if inner.startswith("DECIMAL"):
        return f"DECIMAL(38,{inner.split(',')[1]}"
    if inner in ("BIGINT", "INTEGER"):
        return "BIGINT"
    return None


def _sum_cast(r: Reducer, expr: str) -> str:
    target = _sum_type(r)
    return f"CAST({expr} AS {target})" if target else expr


def _direct(r: Reducer, value: str, where: str) -> str:
    if r.kind == "last":
        return f"arg_max_null({value}, aggregate_version) {where}"
    if r.kind == "first":
        return f"arg_min_null({value}, aggregate_version) {where}"
    if r.kind == "count":
        return f"count(*) {where}"
    if r.kind == "sum":
        return _sum_cast(r, f"sum({value}) {where}")
    return f"{r.kind}({value}) {where}"


def _finish(r: Reducer, agg: str, present: str | None) -> str:
    """Cast to the field's type; ``default`` only where no event matched (a matched NULL stays NULL)."""
    if r.default is None:
        return f"CAST({agg} AS {r.dtype})"
    default = _literal(r.default, r.dtype)
    if present is not None:
        return f"CAST(CASE WHEN {present} IS NULL THEN {default} ELSE {agg} END AS {r.dtype})"
    return f"CAST(coalesce({agg}, {default}) AS {r.dtype})"
