"""Projection benchmarks against a hand-written DuckDB query and a seed-style per-event replay, same run.

    python benchmarks/bench_projections.py [--lake /work/bench/lake-10m] [--events N] [--repeat 2]
                                           [--skip-replay] [--refresh-events 10000]

Without ``--events`` the shared benchmark lake is used (read only: nothing is written into it); with
``--events N`` a fresh sample lake of N events is made in a temporary folder. The seed-style replay reads
the same events from the row store next to the lake (``<lake>-rowstore.sqlite``, made by
``bench_lake.py``) in commit order and applies them one by one in Python, as the seed's projection
handlers did. The refresh benchmark copies the lake into a temporary folder (the shared lake is never
appended to), materialises ``account_summary`` and ``account_transactions``, appends new events and
times ``lake.refresh``.

Prints one table: each operation, our figure, the baseline's, the ratio and the target.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from es_analytics import Event, Lake
from es_analytics.examples.bank import account_summary, account_transactions

from make_lake import DEFAULT

# The hand-written query for the seed's account summary over the same events: one pass, FILTERed
# aggregates, the amount parsed once per row.
HAND_WRITTEN = """
WITH e AS (
  SELECT aggregate_id, aggregate_version, event_type, occurred_at,
         TRY_CAST(json_extract_string(data, CASE event_type WHEN 'AccountOpened' THEN '$.initialDeposit'
                                                             ELSE '$.amount' END) AS DECIMAL(18,4)) AS amount,
         CASE WHEN event_type = 'AccountOpened' THEN json_extract_string(data, '$.accountHolder') END AS holder
  FROM events WHERE aggregate_type = 'BankAccount')
SELECT aggregate_id AS account_id,
  arg_max(holder, aggregate_version) FILTER (WHERE event_type = 'AccountOpened') AS account_holder,
  coalesce(sum(CASE event_type WHEN 'MoneyWithdrawn' THEN -amount ELSE amount END)
    FILTER (WHERE event_type IN ('AccountOpened', 'MoneyDeposited', 'MoneyWithdrawn')), 0) AS current_balance,
  coalesce(arg_max(CASE event_type WHEN 'AccountClosed' THEN 'closed' ELSE 'active' END, aggregate_version)
    FILTER (WHERE event_type IN ('AccountOpened', 'AccountClosed')), 'pending') AS status,
  coalesce(sum(amount) FILTER (WHERE event_type IN ('AccountOpened', 'MoneyDeposited')), 0) AS total_deposits,
  coalesce(sum(amount) FILTER (WHERE event_type = 'MoneyWithdrawn'), 0) AS total_withdrawals,
  count(*) FILTER (WHERE event_type IN ('AccountOpened', 'MoneyDeposited', 'MoneyWithdrawn')) AS transaction_count,
  min(occurred_at) FILTER (WHERE event_type = 'AccountOpened') AS opened_at,
  max(occurred_at) AS last_activity,
  max(aggregate_version) AS version
FROM e GROUP BY aggregate_id ORDER BY aggregate_id
"""


def once(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one run (seconds) and its result."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall time of ``repeat`` runs after one warm-up run (seconds) and the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def seed_style_replay(rows_db: Path) -> dict[str, dict[str, Any]]:
    """The seed's projection: every event read in commit order, its JSON parsed, a handler per type applied."""
    con = sqlite3.connect(rows_db)
    summary: dict[str, dict[str, Any]] = {}
    cursor = con.execute("SELECT aggregate_id, event_type, event_data, timestamp, aggregate_version FROM events "
                         "WHERE aggregate_type = 'BankAccount' ORDER BY id")
    while batch := cursor.fetchmany(10_000):
        for aggregate_id, event_type, text, timestamp, version in batch:
            data = json.loads(text)
            if event_type == "AccountOpened":
                amount = Decimal(str(data["initialDeposit"]))
                summary[aggregate_id] = {"account_holder": data["accountHolder"], "current_balance": amount,
                                         "status": "active", "total_deposits": amount,
                                         "total_withdrawals": Decimal(0), "transaction_count": 1,
                                         "opened_at": timestamp, "last_activity": timestamp, "version": version}
                continue
            row = summary[aggregate_id]
            if event_type == "MoneyDeposited":
                amount = Decimal(str(data["amount"]))
                row["current_balance"] += amount
                row["total_deposits"] += amount
                row["transaction_count"] += 1
            elif event_type == "MoneyWithdrawn":
                amount = Decimal(str(data["amount"]))
                row["current_balance"] -= amount
                row["total_withdrawals"] += amount
                row["transaction_count"] += 1
            elif event_type == "AccountClosed":
                row["status"] = "closed"
            row["last_activity"] = max(row["last_activity"], timestamp)
            row["version"] = version
    con.close()
    return summary


