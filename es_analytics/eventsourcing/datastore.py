"""One lake handle shared by a factory's recorders: the lock, the codec and the side tables.

The codec maps the library's ``StoredEvent`` onto the event record: ``originator_id`` becomes
``aggregate_id`` (a UUID as its canonical text), ``originator_version`` the ``aggregate_version`` (shifted
by a per-stream offset when a stream does not start at 1), ``topic`` the ``event_type``, and ``state``
the ``data``: the state's own JSON text, byte for byte, when it is a JSON object (what the library's
``JSONTranscoder`` writes), else ``{"base64": …}`` with ``{"state_encoding": "base64"}`` in ``metadata``
(compressed or encrypted states). ``occurred_at`` is the domain event's ``timestamp`` when the JSON holds
one, ``schema_version`` its ``class_version``, and ``event_id`` is ``"<aggregate_id>:<originator_version>"``
(unique, as the pair is, and telling an analyst where the event belongs).

Side tables, in the lake's SQLite hot tier so that they commit in the same transaction as the events:
``eventsourcing_tracking`` (one row per upstream application), ``eventsourcing_version_offsets`` (streams
whose first version is not 1) and ``eventsourcing_stored_<purpose>`` (snapshots: not events, so not in
the lake's event record).
"""

from __future__ import annotations

import base64
import json
import math
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from eventsourcing.persistence import StoredEvent, Tracking

from .._time import now_utc, to_micros
from ..errors import ConcurrencyError, InvalidArgumentError, LakeBusyError
from ..events import (
    EVENT_SCHEMA,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_JSON_INT,
    MIN_JSON_INT,
    RESERVED_KEY,
    check_aggregate_id,
    check_identifier,
    parse_json,
)
from ..lake import Lake
from ..store.hot import NewRow
from .errors import (
    LakeConflictError,
    LakeDataError,
    LakeOperationalError,
    LakeVersionConflictError,
)

__all__ = ["BASE64_METADATA", "LakeDatastore", "OriginatorIdType"]

OriginatorIdType = Literal["uuid", "text"]
BASE64_METADATA = '{"state_encoding":"base64"}'
_EVENT_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:$<>-]{0,254}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_CHUNK = 500
READ_AHEAD = 50_000  # sealed rows fetched at once when a reader pages through sealed positions

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS eventsourcing_tracking ("
    "application_name TEXT PRIMARY KEY, notification_id INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS eventsourcing_version_offsets ("
    "aggregate_id TEXT PRIMARY KEY, version_offset INTEGER NOT NULL) WITHOUT ROWID",
)


