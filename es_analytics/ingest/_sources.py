"""Readers of event sources: each yields raw batches with a source row number per row.

A reader never validates events; it only turns its source into Arrow columns named after the event record
(``event_id``, ``occurred_at`` …, all optional but the required ones) plus ``_line`` (the line of a text file,
or the 1-based row of a table in read order) and ``_record`` (the raw row, for the reject report). Memory stays
bounded by one batch: files are read block by block, SQL tables through cursors.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ..errors import InvalidArgumentError
from ..events import check_identifier

__all__ = [
    "ALIASES",
    "FIELDS",
    "RawBatch",
    "SEED_COLUMNS",
    "Source",
    "open_source",
]

Format = Literal["jsonl", "csv", "parquet", "sql", "eventsourcing"]

#: The event-record fields a source can provide, with the names looked for when no mapping is given.
ALIASES: dict[str, tuple[str, ...]] = {
    "event_id": ("event_id", "id", "eventId"),
    "event_type": ("event_type", "type", "eventType"),
    "schema_version": ("schema_version", "event_version", "schemaVersion"),
    "aggregate_type": ("aggregate_type", "aggregateType"),
    "aggregate_id": ("aggregate_id", "aggregateId"),
    "aggregate_version": ("aggregate_version", "version", "aggregateVersion"),
    "occurred_at": ("occurred_at", "timestamp", "occurredAt"),
    "data": ("data", "event_data", "payload"),
    "metadata": ("metadata", "meta"),
}
FIELDS: tuple[str, ...] = tuple(ALIASES)
OPTIONAL = frozenset({"schema_version", "metadata"})

#: The seed's ``events`` table: what ``format="sql"`` reads when no mapping is given.
SEED_COLUMNS: dict[str, str] = {
    "event_id": "id",
    "aggregate_id": "aggregate_id",
    "aggregate_type": "aggregate_type",
    "event_type": "event_type",
    "data": "event_data",
    "metadata": "metadata",
    "aggregate_version": "version",
    "occurred_at": "timestamp",
}
_TEXT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
                  ".pq": "parquet", ".db": "sql", ".sqlite": "sql", ".sqlite3": "sql"}


@dataclass
class RawBatch:
    """One batch of raw rows: Arrow columns named after the event record, ``_line`` and ``_record``.

    ``kinds`` says how a column is encoded when it is not plain text: ``"json"`` (JSON text of any value,
    from JSON Lines), ``"nested"`` (a struct/list/map column to turn into JSON), ``"timestamp"`` (a
    timezone-aware timestamp), ``"naive"`` (a timestamp without zone). ``rejects`` are rows the reader
    itself could not read: (line, reason, record).
    """

    table: pa.Table
    kinds: dict[str, str] = field(default_factory=dict)
    rejects: list[tuple[int, str, str]] = field(default_factory=list)
    progress: int = 0


@dataclass
class Source:
    """An opened source: where it is, what it is, and how to iterate it in batches."""

    label: str
    format: Format
    total: int | None
    unit: str
    batches: Iterator[RawBatch]


def redact(url: str) -> str:
    """A connection URL without its password, for reports and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, parts.query, parts.fragment))


def detect_format(source: str) -> Format:
    """Guess the format of ``source`` from its URL scheme or file suffix."""
    if source.startswith(("postgresql://", "postgres://")):
        return "sql"
    if source.startswith("sqlite:///"):
        return "sql"
    suffix = Path(source).suffix.lower()
    if suffix in _TEXT_SUFFIXES:
        return _TEXT_SUFFIXES[suffix]  # type: ignore[return-value]
    raise InvalidArgumentError(
        f"cannot tell the format of {source!r} from its name; pass format= one of "
        "'jsonl', 'csv', 'parquet', 'sql', 'eventsourcing'"
    )


