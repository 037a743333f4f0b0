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

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.ipc as ipc

__all__ = ["STAGING_PREFIX", "StagedImport"]

STAGING_PREFIX = ".staging-"
_STALE_SECONDS = 86_400.0


class StagedImport:
    """Chunks of rows to import: the event columns (no position, no recorded_at), ``_seq`` (the row's rank
    in commit order over the whole import, from 0) and any other columns the caller keeps for itself.

    ``snapshot`` is the lake's (manifest generation, last position) from before the caller read any
    stream head: if the lake still has them at the commit, no stream moved meanwhile.
    """

    def __init__(self, folder: Path, snapshot: tuple[int, int]) -> None:
        _remove_stale(folder)
        self.folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
        self.snapshot = snapshot
        self.paths: list[Path] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        """Keep one chunk (sorted by aggregate_id and aggregate_version, as ingest hands them over)."""
        if not table.num_rows:
            return
        path = self.folder / f"chunk-{len(self.paths):06d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=64_000)
        self.paths.append(path)
        self.rows += table.num_rows

    def dataset(self) -> ds.Dataset:
        return ds.dataset([str(p) for p in self.paths], format="ipc")

    def chunks(self) -> Iterator[pa.Table]:
        """The chunks in the order they were added."""
        for path in self.paths:
            with pa.memory_map(str(path)) as source:
                yield ipc.open_file(source).read_all()

    def lookup(self, event_ids: Sequence[str]) -> pa.Table:
        """``event_id, aggregate_id, aggregate_version`` of the staged rows with these ids."""
        wanted = pa.array(list(event_ids), pa.string())
        columns = ["event_id", "aggregate_id", "aggregate_version"]
        if not self.paths or not len(wanted):
            return pa.table({"event_id": pa.array([], pa.string()), "aggregate_id": pa.array([], pa.string()),
                             "aggregate_version": pa.array([], pa.int64())})
        return self.dataset().to_table(columns=columns, filter=ds.field("event_id").isin(wanted))

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _remove_stale(folder: Path) -> None:
    """Remove staging folders left by a crash (older than a day: no import runs that long)."""
    cutoff = time.time() - _STALE_SECONDS
    for path in folder.glob(STAGING_PREFIX + "*"):
        try:
            if path.is_dir() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
