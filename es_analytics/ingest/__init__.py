"""Ingest history from where it lives now: JSON Lines, CSV and Parquet files, the seed's ``events`` table in
SQLite or PostgreSQL, and the stored-events tables of the ``eventsourcing`` library.

``ingest(lake, source)`` streams the source in batches (bounded memory), validates every row with the
checks of ``Event``/``append``, skips events the lake already holds (by ``event_id``: re-running an ingest
adds nothing), and writes the rest straight into Parquet through the lake's bulk import. Nothing is dropped
silently: every row that cannot be taken is reported with its file, line (or row) and reason.

Files of 256 MB or more (together) are ingested *staged*: checked rows wait on disk in a hidden folder of the
lake and are committed at once at the end, each event written to Parquet once, in files of compaction size;
nothing of such an ingest is visible (or lost to a crash half-way: re-run it) until it is complete. Smaller
inputs and databases are imported batch by batch as they are read.

Business time comes from the source (``occurred_at``); ``recorded_at`` is the time of the ingest, when
the lake learned of the events.
"""

from __future__ import annotations

import csv
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
import pyarrow as pa

from ..errors import InvalidArgumentError
from . import _sources as src
from ._eventsourcing import EVENTSOURCING_COLUMNS, decode_rows, is_eventsourcing_table
from ._validate import Validator
from ._writer import LakeWriter

if TYPE_CHECKING:
    from ..lake import Lake

__all__ = ["IngestResult", "ingest"]

Format = Literal["jsonl", "csv", "parquet", "sql", "eventsourcing"]
FORMATS = ("jsonl", "csv", "parquet", "sql", "eventsourcing")
REJECT_COLUMNS = ("file", "line", "reason", "record")
_KEEP_REJECTS = 10_000
_BLOCK_BYTES = 64 << 20  # the largest block of a JSON Lines or CSV file read at once
# Files at least this large (together) are staged and imported at once at the end (see _writer).
_STAGE_MIN_BYTES = 256 << 20


@dataclass(frozen=True)
class IngestResult:
    """What an ingest did.

    ``read`` rows were read; ``imported`` of them are new in the lake; ``already_present`` were in the lake
    already (same ``event_id`` in the same stream slot, e.g. a re-run); ``repeated_in_input`` appeared twice
    in the input with the same content; ``rejected`` could not be taken, each listed in ``rejects``
    (columns ``file, line, reason, record``; the first 10,000) and in the file ``rejects_path``.
    """

    sources: tuple[str, ...]
    read: int
    imported: int
    already_present: int
    repeated_in_input: int
    rejected: int
    seconds: float
    rejects: pl.DataFrame = field(repr=False)
    rejects_path: Path | None = None

    @property
    def events_per_second(self) -> float:
        return self.read / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources), "read": self.read, "imported": self.imported,
            "already_present": self.already_present, "repeated_in_input": self.repeated_in_input,
            "rejected": self.rejected, "seconds": round(self.seconds, 3),
            "rejects_path": None if self.rejects_path is None else str(self.rejects_path),
        }


