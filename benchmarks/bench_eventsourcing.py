"""The lake as the eventsourcing library's persistence module, against the library's own SQLite module.

Run: .venv/bin/python benchmarks/bench_eventsourcing.py [--events 200000]

Both stores get the same stored events (10 per aggregate, the JSON the library's transcoder writes) in
the same process and file system; the table shows each figure and the lake/SQLite ratio.
- insert: one event per call (durable commits), and batches of 1,000 events;
- catch-up: a follower reading the whole log in pages of 500 (what a subscription or a process
  application does), from the hot tier, and from sealed Parquet with and without the read-ahead window.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from eventsourcing.persistence import ApplicationRecorder, StoredEvent
from eventsourcing.sqlite import SQLiteFactory

from es_analytics.eventsourcing import LakeFactory
from es_analytics.eventsourcing.recorders import LakeApplicationRecorder

STATE = (
    b'{"amount":{"_type_":"decimal_str","_data_":"12.50"},"timestamp":{"_type_":"datetime_iso",'
    b'"_data_":"2024-03-01T09:30:00+00:00"},"originator_topic":"bank.domain:BankAccount"}'
)
PAGE = 500


def batches(total: int, size: int) -> list[list[StoredEvent]]:
    events = []
    for _ in range(total // 10):
        originator_id = uuid.uuid4()
        events += [StoredEvent(originator_id, v, "bank.domain:BankAccount.TransactionAppended", STATE) for v in range(1, 11)]
    return [events[i:i + size] for i in range(0, len(events), size)]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def insert_all(recorder: ApplicationRecorder, work: list[list[StoredEvent]]) -> float:
    return timed(lambda: [recorder.insert_events(b) for b in work])


def catch_up(select: Callable[[int], int]) -> float:
    def run() -> None:
        after = 0
        while True:
            last = select(after)
            if last == after:
                return
            after = last

    return timed(run)


def follow(recorder: ApplicationRecorder) -> Callable[[int], int]:
    def select(after: int) -> int:
        page = recorder.select_notifications(after, PAGE, inclusive_of_start=False)
        return page[-1].id if page else after

    return select


def follow_without_window(recorder: LakeApplicationRecorder) -> Callable[[int], int]:
    def select(after: int) -> int:
        with recorder.datastore.lock:
            page = recorder.datastore.store.read_positions(after, limit=PAGE)
        return page["position"][-1].as_py() if page.num_rows else after

    return select


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-es-"))
    sqlite = SQLiteFactory({"SQLITE_DBNAME": str(folder / "es.sqlite")}).application_recorder()
    factory = LakeFactory({"LAKE_PATH": str(folder / "lake"), "LAKE_AUTO_SEAL_ROWS": "0"})
    lake = factory.application_recorder()
    assert isinstance(lake, LakeApplicationRecorder)
    rows = []

    single = batches(5_000, 1)[:500]
    a, b = insert_all(sqlite, single), insert_all(lake, single)
    rows.append(("insert, 1 event per call (events/s)", len(single) / a, len(single) / b))
    bulk = batches(args.events, 1_000)
    a, b = insert_all(sqlite, bulk), insert_all(lake, bulk)
    rows.append((f"insert, batches of 1,000 ({args.events:,} events/s)", args.events / a, args.events / b))
    total = lake.max_notification_id()
    a, b = catch_up(follow(sqlite)), catch_up(follow(lake))
    rows.append((f"catch-up from the hot tier, pages of {PAGE} (events/s)", total / a, total / b))
    sealed = timed(factory.lake.seal)
    c = catch_up(follow(lake))
    rows.append((f"catch-up from sealed Parquet, read-ahead window (events/s; seal {sealed:.1f} s)", total / a, total / c))
    d = catch_up(follow_without_window(lake))
    rows.append(("catch-up from sealed Parquet, page by page, no window (events/s)", total / a, total / d))
    factory.close()

    print(f"{'operation':<82} {'SQLite module':>14} {'lake':>12} {'lake/SQLite':>12}")
    for name, base, ours in rows:
        print(f"{name:<82} {base:>14,.0f} {ours:>12,.0f} {ours / base:>11.2f}x")


if __name__ == "__main__":
    main()
