"""Process-mining event logs into a lake: XES (plain or ``.gz``), CSV and Parquet, one case per stream.

An event log names a case, an activity and a timestamp per row, and nothing else an event lake needs.
:func:`ingest_event_log` makes the rest: the aggregate type is a constant (``Case`` by default), each
case is a stream, versions follow the timestamps (ties keep file order), event ids are made from the
log's name, the case and the event's place in the file (so ingesting the same log again adds nothing), and
every other column becomes ``data``. Activity names are taken as they are ("Send Fine",
"W_Completeren aanvraag"): they are data, never paths or SQL. The events are marked as a historic import
(``metadata.historic_import``), so ordering diagnostics do not call them late. The rows then go through
:func:`es_analytics.ingest.ingest`, with its validation, idempotency and reject report.

XES is read with the standard library's streaming XML parser (``iterparse``), one trace at a time; trace
attributes become ``case:<key>`` columns, as process-mining tools name them. An object-centric log (OCEL
2.0, JSON or XML) is flattened on one object type, the case notion the analyst picks (``object_type=``):
each event becomes one row per related object of that type (``ocel:eid`` and ``ocel:qualifier`` kept),
typed by the log's attribute declarations.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import InvalidArgumentError
from ..events import check_aggregate_type

__all__ = ["XES_ACTIVITY", "XES_CASE", "XES_RESOURCE", "XES_TIMESTAMP", "ingest_event_log", "read_event_log", "read_ocel",
           "read_xes"]

XES_CASE = "case:concept:name"
XES_ACTIVITY = "concept:name"
XES_TIMESTAMP = "time:timestamp"
XES_RESOURCE = "org:resource"
_SCALARS = {"string", "date", "int", "float", "boolean", "id"}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # XES files may declare a namespace


def _value(kind: str, text: str | None) -> Any:
    if text is None:
        return None
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "boolean":
        return text.strip().lower() == "true"
    return text


def _xes_rows(path: Path) -> Iterator[dict[str, Any]]:
    """One dict per event (trace attributes prefixed ``case:``), streaming through the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        depth = 0
        trace: dict[str, Any] | None = None
        event: dict[str, Any] | None = None
        for action, element in ET.iterparse(handle, events=("start", "end")):
            tag = _local(element.tag)
            if action == "start":
                depth += 1
                if tag == "trace":
                    trace = {}
                elif tag == "event" and trace is not None:
                    event = {}
                continue
            depth -= 1
            if tag in _SCALARS:
                key = element.get("key")
                parent_is_event = event is not None and depth == 3
                parent_is_trace = trace is not None and event is None and depth == 2
                if key is not None and (parent_is_event or parent_is_trace):
                    value = _value(tag, element.get("value"))
                    if event is not None and parent_is_event:
                        event[key] = value
                    elif trace is not None:
                        trace[f"case:{key}"] = value
            elif tag == "event" and event is not None and trace is not None:
                yield {**trace, **event}
                event = None
            elif tag == "trace":
                trace = None
            if depth <= 2:  # keep memory flat: nothing above a trace is kept once read
                element.clear()


def read_xes(path: str | os.PathLike[str]) -> pl.DataFrame:
    """An XES log (plain or gzip) as one row per event, columns named by the XES keys (``concept:name``,
    ``time:timestamp``, ``org:resource``, ``lifecycle:transition``, ``case:concept:name``, ...)."""
    source = Path(path)
    try:
        rows = list(_xes_rows(source))
    except (ET.ParseError, OSError, ValueError) as exc:
        raise InvalidArgumentError(f"{str(source)!r} is not a readable XES log: {exc}") from exc
    if not rows:
        raise InvalidArgumentError(f"{str(source)!r} holds no events")
    return pl.DataFrame(rows, infer_schema_length=None)


def _boolean(value: Any) -> bool:
    return str(value).strip().lower() == "true"


_OCEL_TYPES: dict[str, Callable[[Any], Any]] = {"integer": int, "float": float, "boolean": _boolean}


def _typed(kind: str | None, value: Any) -> Any:
    convert = _OCEL_TYPES.get(kind or "")
    if convert is None or value is None:
        return value
    try:
        return convert(value)
    except (TypeError, ValueError):
        return value  # kept as written; the payload holds it as text


