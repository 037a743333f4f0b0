"""``lake.forget``: crypto-shred a data subject, purge derived copies, and prove it with a scan.

The steps, each safe to repeat, in an order that keeps the key and the tombstone consistent:

1. read the subject's events and decrypt their personal values *in memory* (the scan's needles);
2. append a ``SubjectForgotten`` tombstone to the stream ``privacy:<subject>`` (once: a rerun finds it);
3. delete the snapshots of every aggregate that held the subject's data, overwriting freed SQLite pages
   (``secure_delete``) and truncating the write-ahead log;
4. delete the subject's key (state ``shredded``): from now on every reader shows ``ERASED``;
5. scan every file under the lake folder for the plaintext values and the key bytes (raw bytes, and
   decoded Parquet columns, because Parquet pages are compressed); derived files that still hold them
   are removed (projection caches) or rewritten (SQLite ``VACUUM``) and the scan runs again;
6. record the certificate in the key store (state ``forgotten``).

A crash before step 4 leaves the key, so a rerun redoes everything; a crash after it leaves the state
``shredded`` and a rerun finishes steps 5-6 (the plaintext needles are then unknown, which the
certificate says).
"""

from __future__ import annotations

import base64
import hashlib
import json
import mmap
import os
import re
import shutil
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DuplicateEventError, PrivacyError, SubjectForgottenError, UnknownSubjectError
from .events import Event, check_aggregate_id
from .privacy import ENVELOPE_KEY, Privacy, walk_envelopes

__all__ = ["TOMBSTONE_TYPE", "TOMBSTONE_AGGREGATE_TYPE", "forget", "scan_files", "subject_events", "tombstone_stream"]

TOMBSTONE_TYPE = "SubjectForgotten"
TOMBSTONE_AGGREGATE_TYPE = "DataSubject"
DERIVED_DIRS = ("projections", "cache", "caches", "snapshots")
MIN_NEEDLE = 4


def tombstone_stream(subject_id: str) -> str:
    """The stream that holds a subject's privacy events (its ``SubjectForgotten`` tombstone)."""
    return f"privacy:{subject_id}"


def _tombstone_id(subject_id: str) -> str:
    return "forget-" + hashlib.sha256(subject_id.encode("utf-8")).hexdigest()[:32]


def subject_events(lake: Any, subject_id: str) -> pl.DataFrame:
    """Stored events holding an envelope of ``subject_id`` (data still encrypted), in position order."""
    marker = '"sub":' + json.dumps(subject_id, ensure_ascii=False)
    frame: pl.DataFrame = lake._query(
        "SELECT position, event_id, event_type, schema_version, aggregate_type, aggregate_id, aggregate_version, "
        "occurred_at, recorded_at, data, metadata FROM events WHERE contains(data, ?) AND contains(data, ?) "
        "ORDER BY position",
        [marker, f'"{ENVELOPE_KEY}"'],
        what="finding a subject's events",
    )
    keep = [any(env.get("sub") == subject_id for _, env, _, _ in walk_envelopes(json.loads(t)))
            for t in frame["data"].to_list()]
    return frame.filter(pl.Series(keep, dtype=pl.Boolean))


def _plaintext_values(privacy: Privacy, frame: pl.DataFrame, subject_id: str) -> tuple[list[Any], list[str]]:
    """The subject's personal values in clear, and where an envelope did not decrypt (damaged or forged
    ciphertext: reported, never a reason to keep the key)."""
    keys = privacy.key_store.keys_for([subject_id])
    values: list[Any] = []
    damaged: list[str] = []
    for event_id, text in frame.select("event_id", "data").iter_rows():
        for path, envelope, _, _ in walk_envelopes(json.loads(text)):
            if envelope.get("sub") == subject_id:
                try:
                    values.append(privacy.cipher.open_value(envelope, event_id, path, keys))
                except PrivacyError:
                    damaged.append(f"{event_id}:{path}")
    return values, damaged


# A subject id that is itself personal data stays in the events (subject fields, the tombstone's stream).
_PERSONAL_ID = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+|\+?[0-9][0-9 ()./-]{6,}[0-9]")


def needles_for(values: Iterable[Any]) -> list[bytes]:
    """Byte strings to look for: every text leaf of the values, raw and as escaped in JSON."""
    out: set[bytes] = set()
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif value is not None and not isinstance(value, bool):
            text = value if isinstance(value, str) else json.dumps(value)
            for form in (text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]):
                raw = form.encode("utf-8")
                if len(raw) >= MIN_NEEDLE:
                    out.add(raw)
    return sorted(out)


