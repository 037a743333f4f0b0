"""The ``Lake`` façade: open a lake folder, append events, read them, query them with SQL, seal them."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from . import integrity
from ._time import to_utc_or_none
from .errors import EsAnalyticsError, InvalidArgumentError
from .events import (
    EVENT_COLUMNS, KNOWN_TYPES, MAX_ID_LENGTH, Event, check_aggregate_id, check_aggregate_type, check_event_types,
    check_version,
)
from .privacy import ALGORITHM, ENVELOPE_KEY, KEY_FILE, PERSONAL_FIELDS, FileKeyStore, KeyStore, Privacy
from .store.engine import LakeStore
from .store.hot import Durability
from .store.reader import TRANSLATED, translate_errors, translated_error
from .upcasting import UpcasterRegistry, default_registry, upcast_frame

if TYPE_CHECKING:
    from .aggregates import Aggregate
    from .projections import Projection
    from .repository import SnapshotStore
    from .temporal.bounds import Watermark
    from .temporal.checkpoints import Every
    from .temporal.history import Clock
    from .temporal.states import Method

__all__ = ["Lake", "SubscriberFailure"]

A = TypeVar("A", bound="Aggregate")
_EVENT_COLUMN_LIST = list(EVENT_COLUMNS)
_log = logging.getLogger("es_analytics")
_MAX_SUBSCRIBER_ERRORS = 100
_ENVELOPE_MARKER = f'"{ENVELOPE_KEY}":"{ALGORITHM}"'  # what an encrypted field looks like in stored JSON




class Lake:
    """An event lake in one folder: a SQLite hot tier for appends and Parquet for sealed history.

    Use :meth:`Lake.open`; a lake is also a context manager.

    Examples
    --------
    >>> import tempfile
    >>> from es_analytics import Event, Lake
    >>> with Lake.open(tempfile.mkdtemp()) as lake:
    ...     lake.append("acc-1", [Event("AccountOpened", {"initialDeposit": 100})],
    ...                 expected_version=0, aggregate_type="BankAccount")
    ...     lake.sql("SELECT count(*) AS n FROM events")["n"].item()
    1
    1
    """

    def __init__(self, store: LakeStore, path: Path, key_store: KeyStore | None = None) -> None:
        self._store = store
        self.path = path
        self._closed = False
        # Personal fields: encrypted on append and bulk import, decrypted in _present (privacy.py).
        self.key_store: KeyStore = FileKeyStore(path / KEY_FILE) if key_store is None else key_store
        self._privacy = Privacy(self.key_store)
        store.encrypt_table = self._privacy.encrypt_table
        # Every seal and bulk import extends the hash chain, which a new lake starts at genesis.
        store.extend_chain = integrity.extend_after_seal
        with translate_errors("open"):
            integrity.start(store)
        store.hot.same_data = self._privacy.same_content
        self.upcasters: UpcasterRegistry = default_registry
        self._snapshots: Any = None
        self._sql_upcasters: tuple[int, UpcasterRegistry, int] | None = None
        self._subscribers: list[tuple[Callable[[pl.DataFrame], object], list[str] | None]] = []
        self.subscriber_errors: list[SubscriberFailure] = []
        self._projection_views: dict[str, Any] = {}

    # -- life cycle ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "full",
        safe_sql: bool = False,
        auto_seal_rows: int = 50_000,
        seal_in_background: bool = False,
        key_store: KeyStore | None = None,
    ) -> Lake:
        """Open the lake in folder ``path``, creating an empty one if the folder is missing or empty.

        Parameters
        ----------
        path
            The lake folder.
        durability
            ``"full"`` (default): an append returns only once it is fsynced. ``"normal"``: faster appends
            that survive a process crash but may lose the newest appends on power loss.
        safe_sql
            Forbid ``lake.sql`` from reading any file outside the lake (the command line turns it on).
        auto_seal_rows
            Seal on its own once this many events wait in the hot tier (0 turns it off).
        seal_in_background
            Run those automatic seals on a background thread, so the append that crosses the threshold
            does not wait for Parquet to be written; ``close()`` waits for a running seal. Off by
            default: the appending thread seals before it returns, which sustains about the same
            throughput on two cores and deletes sealed rows more cheaply (see docs/decisions.md).
        key_store
            Where data subjects' keys live (see ``es_analytics.privacy``); default a
            :class:`~es_analytics.privacy.FileKeyStore` in the lake folder, its keys wrapped with the master
            key kept outside it (:func:`~es_analytics.privacy.master_key`).

        Raises
        ------
        NotALakeError
            The folder holds other files.
        """
        if durability not in ("full", "normal"):
            raise InvalidArgumentError(f"durability must be 'full' or 'normal', got {durability!r}")
        if isinstance(auto_seal_rows, bool) or not isinstance(auto_seal_rows, int) or auto_seal_rows < 0:
            raise InvalidArgumentError(f"auto_seal_rows must be a non-negative int, got {auto_seal_rows!r}")
        folder = Path(path).expanduser().absolute()
        if not isinstance(seal_in_background, bool):
            raise InvalidArgumentError(f"seal_in_background must be True or False, got {seal_in_background!r}")
        store = LakeStore(folder, durability=durability, safe_sql=safe_sql, auto_seal_rows=auto_seal_rows,
                          seal_in_background=seal_in_background)
        return cls(store, folder, key_store)

    def close(self) -> None:
        """Release the lake's files and connections. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._store.close()
            close_keys = getattr(self.key_store, "close", None)
            if close_keys is not None:
                close_keys()

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lake({str(self.path)!r})"

    def _repr_html_(self) -> str:
        """A summary card for Jupyter: streams and events per aggregate type, time range, storage."""
        from html import escape

        head = f"<b>Event lake</b> <code>{escape(str(self.path))}</code>"
        if self._closed:
            return f"<div>{head} (closed)</div>"
        manifest = self._store.manifest()
        frame = self._query(
            "SELECT aggregate_type, count(*) AS events, count(DISTINCT event_type) AS event_types, "
            "min(occurred_at) AS first, max(occurred_at) AS last, count(*) FILTER (WHERE position > ?) AS hot "
            "FROM events GROUP BY aggregate_type ORDER BY events DESC",
            [manifest.sealed_position], what="Lake summary",
        )
        with translate_errors("Lake summary"):  # stream counts from the hot tier's stream heads (cheap)
            streams = dict(self._store.hot.con.execute(
                "SELECT aggregate_type, count(*) FROM stream_heads GROUP BY aggregate_type").fetchall())
        frame = frame.with_columns(
            pl.col("aggregate_type").replace_strict(streams, default=0, return_dtype=pl.Int64).alias("streams"))
        cell = 'style="padding:2px 10px;text-align:{}"'
        header = "".join(f"<th {cell.format(a)}>{t}</th>" for t, a in (
            ("aggregate type", "left"), ("streams", "right"), ("events", "right"), ("event types", "right"),
            ("first occurred", "left"), ("last occurred", "left")))
        rows = "".join(
            f"<tr><td {cell.format('left')}>{escape(r['aggregate_type'])}</td>"
            f"<td {cell.format('right')}>{r['streams']:,}</td><td {cell.format('right')}>{r['events']:,}</td>"
            f"<td {cell.format('right')}>{r['event_types']}</td>"
            f"<td {cell.format('left')}>{r['first']:%Y-%m-%d %H:%M}</td>"
            f"<td {cell.format('left')}>{r['last']:%Y-%m-%d %H:%M}</td></tr>"
            for r in frame.iter_rows(named=True))
        total, hot = int(frame["events"].sum()), int(frame["hot"].sum())
        size = sum(f.bytes for f in manifest.files)
        foot = (f"{total:,} events in {int(frame['streams'].sum()):,} streams · {len(manifest.files)} Parquet "
                f"files ({size / 1e6:,.1f} MB) · {hot:,} events in the hot tier · times in UTC")
        table = f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>" if total else "<p>empty</p>"
        return f'<div style="font-size:13px">{head}{table}<div style="color:#52606d">{foot}</div></div>'

    # -- writing ------------------------------------------------------------------------------
    def append(
        self,
        aggregate_id: str,
        events: Sequence[Event],
        *,
        expected_version: int | None,
        aggregate_type: str,
    ) -> int:
        """Append ``events`` to one stream atomically and return the stream's new version.

        Parameters
        ----------
        aggregate_id
            The stream.
        events
            One or more :class:`Event` objects, stored as versions ``expected_version + 1 …``.
        expected_version
            The version the caller last saw (0 for a new stream), or ``None`` for any.
        aggregate_type
            The stream's type, an identifier such as ``"BankAccount"``.

        Raises
        ------
        ConcurrencyError
            The stream is not at ``expected_version``; nothing was appended.
        DuplicateEventError
            An ``event_id`` is already stored with other content.
        InvalidArgumentError
            Empty or malformed input.

        Notes
        -----
        Retrying an append whose events are already stored (same ids, same content) returns the same
        version and stores nothing twice.
        """
        # The usual values pass inline tests that accept exactly what the checks accept, and anything else
        # goes to the checks: right after an fsync'd commit each Python call costs ~1 µs and each check
        # 1–3 µs (docs/decisions.md, "Single appends: a plain INSERT … VALUES").
        if not (type(aggregate_id) is str and aggregate_id.isascii() and aggregate_id.isprintable()
                and 0 < len(aggregate_id) <= MAX_ID_LENGTH and not aggregate_id.isspace()):
            aggregate_id = check_aggregate_id(aggregate_id)
        if type(aggregate_type) is not str or aggregate_type not in KNOWN_TYPES:
            aggregate_type = check_aggregate_type(aggregate_type)
        if expected_version is not None and (type(expected_version) is not int or expected_version < 0):
            check_version(expected_version, "expected_version", allow_none=True)
        if type(events) is list and len(events) == 1 and type(events[0]) is Event:
            event = events[0]  # one event (the usual single append): the checks of _check_events hold trivially
            batch = [event]
            unsent = event._take_unsent()
            encoded = ([(event.data_json, event.metadata_json)] if not PERSONAL_FIELDS
                       else self._privacy.encode(batch, aggregate_id))
        else:
            batch = self._check_events(events)
            # Every event's mark is taken (a list, not a short-circuiting generator); of two threads
            # appending one event object only one sees it unsent.
            unsent = all([e._take_unsent() for e in batch])
            encoded = self._privacy.encode(batch, aggregate_id)
        try:  # translate_errors("append") inline: a context manager costs ~2 µs, on every single append
            version, last_position = self._store.hot.append(
                aggregate_id, aggregate_type, batch, expected_version, encoded, self._store.lookup_sealed,
                unsent=unsent,
            )
        except TRANSLATED as exc:
            error = translated_error("append", exc)
            if error is None:
                raise
            raise error from exc
        if last_position:
            self._store.maybe_auto_seal(last_position)
            if self._subscribers:
                self._publish(aggregate_id, version - len(batch), version)
        return version

    @staticmethod
    def _check_events(events: object) -> list[Event]:
        if isinstance(events, Event):
            events = [events]
        if not isinstance(events, (list, tuple)):
            raise InvalidArgumentError(f"events must be a list of Event, got {type(events).__name__}")
        if not events:
            raise InvalidArgumentError("events is empty; an append needs at least one Event")
        for item in events:
            if not isinstance(item, Event):
                raise InvalidArgumentError(f"events must hold Event objects, got {type(item).__name__} {item!r:.60}")
        ids = [e.event_id for e in events]
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("events repeat an event_id within one append")
        return list(events)

    def current_version(self, aggregate_id: str) -> int:
        """The stream's version: the number of events in it (0 for an unknown stream)."""
        aggregate_id = check_aggregate_id(aggregate_id)
        with translate_errors("current_version"):
            return self._store.hot.current_version(aggregate_id)

    def seal(self) -> dict[str, Any]:
        """Move committed hot events into Parquet now and return what was done.

        Afterwards the integrity checkpoint is extended over the new events (``result["integrity"]``; the
        first checkpoint of a lake covers all its events once).
        """
        with translate_errors("seal"):
            return self._store.seal()

    def compact(self, aggregate_type: str | None = None) -> list[str]:
        """Rewrite sealed files into stream-sorted files (also done on its own while sealing)."""
        if aggregate_type is not None:
            check_aggregate_type(aggregate_type)
        with translate_errors("compact"):
            return self._store.compact(aggregate_type)

    # -- reading ------------------------------------------------------------------------------
    def events(
        self,
        aggregate_id: str | None = None,
        *,
        from_version: int = 0,
        types: str | Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        known_at: datetime | None = None,
    ) -> pl.DataFrame:
        """Events ordered by ``position``, with the columns of the event record.

        Parameters
        ----------
        aggregate_id
            One stream, or ``None`` for every stream.
        from_version
            Only events after this version (exclusive).
        types
            Only these event types.
        since, until
            Bounds on ``occurred_at`` (inclusive).
        known_at
            Only events recorded at or before this time (``recorded_at``).
        """
        check_version(from_version, "from_version")
        type_list = check_event_types(types)
        bounds = {
            "since": to_utc_or_none(since, "since"),
            "until": to_utc_or_none(until, "until"),
            "known_at": to_utc_or_none(known_at, "known_at"),
        }
        if aggregate_id is not None:
            aggregate_id = check_aggregate_id(aggregate_id)
            table = self._store.read_stream(aggregate_id)
            if from_version or type_list is not None or any(v is not None for v in bounds.values()):
                table = _filter_table(table, from_version, type_list, bounds)
            return self._present_table(table)
        return self._present(self._scan_events(from_version, type_list, bounds))

    def _present_table(self, table: pa.Table) -> pl.DataFrame:
        """``_present`` for one stream's small table: polars only runs the decrypt and upcast steps when
        pyarrow finds rows that need them (on tiny frames each polars step costs a thread-pool round trip)."""
        if table.column_names != _EVENT_COLUMN_LIST:
            table = table.select(_EVENT_COLUMN_LIST)
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        pending = self.upcasters._pending_types()
        encrypted = table.num_rows and pc.any(pc.match_substring(table["data"], _ENVELOPE_MARKER)).as_py()
        stale = pending and pc.any(pc.is_in(table["event_type"], pa.array(list(pending), pa.string()))).as_py()
        return self._present(frame) if encrypted or stale else frame

    def _scan_events(self, from_version: int, types: list[str] | None, bounds: dict[str, datetime | None]) -> pl.DataFrame:
        clauses, params = ["aggregate_version > ?"], [from_version]
        if types is not None:
            clauses.append("list_contains(?, event_type)")
            params.append(types)  # type: ignore[arg-type]
        for key, clause in (("since", "occurred_at >= ?"), ("until", "occurred_at <= ?"), ("known_at", "recorded_at <= ?")):
            if bounds[key] is not None:
                clauses.append(clause)
                params.append(bounds[key])  # type: ignore[arg-type]
        sql = f"SELECT * FROM events WHERE {' AND '.join(clauses)} ORDER BY position"
        return self._query(sql, params, what="events")

    def _present(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The public shape of an events frame (hook for upcasting and decryption on read)."""
        return upcast_frame(self._privacy.decrypt_frame(frame.select(EVENT_COLUMNS)), self.upcasters)

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        """Run one read-only DuckDB query over the view ``events`` and return a polars DataFrame.

        Parameters are bound (``?`` or ``$name``), never pasted. Statements that would change the lake
        or write files raise ``ReadOnlyQueryError``; with ``safe_sql`` so do reads of outside files.
        """
        self._refresh_views()
        return self._store.reader.user_query(query, params, what="lake.sql")

    def _query(self, query: str, params: Sequence[Any] | dict[str, Any] | None, *, what: str) -> pl.DataFrame:
        self._refresh_views()
        return self._store.reader.query(query, params, what=what)

    def _refresh_views(self) -> None:
        self._store.refresh()
        self._install_upcast_sql()
        self._install_projection_views()

    def check(self, *, repair: bool = False) -> dict[str, Any]:
        """Check the lake (fsck) and report; with ``repair=True`` fix what is safe to fix."""
        from .store.check import check_lake

        self._store.wait_for_seal()
        with translate_errors("check"):
            return check_lake(self._store, repair=repair)

    # -- privacy and tamper evidence (privacy.py, forgetting.py, integrity.py) ----------------------
    def forget(self, subject_id: str, *, reason: str | None = None, actor: str | None = None) -> dict[str, Any]:
        """Crypto-shred everything personal about ``subject_id`` and verify no lake file holds it.

        Deletes the subject's key, appends a ``SubjectForgotten`` tombstone, deletes snapshots of the
        aggregates that held the subject's data, and scans every file under the lake folder for the
        subject's plaintext values. Afterwards readers show :data:`es_analytics.privacy.ERASED`.

        Returns
        -------
        dict
            The erasure certificate: ``subject_id, key_deleted_at, tombstone_position, events_affected,
            aggregates, snapshots_deleted, plaintext_values_checked, scan, verified`` and more.

        Raises
        ------
        UnknownSubjectError
            The lake never held personal data of this subject.
        SubjectForgottenError
            The subject was forgotten already (a run interrupted by a crash is completed instead).
        """
        from .forgetting import forget

        return forget(self, subject_id, reason=reason, actor=actor)

    def verify(self, *, checkpoint: bool = True, raise_on_failure: bool = False) -> dict[str, Any]:
        """Check the hash chain over all events against its checkpoint; see ``es_analytics.integrity``.

        Reports the first event whose stored content no longer matches and every file checked. With
        ``checkpoint`` (default) a clean result extends the checkpoint to the newest event; with
        ``raise_on_failure`` a failed check raises ``TamperEvidenceError``.
        """
        from .integrity import verify

        return verify(self, checkpoint=checkpoint, raise_on_failure=raise_on_failure)

    # -- aggregates, upcasting, subscribers ------------------------------------------------------
    def aggregate(
        self,
        aggregate_class: type[A],
        aggregate_id: str,
        *,
        as_of: datetime | None = None,
        known_at: datetime | Watermark | None = None,
        version: int | None = None,
    ) -> A | None:
        """The aggregate rebuilt as it was as of ``as_of``, known at ``known_at`` (or at ``version``).

        Folds the stream's events with ``occurred_at <= as_of`` and ``recorded_at <= known_at`` in version
        order, starting from the newest snapshot that lies at or before that point on both clocks.
        ``known_at`` may be a :meth:`watermark` (the lake exactly as it was at that position).
        Returns ``None`` if the aggregate did not exist yet.

        Examples
        --------
        >>> import tempfile
        >>> from es_analytics import Lake
        >>> from es_analytics.examples.bank import BankAccount
        >>> with Lake.open(tempfile.mkdtemp()) as lake:
        ...     account = BankAccount("acc-1")
        ...     account.open_account(100, "Ada Almeida")
        ...     lake.append("acc-1", list(account.pending_events), expected_version=0, aggregate_type="BankAccount")
        ...     lake.aggregate(BankAccount, "acc-1").balance
        1
        Decimal('100')
        """
        from .repository import load

        return load(self, aggregate_class, aggregate_id, as_of=as_of, known_at=known_at, version=version)

    def aggregate_history(
        self,
        aggregate_class: type[Aggregate],
        aggregate_id: str,
        *,
        as_of: datetime | None = None,
        known_at: datetime | Watermark | None = None,
        version: int | None = None,
    ) -> pl.DataFrame:
        """The aggregate's state after each event, one row per event (for chasing how a state came about).

        Columns: ``aggregate_version, position, event_type, occurred_at, recorded_at`` and one column per
        state field. The same events and order as :meth:`aggregate` with the same arguments, so the last
        row is the state it returns.

        Examples
        --------
        >>> import tempfile
        >>> from es_analytics import Lake, Repository
        >>> from es_analytics.examples.bank import BankAccount
        >>> with Lake.open(tempfile.mkdtemp()) as lake:
        ...     account = BankAccount("acc-1")
        ...     account.open_account(100, "Ada Almeida")
        ...     account.withdraw(30, "Rent")
        ...     Repository(lake, BankAccount).save(account)
        ...     lake.aggregate_history(BankAccount, "acc-1").select("event_type", "balance", "status").rows()
        2
        [('AccountOpened', Decimal('100'), 'active'), ('MoneyWithdrawn', Decimal('70'), 'active')]
        """
        from .repository import history

        return history(self, aggregate_class, aggregate_id, as_of=as_of, known_at=known_at, version=version)

    def _subjects_of(self, aggregate_id: str, version: int) -> set[str]:
        """The data subjects whose encrypted fields appear in versions 1..``version`` of a stream."""
        with translate_errors("reading a stream"):
            table = self._store.read_stream(aggregate_id)
        marker = f'"{ENVELOPE_KEY}":"{ALGORITHM}"'
        texts = [text for text, v in zip(table["data"].to_pylist(), table["aggregate_version"].to_pylist())
                 if v <= version and marker in text]
        return self._privacy.subjects_in(texts)

    @property
    def snapshots(self) -> SnapshotStore:
        """The aggregate snapshots stored in this lake (``delete(aggregate_id)`` removes one aggregate's)."""
        if self._snapshots is None:
            from .repository import SnapshotStore

            self._snapshots = SnapshotStore(self._store.hot, keys=self.key_store, subjects_of=self._subjects_of)
        return self._snapshots  # type: ignore[no-any-return]

    def upcasting_coverage(self) -> pl.DataFrame:
        """Which (event_type, schema_version) the lake holds and whether each reaches the newest version.

        Columns: ``event_type, schema_version, events, first_seen, last_seen`` (``recorded_at`` of the
        first and last such event), ``newest_version`` (null for types without upcasters),
        ``reaches_newest``, ``status`` (newest, upcast, broken chain, ahead, unversioned) and ``path``.
        """
        from .upcasting import coverage

        counts = self._query(
            "SELECT event_type, schema_version, count(*) AS events, min(recorded_at) AS first_seen, "
            "max(recorded_at) AS last_seen FROM events GROUP BY event_type, schema_version",
            None, what="upcasting_coverage",
        )
        return coverage(counts, self.upcasters)

    def _install_upcast_sql(self) -> None:
        """(Re)create the view ``events_upcast`` and its functions on the DuckDB connection once."""
        reader = self._store.reader
        key = (id(reader.con), self.upcasters, self.upcasters.revision)
        if self._sql_upcasters == key:
            return
        from .privacy import ALGORITHM, ENVELOPE_KEY
        from .upcasting import install_sql

        with reader.lock, translate_errors("installing events_upcast"):
            install_sql(reader.con, self.upcasters, self._privacy.decrypt_frame, f'"{ENVELOPE_KEY}":"{ALGORITHM}"')
        self._sql_upcasters = key

    def subscribe(
        self, handler: Callable[[pl.DataFrame], object], *, types: str | Sequence[str] | None = None
    ) -> Callable[[], None]:
        """Call ``handler(events)`` after every commit of an append in this process; returns an unsubscribe.

        ``events`` is the frame of the committed events (as ``lake.events`` shows them); with ``types``
        only events of those types, and the handler is not called when none of them was committed. A
        handler that raises does not undo the commit: the error is logged (logger ``es_analytics``) and
        kept in :attr:`subscriber_errors`, and the other handlers still run.
        """
        if not callable(handler):
            raise InvalidArgumentError(f"handler must be callable, got {handler!r}")
        entry = (handler, check_event_types(types))
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)

        return unsubscribe

    def _publish(self, aggregate_id: str, after_version: int, version: int) -> None:
        try:
            committed = self.events(aggregate_id, from_version=after_version)
            committed = committed.filter(pl.col("aggregate_version") <= version)  # not later appends by others
        except EsAnalyticsError as exc:
            self._subscriber_failed(None, None, exc)
            return
        for handler, types in list(self._subscribers):
            events = committed if types is None else committed.filter(pl.col("event_type").is_in(types))
            if events.height == 0:
                continue
            try:
                handler(events)
            except Exception as exc:  # a subscriber's bug must not look like a failed append
                self._subscriber_failed(handler, events, exc)

    def _subscriber_failed(self, handler: object, events: pl.DataFrame | None, exc: Exception) -> None:
        positions = () if events is None else tuple(events["position"].to_list())
        failure = SubscriberFailure(getattr(handler, "__qualname__", repr(handler)), positions, exc)
        self.subscriber_errors.append(failure)
        del self.subscriber_errors[:-_MAX_SUBSCRIBER_ERRORS]
        _log.error("subscriber %s failed on positions %s: %r", failure.handler, positions, exc, exc_info=exc)


    # -- temporal queries (es_analytics.temporal) -------------------------------------------------
    def explore(self, aggregate_class: type, *, steps: int = 120, rows: int = 12) -> Any:
        """A notebook widget: every ``aggregate_class`` as of a moment and as known at another, with a
        slider for each clock, a table and a chart that follow them (see ``es_analytics.explore``)."""
        from .explore import Explorer

        return Explorer(self, aggregate_class, steps=steps, rows=rows)

    def states(
        self,
        aggregate_class: type,
        *,
        as_of: datetime | None = None,
        known_at: datetime | Watermark | None = None,
        method: Method = "auto",
    ) -> pl.DataFrame:
        """Every aggregate of the class at once, as of ``as_of``, as known at ``known_at``.

        Columns: ``aggregate_id``, ``version``, then one per state field, one row per aggregate that had
        at least one event passing both filters, ordered by ``aggregate_id``. A class that declares
        ``reducers`` is rebuilt by one DuckDB query, or from a checkpoint plus the newer events once
        ``lake.checkpoint(cls)`` built one; otherwise every stream is folded through the class's handlers.

        Parameters
        ----------
        as_of
            Business time: only events with ``occurred_at <= as_of`` (default: all).
        known_at
            System time: only events with ``recorded_at <= known_at``; a :class:`Watermark` pins the lake
            to one position, so the result stays the same after new events arrive.
        method
            ``"auto"`` (default), ``"scan"`` (one query over the events), ``"checkpoint"`` or ``"fold"``.

        Examples
        --------
        >>> import tempfile
        >>> from datetime import datetime, timezone
        >>> from es_analytics import Event, Lake
        >>> from es_analytics.examples.bank import BankAccount
        >>> t = datetime(2025, 3, 1, tzinfo=timezone.utc)
        >>> with Lake.open(tempfile.mkdtemp()) as lake:
        ...     _ = lake.append("acc-1", [
        ...         Event("AccountOpened", {"accountId": "acc-1", "initialDeposit": 100, "accountHolder": "Ada"},
        ...               occurred_at=t),
        ...         Event("MoneyDeposited", {"amount": 25.5, "description": "", "newBalance": 125.5},
        ...               occurred_at=t.replace(day=5))], expected_version=0, aggregate_type="BankAccount")
        ...     lake.states(BankAccount, as_of=t.replace(day=2))["version"].to_list()
        [1]
        """
        from .temporal.bounds import make_bounds
        from .temporal.states import states

        return states(self, aggregate_class, make_bounds(as_of, known_at), method)

    def events_between(
        self,
        start: datetime,
        end: datetime,
        *,
        types: str | Sequence[str] | None = None,
        known_at: datetime | Watermark | None = None,
    ) -> pl.DataFrame:
        """Events with ``occurred_at`` within ``[start, end]`` (inclusive), ordered by ``occurred_at``."""
        from .temporal.history import events_between

        return events_between(self, start, end, types=types, known_at=known_at)

    def system_state(
        self, as_of: datetime, *, known_at: datetime | Watermark | None = None, aggregate_type: str | None = None
    ) -> pl.DataFrame:
        """The whole system as of ``as_of``: each aggregate's events, grouped.

        Columns ``aggregate_type, aggregate_id, version, events`` (a list of event records in version
        order), the seed's ``getSystemStateAtTime``.
        """
        from .temporal.history import system_state

        return system_state(self, as_of, known_at=known_at, aggregate_type=aggregate_type)

    def diff(
        self,
        aggregate_class: type,
        t1: datetime,
        t2: datetime,
        *,
        clock: Clock = "as_of",
        as_of: datetime | None = None,
        known_at: datetime | Watermark | None = None,
    ) -> pl.DataFrame:
        """Which aggregates changed between ``t1`` and ``t2``, which fields, old and new values, and why.

        See :func:`es_analytics.temporal.history.diff`; ``clock="known_at"`` compares what the lake knew
        at two times about the state valid at ``as_of``.
        """
        from .temporal.history import diff

        return diff(self, aggregate_class, t1, t2, clock=clock, as_of=as_of, known_at=known_at)

    def watermark(self, at: datetime | None = None) -> Watermark:
        """The lake's newest position (or the last one recorded at or before ``at``), to pin analyses to.

        Pass it as ``known_at=`` to ``states``, ``events_between``, ``system_state`` or ``diff``.
        """
        from .temporal.bounds import read_watermark

        return read_watermark(self, at)

    def checkpoint(self, aggregate_class: type, *, every: Every = "month") -> dict[str, Any]:
        """Build, or bring up to date, the state checkpoints of a class that declares reducers.

        Once a class has checkpoints, ``states`` reads them (a checkpoint plus the events after it) and keeps
        them current on its own. Building reads every event of the type once, so it is never started
        implicitly: call this once for large types (and again to fold many new events in at a quiet time).
        """
        from .temporal import checkpoints
        from .temporal.states import aggregate_type_of, reducers_of

        reducers = reducers_of(aggregate_class)
        if reducers is None:
            raise InvalidArgumentError(f"{aggregate_class.__name__} declares no reducers, so it has no checkpoints")
        done = checkpoints.refresh(self, reducers, aggregate_type_of(aggregate_class), every=every)
        return {"position": done.position, "every": done.every, "checkpoints": len(done.files),
                "inputs": len(done.inputs), "folder": str(done.folder)}


    # -- projections (es_analytics.projections) ------------------------------------------------------
    def project(
        self, projection: Projection, *, as_of: datetime | None = None, known_at: datetime | Watermark | None = None
    ) -> pl.DataFrame:
        """The projection (read model) as a polars DataFrame, built from the events by one DuckDB query.

        With ``as_of`` only events that occurred by then count, with ``known_at`` only those recorded by
        then. A projection materialised in this lake and asked for now is read from its stored table,
        brought up to date first.

        Examples
        --------
        >>> import tempfile
        >>> from es_analytics import Event, Lake
        >>> from es_analytics.examples.bank import account_summary
        >>> with Lake.open(tempfile.mkdtemp()) as lake:
        ...     _ = lake.append("acc-1", [Event("AccountOpened", {"accountId": "acc-1", "initialDeposit": 100,
        ...                                "accountHolder": "Ada"})], expected_version=0, aggregate_type="BankAccount")
        ...     lake.project(account_summary)["status"].to_list()
        ['active']
        """
        from .materialized import read
        from .projections import build
        from .temporal.bounds import make_bounds

        bounds = make_bounds(as_of, known_at)
        if bounds == make_bounds() and self._is_materialized(projection):
            return read(self, projection)
        return build(self, projection, bounds)

    def _is_materialized(self, projection: object) -> bool:
        from .materialized import folder_of
        from .projections import Projection

        return isinstance(projection, Projection) and (folder_of(self, projection.name) / "state.json").exists()

    def materialize(self, projection: Projection) -> dict[str, Any]:
        """Build the projection in full and store it in the lake (Parquet with a checkpoint position).

        It then is a DuckDB view of the projection's name in :meth:`sql`, and :meth:`refresh` keeps it
        current by applying only newer events. Returns ``name, position, rows, mode``.
        """
        from .materialized import materialize

        return materialize(self, projection)

    def refresh(self, projection: Projection | str | None = None) -> list[dict[str, Any]]:
        """Apply the events after each materialised projection's checkpoint; returns what each did.

        ``projection`` is a projection, the name of one defined in this process, or ``None`` for every
        materialised projection of the lake (those whose definition this process has not imported are
        listed with ``mode`` ``"skipped: not defined here"``).
        """
        from .materialized import refresh
        from .projections import registered

        if projection is None:  # projections not defined in this process are reported, not guessed
            known = registered()
            return [refresh(self, known[n]) if n in known else {"name": n, "mode": "skipped: not defined here"}
                    for n in self.projections()["name"].to_list()]
        if isinstance(projection, str):
            found = registered().get(projection)
            if found is None:
                raise InvalidArgumentError(
                    f"no projection named {projection!r} is defined in this process; pass the projection itself")
            projection = found
        return [refresh(self, projection)]

    def rebuild(self, projection: Projection) -> dict[str, Any]:
        """Throw a materialised projection's stored table away and build it again from every event."""
        from .materialized import rebuild

        return rebuild(self, projection)

    def projections(self) -> pl.DataFrame:
        """The projections materialised in this lake: ``name, kind, position, rows, behind, files``."""
        from .materialized import materialized

        return materialized(self)

    def _install_projection_views(self) -> None:
        from .materialized import install_views

        install_views(self, self._projection_views)


@dataclass(frozen=True)
class SubscriberFailure:
    """A subscriber that raised: its name, the positions it was given, and the exception."""

    handler: str
    positions: tuple[int, ...]
    error: Exception


def _filter_table(
    table: pa.Table, from_version: int, types: list[str] | None, bounds: dict[str, datetime | None]
) -> pa.Table:
    """Apply the ``events`` filters to one stream's rows (pyarrow: small tables, no thread pool)."""
    mask = pc.greater(table["aggregate_version"], from_version)
    if types is not None:
        mask = pc.and_(mask, pc.is_in(table["event_type"], pa.array(types, pa.string())))
    for key, column, op in (("since", "occurred_at", pc.greater_equal), ("until", "occurred_at", pc.less_equal),
                            ("known_at", "recorded_at", pc.less_equal)):
        if bounds[key] is not None:
            mask = pc.and_(mask, op(table[column], pa.scalar(bounds[key], table.schema.field(column).type)))
    return table.filter(mask)
