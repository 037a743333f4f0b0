"""The DuckDB side of the lake: one connection whose view ``events`` is a consistent snapshot.

The snapshot is the manifest's explicit file list (never a glob) plus the hot rows above the manifest's
``sealed_position``. Engine errors (DuckDB, SQLite, pyarrow) are translated into es_analytics errors here,
in :func:`translate_errors`, and nowhere above ``store/``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

from ..errors import LakeBusyError, LakeCorruptError, LakeError, QueryError, ReadOnlyQueryError
from ..events import EVENT_SCHEMA
from .hot import hot_rows_to_arrow
from .sql_gate import check_user_sql

__all__ = ["DuckReader", "hot_rows_to_arrow", "translate_errors"]

def translated_error(what: str, exc: BaseException) -> Exception | None:
    """The es_analytics error for a DuckDB, SQLite, pyarrow or OS error (``None`` for any other)."""
    if isinstance(exc, duckdb.PermissionException):
        return ReadOnlyQueryError(f"{what}: the query reads files outside the lake, which safe mode forbids ({exc})")
    if isinstance(exc, duckdb.IOException):
        return LakeError(f"{what}: cannot read a lake file: {exc}")
    if isinstance(exc, duckdb.InvalidInputException) and ("magic bytes" in str(exc) or "Parquet" in str(exc)):
        return LakeCorruptError(f"{what}: a sealed file is damaged ({exc}); run lake.check()")
    if isinstance(exc, (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException,
                        duckdb.InvalidInputException, duckdb.ConversionException)):
        return QueryError(f"{what}: {exc}")
    if isinstance(exc, duckdb.Error):
        return QueryError(f"{what} failed in DuckDB: {exc}")
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
        return LakeBusyError(f"{what}: the hot tier is locked by another process ({exc})")
    if isinstance(exc, sqlite3.DatabaseError):
        return LakeError(f"{what}: hot tier error: {exc}")
    if isinstance(exc, (pa.ArrowInvalid, pa.ArrowIOError, OSError)):
        return LakeError(f"{what}: cannot read a lake file: {exc}")
    return None


# What ``translated_error`` turns into es_analytics errors (callers that cannot afford a context manager
# catch these themselves).
TRANSLATED = (duckdb.Error, sqlite3.DatabaseError, pa.ArrowInvalid, OSError)


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn DuckDB, SQLite and pyarrow errors into es_analytics errors, keeping the cause."""
    try:
        yield
    except TRANSLATED as exc:
        error = translated_error(what, exc)
        if error is None:
            raise
        raise error from exc


class DuckReader:
    """Owns the DuckDB connection and keeps the ``events`` view on the newest consistent snapshot."""

    def __init__(self, folder: Path, *, safe: bool, memory_limit: str | None = None) -> None:
        self.folder = folder
        self.safe = safe
        self.lock = threading.RLock()
        self.con = duckdb.connect()
        if memory_limit:
            self.con.execute("SET memory_limit = ?", [memory_limit])
        self.con.execute("SET parquet_metadata_cache = true")
        self.con.execute("SET enable_progress_bar = false")  # notebooks show their own progress
        # Every time inside the package is UTC, whatever the machine's zone (and results say "UTC").
        self.con.execute("SET TimeZone = 'UTC'")
        if safe:
            # No file system access at all for queries; the sealed files are scanned as an Arrow dataset.
            self.con.execute("SET python_enable_replacements = false")
            self.con.execute("SET enable_external_access = false")
            self.con.execute("SET lock_configuration = true")
        self.snapshot_key: tuple[int, int] | None = None
        self.files: tuple[str, ...] = ()
        self.hot = EVENT_SCHEMA.empty_table()
        self.sealed_position = 0
        self._extra_views: dict[str, Any] = {}

    def close(self) -> None:
        self.con.close()

    def install(self, files: tuple[str, ...], sealed_position: int, hot: pa.Table, key: tuple[int, int]) -> None:
        """Point the ``events`` view at a new snapshot (files relative to the lake folder)."""
        with self.lock:
            self.con.register("_hot_events", hot)
            if files != self.files or self.snapshot_key is None:
                paths = [str(self.folder / f) for f in files]
                if not paths:
                    self.con.execute("CREATE OR REPLACE VIEW _sealed_events AS SELECT * FROM _hot_events LIMIT 0")
                elif self.safe:
                    self.con.register("_sealed_dataset", ds.dataset(paths, format="parquet", schema=EVENT_SCHEMA))
                    self.con.execute("CREATE OR REPLACE VIEW _sealed_events AS SELECT * FROM _sealed_dataset")
                else:
                    self.con.read_parquet(paths, hive_partitioning=False).create_view("_sealed_events", replace=True)
                self.con.execute(
                    "CREATE OR REPLACE VIEW events AS "
                    "SELECT * FROM _sealed_events UNION ALL SELECT * FROM _hot_events"
                )
            self.files, self.hot, self.sealed_position, self.snapshot_key = files, hot, sealed_position, key

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None, *, what: str) -> pl.DataFrame:
        """Run one of the package's own read-only statements and return its result as a polars DataFrame."""
        with self.lock, translate_errors(what):
            frame: pl.DataFrame = self.con.sql(sql, params=params).pl()
            return frame

    def user_query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None, *, what: str) -> pl.DataFrame:
        """Run a user's statement: through the gate, then in a transaction that is always rolled back."""
        with self.lock, translate_errors(what):
            check_user_sql(self.con, sql, safe=self.safe)
            return self.rolled_back(sql, params)

    def rolled_back(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        """Run ``sql`` in a transaction that is always rolled back: whatever it changes does not stay."""
        with self.lock:
            self.con.execute("BEGIN TRANSACTION")
            try:
                frame: pl.DataFrame = self.con.sql(sql, params=params).pl()
            finally:
                self.con.execute("ROLLBACK")
            return frame

    def relation(self, sql: str, params: Sequence[Any] | None = None) -> duckdb.DuckDBPyRelation:
        """A lazy relation for the package's own generated SQL (callers hold ``lock``)."""
        return self.con.sql(sql, params=params)
