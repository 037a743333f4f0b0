"""``lake.check()``: an fsck for the event lake. It reports, and repairs only what is safe to repair.

Checked: the manifest against the files (present, size, Parquet footer, row count, schema, position range);
every value of every file decodes, its rows are in (aggregate_id, aggregate_version) order and the stream index
names exactly the row groups that hold each stream (what point reads rely on); temporary and unlisted files; the hot tier's SQLite integrity and leftovers of a finished seal; the hot-id index (an entry
for each hot row at or below its watermark, none for others); the sealed-id index (one entry per sealed
event); unique (aggregate_id, aggregate_version) and event_id; contiguous versions 1..n per stream; gap-free
positions; ``recorded_at`` never decreasing with position; the stream table against the events.

Safe repairs (``repair=True``): delete temporary and unlisted files, finish an interrupted seal, drop hot rows
already sealed, rebuild the hot-id index from the hot rows and the sealed-id index from the sealed files, and
bring a stream's recorded version up to the events it really holds. Nothing that would need a choice between
two versions of history is touched: such findings are only reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import EsAnalyticsError
from ..events import EVENT_SCHEMA
from .manifest import FileEntry
from .hot import HOT_IDS_WATERMARK_SQL

if TYPE_CHECKING:
    from .engine import LakeStore

__all__ = ["check_lake"]

_SAMPLE = 5


def _problem(check: str, detail: str, *, repairable: bool = False) -> dict[str, Any]:
    return {"check": check, "detail": detail, "repairable": repairable}


# Per file: rows, rows out of (aggregate_id, aggregate_version) order, position range, types, and a hash of
# every column, so that each value is decoded once (a damaged page raises here, not in a later query).
_FILE_CONTENT_SQL = """
    SELECT count(*), count(*) FILTER (WHERE previous_id > aggregate_id
                                         OR (previous_id = aggregate_id AND previous_version >= aggregate_version)),
           min(position), max(position), count(DISTINCT aggregate_type), min(aggregate_type),
           bit_xor(hash(event_id, event_type, schema_version, occurred_at, recorded_at, data, metadata))
    FROM (SELECT *, lag(aggregate_id) OVER w AS previous_id, lag(aggregate_version) OVER w AS previous_version
          FROM read_parquet(?, file_row_number = true) WINDOW w AS (ORDER BY file_row_number))"""


def _check_files(store: LakeStore) -> tuple[list[dict[str, Any]], int, dict[str, pl.DataFrame]]:
    """Findings about the sealed files, their count, and each readable file's (aggregate_id, row_group) pairs."""
    problems = []
    manifest = store.manifest()
    row_groups: dict[str, pl.DataFrame] = {}
    con = duckdb.connect()
    try:
        for entry in manifest.files:
            path = store.folder / entry.path
            if not path.exists():
                problems.append(_problem("file", f"{entry.path} is listed in the manifest but missing"))
                continue
            size = path.stat().st_size
            if size != entry.bytes:
                problems.append(_problem("file", f"{entry.path} has {size} bytes, the manifest says {entry.bytes}"))
            try:
                meta = pq.read_metadata(path)
            except (pa.ArrowException, OSError, ValueError) as exc:  # any footer error: the file is unusable
                problems.append(_problem("file", f"{entry.path} has no readable Parquet footer: {exc}"))
                continue
            if meta.num_rows != entry.rows:
                problems.append(_problem("file", f"{entry.path} holds {meta.num_rows} rows, the manifest says {entry.rows}"))
            if not meta.schema.to_arrow_schema().remove_metadata().equals(EVENT_SCHEMA, check_metadata=False):
                problems.append(_problem("file", f"{entry.path} does not have the event schema"))
                continue
            found, index = _check_contents(con, path, entry)
            problems += found
            if index is not None:
                row_groups[entry.path] = index
    finally:
        con.close()
    listed = {f.path for f in manifest.files} | {p for p, *_ in manifest.retired}
    for rel in store.sealed.owned_parquet():
        if rel not in listed:
            problems.append(_problem("orphan", f"{rel} is not in the manifest (left by an interrupted seal)", repairable=True))
    for tmp in store.sealed.temporary_files():
        problems.append(_problem("orphan", f"{tmp.relative_to(store.folder)} is a temporary file", repairable=True))
    return problems, len(manifest.files), row_groups


