"""Upcasting on read: functions per ``(event_type, schema_version)`` chained to the newest version.

An upcaster takes the payload (a dict) of one schema version and returns the payload of the next one.
One registered with ``whole_event=True`` works like the seed's ``EventUpgrader``: it takes the event
(``{event_id, event_type, schema_version, data, metadata}``) and returns it with new ``data`` and
``metadata``, for a step that changes the metadata (the seed's ``UserRegistered`` v1 -> v2 adds
``metadata.correlationId``). The newest version of an event type is one past its highest registered
step. Stored events never change: every read path (``lake.events``, ``lake.aggregate``, the repository,
the SQL view ``events_upcast``) runs the chain as it reads. :func:`coverage` reports which versions the
lake still holds.

Upcasters live in a registry; :data:`default_registry` is the one every lake uses unless told otherwise,
and :func:`upcaster` registers into it, so importing the module that declares the upcasters (for example
``es_analytics.examples.users``) is what makes them apply.

Examples
--------
>>> registry = UpcasterRegistry()
>>> @registry.register("PriceSet", 1)
... def price_set_v1_to_v2(data):
...     return {"amount": data["price"], "currency": "EUR"}
>>> registry.upcast("PriceSet", 1, {"price": 5})
({'amount': 5, 'currency': 'EUR'}, 2)
>>> registry.upcast("PriceSet", 2, {"amount": 5, "currency": "EUR"})
({'amount': 5, 'currency': 'EUR'}, 2)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

import polars as pl
import pyarrow as pa

from .errors import InvalidArgumentError, UpcastError
from .events import Event

__all__ = [
    "UPCAST_VIEW",
    "Upcaster",
    "Step",
    "UpcasterRegistry",
    "coverage",
    "default_registry",
    "upcast_frame",
    "upcaster",
]

Upcaster = Callable[[Any], Any]  # dict -> dict, or Series -> Series when registered vectorized


class Step(NamedTuple):
    """One link of a chain: the function, whether it works on a whole Series of JSON text, and whether it
    takes the whole event (data and metadata) instead of the payload."""

    fn: Upcaster
    vectorized: bool
    whole_event: bool = False

Status = Literal["newest", "upcast", "broken chain", "ahead", "unversioned"]
UPCAST_VIEW = "events_upcast"
COVERAGE_COLUMNS = ("event_type", "schema_version", "events", "first_seen", "last_seen",
                    "newest_version", "reaches_newest", "status", "path")


class UpcasterRegistry:
    """Upcasters by ``(event_type, from_version)``; each turns version ``n`` into ``n + 1``."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}
        self._vectorized: set[tuple[str, int]] = set()
        self._whole_event: set[tuple[str, int]] = set()
        self.revision = 0

    def __repr__(self) -> str:
        return f"UpcasterRegistry({len(self._steps)} steps for {sorted(self.event_types())})"

    def __bool__(self) -> bool:
        return bool(self._steps)

    def register(
        self, event_type: str, from_version: int, fn: Upcaster | None = None, *, vectorized: bool = False,
        whole_event: bool = False,
    ) -> Any:
        """Register ``fn`` as the step from ``from_version`` to ``from_version + 1`` (or use as a decorator).

        ``fn`` takes and returns a payload dict. With ``vectorized=True`` it takes a polars ``Series`` of
        payloads as JSON text and returns one of the same length (e.g. built with ``str.json_decode`` and
        ``struct.json_encode``): no Python per event, for payloads of a fixed shape.

        With ``whole_event=True`` it takes the event as a dict ``{event_id, event_type, schema_version,
        data, metadata}`` and returns a dict with the new ``data`` and ``metadata`` (other keys are
        ignored); ``event_id`` is ``None`` and ``metadata`` empty when only a payload is upcast
        (:meth:`upcast`). It must give the same result on every read: derive new values from the event
        (e.g. its ``event_id``), never from a clock or a random draw.

        Registering another function for a step that has one is an error, except a function of the same
        name (a notebook cell run again), which replaces it.
        """
        Event(event_type, {}, schema_version=from_version)  # validates the name and version

        def add(step: Upcaster) -> Upcaster:
            if not callable(step):
                raise InvalidArgumentError(f"an upcaster must be callable, got {step!r}")
            if vectorized and whole_event:
                raise InvalidArgumentError("an upcaster is either vectorized or whole_event, not both")
            old = self._steps.get((event_type, from_version))
            if old is not None and _name(old) != _name(step):
                raise InvalidArgumentError(
                    f"{event_type!r} v{from_version} already upcasts with {_name(old)}; "
                    f"unregister it before registering {_name(step)}"
                )
            self._steps[(event_type, from_version)] = step
            for flag, marked in ((vectorized, self._vectorized), (whole_event, self._whole_event)):
                if flag:
                    marked.add((event_type, from_version))
                else:
                    marked.discard((event_type, from_version))
            self.revision += 1
            return step

        return add if fn is None else add(fn)

    def unregister(self, event_type: str, from_version: int) -> None:
        """Remove one step (no error if it is absent)."""
        if self._steps.pop((event_type, from_version), None) is not None:
            self._vectorized.discard((event_type, from_version))
            self._whole_event.discard((event_type, from_version))
            self.revision += 1

    def whole_event_types(self) -> set[str]:
        """The event types with at least one whole-event step (their metadata may change on read)."""
        return {event_type for event_type, _ in self._whole_event}

    def event_types(self) -> set[str]:
        """The event types with at least one step."""
        return {event_type for event_type, _ in self._steps}

    def newest_version(self, event_type: str) -> int | None:
        """One past the highest step of ``event_type``; ``None`` if it has no upcasters."""
        versions = [v for t, v in self._steps if t == event_type]
        return max(versions) + 1 if versions else None

    def status(self, event_type: str, schema_version: int) -> Status:
        """Where events of this version stand: newest, upcast, broken chain, ahead or unversioned."""
        newest = self.newest_version(event_type)
        if newest is None:
            return "unversioned"
        if schema_version == newest:
            return "newest"
        if schema_version > newest:
            return "ahead"
        steps = range(schema_version, newest)
        return "upcast" if all((event_type, v) in self._steps for v in steps) else "broken chain"

    def path(self, event_type: str, schema_version: int) -> str:
        """The versions a payload goes through, e.g. ``"1→2→3"`` (empty if nothing is done)."""
        newest = self.newest_version(event_type)
        if newest is None or schema_version >= newest:
            return ""
        versions = [schema_version]
        while (event_type, versions[-1]) in self._steps and versions[-1] < newest:
            versions.append(versions[-1] + 1)
        return "→".join(map(str, versions))

    def upcast(self, event_type: str, schema_version: int, data: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """``(payload, version)`` after running the chain from ``schema_version`` to the newest.

        Raises
        ------
        UpcastError
            A step of the chain is missing or an upcaster failed or returned something that is not a dict.
        """
        steps, newest = self.chain(event_type, schema_version)
        return _run(steps, data, event_type, schema_version), newest

    def upcast_event(
        self, event_type: str, schema_version: int, data: dict[str, Any], metadata: dict[str, Any],
        *, event_id: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], int]:
        """``(payload, metadata, version)`` after running the chain; whole-event steps see both."""
        steps, newest = self.chain(event_type, schema_version)
        data, metadata = _run_event(steps, data, metadata, event_type, schema_version, event_id)
        return data, metadata, newest

    def chain(self, event_type: str, schema_version: int) -> tuple[list[Step], int]:
        """The steps from ``schema_version`` to the newest version, and that version.

        Raises
        ------
        UpcastError
            A step is missing.
        """
        newest = self.newest_version(event_type)
        if newest is None or schema_version >= newest:
            return [], schema_version
        steps = []
        for version in range(schema_version, newest):
            step = self._steps.get((event_type, version))
            if step is None:
                raise UpcastError(
                    event_type, schema_version,
                    f"no upcaster from v{version} to v{version + 1} (newest is v{newest}); register one "
                    "with es_analytics.upcaster, and see lake.upcasting_coverage() for what the lake holds",
                )
            key = (event_type, version)
            steps.append(Step(step, key in self._vectorized, key in self._whole_event))
        return steps, newest

    def upcast_json(self, event_type: str, schema_version: int, text: str) -> tuple[str, int]:
        """Like :meth:`upcast` on JSON text; the result is compact JSON text."""
        steps, newest = self.chain(event_type, schema_version)
        if not steps:
            return text, newest
        return _dumps(_run(steps, json.loads(text), event_type, schema_version), event_type, schema_version), newest

    def fingerprint(self, event_types: Iterable[str]) -> str:
        """A hash of the steps' code for ``event_types`` (snapshots depend on it)."""
        digest = hashlib.sha256()
        for key in sorted(k for k in self._steps if k[0] in set(event_types)):
            step = self._steps[key]
            code = getattr(step, "__code__", None)
            digest.update(repr((key, key in self._vectorized, key in self._whole_event)).encode()
                          + _name(step).encode())
            if code is not None:
                digest.update(code.co_code + repr(code.co_consts).encode())
        return digest.hexdigest()[:16]

    def _pending_types(self) -> dict[str, int]:
        return {t: v for t in self.event_types() if (v := self.newest_version(t)) is not None}