def bench_full_build(path: Path, repeat: int, replay: bool) -> list[tuple[str, float, float | None, str, str]]:
    out: list[tuple[str, float, float | None, str, str]] = []
    with Lake.open(path, auto_seal_rows=0) as lake:
        events = lake.sql("SELECT count(*) AS n FROM events")["n"].item()
        ours, frame = timed(lambda: lake.project(account_summary), repeat)
        hand, expected = timed(lambda: lake.sql(HAND_WRITTEN), repeat)
        assert frame.height == expected.height, (frame.height, expected.height)
        assert frame["current_balance"].sum() == expected["current_balance"].sum()
        out.append((f"account_summary full build, {events:,} events", ours, hand, "hand-written DuckDB query",
                    "<= 1.2x"))
        ledger, rows = once(lambda: lake.project(account_transactions))
        out.append((f"account_transactions full build ({rows.height:,} rows)", ledger, None, "", "(information)"))
    rows_db = path.parent / (path.name + "-rowstore.sqlite")
    if replay and rows_db.exists():
        started = time.perf_counter()
        summary = seed_style_replay(rows_db)  # once: it takes minutes
        seconds = time.perf_counter() - started
        assert len(summary) == frame.height
        out.append(("account_summary full build (replay baseline)", ours, seconds,
                    "seed-style per-event Python replay (row store)", ">= 10x"))
    return out


def bench_refresh(path: Path, new_events: int) -> list[tuple[str, float, float | None, str, str]]:
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmp:
        copy = Path(tmp) / "lake"
        started = time.perf_counter()
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns("projections", "processors", "cache"))
        print(f"copied the lake in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        with Lake.open(copy, durability="normal", auto_seal_rows=0) as lake:
            accounts = lake.sql("SELECT aggregate_id, max(aggregate_version) AS v FROM events WHERE "
                                "aggregate_type = 'BankAccount' AND aggregate_id IN (SELECT aggregate_id FROM events "
                                "WHERE event_type = 'AccountClosed') IS NOT TRUE GROUP BY 1 LIMIT 20000")
            full, _ = once(lambda: (lake.materialize(account_summary), lake.materialize(account_transactions)))
            rng = random.Random(7)
            chosen = accounts.sample(n=min(2_000, accounts.height), seed=7).rows()
            per = max(1, new_events // len(chosen))
            for aggregate_id, version in chosen:
                batch = [Event("MoneyDeposited", {"amount": rng.randint(1, 500), "description": "bench",
                                                  "newBalance": 0}) for _ in range(per)]
                lake.append(aggregate_id, batch, expected_version=version, aggregate_type="BankAccount")
            added = per * len(chosen)
            summary, done = once(lambda: lake.refresh(account_summary))
            assert done[0]["events"] == added, done
            ledger, _ = once(lambda: lake.refresh(account_transactions))
            rows = lake.projections()["rows"].to_list()
    return [
        (f"refresh account_summary after {added:,} new events ({rows[0]:,} accounts)", summary, full,
         "materialising both projections in full", "<= 0.5 s"),
        (f"refresh account_transactions after {added:,} new events", ledger, None, "", "(information)"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, default=DEFAULT)
    parser.add_argument("--events", type=int, default=None, help="make a fresh sample lake of N events instead")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-replay", action="store_true")
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--refresh-events", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.lake
        if args.events is not None:
            from es_analytics.sample import generate

            path = Path(tmp) / "lake"
            with Lake.open(path, durability="normal") as lake:
                generate(lake, events=args.events)
        if not (path / "manifest.json").exists():
            sys.exit(f"no lake at {path}; run benchmarks/make_lake.py or pass --events N")
        rows = [] if args.skip_full else bench_full_build(path, args.repeat, not args.skip_replay)
        rows += bench_refresh(path, args.refresh_events)
    print("| operation | ours | baseline | ratio | baseline is | target |")
    print("|---|---|---|---|---|---|")
    for name, ours, base, what, target in rows:
        ratio = f"{base / ours:.1f}x faster" if base and base >= ours else (f"{ours / base:.2f}x" if base else "")
        print(f"| {name} | {ours:.3f} s | {f'{base:.3f} s' if base else ''} | {ratio} | {what} | {target} |")


if __name__ == "__main__":
    main()