def _check_contents(
    con: duckdb.DuckDBPyConnection, path: Path, entry: FileEntry
) -> tuple[list[dict[str, Any]], pl.DataFrame | None]:
    """Decode every value of one file (pyarrow, validated, and DuckDB, which the queries use) and check its
    order and position range; returns the findings and
    the file's (aggregate_id, row_group) pairs (``None`` when the file does not read)."""
    try:
        handle = pq.ParquetFile(path)
        frames = []
        for group in range(handle.num_row_groups):
            rows_of_group = handle.read_row_group(group)
            rows_of_group.validate(full=True)  # e.g. text that is no longer UTF-8
            ids = pc.unique(rows_of_group["aggregate_id"])
            frames.append(pl.DataFrame({"aggregate_id": pl.from_arrow(ids), "row_group": group},
                                       schema={"aggregate_id": pl.String, "row_group": pl.Int64}))
        rows, unordered, first, last, types, kind, _ = con.execute(_FILE_CONTENT_SQL, [str(path)]).fetchall()[0]
    except (duckdb.Error, pa.ArrowException, OSError, ValueError) as exc:  # a damaged file is a finding, not a crash
        return [_problem("file", f"{entry.path} does not read: {str(exc).splitlines()[0][:300]}")], None
    problems = []
    if unordered:
        problems.append(_problem("file order", f"{entry.path} has {unordered} rows out of (aggregate_id, "
                                 "aggregate_version) order, so reads of one stream may miss or misorder events"))
    if rows and (first, last) != (entry.min_position, entry.max_position):
        problems.append(_problem("file", f"{entry.path} holds positions {first}..{last}, the manifest says "
                                 f"{entry.min_position}..{entry.max_position}"))
    if rows and (types, kind) != (1, entry.aggregate_type):
        problems.append(_problem("file", f"{entry.path} holds events of other types than {entry.aggregate_type!r}"))
    index = pl.concat(frames) if frames else pl.DataFrame(schema={"aggregate_id": pl.String, "row_group": pl.Int64})
    return problems, index


def _check_stream_index(store: LakeStore, row_groups: dict[str, pl.DataFrame]) -> list[dict[str, Any]]:
    """Each readable file's stream-index entries against the row groups that really hold each stream."""
    rows = store.hot.con.execute(
        "SELECT f.path, s.aggregate_id, s.row_group FROM stream_index s JOIN files f USING (file_id)").fetchall()
    indexed = pl.DataFrame(rows, schema={"path": pl.String, "aggregate_id": pl.String, "row_group": pl.Int64},
                           orient="row")
    problems = []
    for path, held in row_groups.items():
        entries = indexed.filter(pl.col("path") == path).drop("path")
        wrong = entries.join(held, on=["aggregate_id", "row_group"], how="anti")
        missing = held.join(entries, on=["aggregate_id", "row_group"], how="anti")
        if wrong.height or missing.height:
            sample = (wrong if wrong.height else missing).head(_SAMPLE).rows()
            problems.append(_problem(
                "stream index",
                f"{path}: {wrong.height} entries name a row group that does not hold the stream and "
                f"{missing.height} (stream, row group) pairs of the file are not indexed, e.g. "
                f"(aggregate_id, row_group) {sample!r}; reads of those streams miss events",
            ))
    return problems


