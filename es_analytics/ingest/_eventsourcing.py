"""Stored events of the ``eventsourcing`` library as event records.

The library's recorders keep ``(originator_id, originator_version, topic, state)``: ``topic`` is
``module:Class.Event`` and ``state`` the event's attributes as JSON (its ``JSONTranscoder``), with the
library's own encodings for UUIDs, decimals and datetimes (``{"_type_": "uuid_hex", "_data_": …}``).
An event record is made of each row:

- ``aggregate_id``: the originator id (a UUID in its canonical form); ``aggregate_version``: the originator
  version; ``aggregate_type`` and ``event_type``: the last two parts of the topic's class path
  (``Dog`` and ``TrickAdded`` for ``school.domain:Dog.TrickAdded``);
- ``occurred_at``: the event's ``timestamp``; ``schema_version``: its ``class_version`` (1 if absent);
- ``data``: the remaining attributes as plain JSON (UUIDs as text, decimals as text, datetimes as ISO text);
- ``metadata``: ``{"topic": …, "originator_topic": …}`` (the latter on creation events);
- ``event_id``: ``"<originator_id>:<originator_version>"``, so re-running an ingest finds the same ids.

Compressed (zlib) states are read; encrypted ones are rejected with their row and a reason.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from ._sources import RawBatch

__all__ = ["EVENTSOURCING_COLUMNS", "decode_rows", "is_eventsourcing_table"]

EVENTSOURCING_COLUMNS = ("originator_id", "originator_version", "topic", "state")
_OUT = ("event_id", "event_type", "schema_version", "aggregate_type", "aggregate_id", "aggregate_version",
        "occurred_at", "data", "metadata")


def is_eventsourcing_table(columns: Sequence[str]) -> bool:
    return set(EVENTSOURCING_COLUMNS) <= set(columns)


def _plain(value: Any) -> Any:
    """The library's transcoded values as plain JSON values."""
    if isinstance(value, dict):
        if set(value) == {"_type_", "_data_"}:
            kind, data = value["_type_"], value["_data_"]
            if kind == "uuid_hex" and isinstance(data, str):
                return str(uuid.UUID(data))
            if kind in ("decimal_str", "datetime_iso"):
                return data
            return _plain(data)
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _state(raw: Any) -> dict[str, Any]:
    blob = bytes(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else str(raw).encode("utf-8")
    if not blob.lstrip().startswith(b"{"):
        try:
            blob = zlib.decompress(blob)
        except zlib.error:
            raise ValueError("state is neither JSON nor zlib-compressed JSON (is the application's cipher on?)") from None
    try:
        value = json.loads(blob)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"state is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("state is not a JSON object")
    return value


def _aggregate_id(originator_id: Any) -> str:
    if isinstance(originator_id, uuid.UUID):
        return str(originator_id)
    text = str(originator_id)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text


def _occurred(value: Any) -> str | None:
    if isinstance(value, dict) and value.get("_type_") == "datetime_iso":
        value = value.get("_data_")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        return value  # left naive: validation rejects it unless a timezone is given
    return moment.astimezone(timezone.utc).isoformat()


def decode_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """One stored event as the text columns of an event record (raises ValueError with a reason)."""
    originator_id, version, topic, raw = row
    if not isinstance(topic, str) or ":" not in topic:
        raise ValueError(f"topic {topic!r} is not 'module:Class.Event'")
    parts = topic.split(":", 1)[1].split(".")
    if len(parts) < 2:
        raise ValueError(f"topic {topic!r} names no aggregate class (expected 'module:Aggregate.Event')")
    state = _state(raw)
    occurred = _occurred(state.pop("timestamp", None))
    schema_version = state.pop("class_version", 1)
    metadata = {"topic": topic}
    if "originator_topic" in state:
        metadata["originator_topic"] = state.pop("originator_topic")
    aggregate_id = _aggregate_id(originator_id)
    data = json.dumps(_plain(state), ensure_ascii=False, separators=(",", ":"))
    return (f"{aggregate_id}:{version}", parts[-1], str(schema_version), parts[-2], aggregate_id, str(version),
            occurred, data, json.dumps(metadata, separators=(",", ":")))


def decode_rows(rows: Sequence[tuple[Any, ...]], first_row: int) -> RawBatch:
    """Stored-event rows as a raw batch; rows that cannot be decoded become rejects."""
    out: list[tuple[Any, ...]] = []
    lines: list[int] = []
    rejects: list[tuple[int, str, str]] = []
    for number, row in enumerate(rows, start=first_row):
        try:
            out.append(decode_row(row))
            lines.append(number)
        except ValueError as exc:
            rejects.append((number, str(exc), f"originator_id={row[0]} originator_version={row[1]} topic={row[2]}"))
    columns = list(zip(*out)) if out else [()] * len(_OUT)
    table = pa.table({name: pa.array(list(col), pa.string()) for name, col in zip(_OUT, columns)})
    table = table.append_column("_line", pa.array(np.array(lines, dtype=np.int64)))
    return RawBatch(table, {}, rejects, len(rows))
