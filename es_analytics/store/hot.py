"""The hot tier: a SQLite database in WAL mode that takes every append.

One transaction per append. ``streams`` holds each stream's version (the optimistic-concurrency check),
``events`` the committed events not yet sealed, ``event_ids`` a compact hash index of sealed event ids
(for idempotent retries), ``files`` and ``stream_index`` say which sealed file and row group hold a stream.
SQLite's locking lets several processes write one lake at once.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .._time import to_micros
from ..errors import (
    ConcurrencyError,
    DuplicateEventError,
    InvalidArgumentError,
    LakeBusyError,
    LakeError,
)
from ..events import Event

__all__ = ["Durability", "HotRow", "SQLiteHotTier", "event_id_hash"]

Durability = Literal["full", "normal"]
HOT_COLUMNS = (
    "position, event_id, event_type, schema_version, aggregate_type, aggregate_id, "
    "aggregate_version, occurred_at, recorded_at, data, metadata"
)
HotRow = tuple[int, str, str, int, str, str, int, int, int, str, str]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    UNIQUE (aggregate_id, aggregate_version)
);
CREATE TABLE IF NOT EXISTS streams (
    aggregate_id TEXT PRIMARY KEY,
    aggregate_type TEXT NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_ids (
    id_hash INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (id_hash, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    file_id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS stream_index (
    aggregate_id TEXT NOT NULL,
    file_id INTEGER NOT NULL,
    row_group INTEGER NOT NULL,
    PRIMARY KEY (aggregate_id, file_id, row_group)
) WITHOUT ROWID;
"""


def event_id_hash(event_id: str) -> int:
    """A signed 64-bit hash of an event id: the key of the compact sealed-id index."""
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class StoredMatch:
    """What the lake holds under an event id: enough to tell a retry from a conflicting reuse."""

    event_id: str
    event_type: str
    schema_version: int
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    occurred_at: int
    data: str
    metadata: str