def _check_hot(store: LakeStore) -> list[dict[str, Any]]:
    problems = []
    con = store.hot.con
    result = con.execute("PRAGMA quick_check").fetchall()
    if result != [("ok",)]:
        problems.append(_problem("hot tier", f"SQLite quick_check: {result[:_SAMPLE]}"))
    sealed = store.manifest().sealed_position
    leftover = con.execute("SELECT count(*) FROM events WHERE position <= ?", (sealed,)).fetchone()[0]
    if leftover:
        problems.append(_problem("hot tier", f"{leftover} hot rows are already sealed (interrupted seal)", repairable=True))
    if int(store.hot.meta("manifest_generation", -1)) != store.manifest().generation:
        problems.append(_problem("hot tier", "the stream index lags the manifest (interrupted seal)", repairable=True))
        return problems  # the sealed-id index lags with it: recovery brings both up to date
    # hot_ids: exactly the hot rows at or below its watermark, at their positions (see SQLiteHotTier.catch_up_hot_ids)
    wrong = con.execute(
        f"WITH w AS (SELECT {HOT_IDS_WATERMARK_SQL} AS through), "
        "want AS (SELECT event_id, position FROM events, w WHERE position <= w.through) "
        "SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT * FROM hot_ids)), "
        "(SELECT count(*) FROM (SELECT * FROM hot_ids EXCEPT SELECT * FROM want))"
    ).fetchone()
    if wrong != (0, 0):
        problems.append(_problem(
            "hot-id index",
            f"{wrong[0]} hot rows below its watermark lack their entry and {wrong[1]} entries match no such row, so a "
            "repeated event id might not be refused",
            repairable=True,
        ))
    base, recent = con.execute("SELECT (SELECT count(*) FROM event_ids), (SELECT count(*) FROM recent_ids)").fetchone()
    sealed_events = sum(f.rows for f in store.manifest().files)
    if base + recent != sealed_events:
        problems.append(_problem(
            "sealed-id index",
            f"it holds {base + recent} event ids for {sealed_events} sealed events, so retries of sealed events "
            "may not be recognised",
            repairable=True,
        ))
    elif (int(store.hot.meta("event_ids_rows", base)), int(store.hot.meta("recent_ids_rows", 0))) != (base, recent):
        problems.append(_problem("sealed-id index", "its recorded row counts disagree with its tables", repairable=True))
    return problems


_EVENT_CHECKS = {
    "unique versions": """
        SELECT aggregate_id, aggregate_version, count(*) AS n FROM events
        GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL LIMIT 5""",
    "unique event ids": """
        SELECT event_id, count(*) AS n FROM events GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL LIMIT 5""",
    "contiguous versions": """
        SELECT aggregate_id, min(aggregate_version) AS first, max(aggregate_version) AS last,
               count(DISTINCT aggregate_version) AS distinct_versions
        FROM events GROUP BY aggregate_id
        HAVING min(aggregate_version) != 1 OR max(aggregate_version) != count(DISTINCT aggregate_version)
        ORDER BY aggregate_id LIMIT 5""",
    "gap-free positions": """
        SELECT position + 1 AS missing_from, next_position - 1 AS missing_to FROM (
            SELECT position, lead(position) OVER (ORDER BY position) AS next_position FROM events)
        WHERE next_position - position > 1 ORDER BY position LIMIT 5""",
    "recorded_at order": """
        SELECT position, recorded_at FROM (
            SELECT position, recorded_at, lag(recorded_at) OVER (ORDER BY position) AS previous FROM events)
        WHERE recorded_at < previous ORDER BY position LIMIT 5""",
}


