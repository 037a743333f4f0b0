"""Event processors: consume events in order from a persisted checkpoint, at least once, never stopping.

An :class:`EventProcessor` hands events to a handler (``handler(event: dict)``) in stream order:

- **polling** (:meth:`EventProcessor.poll`) reads the lake's events after the processor's checkpoint in
  ``position`` order; **delivery** (:meth:`EventProcessor.deliver`) takes events from anywhere else (a
  queue, a file, another lake) in any order, shuffled, duplicated or with holes;
- per aggregate, the processor applies version ``n + 1`` after ``n``: a duplicate (a version already
  applied) is dropped, an event ahead of its stream (a **version gap**) is **held** until the missing
  versions arrive, or until ``hold_timeout`` seconds pass — then the gap is recorded as skipped and the
  held events are applied (a skipped version that turns up later is set aside as a dead letter);
- a handler that raises (after ``retries`` more attempts) does not stop the processor: the event goes to
  the **dead letters** with its error and the rest are processed; :meth:`retry_dead_letters` tries again;
- everything the processor knows (checkpoint, last applied version per aggregate, held events, dead
  letters, gaps) lives in ``<lake>/processors/<name>.sqlite`` and is committed after each batch, so a
  restarted processor continues where it stopped. Delivery is at least once: a crash between a handler
  call and the commit of its batch repeats that batch; handlers that must not repeat an effect can check
  ``event["aggregate_version"]`` against their own state.

Global ``position`` gaps seen while polling are recorded (``gaps()``) but never waited for.
"""

from __future__ import annotations

import json
import sqlite3
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .errors import InvalidArgumentError
from .events import EVENT_COLUMNS, check_aggregate_type, check_identifier
from .temporal.bounds import LakeLike

__all__ = ["EventProcessor", "ProcessResult"]