# -- the scan -----------------------------------------------------------------------------------
def _raw_hits(path: Path, needles: list[tuple[str, bytes]]) -> list[str]:
    try:
        size = path.stat().st_size
        if size == 0:
            return []
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return sorted({label for label, needle in needles if view.find(needle) != -1})
    except (FileNotFoundError, ValueError):
        return []


def _value_bytes(array: pa.Array) -> bytes:
    """The raw value bytes of a decoded string column (its dictionary's, if dictionary-encoded)."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary
    buffers = array.buffers()
    return b"" if len(buffers) < 3 or buffers[2] is None else buffers[2].to_pybytes()


def _parquet_hits(path: Path, needles: list[tuple[str, bytes]]) -> list[str]:
    """Search the decoded text columns of a Parquet file (its pages are compressed on disk).

    Each decoded column's value buffer is searched as one block of bytes (``bytes.find``, no per-row work).
    """
    try:
        handle = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid):
        return []
    columns = [f.name for f in handle.schema_arrow
               if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
               or (pa.types.is_dictionary(f.type) and pa.types.is_string(f.type.value_type))]
    found: set[str] = set()
    try:
        for batch in handle.iter_batches(columns=columns, batch_size=262_144):
            for column in batch.columns:
                block = _value_bytes(column)
                found.update(label for label, needle in needles if label not in found and block.find(needle) != -1)
    except (OSError, pa.ArrowInvalid):
        pass
    return sorted(found)


def scan_files(folder: Path, needles: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Look for each labelled byte string in every file under ``folder``.

    Raw bytes of every file (SQLite databases and their WAL, JSON, key store, anything), plus the decoded
    text columns of every Parquet file. Returns what was scanned and where anything was found.
    """
    started = time.perf_counter()
    files, found, total = [], [], 0
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
            files.append(rel)
            hits = {(label, "raw bytes") for label in _raw_hits(path, needles)}
            if name.endswith(".parquet"):
                hits |= {(label, "decoded Parquet") for label in _parquet_hits(path, needles)}
            found += [{"path": rel, "what": label, "how": how} for label, how in sorted(hits)]
    return {
        "files_scanned": len(files),
        "bytes_scanned": total,
        "needles": len(needles),
        "found": found,
        "files": sorted(files),
        "seconds": round(time.perf_counter() - started, 3),
    }


# -- wiping derived copies ----------------------------------------------------------------------
def _delete_snapshots(lake: Any, aggregate_ids: list[str]) -> int:
    hot = lake._store.hot
    exists = hot.con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'snapshots'").fetchone()
    if not exists or not aggregate_ids:
        return 0
    try:
        from .repository import SnapshotStore
    except ImportError:  # pragma: no cover - the repository module is part of the package
        return 0
    store = SnapshotStore(hot)
    return sum(store.delete(a) for a in aggregate_ids)


def _wipe_sqlite(con: Any, *, vacuum: bool) -> dict[str, Any]:
    """Overwrite freed pages (VACUUM if asked) and fold the WAL back into the database, truncating it."""
    if vacuum:
        con.execute("VACUUM")
    row = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return {"vacuumed": vacuum, "checkpoint_busy": bool(row and row[0])}


def _remediate(lake: Any, found: list[dict[str, Any]]) -> list[str]:
    """Remove or rewrite derived files that still hold a needle; returns what was done."""
    done: list[str] = []
    folder: Path = lake.path
    for rel in sorted({f["path"] for f in found}):
        parts = rel.split(os.sep)
        if parts[0] == "projections" and len(parts) > 2:
            # a materialised projection is one folder (files + state.json): drop it whole; it rebuilds
            shutil.rmtree(folder / parts[0] / parts[1], ignore_errors=True)
            note = f"dropped materialised projection {parts[1]!r} (materialise it again to rebuild)"
            done += [] if note in done else [note]
        elif parts[0] in DERIVED_DIRS:
            (folder / rel).unlink(missing_ok=True)
            done.append(f"deleted derived file {rel}")
        elif rel.startswith("hot.sqlite"):
            if "vacuumed hot.sqlite" not in done:
                _wipe_sqlite(lake._store.hot.con, vacuum=True)
                done.append("vacuumed hot.sqlite")
        elif rel.startswith("keys.sqlite"):
            key_store = lake.key_store
            if hasattr(key_store, "_connect") and "vacuumed keys.sqlite" not in done:
                key_store._connect().execute("VACUUM")
                key_store.wipe()
                done.append("vacuumed keys.sqlite")
    return done