class LakeDatastore:
    """A lake opened for the ``eventsourcing`` library, shared by the recorders of one factory.

    The lake's SQLite connection serves one thread at a time, so every recorder call holds ``lock``.
    Parameters are the factory's settings (see :class:`~es_analytics.eventsourcing.LakeFactory`).
    """

    def __init__(
        self,
        lake: Lake,
        *,
        originator_id_type: OriginatorIdType = "uuid",
        default_aggregate_type: str = "Aggregate",
        poll_interval: float = 0.1,
    ) -> None:
        if originator_id_type not in ("uuid", "text"):
            raise InvalidArgumentError(f"originator_id_type must be 'uuid' or 'text', got {originator_id_type!r}")
        self.lake = lake
        self.store = lake._store
        self.originator_id_type = originator_id_type
        self.default_aggregate_type = check_identifier(default_aggregate_type, "default_aggregate_type")
        self.poll_interval = poll_interval
        self.lock = threading.RLock()
        self._listeners: set[threading.Event] = set()
        self._topics: dict[str, tuple[str, str]] = {}
        self._window: tuple[int, int, pa.Table] | None = None
        self._closed = False
        with self.transaction() as con:
            for statement in _SCHEMA:
                con.execute(statement)

    def close(self) -> None:
        """Close the lake handle (twice is harmless)."""
        with self.lock:
            if not self._closed:
                self._closed = True
                self.lake.close()

    # -- transactions and errors ------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The lock plus one write transaction of the hot tier, with errors in the library's terms."""
        with self.lock, self.errors():
            with self.store.hot.write() as con:
                yield con

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Raise lake errors as the library's persistence errors (which are also es_analytics errors)."""
        try:
            yield
        except (LakeConflictError, LakeDataError, LakeOperationalError):
            raise
        except ConcurrencyError as exc:
            raise LakeVersionConflictError(exc.aggregate_id, exc.expected, exc.actual) from exc
        except LakeBusyError as exc:
            raise LakeOperationalError(str(exc)) from exc
        except sqlite3.IntegrityError as exc:
            raise LakeConflictError(f"the record exists already: {exc}") from exc
        except InvalidArgumentError as exc:
            raise LakeDataError(str(exc)) from exc

    # -- subscriptions --------------------------------------------------------------------------
    def listen(self, event: threading.Event) -> None:
        with self.lock:
            self._listeners.add(event)

    def unlisten(self, event: threading.Event) -> None:
        with self.lock:
            self._listeners.discard(event)

    def notify(self) -> None:
        with self.lock:
            for event in self._listeners:
                event.set()

    # -- reading the log ----------------------------------------------------------------------------
    def read_log(self, after: int, until: int | None, limit: int, types: Sequence[str]) -> pa.Table:
        """Events with ``after < position <= until`` of ``types`` (all if empty), at most ``limit``.

        Sealed files are sorted by stream, not position, so one page of sealed positions costs a scan;
        a reader paging through them (a follower catching up) gets pages from a read-ahead window of
        ``READ_AHEAD`` positions instead. Committed positions never change, so the window stays right.
        """
        if limit <= 0 or (until is not None and until <= after):
            return EVENT_SCHEMA.empty_table()
        sealed = int(self.store.hot.meta("sealed_position", 0))
        if after >= sealed:
            return self.store.read_positions(after, until=until, limit=limit, types=list(types) or None)
        window = self._window
        if window is None or not window[0] <= after < window[1]:
            last = min(sealed, after + READ_AHEAD)
            window = self._window = (after, last, self.store.read_positions(after, until=last))
        table = window[2]
        positions = table["position"]
        mask = pc.greater(positions, after)
        if until is not None:
            mask = pc.and_(mask, pc.less_equal(positions, until))
        if types:
            mask = pc.and_(mask, pc.is_in(table["event_type"], pa.array(list(types), pa.string())))
        page = table.filter(mask).slice(0, limit)
        if page.num_rows < limit and (until is None or until > window[1]):
            rest = self.read_log(window[1], until, limit - page.num_rows, types)
            page = pa.concat_tables([page, rest])
        return page

    # -- ids, topics, versions --------------------------------------------------------------------
    def aggregate_id(self, originator_id: uuid.UUID | str) -> str:
        """The lake's ``aggregate_id`` of an originator id (a UUID as canonical text)."""
        if isinstance(originator_id, uuid.UUID):
            return str(originator_id)
        if self.originator_id_type == "uuid":
            try:
                return str(uuid.UUID(originator_id))
            except (TypeError, ValueError, AttributeError):
                raise LakeDataError(
                    f"originator_id {originator_id!r} is not a UUID; set ORIGINATOR_ID_TYPE=text to store text ids"
                ) from None
        try:
            return check_aggregate_id(originator_id, "originator_id")
        except InvalidArgumentError as exc:
            raise LakeDataError(str(exc)) from None

    def originator_id(self, aggregate_id: str) -> uuid.UUID | str:
        """The originator id of a lake ``aggregate_id``, as the library expects it back."""
        if self.originator_id_type == "text":
            return aggregate_id
        try:
            return uuid.UUID(aggregate_id)
        except ValueError:
            raise LakeDataError(
                f"the lake holds aggregate_id {aggregate_id!r}, which is not a UUID; "
                "set ORIGINATOR_ID_TYPE=text to read text ids"
            ) from None

    def topic_types(self, topic: str) -> tuple[str, str]:
        """``(event_type, aggregate_type)`` of a topic: the topic itself, and its aggregate class name.

        ``"bank.domain:BankAccount.Opened"`` belongs to ``BankAccount``; a topic without an enclosing
        class that is an identifier belongs to the default aggregate type.
        """
        found = self._topics.get(topic)
        if found is None:
            if not isinstance(topic, str) or not _EVENT_TYPE.fullmatch(topic):
                raise LakeDataError(
                    f"topic {topic!r} cannot be an event_type (letters, digits and _ . : - $ < >, at most 255)"
                )
            parts = topic.rpartition(":")[2].split(".")
            owner = parts[-2] if len(parts) >= 2 else ""
            found = (topic, owner if _IDENTIFIER.fullmatch(owner) else self.default_aggregate_type)
            self._topics[topic] = found
        return found

    def read_heads(self, aggregate_ids: Sequence[str]) -> dict[str, tuple[str, int, int]]:
        """``aggregate_id -> (aggregate_type, lake version, version offset)`` of the streams that exist."""
        con = self.store.hot.con
        heads: dict[str, tuple[str, int, int]] = {}
        for start in range(0, len(aggregate_ids), _CHUNK):
            chunk = list(aggregate_ids[start:start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = con.execute(
                "SELECT s.aggregate_id, s.aggregate_type, s.version, coalesce(o.version_offset, 0) FROM stream_heads s "
                f"LEFT JOIN eventsourcing_version_offsets o USING (aggregate_id) WHERE s.aggregate_id IN ({marks})",
                chunk,
            ).fetchall()
            heads.update((r[0], (r[1], int(r[2]), int(r[3]))) for r in rows)
        return heads

    def read_offsets(self, aggregate_ids: Iterable[str]) -> dict[str, int]:
        """The version offsets of those streams that have one (all others have 0)."""
        ids = list(aggregate_ids)
        con = self.store.hot.con
        offsets: dict[str, int] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            offsets.update(con.execute(
                "SELECT aggregate_id, version_offset FROM eventsourcing_version_offsets "
                f"WHERE aggregate_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall())
        return offsets

    # -- payloads ---------------------------------------------------------------------------------
    def encode_rows(self, stored_events: Sequence[StoredEvent]) -> tuple[list[NewRow], dict[str, int]]:
        """Lake rows for stored events, in their order, and the version offsets of the new streams."""
        aggregate_ids = [self.aggregate_id(s.originator_id) for s in stored_events]
        heads = self.read_heads(list(dict.fromkeys(aggregate_ids)))
        streams: dict[str, tuple[str, int]] = {a: (h[0], h[2]) for a, h in heads.items()}
        new_offsets: dict[str, int] = {}
        now = to_micros(now_utc())
        rows: list[NewRow] = []
        for aggregate_id, stored in zip(aggregate_ids, stored_events):
            version = stored.originator_version
            if isinstance(version, bool) or not isinstance(version, int):
                raise LakeDataError(f"originator_version must be an int, got {version!r}")
            event_type, owner = self.topic_types(stored.topic)
            if aggregate_id not in streams:
                streams[aggregate_id] = (owner, version - 1)
                if version != 1:
                    new_offsets[aggregate_id] = version - 1
            aggregate_type, offset = streams[aggregate_id]
            data, metadata, occurred_at, schema_version = encode_state(stored.state, now)
            rows.append((f"{aggregate_id}:{version}", event_type, schema_version, aggregate_type, aggregate_id,
                         version - offset, occurred_at, data, metadata))
        return rows, new_offsets

    # -- tracking -----------------------------------------------------------------------------------
    @staticmethod
    def insert_tracking(con: sqlite3.Connection, tracking: Tracking) -> None:
        """Inside a write transaction: record that ``tracking`` was processed (ids only go up)."""
        name, notification_id = tracking.application_name, tracking.notification_id
        if not isinstance(name, str) or isinstance(notification_id, bool) or not isinstance(notification_id, int):
            raise LakeDataError(f"a tracking record needs a str name and an int id, got {tracking!r}")
        done = con.execute(
            "INSERT INTO eventsourcing_tracking (application_name, notification_id) VALUES (?, ?) "
            "ON CONFLICT (application_name) DO UPDATE SET notification_id = excluded.notification_id "
            "WHERE eventsourcing_tracking.notification_id < excluded.notification_id RETURNING notification_id",
            (name, notification_id),
        ).fetchall()
        if not done:
            current = con.execute(
                "SELECT notification_id FROM eventsourcing_tracking WHERE application_name = ?", (name,)
            ).fetchone()[0]
            raise LakeConflictError(
                f"tracking notification id {notification_id} of {name!r} is not greater than the recorded "
                f"{current}: that notification was processed already"
            )

    def max_tracking_id(self, application_name: str) -> int | None:
        with self.lock, self.errors():
            row = self.store.hot.con.execute(
                "SELECT notification_id FROM eventsourcing_tracking WHERE application_name = ?", (application_name,)
            ).fetchone()
        return None if row is None else int(row[0])


def encode_state(state: bytes, now: int) -> tuple[str, str, int, int]:
    """``(data, metadata, occurred_at µs, schema_version)`` of a stored event's state.

    Examples
    --------
    >>> encode_state(b'{"amount":10,"class_version":2}', 0)
    ('{"amount":10,"class_version":2}', '{}', 0, 2)
    >>> encode_state(b"x\\x9c", 0)
    ('{"base64":"eJw="}', '{"state_encoding":"base64"}', 0, 1)
    """
    if not isinstance(state, bytes):
        raise LakeDataError(f"a stored event's state must be bytes, got {type(state).__name__}")
    text, value = "", None
    if state[:1] == b"{" and len(state) <= MAX_JSON_BYTES:
        try:
            text = state.decode("utf-8")
            value = parse_state(text)
        except (UnicodeDecodeError, InvalidArgumentError):
            value = None
    if not isinstance(value, dict):
        wrapped = json.dumps({"base64": base64.b64encode(state).decode("ascii")}, separators=(",", ":"))
        return wrapped, BASE64_METADATA, now, 1
    return text, "{}", _occurred_at(value, now), _class_version(value)


def parse_state(text: str) -> Any:
    """``events.parse_json`` (the lake's rules for a payload), on a fast path for the common case.

    Text decoded strictly from UTF-8 holds no lone surrogate unless it escapes one (``\\u``), and
    cannot nest deeper than its count of brackets; only such texts need the full walk. The fast path
    still refuses duplicate keys, the reserved key of encrypted fields, NaN and Infinity, numbers that
    overflow to infinity and integers outside what SQL reads exactly.
    """
    if "\\u" in text or text.count("{") + text.count("[") > MAX_JSON_DEPTH:
        return parse_json(text, "state")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse, parse_float=_finite,
                          parse_int=_bounded)
    except ValueError as exc:
        raise InvalidArgumentError(f"state is not lake JSON: {exc}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("an object repeats a key")
    if RESERVED_KEY in value:
        raise ValueError(f"an object holds the reserved key {RESERVED_KEY!r}")
    return value


def _bounded(token: str) -> int:
    value = int(token)
    if not MIN_JSON_INT <= value <= MAX_JSON_INT:
        raise ValueError(f"the integer {token[:30]} is outside {MIN_JSON_INT}..{MAX_JSON_INT}")
    return value


def _refuse(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"{token} overflows to {value}")
    return value


def decode_state(data: str, metadata: str) -> bytes:
    """The stored event's state of a lake row (the inverse of :func:`encode_state`).

    Examples
    --------
    >>> decode_state(*encode_state(b"\\x00binary", 0)[:2])
    b'\\x00binary'
    """
    if metadata != "{}" and (metadata == BASE64_METADATA or _is_base64(metadata)):
        return base64.b64decode(json.loads(data)["base64"])
    return data.encode("utf-8")


def _is_base64(metadata: str) -> bool:
    try:
        value = json.loads(metadata)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("state_encoding") == "base64"


def _occurred_at(value: dict[str, Any], default: int) -> int:
    """The domain event's ``timestamp`` (as the library's ``DatetimeAsISO`` writes it), in µs."""
    stamp = value.get("timestamp")
    if isinstance(stamp, dict) and stamp.get("_type_") == "datetime_iso" and isinstance(stamp.get("_data_"), str):
        try:
            moment = datetime.fromisoformat(stamp["_data_"])
        except ValueError:
            return default
        if moment.tzinfo is not None and moment.utcoffset() is not None:
            return to_micros(moment)
    return default


def _class_version(value: dict[str, Any]) -> int:
    version = value.get("class_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 2**31 - 1:
        return 1
    return version
