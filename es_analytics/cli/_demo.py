"""``demo`` (what the tool does, on the sample lake) and ``lab`` (JupyterLab with the lake ready)."""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import polars as pl

from ._commands import save_pattern_chart, text_bars
from ._common import echo_frame, lake_option, open_lake, translate

__all__ = ["demo", "lab"]

SAMPLE_EVENTS = 20_000


def _ensure_sample(lake_path: Path, events: int) -> None:
    """Generate the deterministic sample into ``lake_path`` if it is missing or empty."""
    from ..sample import generate

    with open_lake(lake_path, create=True) as lake:
        if lake._store.hot.max_position() == 0:
            click.echo(f"Creating the sample lake in {lake_path} ({events:,} events) …")
            result = generate(lake, events=events, progress=sys.stderr.isatty())
            click.echo(f"  wrote {result['events']:,} events in {result['seconds']:.1f} s\n")


def _heading(text: str) -> None:
    click.echo()
    click.secho(text, bold=True)
    click.secho("─" * len(text), dim=True)


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _overview(lake: Any) -> None:
    _heading("1. What the lake holds")
    counts = lake.sql(
        "SELECT aggregate_type, event_type, count(*) AS events, count(DISTINCT aggregate_id) AS streams, "
        "min(occurred_at) AS first_occurred, max(occurred_at) AS last_occurred FROM events "
        "GROUP BY ALL ORDER BY aggregate_type, events DESC")
    echo_frame(counts.with_columns(pl.col("first_occurred", "last_occurred").dt.strftime("%Y-%m-%d")), "table")
    files = len(lake._store.manifest().files)
    click.echo(f"{int(counts['events'].sum()):,} events in {files} Parquet files (+ the SQLite hot tier), "
               "one DuckDB view `events` over both.")


def _corrected_account(lake: Any) -> tuple[str, datetime, datetime] | None:
    """An account with a back-dated correction: (id, when it occurred, when it was recorded)."""
    found = lake.sql(
        "SELECT aggregate_id, occurred_at, recorded_at FROM events WHERE event_type = 'MoneyDeposited' "
        "AND json_extract_string(data, '$.description') = 'Correction of a missed deposit' "
        "AND recorded_at - occurred_at > INTERVAL 3 DAY ORDER BY position LIMIT 1")
    if not found.height:
        return None
    return found.row(0)  # type: ignore[no-any-return]


def _one_account(lake: Any, account: str, occurred: datetime, as_of: datetime, recorded: datetime) -> None:
    from ..examples.bank import BankAccount

    _heading(f"2. One account through time: {account}")
    before = recorded - timedelta(seconds=1)
    then = lake.aggregate(BankAccount, account, as_of=as_of, known_at=before)
    now = lake.aggregate(BankAccount, account, as_of=as_of)
    latest = lake.aggregate(BankAccount, account)
    click.echo(f"A deposit to {account} that occurred {_when(occurred)} was only recorded {_when(recorded)} "
               "(a back-dated correction).")
    rows = [
        ("as of " + _when(as_of) + ", as known then", then),
        ("as of " + _when(as_of) + ", as known now", now),
        ("today", latest),
    ]
    for label, agg in rows:
        if agg is None:
            click.echo(f"  {label:<48} (did not exist)")
        else:
            click.echo(f"  {label:<48} balance {agg.balance:>10,.2f}  {agg.status:<7} version {agg.version}")
    click.echo(f"  CLI: es-analytics state {account} --as-of {as_of.isoformat()} --known-at {before.isoformat()}")


def _all_accounts(lake: Any, as_of: datetime) -> None:
    from ..examples.bank import BankAccount

    _heading(f"3. Every account as of {_when(as_of)}")
    started = time.perf_counter()
    states = lake.states(BankAccount, as_of=as_of)
    seconds = time.perf_counter() - started
    by_status = states.group_by("status").agg(pl.len().alias("accounts"), pl.col("balance").sum().alias("balance"))
    echo_frame(by_status.sort("status"), "table")
    click.echo(f"{states.height:,} accounts rebuilt in {seconds * 1000:.0f} ms (one DuckDB query). Richest five:")
    echo_frame(states.sort("balance", descending=True).head(5), "table")


def _patterns(lake: Any, start: datetime, end: datetime, build: Path) -> Path:
    from .. import patterns

    _heading("4. When do deposits happen?")
    result = patterns.analyze(lake, "MoneyDeposited", start, end, tz="UTC", closed="left")
    click.echo(f"{result.total_events:,} deposits from {start:%Y-%m-%d} to {end:%Y-%m-%d}: "
               f"{result.average_per_day:.1f} per day, busiest hour {result.peak_hour:02d}:00 UTC.")
    busy = result.hourly.filter(pl.col("hour").is_between(6, 21))
    click.echo(text_bars(busy, "hour", "count", label=lambda h: f"{h:02d}:00", width=36))
    weekday = result.daily.group_by(pl.col("date").dt.strftime("%a").alias("day"),
                                    pl.col("date").dt.weekday().alias("n")).agg(pl.col("count").mean().round(1))
    click.echo("  per weekday (mean): " + "  ".join(f"{d} {c:g}" for d, _, c in weekday.sort("n").iter_rows()))
    return save_pattern_chart(result, build / "deposit-patterns.png")