class _RejectLog:
    """Rejects as they come: all to a CSV file (opened on the first one), the first few in memory."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self.kept: list[tuple[str, int, str, str]] = []
        self._handle: Any = None
        self._writer: Any = None

    def add(self, label: str, line: int, reason: str, record: str) -> None:
        self.count += 1
        if len(self.kept) < _KEEP_REJECTS:
            self.kept.append((label, line, reason, record))
        if self.path is not None:
            if self._writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "w", encoding="utf-8", newline="")
                self._writer = csv.writer(self._handle)
                self._writer.writerow(REJECT_COLUMNS)
            self._writer.writerow((label, line, reason, record))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.kept, schema={"file": pl.String, "line": pl.Int64, "reason": pl.String,
                                               "record": pl.String}, orient="row")


def _check_options(format: str | None, mapping: Mapping[str, str] | None, timezone: str | None,
                   batch_size: int) -> dict[str, str]:
    if format is not None and format not in FORMATS:
        raise InvalidArgumentError(f"format must be one of {list(FORMATS)}, got {format!r}")
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidArgumentError(f"timezone {timezone!r} is not an IANA time zone such as 'Europe/Berlin'") from None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
    mapping = dict(mapping or {})
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str) or not value:
            raise InvalidArgumentError(f"mapping must map field names to column names, got {key!r}: {value!r}")
    return mapping


def ingest(
    lake: Lake,
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    format: Format | None = None,
    table: str | None = None,
    mapping: Mapping[str, str] | None = None,
    timezone: str | None = None,
    batch_size: int = 500_000,
    rejects_path: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> IngestResult:
    """Ingest events from files or a database into ``lake``; see the module docstring.

    Parameters
    ----------
    lake
        The lake to write into.
    source
        A file (``.jsonl``/``.ndjson``, ``.csv``, ``.parquet``, a SQLite ``.db``/``.sqlite``), a list of
        files, or a database URL (``sqlite:///path``, ``postgresql://user:pass@host/db``).
    format
        ``"jsonl"``, ``"csv"``, ``"parquet"``, ``"sql"`` (a table in the seed's ``events`` schema: ``id,
        aggregate_id, aggregate_type, event_type, event_data, metadata, version, timestamp``) or
        ``"eventsourcing"`` (the library's stored-events table). Guessed from the name when omitted; a
        database table with ``originator_id, originator_version, topic, state`` is read as ``"eventsourcing"``.
    table
        The database table (default ``events``, or ``stored_events`` for ``"eventsourcing"``).
    mapping
        Source column of an event-record field when it has another name, e.g. ``{"occurred_at": "ts"}``.
        Without one, the usual names are looked for (``id``, ``version``, ``timestamp``, ``event_data`` …).
    timezone
        The IANA zone of times written without one (they are rejected when this is not given).
    batch_size
        Rows per batch; memory grows with it.
    rejects_path
        Where to write the reject report (CSV: ``file, line, reason, record``); written only if a row is rejected.
    progress
        Show a progress bar (tqdm, on stderr).

    Returns
    -------
    IngestResult

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> from es_analytics import Lake
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> rows = [{"event_id": f"e{v}", "event_type": "MoneyDeposited", "aggregate_type": "BankAccount",
    ...          "aggregate_id": "acc-1", "aggregate_version": v, "occurred_at": f"2024-03-0{v}T09:00:00Z",
    ...          "data": {"amount": 10 * v}} for v in (1, 2, 3)]
    >>> _ = (folder / "events.jsonl").write_text("\\n".join(map(json.dumps, rows)) + "\\nnot json\\n")
    >>> with Lake.open(folder / "lake") as lake:
    ...     result = ingest(lake, folder / "events.jsonl")
    ...     again = ingest(lake, folder / "events.jsonl")
    >>> result.imported, result.rejected, list(result.rejects["line"]), again.imported, again.already_present
    (3, 1, [4], 0, 3)
    """
    mapping = _check_options(format, mapping, timezone, batch_size)
    sources = _as_list(source)
    log = _RejectLog(None if rejects_path is None else Path(rejects_path))
    size = _total_bytes(sources)
    writer = LakeWriter(lake, max_pending=max(batch_size * 2, 100_000), staged=size >= _STAGE_MIN_BYTES,
                        expected_bytes=size)
    started = time.perf_counter()
    read = 0
    labels: list[str] = []
    try:
        for file_no, item in enumerate(sources):
            opened = _open(item, format, table, mapping, batch_size)
            labels.append(opened.source.label)
            read += _run_one(opened, file_no, writer, log, timezone, progress, batch_size)
            _drain_rejects(writer, labels, log)
        writer.finish()
        _drain_rejects(writer, labels, log)
    finally:
        writer.close()
        log.close()
    return IngestResult(
        sources=tuple(labels), read=read, imported=writer.counts["imported"],
        already_present=writer.counts["already_present"], repeated_in_input=writer.counts["repeated_in_input"],
        rejected=log.count, seconds=time.perf_counter() - started, rejects=log.frame(),
        rejects_path=log.path if log.count else None,
    )


def _total_bytes(sources: Sequence[str]) -> int:
    """The size of the source files together; -1 if one is not a file (a database: never staged)."""
    total = 0
    for item in sources:
        try:
            total += os.path.getsize(item)
        except OSError:
            return -1
    return total


def _as_list(source: Any) -> list[str]:
    if isinstance(source, (str, os.PathLike)):
        return [os.fspath(source)]
    if isinstance(source, Sequence) and source and all(isinstance(s, (str, os.PathLike)) for s in source):
        return [os.fspath(s) for s in source]
    raise InvalidArgumentError(f"source must be a path, a URL or a list of paths, got {source!r:.80}")


def _drain_rejects(writer: LakeWriter, labels: Sequence[str], log: _RejectLog) -> None:
    for file_no, line, reason, record in sorted(writer.rejects, key=lambda r: (r[0], r[1])):
        log.add(labels[file_no], line, reason, record)
    writer.rejects.clear()


@dataclass
class _Opened:
    source: src.Source
    validator: Validator


def _open(item: str, format: str | None, table: str | None, mapping: dict[str, str], batch_size: int) -> _Opened:
    kind = format or src.detect_format(item)
    if kind in ("sql", "eventsourcing"):
        return _open_database(item, kind, table, mapping, batch_size)
    path = Path(item)
    if not path.is_file():
        raise InvalidArgumentError(f"no file at {item!r}")
    block = _BLOCK_BYTES
    if kind == "jsonl":
        columns, batches = src.read_jsonl(path, mapping, min(block, max(1 << 16, batch_size * 400)))
        opened = src.Source(str(path), "jsonl", src.file_size(path), "B", batches)
        return _Opened(opened, Validator(columns, json_lines=True, kinds={}, timezone=None))
    if kind == "csv":
        columns, batches = src.read_csv(path, mapping, min(block, max(1 << 16, batch_size * 300)))
        return _Opened(src.Source(str(path), "csv", None, "row", batches), Validator(columns, json_lines=False, kinds={}, timezone=None))
    columns, kinds, rows, batches = src.read_parquet(path, mapping, batch_size)
    return _Opened(src.Source(str(path), "parquet", rows, "row", batches),
                   Validator(columns, json_lines=False, kinds=kinds, timezone=None))


def _open_database(item: str, kind: str, table: str | None, mapping: dict[str, str], batch_size: int) -> _Opened:
    postgres = item.startswith(("postgresql://", "postgres://"))
    con = src.connect_postgres(item) if postgres else src.connect_sqlite(item)
    name = table or ("stored_events" if kind == "eventsourcing" else "events")
    src.check_table_name(name, postgres)
    if kind == "sql" and table is None and not src.has_table(con, name, postgres) and src.has_table(con, "stored_events", postgres):
        name = "stored_events"
    available = src.table_columns(con, name, postgres)
    if kind == "sql" and not mapping and is_eventsourcing_table(available):
        kind = "eventsourcing"
    label = f"{src.redact(item) if postgres else 'sqlite:///' + str(src.sqlite_path(item))}#{name}"
    if kind == "eventsourcing":
        missing = [c for c in EVENTSOURCING_COLUMNS if c not in available]
        if missing:
            raise InvalidArgumentError(f"{label} has no column(s) {missing}; it is not an eventsourcing stored-events table")
        columns = {f: f for f in ("event_id", "event_type", "schema_version", "aggregate_type", "aggregate_id",
                                  "aggregate_version", "occurred_at", "data", "metadata")}
        select = ", ".join(src.quote_ident(c) for c in EVENTSOURCING_COLUMNS)
        order = _order(con, name, available, postgres, ("notification_id",), ("originator_id", "originator_version"))
        query = f"SELECT {select} FROM {src.quote_ident(name)} ORDER BY {order}"
        batches = (decode_rows(rows, first) for rows, first in _numbered(src.read_sql_rows(con, query, [], batch_size, postgres)))
    else:
        defaults = {f: c for f, c in src.SEED_COLUMNS.items() if c in available}
        columns = src.resolve_columns(available, {**defaults, **mapping}, label)
        cast = "::text" if postgres else ""
        select = ", ".join(f"{src.quote_ident(check_column(c))}{cast}" for c in columns.values())
        order = _order(con, name, available, postgres, ("position",),
                       (columns["occurred_at"], columns["aggregate_id"], columns["aggregate_version"]))
        query = f"SELECT {select} FROM {src.quote_ident(name)} ORDER BY {order}"
        names = list(columns)
        batches = (src.rows_to_batch(rows, names, first) for rows, first in _numbered(src.read_sql_rows(con, query, [], batch_size, postgres)))
        columns = {f: f for f in columns}
    total = _count(con, name, postgres)
    opened = src.Source(label, kind, total, "row", _closing(batches, con))  # type: ignore[arg-type]
    return _Opened(opened, Validator(columns, json_lines=False, kinds={}, timezone=None))


def check_column(name: str) -> str:
    from ..events import check_identifier

    return check_identifier(name, "column")


def _order(con: Any, table: str, available: Sequence[str], postgres: bool, preferred: Sequence[str],
           fallback: Sequence[str]) -> str:
    """Commit order if the table keeps one (a position column, SQLite's rowid), else a stable fallback."""
    for column in preferred:
        if column in available:
            return src.quote_ident(column)
    if not postgres:
        try:
            con.execute(f"SELECT rowid FROM {src.quote_ident(table)} LIMIT 0").fetchall()
            return "rowid"
        except sqlite3.OperationalError:  # a WITHOUT ROWID table (the library's aggregate recorder)
            pass
    return ", ".join(src.quote_ident(check_column(c)) for c in fallback)


def _numbered(chunks: Iterator[list[tuple[Any, ...]]]) -> Iterator[tuple[list[tuple[Any, ...]], int]]:
    first = 1
    for rows in chunks:
        yield rows, first
        first += len(rows)


def _closing(batches: Iterator[Any], con: Any) -> Iterator[Any]:
    try:
        yield from batches
    finally:
        con.close()


def _count(con: Any, name: str, postgres: bool) -> int | None:
    try:
        row = con.execute(f"SELECT count(*) FROM {src.quote_ident(name)}").fetchone()
        if postgres:
            con.rollback()
        return int(row[0])
    except Exception:  # noqa: BLE001 - a count is only for the progress bar
        return None


def _run_one(opened: _Opened, file_no: int, writer: LakeWriter, log: _RejectLog, timezone: str | None,
             progress: bool, batch_size: int) -> int:
    """Read and validate in a background thread (DuckDB releases the GIL) while the lake imports.

    Valid rows are gathered up to ``batch_size`` before they go to the lake: each import has a fixed cost.
    """
    validator = opened.validator
    validator.timezone = timezone
    # The reader may run about one batch ahead. A batch of a JSON Lines or CSV file is gathered from several
    # blocks; with room for one block only, the importer waited for most of every next batch after each
    # import (25 s of a 165 s profile of 10M events).
    ahead = 1
    if opened.source.format in ("jsonl", "csv"):
        ahead = max(1, min(8, -(-batch_size * 400 // _BLOCK_BYTES)))
    queue: Queue[Any] = Queue(maxsize=ahead)
    stop = threading.Event()

    # Two validators (DuckDB runs one such query on one thread): blocks alternate between them, and their
    # results are handed over in block order.
    validators = [validator, Validator(validator.columns, json_lines=validator.json_lines, kinds=validator.kinds,
                                       timezone=timezone)]

    def check(index: int, batch: src.RawBatch) -> tuple[Any, ...]:
        return (batch.progress, batch.table.num_rows + len(batch.rejects), *validators[index % 2].run(batch))

    def produce() -> None:
        try:
            with ThreadPoolExecutor(2, thread_name_prefix="es-analytics-ingest-check") as pool:
                running: deque[Future[tuple[Any, ...]]] = deque()
                for index, batch in enumerate(opened.source.batches):
                    if stop.is_set():
                        break
                    running.append(pool.submit(check, index, batch))
                    if len(running) == 2:  # the next block goes to the validator of this one
                        queue.put(running.popleft().result())
                while running and not stop.is_set():
                    queue.put(running.popleft().result())
            queue.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            queue.put(exc)

    bar = _bar(opened.source, progress)
    thread = threading.Thread(target=produce, name="es-analytics-ingest-reader", daemon=True)
    thread.start()
    read = held = 0
    gathered: list[pa.Table] = []
    try:
        while (item := queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            step, rows, valid, rejects = item
            read += rows
            for line, reason, record in rejects:
                log.add(opened.source.label, line, reason, record)
            gathered.append(valid)
            held += valid.num_rows
            if held >= batch_size:
                writer.write(pa.concat_tables(gathered, promote_options="permissive"), file_no)
                gathered, held = [], 0
            if bar is not None:
                bar.update(step)
        if gathered:
            writer.write(pa.concat_tables(gathered, promote_options="permissive"), file_no)
    finally:
        stop.set()
        while thread.is_alive():
            if not queue.empty():
                queue.get_nowait()
            thread.join(0.05)
        for item in validators:
            item.close()
        if bar is not None:
            bar.close()
    return read


def _bar(source: src.Source, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    unit_scale = source.unit == "B"
    return tqdm(total=source.total, unit=source.unit, unit_scale=unit_scale, desc=f"ingest {Path(source.label).name}",
                leave=False)
