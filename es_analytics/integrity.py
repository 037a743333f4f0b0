"""Tamper evidence: a hash chain over every event in position order, checkpointed in two places.

Each event's *content digest* is SHA-256 over its canonical content: the eleven fields of the event record
in schema order, times as integer microseconds, joined by the unit separator ``\\x1f`` (no field can hold
it: ids and types refuse control characters and JSON escapes them). The chain links them::

    head_0 = 32 zero bytes
    head_i = SHA-256(head_{i-1} || digest_i)          for the events in position order

Digests cover the *stored* text, so encrypted personal fields stay covered and forgetting a subject (which
deletes a key, never an event) leaves the chain intact.

A checkpoint records the chain head and event count up to a position, the SHA-256 of every sealed file it
saw, and the list of digest files (``integrity/*.parquet``: each event's position and the first 8 bytes of
its digest, with their own SHA-256s and the chain head at their last event). It is kept in the manifest's
``extra["integrity"]`` and, as its anchor, in the hot tier (``hot.sqlite``); a lake starts its chain from
genesis when it is created, and every way events enter the sealed tier (seals, automatic seals, bulk
imports: ingest, sample data) extends it at once, so sealed history is tamper-evident before anyone calls
:func:`verify`. A checkpoint can only grow: each one's digest list extends the previous one's. A copy that
is missing, older than the other, or not on the other's line, and a digest file of an earlier chain the
checkpoint does not list, are findings: removing or resetting the checkpoint no longer restarts the chain
silently.

:func:`verify` recomputes everything from the files, compares, and names the first event whose stored
content no longer matches (or the first file that no longer reads); a clean run extends the checkpoint to
the newest event. Publish the chain head somewhere else (a report, a ticket) to make even a rewrite of the
whole lake, both copies of the checkpoint included, detectable.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import EsAnalyticsError, LakeError, TamperEvidenceError
from .events import EVENT_COLUMNS

if TYPE_CHECKING:
    from .store.engine import LakeStore

__all__ = ["CANONICAL_SQL", "GENESIS", "chain_head", "checkpoint", "content_digests", "verify"]

GENESIS = bytes(32)
DIGEST_DIR = "integrity"
EXTRA_KEY = "integrity"
ANCHOR_KEY = "integrity_checkpoint"  # the hot tier's copy of the checkpoint (its ``meta`` table)
_FIELDS = (
    "position::VARCHAR", "event_id", "event_type", "schema_version::VARCHAR", "aggregate_type", "aggregate_id",
    "aggregate_version::VARCHAR", "epoch_us(occurred_at)::VARCHAR", "epoch_us(recorded_at)::VARCHAR",
    "data", "metadata",
)
CANONICAL_SQL = f"concat_ws(chr(31), {', '.join(_FIELDS)})"
"""The canonical content of an event as DuckDB SQL over the event record's columns."""
_STORAGE_ERRORS = (OSError, sqlite3.Error, EsAnalyticsError)  # a full disk, a locked or damaged hot tier


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


