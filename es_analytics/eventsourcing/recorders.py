"""The library's recorder interfaces backed by a lake.

- :class:`LakeAggregateRecorder` keeps stored events as lake events (``insert_events`` returns ``None``).
- :class:`LakeApplicationRecorder` adds the notification log: notification ids are lake positions.
- :class:`LakeTrackingRecorder` records which upstream notifications were processed.
- :class:`LakeProcessRecorder` writes events and a tracking record in one transaction.
- :class:`LakeSnapshotRecorder` keeps snapshots (or any other purpose) in a side table, not as events.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pyarrow as pa
import pyarrow.compute as pc
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ListenNotifySubscription,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

from ..errors import ConcurrencyError, LakeError
from ..events import check_identifier
from ..store.hot import NewRow
from .datastore import LakeDatastore, decode_state
from .errors import LakeDataError, LakeVersionConflictError

__all__ = [
    "LakeAggregateRecorder",
    "LakeApplicationRecorder",
    "LakeProcessRecorder",
    "LakeSnapshotRecorder",
    "LakeSubscription",
    "LakeTrackingRecorder",
]


class LakeRecorder:
    """Base of the lake recorders: they share one :class:`LakeDatastore`."""

    def __init__(self, datastore: LakeDatastore, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.datastore = datastore

    def create_table(self) -> None:
        """The lake's own tables exist once the datastore is open; nothing else to create."""


class LakeAggregateRecorder(LakeRecorder, AggregateRecorder):
    """Stores the library's events as lake events, several aggregates atomically per call."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        self._insert_events(stored_events, **kwargs)
        return None

    def _insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        """Append in one transaction (with ``tracking=`` if given); returns the positions, in order."""
        ds = self.datastore
        tracking: Tracking | None = kwargs.get("tracking")
        if not stored_events and tracking is None:
            return []
        with ds.lock, ds.errors():
            rows, new_offsets = ds.encode_rows(stored_events)

            def within(con: Any) -> None:
                if new_offsets:
                    con.executemany(
                        "INSERT INTO eventsourcing_version_offsets (aggregate_id, version_offset) VALUES (?, ?)",
                        new_offsets.items(),
                    )
                if tracking is not None:
                    ds.insert_tracking(con, tracking)

            try:
                first = ds.store.hot.append_rows(rows, ds.store.lookup_sealed, check_event_ids=False, within=within)
            except ConcurrencyError as exc:
                raise _in_originator_versions(exc, rows, stored_events) from exc
            if first is None:
                return []
            try:
                ds.store.maybe_auto_seal(first + len(rows) - 1)
            except LakeError as exc:  # the events are committed: do not report the write as failed
                warnings.warn(f"the lake could not seal ({exc}); the next write retries", RuntimeWarning, stacklevel=3)
        ds.notify()
        return list(range(first, first + len(rows)))

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        ds = self.datastore
        aggregate_id = ds.aggregate_id(originator_id)
        with ds.lock, ds.errors():
            offset = ds.read_offsets([aggregate_id]).get(aggregate_id, 0)
            table = ds.store.read_stream(aggregate_id)
        versions = table["aggregate_version"]
        mask = None
        if gt is not None:
            mask = pc.greater(versions, gt - offset)
        if lte is not None:
            upper = pc.less_equal(versions, lte - offset)
            mask = upper if mask is None else pc.and_(mask, upper)
        if mask is not None:
            table = table.filter(mask)
        if desc:
            table = table.sort_by([("aggregate_version", "descending")])
        if limit is not None:
            table = table.slice(0, max(limit, 0))
        same_id = originator_id if isinstance(originator_id, UUID) else ds.originator_id(aggregate_id)
        return [
            StoredEvent(
                originator_id=same_id,
                originator_version=version + offset,
                topic=topic,
                state=decode_state(data, metadata),
            )
            for version, topic, data, metadata in _columns(table, "aggregate_version", "event_type", "data", "metadata")
        ]


class LakeApplicationRecorder(LakeAggregateRecorder, ApplicationRecorder):
    """Adds the notification log: notification ids are lake positions (gap-free, in commit order)."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        return self._insert_events(stored_events, **kwargs)

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        after = 0 if start is None else (start - 1 if inclusive_of_start else start)
        ds = self.datastore
        with ds.lock, ds.errors():
            table = ds.read_log(max(after, 0), stop, limit, topics)
            streams = pc.unique(table["aggregate_id"]).to_pylist()
            offsets = ds.read_offsets(streams) if streams else {}
        originators = {a: ds.originator_id(a) for a in streams}  # one UUID parse per stream, not per event
        return [
            Notification(
                id=position,
                originator_id=originators[aggregate_id],
                originator_version=version + offsets.get(aggregate_id, 0),
                topic=topic,
                state=decode_state(data, metadata),
            )
            for position, aggregate_id, version, topic, data, metadata in _columns(
                table, "position", "aggregate_id", "aggregate_version", "event_type", "data", "metadata"
            )
        ]

    def max_notification_id(self) -> int | None:
        ds = self.datastore
        with ds.lock, ds.errors():
            return ds.store.hot.max_position() or None

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        return LakeSubscription(self, gt=gt, topics=topics)