class SQLiteHotTier:
    """The SQLite (WAL) tier: appends, expected versions, idempotent retries, the stream index."""

    def __init__(self, path: Path, *, durability: Durability = "full", busy_timeout: float = 30.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        try:
            self.con = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
            self.con.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            with self.write():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self.con.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise LakeError(f"cannot open the hot tier {str(path)!r}: {exc}") from exc

    def close(self) -> None:
        self.con.close()

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): committed on success, rolled back on any error."""
        self._begin("BEGIN IMMEDIATE")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same snapshot."""
        self._begin("BEGIN")
        try:
            self.con.execute("SELECT 1 FROM meta LIMIT 1").fetchall()  # pins the WAL snapshot
            yield self.con
        finally:
            self.con.execute("COMMIT")

    def _begin(self, statement: str) -> None:
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                self.con.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise LakeError(f"hot tier error: {exc}") from exc
                if time.monotonic() > deadline:
                    raise LakeBusyError(
                        f"the lake's hot tier stayed locked for {self.busy_timeout:.0f} s; "
                        "another process holds a long write"
                    ) from exc
                time.sleep(0.005)

    # -- meta ---------------------------------------------------------------------------------
    def meta(self, key: str, default: Any = None) -> Any:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: Any) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- appends ------------------------------------------------------------------------------
    def current_version(self, aggregate_id: str) -> int:
        row = self.con.execute("SELECT version FROM streams WHERE aggregate_id = ?", (aggregate_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def last_recorded_at(self) -> int:
        row = self.con.execute("SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1").fetchone()
        sealed = int(self.meta("last_recorded_at", 0))
        return sealed if row is None else max(sealed, int(row[0]))

    def append(
        self,
        aggregate_id: str,
        aggregate_type: str,
        events: Sequence[Event],
        expected_version: int | None,
        encoded: Sequence[tuple[str, str]],
        lookup_sealed: Any,
    ) -> tuple[int, bool]:
        """Append in one transaction. Returns (new version, whether anything was written).

        ``encoded`` holds the (data, metadata) JSON text to store for each event (after any field
        encryption). ``lookup_sealed(positions)`` returns ``StoredMatch``es for sealed positions.
        """
        con = self.con
        with self.write():
            known = self._known(events, lookup_sealed)
            if known:
                return self._retry_version(aggregate_id, aggregate_type, events, encoded, known), False
            row = con.execute(
                "SELECT aggregate_type, version FROM streams WHERE aggregate_id = ?", (aggregate_id,)
            ).fetchone()
            actual = 0 if row is None else int(row[1])
            if row is not None and row[0] != aggregate_type:
                raise InvalidArgumentError(
                    f"stream {aggregate_id!r} is a {row[0]!r}, not a {aggregate_type!r}; "
                    "an aggregate_id belongs to one aggregate_type"
                )
            if expected_version is not None and expected_version != actual:
                raise ConcurrencyError(aggregate_id, expected_version, actual)
            recorded = max(int(time.time() * 1_000_000), self.last_recorded_at())
            rows = [
                (
                    e.event_id, e.event_type, e.schema_version, aggregate_type, aggregate_id,
                    actual + i, to_micros(e.occurred_at), recorded, data, metadata,  # type: ignore[arg-type]
                )
                for i, (e, (data, metadata)) in enumerate(zip(events, encoded), start=1)
            ]
            con.executemany(
                "INSERT INTO events (event_id, event_type, schema_version, aggregate_type, aggregate_id, "
                "aggregate_version, occurred_at, recorded_at, data, metadata) VALUES (?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            new_version = actual + len(events)
            if row is None:
                con.execute(
                    "INSERT INTO streams (aggregate_id, aggregate_type, version) VALUES (?, ?, ?)",
                    (aggregate_id, aggregate_type, new_version),
                )
            else:
                con.execute("UPDATE streams SET version = ? WHERE aggregate_id = ?", (new_version, aggregate_id))
            return new_version, True

    def _known(self, events: Sequence[Event], lookup_sealed: Any) -> dict[str, StoredMatch]:
        """The stored events, among those given, keyed by event id (hot tier first, then sealed)."""
        ids = [e.event_id for e in events]
        marks = ",".join("?" * len(ids))
        found = {
            r[0]: StoredMatch(*r)
            for r in self.con.execute(
                "SELECT event_id, event_type, schema_version, aggregate_type, aggregate_id, aggregate_version, "
                f"occurred_at, data, metadata FROM events WHERE event_id IN ({marks})",
                ids,
            )
        }
        missing = [i for i in ids if i not in found]
        if missing:
            hashes = [event_id_hash(i) for i in missing]
            positions = [
                int(r[0])
                for r in self.con.execute(
                    f"SELECT position FROM event_ids WHERE id_hash IN ({','.join('?' * len(hashes))})", hashes
                )
            ]
            if positions:
                for match in lookup_sealed(positions):
                    if match.event_id in missing:
                        found[match.event_id] = match
        return found

    @staticmethod
    def _retry_version(
        aggregate_id: str,
        aggregate_type: str,
        events: Sequence[Event],
        encoded: Sequence[tuple[str, str]],
        known: dict[str, StoredMatch],
    ) -> int:
        """Accept a retry of an acknowledged append (same ids, same content) or raise."""
        versions = []
        for event, (data, metadata) in zip(events, encoded):
            match = known.get(event.event_id)  # type: ignore[arg-type]
            if match is None:
                raise DuplicateEventError(
                    next(iter(known)),
                    "this batch mixes events already stored with new ones; append the new ones alone",
                )
            same = (
                match.event_type == event.event_type
                and match.schema_version == event.schema_version
                and match.aggregate_id == aggregate_id
                and match.aggregate_type == aggregate_type
                and match.occurred_at == to_micros(event.occurred_at)  # type: ignore[arg-type]
                and match.data == data
                and match.metadata == metadata
            )
            if not same:
                raise DuplicateEventError(match.event_id)
            versions.append(match.aggregate_version)
        if versions != list(range(versions[0], versions[0] + len(versions))):
            raise DuplicateEventError(events[0].event_id, "the stored events are not one earlier append")  # type: ignore[arg-type]
        return versions[-1]

    # -- reads --------------------------------------------------------------------------------
    def rows_after(self, position: int, *, limit: int | None = None) -> list[HotRow]:
        sql = f"SELECT {HOT_COLUMNS} FROM events WHERE position > ? ORDER BY position"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.con.execute(sql, (position,)).fetchall()

    def stream_rows(self, aggregate_id: str, after_position: int) -> list[HotRow]:
        return self.con.execute(
            f"SELECT {HOT_COLUMNS} FROM events WHERE aggregate_id = ? AND position > ? ORDER BY aggregate_version",
            (aggregate_id, after_position),
        ).fetchall()

    def stream_locations(self, aggregate_id: str) -> list[tuple[str, int]]:
        return self.con.execute(
            "SELECT f.path, s.row_group FROM stream_index s JOIN files f USING (file_id) "
            "WHERE s.aggregate_id = ? ORDER BY f.file_id, s.row_group",
            (aggregate_id,),
        ).fetchall()

    def max_position(self) -> int:
        row = self.con.execute("SELECT max(position) FROM events").fetchone()
        hot = 0 if row is None or row[0] is None else int(row[0])
        return max(hot, int(self.meta("sealed_position", 0)))

    def hot_count(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM events").fetchone()[0])

    def reserve_positions(self, count: int) -> int:
        """Inside a write transaction: take ``count`` fresh positions; returns the first."""
        row = self.con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        seq = max(0 if row is None else int(row[0]), int(self.meta("sealed_position", 0)))
        hot = self.con.execute("SELECT max(position) FROM events").fetchone()[0]
        seq = max(seq, hot or 0)
        self._set_sequence(seq + count)
        return seq + 1

    def _set_sequence(self, value: int) -> None:
        if self.con.execute("SELECT 1 FROM sqlite_sequence WHERE name = 'events'").fetchone() is None:
            self.con.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (value,))
        else:
            self.con.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'events'", (value,))

    def bump_sequence(self, value: int) -> None:
        """Make sure no position at or below ``value`` is handed out again."""
        self._set_sequence(value)