def _ocel_json(source: Path) -> tuple[dict[str, str], list[dict[str, Any]]]:
    body = json.loads(source.read_text(encoding="utf-8"))
    objects = {o["id"]: o["type"] for o in body.get("objects", [])}
    kinds = {(t["name"], a["name"]): a.get("type") for t in body.get("eventTypes", []) for a in t.get("attributes", [])}
    events = []
    for e in body.get("events", []):
        attributes = {a["name"]: _typed(kinds.get((e["type"], a["name"])), a.get("value")) for a in e.get("attributes", [])}
        links = [(r["objectId"], r.get("qualifier", "")) for r in e.get("relationships", [])]
        events.append({"id": e["id"], "type": e["type"], "time": e["time"], "attributes": attributes, "links": links})
    return objects, events


def _ocel_xml(source: Path) -> tuple[dict[str, str], list[dict[str, Any]]]:
    root = ET.parse(source).getroot()
    objects = {o.get("id", ""): o.get("type", "") for o in root.iter("object")}
    kinds = {(t.get("name"), a.get("name")): a.get("type") for t in root.iter("event-type") for a in t.iter("attribute")}
    events = []
    for e in root.iter("event"):
        kind = e.get("type", "")
        attributes = {a.get("name", ""): _typed(kinds.get((kind, a.get("name"))), a.text)
                      for group in e.findall("attributes") for a in group.findall("attribute")}
        links = [(r.get("object-id", ""), r.get("qualifier", "")) for group in e.findall("objects")
                 for r in group.findall("relationship")]
        events.append({"id": e.get("id"), "type": kind, "time": e.get("time"), "attributes": attributes, "links": links})
    return objects, events


def read_ocel(path: str | os.PathLike[str], object_type: str) -> pl.DataFrame:
    """An OCEL 2.0 log (JSON or XML) flattened on ``object_type``: one row per (event, related object of
    that type), with the XES column names (``case:concept:name`` is the object id) plus ``ocel:eid`` and
    ``ocel:qualifier``, in the order of the log's events."""
    source = Path(path)
    try:
        is_json = source.read_bytes()[:200].lstrip()[:1] == b"{"
        objects, events = _ocel_json(source) if is_json else _ocel_xml(source)
    except (OSError, ValueError, KeyError, TypeError, ET.ParseError) as exc:
        raise InvalidArgumentError(f"{str(source)!r} is not a readable OCEL 2.0 log: {exc}") from exc
    if object_type not in set(objects.values()):
        raise InvalidArgumentError(
            f"{str(source)!r} has no objects of type {object_type!r}; its types are {sorted(set(objects.values()))}")
    rows = [{XES_CASE: oid, XES_ACTIVITY: e["type"], XES_TIMESTAMP: e["time"], "ocel:eid": e["id"],
             "ocel:qualifier": qualifier, **e["attributes"]}
            for e in events for oid, qualifier in e["links"] if objects.get(oid) == object_type]
    if not rows:
        raise InvalidArgumentError(f"no event of {str(source)!r} relates to an object of type {object_type!r}")
    return pl.DataFrame(rows, infer_schema_length=None)


def read_event_log(path: str | os.PathLike[str], *, object_type: str | None = None) -> pl.DataFrame:
    """An event log from ``.xes``/``.xes.gz``, ``.csv`` or ``.parquet``, one row per event, in file order;
    with ``object_type``, an OCEL 2.0 log (``.json``/``.jsonocel``, ``.xml``/``.xmlocel``) flattened on it."""
    source = Path(path)
    name = source.name.lower()
    if object_type is not None:
        return read_ocel(source, object_type)
    if name.endswith((".jsonocel", ".xmlocel")):
        raise InvalidArgumentError(f"{str(source)!r} is an object-centric log: name the case's object_type")
    if name.endswith((".xes", ".xes.gz")):
        return read_xes(source)
    try:
        if name.endswith(".csv"):
            return pl.read_csv(source, infer_schema_length=0)  # every column as text, as written
        if name.endswith(".parquet"):
            return pl.read_parquet(source)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InvalidArgumentError(f"cannot read the event log {str(source)!r}: {exc}") from exc
    raise InvalidArgumentError(f"{str(source)!r}: an event log is .xes, .xes.gz, .csv or .parquet")


