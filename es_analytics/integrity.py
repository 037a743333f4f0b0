"""Tamper evidence: a hash chain over every event in position order, checkpointed in the manifest.

Each event's *content digest* is SHA-256 over its canonical content: the eleven fields of the event record
in schema order, times as integer microseconds, joined by the unit separator ``\\x1f`` (no field can hold
it: ids and types refuse control characters and JSON escapes them). The chain links them::

    head_0 = 32 zero bytes
    head_i = SHA-256(head_{i-1} || digest_i)          for the events in position order

Digests cover the *stored* text, so encrypted personal fields stay covered and forgetting a subject (which
deletes a key, never an event) leaves the chain intact.

A checkpoint, kept in the manifest's ``extra["integrity"]``, records the chain head and event count up to
a position, the SHA-256 of every sealed file it saw, and the list of digest files (``integrity/*.parquet``:
each event's position and the first 8 bytes of its digest, with their own SHA-256s). :func:`verify`
recomputes everything from the files, compares, and names the first event whose stored content no longer
matches (or the first file that no longer reads); a clean run extends the checkpoint to the newest event.
Publish the chain head somewhere else (a report, a ticket) to make even a rewrite of the whole lake
detectable.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import LakeError, TamperEvidenceError
from .events import EVENT_COLUMNS

__all__ = ["CANONICAL_SQL", "GENESIS", "chain_head", "checkpoint", "content_digests", "verify"]

GENESIS = bytes(32)
DIGEST_DIR = "integrity"
EXTRA_KEY = "integrity"
_FIELDS = (
    "position::VARCHAR", "event_id", "event_type", "schema_version::VARCHAR", "aggregate_type", "aggregate_id",
    "aggregate_version::VARCHAR", "epoch_us(occurred_at)::VARCHAR", "epoch_us(recorded_at)::VARCHAR",
    "data", "metadata",
)
CANONICAL_SQL = f"concat_ws(chr(31), {', '.join(_FIELDS)})"
"""The canonical content of an event as DuckDB SQL over the event record's columns."""


def content_digests(con: Any, source: str, params: list[Any] | None = None) -> pa.Table:
    """``position, digest`` (32 bytes) and ``short`` (8 bytes) of each event of ``source``, by position."""
    sql = (f"SELECT position, unhex(hex) AS digest, unhex(left(hex, 16)) AS short FROM "
           f"(SELECT position, sha256({CANONICAL_SQL}) AS hex FROM {source}) ORDER BY position")
    return con.sql(sql, params=params).to_arrow_table()


def chain_head(digests: pa.ChunkedArray | pa.Array, head: bytes = GENESIS) -> bytes:
    """Continue the chain from ``head`` over 32-byte digests in order and return the new head.

    Examples
    --------
    >>> import hashlib, pyarrow as pa
    >>> d = [hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()]
    >>> expected = hashlib.sha256(hashlib.sha256(GENESIS + d[0]).digest() + d[1]).digest()
    >>> chain_head(pa.array(d, pa.binary())) == expected
    True
    """
    array = digests.combine_chunks() if isinstance(digests, pa.ChunkedArray) else digests
    n = len(array)
    if n == 0:
        return head
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset:array.offset + n + 1]
    if offsets[-1] - offsets[0] != 32 * n:
        raise LakeError("content digests must be 32 bytes each")
    data = memoryview(array.buffers()[2])[offsets[0]:offsets[-1]]
    sha = hashlib.sha256
    for i in range(0, 32 * n, 32):
        head = sha(head + data[i:i + 32]).digest()
    return head


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- reading what the lake holds now ------------------------------------------------------------
def _open_events(lake: Any) -> Any:
    """A private DuckDB connection whose view ``_verify_events`` is the sealed files plus the hot rows,
    both read from disk now (the lake's reader caches hot rows, which must not be trusted here)."""
    import duckdb

    store = lake._store
    with store.hot.read():
        manifest = store.manifest()
    hot = store._read_hot(manifest.sealed_position, 1 << 62)
    con = duckdb.connect()
    con.register("_verify_hot", hot)
    columns = ", ".join(EVENT_COLUMNS)
    paths = [str(lake.path / f.path) for f in manifest.files]
    try:
        if not paths:
            raise FileNotFoundError("no sealed files")
        con.read_parquet(paths, hive_partitioning=False).create_view("_verify_sealed")
        con.execute(f"CREATE VIEW _verify_events AS SELECT {columns} FROM _verify_sealed "
                    f"UNION ALL SELECT {columns} FROM _verify_hot")
    except Exception:  # noqa: BLE001 - no files, or one no longer reads: _all_digests finds which
        con.execute(f"CREATE OR REPLACE VIEW _verify_events AS SELECT {columns} FROM _verify_hot")
    return con


