"""The fold path: rebuild an aggregate by replaying its stream, from the newest usable snapshot.

One implementation, :func:`load`, answers "aggregate ``cls`` ``aggregate_id`` as of T, known at K (or at
version n)": it folds, in version order, the stream's events with ``occurred_at <= T`` and
``recorded_at <= K`` (and ``aggregate_version <= n``). ``Lake.aggregate`` and ``Repository.get`` both
call it.

A snapshot stores the state after versions 1..v with the latest ``occurred_at`` and ``recorded_at`` among
them. It equals the filtered fold's prefix only if every one of those events passes the filter, so it is
used only when both maxima lie at or before the requested point (and v <= n). A back-dated event recorded
after the snapshot therefore never hides behind it: for an earlier T the snapshot is skipped. A snapshot is
also keyed by a fingerprint of the aggregate class (handler code, class version, state fields) and of the
upcasters of the types it handles, so a snapshot made by other code is ignored, never misread.

Snapshots live in the table ``snapshots`` of the lake's hot tier (SQLite).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeVar

import polars as pl

from ._time import now_utc, to_micros, to_utc_or_none
from .aggregates import Aggregate, DomainEvent, decode_state, encode_state
from .errors import InvalidArgumentError, LakeError
from .events import Event, check_aggregate_id, check_version
from .privacy import open_state, seal_state, sealed_subjects
from .store.reader import translate_errors
from .upcasting import UpcasterRegistry

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .privacy import KeyStore
    from .store.hot import SQLiteHotTier
    from .temporal.bounds import Watermark

__all__ = ["EventSource", "Repository", "Snapshot", "SnapshotStore", "history", "load"]

A = TypeVar("A", bound=Aggregate)
_log = logging.getLogger("es_analytics.repository")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    aggregate_type TEXT NOT NULL,
    max_occurred_at INTEGER NOT NULL,
    max_recorded_at INTEGER NOT NULL,
    max_position INTEGER NOT NULL,
    state TEXT NOT NULL,
    taken_at INTEGER NOT NULL,
    PRIMARY KEY (aggregate_id, fingerprint, aggregate_version)
) WITHOUT ROWID
"""


class EventSource(Protocol):
    """What the fold path needs from a lake (``Lake`` satisfies it)."""

    upcasters: UpcasterRegistry

    @property
    def snapshots(self) -> SnapshotStore: ...

    def events(
        self,
        aggregate_id: str | None = None,
        *,
        from_version: int = 0,
        types: str | Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        known_at: datetime | None = None,
    ) -> pl.DataFrame: ...

    def append(
        self, aggregate_id: str, events: Sequence[Event], *, expected_version: int | None, aggregate_type: str
    ) -> int: ...


@dataclass(frozen=True)
class Snapshot:
    """A stored state: the fold of versions ``1..aggregate_version`` and the latest times among them."""

    aggregate_id: str
    fingerprint: str
    aggregate_version: int
    aggregate_type: str
    max_occurred_at: int
    max_recorded_at: int
    max_position: int
    state: str


