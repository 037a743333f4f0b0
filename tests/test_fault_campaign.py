"""The fault campaign: writer processes, a sealer and compactor that kills itself at random steps of its
commits, and readers run together on one lake while random processes are killed with SIGKILL and started
again. Afterwards no acknowledged event is lost, no (stream, version) exists twice, no batch is partial,
every stream's versions run 1..n, no reader ever saw a torn snapshot, and ``check()`` is clean.

It runs for ``ES_ANALYTICS_CAMPAIGN_SECONDS`` seconds (40 by default, about a minute with the checks; set
it to 720 for the long campaign).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from es_analytics import Lake

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("ES_ANALYTICS_CAMPAIGN_SECONDS", "40"))
WRITERS = 4

WRITER = """
import json, os, random, sys
from es_analytics import Event, Lake
from es_analytics.errors import ConcurrencyError
path, log, name = sys.argv[1], sys.argv[2], sys.argv[3]
rng = random.Random()
with Lake.open(path, auto_seal_rows=rng.choice([60, 150, 400])) as lake, open(log, "a", encoding="utf-8") as out:
    lake._store.compact_after_files, lake._store.retire_grace_seconds = 3, 3.0  # compact and reclaim often
    n = 0
    while True:
        shared = rng.random() < 0.3
        stream = f"shared-{rng.randrange(5)}" if shared else f"{name}-{rng.randrange(25)}"
        token = f"{name}.{os.getpid()}.{n}"
        n += 1
        events = [Event("Ticked", {"token": token, "k": k}, event_id=f"{token}.{k}") for k in range(1 + rng.randrange(4))]
        out.write(json.dumps({"intent": token, "ids": [e.event_id for e in events]}) + "\\n")
        out.flush()  # in the kernel before the append starts: a SIGKILL cannot lose it
        try:
            lake.append(stream, events, expected_version=lake.current_version(stream), aggregate_type="Clock")
        except ConcurrencyError:
            continue
        out.write(json.dumps({"ack": token}) + "\\n")
        out.flush()
        os.fsync(out.fileno())
"""

# Kills itself (SIGKILL) with a small chance before or after each step of a commit: file published,
# manifest written, hot rows deleted inside the apply transaction, a retired file removed.
SEALER = """
import os, random, signal, sys, time
from es_analytics import Lake
from es_analytics.store import engine, sealed
path, log = sys.argv[1], sys.argv[2]
rng = random.Random()

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def risky(owner, name):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        if rng.random() < 0.04:
            die()
        result = original(*args, **kwargs)
        if rng.random() < 0.04:
            die()
        return result
    setattr(owner, name, wrapper)

risky(engine, "write_manifest")
risky(sealed, "publish_no_replace")
risky(engine.SQLiteHotTier, "delete_through")
risky(sealed.ParquetSealedTier, "remove")
with Lake.open(path, auto_seal_rows=0) as lake:
    lake._store.compact_after_files, lake._store.retire_grace_seconds = 3, 3.0
    with open(log, "a", encoding="utf-8") as out:
        while True:
            sealed = lake.seal()["sealed_events"]
            if rng.random() < 0.3:
                lake.compact()
            out.write(f'{{"sealed": {sealed}}}\n')
            out.flush()
            time.sleep(rng.random() * 0.2)
"""

READER = """
import json, sys, time
import polars as pl
from es_analytics import Lake
path, log = sys.argv[1], sys.argv[2]
with Lake.open(path, auto_seal_rows=0) as lake, open(log, "a", encoding="utf-8") as out:
    queries = 0
    while True:
        frame = lake.sql(
            "SELECT aggregate_id, count(*) AS n, count(DISTINCT aggregate_version) AS d, "
            "max(aggregate_version) AS v FROM events GROUP BY aggregate_id")
        torn = frame.filter((pl.col("n") != pl.col("d")) | (pl.col("n") != pl.col("v")))
        queries += 1
        if torn.height:
            out.write(json.dumps({"torn": torn.rows()[:5]}) + "\\n")
        if queries % 20 == 0:
            out.write(json.dumps({"queries": queries}) + "\\n")
        out.flush()
        time.sleep(0.02)
