"""Process analytics: each stream of an aggregate type is a case, each event an activity.

What a process analyst looks at first, on any lake (an ingested event log, see
:func:`es_analytics.ingest.eventlog.ingest_event_log`, or a system's own history), each as one DuckDB
query whose result is a polars DataFrame:

- :func:`directly_follows` — the directly-follows graph: each (source, target) pair of activities that
  follow each other in a case, how often, and the median and 90th percentile of the time between them;
- :func:`start_activities` / :func:`end_activities` — how cases begin and end;
- :func:`variants` — the distinct activity sequences, with case counts and shares;
- :func:`cases` — one row per case: start, end, duration, events, variant, rework (repeated activities);
- :func:`handovers` — resource to resource hand-overs inside cases (a ``resource`` field of ``data``);
- :func:`arrivals` — cases started and finished per period, and the median duration of those finished;
- :func:`events` — the events of the first cases, for dotted charts and performance spectra.

Every function takes the same selection: the aggregate type, ``as_of`` (business time) and ``known_at``
(system time) as everywhere in es_analytics, ``cases`` (a list of case ids), ``activities`` (only these
event types), ``variant`` (only cases with exactly this activity sequence), ``attributes`` (only cases
with an event whose ``data`` field equals the given text) and a ``since``/``until`` window on
``occurred_at``. A case's
events are taken in stream (version) order; for an ingested event log that is timestamp order, ties in
file order. Durations are in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import polars as pl

from ._time import to_utc_or_none
from .errors import InvalidArgumentError
from .events import check_aggregate_id, check_aggregate_type, check_event_type

__all__ = ["arrivals", "cases", "directly_follows", "end_activities", "events", "handovers", "start_activities",
           "variants"]

_PERIODS = ("hour", "day", "week", "month", "quarter", "year")


def _selection(
    aggregate_type: str, as_of: datetime | None, known_at: datetime | None, cases: Sequence[str] | None,
    activities: Sequence[str] | None, variant: Sequence[str] | None, attributes: Mapping[str, str] | None,
    since: datetime | None, until: datetime | None, *, resource: str | None = None,
) -> tuple[str, list[Any]]:
    """The CTE ``ev`` (case_id, activity, occurred_at, version[, resource]) of the selected events, and
    its parameters. Fixed SQL text; every value the caller gave is a bound parameter."""
    clauses = ["aggregate_type = ?"]
    params: list[Any] = [check_aggregate_type(aggregate_type)]
    for value, clause, name in ((as_of, "occurred_at <= ?", "as_of"), (known_at, "recorded_at <= ?", "known_at"),
                                (since, "occurred_at >= ?", "since"), (until, "occurred_at <= ?", "until")):
        if value is not None:
            clauses.append(clause)
            params.append(to_utc_or_none(value, name))
    if cases is not None:
        if isinstance(cases, str):
            cases = [cases]
        clauses.append("list_contains(?, aggregate_id)")
        params.append([check_aggregate_id(c, "each case") for c in cases])
    if activities is not None:
        if isinstance(activities, str):
            activities = [activities]
        clauses.append("list_contains(?, event_type)")
        params.append([check_event_type(a, "each activity") for a in activities])
    select = "aggregate_id AS case_id, event_type AS activity, occurred_at, aggregate_version AS version"
    head: list[Any] = []
    if resource is not None:
        if not isinstance(resource, str) or not resource:
            raise InvalidArgumentError(f"resource must name a data field, got {resource!r}")
        select += ", json_extract_string(data, ?) AS resource"
        head.append("$." + _json_key(resource))
    having: list[str] = []
    tail: list[Any] = []
    for field_name, wanted in (attributes or {}).items():  # case filters: a case with an event that has it
        if not isinstance(field_name, str) or not field_name or not isinstance(wanted, str):
            raise InvalidArgumentError(
                f"attributes must map data field names to text, got {field_name!r}: {wanted!r}")
        having.append("bool_or(json_extract_string(data, ?) = ?)")
        tail += ["$." + _json_key(field_name), wanted]
    if variant is not None:
        if isinstance(variant, str) or not all(isinstance(a, str) for a in variant):
            raise InvalidArgumentError(f"variant must be a list of activities, got {variant!r}")
        having.append("list(activity ORDER BY version) = ?::VARCHAR[]")
        tail.append(list(variant))
    params = [*head, *params, *tail]
    if not having:  # the payload is read only when a case filter needs it
        return f"ev AS (SELECT {select} FROM events WHERE {' AND '.join(clauses)})", params
    return (f"ev_all AS (SELECT {select}, data FROM events WHERE {' AND '.join(clauses)}), "
            "ev AS (SELECT * EXCLUDE (data) FROM ev_all WHERE case_id IN (SELECT case_id FROM ev_all "
            f"GROUP BY case_id HAVING {' AND '.join(having)}))"), params


def _json_key(key: str) -> str:
    """A data field name as one JSON path step (quoted, so dots and colons stay part of the name)."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _run(lake: Any, body: str, selection: tuple[str, list[Any]], extra: Sequence[Any] = ()) -> pl.DataFrame:
    cte, params = selection
    return lake.sql(f"WITH {cte} {body}", [*params, *extra])  # type: ignore[no-any-return]