def resolve_columns(available: Sequence[str], mapping: Mapping[str, str], where: str) -> dict[str, str]:
    """Pick the source column of each event-record field: the mapping first, then the usual names."""
    unknown = sorted(set(mapping) - set(FIELDS))
    if unknown:
        raise InvalidArgumentError(f"mapping names unknown fields {unknown}; the fields are {list(FIELDS)}")
    have = set(available)
    chosen: dict[str, str] = {}
    for name in FIELDS:
        if name in mapping:
            if mapping[name] not in have:
                raise InvalidArgumentError(
                    f"mapping {name}={mapping[name]!r}: {where} has no column {mapping[name]!r}; "
                    f"it has {sorted(have)}"
                )
            chosen[name] = mapping[name]
            continue
        found = next((alias for alias in ALIASES[name] if alias in have), None)
        if found is not None:
            chosen[name] = found
        elif name not in OPTIONAL:
            raise InvalidArgumentError(
                f"{where} has no column for {name} (looked for {list(ALIASES[name])}); "
                f"map one with {name}=<column>; it has {sorted(have)}"
            )
    return chosen


# -- JSON Lines ---------------------------------------------------------------------------------
_SPARE_BUFFERS = 3  # JSON Lines blocks kept for reuse (the validators hold at most a few at a time)
_NEWLINE_SCAN = 1 << 20  # bytes compared at a time: the temporary mask stays small and its memory is reused


def _line_ends(raw: np.ndarray) -> np.ndarray:
    """Offsets of the newlines in ``raw`` (uint8), found a slice at a time: one mask of the whole 64 MB block
    is a fresh allocation whose pages the kernel zeroes for every block (39 ms against 17 ms here). The
    caller passes them on to ``_split_lines``, so each block is scanned once (it was scanned twice)."""
    parts = [np.flatnonzero(raw[start:start + _NEWLINE_SCAN] == 10) + start
             for start in range(0, len(raw), _NEWLINE_SCAN)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _split_lines(block: bytes | memoryview, first_line: int, ends: np.ndarray | None = None) -> pa.Table:
    """Split a block of whole lines into an Arrow string column without a Python object per line (the
    column shares the block's memory). ``ends``: the newline offsets in ``block``, if known."""
    raw = np.frombuffer(block, dtype=np.uint8)
    if ends is None:
        ends = _line_ends(raw)
    if not len(ends) or ends[-1] != len(raw) - 1:
        ends = np.append(ends, len(raw))
    offsets = np.empty(len(ends) + 1, dtype=np.int32)
    offsets[0] = 0
    offsets[1:] = ends + 1
    offsets[-1] = min(offsets[-1], len(raw))
    lines = pa.StringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(block))
    numbers = pa.array(np.arange(first_line, first_line + len(ends), dtype=np.int64))
    return pa.table({"_line": numbers, "_record": lines})


def _valid_utf8(table: pa.Table) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """Drop lines that are not UTF-8 (reporting them); the rest pass untouched."""
    try:
        table["_record"].validate(full=True)
        return table, []
    except pa.ArrowInvalid:
        pass
    keep, rejects = [], []
    for line, raw in zip(table["_line"].to_pylist(), table["_record"].cast(pa.binary()).to_pylist()):
        try:
            raw.decode("utf-8")
            keep.append(True)
        except UnicodeDecodeError as exc:
            keep.append(False)
            rejects.append((line, f"line is not UTF-8 text (byte {exc.start})", raw[:200].decode("utf-8", "replace")))
    mask = pa.array(keep)
    binary = table.filter(mask)
    return pa.table({"_line": binary["_line"], "_record": binary["_record"].cast(pa.binary()).cast(pa.string())}), rejects