"""


class Campaign:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lake = folder / "lake"
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True)
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.logs_of: dict[str, Path] = {}
        self.kills = 0
        self.starts = 0

    def start(self, role: str) -> None:
        kind = role.rstrip("0123456789")
        log = str(self.logs / f"{role}.{self.starts}.jsonl")
        self.logs_of[role] = Path(log)
        args = {"writer": [WRITER, str(self.lake), log, role], "sealer": [SEALER, str(self.lake), log],
                "reader": [READER, str(self.lake), log]}[kind]
        errors = open(self.logs / f"{role}.{self.starts}.stderr", "wb")
        self.children[role] = subprocess.Popen([sys.executable, "-c", *args], stderr=errors)
        errors.close()
        self.starts += 1

    def run(self, seconds: float, rng: random.Random) -> None:
        roles = [f"writer{i}" for i in range(WRITERS)] + ["sealer", "reader0", "reader1"]
        for role in roles:
            self.start(role)
        deadline = time.monotonic() + seconds
        exited: dict[str, float] = {}
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 1.2))
            for role, child in list(self.children.items()):
                # The sealer kills itself mid-commit; it starts again a while later, so that the writers'
                # own seals run first on a lake whose last commit is half-applied.
                if child.poll() is not None and time.monotonic() - exited.setdefault(role, time.monotonic()) > 1.5:
                    exited.pop(role)
                    self.start(role)
            # Only a process that has done some work since it started is killed (on a loaded machine
            # starting Python alone can take seconds).
            working = [r for r in roles if r not in exited and self.logs_of[r].exists()
                       and self.logs_of[r].stat().st_size > 0]
            if not working:
                continue
            victim = rng.choice(working)
            self.children[victim].send_signal(signal.SIGKILL)
            self.children[victim].wait()
            self.kills += 1
            self.start(victim)
        for child in self.children.values():
            child.send_signal(signal.SIGKILL)
            child.wait()

    def records(self, prefix: str) -> list[dict]:
        out = []
        for path in sorted(self.logs.glob(f"{prefix}*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:  # the last line of a killed process may be cut short (never an ack: fsynced)
                    continue
        return out


@pytest.mark.timeout(int(SECONDS) + 300)
def test_random_kills_of_writers_sealers_and_readers_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    campaign = Campaign(tmp_path)
    Lake.open(campaign.lake).close()
    campaign.run(SECONDS, random.Random(int(os.environ.get("ES_ANALYTICS_CAMPAIGN_SEED", "7"))))

    written = campaign.records("writer")
    intents = {r["intent"]: r["ids"] for r in written if "intent" in r}
    acked = {r["ack"] for r in written if "ack" in r}
    with Lake.open(campaign.lake) as lake:
        report = lake.check()
        assert report["ok"], report["problems"]
        stored = lake.sql("SELECT event_id, aggregate_id, aggregate_version FROM events")
        ids = stored["event_id"].to_list()
        assert len(ids) == len(set(ids)), "an event is stored twice"
        pairs = stored.select("aggregate_id", "aggregate_version")
        assert pairs.n_unique() == pairs.height, "a (stream, version) exists twice"
        versions = lake.sql("SELECT aggregate_id, count(*) AS n, max(aggregate_version) AS v FROM events GROUP BY 1")
        assert (versions["n"] == versions["v"]).all(), "a stream has a gap in its versions"
        for stream, n in versions.select("aggregate_id", "n").iter_rows():
            assert lake.current_version(stream) == n
        present = set(ids)
        lost = [token for token in acked if not set(intents[token]) <= present]
        assert not lost, f"{len(lost)} acknowledged batches lost, e.g. {lost[:3]}"
        partial = [t for t, batch in intents.items() if 0 < len(set(batch) & present) < len(batch)]
        assert not partial, f"{len(partial)} batches stored in part, e.g. {partial[:3]}"
        unknown = present - {i for batch in intents.values() for i in batch}
        assert not unknown
        assert lake.events()["position"].to_list() == sorted(lake.events()["position"].to_list())
    failures = [p.read_text(encoding="utf-8", errors="replace") for p in campaign.logs.glob("*.stderr")]
    assert not [f for f in failures if "Traceback" in f], next(f for f in failures if "Traceback" in f)
    read = campaign.records("reader")
    assert not [r for r in read if "torn" in r], "a reader saw a torn snapshot"
    assert sum(1 for r in read if "queries" in r) > 0
    print(f"campaign: {len(acked)} batches acknowledged, {len(ids)} events stored, {campaign.kills} kills, "
          f"{campaign.starts} process starts, {sum(r['queries'] for r in read if 'queries' in r)} reader queries")
    assert len(acked) > 50 and campaign.kills >= 10  # a loaded machine starts fewer processes
