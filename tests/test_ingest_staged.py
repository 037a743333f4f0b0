"""Staged ingest (large inputs): the rows are kept on disk and committed at once. It must give the same lake,
counts and rejects as batch-by-batch imports, survive a writer that moves a stream meanwhile, and leave
files and indexes that every reader (and recovery) understands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from es_analytics import Event, Lake
from es_analytics import ingest as ingest_module
from es_analytics.ingest import _writer, ingest
from es_analytics.store import engine, staging
from es_analytics.store.staging import STAGING_PREFIX
from test_ingest import T0, make_rows, write_jsonl

COLUMNS = ["position", "event_id", "event_type", "schema_version", "aggregate_type", "aggregate_id",
           "aggregate_version", "occurred_at", "data", "metadata"]


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_module, "_STAGE_MIN_BYTES", 0)


def _run(folder: Path, inputs: list[list[Any]], batch: int, staged: bool, prior: list[Any] | None = None) -> Any:
    """Ingest ``inputs`` (one run each) into a fresh lake; the lake's events and every run's outcome."""
    threshold, block = ingest_module._STAGE_MIN_BYTES, ingest_module._BLOCK_BYTES
    outcomes = []
    with Lake.open(folder / "lake") as lake:
        if prior:
            ingest(lake, write_jsonl(folder / "prior.jsonl", prior))  # not staged: below the threshold
        ingest_module._STAGE_MIN_BYTES = 0 if staged else 1 << 60
        ingest_module._BLOCK_BYTES = 1024  # blocks of a few lines: the rows reach the lake in many chunks
        try:
            for i, rows in enumerate(inputs):
                result = ingest(lake, write_jsonl(folder / f"in-{i}.jsonl", rows), batch_size=batch)
                outcomes.append((result.read, result.imported, result.already_present, result.repeated_in_input,
                                 result.rejects.select("line", "reason").rows()))
        finally:
            ingest_module._STAGE_MIN_BYTES, ingest_module._BLOCK_BYTES = threshold, block
        assert lake.check()["ok"]
        for path in (folder / "lake" / "events").rglob("*.parquet"):  # every file sorted by stream and version
            keys = pl.read_parquet(path, columns=["aggregate_id", "aggregate_version"])
            assert keys.equals(keys.sort("aggregate_id", "aggregate_version"))
        events = lake.events().select(COLUMNS)
        heads = {s: lake.current_version(s) for s in events["aggregate_id"].unique().to_list()}
    assert not list((folder / "lake").glob(STAGING_PREFIX + "*"))  # the staging folder is gone
    return events, heads, outcomes


# Rows that exercise every check across chunk borders: repeats (same and other content), taken slots,
# gaps that later rows fill (or not), a type change, and ids the lake held before.
def _variants(rows: list[dict[str, Any]]) -> list[Any]:
    return [
        rows[0], {**rows[0], "data": {"amount": 1}}, {**rows[1], "event_id": "other", "aggregate_version": 1},
        {**rows[2], "aggregate_version": 9}, {**rows[3], "aggregate_type": "User", "event_id": "typed"},
        {**rows[4], "event_id": "late", "aggregate_version": 6}, {**rows[5], "event_id": "late-2", "aggregate_version": 5},
    ]


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(list(range(19))), batch=st.integers(1, 8), cut=st.integers(0, 19),
       prior=st.integers(0, 4), bucket_bytes=st.sampled_from([1 << 30, 300, 1]),
       in_memory=st.sampled_from([2_000_000, 2]), target=st.sampled_from([1_000_000, 3]))
def test_staged_and_batch_by_batch_give_the_same_lake(tmp_path_factory: pytest.TempPathFactory, order: list[int],
                                                       batch: int, cut: int, prior: int, bucket_bytes: int,
                                                       in_memory: int, target: int) -> None:
    """Property: staged or not, the same input gives the same events at the same positions, the same
    stream heads, and the same counts and rejects (lines and reasons), whatever the number of buckets,
    the way a bucket is sorted (in memory or by DuckDB) and the size of the files written."""
    rows = make_rows(streams=3, per_stream=4)
    pool = rows + _variants(rows)
    shuffled = [pool[i] for i in order]
    inputs = [(shuffled[:cut] or [shuffled[0]]) + ["not json"], shuffled]
    folder = tmp_path_factory.mktemp("staged")
    a = _run(folder / "a", inputs, batch, staged=False, prior=rows[:prior])
    saved = staging.BUCKET_BYTES, engine._SORT_IN_MEMORY_ROWS, engine.COMPACT_TARGET_ROWS
    staging.BUCKET_BYTES, engine._SORT_IN_MEMORY_ROWS, engine.COMPACT_TARGET_ROWS = bucket_bytes, in_memory, target
    try:
        b = _run(folder / "b", inputs, batch, staged=True, prior=rows[:prior])
    finally:
        staging.BUCKET_BYTES, engine._SORT_IN_MEMORY_ROWS, engine.COMPACT_TARGET_ROWS = saved
    assert_frame_equal(a[0], b[0])
    assert a[1] == b[1]
    assert a[2] == b[2]


def test_staged_files_are_written_once_in_disjoint_ranges(tmp_path: Path, empty_lake: Lake, staged: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "COMPACT_TARGET_ROWS", 5)
    rows = make_rows(streams=6, per_stream=3)
    result = ingest(empty_lake, write_jsonl(tmp_path / "e.jsonl", rows), batch_size=4)
    assert result.imported == 18
    manifest = empty_lake._store.manifest()
    assert {f.level for f in manifest.files} == {1}
    assert sorted(manifest.extra[engine.INGESTED_KEY]) == sorted(f.path for f in manifest.files)
    ranges = sorted(empty_lake.sql("SELECT filename, min(aggregate_id) AS lo, max(aggregate_id) AS hi "
                                   "FROM read_parquet('" + str(empty_lake._store.folder) + "/events/*/*.parquet', "
                                   "filename = true) GROUP BY filename").select("lo", "hi").rows())
    assert len(ranges) == len(manifest.files) > 1
    assert all(hi < next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:]))  # no stream split
    # Positions follow the commit (source) order; every stream reads back in version order.
    assert empty_lake.events()["event_id"].to_list() == [r["event_id"] for r in rows]
    assert empty_lake.events("acc-2")["aggregate_version"].to_list() == [1, 2, 3]
    # The sealed-id index knows the staged events (what idempotent appends look up).
    store = empty_lake._store
    with store.hot.read():
        known = store.hot.known_ids(["e-0-1", "e-5-3", "nope"], store.lookup_sealed)
    assert sorted(known) == ["e-0-1", "e-5-3"]
    assert (known["e-5-3"].aggregate_id, known["e-5-3"].aggregate_version) == ("acc-5", 3)
    assert empty_lake.check()["ok"]


def test_recovery_indexes_staged_files_from_the_manifest(tmp_path: Path, lake_path: Path, staged: None) -> None:
    """A crash after the manifest is published but before SQLite caught up: recovery indexes the staged
    files (level 1, but listed as holding new events) from the files themselves."""
    rows = make_rows(streams=3, per_stream=3)
    with Lake.open(lake_path) as lake:
        ingest(lake, write_jsonl(tmp_path / "e.jsonl", rows))
        expected = lake.events().select(COLUMNS)
    (lake_path / "hot.sqlite").unlink()
    for extra in lake_path.glob("hot.sqlite-*"):
        extra.unlink()
    with Lake.open(lake_path) as lake:
        assert lake.check()["ok"]
        assert_frame_equal(lake.events().select(COLUMNS), expected)
        assert lake.current_version("acc-1") == 3
        assert lake.events("acc-1")["aggregate_version"].to_list() == [1, 2, 3]
        again = ingest(lake, write_jsonl(tmp_path / "e.jsonl", rows))
        assert (again.imported, again.already_present) == (0, 9)


def test_a_stream_moved_before_the_commit_is_checked_again(tmp_path: Path, empty_lake: Lake, staged: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer extends a stream while the rows wait: the commit refuses, the chunks are imported one
    by one with the heads read afresh, and the slot the other writer took is rejected, not duplicated."""
    rows = make_rows(streams=2, per_stream=2)
    original = _writer.LakeWriter.finish
    raced: list[Any] = []

    def racing(self: Any) -> None:
        raced.append(empty_lake.append("acc-0", [Event("AccountOpened", {"amount": 1}, event_id="other",
                                                      occurred_at=T0)],
                                       expected_version=0, aggregate_type="BankAccount"))
        original(self)

    monkeypatch.setattr(_writer.LakeWriter, "finish", racing)
    result = ingest(empty_lake, write_jsonl(tmp_path / "e.jsonl", rows))
    assert raced == [1]
    assert (result.imported, result.rejected) == (3, 1)
    assert "stream acc-0 is already at version 1 and holds another event at version 1" in result.rejects["reason"][0]
    assert empty_lake.events("acc-0")["event_id"].to_list() == ["other", "e-0-2"]
    assert empty_lake.check()["ok"]


