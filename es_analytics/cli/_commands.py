"""The lake commands: each opens the lake, calls one library function and prints its result."""

from __future__ import annotations

import importlib
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import polars as pl

from ..errors import InvalidArgumentError
from ._common import Moment, echo_frame, echo_pairs, format_option, lake_option, open_lake, translate

__all__ = ["COMMANDS", "resolve_class"]

FORMATS = ("table", "csv", "json")


# -- init, generate, ingest ----------------------------------------------------------------------
@click.command()
@lake_option
@translate
def init(lake_path: Path) -> None:
    """Create an empty lake (a folder that is missing or empty).

    \b
    Example:
      es-analytics init --lake my-lake
    """
    existed = (lake_path / "lake.json").is_file()
    with open_lake(lake_path, create=True) as lake:
        count = lake._store.hot.max_position()
    if existed:
        click.echo(f"{lake_path} is already a lake (last position {count:,})")
    else:
        click.echo(f"created an empty lake in {lake_path}")


@click.command()
@lake_option
@click.option("--events", "count", type=int, default=20_000, show_default=True, help="About how many events.")
@click.option("--seed", type=int, default=7, show_default=True, help="Same seed, same events.")
@click.option("--days", type=int, default=365, show_default=True, help="Length of the business-time window.")
@click.option("--start", type=Moment(), default=None, help="Start of the window (default 2025-01-01).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@translate
def generate(lake_path: Path, count: int, seed: int, days: int, start: datetime | None, progress: bool | None) -> None:
    """Fill an empty lake with deterministic sample data (bank accounts and users).

    \b
    Example:
      es-analytics generate --lake sample-lake --events 100000
    """
    from ..sample import generate as make

    show = sys.stderr.isatty() if progress is None else progress
    with open_lake(lake_path, create=True) as lake:
        result = make(lake, events=count, seed=seed, start=start, days=days, progress=show)
    click.echo(f"wrote {result['events']:,} events ({result['accounts']:,} accounts, {result['users']:,} users) "
               f"to {lake_path} in {result['seconds']:.1f} s")


def _mapping(pairs: tuple[str, ...]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field or not column:
            raise click.BadParameter(f"{pair!r} is not FIELD=COLUMN, e.g. occurred_at=ts", param_hint="--map")
        mapping[field.strip()] = column.strip()
    return mapping


@click.command()
@lake_option
@click.argument("sources", nargs=-1, required=True)
@click.option("--input-format", "source_format", type=click.Choice(["jsonl", "csv", "parquet", "sql", "eventsourcing"]),
              default=None, help="Source format (default: from the file suffix or URL).")
@click.option("--table", default=None, help="Database table (default: events, or stored_events).")
@click.option("--map", "maps", multiple=True, metavar="FIELD=COLUMN",
              help="Source column of an event field, e.g. --map occurred_at=ts (repeatable).")
@click.option("--timezone", default=None, help="IANA zone of times written without one (else they are rejected).")
@click.option("--batch-size", type=int, default=500_000, show_default=True, help="Rows per batch (memory).")
@click.option("--rejects", "rejects_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reject report (CSV); default: ingest-rejects-<time>.csv in the current folder, if any.")
@click.option("--allow-rejects", is_flag=True,
              help="Exit with status 0 even when rows were rejected (by default a rejected row exits with status 3).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--event-log", is_flag=True,
              help="Read SOURCES as process-mining event logs (.xes, .xes.gz, .csv, .parquet): one case per stream.")
@click.option("--case", "case_column", default="case:concept:name", show_default=True,
              help="With --event-log: the case column.")
@click.option("--activity", "activity_column", default="concept:name", show_default=True,
              help="With --event-log: the activity column (the event type).")
@click.option("--timestamp", "timestamp_column", default="time:timestamp", show_default=True,
              help="With --event-log: the timestamp column.")
@click.option("--aggregate-type", default="Case", show_default=True, help="With --event-log: the type of every case.")
@click.option("--object-type", default=None,
              help="With --event-log and an OCEL 2.0 log (JSON or XML): the object type whose objects are the cases.")
@format_option(*FORMATS)
@translate
def ingest(lake_path: Path, sources: tuple[str, ...], source_format: str | None, table: str | None,
           maps: tuple[str, ...], timezone: str | None, batch_size: int, rejects_path: Path | None, allow_rejects: bool,
           progress: bool | None, event_log: bool, case_column: str, activity_column: str, timestamp_column: str,
           aggregate_type: str, object_type: str | None, fmt: str) -> None:
    """Ingest events from files (JSON Lines, CSV, Parquet) or a database (SQLite, PostgreSQL).

    SOURCES are files or one URL (sqlite:///path, postgresql://user:pass@host/db). Re-running adds nothing:
    events already in the lake are recognised by event_id. Rows that cannot be taken are listed with file,
    line and reason in the reject report, never dropped silently: any rejected row makes the command exit
    with status 3 unless --allow-rejects is given (the rows that passed are in the lake either way).

    \b
    Example:
      es-analytics ingest --lake my-lake events.jsonl
      es-analytics ingest --lake my-lake export.csv --map event_id=uid --map occurred_at=ts
      es-analytics ingest --lake my-lake postgresql://app@db/app --input-format eventsourcing --table dogschool_events
      es-analytics ingest --lake my-lake --event-log fines.xes.gz
      es-analytics ingest --lake my-lake --event-log loans.csv --case case_id --activity task --timestamp at
      es-analytics ingest --lake my-lake --event-log orders.jsonocel --object-type item --aggregate-type Item
    """
    from ..ingest import ingest as run
    from ..ingest.eventlog import ingest_event_log

    if rejects_path is None:
        rejects_path = Path(f"ingest-rejects-{datetime.now().strftime('%Y%m%d-%H%M%S')}.csv")
    show = sys.stderr.isatty() if progress is None else progress
    with open_lake(lake_path, create=True) as lake:
        if event_log:
            if len(sources) != 1:
                raise click.UsageError("--event-log takes one log file at a time")
            result = ingest_event_log(lake, sources[0], case=case_column, activity=activity_column,
                                      timestamp=timestamp_column, aggregate_type=aggregate_type, timezone=timezone,
                                      rejects_path=rejects_path, object_type=object_type)
        else:
            result = run(lake, list(sources), format=source_format, table=table,  # type: ignore[arg-type]
                         mapping=_mapping(maps), timezone=timezone, batch_size=batch_size,
                         rejects_path=rejects_path, progress=show)
    summary = result.as_dict()
    summary["events_per_second"] = round(result.events_per_second)
    echo_pairs(summary, fmt)
    taken = result.imported + result.already_present + result.repeated_in_input
    click.echo(f"{taken:,} of {result.read:,} rows went in ({result.imported:,} new)", err=True)
    if result.rejected:
        click.echo(f"{result.rejected:,} of {result.read:,} rows rejected; see {result.rejects_path}", err=True)
        for file, line, reason, _ in result.rejects.head(5).iter_rows():
            click.echo(f"  {file}:{line}: {reason}", err=True)
        if not allow_rejects:
            click.echo("exiting with status 3 because rows were rejected (--allow-rejects accepts a partial import)",
                       err=True)
            sys.exit(3)


# -- reading -------------------------------------------------------------------------------------
@click.command()
@lake_option
@click.argument("query")
@click.option("--param", "params", multiple=True, help="A value for the next ? in the query (repeatable).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to a file.")
@format_option("table", "csv", "json", "parquet")
@translate
def sql(lake_path: Path, query: str, params: tuple[str, ...], output: Path | None, fmt: str) -> None:
    """Run one read-only DuckDB query over the view `events`.

    Values are bound with --param (one per ?), never pasted into the query. Statements that change
    the lake, and reads of files outside it, are refused.

    \b
    Example:
      es-analytics sql --lake my-lake "SELECT event_type, count(*) AS n FROM events GROUP BY ALL ORDER BY n DESC"
      es-analytics sql --lake my-lake "SELECT * FROM events WHERE aggregate_id = ?" --param acc-0000001 --format csv
    """
    with open_lake(lake_path) as lake:
        frame = lake.sql(query, list(params) or None)
    echo_frame(frame, fmt, output=output)


@click.command()
@lake_option
@click.argument("aggregate_id", required=False)
@click.option("--type", "types", multiple=True, help="Only these event types (repeatable).")
@click.option("--since", type=Moment(), default=None, help="occurred_at on or after this time.")
@click.option("--until", type=Moment(), default=None, help="occurred_at on or before this time.")
@click.option("--known-at", type=Moment(), default=None, help="Only events recorded by this time.")
@click.option("--from-version", type=int, default=0, show_default=True, help="Only versions after this one.")
@click.option("--limit", type=int, default=None, help="At most this many (the newest).")
@format_option(*FORMATS)
@translate
def events(lake_path: Path, aggregate_id: str | None, types: tuple[str, ...], since: datetime | None,
           until: datetime | None, known_at: datetime | None, from_version: int, limit: int | None, fmt: str) -> None:
    """List events (of one stream, or all) in commit order.

    \b
    Example:
      es-analytics events --lake my-lake acc-0000001
      es-analytics events --lake my-lake --type MoneyWithdrawn --since 2025-03-01 --until 2025-03-31 --format csv
    """
    with open_lake(lake_path) as lake:
        frame = lake.events(aggregate_id, from_version=from_version, types=list(types) or None, since=since,
                            until=until, known_at=known_at)
    if limit is not None:
        frame = frame.tail(limit)
    echo_frame(frame, fmt)


def _aggregate_classes() -> dict[str, type]:
    from ..examples.bank import BankAccount
    from ..examples.users import User

    return {cls.aggregate_type: cls for cls in (BankAccount, User)}


def resolve_class(type_name: str | None, class_path: str | None) -> type:
    """The aggregate class of ``--type NAME`` (a shipped example) or ``--class module:Class``."""
    if class_path:
        module, sep, name = class_path.partition(":")
        if not sep:
            raise InvalidArgumentError(f"--class must be module:Class, got {class_path!r}")
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise InvalidArgumentError(f"cannot import {class_path!r}: {exc}") from None
        return found  # type: ignore[no-any-return]
    known = _aggregate_classes()
    if type_name not in known:
        raise InvalidArgumentError(
            f"no aggregate class for type {type_name!r}; known: {sorted(known)}; pass --class module:Class for others")
    return known[type_name]


@click.command()
@lake_option
@click.argument("aggregate_id", required=False)
@click.option("--type", "type_name", default="BankAccount", show_default=True,
              help="Aggregate type (a shipped class: BankAccount, User).")
@click.option("--class", "class_path", default=None, metavar="MODULE:CLASS", help="Your own aggregate class.")
@click.option("--as-of", type=Moment(), default=None, help="Business time: the state valid at this time.")
@click.option("--known-at", type=Moment(), default=None, help="System time: as the lake knew it then.")
@click.option("--version", type=int, default=None, help="One aggregate at this version.")
@format_option(*FORMATS)
@translate
def state(lake_path: Path, aggregate_id: str | None, type_name: str, class_path: str | None, as_of: datetime | None,
          known_at: datetime | None, version: int | None, fmt: str) -> None:
    """Show one aggregate, or every aggregate of a type, as of a time (and as known at another).

    \b
    Example:
      es-analytics state --lake my-lake acc-0000001 --as-of 2025-06-01
      es-analytics state --lake my-lake --type BankAccount --as-of 2025-06-01 --known-at 2025-06-15 --format csv
    """
    cls = resolve_class(type_name, class_path)
    with open_lake(lake_path) as lake:
        if aggregate_id is None:
            if version is not None:
                raise click.UsageError("--version needs an AGGREGATE_ID")
            echo_frame(lake.states(cls, as_of=as_of, known_at=known_at), fmt)
            return
        aggregate = lake.aggregate(cls, aggregate_id, as_of=as_of, known_at=known_at, version=version)
    if aggregate is None:
        raise click.ClickException(f"{aggregate_id!r} did not exist at that time (or has no events)")
    echo_pairs({"aggregate_id": aggregate_id, "version": aggregate.version, **aggregate.state()}, fmt)


@click.command()
@lake_option
@click.argument("event_type", required=False)
@click.option("--start", type=Moment(), required=True, help="Window start (inclusive unless --closed says not).")
@click.option("--end", type=Moment(), required=True, help="Window end (inclusive unless --closed says not).")
@click.option("--closed", type=click.Choice(["both", "left", "right", "none"]), default="both", show_default=True,
              help="Which ends of the window are inclusive (left: start <= t < end).")
@click.option("--tz", default="UTC", show_default=True, help="IANA zone of hours and days.")
@click.option("--aggregate-id", default=None, help="Only this stream.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save the hourly and daily charts (.png, .svg or .html).")
@format_option(*FORMATS)
@translate
def patterns(lake_path: Path, event_type: str | None, start: datetime, end: datetime, closed: str, tz: str,
             aggregate_id: str | None, chart: Path | None, fmt: str) -> None:
    """Hourly and daily distribution of an event type (all types if omitted) in a window.

    The window is inclusive at both ends and the average is per day with events, as in the seed's
    analyzeEventPatterns.

    \b
    Example:
      es-analytics patterns --lake my-lake MoneyDeposited --start 2025-01-01 --end 2025-04-01 --closed left --tz Europe/Berlin
      es-analytics patterns --lake my-lake --start 2025-01-01 --end 2025-12-31T23:59:59 --chart build/pattern.png
    """
    from .. import patterns as pat

    with open_lake(lake_path) as lake:
        result = pat.analyze(lake, event_type, start, end, aggregate_id=aggregate_id, tz=tz,
                             closed=closed)  # type: ignore[arg-type]
    summary = {"event_type": result.event_type or "(all)", "tz": result.tz, "total_events": result.total_events,
               "days": result.days, "active_days": result.active_days,
               "average_per_day": round(result.average_per_day, 2), "peak_hour": result.peak_hour}
    if fmt == "json":
        echo_pairs({**summary, "hourly": result.hourly.to_dicts(), "daily": result.daily.to_dicts()}, fmt)
    elif fmt == "csv":
        echo_frame(result.hourly, "csv")
    else:
        echo_pairs(summary, fmt)
        click.echo()
        click.echo(text_bars(result.hourly, "hour", "count", label=lambda h: f"{h:02d}:00"))
    if chart is not None:
        save_pattern_chart(result, chart)
        click.echo(f"chart written to {chart}", err=True)


def text_bars(frame: pl.DataFrame, key: str, value: str, *, label: Any = str, width: int = 40) -> str:
    """A horizontal bar chart in text, one line per row."""
    peak = max(int(frame[value].max() or 0), 1)  # type: ignore[arg-type]
    lines = []
    for k, v in frame.select(key, value).iter_rows():
        bar = "█" * round(width * v / peak)
        lines.append(f"{label(k):>8} {bar:<{width}} {v:,}")
    return "\n".join(lines)


def save_pattern_chart(result: Any, path: Path) -> Path:
    from .. import charts

    combined = charts.overview(result) if hasattr(charts, "overview") else charts.hourly(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    return charts.save(combined, path)


# -- seal, verify, forget ------------------------------------------------------------------------
@click.command()
@lake_option
@format_option(*FORMATS)
@translate
def seal(lake_path: Path, fmt: str) -> None:
    """Move committed hot events into Parquet now (it also happens on its own).

    \b
    Example:
      es-analytics seal --lake my-lake
    """
    with open_lake(lake_path) as lake:
        result = lake.seal()
    echo_pairs({"sealed_events": result["sealed_events"], "files": len(result["files"]),
                "sealed_position": result.get("sealed_position"), "seconds": result.get("seconds")}, fmt)


@click.command()
@lake_option
@click.option("--files/--no-files", "check_files", default=True, show_default=True,
              help="Also check the lake's files and invariants (fsck).")
@format_option(*FORMATS)
@translate
def verify(lake_path: Path, check_files: bool, fmt: str) -> None:
    """Verify the hash chain over all events (tamper evidence); exit status 1 if it does not hold.

    \b
    Example:
      es-analytics verify --lake my-lake
    """
    with open_lake(lake_path) as lake:
        result = lake.verify()
        check = lake.check() if check_files else None
    summary = {"ok": result["ok"], "checked_events": result["checked_events"], "chain_head": result["chain_head"],
               "first_bad_event": result["first_bad_event"], "problems": result["problems"],
               "files_checked": len(result["files"])}
    if check is not None:
        summary["fsck_ok"] = check.get("ok")
        summary["fsck_problems"] = check.get("problems", [])
    echo_pairs(summary, fmt)
    if not result["ok"] or (check is not None and not check.get("ok", True)):
        raise click.ClickException("the lake did not verify; see first_bad_event and problems above")


@click.command()
@lake_option
@click.argument("subject_id")
@click.option("--reason", default=None, help="Why (kept in the tombstone and the certificate).")
@click.option("--actor", default=None, help="Who asked.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@format_option(*FORMATS)
@translate
def forget(lake_path: Path, subject_id: str, reason: str | None, actor: str | None, yes: bool, fmt: str) -> None:
    """Crypto-shred everything personal about a data subject, then scan every lake file for it.

    \b
    Example:
      es-analytics forget --lake my-lake user-0000042 --reason "GDPR art. 17 request" --yes
    """
    if not yes:
        click.confirm(f"Forget {subject_id!r} for good? Their personal data cannot be recovered", abort=True)
    with open_lake(lake_path) as lake:
        certificate = lake.forget(subject_id, reason=reason, actor=actor)
    echo_pairs(certificate, fmt)


COMMANDS = [init, generate, ingest, sql, events, state, patterns, seal, verify, forget]