# -- the two copies of the checkpoint -----------------------------------------------------------
def _copies(store: LakeStore) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The manifest's checkpoint (``{}`` if none) and the hot tier's anchor (``None`` if none)."""
    recorded = store.manifest().extra.get(EXTRA_KEY) or {}
    with store.hot.read():
        text = store.hot.meta(ANCHOR_KEY)
    try:
        anchor = json.loads(text) if text is not None else None
    except ValueError:
        anchor = {"unreadable": True, "position": 1 << 62}
    return recorded, anchor if isinstance(anchor, dict) else None


def _descends(older: dict[str, Any], newer: dict[str, Any]) -> bool:
    """Whether checkpoint ``newer`` extends ``older``: its digest files start with the older one's (same
    names, hashes and heads) and it covers at least as much."""
    if int(newer.get("position", 0)) < int(older.get("position", 0)):
        return False
    mine = list(older.get("digests", []))
    if newer.get("digests", [])[:len(mine)] != mine:
        return False
    return older.get("position") != newer.get("position") or older.get("head") == newer.get("head")


def _choose(store: LakeStore) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """The checkpoint to verify against, the other copy to verify at its own position (or ``None``), and
    findings about the copies themselves."""
    recorded, anchor = _copies(store)
    if anchor is None or not int(anchor.get("position", 0)):  # no anchor yet (older lakes) or genesis
        return recorded, None, []
    if anchor.get("unreadable"):
        return recorded, None, [{"path": "hot.sqlite", "status": "checkpoint copy unreadable",
                                 "detail": "the hot tier's copy of the integrity checkpoint is not JSON"}]
    where = f"positions 1..{anchor['position']} ({anchor.get('events')} events, head {anchor.get('head')})"
    if not recorded:
        return anchor, None, [{"path": "manifest.json", "status": "checkpoint missing",
                               "detail": f"the manifest holds no integrity checkpoint, but its copy in the hot "
                                         f"tier covers {where}: it was removed or the manifest replaced"}]
    if _descends(anchor, recorded):
        return recorded, (anchor if anchor.get("position") != recorded.get("position") else None), []
    if _descends(recorded, anchor):
        return anchor, recorded, [{"path": "manifest.json", "status": "checkpoint rolled back",
                                   "detail": f"the manifest's checkpoint covers positions 1..{recorded.get('position')}, "
                                             f"its copy in the hot tier {where}"}]
    return recorded, anchor, [{"path": "manifest.json", "status": "checkpoint reset",
                               "detail": f"the manifest's checkpoint does not extend its copy in the hot tier "
                                         f"({where}): the chain was started again"}]


def _unlisted_digest_files(store: LakeStore, recorded: dict[str, Any], anchored: bool) -> list[dict[str, Any]]:
    """Digest files the checkpoint does not list, except the leftover of an interrupted extension (which
    starts right past the checkpoint, and is replaced by the next one); with neither copy of the checkpoint
    (``anchored`` false) every digest file is one."""
    folder = store.folder / DIGEST_DIR
    listed = {c["path"] for c in recorded.get("digests", [])}
    pending = int(recorded.get("position", 0)) + 1
    problems = []
    for path in sorted(folder.glob("digests-*.parquet")) if folder.exists() else []:
        rel = f"{DIGEST_DIR}/{path.name}"
        try:
            first = int(path.stem.split("-")[1])
        except (IndexError, ValueError):
            first = 0
        if rel not in listed and (first != pending or not anchored):
            problems.append({"path": rel, "status": "digest file not in the checkpoint",
                             "detail": "digests of an earlier chain over these positions: the checkpoint was "
                                       "removed or started again"})
    return problems


# -- reading what the lake holds now ------------------------------------------------------------
def _open_events(store: LakeStore, after: int = 0) -> duckdb.DuckDBPyConnection:
    """A private DuckDB connection whose view ``_verify_events`` is the sealed files plus the hot rows,
    both read from disk now (the lake's reader caches hot rows, which must not be trusted here); with
    ``after``, only the files that hold events past that position."""
    with store.hot.read():
        manifest = store.manifest()
    hot = store._read_hot(manifest.sealed_position, 1 << 62)
    con = duckdb.connect()
    con.register("_verify_hot", hot)
    columns = ", ".join(EVENT_COLUMNS)
    paths = [str(store.folder / f.path) for f in manifest.files if f.max_position > after]
    try:
        if not paths:
            raise FileNotFoundError("no sealed files")
        con.read_parquet(paths, hive_partitioning=False).create_view("_verify_sealed")
        con.execute(f"CREATE VIEW _verify_events AS SELECT {columns} FROM _verify_sealed "
                    f"UNION ALL SELECT {columns} FROM _verify_hot")
    except Exception:  # noqa: BLE001 - no files, or one no longer reads: _all_digests finds which
        con.execute(f"CREATE OR REPLACE VIEW _verify_events AS SELECT {columns} FROM _verify_hot")
    return con


def _reads_sealed(con: Any) -> bool:
    """Whether ``_open_events`` could open the sealed files (else its view holds the hot rows alone)."""
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    return "_verify_sealed" in views


def _all_digests(store: LakeStore, con: Any) -> tuple[pa.Table | None, list[dict[str, Any]]]:
    """Digests of every event, or ``None`` and per-file problems when a sealed file cannot be read."""
    if _reads_sealed(con) or not store.manifest().files:
        try:
            return content_digests(con, "_verify_events"), []
        except Exception:  # noqa: BLE001 - any engine error here means a file no longer reads; find which
            pass
    problems, parts = [], []
    for entry in store.manifest().files:  # one file at a time: which ones no longer read?
        try:
            parts.append(content_digests(con, "read_parquet(?)", [str(store.folder / entry.path)]))
        except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the evidence
            problems.append({"path": entry.path, "status": "unreadable", "min_position": entry.min_position,
                             "detail": str(exc).splitlines()[0][:300]})
    if problems:
        return None, problems
    # Each reads alone but not together (a footer that no longer agrees with the others' schema)
    parts.append(content_digests(con, "_verify_hot"))
    schema = pa.schema([("position", pa.int64()), ("digest", pa.binary()), ("short", pa.binary())])
    try:
        return pa.concat_tables([t.cast(schema) for t in parts]).sort_by("position"), []
    except pa.ArrowException as exc:
        return None, [{"path": "events", "status": "unreadable", "min_position": 1,
                       "detail": f"the sealed files no longer share the event schema: {exc}"}]


def _stored_shorts(store: LakeStore, chunks: list[dict[str, Any]]) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    frames, problems = [], []
    for chunk in chunks:
        path = store.folder / chunk["path"]
        if not path.exists() or _file_sha256(path) != chunk["sha256"]:
            problems.append({"path": chunk["path"], "status": "digest file changed or missing"})
            continue
        frame = pl.from_arrow(pq.read_table(path))
        assert isinstance(frame, pl.DataFrame)
        frames.append(frame)
    empty = pl.DataFrame(schema={"position": pl.Int64, "short": pl.Binary})
    return (pl.concat(frames) if frames else empty), problems


def _file_checks(store: LakeStore, recorded: dict[str, str]) -> list[dict[str, Any]]:
    checks = []
    for entry in store.manifest().files:
        path = store.folder / entry.path
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
    where = next((f["path"] for f in files if f["min_position"] <= position <= f["max_position"]), "hot tier")
    out: dict[str, Any] = {"position": position, "file": where}
    try:
        row = con.sql("SELECT position, event_id, event_type, aggregate_type, aggregate_id, aggregate_version, "
                      "recorded_at FROM _verify_events WHERE position = ?", params=[position]).pl()
        values = row.row(0, named=True) if row.height else None
    except Exception:  # noqa: BLE001 - e.g. text no longer UTF-8, a time out of range: position and file say where
        out["note"] = "the stored event no longer reads"
        return out
    if values is not None:
        out.update({k: v for k, v in values.items() if k != "position"})
        out["recorded_at"] = str(out["recorded_at"])
    else:
        out["note"] = "the checkpoint recorded an event at this position that the lake no longer holds"
    return out


# -- verify and checkpoint ----------------------------------------------------------------------
def verify(lake: Any, *, checkpoint: bool = True, raise_on_failure: bool = False) -> dict[str, Any]:
    """Recompute the chain from the lake's files and compare it with the checkpoint and its copy.

    Returns a dict: ``ok``, ``checked_events``, ``chain_head`` (hex, over every event now held),
    ``checkpoint`` (what was compared against), ``first_bad_event`` (``None`` or position, event id,
    stream and file), ``files`` (every sealed file with its status), ``problems`` and ``seconds``.
    A clean result extends the checkpoint when ``checkpoint`` is true; so does a result whose only findings
    are a missing or older copy of the checkpoint while the events verify against the other one (which is
    then written back: ``checkpoint_restored``). When the extended checkpoint cannot be written (a full
    disk) the result says so in ``checkpoint_error`` and the lake is left as it was.

    Raises
    ------
    TamperEvidenceError
        Only with ``raise_on_failure=True``, when the chain does not verify.
    """
    started = time.perf_counter()
    store = lake._store
    pin = ExitStack()
    with store.seal_lock():  # one consistent snapshot: the manifest, its checkpoint, the hot rows
        recorded, other, copy_problems = _choose(store)
        anchored = bool(recorded) or _copies(store)[1] is not None
        pin.enter_context(store.pins.pinned(store.manifest().generation))  # compaction keeps its files
        con = _open_events(store)
    try:  # the long part runs without the lock: sealed files never change, seals and imports go on
        result, fresh = _check(store, con, recorded, other)
        result["problems"] = copy_problems + _unlisted_digest_files(store, recorded, anchored) + result["problems"]
        result["ok"] = result["ok"] and not result["problems"]
        restorable = all(p["status"] in ("checkpoint missing", "checkpoint rolled back") for p in result["problems"])
        if checkpoint and fresh is not None and restorable and result["first_bad_event"] is None:
            with store.seal_lock():
                if _choose(store)[0].get("position") == recorded.get("position"):  # else extended meanwhile
                    try:
                        result["checkpoint_extended_to"] = _extend(store, recorded, fresh, result["chain_head"],
                                                                   result["checked_events"])
                        if result["problems"]:
                            result["checkpoint_restored"] = True
                    except _STORAGE_ERRORS as exc:
                        result["checkpoint_error"] = f"the extended checkpoint could not be written: {exc}"
    finally:
        con.close()
        pin.close()
    result["seconds"] = round(time.perf_counter() - started, 3)
    if raise_on_failure and not result["ok"]:
        raise TamperEvidenceError(f"the lake's hash chain does not verify: first bad event "
                                  f"{result['first_bad_event']}, problems {result['problems'][:3]}")
    return result


def _heads_through(digests: pa.Table, cuts: list[int]) -> tuple[dict[int, tuple[str, int]], bytes, int]:
    """The chain head and event count through each position of ``cuts`` (ascending), then the head and
    count through the last digest; the chain is computed once."""
    positions = digests["position"].to_numpy()
    heads: dict[int, tuple[str, int]] = {}
    head, done = GENESIS, 0
    for cut in cuts:
        upto = int(np.searchsorted(positions, cut, side="right"))
        head = chain_head(digests["digest"].slice(done, upto - done), head)
        done = upto
        heads[cut] = (head.hex(), upto)
    return heads, head, done


def _check(store: LakeStore, con: Any, recorded: dict[str, Any],
           other: dict[str, Any] | None = None) -> tuple[dict[str, Any], pa.Table | None]:
    """Compare the lake's content with the checkpoint (and with ``other``, the other copy, at its own
    position); returns the result and the events past the checkpoint."""
    files = _file_checks(store, recorded.get("files", {}))
    digests, unreadable = _all_digests(store, con)
    stored, digest_problems = _stored_shorts(store, recorded.get("digests", []))
    problems = [f for f in files if f["status"] in ("bytes changed", "missing")] + unreadable + digest_problems
    upto = int(recorded.get("position", 0))
    first_bad: dict[str, Any] | None = None
    head_now, checked, fresh = None, 0, None
    if digests is None:
        first_bad = {"position": min(p["min_position"] for p in unreadable), "file": unreadable[0]["path"],
                     "note": "the file no longer reads as Parquet"}
    else:
        checked = digests.num_rows
        points = {c for c in (upto, int((other or {}).get("position", 0))) if c}
        heads, head, done = _heads_through(digests, sorted(points))
        head_now = chain_head(digests["digest"].slice(done), head).hex()
        fresh = digests.slice(heads[upto][1] if upto else 0)
        mismatched = [cp for cp in (recorded, other)
                      if cp and cp.get("position") and heads[int(cp["position"])] != (cp["head"], int(cp["events"]))]
        if other is not None and other in mismatched:
            problems.append({"path": "hot.sqlite", "status": "chain differs from its copy",
                             "detail": f"the chain through position {other['position']} no longer has the head "
                                       f"the other copy of the checkpoint recorded ({other.get('head')})"})
        if mismatched:
            cp = mismatched[0]
            shorts = stored if cp is recorded else _stored_shorts(store, cp.get("digests", []))[0]
            current = pl.from_arrow(digests.select(["position", "short"]))
            assert isinstance(current, pl.DataFrame)
            bad = _first_mismatch(current, shorts, int(cp["position"]))
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


def _extend(store: LakeStore, recorded: dict[str, Any], fresh: pa.Table, head: str, total: int) -> int:
    """Write a digest file for ``fresh`` (the events past the checkpoint) and publish the new checkpoint
    (chain ``head`` over ``total`` events, the SHA-256 of every listed sealed file, also of files that
    compaction wrote since) in the manifest and in the hot tier. Callers hold the seal lock.

    The digest file is named after its first position, so a retry after a crash replaces its own leftover;
    a write that fails (a full disk) leaves no partial file and both copies as they were."""
    upto = int(recorded.get("position", 0))
    chunks = list(recorded.get("digests", []))
    if fresh.num_rows:
        lo, hi = fresh["position"][0].as_py(), fresh["position"][-1].as_py()
        folder = store.folder / DIGEST_DIR
        folder.mkdir(exist_ok=True)
        rel = f"{DIGEST_DIR}/digests-{lo:012d}.parquet"
        tmp = store.folder / (rel + ".tmp")
        try:
            pq.write_table(fresh.select(["position", "short"]), tmp, compression="zstd")
            tmp.replace(store.folder / rel)
        finally:
            tmp.unlink(missing_ok=True)
        chunks.append({"path": rel, "sha256": _file_sha256(store.folder / rel), "first": lo, "last": hi,
                       "head": head})
    manifest = store.manifest()
    hashes = dict(recorded.get("files", {}))
    for entry in manifest.files:
        if entry.path not in hashes:
            hashes[entry.path] = _file_sha256(store.folder / entry.path)
    listed = {e.path for e in manifest.files}
    files = {p: h for p, h in hashes.items() if p in listed}
    if not fresh.num_rows and recorded and files == recorded.get("files"):
        _publish(store, recorded)  # nothing new: only bring a missing or older copy up to it
        return upto
    last = fresh["position"][-1].as_py() if fresh.num_rows else upto
    _publish(store, {
        "position": last, "events": total, "head": head, "digests": chunks, "files": files,
        "at": datetime.now(timezone.utc).isoformat() if fresh.num_rows or not recorded else recorded.get("at"),
    })
    return int(last)


def _publish(store: LakeStore, body: dict[str, Any]) -> None:
    """Make ``body`` the checkpoint: first in the manifest, then its copy in the hot tier (a crash in
    between leaves the copy one step behind, on the same line). A copy that holds it already is kept."""
    recorded, anchor = _copies(store)
    if recorded != body:
        manifest = store.manifest()
        updated = manifest.next(extra={**manifest.extra, EXTRA_KEY: body})
        store._publish(updated)
        with store.hot.write():
            store._apply(updated, {})
    if anchor != body:
        _write_anchor(store, body)


def _write_anchor(store: LakeStore, body: dict[str, Any]) -> None:
    with store.hot.write():
        store.hot.set_meta(ANCHOR_KEY, json.dumps(body, sort_keys=True))


def start(store: LakeStore) -> None:
    """Anchor the chain of a lake that holds no events yet at genesis (called when a lake is opened), so
    that every later way of adding events extends it from the start whatever its size."""
    with store.hot.read():
        if store.hot.meta(ANCHOR_KEY) is not None or store.hot.max_position():
            return
    if store.manifest().extra.get(EXTRA_KEY):
        return
    _write_anchor(store, {"position": 0, "events": 0, "head": GENESIS.hex(), "digests": [], "files": {}})


FIRST_CHECKPOINT_LIMIT = 2_000_000
"""A lake made before its chain was anchored at creation starts it on a seal only up to this many events (a
few seconds of hashing); a larger one without a checkpoint starts it with ``lake.verify()``."""


def checkpoint(lake: Any, *, start_limit: int | None = None) -> dict[str, Any]:
    """Extend the checkpoint over the events recorded since, without re-verifying older ones.

    Cheap (it reads only the new events), so every seal and bulk import runs it: events become
    tamper-evident as soon as they are sealed. Returns ``position``, ``events``, ``head`` and ``added``.
    With ``start_limit``, a lake without any checkpoint that holds more events than that is left alone
    (``{"skipped": ...}``): its first checkpoint hashes everything once, which ``verify`` does on request.
    A lake whose two copies of the checkpoint disagree is left alone too: ``verify`` reports why.

    Raises
    ------
    LakeError
        The checkpoint could not be written (e.g. the disk is full); the lake is left as it was.
    """
    return extend(lake._store, start_limit=start_limit)


def extend_after_seal(store: LakeStore) -> dict[str, Any]:
    """What the storage engine runs after every seal and bulk import (``LakeStore.extend_chain``)."""
    return extend(store, start_limit=FIRST_CHECKPOINT_LIMIT)


def extend(store: LakeStore, *, start_limit: int | None = None) -> dict[str, Any]:
    """:func:`checkpoint` on the storage engine (it runs this after seals and imports)."""
    with store.seal_lock():
        recorded, other, copy_problems = _choose(store)
        if copy_problems:
            return {"skipped": "the checkpoint and its copy in the hot tier disagree; run lake.verify()"}
        _, anchor = _copies(store)
        if not recorded and anchor is None and start_limit is not None and store.hot.max_position() > start_limit:
            return {"skipped": f"no checkpoint yet and more than {start_limit:,} events; run lake.verify() "
                               "once to start the chain, later seals extend it"}
        upto = int(recorded.get("position", 0))
        con = _open_events(store, after=upto)
        try:
            if any(f.max_position > upto for f in store.manifest().files) and not _reads_sealed(con):
                raise LakeError("a sealed file with events past the checkpoint does not read; lake.verify() says which")
            fresh = content_digests(con, "(SELECT * FROM _verify_events WHERE position > ?)", [upto])
        except duckdb.Error as exc:
            raise LakeError(f"the events past the integrity checkpoint do not read: {exc}") from exc
        finally:
            con.close()
        if not fresh.num_rows and not recorded:
            return {"position": 0, "events": 0, "head": GENESIS.hex(), "added": 0}
        start_head = bytes.fromhex(recorded["head"]) if recorded else GENESIS
        head = chain_head(fresh["digest"], start_head).hex()
        total = int(recorded.get("events", 0)) + fresh.num_rows
        try:
            position = _extend(store, recorded, fresh, head, total)
        except _STORAGE_ERRORS as exc:
            raise LakeError(f"the integrity checkpoint could not be written: {exc}") from exc
    return {"position": position, "events": total, "head": head, "added": fresh.num_rows}
