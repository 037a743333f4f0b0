"""Process analytics benchmark: es_analytics against pm4py and a hand-written DuckDB query, in the same run.

    python benchmarks/bench_process.py [--events 1000000] [--repeat 3] [--skip-pm4py]

A generated event log (cases of 1-12 events over 30 activities, equal timestamps included) is written once as
CSV and as plain Parquet. Rows of the table:

- ``ingest (CSV)``: ``ingest_event_log`` from the CSV into a fresh lake, end to end (events/s);
- ``directly_follows`` / ``variants`` / ``cases``: ``es_analytics.process`` on that lake, against
  - *pm4py*: ``discover_dfg``, ``get_variants``, ``get_all_case_durations`` on the log as a pandas frame
    (read and formatted once, not timed), and
  - *DuckDB by hand*: one query over the plain Parquet file (default row groups) computing the same
    columns.

Ratios are baseline time / our time (above 1: es_analytics is faster). pm4py is AGPL and a test-only
dependency; it is imported here only as a baseline.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from es_analytics import Lake
from es_analytics import process as pr
from es_analytics.ingest.eventlog import ingest_event_log

T0 = datetime(2020, 1, 1, tzinfo=timezone.utc)
HAND = {
    "directly_follows": """
        WITH p AS (SELECT "case", activity, lead(activity) OVER w AS target,
                          (epoch_us(lead(time) OVER w) - epoch_us(time)) / 1e6 AS s
                   FROM read_parquet(?) WINDOW w AS (PARTITION BY "case" ORDER BY time, row))
        SELECT activity, target, count(*), median(s), quantile_cont(s, 0.9), count(DISTINCT "case")
        FROM p WHERE target IS NOT NULL GROUP BY ALL""",
    "variants": """
        WITH v AS (SELECT list(activity ORDER BY time, row) AS variant FROM read_parquet(?) GROUP BY "case")
        SELECT variant, count(*) FROM v GROUP BY ALL""",
    "cases": """
        SELECT "case", min(time), max(time), (epoch_us(max(time)) - epoch_us(min(time))) / 1e6, count(*),
               list(activity ORDER BY time, row), count(*) - count(DISTINCT activity)
        FROM read_parquet(?) GROUP BY ALL""",
}


def make_log(events: int, folder: Path, seed: int = 11) -> tuple[Path, Path]:
    rng = random.Random(seed)
    names = [f"Activity {i:02d}" for i in range(30)]
    cases, activities, times = [], [], []
    c = 0
    while len(cases) < events:
        t = T0 + timedelta(minutes=rng.randrange(0, 60 * 24 * 365 * 3))
        for _ in range(rng.randint(1, 12)):
            cases.append(f"case-{c}")
            activities.append(names[min(29, int(rng.expovariate(0.15)))])
            times.append(t)
            t += timedelta(minutes=rng.choice([0, 5, 60, 600, 6000]))
        c += 1
    frame = pl.DataFrame({"case": cases[:events], "activity": activities[:events], "time": times[:events]})
    frame = frame.with_row_index("row")
    csv, parquet = folder / "log.csv", folder / "log.parquet"
    frame.with_columns(pl.col("time").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).drop("row").write_csv(csv)
    frame.write_parquet(parquet)
    return csv, parquet


def best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-pm4py", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-process-") as scratch:
        folder = Path(scratch)
        csv, parquet = make_log(args.events, folder)
        rows: list[tuple[str, str, str, str]] = []
        with Lake.open(folder / "lake") as lake:
            started = time.perf_counter()
            result = ingest_event_log(lake, csv, case="case", activity="activity", timestamp="time")
            seconds = time.perf_counter() - started
            assert result.imported == args.events, result.as_dict()
            rows.append(("ingest (CSV)", f"{args.events / seconds:,.0f} events/s", "", ""))
            ours = {
                "directly_follows": lambda: pr.directly_follows(lake, "Case"),
                "variants": lambda: pr.variants(lake, "Case"),
                "cases": lambda: pr.cases(lake, "Case"),
            }
            con = duckdb.connect()
            timings = {name: best(fn, args.repeat) for name, fn in ours.items()}
            hand = {name: best(lambda q=q: con.execute(q, [str(parquet)]).fetchall(), args.repeat)
                    for name, q in HAND.items()}
            theirs: dict[str, float] = {}
            if not args.skip_pm4py:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    import pm4py

                    log = pm4py.format_dataframe(pl.read_parquet(parquet).to_pandas(), case_id="case",
                                                 activity_key="activity", timestamp_key="time")
                    theirs = {
                        "directly_follows": best(lambda: pm4py.discover_performance_dfg(log), 1),
                        "variants": best(lambda: pm4py.get_variants(log), 1),
                        "cases": best(lambda: pm4py.get_all_case_durations(log), 1),
                    }
            for name, ours_s in timings.items():
                pm = f"{theirs[name] / ours_s:.1f}x (pm4py {theirs[name]:.2f} s)" if name in theirs else "skipped"
                rows.append((name, f"{ours_s:.3f} s", pm, f"{hand[name] / ours_s:.2f}x (by hand {hand[name]:.3f} s)"))
    print(f"| operation, {args.events:,} events | es_analytics | vs pm4py | vs DuckDB by hand |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    sys.exit(main())