FOLDER = "processors"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS applied (aggregate_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS held (aggregate_id TEXT NOT NULL, aggregate_version INTEGER NOT NULL,
    position INTEGER, event TEXT NOT NULL, held_since REAL NOT NULL, PRIMARY KEY (aggregate_id, aggregate_version));
CREATE TABLE IF NOT EXISTS dead_letters (event_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL, position INTEGER, event_type TEXT, event TEXT NOT NULL,
    error TEXT NOT NULL, detail TEXT NOT NULL, attempts INTEGER NOT NULL, failed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS gaps (kind TEXT NOT NULL, aggregate_id TEXT, after INTEGER NOT NULL,
    next INTEGER NOT NULL, detected_at REAL NOT NULL, resolution TEXT NOT NULL, resolved_at REAL,
    PRIMARY KEY (kind, aggregate_id, after));
CREATE TABLE IF NOT EXISTS skipped (aggregate_id TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (aggregate_id, version));
"""
_TIMES = ("occurred_at", "recorded_at")


@dataclass(frozen=True)
class ProcessResult:
    """What one :meth:`~EventProcessor.poll` or :meth:`~EventProcessor.deliver` did."""

    received: int
    applied: int
    duplicates: int
    held: int
    released: int
    dead_lettered: int
    checkpoint: int


class EventProcessor:
    """A persisted subscription that applies events to ``handler`` in stream order (see the module docs).

    Parameters
    ----------
    lake
        The lake to poll, which also holds the processor's state.
    name
        The processor's name (an identifier): its state file is ``processors/<name>.sqlite``.
    handler
        ``handler(event)`` with ``event`` a dict of the event record (``data`` and ``metadata`` parsed).
    aggregate_type
        Only streams of this type (default: all).
    types
        Call the handler only for these event types; the others still count for the stream's order.
    batch_size
        Events per poll and per commit.
    hold_timeout
        Seconds an event ahead of its stream is held before the gap is skipped.
    retries
        Further attempts of a failing handler call before the event becomes a dead letter.
    clock
        Seconds since the epoch (``time.time``); tests pass a fake one.

    Examples
    --------
    >>> import tempfile
    >>> from es_analytics import Event, Lake
    >>> seen = []
    >>> with Lake.open(tempfile.mkdtemp()) as lake:
    ...     _ = lake.append("a-1", [Event("Opened", {}), Event("Renamed", {"to": "x"})],
    ...                     expected_version=0, aggregate_type="Thing")
    ...     with EventProcessor(lake, "audit", lambda e: seen.append(e["event_type"])) as processor:
    ...         processor.poll().applied
    2
    >>> seen
    ['Opened', 'Renamed']
    """

    def __init__(
        self,
        lake: LakeLike,
        name: str,
        handler: Callable[[dict[str, Any]], object],
        *,
        aggregate_type: str | None = None,
        types: Sequence[str] | None = None,
        batch_size: int = 1_000,
        hold_timeout: float = 30.0,
        retries: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_identifier(name, "a processor name")
        if not callable(handler):
            raise InvalidArgumentError(f"handler must be callable, got {handler!r}")
        if aggregate_type is not None:
            check_aggregate_type(aggregate_type)
        for value, label in ((batch_size, "batch_size"), (retries, "retries")):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if label == "batch_size" else 0):
                raise InvalidArgumentError(f"{label} must be a {'positive' if label == 'batch_size' else 'non-negative'} "
                                           f"int, got {value!r}")
        if isinstance(hold_timeout, bool) or not isinstance(hold_timeout, (int, float)) or hold_timeout < 0:
            raise InvalidArgumentError(f"hold_timeout must be a non-negative number of seconds, got {hold_timeout!r}")
        if types is not None and (isinstance(types, str) or not all(isinstance(t, str) for t in types)):
            raise InvalidArgumentError(f"types must be a list of event types, got {types!r}")
        self.lake, self.name, self.handler = lake, name, handler
        self.aggregate_type, self.types = aggregate_type, None if types is None else frozenset(types)
        self.batch_size, self.hold_timeout, self.retries, self.clock = batch_size, float(hold_timeout), retries, clock
        folder = Path(lake._store.folder) / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.sqlite"
        self.con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.con.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash; a power loss may lose the newest commits, which
        # at-least-once delivery then repeats.
        self.con.execute("PRAGMA synchronous=NORMAL")
        self.con.executescript(_SCHEMA)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> EventProcessor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventProcessor({self.name!r}, checkpoint={self.checkpoint})"

    # -- reading state ------------------------------------------------------------------------
    @property
    def checkpoint(self) -> int:
        """The last lake position this processor has taken in (0 before the first poll)."""
        row = self.con.execute("SELECT value FROM meta WHERE key = 'checkpoint'").fetchone()
        return int(row[0]) if row else 0

    def applied_versions(self) -> pl.DataFrame:
        """The last version applied per aggregate: ``aggregate_id, version``."""
        return self._frame("SELECT aggregate_id, version FROM applied ORDER BY aggregate_id",
                           {"aggregate_id": pl.String, "version": pl.Int64})

    def held(self) -> pl.DataFrame:
        """Events waiting for a missing version: ``aggregate_id, aggregate_version, position, waiting_for, held_seconds``."""
        now = self.clock()
        return self._frame(
            "SELECT h.aggregate_id, h.aggregate_version, h.position, coalesce(a.version, 0) + 1, ? - h.held_since "
            "FROM held h LEFT JOIN applied a USING (aggregate_id) ORDER BY h.aggregate_id, h.aggregate_version",
            {"aggregate_id": pl.String, "aggregate_version": pl.Int64, "position": pl.Int64,
             "waiting_for": pl.Int64, "held_seconds": pl.Float64}, [now])

    def dead_letters(self) -> pl.DataFrame:
        """Events set aside: ``event_id, aggregate_id, aggregate_version, position, event_type, error, detail, attempts, failed_at``."""
        frame = self._frame(
            "SELECT event_id, aggregate_id, aggregate_version, position, event_type, error, detail, attempts, "
            "CAST(failed_at * 1000000 AS INTEGER) FROM dead_letters ORDER BY failed_at, position",
            {"event_id": pl.String, "aggregate_id": pl.String, "aggregate_version": pl.Int64, "position": pl.Int64,
             "event_type": pl.String, "error": pl.String, "detail": pl.String, "attempts": pl.Int64,
             "failed_at": pl.Int64})
        return frame.with_columns(pl.col("failed_at").cast(pl.Datetime("us", "UTC")))

    def gaps(self) -> pl.DataFrame:
        """Gaps seen: ``kind`` (version | position), ``aggregate_id, after, next, missing, resolution`` (open, filled, skipped)."""
        frame = self._frame(
            "SELECT kind, aggregate_id, after, next, next - after - 1, resolution, "
            "CAST(detected_at * 1000000 AS INTEGER) FROM gaps ORDER BY detected_at, kind, aggregate_id, after",
            {"kind": pl.String, "aggregate_id": pl.String, "after": pl.Int64, "next": pl.Int64, "missing": pl.Int64,
             "resolution": pl.String, "detected_at": pl.Int64})
        return frame.with_columns(pl.col("detected_at").cast(pl.Datetime("us", "UTC")))

    def _frame(self, sql: str, schema: dict[str, Any], params: Sequence[Any] = ()) -> pl.DataFrame:
        rows = self.con.execute(sql, list(params)).fetchall()
        return pl.DataFrame(rows, schema=schema, orient="row")

    # -- consuming ------------------------------------------------------------------------------
    def poll(self, *, max_batches: int | None = None) -> ProcessResult:
        """Process the lake's events after the checkpoint, ``batch_size`` at a time, until none are left."""
        from .materialized import newest_position, read_range

        totals = _Totals()
        batches = 0
        newest = newest_position(self.lake)
        while (max_batches is None or batches < max_batches) and self.checkpoint < newest:
            after = self.checkpoint
            upto = min(newest, after + self.batch_size)  # positions are unique: at most batch_size events
            frame = read_range(self.lake, after, upto, self.aggregate_type)
            self._process(frame, totals, after=after, upto=upto)
            batches += 1
        if batches == 0:
            with self._tx():
                self._release_expired(totals)
        return totals.result(self.checkpoint)

    def deliver(self, events: pl.DataFrame) -> ProcessResult:
        """Process events from anywhere, in any order (shuffled, repeated, with holes); see the module docs.

        ``events`` needs the columns of the event record (as ``lake.events`` returns them); rows are taken
        in ``position`` order when it is given, else as they come. The checkpoint does not move.
        """
        if not isinstance(events, pl.DataFrame):
            raise InvalidArgumentError(f"events must be a polars DataFrame, got {type(events).__name__}")
        missing = [c for c in ("event_id", "event_type", "aggregate_id", "aggregate_version") if c not in events.columns]
        if missing:
            raise InvalidArgumentError(f"events lack the columns {missing}; pass frames shaped like lake.events()")
        totals = _Totals()
        for start in range(0, max(events.height, 1), self.batch_size):
            self._process(events.slice(start, self.batch_size), totals, after=None)
        return totals.result(self.checkpoint)

    def release_expired(self) -> ProcessResult:
        """Skip the gaps whose held events waited longer than ``hold_timeout`` and apply those events."""
        totals = _Totals()
        with self._tx():
            self._release_expired(totals)
        return totals.result(self.checkpoint)

    def retry_dead_letters(self) -> ProcessResult:
        """Call the handler again on every dead letter; those that succeed leave the dead letters.

        The handler then sees these events after later events of their streams (out of stream order).
        """
        totals = _Totals()
        rows = self.con.execute("SELECT event_id, event, attempts FROM dead_letters ORDER BY position").fetchall()
        with self._tx():
            for event_id, text, attempts in rows:
                event = _decode(text)
                error = self._call(event)
                if error is None:
                    self.con.execute("DELETE FROM dead_letters WHERE event_id = ?", [event_id])
                    totals.applied += 1
                else:
                    self.con.execute("UPDATE dead_letters SET error = ?, detail = ?, attempts = ?, failed_at = ? "
                                     "WHERE event_id = ?", [*error, attempts + self.retries + 1, self.clock(), event_id])
                    totals.dead_lettered += 1
        return totals.result(self.checkpoint)

    def reset(self) -> None:
        """Forget all progress (checkpoint, versions, held events, dead letters, gaps): start from the beginning."""
        with self._tx():
            for table in ("meta", "applied", "held", "dead_letters", "gaps", "skipped"):
                self.con.execute(f"DELETE FROM {table}")

    # -- the core -------------------------------------------------------------------------------
    def _tx(self) -> Any:
        return _Transaction(self.con)

    def _process(self, frame: pl.DataFrame, totals: _Totals, *, after: int | None, upto: int | None = None) -> None:
        if "position" in frame.columns and after is None:
            frame = frame.sort("position", nulls_last=True, maintain_order=True)
        rows = _rows(frame)
        with self._tx():
            if upto is not None and self.aggregate_type is None and frame.height:
                row = self.con.execute("SELECT value FROM meta WHERE key = 'last_position'").fetchone()
                self._note_position_gaps(frame["position"], int(row[0]) if row else 0)
                self.con.execute("INSERT INTO meta VALUES ('last_position', ?) ON CONFLICT (key) DO UPDATE SET "
                                 "value = excluded.value", [int(frame["position"].max())])  # type: ignore[arg-type]
            versions = self._applied_for({r["aggregate_id"] for r in rows})
            for event in rows:
                totals.received += 1
                self._take(event, versions, totals)
            self._release_expired(totals, versions)
            self.con.executemany("INSERT INTO applied VALUES (?, ?) ON CONFLICT (aggregate_id) DO UPDATE SET "
                                 "version = excluded.version", list(versions.items()))
            if upto is not None:
                self.con.execute("INSERT INTO meta VALUES ('checkpoint', ?) ON CONFLICT (key) DO UPDATE SET "
                                 "value = excluded.value", [upto])

    def _applied_for(self, ids: set[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        ordered = sorted(ids)
        for start in range(0, len(ordered), 500):
            chunk = ordered[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self.con.execute(f"SELECT aggregate_id, version FROM applied WHERE aggregate_id IN ({marks})",
                                          chunk).fetchall())
        return {i: found.get(i, 0) for i in ordered}

    def _take(self, event: dict[str, Any], versions: dict[str, int], totals: _Totals) -> None:
        aggregate_id, version = event["aggregate_id"], int(event["aggregate_version"])
        current = versions.setdefault(aggregate_id, self._applied_for({aggregate_id})[aggregate_id])
        if version <= current:
            late = self.con.execute("DELETE FROM skipped WHERE aggregate_id = ? AND version = ?",
                                    [aggregate_id, version]).rowcount
            if late:
                self._dead_letter(event, ("GapSkipped", f"version {version} arrived after its gap was skipped "
                                          "(hold_timeout); apply it by hand or rebuild"), 0)
                totals.dead_lettered += 1
            else:
                totals.duplicates += 1
            return
        if version > current + 1:
            stored = self.con.execute(
                "INSERT OR IGNORE INTO held VALUES (?, ?, ?, ?, ?)",
                [aggregate_id, version, event.get("position"), _encode(event), self.clock()]).rowcount
            if stored:
                totals.held += 1
                self.con.execute("INSERT OR IGNORE INTO gaps VALUES ('version', ?, ?, ?, ?, 'open', NULL)",
                                 [aggregate_id, current, version, self.clock()])
            else:
                totals.duplicates += 1
            return
        self._apply(event, versions, totals)
        self._drain(aggregate_id, versions, totals)

    def _apply(self, event: dict[str, Any], versions: dict[str, int], totals: _Totals) -> None:
        versions[event["aggregate_id"]] = int(event["aggregate_version"])
        if self.types is not None and event["event_type"] not in self.types:
            return
        dead = self.con.execute("SELECT 1 FROM dead_letters WHERE event_id = ?", [event["event_id"]]).fetchone()
        if dead:
            totals.duplicates += 1
            return
        error = self._call(event)
        if error is None:
            totals.applied += 1
        else:
            self._dead_letter(event, error, self.retries + 1)
            totals.dead_lettered += 1

    def _call(self, event: dict[str, Any]) -> tuple[str, str] | None:
        """Call the handler (``retries`` more times on failure); the error's name and traceback, or None."""
        for attempt in range(self.retries + 1):
            try:
                self.handler(event)
                return None
            except Exception as exc:  # a poison event must not stop the processor
                if attempt == self.retries:
                    return f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=8)
        return None  # pragma: no cover - the loop always returns

    def _dead_letter(self, event: dict[str, Any], error: tuple[str, str], attempts: int) -> None:
        self.con.execute(
            "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [event["event_id"], event["aggregate_id"], int(event["aggregate_version"]), event.get("position"),
             event.get("event_type"), _encode(event), error[0], error[1], attempts, self.clock()])

    def _drain(self, aggregate_id: str, versions: dict[str, int], totals: _Totals) -> None:
        """Apply held events of the stream that are now next in line."""
        while True:
            nxt = versions[aggregate_id] + 1
            row = self.con.execute("DELETE FROM held WHERE aggregate_id = ? AND aggregate_version = ? RETURNING event",
                                   [aggregate_id, nxt]).fetchone()
            if row is None:
                return
            self.con.execute("UPDATE gaps SET resolution = 'filled', resolved_at = ? WHERE kind = 'version' AND "
                             "aggregate_id = ? AND resolution = 'open' AND next <= ?", [self.clock(), aggregate_id, nxt])
            totals.released += 1
            self._apply(_decode(row[0]), versions, totals)

    def _release_expired(self, totals: _Totals, versions: dict[str, int] | None = None) -> None:
        limit = self.clock() - self.hold_timeout
        stale = self.con.execute("SELECT aggregate_id, min(aggregate_version) FROM held GROUP BY aggregate_id "
                                 "HAVING min(held_since) <= ?", [limit]).fetchall()
        if not stale:
            return
        versions = versions if versions is not None else {}
        for aggregate_id, first_held in stale:
            current = versions.setdefault(aggregate_id, self._applied_for({aggregate_id})[aggregate_id])
            self.con.executemany("INSERT OR IGNORE INTO skipped VALUES (?, ?)",
                                 [(aggregate_id, v) for v in range(current + 1, first_held)])
            self.con.execute("UPDATE gaps SET resolution = 'skipped', resolved_at = ? WHERE kind = 'version' AND "
                             "aggregate_id = ? AND resolution = 'open' AND next <= ?",
                             [self.clock(), aggregate_id, first_held])
            versions[aggregate_id] = first_held - 1
            self._drain(aggregate_id, versions, totals)
        self.con.executemany("INSERT INTO applied VALUES (?, ?) ON CONFLICT (aggregate_id) DO UPDATE SET "
                             "version = excluded.version", list(versions.items()))

    def _note_position_gaps(self, positions: pl.Series, after: int) -> None:
        values = pl.concat([pl.Series([after], dtype=pl.Int64), positions.cast(pl.Int64)])
        jumps = pl.DataFrame({"after": values[:-1], "next": values[1:]}).filter(pl.col("next") - pl.col("after") > 1)
        now = self.clock()
        self.con.executemany("INSERT OR IGNORE INTO gaps VALUES ('position', '', ?, ?, ?, 'open', NULL)",
                             [(a, n, now) for a, n in jumps.iter_rows()])


class _Transaction:
    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> None:
        self.con.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.con.execute("COMMIT" if exc_type is None else "ROLLBACK")


class _Totals:
    def __init__(self) -> None:
        self.received = self.applied = self.duplicates = self.held = self.released = self.dead_lettered = 0

    def result(self, checkpoint: int) -> ProcessResult:
        return ProcessResult(self.received, self.applied, self.duplicates, self.held, self.released,
                             self.dead_lettered, checkpoint)


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """The events as dicts with ``data``/``metadata`` parsed (the handler's view of an event)."""
    columns = [c for c in EVENT_COLUMNS if c in frame.columns]
    out = []
    for row in frame.select(columns).iter_rows(named=True):
        for key in ("data", "metadata"):
            if isinstance(row.get(key), str):
                row[key] = json.loads(row[key])
        out.append(row)
    return out


def _encode(event: dict[str, Any]) -> str:
    body = {k: (v.isoformat() if k in _TIMES and v is not None else v) for k, v in event.items()}
    return json.dumps(body, separators=(",", ":"), default=str)


def _decode(text: str) -> dict[str, Any]:
    from datetime import datetime

    body: dict[str, Any] = json.loads(text)
    for key in _TIMES:
        if isinstance(body.get(key), str):
            body[key] = datetime.fromisoformat(body[key])
    return body
