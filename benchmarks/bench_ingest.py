"""Ingest benchmark: N JSON Lines events into a fresh lake, with throughput and peak memory.

    python benchmarks/bench_ingest.py                  # 10M events (exported once from the benchmark lake)
    python benchmarks/bench_ingest.py --events 1000000 # the first million of them

The JSON Lines file is exported once, in commit order, from the benchmark lake that
``benchmarks/make_lake.py`` makes (/work/bench/lake-10m) and kept next to it. Each measured run happens in a
child process so its peak RSS is its own. Rows in the table (same file, same machine, same run):

- ``ingest``: ``es_analytics.ingest.ingest`` (validation, idempotency by event id, reject report, import);
- ``ingest again``: the same file a second time (every event already present: nothing is written);
- ``floor: parse only``: DuckDB reading and parsing the whole file with no validation and no lake;
- ``floor: import only``: the lake's bulk import of the already parsed events (no reading, no checks).

The target is 200,000 events/s for 10M events with bounded memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(os.environ.get("ES_ANALYTICS_BENCH_DIR", "/work/bench"))
TARGET = 200_000


def export_jsonl(path: Path, events: int) -> Path:
    """Write the first ``events`` events of the benchmark lake, in commit order, as JSON Lines (once)."""
    if path.exists():
        return path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_lake import DEFAULT, ensure_lake

    from es_analytics import Lake

    lake_path = ensure_lake(DEFAULT)
    tmp = path.with_suffix(".partial")
    started = time.perf_counter()
    with Lake.open(lake_path) as lake:
        store = lake._store
        store.refresh()
        with store.reader.lock:
            store.reader.con.execute("SET TimeZone = 'UTC'")
            if "'" in str(tmp):
                raise SystemExit(f"the benchmark folder must not contain a quote: {tmp}")
            store.reader.con.execute(
                "COPY (SELECT event_id, event_type, schema_version, aggregate_type, aggregate_id, aggregate_version, "
                "strftime(occurred_at, '%Y-%m-%dT%H:%M:%S.%fZ') AS occurred_at, data::JSON AS data, "
                f"metadata::JSON AS metadata FROM events ORDER BY position LIMIT {int(events)}) "
                f"TO '{tmp}' (FORMAT json)"
            )
    os.replace(tmp, path)
    print(f"exported {events:,} events to {path} ({path.stat().st_size / 1e9:.2f} GB) in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    return path


def child(mode: str, source: Path, lake_path: Path, batch: int) -> dict[str, float]:
    """One measured run (in this process); prints a JSON line with seconds and events."""
    from es_analytics import Lake

    started = time.perf_counter()
    if mode in ("ingest", "ingest again"):
        from es_analytics.ingest import ingest

        with Lake.open(lake_path) as lake:
            result = ingest(lake, source, batch_size=batch, rejects_path=lake_path.parent / "rejects.csv")
        events = result.read
        extra = {"imported": result.imported, "rejected": result.rejected, "already_present": result.already_present}
    elif mode == "parse":
        import duckdb

        con = duckdb.connect()
        events = con.sql(
            "SELECT count(*), sum(length(data::VARCHAR)) FROM read_json(?, format='newline_delimited', "
            "columns={'event_id':'VARCHAR','event_type':'VARCHAR','schema_version':'INTEGER','aggregate_type':'VARCHAR',"
            "'aggregate_id':'VARCHAR','aggregate_version':'BIGINT','occurred_at':'TIMESTAMPTZ','data':'JSON',"
            "'metadata':'JSON'})", params=[str(source)]).fetchall()[0][0]
        extra = {}
    else:  # import: parse outside the clock, then time the lake's bulk import alone
        import duckdb

        con = duckdb.connect()
        reader = con.sql(
            "SELECT event_id, event_type, schema_version, aggregate_type, aggregate_id, aggregate_version, "
            "occurred_at, data::VARCHAR AS data, metadata::VARCHAR AS metadata FROM read_json(?, "
            "format='newline_delimited', columns={'event_id':'VARCHAR','event_type':'VARCHAR',"
            "'schema_version':'INTEGER','aggregate_type':'VARCHAR','aggregate_id':'VARCHAR',"
            "'aggregate_version':'BIGINT','occurred_at':'TIMESTAMPTZ','data':'JSON','metadata':'JSON'})",
            params=[str(source)]).to_arrow_table()
        started = time.perf_counter()
        with Lake.open(lake_path) as lake:
            lake._store.compact_after_files = 0
            for offset in range(0, reader.num_rows, batch):
                lake._store.import_table(reader.slice(offset, batch), check_event_ids=False)
        events = reader.num_rows
        extra = {}
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "events": events, **extra}


def measure(mode: str, source: Path, lake_path: Path, batch: int) -> dict[str, float]:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--source", str(source), "--lake", str(lake_path),
                           "--batch", str(batch)], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{mode} failed:\n{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=500_000)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--lake", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip", nargs="*", default=[], help="modes to skip: parse import again")
    args = parser.parse_args()
    if args.child:
        result = child(args.child, args.source, args.lake, args.batch)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    source = export_jsonl(BENCH / f"events-{args.events}.jsonl", args.events)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=BENCH))
    rows = []
    try:
        plan = [("ingest", "lake"), ("ingest again", "lake"), ("parse", None), ("import", "lake2")]
        skip = {"again": "ingest again", "parse": "parse", "import": "import"}
        for mode, lake_name in plan:
            if any(skip.get(s) == mode for s in args.skip):
                continue
            result = measure(mode, source, work / (lake_name or "unused"), args.batch)
            rows.append((mode, result))
            print(f"  {mode}: {result}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = source.stat().st_size
    print(f"\nIngest of {args.events:,} JSON Lines events ({size / 1e9:.2f} GB), batch {args.batch:,}, "
          f"{os.cpu_count()} cores")
    print(f"{'run':<22}{'seconds':>9}{'events/s':>12}{'vs target':>11}{'peak RSS MB':>13}")
    labels = {"parse": "floor: parse only", "import": "floor: import only"}
    for mode, result in rows:
        rate = result["events"] / result["seconds"]
        print(f"{labels.get(mode, mode):<22}{result['seconds']:>9.1f}{rate:>12,.0f}{rate / TARGET:>10.2f}x"
              f"{result['peak_rss_mb']:>13,.0f}")
    print(f"target: {TARGET:,} events/s")


if __name__ == "__main__":
    main()
