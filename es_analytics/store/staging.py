"""Rows of one large bulk import, kept on disk until they are committed at once (``LakeStore.import_staged``).

A large ingest would otherwise import batch after batch, each as one more file per type, and the lake's
compaction would then rewrite all of them; each batch would also update the hot tier's indexes on random
keys. Staged, the rows are written once, sorted, into files of compaction size, and the indexes are built
in one pass in key order (see docs/decisions.md).

The rows wait in Arrow IPC files (uncompressed, read back memory-mapped) in a hidden folder of the lake,
removed when the import is committed or abandoned. Nothing is published before the commit: the manifest
is the commit point, as for every import, and a crash leaves only this folder, which the next staged
import of any handle removes once it is older than a day.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.ipc as ipc

from .hot import EVENT_ID_HASH_SQL

__all__ = ["BUCKET_BYTES", "STAGING_PREFIX", "StagedImport", "read_ipc"]

STAGING_PREFIX = ".staging-"
BUCKET_BYTES = 128 << 20  # of input per bucket (a JSON Lines event is ~300-500 bytes)
_MAX_BUCKETS = 256
_STALE_SECONDS = 86_400.0


class StagedImport:
    """Chunks of rows to import: the event columns (no position, no recorded_at), ``_seq`` (the row's rank
    in commit order over the whole import, from 0) and any other columns the caller keeps for itself; the
    stage adds ``_h``, the event id's hash for the sealed-id index.

    Rows are kept in buckets of aggregate_id ranges (bounds taken from the first chunk, about one bucket
    per ``BUCKET_BYTES`` of expected input), so that the commit sorts one bucket at a time and the
    buckets, in order, give each type's rows sorted by aggregate_id with bounded memory.

    ``snapshot`` is the lake's (manifest generation, last position) from before the caller read any
    stream head: if the lake still has them at the commit, no stream moved meanwhile.
    """

    def __init__(self, folder: Path, snapshot: tuple[int, int], *, expected_bytes: int = 0) -> None:
        _remove_stale(folder)
        self.folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
        self.snapshot = snapshot
        self.buckets = max(1, min(_MAX_BUCKETS, expected_bytes // BUCKET_BYTES))
        self.bounds: pl.Series | None = None  # the aggregate_id where bucket i + 1 begins
        self.files: list[tuple[int, int, Path]] = []  # (chunk, bucket, path)
        self.bucket_rows: list[int] = []
        self.chunk_count = 0
        self.rows = 0
        self._con = duckdb.connect(config={"threads": 1})

    @property
    def paths(self) -> list[Path]:
        return [path for _, _, path in self.files]

    def add(self, table: pa.Table) -> None:
        """Keep one chunk of rows."""
        if not table.num_rows:
            return
        ids = pl.from_arrow(table["aggregate_id"])
        # The event-id hashes for the sealed-id index, computed now (the commit then only sorts them).
        events = table.select(["event_id"])
        hashed = self._con.sql(f"SELECT {EVENT_ID_HASH_SQL} AS h FROM events").to_arrow_table()["h"]
        table = table.append_column("_h", hashed)
        assert isinstance(ids, pl.Series)
        if not ids.is_sorted():
            order = pl.arg_sort_by(ids, maintain_order=True)
            indices = pl.select(order).to_series()
            table = table.take(indices.to_arrow())
            ids = ids.gather(indices)
        if self.bounds is None:
            distinct = ids.unique(maintain_order=True)
            step = len(distinct) / self.buckets
            self.bounds = distinct.gather([int(step * i) for i in range(1, self.buckets)]).unique(maintain_order=True)
            self.bucket_rows = [0] * (len(self.bounds) + 1)
        cuts = [0, *ids.search_sorted(self.bounds, side="left").to_list(), table.num_rows]
        for bucket, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
            if hi <= lo:
                continue
            path = self.folder / f"chunk-{self.chunk_count:06d}-{bucket:04d}.arrow"
            part = table.slice(lo, hi - lo)
            with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, part.schema) as writer:
                writer.write_table(part, max_chunksize=64_000)
            self.files.append((self.chunk_count, bucket, path))
            self.bucket_rows[bucket] += part.num_rows
        self.chunk_count += 1
        self.rows += table.num_rows

    def dataset(self) -> ds.Dataset:
        return ds.dataset([str(p) for p in self.paths], format="ipc")

    def bucket_paths(self) -> list[list[Path]]:
        """The files of each bucket (in aggregate_id order), each bucket's in chunk order."""
        out: list[list[Path]] = [[] for _ in self.bucket_rows]
        for _, bucket, path in self.files:
            out[bucket].append(path)
        return out

    def chunks(self) -> Iterator[pa.Table]:
        """The chunks in the order they were added (each sorted by aggregate_id)."""
        for chunk in range(self.chunk_count):
            parts = [_read(path) for c, _, path in self.files if c == chunk]
            if parts:
                yield pa.concat_tables(parts)

    def lookup(self, event_ids: Sequence[str]) -> pa.Table:
        """``event_id, aggregate_id, aggregate_version`` of the staged rows with these ids."""
        wanted = pa.array(list(event_ids), pa.string())
        columns = ["event_id", "aggregate_id", "aggregate_version"]
        if not self.files or not len(wanted):
            return pa.table({"event_id": pa.array([], pa.string()), "aggregate_id": pa.array([], pa.string()),
                             "aggregate_version": pa.array([], pa.int64())})
        return self.dataset().to_table(columns=columns, filter=ds.field("event_id").isin(wanted))

    def close(self) -> None:
        self._con.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def read_ipc(paths: Sequence[Path]) -> pa.Table:
    """Staged files as one table (memory-mapped: pages are read as they are used)."""
    return pa.concat_tables([_read(p) for p in paths])


def _read(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return ipc.open_file(source).read_all()


def _remove_stale(folder: Path) -> None:
    """Remove staging folders left by a crash (older than a day: no import runs that long)."""
    cutoff = time.time() - _STALE_SECONDS
    for path in folder.glob(STAGING_PREFIX + "*"):
        try:
            if path.is_dir() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