# -- forget -------------------------------------------------------------------------------------
def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def _append_tombstone(lake: Any, subject_id: str, frame: pl.DataFrame, reason: str | None,
                      actor: str | None) -> int:
    stream = tombstone_stream(subject_id)
    event_id = _tombstone_id(subject_id)
    existing = lake.events(stream, types=TOMBSTONE_TYPE)
    if existing.height == 0:
        data = {"subjectId": subject_id, "events": frame.height,
                "aggregates": sorted(set(frame["aggregate_id"].to_list()))}
        if reason:
            data["reason"] = reason
        metadata = {"command": "forget", **({"user_id": actor} if actor else {})}
        try:
            lake.append(stream, [Event(TOMBSTONE_TYPE, data, metadata=metadata, event_id=event_id)],
                        expected_version=None, aggregate_type=TOMBSTONE_AGGREGATE_TYPE)
        except DuplicateEventError:  # a concurrent forget of the same subject wrote it first
            pass
        existing = lake.events(stream, types=TOMBSTONE_TYPE)
    return int(existing["position"][0])


def forget(lake: Any, subject_id: str, *, reason: str | None = None, actor: str | None = None) -> dict[str, Any]:
    """Crypto-shred ``subject_id`` in ``lake`` and verify no file holds its plaintext (see module docs)."""
    subject_id = check_aggregate_id(subject_id, "subject_id")
    privacy: Privacy = lake._privacy
    state, info = privacy.key_store.state(subject_id)
    if state == "forgotten":
        raise SubjectForgottenError(
            subject_id, f"forgotten at {info.get('forgotten_at_iso', '?')}; see its erasure certificate"
        )
    if state == "unknown":
        raise UnknownSubjectError(subject_id, "no key was ever made for it (check the id's spelling)")
    started = time.perf_counter()
    frame = subject_events(lake, subject_id)
    aggregates = sorted(set(frame["aggregate_id"].to_list()))
    values, damaged = _plaintext_values(privacy, frame, subject_id) if state == "active" else ([], [])
    key = privacy.key_store.keys_for([subject_id]).get(subject_id)
    needles = [(f"plaintext value {i + 1}", n) for i, n in enumerate(needles_for(values))]
    if key:
        needles += [("subject key", key), ("subject key", base64.b64encode(key))]
    tombstone = _append_tombstone(lake, subject_id, frame, reason, actor)
    snapshots = _delete_snapshots_securely(lake, aggregates)
    if state == "active":
        deleted_at = privacy.key_store.delete_key(subject_id, {"tombstone_position": tombstone})
    else:
        deleted_at = float(info.get("key_deleted_at", time.time()))
    scan = scan_files(lake.path, needles)
    remedies: list[str] = []
    if scan["found"]:
        remedies = _remediate(lake, scan["found"])
        scan = scan_files(lake.path, needles)
    certificate = {
        "subject_id": subject_id,
        "key_deleted_at": _iso(deleted_at),
        "tombstone_position": tombstone,
        "tombstone_stream": tombstone_stream(subject_id),
        "events_affected": frame.height,
        "aggregates": aggregates,
        "snapshots_deleted": snapshots,
        "plaintext_values_checked": sum(1 for label, _ in needles if label.startswith("plaintext")),
        "remedies": remedies,
        "scan": scan,
        "verified": not scan["found"] and state == "active" and not damaged,
        "undecryptable_values": damaged,
        "warnings": _warnings(subject_id, damaged),
        "resumed": state != "active",
        "forgotten_at_iso": _iso(time.time()),
        "reason": reason,
        "actor": actor,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if state != "active":
        certificate["note"] = ("resumed after an interrupted forget: the key was already deleted, so the plaintext "
                               "values were no longer known and the scan could not look for them")
    privacy.key_store.mark_forgotten(subject_id, {"certificate": certificate,
                                                  "forgotten_at_iso": certificate["forgotten_at_iso"]})
    return certificate


def _warnings(subject_id: str, damaged: list[str]) -> list[str]:
    out = []
    if _PERSONAL_ID.fullmatch(subject_id):
        out.append("the subject id itself looks like personal data (an e-mail address or a phone number); it "
                   "stays in clear in the events that name their subject and in the tombstone's stream id, so "
                   "use opaque subject ids")
    if damaged:
        out.append(f"{len(damaged)} encrypted value(s) of the subject did not decrypt (damaged or forged "
                   "ciphertext; run lake.verify()); the key was deleted anyway, but the scan could not look for "
                   "their plaintext, so the erasure is not verified")
    return out


def _delete_snapshots_securely(lake: Any, aggregate_ids: list[str]) -> int:
    con = lake._store.hot.con
    previous = con.execute("PRAGMA secure_delete").fetchone()[0]
    con.execute("PRAGMA secure_delete=ON")
    try:
        deleted = _delete_snapshots(lake, aggregate_ids)
    finally:
        con.execute(f"PRAGMA secure_delete={('OFF', 'ON', 'FAST')[int(previous)]}")
    _wipe_sqlite(con, vacuum=False)
    return deleted
