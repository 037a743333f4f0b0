"""The ``Lake`` façade: open a lake folder, append events, read them, query them with SQL, seal them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from ._time import to_utc_or_none
from .errors import InvalidArgumentError
from .events import EVENT_COLUMNS, Event, check_aggregate_id, check_aggregate_type, check_version
from .store.engine import LakeStore
from .store.hot import Durability
from .store.reader import translate_errors

__all__ = ["Lake"]


def _check_types(types: object) -> list[str] | None:
    if types is None:
        return None
    if isinstance(types, str):
        return [types]
    if not isinstance(types, (list, tuple, set, frozenset)) or not all(isinstance(t, str) for t in types):
        raise InvalidArgumentError(f"types must be an event type or a list of them, got {types!r}")
    return sorted(types)


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

    def __init__(self, store: LakeStore, path: Path) -> None:
        self._store = store
        self.path = path
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "full",
        safe_sql: bool = False,
        auto_seal_rows: int = 50_000,
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
        store = LakeStore(folder, durability=durability, safe_sql=safe_sql, auto_seal_rows=auto_seal_rows)
        return cls(store, folder)

    def close(self) -> None:
        """Release the lake's files and connections. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._store.close()

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lake({str(self.path)!r})"

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
        aggregate_id = check_aggregate_id(aggregate_id)
        aggregate_type = check_aggregate_type(aggregate_type)
        check_version(expected_version, "expected_version", allow_none=True)
        batch = self._check_events(events)
        encoded = [(e.data_json, e.metadata_json) for e in batch]
        with translate_errors("append"):
            version, _ = self._store.hot.append(
                aggregate_id, aggregate_type, batch, expected_version, encoded, self._store.lookup_sealed
            )
        self._store.maybe_auto_seal(self._store.hot.max_position())
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
        """Move committed hot events into Parquet now and return what was done."""
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
        type_list = _check_types(types)
        bounds = {
            "since": to_utc_or_none(since, "since"),
            "until": to_utc_or_none(until, "until"),
            "known_at": to_utc_or_none(known_at, "known_at"),
        }
        if aggregate_id is not None:
            aggregate_id = check_aggregate_id(aggregate_id)
            table = _filter_table(self._store.read_stream(aggregate_id), from_version, type_list, bounds)
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
        else:
            frame = self._scan_events(from_version, type_list, bounds)
        return self._present(frame)

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
        return frame.select(EVENT_COLUMNS)

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        """Run one read-only DuckDB query over the view ``events`` and return a polars DataFrame.

        Parameters are bound (``?`` or ``$name``), never pasted. Statements that would change the lake
        or write files raise ``ReadOnlyQueryError``; with ``safe_sql`` so do reads of outside files.
        """
        return self._query(query, params, what="lake.sql")

    def _query(self, query: str, params: Sequence[Any] | dict[str, Any] | None, *, what: str) -> pl.DataFrame:
        self._store.refresh()
        return self._store.reader.query(query, params, what=what)

    def check(self, *, repair: bool = False) -> dict[str, Any]:
        """Check the lake (fsck) and report; with ``repair=True`` fix what is safe to fix."""
        from .store.check import check_lake

        with translate_errors("check"):
            return check_lake(self._store, repair=repair)


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
