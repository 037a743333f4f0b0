"""Coordinates the tiers: opening and recovery, sealing, bulk imports, compaction and snapshots.

Crash safety rests on one order of steps. Sealing reads committed hot rows, writes Parquet under
temporary names, fsyncs and publishes them, atomically replaces the manifest, and only then, in one SQLite
transaction, indexes the new files and deletes the sealed hot rows. Whoever takes the seal lock next
first applies a manifest that SQLite has not caught up with (finish), so no stream head is lost when a
process dies between the two. Recovery on open deletes temporary files and files written for a
generation no manifest reached (undo), and refuses a lake whose manifest is missing or older than what
was applied, never deleting a committed file. Readers never see a mix: the view is the manifest's files
plus hot rows above its position.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .._time import now_utc, to_micros
from ..errors import EsAnalyticsError, InvalidArgumentError, LakeBusyError, LakeCorruptError, LakeError, NotALakeError
from ..events import EVENT_SCHEMA
from .hot import EVENT_ID_HASH_SQL, Durability, SQLiteHotTier, StoredMatch
from .locks import exclusive
from .pins import ReaderPins
from .manifest import FileEntry, Manifest, manifest_exists, read_manifest, write_manifest
from .reader import DuckReader, hot_rows_to_arrow, translate_errors
from .sealed import ParquetSealedTier, file_generation, row_group_index
from .staging import StagedImport, read_ipc

__all__ = ["MARKER", "SEAL_HOOKS", "LakeStore", "SealHook"]

logger = logging.getLogger(__name__)
# Called as hook(lake_folder, new_file_paths) after seals, imports and compactions publish files.
SealHook = Callable[[Path, Sequence[str]], None]
SEAL_HOOKS: list[SealHook] = []

MARKER = "lake.json"
HOT_NAME = "hot.sqlite"
LOCK_NAME = "seal.lock"
LAKE_FORMAT = "es_analytics-lake"
COMPACT_TARGET_ROWS = 1_000_000
_JSON_CHUNK = 500_000  # rows per JSON document sent to SQLite
_FILE_ORDER = ("aggregate_type", "aggregate_id", "aggregate_version")
# The first stream (id, imported type, first imported version, stored type, stored version) of a JSON
# document of {a: id, t: type, v: first imported version} whose versions would not continue the stream.
_CONTINUITY_SQL = (
    "SELECT a, t, st, v, coalesce(sv, 0) FROM ("
    "SELECT i.value ->> 'a' AS a, i.value ->> 't' AS t, i.value ->> 'v' AS v, "
    "coalesce((SELECT aggregate_type FROM events WHERE aggregate_id = i.value ->> 'a' LIMIT 1), s.aggregate_type) AS st, "
    "coalesce((SELECT max(aggregate_version) FROM events WHERE aggregate_id = i.value ->> 'a'), s.version) AS sv "
    "FROM json_each(?) AS i LEFT JOIN streams AS s ON s.aggregate_id = i.value ->> 'a') "
    "WHERE v != coalesce(sv, 0) + 1 OR t != coalesce(st, t) LIMIT 1"
)
# The manifest's ``extra`` key listing the level-1 files of the last staged import (their events are new).
INGESTED_KEY = "ingested_files"


class LakeStore:
    """The storage engine behind ``Lake``: one per open lake handle."""

    def __init__(
        self,
        folder: Path,
        *,
        durability: Durability = "full",
        safe_sql: bool = False,
        auto_seal_rows: int = 50_000,
        seal_in_background: bool = False,
        compact_after_files: int = 8,
        retire_grace_seconds: float = 5.0,
        busy_timeout: float = 30.0,
    ) -> None:
        self.folder = folder
        self.durability = durability
        self.auto_seal_rows = auto_seal_rows
        self.seal_in_background = seal_in_background
        self._sealer: threading.Thread | None = None
        self._sealer_store: LakeStore | None = None
        self.seal_error: BaseException | None = None  # what the last background seal raised, if it failed
        self.compact_after_files = compact_after_files
        self.retire_grace_seconds = retire_grace_seconds
        self.busy_timeout = busy_timeout
        self._prepare_folder()
        self.hot = SQLiteHotTier(folder / HOT_NAME, durability=durability, busy_timeout=busy_timeout)
        # The rows this handle appended are kept until a seal takes them, so it need not read them back;
        # a background sealer (below) takes them from the handle that started it.
        self.hot.cache_limit = 2 * auto_seal_rows
        self.row_cache = self.hot
        self.sealed = ParquetSealedTier(folder)
        self.reader = DuckReader(folder, safe=safe_sql)
        self.pins = ReaderPins(folder)  # the generation this handle's view reads, held against deletion
        self._manifest_key: tuple[int, int, int] | None = None
        self._fresh_files: list[str] = []
        self._manifest = Manifest()
        # Set by the privacy layer: encrypts declared personal fields of bulk-imported events.
        self.encrypt_table: Callable[[pa.Table], pa.Table] | None = None
        # Set by the lake: extends the integrity chain over the events a seal or an import just sealed
        # (es_analytics.integrity.extend); runs after the locks are released, see extend_integrity_chain.
        self.extend_chain: Callable[[LakeStore], dict[str, Any]] | None = None
        # Set by import_table around its _apply: index facts of the files it just wrote, by path.
        self._import_facts: dict[str, _FileFacts] = {}
        self.recover()

    # -- folder -------------------------------------------------------------------------------
    def _prepare_folder(self) -> None:
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise NotALakeError(f"{str(folder)!r} is a file, not a lake folder")
        marker = folder / MARKER
        if folder.exists() and any(folder.iterdir()) and not marker.exists():
            raise NotALakeError(
                f"{str(folder)!r} holds files but no {MARKER}: it is not an event lake; "
                "pass an empty or missing folder to create one"
            )
        if marker.exists():
            try:
                body = json.loads(marker.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise NotALakeError(f"{str(marker)!r} is not a lake marker: {exc}") from exc
            if body.get("format") != LAKE_FORMAT:
                raise NotALakeError(f"{str(marker)!r} is not an es_analytics lake marker")
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{MARKER}.tmp"
            tmp.write_text(
                json.dumps({"format": LAKE_FORMAT, "version": 1, "created_at": now_utc().isoformat()}),
                encoding="utf-8",
            )
            os.replace(tmp, marker)
        except OSError as exc:
            raise LakeError(f"cannot create a lake in {str(folder)!r}: {exc}") from exc

    def close(self) -> None:
        self.wait_for_seal()
        if self._sealer_store is not None:
            self._sealer_store.close()
            self._sealer_store = None
        self.reader.close()
        self.pins.release()
        self.hot.close()

    # -- locking ------------------------------------------------------------------------------
    @contextmanager
    def seal_lock(self, *, wait: bool = True, catch_up: bool = True) -> Iterator[bool]:
        """The lake-wide lock for sealing, compaction, imports and recovery (a file lock, so across
        processes). Whoever takes it first finishes a commit that a killed process left half-applied
        (``catch_up``; only recovery, which checks the manifest first, does that itself)."""
        try:
            with exclusive(self.folder / LOCK_NAME, wait=wait, timeout=self.busy_timeout) as locked:
                if locked and catch_up:
                    self._catch_up()
                yield locked
        except TimeoutError:
            raise LakeBusyError(f"another process has been sealing the lake for {self.busy_timeout:.0f} s") from None

    # -- manifest -----------------------------------------------------------------------------
    def manifest(self) -> Manifest:
        """The current manifest, re-read only when the file changed."""
        try:
            st = os.stat(self.folder / "manifest.json")
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = (0, 0, 0)
        if key != self._manifest_key:
            self._manifest = read_manifest(self.folder)
            self._manifest_key = key
        return self._manifest

    def _publish(self, manifest: Manifest) -> None:
        before = {f.path for f in self.manifest().files}
        write_manifest(self.folder, manifest)
        self._manifest_key = None
        self._fresh_files += [f.path for f in manifest.files if f.path not in before]

    def _run_seal_hooks(self) -> None:
        """Give files published since the last call to the registered hooks (after every lock is released).

        A hook builds derived data such as cached rollups; one that fails is logged and never undoes the
        seal, which is already committed.
        """
        fresh, self._fresh_files = self._fresh_files, []
        listed = {f.path for f in self.manifest().files}
        fresh = [p for p in fresh if p in listed]
        for hook in tuple(SEAL_HOOKS) if fresh else ():
            try:
                hook(self.folder, fresh)
            except Exception:  # a derived cache must never break sealing
                logger.exception("seal hook %r failed for %d new files", hook, len(fresh))

    def extend_integrity_chain(self) -> dict[str, Any] | None:
        """Extend the integrity chain over newly sealed events and files (call it outside the seal lock). A
        failure is logged and reported, never raised: the seal or import is committed already, and
        ``verify`` reports what the chain lacks."""
        if self.extend_chain is None:
            return None
        try:
            return self.extend_chain(self)
        except (EsAnalyticsError, OSError) as exc:
            logger.warning("could not extend the integrity checkpoint of %s: %r", self.folder, exc)
            return {"error": str(exc)}

    # -- recovery -----------------------------------------------------------------------------
    def recover(self) -> dict[str, Any]:
        """Finish or undo an interrupted seal, import or compaction.

        Deleted: temporary files, files written for a generation the manifest never reached (their
        events are still in the hot tier, or in the files they were compacted from, or belong to an
        import that was never acknowledged), and files the manifest lists as ``deleting``. Any other
        sealed file the manifest does not list means the manifest was lost, rolled back or edited: the
        lake is refused with ``LakeCorruptError`` and nothing is deleted.
        """
        with self.seal_lock(catch_up=False):
            manifest = self._trusted_manifest()
            listed = {f.path for f in manifest.files} | {p for p, *_ in manifest.retired}
            unpublished, unexplained = [], []
            for rel in self.sealed.owned_parquet():
                if rel in listed:
                    continue
                generation = file_generation(rel)
                if rel in manifest.deleting or (generation is not None and generation > manifest.generation):
                    unpublished.append(rel)
                else:
                    unexplained.append(rel)
            if unexplained:
                raise LakeCorruptError(
                    f"{len(unexplained)} sealed file(s) of {str(self.folder)!r} are not listed in manifest.json "
                    f"(generation {manifest.generation}), e.g. {unexplained[0]!r}: the manifest was lost, rolled "
                    "back or edited. Nothing was deleted; restore manifest.json from a backup."
                )
            removed = [str(p.relative_to(self.folder)) for p in self.sealed.temporary_files()]
            for path in self.sealed.temporary_files():
                path.unlink(missing_ok=True)
            for rel in unpublished:
                self.sealed.remove(rel)
            removed += unpublished
            with self.hot.write():
                applied = self._apply(manifest, {})
        # Retired files are reclaimed by the next seal or compaction, not here: opening a lake to read it
        # changes nothing but what a killed process left half done.
        return {"removed_files": removed, "indexed_files": applied}

    def _trusted_manifest(self) -> Manifest:
        """Under the seal lock: the manifest, unless it is behind what the hot tier has applied (then
        ``LakeCorruptError``). A lake without a manifest gets an empty one if it holds no sealed file."""
        applied = self.hot.meta("manifest_generation")
        known = [row[0] for row in self.hot.con.execute("SELECT path FROM files").fetchall()]
        if not manifest_exists(self.folder):
            if self.sealed.owned_parquet() or known or (applied is not None and int(applied) > 0):
                raise LakeCorruptError(
                    f"{str(self.folder)!r} holds sealed events but no manifest.json: it was lost. Nothing was "
                    "deleted; restore manifest.json from a backup."
                )
            write_manifest(self.folder, Manifest())
            self._manifest_key = None
        manifest = self.manifest()
        if applied is not None and int(applied) > manifest.generation:
            raise LakeCorruptError(
                f"manifest.json of {str(self.folder)!r} is at generation {manifest.generation}, but generation "
                f"{int(applied)} was applied: the manifest was rolled back. Nothing was deleted; restore the "
                "newest manifest.json from a backup."
            )
        accounted = {f.path for f in manifest.files} | {p for p, *_ in manifest.retired} | set(manifest.deleting)
        forgotten = [path for path in known if path not in accounted]
        if forgotten:
            raise LakeCorruptError(
                f"manifest.json of {str(self.folder)!r} does not list {len(forgotten)} sealed file(s) the lake "
                f"holds, e.g. {forgotten[0]!r}: it was edited or replaced. Nothing was deleted."
            )
        return manifest

    def _catch_up(self) -> None:
        """Under the seal lock: apply a manifest that another process published but did not apply (it died
        in between), so that what this handle commits next starts from every stream head."""
        manifest = self.manifest()
        if int(self.hot.meta("manifest_generation", -1)) != manifest.generation:
            with self.hot.write():
                self._apply(manifest, {})

    def _apply(
        self, manifest: Manifest, indexes: dict[str, pl.DataFrame], *, sealed_heads: pl.DataFrame | None = None
    ) -> int:
        """Inside a hot write transaction: bring SQLite up to ``manifest``. Idempotent.

        ``sealed_heads`` (a seal): the new files hold exactly the hot rows up to the manifest's sealed
        position, and these are those rows' stream heads (aggregate_id, aggregate_type, aggregate_version),
        computed by the seal before it took the lock; the event ids are indexed from the hot rows in one
        statement (``index_sealed_ids``). Otherwise (imports, recovery) ids and stream heads come from the
        files, and the heads of any hot rows now sealed are read from those rows. Either way the sealed heads go
        to ``streams`` and the sealed hot rows are deleted, in this one transaction.
        """
        from_hot = sealed_heads is not None
        con = self.hot.con
        applied = int(self.hot.meta("manifest_generation", -1))
        if applied == manifest.generation:
            return 0
        if applied > manifest.generation:
            raise LakeCorruptError(
                f"manifest generation {manifest.generation} is older than the applied generation {applied}")
        previous = int(self.hot.meta("sealed_position", 0))
        if from_hot:
            self.hot.index_sealed_ids(previous, manifest.sealed_position)
        known = dict(con.execute("SELECT path, file_id FROM files").fetchall())
        listed = {f.path for f in manifest.files}
        gone = json.dumps([file_id for path, file_id in known.items() if path not in listed])
        if gone != "[]":  # one pass over stream_index for all of them (file_id is not its leading key)
            con.execute("DELETE FROM stream_index WHERE file_id IN (SELECT value FROM json_each(?))", (gone,))
            con.execute("DELETE FROM files WHERE file_id IN (SELECT value FROM json_each(?))", (gone,))
        new = [f for f in manifest.files if f.path not in known]
        for entry in new:
            file_id = con.execute("INSERT INTO files (path) VALUES (?) RETURNING file_id", (entry.path,)).fetchone()[0]
            index = indexes.get(entry.path)
            if index is None:
                index = self._index_from_file(entry)
            self._insert_stream_index(file_id, index)
        # Files with events new to the lake: level 0 (seals, imports), and the level-1 files that a staged
        # import wrote at once (listed in the manifest); other level-1 files hold rows indexed already.
        ingested = set(manifest.extra.get(INGESTED_KEY, ()))
        fresh = [entry for entry in new if entry.level == 0 or entry.path in ingested]
        if fresh and not from_hot:
            self._index_event_ids(fresh)
            self._sync_streams(fresh)
        self.hot.bump_sequence(manifest.sealed_position)
        if sealed_heads is not None:
            self._upsert_heads(sealed_heads)  # a few ms here against 27 ms for keep_heads' GROUP BY (50k rows)
        else:
            self.hot.keep_heads(previous, manifest.sealed_position)
        self.hot.delete_through(manifest.sealed_position)
        self.hot.set_meta("sealed_position", manifest.sealed_position)
        self.hot.set_meta("last_recorded_at", max(manifest.last_recorded_at, int(self.hot.meta("last_recorded_at", 0))))
        self.hot.set_meta("manifest_generation", manifest.generation)
        return len(new)

    def _index_from_file(self, entry: FileEntry) -> pl.DataFrame:
        handle = pq.ParquetFile(self.folder / entry.path)
        frames = []
        for group in range(handle.num_row_groups):
            ids = handle.read_row_group(group, columns=["aggregate_id"])["aggregate_id"]
            frames.append(pl.DataFrame({"aggregate_id": pl.from_arrow(pc.unique(ids))}).with_columns(
                pl.lit(group, pl.Int64).alias("row_group")))
        return pl.concat(frames) if frames else pl.DataFrame(schema={"aggregate_id": pl.String, "row_group": pl.Int64})

    # The index inserts below send their rows to SQLite as one JSON document per chunk (json_each drives
    # an INSERT ... SELECT) instead of an executemany: SQLite parses the document in C, with no Python
    # object per row (see docs/decisions.md).
    def _insert_stream_index(self, file_id: int, index: pl.DataFrame) -> None:
        """Which row groups of file ``file_id`` hold each stream (``index``: aggregate_id, row_group)."""
        for chunk in index.select(pl.col("aggregate_id").alias("a"), pl.col("row_group").alias("g")).iter_slices(_JSON_CHUNK):
            self.hot.con.execute(
                "INSERT OR IGNORE INTO stream_index (aggregate_id, file_id, row_group) "
                "SELECT value ->> 'a', ?, value ->> 'g' FROM json_each(?)",
                (file_id, chunk.write_json()),
            )

    def _index_event_ids(self, entries: Sequence[FileEntry]) -> None:
        """Add new sealed files' event ids to the compact hash index, in one pass in hash order.

        Hashes of files an import just wrote come from memory; other files are read back and hashed in
        DuckDB (vectorised, not in Python).
        """
        parts = []
        for entry in entries:
            facts = self._import_facts.get(entry.path)
            if facts is not None:
                parts.append(facts.id_hashes)
                continue
            ids = pq.read_table(self.folder / entry.path, columns=["event_id", "position"])
            parts.append(_hash_ids(ids))
        self._insert_id_hashes(pl.concat(parts))

    def rebuild_sealed_ids(self) -> int:
        """Inside a hot write transaction: build the sealed-id index again from every sealed file (a repair
        of ``check``). Returns the number of ids indexed."""
        con = self.hot.con
        con.execute("DELETE FROM event_ids")
        con.execute("DELETE FROM recent_ids")
        self.hot.set_meta("event_ids_rows", 0)
        self.hot.set_meta("recent_ids_rows", 0)
        files = self.manifest().files
        if files:
            self._index_event_ids(files)
        return int(con.execute("SELECT count(*) FROM sealed_ids").fetchone()[0])

    def _index_staged_ids(self, stage: StagedImport, first: int) -> None:
        """Add a staged import's event ids to the hash index (hashed when staged; positions from ``first``)."""
        parts = []
        for path in stage.paths:  # any order: the rows are sorted by hash before they are inserted
            frame = pl.from_arrow(read_ipc([path]).select(["_h", "_seq"]))
            assert isinstance(frame, pl.DataFrame)
            parts.append(frame.select(pl.col("_h").alias("id_hash"), (pl.col("_seq") + first).alias("position")))
        if parts:
            self._insert_id_hashes(pl.concat(parts))

    def _insert_id_hashes(self, hashed: pl.DataFrame) -> None:
        """Insert (id_hash, position) rows into the sealed-id index, in one pass in hash order."""
        hashed = hashed.sort("id_hash", "position")
        table = self.hot.ids_target(hashed.height)  # a fixed name of two, never user text
        added = 0
        for chunk in hashed.iter_slices(_JSON_CHUNK):
            pairs = chunk.select(pl.format("[{},{}]", "id_hash", "position").str.join(",")).item()
            added += max(0, self.hot.con.execute(
                f"INSERT OR IGNORE INTO {table} (id_hash, position) SELECT value ->> 0, value ->> 1 FROM json_each(?)",
                (f"[{pairs}]",),
            ).rowcount)
        self.hot.ids_added(added, into_base=table == "event_ids")

    def _sync_streams(self, entries: Sequence[FileEntry]) -> None:
        """Raise stream versions to what new files hold (a no-op after a normal seal).

        Only files with new events are given (not compacted files: their rows were indexed already).
        """
        if not entries:
            return
        parts = [self._import_facts[e.path].heads for e in entries if e.path in self._import_facts]
        paths = [str(self.folder / e.path) for e in entries if e.path not in self._import_facts]
        if paths:
            parts.append(
                pl.scan_parquet(paths)
                .group_by("aggregate_id")
                .agg(pl.col("aggregate_type").first(), pl.col("aggregate_version").max())
                .collect()
            )
        self._upsert_heads(pl.concat(parts))

    def _upsert_heads(self, heads: pl.DataFrame) -> None:
        """Raise ``streams`` to these heads (aggregate_id, aggregate_type, aggregate_version; one row per stream)."""
        heads = heads.select(
            pl.col("aggregate_id").alias("a"), pl.col("aggregate_type").alias("t"), pl.col("aggregate_version").alias("v"))
        for chunk in heads.iter_slices(_JSON_CHUNK):
            self.hot.con.execute(
                "INSERT INTO streams (aggregate_id, aggregate_type, version) "
                "SELECT value ->> 'a', value ->> 't', value ->> 'v' FROM json_each(?) WHERE true "
                "ON CONFLICT (aggregate_id) DO UPDATE SET version = max(version, excluded.version)",
                (chunk.write_json(),),
            )

    def _drop_retired(self, manifest: Manifest) -> Manifest:
        """Delete files retired by compaction once no reader can still be using them: no reader of any
        process holds a generation that lists them (``pins``), and ``retire_grace_seconds`` have passed
        for readers that take a file list without a pin for a moment. A manifest that no longer lists
        them (it names them ``deleting``) is made durable first, then they are deleted."""
        for path in manifest.deleting:  # a crash may have come between that manifest and the deletes
            self.sealed.remove(path)
        cutoff = time.time() - self.retire_grace_seconds
        expired = [r for r in manifest.retired if r[1] <= cutoff and self.pins.free_below(r[2])]
        if not expired:
            return manifest
        keep = tuple(r for r in manifest.retired if r not in expired)
        manifest = manifest.next(retired=keep, deleting=tuple(path for path, *_ in expired))
        self._publish(manifest)
        with self.hot.write():
            self._apply(manifest, {})
        for path, *_ in expired:
            self.sealed.remove(path)
        return manifest

    # -- sealing ------------------------------------------------------------------------------
    def seal(self, *, wait: bool = True, max_rows: int = 1_000_000) -> dict[str, Any]:
        """Move committed hot events into Parquet. Returns what was sealed."""
        started = time.perf_counter()
        with self.seal_lock(wait=wait) as locked:
            if not locked:
                return {"sealed_events": 0, "files": [], "skipped": "another process is sealing"}
            total, files = 0, []
            while True:
                manifest = self.manifest()
                table = self._read_hot(manifest.sealed_position, max_rows, from_memory=True)
                if not table.num_rows:
                    break
                through = table["position"][-1].as_py()
                in_file_order = _sort_for_files(table)
                heads = _last_rows(in_file_order)
                entries, indexes, _ = self._write_sorted(
                    in_file_order, generation=manifest.generation + 1, with_facts=False)
                manifest = manifest.next(
                    sealed_position=through,
                    last_recorded_at=max(manifest.last_recorded_at, to_micros(table["recorded_at"][-1].as_py())),
                    files=manifest.files + tuple(entries),
                )
                self._publish(manifest)
                with self.hot.write():
                    self._apply(manifest, indexes, sealed_heads=heads)
                self.row_cache.forget_cached(through)
                total += table.num_rows
                files += [e.path for e in entries]
                if table.num_rows < max_rows:
                    break
            compacted = self._maybe_compact()
            self._drop_retired(self.manifest())
        integrity = self.extend_integrity_chain() if total else None
        self._run_seal_hooks()
        result = {
            "sealed_events": total,
            "files": files,
            "compacted": compacted,
            "sealed_position": self.manifest().sealed_position,
            "seconds": round(time.perf_counter() - started, 3),
        }
        if integrity is not None:
            result["integrity"] = integrity
        return result

    def _read_hot(self, after: int, limit: int, *, from_memory: bool = False) -> pa.Table:
        """Committed hot rows above ``after`` as Arrow, from one read snapshot.

        ``from_memory`` (a seal): take the rows this handle appended from its memory when they are exactly
        the rows in range. Everything that must see the file as it is (integrity checks) reads it.
        (Reading through a second SQLite library such as an ADBC driver would be faster, but two SQLite
        copies in one process break each other's POSIX locks: see docs/decisions.md.)
        """
        with self.hot.read():
            last = self.hot.con.execute("SELECT max(position) FROM events").fetchone()[0]
            if last is None or last <= after:
                return EVENT_SCHEMA.empty_table()
            cached = self.row_cache.cached_after(after, int(last), limit) if from_memory else None
            return cached if cached is not None else self.hot.arrow_after(after, limit)

    def maybe_auto_seal(self, last_position: int) -> None:
        """Seal when the hot tier has grown past ``auto_seal_rows`` (skipped if another process seals).

        With ``seal_in_background`` the seal runs on a thread with its own connections and the append
        that crossed the threshold returns at once; the appends that follow wait only for the seal's
        short write transactions. An append waits for the running seal only once the hot tier holds four
        times the threshold (back-pressure).
        """
        if not self.auto_seal_rows or last_position - self._manifest.sealed_position < self.auto_seal_rows:
            return  # the cached manifest is never ahead of the real one, so no need to stat it
        backlog = last_position - self.manifest().sealed_position
        if backlog < self.auto_seal_rows:
            return
        if not self.seal_in_background:
            self.seal(wait=False)
            return
        sealer = self._sealer
        if sealer is None or not sealer.is_alive():
            self._sealer = threading.Thread(target=self._seal_in_background, name="es-analytics-seal")
            self._sealer.start()
        elif backlog >= 4 * self.auto_seal_rows:
            sealer.join()

    def _seal_in_background(self) -> None:
        try:
            if self._sealer_store is None:
                store = LakeStore(
                    self.folder, durability=self.durability, auto_seal_rows=0,
                    compact_after_files=self.compact_after_files, retire_grace_seconds=self.retire_grace_seconds,
                    busy_timeout=self.busy_timeout,
                )
                store.row_cache = self.hot  # seal the rows this handle appended without reading them back
                store.extend_chain = self.extend_chain
                self._sealer_store = store
            self._sealer_store.seal(wait=False)
            self.seal_error = None
        except Exception as exc:  # the events are committed in the hot tier; the next threshold retries
            self.seal_error = exc
            logger.exception("background seal of %s failed; the events stay in the hot tier", self.folder)

    def wait_for_seal(self) -> None:
        """Wait for a background seal this handle started (returns at once if none is running)."""
        sealer = self._sealer
        if sealer is not None and sealer is not threading.current_thread():
            sealer.join()

    # -- compaction ---------------------------------------------------------------------------
    def _maybe_compact(self) -> list[str]:
        done = []
        by_type: dict[str, int] = {}
        for entry in self.manifest().files:
            if entry.level == 0:
                by_type[entry.aggregate_type] = by_type.get(entry.aggregate_type, 0) + 1
        for aggregate_type, count in sorted(by_type.items()):
            if self.compact_after_files and count >= self.compact_after_files:
                self._compact_type(aggregate_type)
                done.append(aggregate_type)
        return done

    def compact(self, aggregate_type: str | None = None) -> list[str]:
        """Rewrite a type's files into stream-sorted files with disjoint aggregate_id ranges."""
        with self.seal_lock():
            types = sorted({f.aggregate_type for f in self.manifest().files})
            if aggregate_type is not None:
                types = [t for t in types if t == aggregate_type]
            for name in types:
                self._compact_type(name, whole=True)
            self._drop_retired(self.manifest())
        self.extend_integrity_chain()  # records the new files' hashes
        self._run_seal_hooks()
        return types

    def _compact_type(self, aggregate_type: str, *, whole: bool = False) -> None:
        """Merge a type's new (level 0) files, and its level-1 files under half the target size, into
        stream-sorted level-1 files of about ``COMPACT_TARGET_ROWS`` rows; ``whole`` merges every file of
        the type (an explicit ``compact``). Big level-1 files are never rewritten by the automatic path,
        so its cost follows the new data, not the size of the type."""
        manifest = self.manifest()
        old = [f for f in manifest.files if f.aggregate_type == aggregate_type
               and (whole or f.level == 0 or f.rows < COMPACT_TARGET_ROWS // 2)]
        if len(old) <= 1 and all(f.level == 1 for f in old):
            return
        paths = [str(self.folder / f.path) for f in old]
        counts = (
            pl.scan_parquet(paths).group_by("aggregate_id").len().sort("aggregate_id").collect()
        )
        cumulative = counts["len"].cum_sum()
        bucket = (cumulative - 1) // COMPACT_TARGET_ROWS
        bounds = counts.with_columns(bucket.alias("bucket")).group_by("bucket").agg(
            pl.col("aggregate_id").min().alias("lo")).sort("bucket")["lo"].to_list()
        dataset = ds.dataset(paths, format="parquet", schema=EVENT_SCHEMA)
        entries, indexes = [], {}
        for i, lo in enumerate(bounds):
            cond = ds.field("aggregate_id") >= lo
            if i + 1 < len(bounds):
                cond = cond & (ds.field("aggregate_id") < bounds[i + 1])
            part = dataset.to_table(filter=cond)
            entry, index = self.sealed.write(part, aggregate_type, generation=manifest.generation + 1, level=1)
            entries.append(entry)
            indexes[entry.path] = index
        now = time.time()
        merged = {f.path for f in old}
        keep = tuple(f for f in manifest.files if f.path not in merged)
        manifest = manifest.next(
            files=keep + tuple(entries),
            retired=manifest.retired + tuple((f.path, now, manifest.generation + 1) for f in old),
        )
        self._publish(manifest)
        with self.hot.write():
            self._apply(manifest, indexes)

    # -- bulk import --------------------------------------------------------------------------
    def import_table(
        self,
        table: pa.Table | pl.DataFrame,
        *,
        keep_recorded_at: bool = False,
        trusted: bool = False,
        check_event_ids: bool = True,
        order: str | None = None,
    ) -> dict[str, Any]:
        """Append many streams' events at once, straight into Parquet (used by ingest and sample data).

        ``table`` (Arrow or polars) has the event columns except ``position`` (and ``recorded_at`` unless
        ``keep_recorded_at``), in commit order, or in any order with ``order`` naming an integer column
        that gives the commit order (that column is not stored). Each stream's versions must continue its
        current version without gaps; event ids must be new. All or nothing. ``check_event_ids=False``
        skips only the (per-id) check that event ids are new, for callers that checked them in bulk
        already (ingest).

        The rows are sorted once, as the sealed files store them; the checks and everything the hot
        tier's indexes need (stream heads, row groups, event-id hashes) come from that sorted table in
        memory instead of from reading the written files back (see docs/decisions.md).
        """
        n = table.height if isinstance(table, pl.DataFrame) else table.num_rows
        if n == 0:
            return {"imported_events": 0}
        if order is not None and keep_recorded_at:
            raise InvalidArgumentError("keep_recorded_at needs the rows in commit order, not order=")
        if self.encrypt_table is not None:
            table = self.encrypt_table(table.to_arrow() if isinstance(table, pl.DataFrame) else table)
        # Work that does not depend on the lake's state happens before its locks are taken.
        batch = _SortedImport(table, keep_recorded_at=keep_recorded_at, order=order)
        if not trusted:
            batch.check_within()
        with self.seal_lock():
            with self.hot.write():
                if not trusted:
                    self._validate_import(batch, check_event_ids=check_event_ids)
                manifest = self.manifest()
                hot_rows = self.hot.rows_after(manifest.sealed_position)
                first = self.hot.reserve_positions(n)
                last_recorded = self.hot.last_recorded_at()
                stamp = None
                if not keep_recorded_at:
                    stamp = max(to_micros(now_utc()), last_recorded)
                elif batch.min_recorded_at < last_recorded:
                    raise InvalidArgumentError(
                        "recorded_at of imported events lies before the lake's newest recorded_at; "
                        "import without keep_recorded_at to stamp them now"
                    )
                full = batch.events(first, stamp)
                if hot_rows:  # unsealed appends go into the same files, at their own positions
                    full = _sort_for_files(pa.concat_tables([hot_rows_to_arrow(hot_rows), full]))
                entries, indexes, facts = self._write_sorted(full, generation=manifest.generation + 1)
                manifest = manifest.next(
                    sealed_position=first + n - 1,
                    last_recorded_at=max(manifest.last_recorded_at, batch.max_recorded_at(stamp)),
                    files=manifest.files + tuple(entries),
                )
                self._publish_import(manifest, indexes, facts)
            compacted = self._maybe_compact()
        integrity = self.extend_integrity_chain()
        self._run_seal_hooks()
        return {"imported_events": n, "first_position": first, "last_position": first + n - 1, "compacted": compacted,
                "integrity": integrity}

    def _publish_import(self, manifest: Manifest, indexes: dict[str, pl.DataFrame], facts: dict[str, _FileFacts]) -> None:
        """Inside the hot write transaction: publish an import's manifest and bring SQLite up to it, taking
        the new files' id hashes and heads (``facts``) from memory instead of reading the files back."""
        self._publish(manifest)
        self._import_facts = facts
        try:
            self._apply(manifest, indexes)
        finally:
            self._import_facts = {}

    def snapshot(self) -> tuple[int, int]:
        """(manifest generation, last position handed out): unchanged as long as nothing was written."""
        with self.hot.read():
            return self.manifest().generation, self.hot.last_position()

    def import_staged(self, stage: StagedImport) -> dict[str, Any]:
        """Commit a staged import (see ``staging``): its rows, sorted per type by (aggregate_id,
        aggregate_version), are written once into files of compaction size (level 1, with disjoint
        aggregate_id ranges, listed in the manifest as holding new events), at positions in the staged
        commit order (``_seq``); the hot tier's indexes are then built in one pass in key order.

        The stream heads the caller checked against are checked again only if the lake changed since the
        stage's snapshot; a stream that moved raises ``InvalidArgumentError`` and nothing is written.
        Event ids are not checked (the caller did, in bulk). Memory stays bounded: DuckDB sorts within
        a memory limit, spilling to the stage's folder, and one file's rows are held at a time.
        """
        n = stage.rows
        if n == 0:
            return {"imported_events": 0}
        dataset = stage.dataset()
        con = duckdb.connect(config={"threads": 2, "memory_limit": "1GB",
                                     "temp_directory": str(stage.folder / "sort")})
        con.execute("SET preserve_insertion_order = false")
        con.register("staged", dataset)
        try:
            with self.seal_lock():
                with self.hot.write():
                    manifest = self.manifest()
                    if (manifest.generation, self.hot.last_position()) != stage.snapshot:
                        self._validate_staged(con)
                    hot_rows = self.hot.rows_after(manifest.sealed_position)
                    first = self.hot.reserve_positions(n)
                    stamp = max(to_micros(now_utc()), self.hot.last_recorded_at())
                    entries: list[FileEntry] = []
                    indexes: dict[str, pl.DataFrame] = {}
                    facts: dict[str, _FileFacts] = {}
                    if hot_rows:  # unsealed appends: sealed with the import, in files of their own
                        entries, indexes, facts = self._write_sorted(
                            _sort_for_files(hot_rows_to_arrow(hot_rows)), generation=manifest.generation + 1)
                    ingested: list[str] = []
                    # Three things at once (pyarrow and SQLite release the GIL): the event-id index is
                    # filled from the staged hashes and positions on one thread (in this transaction, so
                    # a crash undoes it; nothing else uses SQLite meanwhile), Parquet is written on
                    # another while the next part is sorted here; one part waits at most (bounded memory).
                    no_ids = pl.DataFrame(schema={"id_hash": pl.Int64, "position": pl.Int64})
                    with ThreadPoolExecutor(1, thread_name_prefix="es-analytics-ids") as ids_pool, \
                            ThreadPoolExecutor(1, thread_name_prefix="es-analytics-import") as pool:
                        ids_done = ids_pool.submit(self._index_staged_ids, stage, first)
                        waiting: list[tuple[Future[tuple[FileEntry, pl.DataFrame]], _FileFacts]] = []
                        for aggregate_type, part in _staged_files(stage, con, first, stamp):
                            if self.encrypt_table is not None:
                                part = self.encrypt_table(part)
                            fact = _FileFacts(no_ids, _last_rows(part))
                            if waiting:
                                _collect(waiting.pop(), entries, indexes, facts, ingested)
                            waiting.append((pool.submit(self.sealed.write, part, aggregate_type, level=1,
                                                        generation=manifest.generation + 1, presorted=True), fact))
                            del part
                        while waiting:
                            _collect(waiting.pop(), entries, indexes, facts, ingested)
                        ids_done.result()
                    manifest = manifest.next(
                        sealed_position=first + n - 1,
                        last_recorded_at=max(manifest.last_recorded_at, stamp),
                        files=manifest.files + tuple(entries),
                        extra={**manifest.extra, INGESTED_KEY: ingested},
                    )
                    self._publish_import(manifest, indexes, facts)
                compacted = self._maybe_compact()
        finally:
            con.close()
        integrity = self.extend_integrity_chain()
        self._run_seal_hooks()
        return {"imported_events": n, "first_position": first, "last_position": first + n - 1, "compacted": compacted,
                "integrity": integrity}

    def _validate_staged(self, con: duckdb.DuckDBPyConnection) -> None:
        """Inside the hot write transaction: each staged stream continues its stored version and type."""
        heads = con.sql(
            "SELECT aggregate_id AS a, arg_min(aggregate_type, aggregate_version) AS t, min(aggregate_version) AS v "
            "FROM staged GROUP BY aggregate_id").pl()
        assert isinstance(heads, pl.DataFrame)
        for chunk in heads.iter_slices(_JSON_CHUNK):
            _raise_if_discontinuous(self.hot.con.execute(_CONTINUITY_SQL, (chunk.write_json(),)).fetchone())

    def _write_sorted(
        self, table: pa.Table, *, generation: int, with_facts: bool = True
    ) -> tuple[list[FileEntry], dict[str, pl.DataFrame], dict[str, _FileFacts]]:
        """Write a table sorted by (aggregate_type, aggregate_id, aggregate_version), one file per type
        for manifest ``generation``
        (each a slice of it: one sort for all types, where a filter per type cost 13 ms per 50,000 rows
        even for one type); returns the entries, their row-group indexes and, ``with_facts``, what the
        other indexes need (imports; a seal takes those from the hot rows)."""
        entries, indexes, facts = [], {}, {}
        offset = 0
        for item in pc.value_counts(table["aggregate_type"]).to_pylist():  # types in sorted order
            part = table.slice(offset, item["counts"])
            offset += item["counts"]
            entry, index = self.sealed.write(part, item["values"], generation=generation, presorted=True)
            entries.append(entry)
            indexes[entry.path] = index
            if with_facts:
                facts[entry.path] = _FileFacts.of(part)
        return entries, indexes, facts

    def _validate_import(self, batch: _SortedImport, *, check_event_ids: bool = True) -> None:
        """Inside the hot write transaction: each stream continues its stored version and type; event ids
        are new (unless the caller checked them)."""
        con = self.hot.con
        # The heads go to SQLite as one JSON document (json_each drives the join): about 4x less CPU than an
        # executemany into a temp table (0.33 s against 1.39 s for 206k streams).
        _raise_if_discontinuous(con.execute(_CONTINUITY_SQL, (batch.heads_json(),)).fetchone())
        if not check_event_ids:
            return
        known = list(self.hot.known_ids(batch.frame["event_id"].to_list(), self.lookup_sealed))
        if known:
            raise InvalidArgumentError(f"event_id {known[0]!r} is already in the lake")

    # -- reads --------------------------------------------------------------------------------
    def lookup_sealed(self, positions: Sequence[int]) -> list[StoredMatch]:
        """Sealed events at ``positions``, for telling retries from reused ids."""
        table = self.sealed.read_positions(self.manifest().files, positions)
        out = []
        for row in table.to_pylist():
            out.append(StoredMatch(
                row["event_id"], row["event_type"], row["schema_version"], row["aggregate_type"],
                row["aggregate_id"], row["aggregate_version"], to_micros(row["occurred_at"]),
                row["data"], row["metadata"],
            ))
        return out

    def read_stream(self, aggregate_id: str) -> pa.Table:
        """Every stored event of one stream in version order (sealed row groups plus hot rows)."""
        with translate_errors("reading a stream"):
            for attempt in range(3):
                locations, hot = self.hot.stream_snapshot(aggregate_id)
                if not locations:
                    return hot_rows_to_arrow(hot)
                try:
                    table = self.sealed.read_stream(locations, aggregate_id)
                    break
                except FileNotFoundError:  # compaction replaced a file meanwhile: the index names the new one
                    if attempt == 2:
                        raise
            if table.schema != EVENT_SCHEMA:
                table = table.cast(EVENT_SCHEMA)
            if hot:  # newer than every sealed row of the stream: they follow them
                table = pa.concat_tables([table, hot_rows_to_arrow(hot)])
            if len({path for path, _ in locations}) > 1:  # each file is sorted by version; several are not
                table = table.sort_by("aggregate_version")
            return table

    def read_positions(
        self, after: int, *, until: int | None = None, limit: int | None = None, types: Sequence[str] | None = None
    ) -> pa.Table:
        """Events with ``after < position <= until`` (of ``types``, if given) in position order, at most ``limit``.

        One consistent snapshot across both tiers: a range above the sealed position is read from the
        hot tier alone (one SQLite read transaction); otherwise the DuckDB view over sealed files and hot
        rows answers it.
        """
        with translate_errors("reading events by position"):
            with self.hot.read():
                if after >= int(self.hot.meta("sealed_position", 0)):
                    return hot_rows_to_arrow(self.hot.rows_between(after, until, limit=limit, types=types))
            self.refresh()
            clauses, params = ["position > ?"], [after]
            if until is not None:
                clauses.append("position <= ?")
                params.append(until)
            if types:
                clauses.append("list_contains(?, event_type)")
                params.append(list(types))  # type: ignore[arg-type]
            sql = f"SELECT * FROM events WHERE {' AND '.join(clauses)} ORDER BY position"
            if limit is not None:
                sql += " LIMIT ?"
                params.append(limit)
            with self.reader.lock:
                return self.reader.relation(sql, params).to_arrow_table().cast(EVENT_SCHEMA)

    def refresh(self) -> None:
        """Point the DuckDB view at the newest consistent snapshot (cheap when nothing changed)."""
        with translate_errors("refreshing the snapshot"):
            reader = self.reader
            while True:  # pin the generation, then make sure it is still the current one (see pins.py)
                generation = self.manifest().generation
                self.pins.hold(generation)
                if self.manifest().generation == generation:
                    break
            with self.hot.read():
                manifest = self.manifest()
                same_files = reader.snapshot_key is not None and reader.snapshot_key[0] == manifest.generation
                after = manifest.sealed_position
                if same_files and reader.hot.num_rows:
                    after = max(after, pc.max(reader.hot["position"]).as_py())
                rows = self.hot.rows_after(after)
            if same_files and not rows:
                return
            fresh = hot_rows_to_arrow(rows)
            if same_files:
                hot = pa.concat_tables([reader.hot, fresh])
            else:
                hot = fresh
            files = tuple(f.path for f in manifest.files)
            reader.install(files, manifest.sealed_position, hot, (manifest.generation, after))


def _raise_if_discontinuous(bad: tuple[Any, ...] | None) -> None:
    """Refuse an import when ``_CONTINUITY_SQL`` found a stream its versions would not continue."""
    if bad is not None:
        raise InvalidArgumentError(
            f"stream {bad[0]!r}: imported versions start at {bad[3]} but the stream is at version {bad[4]} "
            f"(type {bad[2]!r}); imported events must continue each stream without gaps"
        )


def _staged_files(stage: StagedImport, con: duckdb.DuckDBPyConnection, first: int,
                  stamp: int) -> Iterator[tuple[str, pa.Table]]:
    """The staged rows as events, per type sorted by (aggregate_id, aggregate_version), cut into parts of
    about ``COMPACT_TARGET_ROWS`` rows at stream boundaries (so parts have disjoint aggregate_id ranges).

    The stage's buckets cover disjoint aggregate_id ranges in order, so sorting one bucket at a time (in
    memory with polars; a bucket larger than ``_SORT_IN_MEMORY_ROWS`` by DuckDB within its memory limit)
    gives each type's rows in order.
    """
    held: dict[str, list[pa.Table]] = {}
    recorded = pa.scalar(stamp, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    names = EVENT_SCHEMA.names
    schema = EVENT_SCHEMA

    for paths, rows in zip(stage.bucket_paths(), stage.bucket_rows):
        if not paths:
            continue
        for piece in _sorted_bucket(paths, rows, con):
            piece = piece.append_column("position", pc.add(piece["_seq"], pa.scalar(first, pa.int64())))
            piece = piece.append_column("recorded_at", pa.repeat(recorded, piece.num_rows))
            piece = piece.select(names).cast(schema)
            types = pc.unique(piece["aggregate_type"]).to_pylist()
            for item in types:
                part = piece if len(types) == 1 else piece.filter(pc.equal(piece["aggregate_type"], item))
                parts = held.setdefault(item, [])
                parts.append(part)
                if sum(p.num_rows for p in parts) <= COMPACT_TARGET_ROWS:
                    continue
                table = pa.concat_tables(parts)
                cut = _stream_boundary(table["aggregate_id"], COMPACT_TARGET_ROWS)
                if cut is None:
                    held[item] = [table]
                    continue
                yield item, table.slice(0, cut)
                held[item] = [table.slice(cut)]
    for item in sorted(held):
        table = pa.concat_tables(held[item])
        if table.num_rows:
            yield item, table


_SORT_IN_MEMORY_ROWS = 2_000_000


def _sorted_bucket(paths: Sequence[Path], rows: int, con: duckdb.DuckDBPyConnection) -> Iterator[pa.Table]:
    """One bucket's rows sorted by (aggregate_id, aggregate_version), in one or more pieces."""
    if rows <= _SORT_IN_MEMORY_ROWS:
        frame = pl.from_arrow(read_ipc(paths))
        assert isinstance(frame, pl.DataFrame)
        yield frame.sort("aggregate_id", "aggregate_version").to_arrow()
        return
    con.register("bucket", ds.dataset([str(p) for p in paths], format="ipc"))
    try:
        relation = con.sql("SELECT * FROM bucket ORDER BY aggregate_id, aggregate_version")
        for batch in relation.to_arrow_reader(100_000):
            yield pa.Table.from_batches([batch])
    finally:
        con.unregister("bucket")


def _collect(item: tuple[Future[tuple[FileEntry, pl.DataFrame]], _FileFacts], entries: list[FileEntry],
             indexes: dict[str, pl.DataFrame], facts: dict[str, _FileFacts], ingested: list[str]) -> None:
    """Wait for one file written in the background and record it."""
    entry, index = item[0].result()
    entries.append(entry)
    indexes[entry.path] = index
    facts[entry.path] = item[1]
    ingested.append(entry.path)


def _last_rows(part: pa.Table) -> pl.DataFrame:
    """Each stream's last row (aggregate_id, aggregate_type, aggregate_version) of a table sorted by stream."""
    keys = pl.from_arrow(part.select(["aggregate_id", "aggregate_type", "aggregate_version"]))
    assert isinstance(keys, pl.DataFrame)
    last = (pl.col("aggregate_id") != pl.col("aggregate_id").shift(-1)).fill_null(True)
    return keys.filter(last)


def _stream_boundary(ids: pa.ChunkedArray, at: int) -> int | None:
    """The first row at or after ``at`` that starts another stream (``ids`` sorted), if any."""
    if at <= 0 or at >= len(ids):
        return None
    changed = pc.not_equal(ids.slice(at), ids.slice(at - 1, len(ids) - at))
    found = pc.index(changed, True).as_py()
    return None if found < 0 else at + found


@functools.cache
def _hashing_database() -> duckdb.DuckDBPyConnection:
    """A private in-memory DuckDB database for column-wise id hashing (a forked child makes its own)."""
    return duckdb.connect()


os.register_at_fork(after_in_child=_hashing_database.cache_clear)


def _hash_ids(ids: pa.Table) -> pl.DataFrame:
    """(id_hash, position) of a table's events, hashed column-wise in DuckDB.

    A cursor of a private in-memory database (not DuckDB's process-wide default connection, which other
    threads may be using; a cursor is a connection of its own and cheap to open, a new database ~17 ms),
    with the table registered by name rather than found among the caller's variables.
    """
    with _hashing_database().cursor() as con:
        con.register("ids", ids)
        frame = con.sql(f"SELECT {EVENT_ID_HASH_SQL} AS id_hash, position FROM ids").pl()
    assert isinstance(frame, pl.DataFrame)
    return frame


def _in_file_order(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` sorted by (aggregate_type, aggregate_id, aggregate_version).

    Rows that come sorted by stream and version already (as ingest hands them over) only need a stable
    sort by type, or none for a single type: a check of neighbouring rows instead of a sort on three keys.
    """
    previous_id = pl.col("aggregate_id").shift(1)
    by_stream = (pl.col("aggregate_id") > previous_id) | (
        (pl.col("aggregate_id") == previous_id) & (pl.col("aggregate_version") > pl.col("aggregate_version").shift(1)))
    if frame.height and frame.select(by_stream.fill_null(True).all()).item():
        if frame["aggregate_type"].n_unique() == 1:
            return frame
        return frame.sort("aggregate_type", maintain_order=True)
    return frame.sort(_FILE_ORDER, maintain_order=True)


def _sort_for_files(table: pa.Table) -> pa.Table:
    """Events in the order of the sealed files, types first (so each type's rows are one slice)."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.sort(_FILE_ORDER, maintain_order=True).to_arrow().cast(EVENT_SCHEMA)


class _FileFacts:
    """What the hot tier's indexes need from a file an import wrote, taken from its rows in memory."""

    __slots__ = ("heads", "id_hashes")

    def __init__(self, id_hashes: pl.DataFrame, heads: pl.DataFrame) -> None:
        self.id_hashes = id_hashes
        self.heads = heads

    @classmethod
    def of(cls, part: pa.Table) -> _FileFacts:
        """Facts of a table sorted by (aggregate_id, aggregate_version): id hashes and each stream's last row."""
        return cls(_hash_ids(part.select(["event_id", "position"])), _last_rows(part))


class _SortedImport:
    """The rows of one import sorted as the sealed files store them, with each row's rank in commit order.

    Everything here is computed without the lake's locks: the checks within the batch and the heads that
    the continuity check sends to SQLite.
    """

    def __init__(self, table: pa.Table | pl.DataFrame, *, keep_recorded_at: bool, order: str | None = None) -> None:
        columns = [c for c in EVENT_SCHEMA.names if c != "position" and (c != "recorded_at" or keep_recorded_at)]
        self.min_recorded_at = 0
        self._max_recorded_at = 0
        if isinstance(table, pa.Table):
            table = table.select(columns + ([order] if order else []))
            if keep_recorded_at:
                recorded = pc.cast(table["recorded_at"], pa.int64())
                if table.num_rows > 1 and pc.any(pc.less(recorded[1:], recorded[:-1])).as_py():
                    raise InvalidArgumentError("recorded_at must not decrease in commit order")
                self.min_recorded_at = int(pc.min(recorded).as_py())
                self._max_recorded_at = int(pc.max(recorded).as_py())
                table = table.set_column(
                    columns.index("recorded_at"), "recorded_at", pc.cast(recorded, EVENT_SCHEMA.field("recorded_at").type))
            converted = pl.from_arrow(table)
            assert isinstance(converted, pl.DataFrame)
            frame = converted
        else:
            if keep_recorded_at:
                raise InvalidArgumentError("keep_recorded_at needs an Arrow table")
            frame = table.select(columns + ([order] if order else []))
        if order is None:
            frame = frame.with_row_index("_rank")
        else:
            frame = frame.with_columns(
                (pl.col(order).rank("ordinal") - 1).cast(pl.UInt32).alias("_rank")).drop(order)
        self.frame = _in_file_order(frame)
        self._same = (
            (pl.col("aggregate_id") == pl.col("aggregate_id").shift(1))
            & (pl.col("aggregate_type") == pl.col("aggregate_type").shift(1))
        ).fill_null(False)

    def check_within(self) -> None:
        """Event ids are distinct; each stream's versions are contiguous, rise with commit order, one type."""
        frame = self.frame
        if frame["event_id"].n_unique() != frame.height:
            raise InvalidArgumentError("the imported events repeat an event_id")
        broken = self._same & (
            (pl.col("aggregate_version") != pl.col("aggregate_version").shift(1) + 1)
            | (pl.col("_rank") < pl.col("_rank").shift(1))
        )
        flags = frame.select(broken.alias("broken"), (~self._same).alias("start"))
        culprit = None
        if flags["broken"].any():
            culprit = frame.filter(flags["broken"])["aggregate_id"][0]
        elif int(flags["start"].sum()) != frame["aggregate_id"].n_unique():  # a stream under two types
            starts = frame.filter(flags["start"])["aggregate_id"]
            culprit = starts.filter(starts.is_duplicated())[0]
        if culprit is not None:
            raise InvalidArgumentError(
                f"stream {culprit!r}: imported versions are not contiguous, or the stream has two aggregate types"
            )

    def heads_json(self) -> str:
        """Each stream's first imported row (id, type, version) as one JSON document for SQLite."""
        heads = self.frame.filter(~self._same).select(
            pl.col("aggregate_id").alias("a"), pl.col("aggregate_type").alias("t"), pl.col("aggregate_version").alias("v"))
        return heads.write_json()

    def events(self, first: int, stamp: int | None) -> pa.Table:
        """The rows (sorted for the files) as events with positions from ``first`` on, in commit order.

        ``stamp`` is the recorded_at of every row (µs), or ``None`` to keep the imported ones.
        """
        recorded = pl.col("recorded_at") if stamp is None else pl.lit(stamp, pl.Int64).cast(pl.Datetime("us", "UTC"))
        frame = self.frame.with_columns((pl.col("_rank").cast(pl.Int64) + first).alias("position"), recorded.alias("recorded_at"))
        return frame.select(EVENT_SCHEMA.names).to_arrow().cast(EVENT_SCHEMA)

    def max_recorded_at(self, stamp: int | None) -> int:
        return self._max_recorded_at if stamp is None else stamp