class LakeSubscription(ListenNotifySubscription[LakeApplicationRecorder]):
    """Yields notifications after ``gt`` as they are committed.

    Writes through this process's recorders wake it at once; writes by other processes are picked up
    by polling every ``LAKE_POLL_INTERVAL`` seconds (default 0.1).
    """

    def __init__(self, recorder: LakeApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()) -> None:
        self._listener = threading.Event()
        recorder.datastore.listen(self._listener)
        super().__init__(recorder=recorder, gt=gt, topics=topics)

    def stop(self) -> None:
        super().stop()
        self._recorder.datastore.unlisten(self._listener)
        self._listener.set()

    def _loop_on_pull(self) -> None:
        try:
            self._pull()
            while not self._has_been_stopped:
                self._listener.wait(timeout=self._recorder.datastore.poll_interval)
                self._listener.clear()
                self._pull()
        except BaseException as exc:  # handed to the iterating thread, as the library's own loop does
            if self._thread_error is None:
                self._thread_error = exc
            self.stop()


class LakeTrackingRecorder(LakeRecorder, TrackingRecorder):
    """Records the newest processed notification id per upstream application (ids only go up)."""

    def insert_tracking(self, tracking: Tracking) -> None:
        ds = self.datastore
        with ds.transaction() as con:
            ds.insert_tracking(con, tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        return self.datastore.max_tracking_id(application_name)


class LakeProcessRecorder(LakeTrackingRecorder, LakeApplicationRecorder, ProcessRecorder):
    """Writes new events and the tracking record of the notification that caused them atomically."""


class LakeSnapshotRecorder(LakeRecorder, AggregateRecorder):
    """Keeps records that are not events (snapshots) in a side table ``eventsourcing_stored_<purpose>``."""

    def __init__(self, datastore: LakeDatastore, purpose: str = "snapshots") -> None:
        super().__init__(datastore)
        try:
            self.table = f"eventsourcing_stored_{check_identifier(purpose, 'purpose')}"
        except ValueError as exc:
            raise LakeDataError(str(exc)) from None

    def create_table(self) -> None:
        with self.datastore.transaction() as con:
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} (originator_id TEXT NOT NULL, "
                "originator_version INTEGER NOT NULL, topic TEXT NOT NULL, state BLOB NOT NULL, "
                "PRIMARY KEY (originator_id, originator_version)) WITHOUT ROWID"
            )

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        ds = self.datastore
        params = [(ds.aggregate_id(s.originator_id), s.originator_version, s.topic, s.state) for s in stored_events]
        with ds.transaction() as con:
            con.executemany(f"INSERT INTO {self.table} VALUES (?, ?, ?, ?)", params)
        return None

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        ds = self.datastore
        sql = f"SELECT originator_version, topic, state FROM {self.table} WHERE originator_id = ?"
        params: list[Any] = [ds.aggregate_id(originator_id)]
        if gt is not None:
            sql += " AND originator_version > ?"
            params.append(gt)
        if lte is not None:
            sql += " AND originator_version <= ?"
            params.append(lte)
        sql += " ORDER BY originator_version" + (" DESC" if desc else "")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with ds.lock, ds.errors():
            rows = ds.store.hot.con.execute(sql, params).fetchall()
        same_id = originator_id if isinstance(originator_id, UUID) else ds.originator_id(params[0])
        return [StoredEvent(originator_id=same_id, originator_version=v, topic=t, state=bytes(s)) for v, t, s in rows]


def _in_originator_versions(
    exc: ConcurrencyError, rows: Sequence[NewRow], stored_events: Sequence[StoredEvent]
) -> LakeVersionConflictError:
    """A lake version conflict told in the library's versions (lake version + the stream's offset)."""
    offset = next((e.originator_version - r[5] for r, e in zip(rows, stored_events) if r[4] == exc.aggregate_id), 0)
    return LakeVersionConflictError(exc.aggregate_id, exc.expected + offset, exc.actual + offset)


def _columns(table: pa.Table, *names: str) -> zip[Any]:
    """Rows of some columns as Python tuples (one conversion per column)."""
    return zip(*(table[name].to_pylist() for name in names))
