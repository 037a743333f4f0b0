"""Ordering diagnostics as DataFrames: what in a lake's history is out of order, missing, late or repeated.

Each function is one DuckDB query over the ``events`` view (window functions, no Python loop):

- :func:`version_gaps` — streams whose versions skip or repeat a number (an import from a broken source);
- :func:`position_gaps` — holes in the global ``position`` sequence;
- :func:`backwards_in_time` — events whose ``occurred_at`` lies before the previous event of the same
  stream (back-dated corrections, clock skew between writers);
- :func:`lateness` / :func:`late_events` — how long after they occurred events were recorded (events an
  import marked as history, ``metadata.historic_import``, are left out);
- :func:`duplicate_event_ids` — ``event_id``\\ s that arrive more than once through an ingest, and whether
  the repeats carry the same content (a harmless retry) or other content (a bug upstream);
- :func:`summary` — one row with the count of each finding.

``es_analytics.charts.ordering`` draws them.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import polars as pl

from .errors import InvalidArgumentError
from .events import check_aggregate_type
from .temporal.bounds import LakeLike

__all__ = [
    "LATENESS_BUCKETS",
    "backwards_in_time",
    "duplicate_event_ids",
    "late_events",
    "lateness",
    "position_gaps",
    "summary",
    "version_gaps",
]

#: Upper bounds (seconds) and labels of the lateness distribution; "early" is recorded before it occurred.
LATENESS_BUCKETS: tuple[tuple[float, str], ...] = (
    (0.0, "early"), (1.0, "< 1 s"), (60.0, "1 s – 1 min"), (3600.0, "1 min – 1 h"), (86400.0, "1 h – 1 day"),
    (7 * 86400.0, "1 – 7 days"), (30 * 86400.0, "7 – 30 days"), (float("inf"), "> 30 days"),
)
_LATE = "epoch_us(recorded_at) - epoch_us(occurred_at)"
# Events an import marked as history (``metadata.historic_import``, e.g. an event log): recorded long after
# they occurred by design, so never counted as late.
_LIVE = "NOT coalesce(TRY_CAST(json_extract_string(metadata, '$.historic_import') AS BOOLEAN), false)"


def _where(aggregate_type: str | None) -> tuple[str, list[Any]]:
    if aggregate_type is None:
        return "TRUE", []
    return "aggregate_type = ?", [check_aggregate_type(aggregate_type)]


def version_gaps(lake: LakeLike, *, aggregate_type: str | None = None) -> pl.DataFrame:
    """Streams whose versions do not run 1, 2, 3 …: one row per hole or repeat.

    Columns: ``aggregate_type, aggregate_id, after_version, next_version, missing`` (versions absent
    between the two; -1 marks a repeated version) and ``position`` of the event after the hole.

    Examples
    --------
    >>> import tempfile
    >>> from es_analytics import Event, Lake
    >>> with Lake.open(tempfile.mkdtemp()) as lake:
    ...     _ = lake.append("a", [Event("Opened", {})], expected_version=0, aggregate_type="Thing")
    ...     version_gaps(lake).height
    0
    """
    where, params = _where(aggregate_type)
    sql = f"""
        SELECT aggregate_type, aggregate_id, after_version, aggregate_version AS next_version,
               CASE WHEN aggregate_version = after_version THEN -1
                    ELSE aggregate_version - after_version - 1 END AS missing, position
        FROM (SELECT aggregate_type, aggregate_id, aggregate_version, position,
                     coalesce(lag(aggregate_version) OVER w, 0) AS after_version
              FROM events WHERE {where}
              WINDOW w AS (PARTITION BY aggregate_id ORDER BY aggregate_version, position))
        WHERE aggregate_version <> after_version + 1
        ORDER BY aggregate_type, aggregate_id, next_version"""
    return lake._query(sql, params, what="version gaps")


def position_gaps(lake: LakeLike) -> pl.DataFrame:
    """Holes in the global ``position`` sequence: ``after_position, next_position, missing``.

    The lake never reuses a position; a hole means events were removed outside the lake (or a source
    feeding a processor skipped some).
    """
    sql = """
        SELECT after_position, position AS next_position, position - after_position - 1 AS missing
        FROM (SELECT position, coalesce(lag(position) OVER (ORDER BY position), 0) AS after_position FROM events)
        WHERE position > after_position + 1 ORDER BY after_position"""
    return lake._query(sql, [], what="position gaps")


def backwards_in_time(lake: LakeLike, *, aggregate_type: str | None = None) -> pl.DataFrame:
    """Events whose ``occurred_at`` lies before the latest earlier event of their stream.

    Columns: ``aggregate_type, aggregate_id, aggregate_version, position, event_type, occurred_at,
    latest_before`` (the latest ``occurred_at`` among the stream's earlier versions), ``backwards``
    (a duration), ``recorded_at``; the largest jumps first.
    """
    where, params = _where(aggregate_type)
    sql = f"""
        SELECT aggregate_type, aggregate_id, aggregate_version, position, event_type, occurred_at, latest_before,
               epoch_us(latest_before) - epoch_us(occurred_at) AS backwards, recorded_at
        FROM (SELECT *, max(occurred_at) OVER (PARTITION BY aggregate_id ORDER BY aggregate_version
                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS latest_before
              FROM events WHERE {where})
        WHERE occurred_at < latest_before
        ORDER BY backwards DESC, position"""
    return _durations(lake._query(sql, params, what="events running backwards"), "backwards")


def lateness(lake: LakeLike, *, aggregate_type: str | None = None, by_type: bool = False) -> pl.DataFrame:
    """How long after they occurred events were recorded, as a distribution over :data:`LATENESS_BUCKETS`.

    Columns: ``bucket`` (label, in order), ``upper_seconds``, ``events``, ``share`` (of all events),
    ``max_lateness`` (the largest duration in the bucket); with ``by_type`` also ``event_type`` first.
    Every bucket appears, empty ones with 0 events.
    """
    where, params = _where(aggregate_type)
    cases = " ".join(f"WHEN {_LATE} < {int(upper * 1e6)} THEN {i}"
                     for i, (upper, _) in enumerate(LATENESS_BUCKETS[:-1]))
    group = "event_type, " if by_type else ""
    sql = f"""
        SELECT {group}CASE {cases} ELSE {len(LATENESS_BUCKETS) - 1} END AS bucket_index, count(*) AS events,
               max({_LATE}) AS max_lateness
        FROM events WHERE {where} AND {_LIVE} GROUP BY ALL"""
    counts = _durations(lake._query(sql, params, what="lateness"), "max_lateness")
    labels = pl.DataFrame({
        "bucket_index": list(range(len(LATENESS_BUCKETS))),
        "bucket": [label for _, label in LATENESS_BUCKETS],
        "upper_seconds": [upper for upper, _ in LATENESS_BUCKETS],
    }, schema={"bucket_index": counts.schema["bucket_index"], "bucket": pl.String, "upper_seconds": pl.Float64})
    if by_type:
        types = counts.select("event_type").unique().sort("event_type")
        labels = types.join(labels, how="cross")
    keys = ["event_type", "bucket_index"] if by_type else ["bucket_index"]
    frame = labels.join(counts, on=keys, how="left").with_columns(pl.col("events").fill_null(0))
    total = pl.col("events").sum().over("event_type") if by_type else pl.col("events").sum()
    frame = frame.with_columns(share=(pl.col("events") / total).fill_nan(0.0)).sort(keys)
    return frame.select(*(["event_type"] if by_type else []), "bucket", "upper_seconds", "events", "share",
                        "max_lateness")


def late_events(lake: LakeLike, *, threshold: timedelta = timedelta(hours=1), aggregate_type: str | None = None,
                limit: int = 1_000) -> pl.DataFrame:
    """Events recorded more than ``threshold`` after they occurred, the latest-recorded first.

    Columns: ``position, aggregate_type, aggregate_id, aggregate_version, event_type, occurred_at,
    recorded_at, lateness`` (a duration); at most ``limit`` rows.
    """
    if not isinstance(threshold, timedelta):
        raise InvalidArgumentError(f"threshold must be a timedelta, got {threshold!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgumentError(f"limit must be a positive int, got {limit!r}")
    where, params = _where(aggregate_type)
    sql = f"""
        SELECT position, aggregate_type, aggregate_id, aggregate_version, event_type, occurred_at, recorded_at,
               {_LATE} AS lateness
        FROM events WHERE {where} AND {_LIVE} AND {_LATE} > ? ORDER BY lateness DESC, position LIMIT ?"""
    micros = threshold // timedelta(microseconds=1)
    return _durations(lake._query(sql, [*params, micros, limit], what="late events"), "lateness")


def duplicate_event_ids(lake: LakeLike, incoming: pl.DataFrame | None = None) -> pl.DataFrame:
    """``event_id``\\ s that occur more than once: in ``incoming`` (rows about to be ingested) or in the lake.

    With ``incoming`` (a frame with at least ``event_id``, and ``data`` to compare content), one row per
    ``event_id`` that repeats within it or is already stored: ``event_id, in_input`` (rows in the input),
    ``in_lake`` (stored already), ``same_content`` (every copy has the same ``data``: a harmless
    retry; ``False`` is a conflict the ingest rejects), ``aggregate_ids`` (the streams the copies name).
    Without it, the same for event ids stored more than once (never, in a healthy lake).
    """
    if incoming is None:
        sql = """
            SELECT event_id, 0::BIGINT AS in_input, count(*) > 0 AS in_lake, count(DISTINCT data) = 1 AS same_content,
                   list_sort(list_distinct(list(aggregate_id))) AS aggregate_ids
            FROM events GROUP BY event_id HAVING count(*) > 1 ORDER BY event_id"""
        return lake._query(sql, [], what="duplicate event ids")
    if not isinstance(incoming, pl.DataFrame) or "event_id" not in incoming.columns:
        raise InvalidArgumentError("incoming must be a polars DataFrame with an event_id column")
    data = pl.col("data") if "data" in incoming.columns else pl.lit(None, pl.String)
    stream = pl.col("aggregate_id") if "aggregate_id" in incoming.columns else pl.lit(None, pl.String)
    rows = incoming.select(pl.col("event_id").cast(pl.String), data.alias("data"), stream.alias("aggregate_id"))
    ids = rows["event_id"].unique().to_list()
    stored = lake._present(lake._query("SELECT * FROM events WHERE list_contains(?, event_id)", [ids],
                                       what="duplicate event ids")).select("event_id", "data", "aggregate_id")
    both = pl.concat([rows.with_columns(source=pl.lit("input")), stored.with_columns(source=pl.lit("lake"))])
    repeated = both.filter(pl.len().over("event_id") > 1)
    normal = repeated.with_columns(pl.Series("data", [_normal_json(t) for t in repeated["data"]], pl.String))
    grouped = normal.group_by("event_id").agg(
        in_input=(pl.col("source") == "input").sum().cast(pl.Int64),
        in_lake=(pl.col("source") == "lake").any(),
        same_content=pl.col("data").n_unique() == 1,
        aggregate_ids=pl.col("aggregate_id").drop_nulls().unique().sort(),
    )
    return grouped.sort("event_id")


def _normal_json(text: str | None) -> str | None:
    """JSON text with sorted keys and no spaces, so equal payloads compare equal however they were written."""
    if text is None:
        return None
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return text


def _durations(frame: pl.DataFrame, *columns: str) -> pl.DataFrame:
    """Microsecond counts (DuckDB intervals do not convert to polars) as polars durations."""
    return frame.with_columns(pl.col(c).cast(pl.Duration("us")) for c in columns)


def summary(lake: LakeLike, *, late_after: timedelta = timedelta(hours=1)) -> pl.DataFrame:
    """One row: ``events, streams, version_gaps, position_gaps, backwards_in_time, late_events,
    duplicate_event_ids`` (late: recorded more than ``late_after`` after occurring)."""
    if not isinstance(late_after, timedelta):
        raise InvalidArgumentError(f"late_after must be a timedelta, got {late_after!r}")
    micros = late_after // timedelta(microseconds=1)
    counts = lake._query(
        f"SELECT count(*) AS events, count(DISTINCT aggregate_id) AS streams, "
        f"count(*) FILTER (WHERE {_LATE} > ? AND {_LIVE}) AS late_events, count(*) - count(DISTINCT event_id) AS duplicate_event_ids "
        "FROM events", [micros], what="ordering summary")
    return counts.select(
        "events", "streams",
        pl.lit(version_gaps(lake).height, pl.Int64).alias("version_gaps"),
        pl.lit(position_gaps(lake).height, pl.Int64).alias("position_gaps"),
        pl.lit(backwards_in_time(lake).height, pl.Int64).alias("backwards_in_time"),
        "late_events", "duplicate_event_ids",
    )