class SnapshotStore:
    """Snapshots in the hot tier's SQLite database (table ``snapshots``).

    A snapshot of an aggregate whose events hold personal fields holds them too, so its state is stored
    encrypted with the key of every data subject those events name (``subjects_of`` tells which, ``keys``
    gives the keys): once any of them is forgotten the snapshot no longer opens and the fold replays the
    events instead, which read as erased.
    """

    def __init__(self, hot: SQLiteHotTier, *, keys: KeyStore | None = None,
                 subjects_of: Callable[[str, int], set[str]] | None = None) -> None:
        self.hot = hot
        self.keys = keys
        self.subjects_of = subjects_of
        self._ready = False

    def _exists(self) -> bool:
        """Whether the table exists (reads never create it, so a lake nobody snapshots stays unchanged)."""
        if not self._ready:
            columns = {row[1] for row in self.hot.con.execute("PRAGMA table_info(snapshots)")}
            if columns and "max_position" not in columns:  # a table from before max_position: start afresh
                with self.hot.write() as con:
                    con.execute("DROP TABLE snapshots")
                columns = set()
            self._ready = bool(columns)
        return self._ready

    def save(self, snapshot: Snapshot, *, keep: int) -> None:
        """Store ``snapshot`` (its state encrypted when its events name data subjects) and keep only the
        newest ``keep`` of its aggregate and fingerprint."""
        subjects = set() if self.subjects_of is None else self.subjects_of(snapshot.aggregate_id,
                                                                           snapshot.aggregate_version)
        if subjects and self.keys is not None:
            keys = self.keys.keys_for(sorted(subjects))
            if any(keys.get(s) is None for s in subjects):
                return  # a subject was forgotten: its data must not come back in a snapshot
            snapshot = replace(snapshot, state=seal_state(snapshot.state, keys, _state_aad(snapshot)))  # type: ignore[arg-type]
        with translate_errors("saving a snapshot"):
            self._exists()
            with self.hot.write() as con:
                con.execute(_SCHEMA)
                con.execute(
                    "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (snapshot.aggregate_id, snapshot.fingerprint, snapshot.aggregate_version, snapshot.aggregate_type,
                     snapshot.max_occurred_at, snapshot.max_recorded_at, snapshot.max_position, snapshot.state,
                     to_micros(now_utc())),
                )
                self._prune(con, snapshot, keep)
            self._ready = True

    @staticmethod
    def _prune(con: Any, snapshot: Snapshot, keep: int) -> None:
        """Keep the newest ``keep`` snapshots of the aggregate and fingerprint."""
        con.execute(
            "DELETE FROM snapshots WHERE aggregate_id = ? AND fingerprint = ? AND aggregate_version NOT IN "
            "(SELECT aggregate_version FROM snapshots WHERE aggregate_id = ? AND fingerprint = ? "
            " ORDER BY aggregate_version DESC LIMIT ?)",
            (snapshot.aggregate_id, snapshot.fingerprint, snapshot.aggregate_id, snapshot.fingerprint, keep),
        )

    def best(
        self, aggregate_id: str, fingerprint: str, *, as_of: int | None, known_at: int | None, version: int | None,
        position: int | None = None,
    ) -> Snapshot | None:
        """The newest snapshot at or before the point on both clocks (times in µs), ``version`` and ``position``."""
        with translate_errors("reading snapshots"):
            if not self._exists():
                return None
            row = self.hot.con.execute(
                "SELECT * FROM snapshots WHERE aggregate_id = ? AND fingerprint = ? "
                "AND (? IS NULL OR max_occurred_at <= ?) AND (? IS NULL OR max_recorded_at <= ?) "
                "AND (? IS NULL OR aggregate_version <= ?) AND (? IS NULL OR max_position <= ?) "
                "ORDER BY aggregate_version DESC LIMIT 1",
                (aggregate_id, fingerprint, as_of, as_of, known_at, known_at, version, version, position, position),
            ).fetchone()
        if row is None:
            return None
        snapshot = Snapshot(*row[:8])
        subjects = sealed_subjects(snapshot.state)
        if subjects is None:
            return snapshot
        keys = {} if self.keys is None else self.keys.keys_for(subjects)
        state = open_state(snapshot.state, keys, _state_aad(snapshot))
        return None if state is None else replace(snapshot, state=state)

    def versions(self, aggregate_id: str) -> pl.DataFrame:
        """The snapshots of one aggregate: ``fingerprint, aggregate_version, max_occurred_at, max_recorded_at``."""
        with translate_errors("reading snapshots"):
            rows = [] if not self._exists() else self.hot.con.execute(
                "SELECT fingerprint, aggregate_version, max_occurred_at, max_recorded_at FROM snapshots "
                "WHERE aggregate_id = ? ORDER BY fingerprint, aggregate_version", (check_aggregate_id(aggregate_id),)
            ).fetchall()
        frame = pl.DataFrame(rows, schema={"fingerprint": pl.String, "aggregate_version": pl.Int64,
                                           "max_occurred_at": pl.Int64, "max_recorded_at": pl.Int64}, orient="row")
        return frame.with_columns(
            pl.col("max_occurred_at", "max_recorded_at").cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        )

    def delete(self, aggregate_id: str) -> int:
        """Delete every snapshot of one aggregate (all fingerprints); returns how many were deleted.

        The freed pages are overwritten (``secure_delete``), so the deleted state does not linger in the
        database file.
        """
        aggregate_id = check_aggregate_id(aggregate_id)
        con = self.hot.con
        with translate_errors("deleting snapshots"):
            if not self._exists():
                return 0
            previous = int(con.execute("PRAGMA secure_delete").fetchone()[0])
            con.execute("PRAGMA secure_delete = ON")
            try:
                with self.hot.write():
                    return int(con.execute("DELETE FROM snapshots WHERE aggregate_id = ?", (aggregate_id,)).rowcount)
            finally:
                con.execute(f"PRAGMA secure_delete = {('OFF', 'ON', 'FAST')[previous]}")