def directly_follows(lake: Any, aggregate_type: str, *, as_of: datetime | None = None, known_at: datetime | None = None,
                     cases: Sequence[str] | None = None, activities: Sequence[str] | None = None,
                     variant: Sequence[str] | None = None, attributes: Mapping[str, str] | None = None,
                     since: datetime | None = None, until: datetime | None = None) -> pl.DataFrame:
    """The directly-follows graph: ``source, target, frequency, median_seconds, p90_seconds, cases``
    (cases in which the pair occurs), most frequent first."""
    body = (
        ", pairs AS (SELECT case_id, activity AS source, lead(activity) OVER w AS target, "
        "(epoch_us(lead(occurred_at) OVER w) - epoch_us(occurred_at)) / 1e6 AS seconds "
        "FROM ev WINDOW w AS (PARTITION BY case_id ORDER BY version)) "
        "SELECT source, target, count(*) AS frequency, median(seconds) AS median_seconds, "
        "quantile_cont(seconds, 0.9) AS p90_seconds, count(DISTINCT case_id) AS cases "
        "FROM pairs WHERE target IS NOT NULL GROUP BY source, target ORDER BY frequency DESC, source, target"
    )
    return _run(lake, body, _selection(aggregate_type, as_of, known_at, cases, activities, variant, attributes, since, until))


def _boundary(lake: Any, which: str, args: tuple[str, list[Any]]) -> pl.DataFrame:
    order = "ASC" if which == "first" else "DESC"
    body = (
        f", ends AS (SELECT case_id, activity, row_number() OVER (PARTITION BY case_id ORDER BY version {order}) AS k "
        "FROM ev) SELECT activity, count(*) AS cases, count(*) / sum(count(*)) OVER () AS share "
        "FROM ends WHERE k = 1 GROUP BY activity ORDER BY cases DESC, activity"
    )
    return _run(lake, body, args)


def start_activities(lake: Any, aggregate_type: str, *, as_of: datetime | None = None,
                     known_at: datetime | None = None, cases: Sequence[str] | None = None,
                     activities: Sequence[str] | None = None, variant: Sequence[str] | None = None,
                     attributes: Mapping[str, str] | None = None, since: datetime | None = None,
                     until: datetime | None = None) -> pl.DataFrame:
    """The first activity of each case: ``activity, cases, share``."""
    return _boundary(lake, "first", _selection(aggregate_type, as_of, known_at, cases, activities, variant, attributes,
                                          since, until))


def end_activities(lake: Any, aggregate_type: str, *, as_of: datetime | None = None,
                   known_at: datetime | None = None, cases: Sequence[str] | None = None,
                   activities: Sequence[str] | None = None, variant: Sequence[str] | None = None,
                   attributes: Mapping[str, str] | None = None, since: datetime | None = None,
                   until: datetime | None = None) -> pl.DataFrame:
    """The last activity of each case (so far): ``activity, cases, share``."""
    return _boundary(lake, "last", _selection(aggregate_type, as_of, known_at, cases, activities, variant, attributes,
                                         since, until))


def variants(lake: Any, aggregate_type: str, *, as_of: datetime | None = None, known_at: datetime | None = None,
             cases: Sequence[str] | None = None, activities: Sequence[str] | None = None,
             variant: Sequence[str] | None = None, attributes: Mapping[str, str] | None = None,
             since: datetime | None = None, until: datetime | None = None) -> pl.DataFrame:
    """Distinct activity sequences: ``variant`` (list of activities), ``length, cases, share``, most
    frequent first."""
    body = (
        ", seqs AS (SELECT case_id, list(activity ORDER BY version) AS variant FROM ev GROUP BY case_id) "
        "SELECT variant, len(variant) AS length, count(*) AS cases, count(*) / sum(count(*)) OVER () AS share "
        "FROM seqs GROUP BY variant ORDER BY cases DESC, length, variant"
    )
    return _run(lake, body, _selection(aggregate_type, as_of, known_at, cases, activities, variant, attributes, since, until))


