"""Pattern analysis benchmarks against the seed's approach and a hand-written DuckDB query, in the same run.

    python benchmarks/bench_patterns.py [--lake /work/bench/lake-10m] [--rowstore PATH] [--events N]
                                        [--repeat 5] [--skip-seed]

Without ``--events`` the shared 10M-event benchmark lake is used (``benchmarks/make_lake.py`` makes it once);
``--events N`` instead makes a sample lake of N events in a temporary folder (and no row store: the seed
baseline is then skipped). Prints one table: each operation, our figure, the baseline's, the ratio (baseline
time / our time) and the target.

Baselines:
- *seed*: load all events from the seed's SQLite row store (JSON payloads parsed, as the seed's store
  returns them; streamed in chunks, which is kinder than the seed's all-in-memory list), then loop in
  Python: filter by type and window, local hour and date with ``zoneinfo``, count in dicts.
- *DuckDB by hand*: one query over the same Parquet files, converting every row to local time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from es_analytics import Lake, patterns
from es_analytics.patterns._rollup import ROLLUP_DIR
from es_analytics.sample import generate

from make_lake import DEFAULT

EVENT_TYPE = "MoneyDeposited"
TZ = "Europe/Berlin"
START, END = datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 1, tzinfo=timezone.utc)
HAND_WRITTEN = """
SELECT hour(timezone(?, occurred_at)) AS hour, CAST(timezone(?, occurred_at) AS DATE) AS date, count(*) AS count
FROM read_parquet(?)
WHERE event_type = ? AND occurred_at >= ? AND occurred_at < ?
GROUP BY ALL
"""


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs (seconds) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def seed_analyze(rowstore: Path) -> tuple[int, Counter[int], Counter[str]]:
    """The seed's way: every event out of the row store into Python, then a loop."""
    zone = ZoneInfo(TZ)
    hourly: Counter[int] = Counter()
    daily: Counter[str] = Counter()
    total = 0
    con = sqlite3.connect(f"file:{rowstore}?mode=ro", uri=True)
    cursor = con.execute("SELECT event_id, aggregate_id, aggregate_type, event_type, event_data, metadata, "
                         "timestamp, aggregate_version FROM events ORDER BY id")
    while rows := cursor.fetchmany(50_000):
        for row in rows:
            event = {"eventId": row[0], "aggregateId": row[1], "aggregateType": row[2], "eventType": row[3],
                     "eventData": json.loads(row[4]), "metadata": json.loads(row[5] or "{}"),
                     "timestamp": datetime.fromisoformat(row[6]), "version": row[7]}
            if event["eventType"] == EVENT_TYPE and START <= event["timestamp"] < END:
                local = event["timestamp"].astimezone(zone)
                hourly[local.hour] += 1
                daily[local.date().isoformat()] += 1
                total += 1
    con.close()
    return total, hourly, daily


def hand_written(lake: Lake) -> Any:
    files = [str(lake.path / f.path) for f in lake._store.manifest().files]
    con = duckdb.connect()
    try:
        return con.sql(HAND_WRITTEN, params=[TZ, TZ, files, EVENT_TYPE, START, END]).pl()
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, default=DEFAULT)
    parser.add_argument("--rowstore", type=Path, default=Path("/work/bench/lake-10m-rowstore.sqlite"))
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-seed", action="store_true")
    args = parser.parse_args()
    scratch = None
    if args.events is not None:
        scratch = Path(tempfile.mkdtemp())
        with Lake.open(scratch / "lake") as fresh:
            generate(fresh, events=args.events)
        path, rowstore = scratch / "lake", None
    else:
        if not (args.lake / "lake.json").exists():
            sys.exit(f"no benchmark lake at {args.lake}: run benchmarks/make_lake.py first")
        path, rowstore = args.lake, args.rowstore if args.rowstore.exists() and not args.skip_seed else None
    rows: list[tuple[str, float, float | None, str, str]] = []
    try:
        with Lake.open(path) as lake:
            n = lake.sql("SELECT count(*) AS n FROM events")["n"].item()
            shutil.rmtree(path / ROLLUP_DIR, ignore_errors=True)  # measure the first call from nothing
            cold, result = timed(lambda: patterns.analyze(lake, EVENT_TYPE, START, END, tz=TZ), 1)
            warm, result = timed(lambda: patterns.analyze(lake, EVENT_TYPE, START, END, tz=TZ), args.repeat)
            by_hand, frame = timed(lambda: hand_written(lake), args.repeat)
            assert frame["count"].sum() == result.total_events, "the hand-written query disagrees"
            odd_end = END.replace(second=1)  # not on a quarter hour: no rollups, a scan of the events
            scan, _ = timed(lambda: patterns.analyze(lake, EVENT_TYPE, START, odd_end, tz=TZ), args.repeat)
            seed_time = None
            if rowstore is not None:
                seed_time, (total, hourly, daily) = timed(lambda: seed_analyze(rowstore), 1)
                assert total == result.total_events, f"seed loop counted {total}, analyze {result.total_events}"
                assert [hourly[h] for h in range(24)] == result.hourly["count"].to_list(), "hourly differs"
                assert daily == {d.isoformat(): c for d, c in result.active_daily.iter_rows()}, "daily differs"
                rows.append(("analyze (warm), 1 year, Europe/Berlin", warm, seed_time, "seed: load all, loop in Python",
                             "<= 0.5 s"))
            rows += [
                ("analyze (warm), 1 year, Europe/Berlin", warm, by_hand, "DuckDB by hand, per-row time zone",
                 "<= 0.5 s"),
                ("analyze, first call (builds rollups)", cold, by_hand, "DuckDB by hand, per-row time zone", "-"),
                ("analyze, window not on quarter hours (scan)", scan, by_hand, "DuckDB by hand, per-row time zone",
                 "-"),
            ]
            others: list[tuple[str, Callable[[], Any]]] = [
                ("heatmap (weekday x hour), all types", lambda: patterns.heatmap(lake, None, START, END, tz=TZ)),
                ("trend, 7-day rolling mean", lambda: patterns.trend(lake, EVENT_TYPE, START, END, tz=TZ)),
                ("anomalies, every type", lambda: patterns.anomalies(lake, START, END, tz=TZ)),
                ("mix per week", lambda: patterns.mix(lake, START, END, every="week", tz=TZ)),
                ("latency AccountOpened -> MoneyWithdrawn",
                 lambda: patterns.latency(lake, "AccountOpened", "MoneyWithdrawn")),
                ("funnel, 4 steps", lambda: patterns.funnel(
                    lake, ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn", "AccountClosed"])),
                ("cohorts, BankAccount", lambda: patterns.cohorts(lake, aggregate_type="BankAccount", tz=TZ)),
                ("top 10 user_id", lambda: patterns.top(lake, "user_id")),
            ]
            for label, fn in others:
                seconds, _ = timed(fn, max(1, args.repeat // 2))
                rows.append((label, seconds, None, "", "-"))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nlake {path}: {n:,} events; {EVENT_TYPE} in 2025: {result.total_events:,}; best of {args.repeat}\n")
    print("| operation | ours | baseline | ratio | baseline is | target |")
    print("|---|---|---|---|---|---|")
    for label, ours, base, what, target in rows:
        base_s = f"{base:,.3f} s" if base is not None else "-"
        ratio = f"{base / ours:,.1f}x" if base is not None else "-"
        print(f"| {label} | {ours:,.3f} s | {base_s} | {ratio} | {what} | {target} |")


if __name__ == "__main__":
    main()