def _require(frame: pl.DataFrame, column: str, what: str) -> None:
    if column not in frame.columns:
        raise InvalidArgumentError(f"the {what} column {column!r} is not in the log; it has {frame.columns[:12]}")


def event_records(
    frame: pl.DataFrame, *, log_name: str, case: str = XES_CASE, activity: str = XES_ACTIVITY,
    timestamp: str = XES_TIMESTAMP, aggregate_type: str = "Case", timezone: str | None = None,
    historic: bool = True,
) -> pl.DataFrame:
    """The event records of a log (see the module docstring); every column but case and activity goes to
    ``data`` (the timestamp too, as written)."""
    check_aggregate_type(aggregate_type)
    for column, what in ((case, "case"), (activity, "activity"), (timestamp, "timestamp")):
        _require(frame, column, what)
    rest = [c for c in frame.columns if c not in (case, activity)]
    text_time = pl.col(timestamp).cast(pl.String)
    parsed = text_time.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
    if timezone is not None:  # times written without a zone are in this one
        naive = text_time.str.to_datetime(strict=False, time_unit="us").dt.replace_time_zone(timezone)
        parsed = pl.coalesce(parsed, naive.dt.convert_time_zone("UTC"))
    records = (
        frame.with_row_index("_row")
        .with_columns(pl.col(case).cast(pl.String).alias("aggregate_id"), parsed.alias("_t"))
        .with_columns(pl.int_range(1, pl.len() + 1).over("aggregate_id").alias("_n"))  # place in the file
        .sort("aggregate_id", "_t", "_row", nulls_last=True)
        .with_columns(pl.int_range(1, pl.len() + 1).over("aggregate_id").alias("aggregate_version"))
        .sort("_row")
    )
    data = pl.struct(rest).struct.json_encode() if rest else pl.lit("{}")
    return records.select(
        pl.format("{}:{}:{}", pl.lit(log_name), pl.col("aggregate_id"), pl.col("_n")).alias("event_id"),
        pl.col(activity).cast(pl.String).alias("event_type"),
        pl.lit(aggregate_type).alias("aggregate_type"),
        "aggregate_id",
        "aggregate_version",
        pl.col("_t").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").alias("occurred_at"),
        data.alias("data"),
        pl.lit('{"historic_import":true}' if historic else "{}").alias("metadata"),
    )


def ingest_event_log(
    lake: Any, source: str | os.PathLike[str] | pl.DataFrame, *, case: str = XES_CASE,
    activity: str = XES_ACTIVITY, timestamp: str = XES_TIMESTAMP, aggregate_type: str = "Case",
    timezone: str | None = None, historic: bool = True, log_name: str | None = None,
    rejects_path: str | os.PathLike[str] | None = None, object_type: str | None = None,
) -> Any:
    """Ingest a process-mining event log (a file, or a polars frame of one) into ``lake``; returns the
    :class:`~es_analytics.ingest.IngestResult`. See the module docstring.

    Parameters
    ----------
    case, activity, timestamp
        The columns naming the case (becomes the stream), the activity (the event type) and when it
        happened; XES names by default.
    aggregate_type
        The aggregate type of every case.
    timezone
        The IANA zone of timestamps written without one (else such rows are rejected).
    historic
        Mark the events as imported history, which ordering diagnostics do not count as late.
    log_name
        Prefix of the event ids (default: the file name without its suffixes).
    object_type
        For an OCEL 2.0 log: the object type whose objects are the cases.
    """
    from dataclasses import replace

    from . import ingest

    if isinstance(source, pl.DataFrame):
        frame, name = source, log_name or "log"
    else:
        path = Path(source)
        frame, name = read_event_log(path, object_type=object_type), log_name or path.name.split(".")[0]
    records = event_records(frame, log_name=name, case=case, activity=activity, timestamp=timestamp,
                            aggregate_type=aggregate_type, timezone=timezone, historic=historic)
    with tempfile.TemporaryDirectory(prefix="es-analytics-log-") as scratch:
        staged = Path(scratch) / "events.parquet"
        records.write_parquet(staged)
        result = ingest(lake, staged, rejects_path=rejects_path)
    return replace(result, sources=("<frame>",) if isinstance(source, pl.DataFrame) else (str(source),))
