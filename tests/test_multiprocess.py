"""Several processes append to the same lake and streams at once: nothing lost, nothing twice."""

from __future__ import annotations

import json
import multiprocessing as mp
import random
from pathlib import Path

import polars as pl

from es_analytics import ConcurrencyError, Event, Lake

WORKERS = 4
APPENDS = 500
STREAMS = 6


def _worker(path: str, worker: int, log: str) -> None:
    """Append with random expected versions (often stale) and ids given or made; log every acknowledged event id."""
    rng = random.Random(worker)
    acknowledged = []
    with Lake.open(path, auto_seal_rows=300) as lake:
        for n in range(APPENDS):
            stream = f"s{rng.randrange(STREAMS)}"
            # Ids given (indexed in the hot tier) or made with the events (not indexed; their one-event
            # appends rely on the position check alone), at random.
            made = rng.random() < 0.5
            events = [Event("Counted", {"worker": worker, "n": n, "k": k},
                            event_id=None if made else f"w{worker}-{n}-{k}")
                      for k in range(rng.choice((1, 1, 2, 3)))]
            guess = rng.choice(["fresh", "stale", "any"])
            expected = None if guess == "any" else lake.current_version(stream)
            if guess == "stale" and expected:
                expected -= rng.randint(1, expected)
            try:
                version = lake.append(stream, events, expected_version=expected, aggregate_type="Counter")
            except ConcurrencyError:
                continue
            acknowledged.append({"stream": stream, "version": version, "ids": [e.event_id for e in events]})
    Path(log).write_text(json.dumps(acknowledged))


def test_concurrent_appends_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    lake_path = tmp_path / "lake"
    Lake.open(lake_path).close()
    ctx = mp.get_context("spawn")
    logs = [tmp_path / f"w{i}.json" for i in range(WORKERS)]
    procs = [ctx.Process(target=_worker, args=(str(lake_path), i, str(logs[i]))) for i in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    acknowledged = [a for log in logs for a in json.loads(log.read_text())]
    assert len(acknowledged) > APPENDS  # plenty of appends went through despite stale versions
    with Lake.open(lake_path) as lake:
        lake.seal()
        frame = lake.events()
        stored = frame["event_id"].to_list()
        assert len(stored) == len(set(stored))
        acked_ids = [i for a in acknowledged for i in a["ids"]]
        assert set(acked_ids) == set(stored)  # every acknowledged event once, nothing else
        versions = frame.group_by("aggregate_id").agg(
            pl.col("aggregate_version").sort().alias("v"), pl.len().alias("n"))
        for row in versions.iter_rows(named=True):
            assert row["v"] == list(range(1, row["n"] + 1)), row["aggregate_id"]
            assert lake.current_version(row["aggregate_id"]) == row["n"]
        # each acknowledged append's events sit at the versions it reported, in order
        by_id = dict(zip(frame["event_id"], zip(frame["aggregate_id"], frame["aggregate_version"])))
        for a in acknowledged:
            expected = [(a["stream"], a["version"] - len(a["ids"]) + 1 + k) for k in range(len(a["ids"]))]
            assert [by_id[i] for i in a["ids"]] == expected
        assert frame["position"].to_list() == list(range(1, frame.height + 1))
        assert lake.check()["ok"]


def _batch_writer(path: str, batches: int) -> None:
    with Lake.open(path, auto_seal_rows=40) as lake:
        for b in range(batches):
            events = [Event("Part", {"batch": b, "k": k}, event_id=f"b{b}-{k}") for k in range(5)]
            lake.append(f"s{b % 3}", events, expected_version=None, aggregate_type="Batch")
            if b % 25 == 24:
                lake.compact()


def test_readers_never_see_half_an_append_or_half_a_seal(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    Lake.open(path).close()
    writer = mp.get_context("spawn").Process(target=_batch_writer, args=(str(path), 150))
    writer.start()
    snapshots = 0
    with Lake.open(path) as lake:
        while writer.is_alive() or snapshots == 0:
            seen = lake.sql(
                "SELECT count(*) AS n, count(DISTINCT event_id) AS ids, "
                "count(DISTINCT CAST(data->>'batch' AS INT)) AS batches, max(position) AS top FROM events"
            ).row(0)
            n, ids, batches, top = seen
            assert n == ids == 5 * batches  # whole appends only, nothing twice
            assert top is None or top == n  # a gap-free prefix of the history
            snapshots += 1
        writer.join(timeout=120)
        assert writer.exitcode == 0
        assert lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 750
    assert snapshots > 3
