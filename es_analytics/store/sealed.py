"""The sealed tier: hive-partitioned Parquet (zstd), one folder per aggregate type.

Every file's rows are sorted by (aggregate_id, aggregate_version), so one stream sits in one or two row
groups of a file; the hot tier's ``stream_index`` says which, and point reads open only those row groups
(see docs/decisions.md for why the partitions are not monthly). Files are written under a ``.tmp`` name,
fsynced, and published under their final name without ever replacing an existing file. A file's name
carries the manifest generation it was written for (``part-g<generation>-<first position>-<random>``), so
recovery can tell a file that no manifest ever listed from one a lost or rolled-back manifest forgot.
"""

from __future__ import annotations

import os
import re
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..events import EVENT_SCHEMA
from .manifest import FileEntry, fsync_dir, publish_no_replace

__all__ = ["ROW_GROUP_SIZE", "ParquetSealedTier", "file_generation", "row_group_index"]

ROW_GROUP_SIZE = 2048
EVENTS_DIR = "events"
_NAME = re.compile(r"part-g(\d+)-\d+-[0-9a-f]+\.parquet")


def file_generation(rel_path: str) -> int | None:
    """The manifest generation a sealed file was written for, or None for a name this engine never writes."""
    match = _NAME.fullmatch(Path(rel_path).name)
    return int(match.group(1)) if match else None


def row_group_index(sorted_ids: pa.Array | pa.ChunkedArray, row_group_size: int) -> pl.DataFrame:
    """Distinct (aggregate_id, row_group) pairs of a column sorted by aggregate_id."""
    frame = pl.DataFrame({"aggregate_id": pl.from_arrow(sorted_ids)}).with_columns(
        (pl.int_range(0, pl.len(), dtype=pl.Int64) // row_group_size).alias("row_group"))
    # Sorted ids: a pair is new where the id or the row group changes (no hash table needed).
    new = (pl.col("aggregate_id") != pl.col("aggregate_id").shift(1)) | (
        pl.col("row_group") != pl.col("row_group").shift(1))
    return frame.filter(new.fill_null(True))


class ParquetSealedTier:
    """Writes and reads the Parquet files of one lake folder."""

    def __init__(self, folder: Path, *, cache_size: int = 256) -> None:
        self.folder = folder
        self._files: OrderedDict[str, pq.ParquetFile] = OrderedDict()
        self._cache_size = cache_size

    def partition_dir(self, aggregate_type: str) -> Path:
        # aggregate_type was validated as an identifier in events.py: safe as a folder name.
        return self.folder / EVENTS_DIR / f"aggregate_type={aggregate_type}"

    def write(
        self, table: pa.Table, aggregate_type: str, *, generation: int, level: int = 0, presorted: bool = False
    ) -> tuple[FileEntry, pl.DataFrame]:
        """Write one sorted file for ``aggregate_type``, to be listed first by manifest ``generation``;
        returns its entry and its row-group index.

        ``presorted``: the caller has sorted ``table`` by (aggregate_id, aggregate_version) already.
        """
        table = table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
        if not presorted:  # polars sorts and gathers in about a third of pyarrow's sort_by time
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            table = frame.sort("aggregate_id", "aggregate_version").to_arrow().cast(EVENT_SCHEMA)
        folder = self.partition_dir(aggregate_type)
        folder.mkdir(parents=True, exist_ok=True)
        first = pc.min(table["position"]).as_py()
        name = f"part-g{generation:010d}-{first:012d}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = folder / (name + ".tmp")
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            compression_level=1,
            row_group_size=ROW_GROUP_SIZE,
            use_dictionary=["event_type", "aggregate_type"],  # see docs/decisions.md
            write_statistics=True,
        )
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        final = folder / name
        publish_no_replace(tmp, final)
        entry = FileEntry(
            path=str(final.relative_to(self.folder)),
            aggregate_type=aggregate_type,
            rows=table.num_rows,
            bytes=final.stat().st_size,
            min_position=first,
            max_position=pc.max(table["position"]).as_py(),
            level=level,
        )
        return entry, row_group_index(table["aggregate_id"], ROW_GROUP_SIZE)

    def parquet_file(self, rel_path: str) -> pq.ParquetFile:
        """An open ParquetFile with its footer parsed, from a small LRU cache."""
        handle = self._files.get(rel_path)
        if handle is None:
            # pre_buffer off: one row group at a time reads ~10% faster without the coalescing buffer
            handle = pq.ParquetFile(self.folder / rel_path, pre_buffer=False)
            self._files[rel_path] = handle
            if len(self._files) > self._cache_size:
                _, old = self._files.popitem(last=False)
                old.close()
        else:
            self._files.move_to_end(rel_path)
        return handle

    def forget_file(self, rel_path: str) -> None:
        handle = self._files.pop(rel_path, None)
        if handle is not None:
            handle.close()

    def read_stream(self, locations: Sequence[tuple[str, int]], aggregate_id: str) -> pa.Table:
        """The sealed rows of one stream, from the row groups the stream index names."""
        parts = []
        by_file: dict[str, list[int]] = {}
        for path, row_group in locations:
            by_file.setdefault(path, []).append(row_group)
        for path, groups in by_file.items():
            table = self.parquet_file(path).read_row_groups(groups, use_threads=False)
            parts.append(table.filter(pc.equal(table["aggregate_id"], aggregate_id)))
        if not parts:
            return EVENT_SCHEMA.empty_table()
        return pa.concat_tables(parts)

    def read_positions(self, entries: Sequence[FileEntry], positions: Sequence[int]) -> pa.Table:
        """Rows at the given positions (a rare path: idempotency checks against sealed events)."""
        wanted = pa.array(sorted(set(positions)), pa.int64())
        low, high = wanted[0].as_py(), wanted[-1].as_py()
        parts = []
        for entry in entries:
            if entry.max_position < low or entry.min_position > high:
                continue
            table = pq.read_table(self.folder / entry.path, filters=[("position", "in", wanted.to_pylist())])
            if table.num_rows:
                parts.append(table)
        return pa.concat_tables(parts) if parts else EVENT_SCHEMA.empty_table()

    def remove(self, rel_path: str) -> None:
        self.forget_file(rel_path)
        path = self.folder / rel_path
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    def owned_parquet(self) -> list[str]:
        """Every ``.parquet`` file under the events folder, relative to the lake."""
        root = self.folder / EVENTS_DIR
        if not root.exists():
            return []
        return sorted(str(p.relative_to(self.folder)) for p in root.rglob("*.parquet"))

    def temporary_files(self) -> list[Path]:
        root = self.folder / EVENTS_DIR
        return sorted(root.rglob("*.tmp")) if root.exists() else []