def _all_digests(lake: Any, con: Any) -> tuple[pa.Table | None, list[dict[str, Any]]]:
    """Digests of every event, or ``None`` and per-file problems when a sealed file cannot be read."""
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    if "_verify_sealed" in views or not lake._store.manifest().files:
        try:
            return content_digests(con, "_verify_events"), []
        except Exception:  # noqa: BLE001 - any engine error here means a file no longer reads; find which
            pass
    problems = []
    for entry in lake._store.manifest().files:
        try:
            content_digests(con, "read_parquet(?)", [str(lake.path / entry.path)])
        except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the evidence
            problems.append({"path": entry.path, "status": "unreadable", "min_position": entry.min_position,
                             "detail": str(exc).splitlines()[0][:300]})
    return None, problems


def _stored_shorts(lake: Any, chunks: list[dict[str, Any]]) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    frames, problems = [], []
    for chunk in chunks:
        path = lake.path / chunk["path"]
        if not path.exists() or _file_sha256(path) != chunk["sha256"]:
            problems.append({"path": chunk["path"], "status": "digest file changed or missing"})
            continue
        frame = pl.from_arrow(pq.read_table(path))
        assert isinstance(frame, pl.DataFrame)
        frames.append(frame)
    empty = pl.DataFrame(schema={"position": pl.Int64, "short": pl.Binary})
    return (pl.concat(frames) if frames else empty), problems


def _file_checks(lake: Any, recorded: dict[str, str]) -> list[dict[str, Any]]:
    checks = []
    for entry in lake._store.manifest().files:
        path = lake.path / entry.path
        item = {"path": entry.path, "rows": entry.rows, "min_position": entry.min_position,
                "max_position": entry.max_position}
        if not path.exists():
            item["status"] = "missing"
        elif entry.path not in recorded:
            item["status"] = "new since checkpoint"
        else:
            item["status"] = "ok" if _file_sha256(path) == recorded[entry.path] else "bytes changed"
        checks.append(item)
    return checks


def _first_mismatch(current: pl.DataFrame, stored: pl.DataFrame, upto: int) -> int | None:
    joined = (current.filter(pl.col("position") <= upto).select("position", pl.col("short").alias("now"))
              .join(stored.filter(pl.col("position") <= upto), on="position", how="full", coalesce=True))
    bad = joined.filter(pl.col("now").is_null() | pl.col("short").is_null() | (pl.col("now") != pl.col("short")))
    return None if bad.height == 0 else int(bad["position"].min())  # type: ignore[arg-type]


def _describe_event(con: Any, position: int, files: list[dict[str, Any]]) -> dict[str, Any]:
    row = con.sql("SELECT position, event_id, event_type, aggregate_type, aggregate_id, aggregate_version, "
                  "recorded_at FROM _verify_events WHERE position = ?", params=[position]).pl()
    where = next((f["path"] for f in files if f["min_position"] <= position <= f["max_position"]), "hot tier")
    out: dict[str, Any] = {"position": position, "file": where}
    if row.height:
        out.update({k: v for k, v in row.row(0, named=True).items() if k != "position"})
        out["recorded_at"] = str(out["recorded_at"])
    else:
        out["note"] = "the checkpoint recorded an event at this position that the lake no longer holds"
    return out


# -- verify and checkpoint ----------------------------------------------------------------------
def verify(lake: Any, *, checkpoint: bool = True, raise_on_failure: bool = False) -> dict[str, Any]:
    """Recompute the chain from the lake's files and compare it with the checkpoint.

    Returns a dict: ``ok``, ``checked_events``, ``chain_head`` (hex, over every event now held),
    ``checkpoint`` (what was compared against), ``first_bad_event`` (``None`` or position, event id,
    stream and file), ``files`` (every sealed file with its status), ``problems`` and ``seconds``.
    A clean result extends the checkpoint when ``checkpoint`` is true.

    Raises
    ------
    TamperEvidenceError
        Only with ``raise_on_failure=True``, when the chain does not verify.
    """
    started = time.perf_counter()
    store = lake._store
    with store.seal_lock():  # one consistent snapshot: the manifest, its checkpoint, the hot rows
        recorded = store.manifest().extra.get(EXTRA_KEY) or {}
        con = _open_events(lake)
    try:  # the long part runs without the lock: sealed files never change, seals and imports go on
        result, fresh = _check(lake, con, recorded)
        if result["ok"] and checkpoint and fresh is not None:
            with store.seal_lock():
                unchanged = (store.manifest().extra.get(EXTRA_KEY) or {}).get("position") == recorded.get("position")
                if unchanged:  # otherwise another process extended it meanwhile
                    result["checkpoint_extended_to"] = _extend(lake, recorded, fresh, result["chain_head"],
                                                               result["checked_events"])
    finally:
        con.close()
    result["seconds"] = round(time.perf_counter() - started, 3)
    if raise_on_failure and not result["ok"]:
        raise TamperEvidenceError(f"the lake's hash chain does not verify: first bad event "
                                  f"{result['first_bad_event']}, problems {result['problems'][:3]}")
    return result