def _integrity(lake: Any) -> dict[str, Any]:
    _heading("5. Integrity")
    result: dict[str, Any] = lake.verify()
    mark = "OK" if result["ok"] else "FAILED"
    click.echo(f"hash chain over {result['checked_events']:,} events: {mark}; head {result['chain_head'][:16]}… "
               f"({len(result['files'])} files checked)")
    return result


def _report(lake: Any, account: str, known_at: datetime, as_of: datetime, build: Path) -> Path:
    """Evidence of what the lake said about the account before the correction, as one HTML file."""
    from .. import reports
    from ..examples.bank import BankAccount

    made = reports.as_known_at(lake, known_at, aggregate_id=account, aggregate_class=BankAccount, as_of=as_of)
    return made.save(build / f"known-at-{account}.html")


@click.command()
@lake_option
@click.option("--build", "build", type=click.Path(file_okay=False, path_type=Path), default=Path("build"),
              show_default=True, help="Where the report and the chart are written.")
@click.option("--events", "count", type=int, default=SAMPLE_EVENTS, show_default=True,
              help="Size of the sample lake if it has to be made.")
@translate
def demo(lake_path: Path, build: Path, count: int) -> None:
    """Show what es_analytics does, on the sample lake (made first if missing).

    Counts, one account and every account as of a past time (and as known then), a pattern summary, an
    integrity check; writes an HTML report and a chart under --build.

    \b
    Example:
      es-analytics demo --lake data/sample-lake
    """
    started = time.perf_counter()
    _ensure_sample(lake_path, count)
    build.mkdir(parents=True, exist_ok=True)
    with open_lake(lake_path) as lake:
        _overview(lake)
        span = lake.sql("SELECT min(occurred_at) AS lo, max(occurred_at) AS hi FROM events").row(0)
        corrected = _corrected_account(lake)
        if corrected is not None:
            account, occurred, recorded = corrected
            as_of = occurred + timedelta(hours=1)
            _one_account(lake, account, occurred, as_of, recorded)
        else:
            account = lake.sql("SELECT min(aggregate_id) AS a FROM events WHERE aggregate_type = 'BankAccount'")["a"][0]
            as_of = recorded = span[0] + (span[1] - span[0]) / 2
        _all_accounts(lake, as_of)
        first, last = lake.sql("SELECT min(occurred_at) AS lo, max(occurred_at) AS hi FROM events "
                               "WHERE event_type = 'MoneyDeposited'").row(0)
        day = timedelta(days=1)
        start = first.replace(hour=0, minute=0, second=0, microsecond=0)
        chart = _patterns(lake, start, last.replace(hour=0, minute=0, second=0, microsecond=0) + day, build)
        _integrity(lake)
        report = _report(lake, account, recorded - timedelta(seconds=1), as_of, build)
    _heading("Written")
    click.echo(f"  chart   {chart}   (hourly and daily deposits)")
    click.echo(f"  report  {report}   (what the lake said about {account} before the correction)")
    click.echo(f"\nDone in {time.perf_counter() - started:.1f} s. Next: `make lab` for the notebooks, "
               "`es-analytics --help` for every command.")


def _notebooks_dir() -> Path:
    checkout = Path(__file__).resolve().parents[2]
    folder = checkout / "notebooks"
    return folder if folder.is_dir() else Path.cwd()


@click.command()
@lake_option
@click.option("--notebooks", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Notebook folder (default: notebooks/ of the checkout).")
@click.option("--port", type=int, default=None, help="Port (default: JupyterLab's).")
@click.option("--browser/--no-browser", default=True, show_default=True, help="Open a browser.")
@click.option("--dry-run", is_flag=True, help="Print the command instead of starting JupyterLab.")
@translate
def lab(lake_path: Path, notebooks: Path | None, port: int | None, browser: bool, dry_run: bool) -> None:
    """Start JupyterLab on the notebooks with the lake ready (ES_ANALYTICS_LAKE set; sample made if missing).

    \b
    Example:
      es-analytics lab --lake data/sample-lake
    """
    _ensure_sample(lake_path, SAMPLE_EVENTS)
    folder = notebooks or _notebooks_dir()
    command = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={folder}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    if not browser:
        command.append("--no-browser")
    if port is not None:
        command.append(f"--port={port}")
    env = {**os.environ, "ES_ANALYTICS_LAKE": str(lake_path.expanduser().absolute())}
    if dry_run:
        click.echo(f"ES_ANALYTICS_LAKE={env['ES_ANALYTICS_LAKE']} " + " ".join(command))
        return
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        raise click.ClickException("JupyterLab is not installed: pip install 'es_analytics[notebooks]'") from None
    click.echo(f"JupyterLab on {folder} with ES_ANALYTICS_LAKE={env['ES_ANALYTICS_LAKE']}", err=True)
    os.execve(sys.executable, command, env)