def read_jsonl(path: Path, mapping: Mapping[str, str], block_bytes: int) -> tuple[dict[str, str], Iterator[RawBatch]]:
    """JSON Lines in blocks of whole lines; fields are picked from the first object."""
    columns = resolve_columns(_first_keys(path), mapping, f"the first object of {path.name}")

    def batches() -> Iterator[RawBatch]:
        # Blocks are validated on other threads while the next is read, so each block gets its own buffer;
        # a buffer nothing refers to any more (no Arrow column or view of it is alive) is used again.
        # A new 64 MB bytearray costs 16k page faults, each a page the kernel zeroes: over 10M lines
        # that was a fifth of the ingest's page faults.
        spare: list[bytearray] = []

        def take(size: int) -> bytearray:
            for i in range(len(spare)):
                # referred to only by ``spare`` and getrefcount's argument: no view of it is alive
                if len(spare[i]) == size and sys.getrefcount(spare[i]) == 2:
                    return spare.pop(i)
            return bytearray(size)

        buffer = bytearray(block_bytes)
        line, filled = 1, 0
        with open(path, "rb") as handle:
            while True:
                if filled == len(buffer):  # a line longer than the block: a buffer twice the size
                    grown = bytearray(2 * len(buffer))
                    grown[:filled] = buffer
                    buffer = grown
                got = handle.readinto(memoryview(buffer)[filled:])
                if not got:
                    break
                filled += got
                ends = _line_ends(np.frombuffer(buffer, dtype=np.uint8, count=filled))
                if not len(ends):
                    continue
                cut = int(ends[-1])
                table = _split_lines(memoryview(buffer)[: cut + 1], line, ends)
                line += table.num_rows
                table, rejects = _valid_utf8(table)
                yield RawBatch(table, {}, rejects, cut + 1)
                del table
                rest = filled - cut - 1
                fresh = take(len(buffer))
                fresh[:rest] = buffer[cut + 1:filled]
                spare.append(buffer)
                del spare[:-_SPARE_BUFFERS]
                buffer, filled = fresh, rest
            if filled:
                table, rejects = _valid_utf8(_split_lines(bytes(buffer[:filled]), line))
                yield RawBatch(table, {}, rejects, filled)

    return columns, batches()


def _first_keys(path: Path) -> list[str]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                try:
                    value = json.loads(raw)
                except ValueError as exc:
                    raise InvalidArgumentError(f"{path.name} line {number} is not JSON ({exc}); is it JSON Lines?") from None
                if not isinstance(value, dict):
                    raise InvalidArgumentError(f"{path.name} line {number} is not a JSON object")
                return list(value)
    return []


# -- CSV and Parquet ----------------------------------------------------------------------------
def read_csv(path: Path, mapping: Mapping[str, str], block_bytes: int) -> tuple[dict[str, str], Iterator[RawBatch]]:
    """CSV with a header row, every column read as text, in blocks."""
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        import csv

        header = next(csv.reader(handle), [])
    columns = resolve_columns(header, mapping, path.name)
    invalid: list[tuple[int, str, str]] = []
    blank: list[int] = []

    def on_invalid(row: Any) -> str:
        number = int(row.number) if row.number is not None else -1
        if not str(row.text).strip():
            blank.append(number)
            return "skip"
        invalid.append((number, f"CSV row has {row.actual_columns} fields, the header has {row.expected_columns}",
                        str(row.text)[:500]))
        return "skip"

    def batches() -> Iterator[RawBatch]:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=block_bytes, use_threads=False),
            parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        row = 1  # the header line
        for batch in reader:
            table = pa.Table.from_batches([batch])
            rejects = invalid[:]
            skipped_lines = [r[0] for r in rejects] + blank
            invalid.clear()
            blank.clear()
            # Line numbers: data rows start at 2 (after the header); skipped lines are accounted for.
            skipped = len(skipped_lines)
            numbers = _csv_numbers(row, table.num_rows, skipped_lines)
            row = max([row, *skipped_lines, *(numbers[-1:].tolist())])
            out = _rename(table, columns).append_column("_line", pa.array(numbers, pa.int64()))
            yield RawBatch(out, {}, rejects, table.num_rows + skipped)

    return columns, batches()


def _csv_numbers(last: int, count: int, skipped: Sequence[int]) -> np.ndarray:
    """Line numbers of a batch's rows, given the previous row's line and the skipped lines in between."""
    numbers = np.arange(last + 1, last + 1 + count + len(skipped), dtype=np.int64)
    if skipped:
        numbers = numbers[~np.isin(numbers, np.array(skipped, dtype=np.int64))][:count]
    return numbers[:count]


def _rename(table: pa.Table, columns: Mapping[str, str]) -> pa.Table:
    return pa.table({name: table[source] for name, source in columns.items()})


def read_parquet(
    path: Path, mapping: Mapping[str, str], batch_rows: int
) -> tuple[dict[str, str], dict[str, str], int, Iterator[RawBatch]]:
    """Parquet in row batches; nested payload columns and timestamps keep their types."""
    handle = pq.ParquetFile(path)
    schema = handle.schema_arrow
    columns = resolve_columns(schema.names, mapping, path.name)
    kinds = {}
    for name, source in columns.items():
        kind = _arrow_kind(schema.field(source).type)
        if kind:
            kinds[name] = kind

    def batches() -> Iterator[RawBatch]:
        row = 0
        for batch in handle.iter_batches(batch_size=batch_rows, columns=sorted(set(columns.values()))):
            table = _rename(pa.Table.from_batches([batch]), columns)
            numbers = pa.array(np.arange(row + 1, row + 1 + table.num_rows, dtype=np.int64))
            row += table.num_rows
            yield RawBatch(table.append_column("_line", numbers), kinds, [], table.num_rows)

    return columns, kinds, handle.metadata.num_rows, batches()


