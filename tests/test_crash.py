"""Crash safety: a process killed with SIGKILL during appends or at any step of a seal leaves a lake that
opens, holds every acknowledged event exactly once, and finishes or rolls back the interrupted seal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from es_analytics import Event, Lake
from es_analytics.errors import ConcurrencyError, LakeCorruptError

APPEND_LOOP = """
import sys, json
from es_analytics import Lake, Event
path, log, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Lake.open(path, auto_seal_rows=40) as lake, open(log, "a") as out:
    n = start
    while True:
        stream = f"s{n % 5}"
        events = [Event("Ticked", {"n": n, "k": k}, event_id=f"e{n}-{k}") for k in range(1 + n % 3)]
        version = lake.append(stream, events, expected_version=None, aggregate_type="Clock")
        out.write(json.dumps([e.event_id for e in events]) + "\\n")
        out.flush()
        n += 1
"""

SEAL_CRASH = """
import os, signal, sys
from es_analytics import Lake, Event
from es_analytics.store import engine, manifest, sealed
path, point = sys.argv[1], sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(module, name, when):
    original = getattr(module, name)
    calls = {"n": 0}
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if when == "before" and calls["n"] >= int(os.environ.get("CRASH_CALL", "1")):
            die()
        result = original(*args, **kwargs)
        if when == "after" and calls["n"] >= int(os.environ.get("CRASH_CALL", "1")):
            die()
        return result
    setattr(module, name, wrapper)

lake = Lake.open(path, auto_seal_rows=0)
if point == "file-published":
    after(sealed, "publish_no_replace", "after")
elif point == "before-manifest":
    after(engine, "write_manifest", "before")
elif point == "manifest-written":
    after(engine, "write_manifest", "after")
elif point == "mid-apply":  # sealed ids indexed and hot rows deleted, the transaction not committed
    original = engine.SQLiteHotTier.delete_through
    def crash(self, position):
        original(self, position)
        die()
    engine.SQLiteHotTier.delete_through = crash
elif point == "compaction-manifest":
    os.environ["CRASH_CALL"] = "2"
    after(engine, "write_manifest", "after")
for n in range(30):
    lake.append(f"s{n % 4}", [Event("Ticked", {"n": n}, event_id=f"new{n}")], expected_version=None,
                aggregate_type="Clock")
if point == "compaction-manifest":
    lake.seal()
    lake.compact()
else:
    lake.seal()
