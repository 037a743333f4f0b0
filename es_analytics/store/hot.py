"""The hot tier: a SQLite database in WAL mode that takes every append.

One transaction per append. A stream's version (the optimistic-concurrency check) is the highest
version of its hot rows (an index seek) or, for a stream with no hot rows, its row in ``streams``, which
holds the heads of sealed streams and is brought up to date when rows are sealed; the view
``stream_heads`` combines the two. A handle remembers the heads and the last position its own appends
left; a one-event append of an event whose id was made with it, to such a stream, is then a single
self-committing INSERT that refuses itself if another connection took a position since (see
``_append_one``), and anything unexpected takes the full path.
``events`` holds the committed events not yet sealed (with each id's hash when the append computed it, so
a seal indexes them in SQL; the seal computes the others). Event ids are unique across the lake: ids made
with their events cannot repeat a stored one and are not indexed in the hot tier (an append of one writes
two B-tree pages: the row and its stream's index entry); ``hot_ids`` maps the other hot ids to their
positions, up to a watermark that any append of ids which may repeat raises first (``catch_up_hot_ids``).
``event_ids`` and ``recent_ids`` (read together through the view ``sealed_ids``) are a compact two-level
hash index of sealed event ids (for idempotent retries; see ``index_sealed_ids``), ``files`` and
``stream_index`` say which sealed file and row group hold a stream. SQLite's locking lets several
processes write one lake at once.

Positions are given explicitly: one more than the larger of the highest hot position and the sealed
position (a seal deletes hot rows only up to the sealed position, so no position is handed out twice).
Lakes made before this rule have an AUTOINCREMENT ``events`` table; both kinds are read and written.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from .._time import EPOCH, MICROSECOND, to_micros
from ..errors import (
    ConcurrencyError,
    DuplicateEventError,
    InvalidArgumentError,
    LakeBusyError,
    LakeError,
)
from ..events import EVENT_SCHEMA, Event

__all__ = ["Durability", "HotRow", "NewRow", "SQLiteHotTier", "event_id_hash", "hot_rows_to_arrow"]

Durability = Literal["full", "normal"]
HOT_COLUMNS = (
    "position, event_id, event_type, schema_version, aggregate_type, aggregate_id, "
    "aggregate_version, occurred_at, recorded_at, data, metadata"
)
HotRow = tuple[int, str, str, int, str, str, int, int, int, str, str]
# A new event with its stream version, for ``append_rows``: event_id, event_type, schema_version,
# aggregate_type, aggregate_id, aggregate_version, occurred_at (µs since the epoch), data, metadata.
NewRow = tuple[str, str, int, str, str, int, int, str, str]
_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    id_hash INTEGER,
    UNIQUE (aggregate_id, aggregate_version)
);
CREATE TABLE IF NOT EXISTS hot_ids (
    event_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (
    aggregate_id TEXT PRIMARY KEY,
    aggregate_type TEXT NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS stream_heads (aggregate_id, aggregate_type, version) AS
    SELECT aggregate_id, aggregate_type, max(aggregate_version) FROM events GROUP BY aggregate_id
    UNION ALL
    SELECT aggregate_id, aggregate_type, version FROM streams s
    WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.aggregate_id = s.aggregate_id);
CREATE TABLE IF NOT EXISTS event_ids (
    id_hash INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (id_hash, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recent_ids (
    id_hash INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (id_hash, position)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS sealed_ids (id_hash, position) AS
    SELECT id_hash, position FROM event_ids UNION ALL SELECT id_hash, position FROM recent_ids;
CREATE VIEW IF NOT EXISTS events_with_id AS
    SELECT position, event_id, event_type, schema_version, aggregate_type, aggregate_id, aggregate_version,
           occurred_at, recorded_at, data, metadata, id_hash FROM events;
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


# Every hot row at or below this position has its id in ``hot_ids``; the rows above it have none.
_HOT_IDS_THROUGH = "hot_ids_through"
HOT_IDS_WATERMARK_SQL = f"coalesce((SELECT value FROM meta WHERE key = '{_HOT_IDS_THROUGH}'), 0)"
_HOT_IDS_CATCH_UP_SQL = (
    f"INSERT INTO hot_ids (event_id, position) SELECT event_id, position FROM events WHERE position > {HOT_IDS_WATERMARK_SQL}"
)
# A one-event append of an id that may repeat a stored one, as one statement (an INSERT into the view
# ``events_with_id``): the row, its ``hot_ids`` entry and the raised watermark, or nothing if the sealed
# position reached the row's position (another connection sealed since), the watermark is not right below
# it (rows of made ids wait to be indexed: the full path catches them up) or the id's hash is among the
# sealed ids. ``hot_ids``'s key refuses a repeat of a hot id, and the primary key a taken position.
_EVENTS_WITH_ID_TRIGGER = f"""
CREATE TRIGGER IF NOT EXISTS events_with_id_insert INSTEAD OF INSERT ON events_with_id BEGIN
    SELECT RAISE(ABORT, 'stale remembered state, or an id that may be stored')
    WHERE EXISTS (SELECT 1 FROM meta WHERE key = 'sealed_position' AND value >= NEW.position)
       OR {HOT_IDS_WATERMARK_SQL} != NEW.position - 1
       OR EXISTS (SELECT 1 FROM sealed_ids WHERE id_hash = NEW.id_hash);
    INSERT INTO events (position, event_id, event_type, schema_version, aggregate_type, aggregate_id,
                        aggregate_version, occurred_at, recorded_at, data, metadata, id_hash)
    VALUES (NEW.position, NEW.event_id, NEW.event_type, NEW.schema_version, NEW.aggregate_type, NEW.aggregate_id,
            NEW.aggregate_version, NEW.occurred_at, NEW.recorded_at, NEW.data, NEW.metadata, NEW.id_hash);
    INSERT INTO hot_ids (event_id, position) VALUES (NEW.event_id, NEW.position);
    UPDATE meta SET value = NEW.position WHERE key = '{_HOT_IDS_THROUGH}';
