"""Fold path, snapshots and upcasting benchmarks, each against its baseline in the same run.

    python benchmarks/bench_fold.py [--lake /work/bench/lake-10m] [--reps 30]

Baselines: the seed's row store (SQLite ``events`` table, Python replay) and hand-written DuckDB SQL on
the lake's Parquet files for one account; a load without snapshots for the snapshot figures; reading
with an empty upcaster registry for the upcasting cost. Prints one table with medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from es_analytics import Event, Lake, Repository, UpcasterRegistry
from es_analytics.examples import users  # noqa: F401  (registers the UserRegistered upcasters)
from es_analytics.examples.bank import BankAccount
from es_analytics.repository import load
from es_analytics.upcasting import upcast_frame

ROWS: list[tuple[str, str, str, str, str]] = []


def median_ms(fn: Callable[[int], Any], reps: int) -> float:
    fn(0)  # warm
    times = []
    for i in range(reps):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def row(operation: str, ours: float, base: float, baseline: str, unit: str = "ms") -> None:
    ROWS.append((operation, f"{ours:,.2f} {unit}", f"{base:,.2f} {unit}", f"{base / ours:,.1f}x", baseline))


def row_store_balance(con: sqlite3.Connection, aggregate_id: str, as_of: str | None) -> Decimal:
    """The seed's way: select the stream from the row store and replay it in Python."""
    sql = "SELECT event_type, event_data FROM events WHERE aggregate_id = ?"
    params: list[Any] = [aggregate_id]
    if as_of is not None:
        sql += " AND timestamp <= ?"
        params.append(as_of)
    balance = Decimal(0)
    for event_type, data in con.execute(sql + " ORDER BY aggregate_version", params):
        payload = json.loads(data)
        if event_type == "AccountOpened":
            balance = Decimal(str(payload["initialDeposit"]))
        elif event_type == "MoneyDeposited":
            balance += Decimal(str(payload["amount"]))
        elif event_type == "MoneyWithdrawn":
            balance -= Decimal(str(payload["amount"]))
    return balance


def duckdb_balance(con: duckdb.DuckDBPyConnection, files: list[str], aggregate_id: str, as_of: datetime | None) -> Any:
    """Hand-written DuckDB SQL over the lake's Parquet files (the anchor's 'DuckDB on Parquet')."""
    amount = "CAST(json_extract_string(data, '$.{}') AS DECIMAL(18, 2))"
    return con.sql(
        "SELECT sum(CASE event_type WHEN 'AccountOpened' THEN " + amount.format("initialDeposit")
        + " WHEN 'MoneyDeposited' THEN " + amount.format("amount") + " WHEN 'MoneyWithdrawn' THEN -"
        + amount.format("amount") + " ELSE 0 END) FROM read_parquet(?) WHERE aggregate_id = ? "
        "AND (? IS NULL OR occurred_at <= ?)", params=[files, aggregate_id, as_of, as_of],
    ).fetchall()[0][0]