print("survived")
"""


def _lines(log: Path) -> int:
    return len(log.read_text(encoding="utf-8").splitlines()) if log.exists() else 0


def _stored(path: Path) -> tuple[list[str], Lake]:
    lake = Lake.open(path)
    report = lake.check()
    assert report["ok"], report["problems"]
    return lake.events()["event_id"].to_list(), lake


def _assert_streams_contiguous(lake: Lake) -> None:
    frame = lake.events()
    for (stream,), part in frame.group_by("aggregate_id"):
        assert sorted(part["aggregate_version"].to_list()) == list(range(1, part.height + 1)), stream
        assert lake.current_version(stream) == part.height


def test_kill_during_appends_keeps_every_acknowledged_event_once(tmp_path: Path) -> None:
    path, log = tmp_path / "lake", tmp_path / "acked.jsonl"
    Lake.open(path).close()
    start = 0
    for round_ in range(4):
        child = subprocess.Popen([sys.executable, "-c", APPEND_LOOP, str(path), str(log), str(start)])
        before = _lines(log)
        deadline = time.monotonic() + 60
        while _lines(log) < before + 20 and time.monotonic() < deadline:  # wait until it is appending
            time.sleep(0.05)
        time.sleep(0.1 + 0.25 * round_)
        child.send_signal(signal.SIGKILL)
        child.wait()
        acked = [i for line in log.read_text(encoding="utf-8").splitlines() for i in json.loads(line)]
        stored, lake = _stored(path)
        with lake:
            assert len(stored) == len(set(stored))
            assert set(acked) <= set(stored)
            # anything stored but not logged is the one append in flight when each process died
            assert len(set(stored) - set(acked)) <= 3 * (round_ + 1)
            _assert_streams_contiguous(lake)
            assert lake.events()["position"].to_list() == list(range(1, len(stored) + 1))
        start += 100_000
    assert len(acked) > 50


@pytest.mark.parametrize(
    "point", ["file-published", "before-manifest", "manifest-written", "mid-apply", "compaction-manifest"]
)
def test_kill_at_each_step_of_a_seal_finishes_or_rolls_it_back(tmp_path: Path, point: str) -> None:
    path = tmp_path / "lake"
    with Lake.open(path, auto_seal_rows=0) as lake:
        for n in range(12):
            lake.append(f"s{n % 3}", [Event("Ticked", {"n": n}, event_id=f"old{n}")], expected_version=None,
                        aggregate_type="Clock")
        lake.seal()
    result = subprocess.run([sys.executable, "-c", SEAL_CRASH, str(path), point], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert "survived" not in result.stdout
    stored, lake = _stored(path)
    with lake:
        expected = {f"old{n}" for n in range(12)} | {f"new{n}" for n in range(30)}
        assert sorted(stored) == sorted(expected)
        _assert_streams_contiguous(lake)
        assert not list(path.rglob("*.tmp"))
        manifest_files = {f.path for f in lake._store.manifest().files}
        retired = {p for p, *_ in lake._store.manifest().retired}
        on_disk = {str(p.relative_to(path)) for p in (path / "events").rglob("*.parquet")}
        assert on_disk == manifest_files | retired
        lake.seal()
        version = lake.append("s0", [Event("Ticked", {"n": -1}, event_id="after")], expected_version=None,
                              aggregate_type="Clock")
        assert version == lake.events("s0").height
        assert lake.events()["position"].to_list() == list(range(1, 44))
        assert lake.check()["ok"]


def _one_sealed_event(path: Path) -> Path:
    """A lake at ``path`` with one sealed event; returns the folder of its Parquet files."""
    with Lake.open(path) as lake:
        lake.append("a", [Event("Ticked", {"n": 1})], expected_version=0, aggregate_type="Clock")
        lake.seal()
    return path / "events" / "aggregate_type=Clock"


def test_orphans_of_an_interrupted_seal_are_removed_on_open(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    folder = _one_sealed_event(path)
    unpublished = f"part-g{99:010d}-{2:012d}-0123456789ab.parquet"  # written for a generation never reached
    (folder / "part-x.parquet.tmp").write_bytes(b"half a file")
    (folder / unpublished).write_bytes(b"PAR1 truncated")
    with Lake.open(path) as lake:
        assert not (folder / "part-x.parquet.tmp").exists()
        assert not (folder / unpublished).exists()
        assert lake.events().height == 1
    assert os.path.exists(path / "manifest.json")


def test_an_unlisted_file_of_a_published_generation_is_refused_not_deleted(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    folder = _one_sealed_event(path)
    stray = folder / f"part-g{1:010d}-{7:012d}-0123456789ab.parquet"
    stray.write_bytes(b"PAR1 someone's file")
    with pytest.raises(LakeCorruptError, match="not listed in manifest.json"):
        Lake.open(path)
    assert stray.exists()
    stray.unlink()
    with Lake.open(path) as lake:
        assert lake.events().height == 1


@pytest.mark.parametrize("damage", ["missing", "one-seal-older", "lists-no-files", "newer-but-empty"])
def test_a_lost_or_rolled_back_manifest_never_deletes_committed_files(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "lake"
    manifest = path / "manifest.json"
    with Lake.open(path, auto_seal_rows=0) as lake:
        lake.append("s", [Event("Ticked", {"n": n}, event_id=f"a{n}") for n in range(100)], expected_version=0,
                    aggregate_type="Clock")
        lake.seal()
    older = manifest.read_text(encoding="utf-8")
    with Lake.open(path, auto_seal_rows=0) as lake:
        lake.append("t", [Event("Ticked", {"n": n}, event_id=f"b{n}") for n in range(50)], expected_version=0,
                    aggregate_type="Clock")
        lake.seal()
        lake.append("t", [Event("Ticked", {"n": 50}, event_id="hot")], expected_version=50, aggregate_type="Clock")
    on_disk = sorted((path / "events").rglob("*.parquet"))
    assert len(on_disk) == 2
    body = json.loads(manifest.read_text(encoding="utf-8"))
    if damage == "missing":
        manifest.unlink()
    elif damage == "one-seal-older":
        manifest.write_text(older, encoding="utf-8")
    elif damage == "lists-no-files":
        manifest.write_text(json.dumps({**body, "files": [], "sealed_position": 0}), encoding="utf-8")
    else:
        manifest.write_text(json.dumps({**body, "files": [], "generation": body["generation"] + 5}), encoding="utf-8")
    before = {p: p.read_bytes() for p in on_disk}
    with pytest.raises(LakeCorruptError, match="Nothing was deleted"):
        Lake.open(path)
    assert {p: p.read_bytes() for p in sorted((path / "events").rglob("*.parquet"))} == before
    manifest.write_text(json.dumps(body), encoding="utf-8")  # the backup, put back
    with Lake.open(path) as lake:
        assert lake.events().height == 151
        assert lake.check()["ok"]


SEAL_THEN_DIE = """
import os, signal, sys
from es_analytics import Lake, Event
from es_analytics.store import engine
path = sys.argv[1]
original = engine.write_manifest
def write_then_die(*args, **kwargs):
    original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
with Lake.open(path, auto_seal_rows=0) as lake:
    lake.append("victim", [Event("Ticked", {"n": n}) for n in range(3)], expected_version=0, aggregate_type="Clock")
    engine.write_manifest = write_then_die
    lake.seal()
print("survived")
"""


@pytest.mark.parametrize("opened", ["before", "after"])
def test_a_seal_killed_after_its_manifest_keeps_every_stream_head(tmp_path: Path, opened: str) -> None:
    """A handle open across the crash (or opened after it) seals its own streams: the killed seal's stream
    heads survive, and its version 1 can never be written twice."""
    path = tmp_path / "lake"
    Lake.open(path, auto_seal_rows=0).close()
    survivor = Lake.open(path, auto_seal_rows=0) if opened == "before" else None
    result = subprocess.run([sys.executable, "-c", SEAL_THEN_DIE, str(path)], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    survivor = survivor or Lake.open(path, auto_seal_rows=0)
    with survivor:
        survivor.append("other", [Event("Ticked", {"n": 0})], expected_version=0, aggregate_type="Clock")
        survivor.seal()
        assert survivor.current_version("victim") == 3
        with pytest.raises(ConcurrencyError):
            survivor.append("victim", [Event("Ticked", {"n": 9})], expected_version=0, aggregate_type="Clock")
    with Lake.open(path) as fresh:
        assert fresh.current_version("victim") == 3
        assert fresh.events("victim")["aggregate_version"].to_list() == [1, 2, 3]
        assert fresh.check()["ok"]