def _arrow_kind(kind: pa.DataType) -> str:
    if pa.types.is_timestamp(kind):
        return "timestamp" if kind.tz else "naive"
    if pa.types.is_struct(kind) or pa.types.is_map(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return "nested"
    return ""


# -- SQL tables ---------------------------------------------------------------------------------
def sqlite_path(source: str) -> Path:
    path = Path(source[len("sqlite:///"):] if source.startswith("sqlite:///") else source)
    if not path.is_file():
        raise InvalidArgumentError(f"no SQLite database at {str(path)!r}")
    return path


def connect_sqlite(source: str) -> sqlite3.Connection:
    path = sqlite_path(source)
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise InvalidArgumentError(f"{str(path)!r} is not a readable SQLite database: {exc}") from None
    return con


def connect_postgres(url: str) -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the postgres extra is part of [dev]
        raise InvalidArgumentError("PostgreSQL needs psycopg: pip install 'es_analytics[postgres]'") from None
    try:
        return psycopg.connect(url, autocommit=False)
    except psycopg.Error as exc:
        raise InvalidArgumentError(f"cannot connect to {redact(url)}: {str(exc).strip()}") from None


def has_table(con: Any, table: str, postgres: bool) -> bool:
    if postgres:
        row = con.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        con.rollback()
        return bool(row[0])
    return con.execute("SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", (table,)).fetchone() is not None


def table_columns(con: Any, table: str, postgres: bool) -> list[str]:
    """Column names of ``table`` (an identifier, possibly schema-qualified in PostgreSQL)."""
    if postgres:
        # The table the search path resolves the name to (to_regclass), not every schema's table of that name.
        rows = con.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum", (table,)
        ).fetchall()
        con.rollback()
    else:
        rows = con.execute("SELECT name FROM pragma_table_info(?)", (table,)).fetchall()
    if not rows:
        raise InvalidArgumentError(f"the database has no table {table!r}")
    return [r[0] for r in rows]


def check_table_name(table: str, postgres: bool) -> str:
    parts = table.split(".")
    if len(parts) > (2 if postgres else 1):
        raise InvalidArgumentError(f"table must be a name{' or schema.name' if postgres else ''}, got {table!r}")
    for part in parts:
        check_identifier(part, "table")
    return table


def quote_ident(name: str) -> str:
    """Quote a validated identifier (or schema.name) for SQL; callers validate with check_identifier first."""
    return ".".join(f'"{part}"' for part in name.split("."))


def read_sql_rows(
    con: Any, query: str, params: Sequence[Any], batch_rows: int, postgres: bool
) -> Iterator[list[tuple[Any, ...]]]:
    """Stream a query's rows in lists of ``batch_rows`` (a server-side cursor in PostgreSQL)."""
    if postgres:
        with con.transaction():
            with con.cursor(name="es_analytics_ingest") as cursor:
                cursor.itersize = batch_rows
                cursor.execute(query, params)
                while rows := cursor.fetchmany(batch_rows):
                    yield rows
    else:
        cursor = con.execute(query, params)
        while rows := cursor.fetchmany(batch_rows):
            yield rows


def rows_to_batch(rows: list[tuple[Any, ...]], names: Sequence[str], first_row: int) -> RawBatch:
    """SQL rows (already cast to text by the query) as a raw batch."""
    columns = list(zip(*rows)) if rows else [()] * len(names)
    table = pa.table({name: pa.array([_text(v) for v in col], pa.string()) for name, col in zip(names, columns)})
    numbers = pa.array(np.arange(first_row, first_row + len(rows), dtype=np.int64))
    return RawBatch(table.append_column("_line", numbers), {}, [], len(rows))


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def file_size(path: Path) -> int:
    return os.stat(path).st_size