def bench_one_account(lake: Lake, rowstore: Path, reps: int) -> None:
    accounts = lake.sql("SELECT count(*) AS n FROM events WHERE event_type = 'AccountOpened'")["n"].item()
    ids = [f"acc-{i:07d}" for i in range(0, accounts, max(1, accounts // 200))]
    as_of = datetime(2025, 10, 1, tzinfo=timezone.utc)
    files = [str(lake.path / f.path) for f in lake._store.manifest().files if "BankAccount" in f.path]
    rs = sqlite3.connect(rowstore)
    duck = duckdb.connect()
    for label, when in (("current state", None), ("as of 2025-10-01", as_of)):
        iso = None if when is None else when.isoformat()
        check = next(i for i in ids if lake.aggregate(BankAccount, i, as_of=when) is not None)
        ours_state = lake.aggregate(BankAccount, check, as_of=when)
        assert ours_state is not None
        assert ours_state.balance == row_store_balance(rs, check, iso) == duckdb_balance(duck, files, check, when)
        ours = median_ms(lambda i: lake.aggregate(BankAccount, ids[i % len(ids)], as_of=when), reps)
        base_rs = median_ms(lambda i: row_store_balance(rs, ids[i % len(ids)], iso), reps)
        base_duck = median_ms(lambda i: duckdb_balance(duck, files, ids[i % len(ids)], when), reps)
        row(f"one account, {label}: lake.aggregate", ours, base_rs, "row store + Python replay")
        row(f"one account, {label}: lake.aggregate", ours, base_duck, "hand-written DuckDB on Parquet")
    rs.close()
    duck.close()


def bench_snapshots(reps: int, length: int = 5000) -> None:
    with tempfile.TemporaryDirectory() as folder, Lake.open(Path(folder) / "lake", durability="normal") as lake:
        start = datetime(2025, 1, 1, tzinfo=timezone.utc)
        events = [Event("AccountOpened", {"accountId": "a", "initialDeposit": 1, "accountHolder": "A"},
                        occurred_at=start)]
        events += [Event("MoneyDeposited", {"amount": 1, "description": "", "newBalance": 0},
                         occurred_at=start + timedelta(minutes=i)) for i in range(1, length)]
        for lo in range(0, length, 500):
            lake.append("long", events[lo:lo + 500], expected_version=lo, aggregate_type="BankAccount")
        lake.seal()
        Repository(lake, BankAccount, snapshot_every=100).get("long")  # takes the snapshot
        assert load(lake, BankAccount, "long") == load(lake, BankAccount, "long", use_snapshots=False)
        ours = median_ms(lambda i: load(lake, BankAccount, "long"), reps)
        base = median_ms(lambda i: load(lake, BankAccount, "long", use_snapshots=False), reps)
        row(f"{length:,}-event stream, current state", ours, base, "same fold without snapshots")
        mid = start + timedelta(minutes=length // 2)
        ours = median_ms(lambda i: load(lake, BankAccount, "long", as_of=mid), reps)
        base = median_ms(lambda i: load(lake, BankAccount, "long", as_of=mid, use_snapshots=False), reps)
        row(f"{length:,}-event stream, as of its middle", ours, base, "same fold without snapshots "
            "(no snapshot lies before T: the fold starts at 0)")


def user_registered_v1_to_v2_vectorized(texts: pl.Series) -> pl.Series:
    """The example's v1 -> v2 step on payloads alone: the payload does not change (the row step adds
    ``metadata.correlationId``, which a payload-only step cannot)."""
    return texts


def user_registered_v2_to_v3_vectorized(texts: pl.Series) -> pl.Series:
    """The example's v2 -> v3 step for fixed-shape payloads, without Python per event."""
    v2 = texts.str.json_decode(pl.Struct({"id": pl.String, "email": pl.String, "name": pl.String,
                                          "newsletter": pl.Boolean}))
    p = pl.col("p").struct
    return pl.DataFrame({"p": v2}).select(pl.struct(
        p.field("id").alias("userId"),
        profile=pl.struct(p.field("email"), p.field("name")),
        preferences=pl.struct(newsletter=p.field("newsletter").fill_null(False)),
    ).struct.json_encode()).to_series()


def bench_upcasting(lake: Lake) -> None:
    registry = lake.upcasters
    counts = lake.sql("SELECT count(*) AS n FROM events WHERE event_type = 'UserRegistered' AND schema_version < 3")
    old = counts["n"].item()

    def read(i: int) -> None:
        lake.events(types="UserRegistered")

    ours = median_ms(read, 3)
    rows_result = lake.events(types="UserRegistered")
    vectorized = UpcasterRegistry()
    vectorized.register("UserRegistered", 1, user_registered_v1_to_v2_vectorized, vectorized=True)
    vectorized.register("UserRegistered", 2, user_registered_v2_to_v3_vectorized, vectorized=True)
    lake.upcasters = vectorized
    same = ["schema_version", "data"]  # same payloads, byte for byte (metadata: only the row step adds one)
    assert lake.events(types="UserRegistered").select(same).equals(rows_result.select(same))
    fast = median_ms(read, 3)
    lake.upcasters = UpcasterRegistry()
    base = median_ms(read, 3)
    lake.upcasters = registry
    row(f"lake.events(types='UserRegistered') ({old:,} old-version rows upcast)", ours, base,
        "same read, no upcasters")
    row("  same, with vectorized (polars) upcasters", fast, base, "same read, no upcasters")
    frame = lake.sql("SELECT * FROM events WHERE event_type = 'UserRegistered'")
    fast = median_ms(lambda i: upcast_frame(frame, vectorized), 3)
    slow = median_ms(lambda i: upcast_frame(frame, registry), 3)
    row("upcast_frame alone, vectorized (polars) upcasters", fast, slow, "row (dict) upcasters, same frame")
    sql = ("SELECT data->>'$.preferences.newsletter' AS newsletter, count(*) FROM {} "
           "WHERE event_type = 'UserRegistered' GROUP BY 1")
    ours = median_ms(lambda i: lake.sql(sql.format("events_upcast")), 3)
    base = median_ms(lambda i: lake.sql(sql.format("events")), 3)
    row("SQL: newsletter count over events_upcast", ours, base, "same query over events (not upcast)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lake", default="/work/bench/lake-10m")
    parser.add_argument("--rowstore", default="/work/bench/lake-10m-rowstore.sqlite")
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    bench_snapshots(args.reps)
    with Lake.open(args.lake) as lake:
        n = lake.sql("SELECT count(*) AS n FROM events")["n"].item()
        print(f"lake: {args.lake} ({n:,} events)")
        bench_one_account(lake, Path(args.rowstore), args.reps)
        bench_upcasting(lake)
    width = [max(len(r[i]) for r in ROWS) for i in range(5)]
    header = ("operation", "ours", "baseline", "ratio", "baseline is")
    print(" | ".join(h.ljust(w) for h, w in zip(header, width)))
    print("-|-".join("-" * w for w in width))
    for r in ROWS:
        print(" | ".join(c.ljust(w) for c, w in zip(r, width)))


if __name__ == "__main__":
    main()