def _check(lake: Any, con: Any, recorded: dict[str, Any]) -> tuple[dict[str, Any], pa.Table | None]:
    """Compare the lake's content with the checkpoint; returns the result and the events past it."""
    files = _file_checks(lake, recorded.get("files", {}))
    digests, unreadable = _all_digests(lake, con)
    stored, digest_problems = _stored_shorts(lake, recorded.get("digests", []))
    problems = [f for f in files if f["status"] in ("bytes changed", "missing")] + unreadable + digest_problems
    upto = int(recorded.get("position", 0))
    first_bad: dict[str, Any] | None = None
    head_now, checked, fresh = None, 0, None
    if digests is None:
        first_bad = {"position": min(p["min_position"] for p in unreadable), "file": unreadable[0]["path"],
                     "note": "the file no longer reads as Parquet"}
    else:
        checked = digests.num_rows
        covered = digests.filter(pa.compute.less_equal(digests["position"], upto))
        fresh = digests.slice(covered.num_rows)
        head_at_checkpoint = chain_head(covered["digest"])
        head_now = chain_head(fresh["digest"], head_at_checkpoint).hex()
        if recorded and (head_at_checkpoint.hex() != recorded["head"] or covered.num_rows != recorded["events"]):
            current = pl.from_arrow(digests.select(["position", "short"]))
            assert isinstance(current, pl.DataFrame)
            bad = _first_mismatch(current, stored, upto)
            first_bad = _describe_event(con, bad, files) if bad is not None else {
                "position": None, "note": "the chain head differs but every stored digest matches"}
    result: dict[str, Any] = {
        "ok": first_bad is None and not problems,
        "checked_events": checked,
        "chain_head": head_now,
        "checkpoint": {k: v for k, v in recorded.items() if k in ("position", "events", "head", "at")} or None,
        "first_bad_event": first_bad,
        "files": files,
        "problems": problems,
        "verified_at": datetime.now(timezone.utc).isoformat(),
    }
    return result, fresh


def _extend(lake: Any, recorded: dict[str, Any], fresh: pa.Table, head: str, total: int) -> int:
    """Write a digest file for ``fresh`` (the events past the checkpoint) and publish the new checkpoint
    (chain ``head`` over ``total`` events). Callers hold the seal lock."""
    store = lake._store
    upto = int(recorded.get("position", 0))
    if fresh.num_rows == 0 and recorded:
        return upto
    chunks = list(recorded.get("digests", []))
    if fresh.num_rows:
        lo, hi = fresh["position"][0].as_py(), fresh["position"][-1].as_py()
        folder = lake.path / DIGEST_DIR
        folder.mkdir(exist_ok=True)
        rel = f"{DIGEST_DIR}/digests-{lo:012d}-{hi:012d}.parquet"
        tmp = lake.path / (rel + ".tmp")
        pq.write_table(fresh.select(["position", "short"]), tmp, compression="zstd")
        tmp.replace(lake.path / rel)
        chunks.append({"path": rel, "sha256": _file_sha256(lake.path / rel), "first": lo, "last": hi})
    manifest = store.manifest()
    hashes = dict(recorded.get("files", {}))
    for entry in manifest.files:
        if entry.path not in hashes:
            hashes[entry.path] = _file_sha256(lake.path / entry.path)
    listed = {e.path for e in manifest.files}
    last = fresh["position"][-1].as_py() if fresh.num_rows else upto
    body = {
        "position": last, "events": total, "head": head, "digests": chunks,
        "files": {p: h for p, h in hashes.items() if p in listed},
        "at": datetime.now(timezone.utc).isoformat(),
    }
    updated = manifest.next(extra={**manifest.extra, EXTRA_KEY: body})
    store._publish(updated)
    with store.hot.write():
        store._apply(updated, {})
    return int(last)


FIRST_CHECKPOINT_LIMIT = 2_000_000
"""``lake.seal()`` starts a lake's chain on its own only up to this many events (a few seconds of hashing);
a larger lake without a checkpoint starts it with ``lake.verify()``."""


def checkpoint(lake: Any, *, start_limit: int | None = None) -> dict[str, Any]:
    """Extend the checkpoint over the events recorded since, without re-verifying older ones.

    Cheap (it reads only the new events), so ``lake.seal()`` runs it after every seal: events become
    tamper-evident as soon as they are sealed. Returns ``position``, ``events``, ``head`` and ``added``.
    With ``start_limit``, a lake without a checkpoint that holds more events than that is left alone
    (``{"skipped": ...}``): its first checkpoint hashes everything once, which ``verify`` does on request.
    """
    store = lake._store
    with store.seal_lock():
        recorded = store.manifest().extra.get(EXTRA_KEY) or {}
        if not recorded and start_limit is not None and store.hot.max_position() > start_limit:
            return {"skipped": f"no checkpoint yet and more than {start_limit:,} events; run lake.verify() "
                               "once to start the chain, later seals extend it"}
        upto = int(recorded.get("position", 0))
        con = _open_events(lake)
        try:
            fresh = content_digests(con, "(SELECT * FROM _verify_events WHERE position > ?)", [upto])
        finally:
            con.close()
        start = bytes.fromhex(recorded["head"]) if recorded else GENESIS
        head = chain_head(fresh["digest"], start).hex()
        total = int(recorded.get("events", 0)) + fresh.num_rows
        position = _extend(lake, recorded, fresh, head, total)
    return {"position": position, "events": total, "head": head, "added": fresh.num_rows}