def _state_aad(snapshot: Snapshot) -> str:
    """What a sealed state is bound to: its aggregate, version and fingerprint (it cannot be moved)."""
    return f"{snapshot.aggregate_id}\x1f{snapshot.aggregate_version}\x1f{snapshot.fingerprint}"


def fingerprint(cls: type[Aggregate], registry: UpcasterRegistry) -> str:
    """The snapshot key of ``cls`` with the upcasters its handled types go through."""
    return f"{cls.fingerprint()}-{registry.fingerprint(cls.handled_event_types())}"


# -- the fold -----------------------------------------------------------------------------------
def load(
    source: EventSource,
    cls: type[A],
    aggregate_id: str,
    *,
    as_of: datetime | None = None,
    known_at: datetime | Watermark | None = None,
    version: int | None = None,
    use_snapshots: bool = True,
) -> A | None:
    """Aggregate ``cls`` ``aggregate_id`` as of ``as_of``, known at ``known_at`` (or at ``version``).

    ``known_at`` may be a :class:`~es_analytics.temporal.Watermark`: the lake exactly as it was at that
    position (as for ``lake.states``). Returns ``None`` when no event of the stream passes the filters (it did not exist yet). An aggregate
    rebuilt with any of the three filters is historical: a repository refuses to save it.

    Raises
    ------
    InvalidArgumentError
        The stream belongs to another aggregate type, or an argument is malformed.
    UnknownEventTypeError, UpcastError
        An event cannot be applied.
    """
    aggregate_id, point = _check_args(cls, aggregate_id, as_of, known_at, version)
    snapshot = None
    if use_snapshots:
        snapshot = source.snapshots.best(
            aggregate_id, fingerprint(cls, source.upcasters), version=point.version, position=point.position,
            as_of=None if point.as_of is None else to_micros(point.as_of),
            known_at=None if point.known_at is None else to_micros(point.known_at),
        )
    start = 0 if snapshot is None else snapshot.aggregate_version
    frame = _stream(source, aggregate_id, start, point)
    if snapshot is None and frame.height == 0:
        return None
    _check_type(cls, aggregate_id, frame, snapshot)
    if snapshot is None:
        aggregate = cls(aggregate_id)
    else:
        aggregate = cls.from_state(aggregate_id, snapshot.aggregate_version, decode_state(snapshot.state))
    for event in domain_events(frame):
        aggregate.apply(event)
    aggregate._saved_version = aggregate.version
    aggregate._historical = point != _Point(None, None, None, None)
    return aggregate


def history(
    source: EventSource,
    cls: type[Aggregate],
    aggregate_id: str,
    *,
    as_of: datetime | None = None,
    known_at: datetime | Watermark | None = None,
    version: int | None = None,
) -> pl.DataFrame:
    """The state after each event of the fold: one row per applied event, in version order.

    Columns: ``aggregate_version, position, event_type, occurred_at, recorded_at``, then one column per
    state field (the state *after* that event). The same events as :func:`load` with the same filters,
    so the last row is the state ``load`` returns. Empty if the aggregate did not exist yet.
    """
    aggregate_id, point = _check_args(cls, aggregate_id, as_of, known_at, version)
    frame = _stream(source, aggregate_id, 0, point)
    head = ["aggregate_version", "position", "event_type", "occurred_at", "recorded_at"]
    aggregate = cls(aggregate_id)
    if frame.height == 0:
        return frame.select(head).with_columns(pl.lit(None).alias(f) for f in aggregate.state())
    _check_type(cls, aggregate_id, frame, None)
    states = []
    for event in domain_events(frame):
        aggregate.apply(event)
        states.append(copy.deepcopy(aggregate.state()))
    return pl.concat([frame.select(head), pl.DataFrame(states, infer_schema_length=None)], how="horizontal")