def test_unsealed_appends_are_sealed_with_the_staged_rows(tmp_path: Path, empty_lake: Lake, staged: None) -> None:
    empty_lake.append("other-stream", [Event("AccountOpened", {"amount": 1}, event_id="hot-1", occurred_at=T0)],
                      expected_version=0, aggregate_type="BankAccount")
    rows = make_rows(streams=2, per_stream=2)
    result = ingest(empty_lake, write_jsonl(tmp_path / "e.jsonl", rows))
    assert result.imported == 4
    events = empty_lake.events()
    assert events["event_id"].to_list() == ["hot-1"] + [r["event_id"] for r in rows]
    assert empty_lake._store.manifest().sealed_position == 5
    assert empty_lake.check()["ok"]


def test_the_staging_folder_is_removed_when_the_ingest_fails(tmp_path: Path, empty_lake: Lake, staged: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any, stage: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(engine.LakeStore, "import_staged", broken)
    with pytest.raises(OSError):
        ingest(empty_lake, write_jsonl(tmp_path / "e.jsonl", make_rows()))
    assert not list(empty_lake._store.folder.glob(STAGING_PREFIX + "*"))
    assert empty_lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 0


def test_payload_json_is_kept(tmp_path: Path, empty_lake: Lake, staged: None) -> None:
    rows = make_rows(streams=1, per_stream=2)
    ingest(empty_lake, write_jsonl(tmp_path / "e.jsonl", rows))
    assert [json.loads(d) for d in empty_lake.events("acc-0")["data"]] == [r["data"] for r in rows]