def _check_events(store: LakeStore) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    problems = []
    store.refresh()
    reader = store.reader
    with reader.lock:
        for name, sql in _EVENT_CHECKS.items():
            rows = reader.relation(sql).fetchall()
            if rows:
                problems.append(_problem(name, f"{len(rows)} or more findings, e.g. {rows[:_SAMPLE]!r}"))
        stats = reader.relation(
            "SELECT count(*), coalesce(min(position), 0), coalesce(max(position), 0), count(DISTINCT aggregate_id) "
            "FROM events"
        ).fetchall()[0]
        heads = reader.relation(
            "SELECT aggregate_id, any_value(aggregate_type) AS aggregate_type, max(aggregate_version) AS version "
            "FROM events GROUP BY aggregate_id"
        ).to_arrow_table()
    count, first, last, streams = stats
    if count and first != 1:
        problems.append(_problem("gap-free positions", f"positions start at {first}, not 1"))
    con = store.hot.con
    con.execute("CREATE TEMP TABLE IF NOT EXISTS _heads (aggregate_id TEXT PRIMARY KEY, aggregate_type TEXT, version INTEGER)")
    con.execute("DELETE FROM _heads")
    con.executemany("INSERT INTO _heads VALUES (?, ?, ?)", zip(*(heads[c].to_pylist() for c in heads.column_names)))
    mismatched = con.execute(
        "SELECT h.aggregate_id, coalesce(s.version, 0), h.version FROM _heads h "
        "LEFT JOIN stream_heads s USING (aggregate_id) WHERE coalesce(s.version, 0) != h.version LIMIT 5"
    ).fetchall()
    if mismatched:
        problems.append(_problem(
            "stream versions",
            f"the stream table disagrees with the events, e.g. (aggregate_id, recorded, held) {mismatched!r}",
            repairable=True,
        ))
    return problems, {"events": count, "first_position": first, "last_position": last, "streams": streams}


def _repair(store: LakeStore, problems: list[dict[str, Any]]) -> list[str]:
    done = []
    result = store.recover()
    done += [f"removed {p}" for p in result["removed_files"]]
    if result["indexed_files"]:
        done.append(f"indexed {result['indexed_files']} sealed files")
    con = store.hot.con
    if any(p["check"] == "sealed-id index" for p in problems):
        with store.hot.write():
            rows = store.rebuild_sealed_ids()
        done.append(f"rebuilt the sealed-id index from the sealed files ({rows} event ids)")
    with store.hot.write():
        sealed = store.manifest().sealed_position
        deleted = con.execute("DELETE FROM events WHERE position <= ?", (sealed,)).rowcount
        con.execute("DELETE FROM hot_ids WHERE position <= ?", (sealed,))
        if any(p["check"] == "hot-id index" for p in problems):
            store.hot.rebuild_hot_ids()
            done.append("rebuilt the hot-id index from the hot rows")
        if deleted:
            done.append(f"dropped {deleted} hot rows that were already sealed")
        fixed = con.execute(
            "INSERT INTO streams (aggregate_id, aggregate_type, version) "
            "SELECT aggregate_id, aggregate_type, version FROM _heads WHERE true "
            "ON CONFLICT (aggregate_id) DO UPDATE SET version = excluded.version "
            "WHERE streams.version != excluded.version"
        ).rowcount
        if fixed:
            done.append(f"set the recorded version of {fixed} streams to the events they hold")
    return done


def check_lake(store: LakeStore, *, repair: bool = False) -> dict[str, Any]:
    """Check every invariant of the lake; see the module docstring for what is checked and repaired."""
    with store.seal_lock():  # a seal in progress would show as temporary files and unsealed hot rows
        problems, files, row_groups = _check_files(store)
        problems += _check_hot(store)
        if int(store.hot.meta("manifest_generation", -1)) == store.manifest().generation:  # else it lags: reported
            problems += _check_stream_index(store, row_groups)
    damaged = any(p["check"] == "file" for p in problems)
    if damaged:  # the event checks would read the damaged files; report those first
        stats = {"events": None, "first_position": None, "last_position": None, "streams": None}
        problems.append(_problem("events", "not checked: some sealed files are missing or damaged"))
    else:
        try:
            event_problems, stats = _check_events(store)
        except EsAnalyticsError as exc:  # a file damaged in a way the file checks did not see: still a report
            stats = {"events": None, "first_position": None, "last_position": None, "streams": None}
            event_problems = [_problem("events", f"not checked: the events do not read ({exc})")]
        problems += event_problems
    repaired: list[str] = []
    if repair and any(p["repairable"] for p in problems):
        repaired = _repair(store, problems)
        after = check_lake(store, repair=False)
        return {**after, "repaired": repaired, "found_before_repair": problems}
    return {"ok": not problems, "problems": problems, "files": files, **stats, "repaired": repaired}