class _Point(NamedTuple):
    """Where a fold stops: business time, system time (and, for a watermark, its position), version."""

    as_of: datetime | None
    known_at: datetime | None
    position: int | None
    version: int | None


def _check_args(
    cls: object, aggregate_id: str, as_of: datetime | None, known_at: Any, version: int | None
) -> tuple[str, _Point]:
    """Validate the arguments of a fold. ``known_at`` may be a datetime or a watermark (``position``,
    ``recorded_at``), which bounds the events by position: the lake exactly as it was at that position."""
    if not (isinstance(cls, type) and issubclass(cls, Aggregate)):
        raise InvalidArgumentError(f"aggregate_class must be an Aggregate subclass, got {cls!r}")
    check_version(version, "version", allow_none=True)
    position = None
    if hasattr(known_at, "position") and hasattr(known_at, "recorded_at"):
        position = check_version(known_at.position, "known_at.position")
        known_at = known_at.recorded_at
    point = _Point(to_utc_or_none(as_of, "as_of"), to_utc_or_none(known_at, "known_at"), position, version)
    return check_aggregate_id(aggregate_id), point


def _stream(source: EventSource, aggregate_id: str, start: int, point: _Point) -> pl.DataFrame:
    """The stream's events after version ``start`` that pass the filters on both clocks and the version."""
    frame = source.events(aggregate_id, from_version=start, until=point.as_of, known_at=point.known_at)
    if point.version is not None:
        frame = frame.filter(pl.col("aggregate_version") <= point.version)
    if point.position is not None:
        frame = frame.filter(pl.col("position") <= point.position)
    versions = frame["aggregate_version"]
    # the fold's order (position order agrees for appends); sorting a small frame costs a thread-pool trip
    return frame if versions.is_sorted() else frame.sort("aggregate_version")


def _check_type(cls: type[Aggregate], aggregate_id: str, frame: pl.DataFrame, snapshot: Snapshot | None) -> None:
    found = snapshot.aggregate_type if snapshot is not None else frame["aggregate_type"][0]
    if found != cls.aggregate_type:
        raise InvalidArgumentError(
            f"stream {aggregate_id!r} is a {found!r}, not a {cls.aggregate_type!r}; load it with its own class"
        )


def domain_events(frame: pl.DataFrame) -> list[DomainEvent]:
    """The rows of an events frame as :class:`DomainEvent` objects (payloads parsed), in frame order."""
    columns = ("event_type", "data", "aggregate_version", "occurred_at", "recorded_at", "schema_version",
               "event_id", "metadata")
    return [
        DomainEvent(event_type, json.loads(data), version, occurred, recorded, schema, event_id, json.loads(meta))
        for event_type, data, version, occurred, recorded, schema, event_id, meta in zip(
            *(frame.get_column(c).to_list() for c in columns))
    ]