def _run(steps: list[Step], data: dict[str, Any], event_type: str, schema_version: int) -> dict[str, Any]:
    """Run a chain on one payload (vectorized steps get a one-row Series, whole-event steps no metadata)."""
    if any(step.whole_event for step in steps):
        return _run_event(steps, data, {}, event_type, schema_version, None)[0]
    for step in steps:
        if step.vectorized:
            text = _run_series(step, pl.Series([_dumps(data, event_type, schema_version)], dtype=pl.String),
                               event_type, schema_version)[0]
            data = json.loads(text)
            continue
        try:
            data = step.fn(data)
        except Exception as exc:
            raise UpcastError(event_type, schema_version, f"{_name(step.fn)} failed: {exc!r}") from exc
        if not isinstance(data, dict):
            raise UpcastError(event_type, schema_version,
                              f"{_name(step.fn)} returned {type(data).__name__}, not a dict")
    return data


def _run_event(
    steps: list[Step], data: dict[str, Any], metadata: dict[str, Any], event_type: str, schema_version: int,
    event_id: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a chain on one event's payload and metadata (payload steps leave the metadata as it is)."""
    version = schema_version
    for step in steps:
        if not step.whole_event:
            data = _run([step], data, event_type, schema_version)
            version += 1
            continue
        event = {"event_id": event_id, "event_type": event_type, "schema_version": version,
                 "data": data, "metadata": metadata}
        try:
            out = step.fn(event)
        except Exception as exc:
            raise UpcastError(event_type, schema_version, f"{_name(step.fn)} failed: {exc!r}") from exc
        if not (isinstance(out, dict) and isinstance(out.get("data"), dict)
                and isinstance(out.get("metadata"), dict)):
            raise UpcastError(event_type, schema_version, f"{_name(step.fn)} must return the event with dicts "
                              f"'data' and 'metadata', got {out!r:.80}")
        data, metadata = out["data"], out["metadata"]
        version += 1
    return data, metadata


def _run_series(step: Step, texts: pl.Series, event_type: str, schema_version: int) -> pl.Series:
    try:
        out = step.fn(texts)
    except Exception as exc:
        raise UpcastError(event_type, schema_version, f"{_name(step.fn)} failed: {exc!r}") from exc
    if not isinstance(out, pl.Series) or out.dtype != pl.String or out.len() != texts.len():
        raise UpcastError(event_type, schema_version,
                          f"{_name(step.fn)} must return a String Series of {texts.len()} JSON texts, got {out!r:.80}")
    if out.null_count():
        raise UpcastError(event_type, schema_version, f"{_name(step.fn)} returned null payloads")
    return out


def _run_group(steps: list[Step], texts: pl.Series, event_type: str, schema_version: int) -> pl.Series:
    """Run a chain on many payloads of one (type, version): vectorized steps once, row steps per payload."""
    i = 0
    while i < len(steps):
        if steps[i].vectorized:
            texts = _run_series(steps[i], texts, event_type, schema_version)
            i += 1
            continue
        j = i
        while j < len(steps) and not steps[j].vectorized:
            j += 1
        row_steps, loads = steps[i:j], json.loads
        texts = pl.Series([_dumps(_run(row_steps, loads(t), event_type, schema_version), event_type, schema_version)
                           for t in texts], dtype=pl.String)
        i = j
    return texts


def _dumps(data: dict[str, Any], event_type: str, schema_version: int) -> str:
    """Compact JSON text of an upcast payload (the C encoder; no second validation walk)."""
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise UpcastError(event_type, schema_version, f"the upcast payload is not JSON: {exc}") from exc


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


default_registry = UpcasterRegistry()


def upcaster(
    event_type: str, from_version: int, *, vectorized: bool = False, whole_event: bool = False
) -> Callable[[Upcaster], Upcaster]:
    """Decorator: register an upcaster from ``from_version`` to the next in :data:`default_registry`.

    Name it after its step, e.g. ``user_registered_v1_to_v2``. See :meth:`UpcasterRegistry.register` for
    ``vectorized`` and ``whole_event``.
    """
    decorate: Callable[[Upcaster], Upcaster] = default_registry.register(
        event_type, from_version, vectorized=vectorized, whole_event=whole_event)
    return decorate


# -- frames -------------------------------------------------------------------------------------
def upcast_frame(frame: pl.DataFrame, registry: UpcasterRegistry) -> pl.DataFrame:
    """An events frame with ``data`` and ``schema_version`` of older rows brought to the newest version.

    Only the rows that need a step go through Python; the rest of the frame is not touched.
    """
    newest = registry._pending_types()
    if not newest or frame.height == 0:
        return frame
    limits = pl.DataFrame({"event_type": list(newest), "_newest": list(newest.values())},
                          schema={"event_type": pl.String, "_newest": pl.Int32})
    todo = (
        frame.select("event_type", "schema_version", "data")
        .with_row_index("_row")
        .filter(pl.col("event_type").is_in(list(newest)))
        .join(limits, on="event_type")
        .filter(pl.col("schema_version") < pl.col("_newest"))
    )
    if todo.height == 0:
        return frame
    data, schema_version = frame["data"].clone(), frame["schema_version"].clone()
    metadata = frame["metadata"].clone() if "metadata" in frame.columns else None
    for key, group in todo.partition_by("event_type", "schema_version", as_dict=True).items():
        event_type, version = str(key[0]), int(key[1])
        steps, to_version = registry.chain(event_type, version)
        if any(step.whole_event for step in steps):
            texts, metas = _run_events(steps, frame, group, event_type, version)
            if metadata is not None:
                metadata.scatter(group["_row"], metas)
        else:
            texts = _run_group(steps, group["data"], event_type, version)
        data.scatter(group["_row"], texts)
        schema_version.scatter(group["_row"], pl.Series([to_version] * group.height, dtype=pl.Int32))
    if metadata is None:
        return frame.with_columns(data=data, schema_version=schema_version)
    return frame.with_columns(data=data, schema_version=schema_version, metadata=metadata)


def _run_events(
    steps: list[Step], frame: pl.DataFrame, group: pl.DataFrame, event_type: str, version: int
) -> tuple[pl.Series, pl.Series]:
    """Run a chain with whole-event steps on the group's rows: new payloads and metadata as JSON text."""
    rows = group["_row"]
    ids = frame["event_id"].gather(rows).to_list() if "event_id" in frame.columns else [None] * group.height
    metas = frame["metadata"].gather(rows).to_list() if "metadata" in frame.columns else ["{}"] * group.height
    texts, meta_texts = [], []
    for event_id, text, meta in zip(ids, group["data"].to_list(), metas):
        data, metadata = _run_event(steps, json.loads(text), json.loads(meta), event_type, version, event_id)
        texts.append(_dumps(data, event_type, version))
        meta_texts.append(_dumps(metadata, event_type, version))
    return pl.Series(texts, dtype=pl.String), pl.Series(meta_texts, dtype=pl.String)


# -- SQL ----------------------------------------------------------------------------------------
def install_sql(
    con: Any,
    registry: UpcasterRegistry,
    prepare: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    prepare_marker: str | None = None,
) -> None:
    """Create the SQL functions ``es_upcast_data`` / ``es_upcast_version`` and the view ``events_upcast``.

    ``con`` is the lake's DuckDB connection. ``prepare`` runs on the stored payloads first (the lake passes
    its decryption), so the view shows events as ``lake.events`` does; it is called only for payloads that
    contain ``prepare_marker`` (all of them if no marker is given). The functions are called only for rows
    that need them (a ``CASE`` on the event types that have upcasters), so the view lists those types:
    install again after registering upcasters for a new type (the lake does so when ``registry.revision``
    changes). The view has the columns of ``events``.
    """
    import duckdb

    def upcast_data(
        event_id: pa.ChunkedArray, event_type: pa.ChunkedArray, version: pa.ChunkedArray, data: pa.ChunkedArray
    ) -> pa.Array:
        frame = pl.DataFrame(
            {"event_id": event_id, "event_type": event_type, "schema_version": version, "data": data},
            schema={"event_id": pl.String, "event_type": pl.String, "schema_version": pl.Int32, "data": pl.String},
        )
        if prepare is not None:
            frame = prepare(frame)
        return upcast_frame(frame, registry)["data"].to_arrow()

    def upcast_metadata(
        event_id: pa.ChunkedArray, event_type: pa.ChunkedArray, version: pa.ChunkedArray, data: pa.ChunkedArray,
        metadata: pa.ChunkedArray,
    ) -> pa.Array:
        frame = pl.DataFrame(
            {"event_id": event_id, "event_type": event_type, "schema_version": version, "data": data,
             "metadata": metadata},
            schema={"event_id": pl.String, "event_type": pl.String, "schema_version": pl.Int32, "data": pl.String,
                    "metadata": pl.String},
        )
        if prepare is not None:
            frame = prepare(frame)
        return upcast_frame(frame, registry)["metadata"].to_arrow()

    def upcast_version(event_type: pa.ChunkedArray, version: pa.ChunkedArray) -> pa.Array:
        newest = registry._pending_types()
        types, versions = event_type.to_pylist(), version.to_pylist()
        return pa.array(
            [newest[t] if t in newest and v < newest[t] else v for t, v in zip(types, versions)], pa.int32()
        )

    text, integer = duckdb.sqltype("VARCHAR"), duckdb.sqltype("INTEGER")
    for name in ("es_upcast_data", "es_upcast_version", "es_upcast_metadata"):
        try:
            con.remove_function(name)
        except duckdb.InvalidInputException:
            pass
    con.create_function("es_upcast_data", upcast_data, [text, text, integer, text], text, type="arrow",
                        side_effects=False)
    con.create_function("es_upcast_metadata", upcast_metadata, [text, text, integer, text, text], text,
                        type="arrow", side_effects=False)
    con.create_function("es_upcast_version", upcast_version, [text, integer], integer, type="arrow",
                        side_effects=False)
    con.execute(view_sql(registry, None if prepare is None else prepare_marker or ""))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_sql(registry: UpcasterRegistry, prepare_marker: str | None) -> str:
    """The ``CREATE VIEW`` statement of ``events_upcast`` for the registry's current event types.

    Event types are validated names (no quotes can occur) and are escaped as literals all the same.
    """
    types = sorted(registry.event_types())
    versioned = f"event_type IN ({', '.join(map(_literal, types))})" if types else "false"
    if prepare_marker is None:
        needs_data = versioned
    elif prepare_marker == "":
        needs_data = "true"
    else:
        needs_data = f"({versioned} OR contains(data, {_literal(prepare_marker)}))"
    whole = sorted(registry.whole_event_types())
    metadata = "metadata" if not whole else (
        f"CASE WHEN event_type IN ({', '.join(map(_literal, whole))}) "
        "THEN es_upcast_metadata(event_id, event_type, schema_version, data, metadata) ELSE metadata END")
    return (
        f"CREATE OR REPLACE VIEW {UPCAST_VIEW} AS SELECT position, event_id, event_type, "
        f"CASE WHEN {versioned} THEN es_upcast_version(event_type, schema_version) ELSE schema_version END "
        "AS schema_version, aggregate_type, aggregate_id, aggregate_version, occurred_at, recorded_at, "
        f"CASE WHEN {needs_data} THEN es_upcast_data(event_id, event_type, schema_version, data) ELSE data END "
        f"AS data, {metadata} AS metadata FROM events"
    )


# -- coverage ---------------------------------------------------------------------------------
def coverage(counts: pl.DataFrame, registry: UpcasterRegistry) -> pl.DataFrame:
    """Add the registry's verdict to per-version counts of the lake.

    ``counts`` has ``event_type, schema_version, events, first_seen, last_seen``; the result adds
    ``newest_version`` (null for types without upcasters), ``reaches_newest``, ``status`` and ``path``.
    """
    keys = counts.select("event_type", "schema_version").rows()
    newest = [registry.newest_version(t) for t, _ in keys]
    status = [registry.status(t, v) for t, v in keys]
    return counts.with_columns(
        pl.col("first_seen", "last_seen").dt.convert_time_zone("UTC"),
        newest_version=pl.Series(newest, dtype=pl.Int32),
        reaches_newest=pl.Series([s in ("newest", "upcast", "unversioned") for s in status], dtype=pl.Boolean),
        status=pl.Series(status, dtype=pl.String),
        path=pl.Series([registry.path(t, v) for t, v in keys], dtype=pl.String),
    ).select(COVERAGE_COLUMNS).sort("event_type", "schema_version")