END
"""
_KNOWN_CHUNK = 400  # ids per lookup statement (two bound parameters each), well under SQLite's limit
_INSERT_SQL = (
    "INSERT INTO events (position, event_id, event_type, schema_version, aggregate_type, aggregate_id, "
    "aggregate_version, occurred_at, recorded_at, data, metadata, id_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
# The highest position handed out so far (hot rows, or the sealed position once they are sealed).
_LAST_POSITION_SQL = (
    "max(coalesce((SELECT max(position) FROM events), 0), "
    "coalesce((SELECT value FROM meta WHERE key = 'sealed_position'), 0))"
)
_FAST_PATH_EVENTS = 5_000
_COLUMNS_FROM = 100  # events in one append from which rows are inserted and kept column by column
_MICROS = pa.timestamp("us", tz="UTC")
# Committed rows waiting to be kept: row tuples, or (first position, last position, table).
_Kept = list[tuple[Any, ...]] | tuple[int, int, pa.Table]
# One statement: the stream's type and version (NULLs for a new stream), the newest recorded_at,
# ({probe}) how many sealed event-id hashes match the batch (bound parameters, never pasted values), and
# the last position handed out.
_HEAD_SQL = (  # scalar subqueries: 8.8 µs here against 13.2 µs for the same as joins of derived tables
    "SELECT coalesce((SELECT aggregate_type FROM events WHERE aggregate_id = ?1 LIMIT 1), "
    "(SELECT aggregate_type FROM streams WHERE aggregate_id = ?1)), "
    "coalesce((SELECT max(aggregate_version) FROM events WHERE aggregate_id = ?1), "
    "(SELECT version FROM streams WHERE aggregate_id = ?1)), max("
    "coalesce((SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1), 0), "
    "coalesce((SELECT value FROM meta WHERE key = 'last_recorded_at'), 0)), {probe}, "
    + _LAST_POSITION_SQL
    + ", (SELECT data_version FROM pragma_data_version())"
)
_HEAD_ONE_SQL = _HEAD_SQL.format(probe="(SELECT count(*) FROM sealed_ids WHERE id_hash = ?2)")
# When this connection's view of the heads is known to be current (see ``_append_fast``): only whether
# another connection committed since (SQLite's data_version) and the sealed-id probe.
_PROBE_SQL = "SELECT (SELECT data_version FROM pragma_data_version()), {probe}"
_PROBE_ONE_SQL = _PROBE_SQL.format(probe="(SELECT count(*) FROM sealed_ids WHERE id_hash = ?1)")
_PROBE_UNSENT_SQL = _PROBE_SQL.format(probe="0")
# One event at the position and version this connection computed from what its own appends left, as
# a plain INSERT … VALUES whose event_type is NULL (refused by NOT NULL) unless the sealed position is
# below ?1. Every commit that adds events, from any connection, takes the next positions, so if another
# one did since, either its first hot row holds ?1 (the primary key refuses the insert) or a seal deleted
# that row and raised the sealed position in the same transaction (the check refuses it). The VALUES form
# and one seek cost ~17 µs less CPU per durable append than INSERT … SELECT … WHERE with SQLite's
# data_version (pragma_data_version() prepares a statement on every call).
_INSERT_ONE_WITH_ID_SQL = _INSERT_SQL.replace("INSERT INTO events ", "INSERT INTO events_with_id ")
_INSERT_ONE_SQL = _INSERT_SQL.split(" VALUES ")[0] + (
    " VALUES (?1,?2,CASE WHEN NOT EXISTS (SELECT 1 FROM meta WHERE key = 'sealed_position' AND value >= ?1) "
    "THEN ?3 END,?4,?5,?6,?7,?8,?9,?10,?11,?12)"
)
_HEAD_UNSENT_SQL = _HEAD_SQL.format(probe="0")
_HEAD_CACHE_STREAMS = 100_000  # streams whose head a connection remembers between its appends
MERGE_MIN_IDS = 250_000  # the recent level of the sealed-id index is merged at max(this, an eighth of the base)
_LOCATIONS_SQL = (
    "SELECT f.path, s.row_group FROM stream_index s JOIN files f USING (file_id) "
    "WHERE s.aggregate_id = ? ORDER BY f.file_id, s.row_group"
)
_STREAM_HOT_SQL = (
    f"SELECT {HOT_COLUMNS} FROM events WHERE aggregate_id = ?1 "
    "AND position > coalesce((SELECT value FROM meta WHERE key = 'sealed_position'), 0) ORDER BY aggregate_version"
)


def hot_rows_to_arrow(rows: Sequence[HotRow]) -> pa.Table:
    """Hot-tier rows (times as µs integers) as a table of the event schema."""
    if not rows:
        return EVENT_SCHEMA.empty_table()
    columns = list(zip(*rows))
    arrays = [pa.array(col, type=f.type) for col, f in zip(columns, EVENT_SCHEMA)]
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)


# One lock per hot-tier file and process, taken around every write transaction (see ``write``).
_WRITERS: dict[str, threading.Lock] = {}
_WRITERS_GUARD = threading.Lock()


def _fresh_writer_locks() -> None:
    """In a forked child: locks held by the parent's threads at the fork would never be released."""
    global _WRITERS, _WRITERS_GUARD
    _WRITERS, _WRITERS_GUARD = {}, threading.Lock()


os.register_at_fork(after_in_child=_fresh_writer_locks)


class _MaybeRetry(Exception):
    """Internal: the fast append path saw something that may be a retry; take the slow path."""


try:  # CPython's own MD5: no OpenSSL algorithm look-up per call (0.44 against 1.06 µs per id here)
    from _md5 import md5 as _md5
except ImportError:  # a Python built without it
    def _md5(data: bytes) -> Any:
        return hashlib.md5(data, usedforsecurity=False)


def event_id_hash(event_id: str) -> int:
    """A 63-bit hash of an event id: the key of the compact sealed-id index.

    It equals ``EVENT_ID_HASH_SQL`` in DuckDB (the upper half of ``md5_number``, shifted), so bulk paths hash
    whole columns in SQL and single appends hash in Python, to the same value.

    Examples
    --------
    >>> event_id_hash("abc")
    4125280303191149419
    """
    return int.from_bytes(_md5(event_id.encode("utf-8")).digest()[8:], "little") >> 1


# The same value as ``md5_number_lower(event_id) >> 1``, which DuckDB 2 defines as a macro that goes through a
# 128-character bit string: 0.55 against 0.125 µs per id here.
EVENT_ID_HASH_SQL = "((md5_number(event_id) >> 64)::UBIGINT >> 1)::BIGINT"


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


@dataclass(frozen=True)
class _Id:
    """Just an event id, for ``_known`` (which reads ``.event_id``)."""

    event_id: str