def cases(lake: Any, aggregate_type: str, *, as_of: datetime | None = None, known_at: datetime | None = None,
          cases: Sequence[str] | None = None, activities: Sequence[str] | None = None,
          variant: Sequence[str] | None = None, attributes: Mapping[str, str] | None = None,
          since: datetime | None = None, until: datetime | None = None) -> pl.DataFrame:
    """One row per case: ``case_id, start, end, duration_seconds, events, variant, rework`` (events whose
    activity already occurred earlier in the case), in order of start."""
    body = (
        "SELECT case_id, min(occurred_at) AS start, max(occurred_at) AS \"end\", "
        "(epoch_us(max(occurred_at)) - epoch_us(min(occurred_at))) / 1e6 AS duration_seconds, "
        "count(*) AS events, list(activity ORDER BY version) AS variant, "
        "count(*) - count(DISTINCT activity) AS rework FROM ev GROUP BY case_id ORDER BY start, case_id"
    )
    return _run(lake, body, _selection(aggregate_type, as_of, known_at, cases, activities, variant, attributes, since, until))


def handovers(lake: Any, aggregate_type: str, *, resource: str = "org:resource", as_of: datetime | None = None,
              known_at: datetime | None = None, cases: Sequence[str] | None = None,
              activities: Sequence[str] | None = None, variant: Sequence[str] | None = None,
              attributes: Mapping[str, str] | None = None, since: datetime | None = None,
              until: datetime | None = None) -> pl.DataFrame:
    """Hand-overs of work: ``source, target, frequency, cases`` for each pair of different resources
    (the ``data`` field ``resource``) on consecutive events of a case. Events without one are skipped."""
    body = (
        ", own AS (SELECT * FROM ev WHERE resource IS NOT NULL), "
        "pairs AS (SELECT case_id, resource AS source, lead(resource) OVER (PARTITION BY case_id ORDER BY version) "
        "AS target FROM own) "
        "SELECT source, target, count(*) AS frequency, count(DISTINCT case_id) AS cases FROM pairs "
        "WHERE target IS NOT NULL AND target <> source GROUP BY source, target ORDER BY frequency DESC, source, target"
    )
    return _run(lake, body, _selection(aggregate_type, as_of, known_at, cases, activities, variant, attributes, since, until,
                                  resource=resource))


def arrivals(lake: Any, aggregate_type: str, *, every: str = "day", as_of: datetime | None = None,
             known_at: datetime | None = None, cases: Sequence[str] | None = None,
             activities: Sequence[str] | None = None, variant: Sequence[str] | None = None,
             attributes: Mapping[str, str] | None = None, since: datetime | None = None,
             until: datetime | None = None) -> pl.DataFrame:
    """Case arrival and throughput per ``every`` (hour, day, week, month, quarter, year; UTC):
    ``period, started, finished, median_duration_seconds`` (of the cases whose last event lies in it)."""
    if every not in _PERIODS:
        raise InvalidArgumentError(f"every must be one of {', '.join(_PERIODS)}, got {every!r}")
    body = (
        ", spans AS (SELECT case_id, min(occurred_at) AS s, max(occurred_at) AS e FROM ev GROUP BY case_id), "
        "starts AS (SELECT date_trunc(?, s) AS period, count(*) AS started FROM spans GROUP BY 1), "
        "ends AS (SELECT date_trunc(?, e) AS period, count(*) AS finished, "
        "median((epoch_us(e) - epoch_us(s)) / 1e6) AS median_duration_seconds FROM spans GROUP BY 1) "
        "SELECT period, coalesce(started, 0) AS started, coalesce(finished, 0) AS finished, median_duration_seconds "
        "FROM starts FULL JOIN ends USING (period) ORDER BY period"
    )
    return _run(lake, body, _selection(aggregate_type, as_of, known_at, cases, activities, variant, attributes, since, until),
                [every, every])


def events(lake: Any, aggregate_type: str, *, max_cases: int = 500, as_of: datetime | None = None,
           known_at: datetime | None = None, cases: Sequence[str] | None = None,
           activities: Sequence[str] | None = None, variant: Sequence[str] | None = None,
           attributes: Mapping[str, str] | None = None, since: datetime | None = None,
           until: datetime | None = None) -> pl.DataFrame:
    """The selected events of at most ``max_cases`` cases (the earliest started): ``case_id, activity,
    occurred_at, version, case_start``, in case then stream order (for dotted charts and performance
    spectra)."""
    if isinstance(max_cases, bool) or not isinstance(max_cases, int) or max_cases < 1:
        raise InvalidArgumentError(f"max_cases must be a positive int, got {max_cases!r}")
    body = (
        ", starts AS (SELECT case_id, min(occurred_at) AS case_start FROM ev GROUP BY case_id "
        "ORDER BY case_start, case_id LIMIT ?) "
        "SELECT ev.case_id, activity, occurred_at, version, case_start FROM ev JOIN starts USING (case_id) "
        "ORDER BY case_start, case_id, version"
    )
    return _run(lake, body, _selection(aggregate_type, as_of, known_at, cases, activities, variant, attributes, since, until),
                [max_cases])