# -- the repository -----------------------------------------------------------------------------
class Repository(Generic[A]):
    """Load and save aggregates of one class, with snapshots every ``snapshot_every`` versions.

    Parameters
    ----------
    lake
        The event lake (anything that satisfies :class:`EventSource`).
    aggregate_class
        The :class:`Aggregate` subclass this repository loads and saves.
    snapshot_every
        Take a snapshot when a save (or a full load) crosses a multiple of this many versions; 0 turns
        snapshots off.
    keep_snapshots
        Keep only the newest this many snapshots per aggregate.

    Examples
    --------
    >>> import tempfile
    >>> from es_analytics import Lake, Repository
    >>> from es_analytics.examples.bank import BankAccount
    >>> lake = Lake.open(tempfile.mkdtemp())
    >>> accounts = Repository(lake, BankAccount)
    >>> account = BankAccount("acc-1")
    >>> account.open_account(100, "Ada Almeida")
    >>> accounts.save(account)
    1
    >>> accounts.get("acc-1").balance, accounts.get("missing")
    (Decimal('100'), None)
    >>> lake.close()
    """

    def __init__(
        self, lake: EventSource, aggregate_class: type[A], *, snapshot_every: int = 10, keep_snapshots: int = 3
    ) -> None:
        if not (isinstance(aggregate_class, type) and issubclass(aggregate_class, Aggregate)):
            raise InvalidArgumentError(f"aggregate_class must be an Aggregate subclass, got {aggregate_class!r}")
        check_version(snapshot_every, "snapshot_every")
        if isinstance(keep_snapshots, bool) or not isinstance(keep_snapshots, int) or keep_snapshots < 1:
            raise InvalidArgumentError(f"keep_snapshots must be a positive int, got {keep_snapshots!r}")
        self.lake = lake
        self.aggregate_class = aggregate_class
        self.snapshot_every = snapshot_every
        self.keep_snapshots = keep_snapshots

    def __repr__(self) -> str:
        return (f"Repository({self.aggregate_class.__name__}, snapshot_every={self.snapshot_every}, "
                f"keep_snapshots={self.keep_snapshots})")

    def get(
        self,
        aggregate_id: str,
        *,
        as_of: datetime | None = None,
        known_at: datetime | Watermark | None = None,
        version: int | None = None,
    ) -> A | None:
        """The aggregate rebuilt (as of / known at / at version), or ``None`` if it does not exist (yet)."""
        aggregate = load(self.lake, self.aggregate_class, aggregate_id, as_of=as_of, known_at=known_at,
                         version=version, use_snapshots=self.snapshot_every > 0)
        if aggregate is not None and not aggregate.historical and self._due(aggregate.version, aggregate_id):
            self._snapshot(aggregate)
        return aggregate

    def save(self, aggregate: A) -> int:
        """Append the aggregate's pending events (expecting its saved version) and return the new version.

        Subscribers of the lake get the events after the commit. A snapshot is taken when the new version
        crosses a multiple of ``snapshot_every``.

        Raises
        ------
        ConcurrencyError
            The stream moved on since the aggregate was loaded; nothing was appended. Reload and retry.
        InvalidArgumentError
            The aggregate is of another class, or historical (rebuilt as of a past point).
        """
        if type(aggregate) is not self.aggregate_class:
            raise InvalidArgumentError(
                f"this repository saves {self.aggregate_class.__name__}, got {type(aggregate).__name__}"
            )
        if aggregate.historical:
            raise InvalidArgumentError(
                f"{aggregate.aggregate_id!r} was rebuilt as of a past point and cannot be saved; "
                "load it without as_of, known_at or version to change it"
            )
        pending = list(aggregate.pending_events)
        if not pending:
            return aggregate.version
        before = aggregate.saved_version
        version = self.lake.append(aggregate.aggregate_id, pending, expected_version=before,
                                   aggregate_type=self.aggregate_class.aggregate_type)
        aggregate.mark_saved(version)
        every = self.snapshot_every
        if every and version // every > before // every:
            self._snapshot(aggregate)
        return version

    def _due(self, version: int, aggregate_id: str) -> bool:
        """Whether a full load replayed enough events past the newest snapshot to take one."""
        if not self.snapshot_every or version < self.snapshot_every:
            return False
        best = self.lake.snapshots.best(aggregate_id, fingerprint(self.aggregate_class, self.lake.upcasters),
                                        as_of=None, known_at=None, version=None)
        return version - (0 if best is None else best.aggregate_version) >= self.snapshot_every

    def _snapshot(self, aggregate: Aggregate) -> None:
        """Store the aggregate's state with the latest times of the events it folds."""
        frame = self.lake.events(aggregate.aggregate_id).filter(pl.col("aggregate_version") <= aggregate.version)
        if frame.height != aggregate.version:  # the stream is not what this object folded; take none
            return
        times = frame.select(pl.col("occurred_at", "recorded_at").max().dt.epoch("us"), pl.col("position").max())
        occurred, recorded, position = (int(v) for v in times.row(0))
        snapshot = Snapshot(aggregate.aggregate_id, fingerprint(type(aggregate), self.lake.upcasters),
                            aggregate.version, type(aggregate).aggregate_type, occurred, recorded, position,
                            encode_state(aggregate.state()))
        try:
            self.lake.snapshots.save(snapshot, keep=self.keep_snapshots)
        except LakeError as exc:  # a snapshot is an optimisation; the events are already saved
            _log.warning("snapshot of %r at version %d not taken: %s", aggregate.aggregate_id, aggregate.version, exc)