class SQLiteHotTier:
    """The SQLite (WAL) tier: appends, expected versions, idempotent retries, the stream index."""

    def __init__(self, path: Path, *, durability: Durability = "full", busy_timeout: float = 30.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.same_data: Callable[[str, Event, str], bool] | None = None  # set by the privacy layer
        with _WRITERS_GUARD:
            self._local_writer = _WRITERS.setdefault(str(Path(path).resolve()), threading.Lock())
        # Rows this handle appended, for the next seal (``cache_limit`` rows at most; 0 keeps none), as
        # segments (first position, last position, Arrow table or row tuples).
        self.cache_limit = 0
        self._cache: list[tuple[int, int, pa.Table | list[tuple[Any, ...]]]] = []
        self._cached_rows = 0
        self._cache_guard = threading.Lock()
        self._pending: _Kept | None = None
        # What this connection's last fast append left behind, valid while no other connection has
        # committed (SQLite's data_version is unchanged; a one-event append checks instead that no one
        # else took a position since) and this one made no other change (its total_changes moved only by
        # that append): stream -> (type, version), the last position and recorded_at handed out.
        # ``_seen_version`` (a data_version) None means "not known": read the heads again.
        self._heads: dict[str, tuple[str, int]] = {}
        self._seen_version: int | None = None
        self._seen_changes = -1
        self._last_handed = (0, 0)  # (position, recorded_at)
        self._recorded = 0  # recorded_at of the rows of the running append
        try:
            self.con = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
            self.con.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            # Deleted rows are zeroed where that costs no extra writes. A seal deletes rows that are in
            # Parquet already, and Debian's SQLite defaults to ON, which rewrites every freed page: 66 ms
            # against 9 ms to drop 50k sealed rows. Forgetting and snapshot deletion turn ON themselves.
            self.con.execute("PRAGMA secure_delete=FAST")
            self.con.create_function("es_event_id_hash", 1, event_id_hash, deterministic=True)
            with self.write():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self.con.execute(statement)
                self._renew_events_table()
                self.con.execute(_EVENTS_WITH_ID_TRIGGER)
                columns = {r[1] for r in self.con.execute("PRAGMA table_info(events)")}
                if "id_hash" not in columns:  # a lake made before hot rows kept their id hash
                    self.con.execute("ALTER TABLE events ADD COLUMN id_hash INTEGER")
                if self.meta(_HOT_IDS_THROUGH) is None:  # a new lake, or one made before hot_ids
                    self.rebuild_hot_ids()
                table_sql = self.con.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
                self._autoincrement = "AUTOINCREMENT" in table_sql.upper()
        except sqlite3.DatabaseError as exc:
            raise LakeError(f"cannot open the hot tier {str(path)!r}: {exc}") from exc

    def close(self) -> None:
        self.con.close()

    def _renew_events_table(self) -> None:
        """Inside the opening transaction: give an empty hot events table of an older lake the current
        layout, without the unique index on ``event_id`` (``hot_ids`` does its work, see ``catch_up_hot_ids``).

        Only an empty table is renewed (no rows to copy; every lake is empty after a full seal), so a lake
        with unsealed rows keeps the old index, which is then an extra guard, until its next full seal and
        open. Positions do not depend on the table: they follow the sealed position when it holds no rows.
        """
        con = self.con
        unique_on_id = any(
            index[2] and [c[2] for c in con.execute("SELECT * FROM pragma_index_info(?)", (index[1],))] == ["event_id"]
            for index in con.execute("SELECT * FROM pragma_index_list('events')").fetchall()
        )
        if not unique_on_id or con.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None:
            return
        con.execute("DROP VIEW IF EXISTS stream_heads")
        con.execute("DROP VIEW IF EXISTS events_with_id")  # and its trigger
        con.execute("DROP TABLE events")
        for statement in filter(str.strip, _SCHEMA.split(";")):
            con.execute(statement)

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): committed on success, rolled back on any error.

        Connections of one process to one lake (an appending thread and a background seal) first take a
        process-wide lock: a thread waiting for it is woken when it is released, whereas SQLite's busy
        handler polls with growing sleeps and can starve a writer behind a busy one.
        """
        self._take_writer()
        self._seen_version = None  # any other write may move heads: the next append reads them again
        try:
            self._begin("BEGIN IMMEDIATE")
            try:
                yield self.con
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")
            committed, self._pending = self._pending, None
        finally:
            self._pending = None
            self._local_writer.release()
        if committed:
            self._remember(committed)

    def _take_writer(self) -> threading.Lock:
        """Take this process's lock on the hot tier (released by the caller) and return it; an uncontended
        lock is taken without a timed wait."""
        lock = self._local_writer
        if not lock.acquire(False) and not lock.acquire(timeout=self.busy_timeout):
            raise LakeBusyError(
                f"another thread of this process held the lake's hot tier for {self.busy_timeout:.0f} s"
            )
        return lock

    # -- the rows this handle appended, kept for the next seal ------------------------------------
    def _remember(self, rows: _Kept) -> None:
        """Keep committed rows (position first, contiguous) so a seal need not read them back.

        An append of ``_COLUMNS_FROM`` events or more comes as ``(first, last, table)``, made as Arrow while it
        was inserted (against about 2 µs per event to convert 50k rows at seal time); smaller ones come as
        the row tuples, converted when a seal takes them.
        """
        payload: pa.Table | list[tuple[Any, ...]]
        if isinstance(rows, tuple):
            first, last, payload = rows
        else:
            payload, first, last = rows, rows[0][0], rows[-1][0]
        count = last - first + 1
        with self._cache_guard:
            segments = self._cache
            if segments and first != segments[-1][1] + 1:
                segments.clear()  # another writer took the positions in between
                self._cached_rows = 0
            if self._cached_rows + count > self.cache_limit:
                segments.clear()  # more than a seal will take: it reads them back instead
                self._cached_rows = 0
                return
            segments.append((first, last, payload))
            self._cached_rows += count

    def cached_after(self, position: int, through: int, limit: int) -> pa.Table | None:
        """The hot rows in ``(position, min(through, position + limit)]`` as Arrow if this handle appended
        every one of them (``through``: the highest hot position in the caller's read snapshot)."""
        with self._cache_guard:
            segments = self._cache
            if not segments or segments[0][0] > position + 1 or segments[-1][1] < through:
                return None
            last_wanted = min(through, position + limit)
            parts = []
            for first, last, payload in segments:
                if last <= position or first > last_wanted:
                    continue
                lo, hi = max(position + 1, first) - first, min(last_wanted, last) - first + 1
                if isinstance(payload, list):
                    parts.append(hot_rows_to_arrow(payload[lo:hi]))
                else:
                    parts.append(payload.slice(lo, hi - lo))
        return pa.concat_tables(parts) if parts else EVENT_SCHEMA.empty_table()

    def forget_cached(self, through: int) -> None:
        """Drop kept rows at or below ``through`` (sealed)."""
        with self._cache_guard:
            segments = self._cache
            while segments and segments[0][0] <= through:
                first, last, payload = segments[0]
                if last <= through:
                    segments.pop(0)
                    self._cached_rows -= last - first + 1
                else:
                    cut = through - first + 1
                    rest = payload[cut:] if isinstance(payload, list) else payload.slice(cut)
                    segments[0] = (through + 1, last, rest)
                    self._cached_rows -= cut

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
        try:
            self.con.execute(statement)
            return
        except sqlite3.OperationalError:
            pass  # locked: wait below
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
        row = self.con.execute(
            "SELECT coalesce((SELECT max(aggregate_version) FROM events WHERE aggregate_id = ?1), "
            "(SELECT version FROM streams WHERE aggregate_id = ?1), 0)",
            (aggregate_id,),
        ).fetchone()
        return int(row[0])

    def last_recorded_at(self) -> int:
        return int(self.con.execute(
            "SELECT max(coalesce((SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1), 0), "
            "coalesce((SELECT value FROM meta WHERE key = 'last_recorded_at'), 0))"
        ).fetchone()[0])

    def append(
        self,
        aggregate_id: str,
        aggregate_type: str,
        events: Sequence[Event],
        expected_version: int | None,
        encoded: Sequence[tuple[str, str]],
        lookup_sealed: Any,
        *,
        unsent: bool = False,
    ) -> tuple[int, int]:
        """Append in one transaction. Returns (new version, position of the last new event or 0).

        ``encoded`` holds the (data, metadata) JSON text to store for each event (after any field
        encryption). ``lookup_sealed(positions)`` returns ``StoredMatch``es for sealed positions.
        ``unsent``: every event's id was made with the event and this is its first append, so none can
        be stored anywhere: neither the sealed ids nor ``hot_ids`` are probed, and the ids are not added to
        ``hot_ids`` (any later append of them, by a copy, catches ``hot_ids`` up first).
        """
        if len(events) == 1 and self._seen_version is not None:
            done = self._append_one(aggregate_id, aggregate_type, events[0], expected_version, encoded[0], unsent)
            if done is not None:
                return done
        if len(events) <= _FAST_PATH_EVENTS:
            try:
                return self._append_fast(
                    aggregate_id, aggregate_type, events, expected_version, encoded, lookup_sealed, unsent)
            except _MaybeRetry:
                pass  # rolled back; the slow path below tells a retry from a conflict
        with self.write():
            # Made ids cannot be stored anywhere yet (the fast path skips the probe for them too); looking
            # them up would index every hot row first when there are more than one statement takes.
            known = {} if unsent else self._known(events, lookup_sealed)
            if known:
                return self._retry_version(aggregate_id, aggregate_type, events, encoded, known, self.same_data), 0
            head = self.con.execute(_HEAD_SQL.format(probe="0"), (aggregate_id,)).fetchone()
            return self._insert(aggregate_id, aggregate_type, events, expected_version, encoded, head,
                                index_ids=not unsent)

    def _append_one(
        self,
        aggregate_id: str,
        aggregate_type: str,
        event: Event,
        expected_version: int | None,
        encoded: tuple[str, str],
        unsent: bool = False,
    ) -> tuple[int, int] | None:
        """One event to a stream whose head this connection knows: a single self-committing INSERT. An id
        made with its event (``unsent``) cannot repeat a stored one, so it is neither probed nor indexed;
        another goes in through ``events_with_id``, whose trigger also probes the sealed ids and indexes it
        in ``hot_ids`` (when no rows of made ids wait to be indexed; else the full path catches them up).

        The statement inserts only if no other connection has taken a position since this one's last append (the
        next position is free in the hot tier and above the sealed position: any commit that adds events, or
        seals them, breaks one of the two); SQLite runs it as one transaction, so the check and the write are
        atomic (a write on a stale snapshot fails with SQLITE_BUSY). Positions taken by no one else mean that
        the stream's head and the newest ``recorded_at`` are still the ones this connection left. Returns
        ``None`` when it did not insert, and the caller takes the full path (which also tells a retry from a
        conflict). One statement instead of four: begin, probe, insert, commit.
        """
        con = self.con
        if con.total_changes != self._seen_changes:
            return None
        cached = self._heads.get(aggregate_id)
        if cached is None or cached[0] != aggregate_type or (
                expected_version is not None and expected_version != cached[1]):
            return None
        lock = self._local_writer
        if not lock.acquire(False):  # ``_take_writer`` inline when uncontended: one call less per append
            lock = self._take_writer()
        try:
            if self._seen_version is None or con.in_transaction:
                return None
            last_position, last_recorded = self._last_handed
            position, version = last_position + 1, cached[1] + 1
            recorded = time.time_ns() // 1000
            if recorded < last_recorded:
                recorded = last_recorded
            # A made id's hash waits for the seal (``index_sealed_ids``): right after an fsync, hashing is one
            # of the costliest steps of the whole append.
            id_hash = None if unsent else event_id_hash(event.event_id)  # type: ignore[arg-type]
            occurred = (event.occurred_at - EPOCH) // MICROSECOND  # type: ignore[operator]
            row = (position, event.event_id, event.event_type, event.schema_version, aggregate_type, aggregate_id,
                   version, occurred, recorded, encoded[0], encoded[1], id_hash)
            try:
                if unsent:
                    inserted = con.execute(_INSERT_ONE_SQL, row).rowcount
                else:  # the view's trigger raises rather than insert nothing (a view counts no changes)
                    con.execute(_INSERT_ONE_WITH_ID_SQL, row)
                    inserted = 1
            except sqlite3.Error:
                inserted = 0  # a check or unique index (a retry?), a lock, a stale snapshot: the full path decides
            if inserted != 1:
                self._seen_version = None
                return None
            self._heads[aggregate_id] = (aggregate_type, version)
            self._last_handed = (position, recorded)
            self._seen_changes = con.total_changes
        finally:
            lock.release()
        # The row is not kept for the seal: the seal reads it back from SQLite, which costs about what
        # converting kept row tuples costs (157–240 ms against 116–273 ms for 50k rows), whereas keeping it
        # took several µs of every durable append (docs/decisions.md). Batches of 100 or more are kept, as Arrow.
        return version, position

    def _append_fast(
        self,
        aggregate_id: str,
        aggregate_type: str,
        events: Sequence[Event],
        expected_version: int | None,
        encoded: Sequence[tuple[str, str]],
        lookup_sealed: Any,
        unsent: bool = False,
    ) -> tuple[int, int]:
        """The common case in four statements: begin, head and sealed-id probe, insert, commit.

        Anything that might be a retry (a sealed id hash matches, the version differs, or an id is
        already in the hot tier) raises ``_MaybeRetry`` after rolling back, for the slow path.

        When no other connection has committed since this one's last append (SQLite's ``data_version``
        is unchanged) and this connection changed nothing else (``total_changes`` moved by that append
        alone), the stream's head, the last position and the newest ``recorded_at`` are the ones this
        connection left, so the second statement only probes the sealed ids (3 against 9 B-tree seeks).
        The lock and transaction are taken inline rather than through ``write()``: on this path (every
        batch, and every first append to a stream in a handle) a generator-based context manager costs
        as much as a seek.
        """
        hashes = [event_id_hash(e.event_id) for e in events]  # type: ignore[arg-type]
        con = self.con
        self._take_writer()
        try:
            self._begin("BEGIN IMMEDIATE")
            try:
                cached, hashes_bound = None, True
                if self._seen_version is not None and con.total_changes == self._seen_changes:
                    cached = self._heads.get(aggregate_id)
                if cached is not None:
                    if unsent:
                        probe = con.execute(_PROBE_UNSENT_SQL).fetchone()
                    elif len(hashes) == 1:
                        probe = con.execute(_PROBE_ONE_SQL, hashes).fetchone()
                    else:
                        marks = ",".join("?" * len(hashes))
                        probe = con.execute(_PROBE_SQL.format(
                            probe=f"(SELECT count(*) FROM sealed_ids WHERE id_hash IN ({marks}))"), hashes).fetchone()
                    if probe[0] == self._seen_version:
                        head: tuple[Any, ...] = (cached[0], cached[1], self._last_handed[1], probe[1],
                                                 self._last_handed[0], probe[0])
                    else:
                        cached = None
                if cached is None:
                    if unsent:
                        sql, hashes_bound = _HEAD_UNSENT_SQL, False
                    elif len(hashes) == 1:
                        sql = _HEAD_ONE_SQL
                    else:
                        marks = ",".join(f"?{i}" for i in range(2, len(hashes) + 2))
                        sql = _HEAD_SQL.format(probe=f"(SELECT count(*) FROM sealed_ids WHERE id_hash IN ({marks}))")
                    head = con.execute(sql, (aggregate_id, *hashes) if hashes_bound else (aggregate_id,)).fetchone()
                    if head[5] != self._seen_version:
                        self._heads.clear()  # another connection committed: what this one knew may be stale
                if head[3] or (expected_version is not None and head[1] is not None and expected_version != head[1]):
                    raise _MaybeRetry
                try:
                    version, last_position = self._insert(
                        aggregate_id, aggregate_type, events, expected_version, encoded, head, hashes,
                        index_ids=not unsent)
                except sqlite3.IntegrityError:
                    raise _MaybeRetry from None
            except BaseException:
                self._seen_version = None
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            committed, self._pending = self._pending, None
            heads = self._heads
            if len(heads) >= _HEAD_CACHE_STREAMS:
                heads.clear()
            heads[aggregate_id] = (aggregate_type, version)
            self._last_handed = (last_position, self._recorded)
            self._seen_version = head[5]
            self._seen_changes = con.total_changes
        finally:
            self._pending = None
            self._local_writer.release()
        if committed:
            self._remember(committed)
        return version, last_position

    def _insert(
        self,
        aggregate_id: str,
        aggregate_type: str,
        events: Sequence[Event],
        expected_version: int | None,
        encoded: Sequence[tuple[str, str]],
        head: tuple[Any, ...],
        hashes: Sequence[int] | None = None,
        *,
        index_ids: bool = True,
    ) -> tuple[int, int]:
        """Inside a write transaction: check type and version, insert (the new hot rows are the new head).

        ``head`` is a row of ``_HEAD_SQL``; ``hashes`` the events' id hashes, if computed already.
        ``index_ids``: the ids may repeat stored ones (they were not all made with their events for this
        append), so they go to ``hot_ids``, whose key refuses a repeat (see ``catch_up_hot_ids``).
        """
        con = self.con
        actual = 0 if head[1] is None else int(head[1])
        if head[1] is not None and head[0] != aggregate_type:
            raise InvalidArgumentError(
                f"stream {aggregate_id!r} is a {head[0]!r}, not a {aggregate_type!r}; "
                "an aggregate_id belongs to one aggregate_type"
            )
        if expected_version is not None and expected_version != actual:
            raise ConcurrencyError(aggregate_id, expected_version, actual)
        recorded = self._recorded = max(time.time_ns() // 1000, int(head[2]))
        if hashes is None:
            hashes = [event_id_hash(e.event_id) for e in events]  # type: ignore[arg-type]
        before, count = int(head[4]), len(events)
        if count < _COLUMNS_FROM:
            rows = [
                (
                    before + i, e.event_id, e.event_type, e.schema_version, aggregate_type, aggregate_id,
                    actual + i, to_micros(e.occurred_at), recorded, data, metadata, h,  # type: ignore[arg-type]
                )
                for i, (e, (data, metadata), h) in enumerate(zip(events, encoded, hashes), start=1)
            ]
            if count == 1:
                con.execute(_INSERT_SQL, rows[0])
            else:
                con.executemany(_INSERT_SQL, rows)
            if self.cache_limit:
                self._pending = rows
        else:
            self._insert_columns(
                before + 1, [e.event_id for e in events], [e.event_type for e in events],  # type: ignore[misc]
                [e.schema_version for e in events], aggregate_type, aggregate_id, range(actual + 1, actual + count + 1),
                [(e.occurred_at - EPOCH) // MICROSECOND for e in events], recorded,  # type: ignore[operator]
                [d for d, _ in encoded], [m for _, m in encoded], hashes)
        if index_ids:
            self.catch_up_hot_ids(before + count)
        return actual + count, before + count

    def catch_up_hot_ids(self, last: int | None = None) -> None:
        """Inside a write transaction: put the ids of every hot row above the watermark in ``hot_ids`` and
        raise the watermark to the last hot row (``last``, when the caller knows it: after inserting rows
        whose ids may repeat stored ones, this indexes them and any rows of made ids before them).

        ``hot_ids``'s primary key refuses an id that a hot row holds already (``sqlite3.IntegrityError``,
        which the append paths treat as a possible retry). Ids made with their events cannot repeat a stored
        one, so their appends skip this: one B-tree fewer to write per append (a single durable append
        +5%, a batch of 1,000 +9%; docs/decisions.md). ``known_ids`` reads the rows above the watermark
        directly.
        """
        added = self.con.execute(_HOT_IDS_CATCH_UP_SQL).rowcount
        if last is None and added:
            last = self.con.execute("SELECT max(position) FROM events").fetchone()[0]
        if last is not None:
            self.set_meta(_HOT_IDS_THROUGH, last)

    def rebuild_hot_ids(self) -> None:
        """Inside a write transaction: make ``hot_ids`` again from the hot rows (a new lake, one made before
        ``hot_ids``, a repair of ``check``)."""
        self.con.execute("DELETE FROM hot_ids")
        self.set_meta(_HOT_IDS_THROUGH, 0)
        self.catch_up_hot_ids()

    def _insert_columns(
        self, first: int, ids: Sequence[str], types: Sequence[str], schemas: Sequence[int],
        aggregate_types: str | Sequence[str], aggregate_ids: str | Sequence[str], versions: Sequence[int],
        occurred: Sequence[int], recorded: int, data: Sequence[str], metadata: Sequence[str], hashes: Sequence[int],
    ) -> None:
        """Inside a write transaction: insert rows given column by column at positions ``first`` on, and keep
        them as Arrow for the seal (``aggregate_types`` / ``aggregate_ids``: one value for every row, or one
        per row).

        ``zip`` hands executemany one tuple it reuses for every row (the statement lets go of each before the
        next): 7 tracked objects per 1,000 rows against 1,001 for a list of row tuples, so a large batch gives
        the garbage collector nothing to count, and the Arrow copy is made from the same lists.
        """
        count = len(ids)
        positions = range(first, first + count)

        def each(value: str | Sequence[str]) -> Any:
            return repeat(value) if isinstance(value, str) else value

        def strings(value: str | Sequence[str]) -> pa.Array:
            if isinstance(value, str):
                return pa.repeat(pa.scalar(value, pa.string()), count)
            return pa.array(value, pa.string())

        self.con.executemany(_INSERT_SQL, zip(
            positions, ids, types, schemas, each(aggregate_types), each(aggregate_ids), versions, occurred,
            repeat(recorded), data, metadata, hashes))
        if self.cache_limit:
            self._pending = (first, first + count - 1, pa.Table.from_arrays([
                pa.array(positions, pa.int64()), pa.array(ids, pa.string()), pa.array(types, pa.string()),
                pa.array(schemas, pa.int32()), strings(aggregate_types), strings(aggregate_ids),
                pa.array(versions, pa.int64()), pa.array(occurred, _MICROS), pa.repeat(pa.scalar(recorded, _MICROS), count),
                pa.array(data, pa.string()), pa.array(metadata, pa.string()),
            ], schema=EVENT_SCHEMA))

    def _known(self, events: Sequence[Event], lookup_sealed: Any) -> dict[str, StoredMatch]:
        """The stored events, among those given, keyed by event id."""
        return self.known_ids([str(e.event_id) for e in events], lookup_sealed)

    def known_ids(self, ids: Sequence[str], lookup_sealed: Any) -> dict[str, StoredMatch]:
        """The stored events among ``ids``, keyed by event id: hot rows and sealed positions are looked
        up in one statement per chunk of ids; sealed hits are confirmed by reading them."""
        found: dict[str, StoredMatch] = {}
        positions: list[int] = []
        if self.con.in_transaction and len(ids) > _KNOWN_CHUNK:
            self.catch_up_hot_ids()  # else each chunk would scan every row above the watermark
        for start in range(0, len(ids), _KNOWN_CHUNK):
            chunk = ids[start:start + _KNOWN_CHUNK]
            marks = ",".join("?" * len(chunk))
            # Hot rows through ``hot_ids``, and those above its watermark (appends of ids made with their
            # events, not indexed) by a range scan; then the sealed ids by hash.
            rows = self.con.execute(
                "SELECT e.event_id, e.event_type, e.schema_version, e.aggregate_type, e.aggregate_id, "
                "e.aggregate_version, e.occurred_at, e.data, e.metadata, NULL FROM hot_ids h "
                f"JOIN events e ON e.position = h.position WHERE h.event_id IN ({marks}) UNION ALL "
                "SELECT event_id, event_type, schema_version, aggregate_type, aggregate_id, aggregate_version, "
                "occurred_at, data, metadata, NULL FROM events "
                f"WHERE position > {HOT_IDS_WATERMARK_SQL} AND event_id IN ({marks}) UNION ALL "
                "SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, position FROM sealed_ids "
                f"WHERE id_hash IN ({marks})",
                [*chunk, *chunk, *(event_id_hash(i) for i in chunk)],
            ).fetchall()
            for r in rows:
                if r[9] is None:
                    found[r[0]] = StoredMatch(*r[:9])
                else:
                    positions.append(int(r[9]))
        if positions:
            wanted = set(ids) - set(found)
            for match in lookup_sealed(positions):
                if match.event_id in wanted:
                    found[match.event_id] = match
        return found

    @staticmethod
    def _retry_version(
        aggregate_id: str,
        aggregate_type: str,
        events: Sequence[Event],
        encoded: Sequence[tuple[str, str]],
        known: dict[str, StoredMatch],
        same_data: Callable[[str, Event, str], bool] | None = None,
    ) -> int:
        """Accept a retry of an acknowledged append (same ids, same content) or raise.

        ``same_data(stored, event, encoded)`` compares payloads when the stored text can differ for the
        same content (encrypted personal fields get a fresh nonce on every append).
        """
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
                and (match.data == data or (same_data is not None and same_data(match.data, event, data)))
                and match.metadata == metadata
            )
            if not same:
                raise DuplicateEventError(match.event_id)
            versions.append(match.aggregate_version)
        if versions != list(range(versions[0], versions[0] + len(versions))):
            raise DuplicateEventError(events[0].event_id, "the stored events are not one earlier append")  # type: ignore[arg-type]
        return versions[-1]

    # -- appends to several streams at once ---------------------------------------------------
    def append_rows(
        self,
        rows: Sequence[NewRow],
        lookup_sealed: Any,
        *,
        check_event_ids: bool = True,
        within: Callable[[sqlite3.Connection], None] | None = None,
    ) -> int | None:
        """Append events of several streams in ONE transaction, in the order given.

        Each row carries its ``aggregate_version``: a stream's rows must continue the stream's current
        version without gaps or repeats, else ``ConcurrencyError`` and nothing is written (the same rule
        as ``append`` with ``expected_version`` = the first row's version - 1). The rows get consecutive
        positions, so concurrent batches never interleave. ``within(con)`` runs in the same transaction
        after the rows are written (e.g. to store a consumer's checkpoint); whatever it raises rolls
        everything back. With ``check_event_ids``, a batch whose events are all stored already with the
        same content is an acknowledged retry: nothing is written, ``within`` does not run, and the
        result is ``None``; a known id with other content raises ``DuplicateEventError``.

        Returns the position of the first row (the others follow it), or ``None`` if nothing was written.
        """
        with self.write():
            if rows and check_event_ids and self._is_retry(rows, lookup_sealed):
                return None
            first = self._insert_rows(rows) if rows else None
            if within is not None:
                within(self.con)
            return first

    def _is_retry(self, rows: Sequence[NewRow], lookup_sealed: Any) -> bool:
        """True if every row is stored already with the same content; raises on a conflicting reuse."""
        known: dict[str, StoredMatch] = {}
        for start in range(0, len(rows), _CHUNK):
            known.update(self._known([_Id(r[0]) for r in rows[start:start + _CHUNK]], lookup_sealed))  # type: ignore[misc]
        if not known:
            return False
        for row in rows:
            match = known.get(row[0])
            if match is None:
                raise DuplicateEventError(
                    next(iter(known)), "this batch mixes events already stored with new ones; append the new ones alone"
                )
            stored = (match.event_id, match.event_type, match.schema_version, match.aggregate_type,
                      match.aggregate_id, match.aggregate_version, match.occurred_at, match.data, match.metadata)
            if stored != tuple(row):
                raise DuplicateEventError(row[0])
        return True

    def _insert_rows(self, rows: Sequence[NewRow]) -> int:
        con = self.con
        ids = list(dict.fromkeys(r[4] for r in rows))
        heads: dict[str, tuple[str, int]] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            for aggregate_id, aggregate_type, version in con.execute(
                f"SELECT aggregate_id, aggregate_type, version FROM stream_heads WHERE aggregate_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                heads[aggregate_id] = (aggregate_type, int(version))
        running = {a: v for a, (_, v) in heads.items()}
        types = {a: t for a, (t, _) in heads.items()}
        for row in rows:
            aggregate_type, aggregate_id, version = row[3], row[4], row[5]
            known_type = types.setdefault(aggregate_id, aggregate_type)
            if known_type != aggregate_type:
                raise InvalidArgumentError(
                    f"stream {aggregate_id!r} is a {known_type!r}, not a {aggregate_type!r}; "
                    "an aggregate_id belongs to one aggregate_type"
                )
            actual = running.get(aggregate_id, 0)
            if version != actual + 1:
                raise ConcurrencyError(aggregate_id, version - 1, actual)
            running[aggregate_id] = version
        recorded = max(time.time_ns() // 1000, self.last_recorded_at())
        before = self.last_position()
        if len(rows) < _COLUMNS_FROM:
            new_rows = [(before + i, *r[:7], recorded, r[7], r[8], event_id_hash(r[0])) for i, r in enumerate(rows, start=1)]
            con.executemany(_INSERT_SQL, new_rows)
            if self.cache_limit:
                self._pending = new_rows
        else:
            event_ids, event_types, schemas, aggregate_types, aggregate_ids, versions, occurred, data, metadata = zip(*rows)
            self._insert_columns(before + 1, event_ids, event_types, schemas, aggregate_types, aggregate_ids, versions,
                                 occurred, recorded, data, metadata, [event_id_hash(i) for i in event_ids])
        self.catch_up_hot_ids(before + len(rows))
        return before + 1

    def keep_heads(self, after: int, through: int) -> None:
        """Inside a write transaction: record in ``streams`` the heads of the streams of the hot rows in
        ``(after, through]``, before those rows are deleted (they are sealed)."""
        self.con.execute(
            "INSERT INTO streams (aggregate_id, aggregate_type, version) "
            "SELECT aggregate_id, aggregate_type, max(aggregate_version) FROM events "
            "WHERE position > ? AND position <= ? GROUP BY aggregate_id "
            "ON CONFLICT (aggregate_id) DO UPDATE SET version = max(version, excluded.version)",
            (after, through),
        )

    def index_sealed_ids(self, after: int, through: int) -> None:
        """Inside a write transaction: add the hashes of the hot rows' ids in ``(after, through]`` to the
        sealed-id index. Rows stored without a hash (single appends of events with generated ids, and
        rows of lakes made before hashes were stored) are hashed here by the registered function."""
        added = self.con.execute(
            "INSERT OR IGNORE INTO recent_ids (id_hash, position) "
            "SELECT coalesce(id_hash, es_event_id_hash(event_id)), position FROM events "
            "WHERE position > ? AND position <= ? ORDER BY 1, 2",
            (after, through),
        ).rowcount
        self.ids_added(max(added, 0), into_base=False)

    # -- the sealed-id index: two levels ------------------------------------------------------
    # Id hashes are random keys: adding a seal's 50k of them to one index of 10M dirtied most of its pages
    # (370 ms and ~128 MB of WAL per seal here). A seal adds them to ``recent_ids`` instead, which stays
    # small, and ``recent_ids`` is merged into ``event_ids`` in one pass in key order once it holds an
    # eighth of it (see docs/decisions.md). Look-ups read both through the view ``sealed_ids``.
    def ids_target(self, count: int) -> str:
        """Inside a write transaction: the table to add ``count`` id hashes to (a bulk import large
        enough to be a merge by itself goes straight into ``event_ids``)."""
        return "event_ids" if count >= self._merge_threshold() else "recent_ids"

    def _merge_threshold(self) -> int:
        base = self.meta("event_ids_rows")
        if base is None:  # a lake from before the two levels: counted once
            base = self.con.execute("SELECT count(*) FROM event_ids").fetchone()[0]
            self.set_meta("event_ids_rows", base)
        return max(MERGE_MIN_IDS, int(base) // 8)

    def ids_added(self, added: int, *, into_base: bool) -> None:
        """Inside a write transaction: count ``added`` new id hashes; merge the recent level when due."""
        if into_base:
            self.set_meta("event_ids_rows", int(self.meta("event_ids_rows", 0)) + added)
            return
        recent = int(self.meta("recent_ids_rows", 0)) + added
        if recent < self._merge_threshold():
            self.set_meta("recent_ids_rows", recent)
            return
        merged = self.con.execute(
            "INSERT OR IGNORE INTO event_ids (id_hash, position) SELECT id_hash, position FROM recent_ids").rowcount
        self.con.execute("DELETE FROM recent_ids")
        self.set_meta("event_ids_rows", int(self.meta("event_ids_rows", 0)) + max(merged, 0))
        self.set_meta("recent_ids_rows", 0)

    def delete_through(self, position: int) -> None:
        """Inside a write transaction: delete the hot rows at or below ``position`` (they are sealed).

        When that is every hot row, an unqualified DELETE lets SQLite drop the table's pages at once
        instead of removing rows and index entries one by one (73 ms against a few for 50k rows).
        """
        last = self.con.execute("SELECT max(position) FROM events").fetchone()[0]
        if last is None:
            return
        if last <= position:
            self.con.execute("DELETE FROM events")
            self.con.execute("DELETE FROM hot_ids")
        else:
            self.con.execute("DELETE FROM events WHERE position <= ?", (position,))
            self.con.execute("DELETE FROM hot_ids WHERE position <= ?", (position,))

    # -- reads --------------------------------------------------------------------------------
    def arrow_after(self, position: int, limit: int) -> pa.Table:
        """Hot rows above ``position`` (at most ``limit``) as Arrow, in position order.

        Each column comes out of SQLite as one text (``group_concat`` with a separator that valid ids and
        JSON text never hold) and is split and cast by Arrow: about half the time of building a Python
        tuple per row. Should a value hold the separator after all, the count differs and the rows are
        read the ordinary way.
        """
        columns = ", ".join(f"group_concat({c.strip()}, char(31))" for c in HOT_COLUMNS.split(","))
        row = self.con.execute(
            f"SELECT count(*), {columns} FROM (SELECT {HOT_COLUMNS} FROM events WHERE position > ? "
            "ORDER BY position LIMIT ?)",
            (position, limit),
        ).fetchone()
        count = int(row[0])
        if not count:
            return EVENT_SCHEMA.empty_table()
        arrays = []
        for text, field in zip(row[1:], EVENT_SCHEMA):
            parts = pc.split_pattern(pa.array([str(text)], pa.large_string()), "\x1f")[0].values
            if len(parts) != count:
                return hot_rows_to_arrow(self.rows_after(position, limit=limit))
            if pa.types.is_timestamp(field.type):
                arrays.append(pc.cast(pc.cast(parts, pa.int64()), field.type))
            else:
                arrays.append(pc.cast(parts, field.type))
        return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)

    def rows_after(self, position: int, *, limit: int | None = None) -> list[HotRow]:
        sql = f"SELECT {HOT_COLUMNS} FROM events WHERE position > ? ORDER BY position"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.con.execute(sql, (position,)).fetchall()

    def rows_between(
        self, after: int, until: int | None = None, *, limit: int | None = None, types: Sequence[str] | None = None
    ) -> list[HotRow]:
        """Hot rows with ``after < position <= until`` (and of ``types``, if given), in position order."""
        sql, params = f"SELECT {HOT_COLUMNS} FROM events WHERE position > ?", [after]
        if until is not None:
            sql += " AND position <= ?"
            params.append(until)
        if types:
            sql += f" AND event_type IN ({','.join('?' * len(types))})"
            params += list(types)  # type: ignore[arg-type]
        sql += " ORDER BY position"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return self.con.execute(sql, params).fetchall()

    def stream_snapshot(self, aggregate_id: str) -> tuple[list[tuple[str, int]], list[HotRow]]:
        """One stream's sealed locations (file, row group) and its hot rows, from one snapshot.

        Two statements in one read transaction (its snapshot is taken by the first): the hot rows are
        those above the sealed position, which a seal moves in the same transaction as it indexes them.
        """
        con = self.con
        self._begin("BEGIN")
        try:
            locations = con.execute(_LOCATIONS_SQL, (aggregate_id,)).fetchall()
            rows = con.execute(_STREAM_HOT_SQL, (aggregate_id,)).fetchall()
        finally:
            con.execute("COMMIT")
        return locations, rows

    def max_position(self) -> int:
        row = self.con.execute("SELECT max(position) FROM events").fetchone()
        hot = 0 if row is None or row[0] is None else int(row[0])
        return max(hot, int(self.meta("sealed_position", 0)))

    def last_position(self) -> int:
        """The highest position handed out so far (inside a write transaction: the one before the next)."""
        last = int(self.con.execute(f"SELECT {_LAST_POSITION_SQL}").fetchone()[0])
        if self._autoincrement:  # a lake whose events table still counts positions in sqlite_sequence
            row = self.con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            last = max(last, 0 if row is None else int(row[0]))
        return last

    def reserve_positions(self, count: int) -> int:
        """Inside a write transaction: take ``count`` fresh positions; returns the first.

        The caller raises the sealed position past them in the same transaction (a bulk import does).
        """
        seq = self.last_position()
        self._set_sequence(seq + count)
        return seq + 1

    def _set_sequence(self, value: int) -> None:
        if not self._autoincrement:
            return  # positions follow the sealed position, which the caller sets
        if self.con.execute("SELECT 1 FROM sqlite_sequence WHERE name = 'events'").fetchone() is None:
            self.con.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (value,))
        else:
            self.con.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'events'", (value,))

    def bump_sequence(self, value: int) -> None:
        """Make sure no position at or below ``value`` is handed out again."""
        self._set_sequence(value)
