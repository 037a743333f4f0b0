"""Tamper and damage cases: what ``check()`` (the fsck) and ``verify()`` (the hash chain) report.

Each case edits the lake's files the way a person with write access to the folder could, then asserts the
damage is reported as a finding (never raised as a crash) and nothing is lost.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_analytics import Event, Lake
from es_analytics.store.manifest import write_manifest

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)


def deposits(n: int) -> list[Event]:
    return [Event("MoneyDeposited", {"amount": i, "description": f"deposit {i}"}, occurred_at=T0 + timedelta(minutes=i))
            for i in range(n)]


def fill(lake: Lake, streams: int, per: int) -> None:
    for s in range(streams):
        lake.append(f"acc-{s}", deposits(per), expected_version=0, aggregate_type="BankAccount")


def rewrite_file(lake: Lake, index: int, table: pa.Table) -> Path:
    """Replace sealed file ``index`` with ``table`` and fix up its manifest entry (size), as a careful
    tamperer would, so that the manifest alone does not give it away."""
    manifest = lake._store.manifest()
    entry = manifest.files[index]
    path = lake.path / entry.path
    pq.write_table(table, path, compression="zstd", row_group_size=2048)
    files = list(manifest.files)
    files[index] = dataclasses.replace(entry, bytes=path.stat().st_size)
    write_manifest(lake.path, manifest.next(files=tuple(files)))
    return path


def problems_of(report: dict, check: str) -> list[str]:
    return [p["detail"] for p in report["problems"] if p["check"] == check]


# -- check(): the stream index against the files' contents ------------------------------------------
def test_rows_reordered_across_row_groups_with_the_manifest_fixed_up_are_found(lake_path: Path) -> None:
    with Lake.open(lake_path) as lake:
        fill(lake, streams=3, per=1500)  # 4,500 rows: three row groups of one file
        lake.seal()
        assert lake.check()["ok"]
        path = lake.path / lake._store.manifest().files[0].path
        table = pq.read_table(path)
        rewrite_file(lake, 0, table.take(pa.array(range(table.num_rows - 1, -1, -1))))
    with Lake.open(lake_path) as lake:
        assert lake.events("acc-0").height < 1500  # what a reader sees: events are missing
        report = lake.check()
        assert not report["ok"]
        assert any("reads of those streams miss events" in d for d in problems_of(report, "stream index"))
        assert any("out of (aggregate_id, aggregate_version) order" in d for d in problems_of(report, "file order"))
        assert lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 4500  # nothing lost


def test_rows_swapped_inside_one_row_group_are_found(lake_path: Path) -> None:
    with Lake.open(lake_path) as lake:
        fill(lake, streams=2, per=5)
        lake.seal()
        path = lake.path / lake._store.manifest().files[0].path
        order = list(range(10))
        order[1], order[3] = order[3], order[1]
        rewrite_file(lake, 0, pq.read_table(path).take(pa.array(order)))
    with Lake.open(lake_path) as lake:
        versions = lake.events("acc-0")["aggregate_version"].to_list()
        assert versions != sorted(versions)  # a point read returns the stream out of order
        report = lake.check()
        assert not report["ok"] and problems_of(report, "file order")
        assert not problems_of(report, "stream index")  # same row group: the index itself is right


def test_a_file_whose_positions_disagree_with_the_manifest_is_found(lake_path: Path) -> None:
    with Lake.open(lake_path) as lake:
        fill(lake, streams=2, per=5)
        lake.seal()
        path = lake.path / lake._store.manifest().files[0].path
        table = pq.read_table(path)
        moved = pa.compute.add(table["position"], 100)
        rewrite_file(lake, 0, table.set_column(0, table.schema.field("position"), moved))
        report = lake.check()
        assert not report["ok"]
        assert any("holds positions 101..110, the manifest says 1..10" in d for d in problems_of(report, "file"))


def test_byte_flips_anywhere_in_a_sealed_file_are_reported_never_raised(lake_path: Path) -> None:
    with Lake.open(lake_path) as lake:
        fill(lake, streams=3, per=700)
        lake.seal()
        rel = lake._store.manifest().files[0].path
    path = lake_path / rel
    original = path.read_bytes()
    unreadable = 0
    for k in range(1, 60):
        raw = bytearray(original)
        raw[len(raw) * k // 60] ^= 0xFF
        path.write_bytes(bytes(raw))
        try:
            duckdb.sql("SELECT bit_xor(hash(t)) FROM read_parquet(?) t", params=[str(path)]).fetchall()
            pq.read_table(path).validate(full=True)
            reads = True
        except (duckdb.Error, pa.ArrowException, OSError):
            reads = False
        with Lake.open(lake_path) as lake:
            report = lake.check()  # never raises
            verified = lake.verify()
        assert not verified["ok"], f"flip at {k}/60 not found by verify"
        if not reads:
            unreadable += 1
            assert not report["ok"]
            assert any(rel in d for d in problems_of(report, "file")), (k, report["problems"])
    path.write_bytes(original)
    assert unreadable >= 3  # the sweep did hit pages that no longer decode
    with Lake.open(lake_path) as lake:
        assert lake.check()["ok"] and lake.verify()["ok"]


# -- verify(): the checkpoint and its anchor ------------------------------------------------------------
def flip_byte(path: Path, at: float = 0.5, mask: int = 0x01) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= mask
    path.write_bytes(bytes(raw))


def set_checkpoint(lake: Lake, body: dict | None) -> None:
    """Replace (or, with ``None``, remove) the checkpoint in the manifest, leaving everything else."""
    manifest = lake._store.manifest()
    extra = {k: v for k, v in manifest.extra.items() if k != "integrity"}
    if body is not None:
        extra["integrity"] = body
    write_manifest(lake.path, manifest.next(extra=extra))


def statuses(result: dict) -> set[str]:
    return {p["status"] for p in result["problems"]}


@pytest.fixture
def chained(lake_path: Path) -> Lake:
    lake = Lake.open(lake_path)
    fill(lake, streams=3, per=4)
    assert lake.seal()["integrity"]["events"] == 12
    fill_more = [Event("MoneyDeposited", {"amount": 5}, occurred_at=T0)]
    lake.append("acc-9", fill_more, expected_version=0, aggregate_type="BankAccount")
    assert lake.seal()["integrity"]["events"] == 13
    return lake


def test_a_checkpoint_removed_from_the_manifest_is_found_and_restored_from_its_anchor(chained: Lake) -> None:
    set_checkpoint(chained, None)
    result = chained.verify()
    assert not result["ok"] and "checkpoint missing" in statuses(result)
    assert result["checkpoint"]["position"] == 13  # verified against the hot tier's copy
    assert result["first_bad_event"] is None and result["checkpoint_restored"]
    assert chained._store.manifest().extra["integrity"]["position"] == 13
    assert chained.verify()["ok"]


def test_a_removed_checkpoint_does_not_restart_the_chain_at_the_next_seal(chained: Lake) -> None:
    set_checkpoint(chained, None)
    chained.append("acc-10", deposits(2), expected_version=0, aggregate_type="BankAccount")
    assert "disagree" in chained.seal()["integrity"]["skipped"]
    assert "integrity" not in chained._store.manifest().extra
    result = chained.verify(checkpoint=False)
    assert not result["ok"] and "checkpoint missing" in statuses(result)


def test_an_edit_hidden_by_removing_the_checkpoint_is_still_found(chained: Lake) -> None:
    path = chained.path / chained._store.manifest().files[0].path
    table = pq.read_table(path)
    data = table["data"].to_pylist()
    data[2] = data[2].replace('"amount":', '"amount":7', 1)
    rewrite_file(chained, 0, table.set_column(table.schema.get_field_index("data"), "data", pa.array(data)))
    set_checkpoint(chained, None)
    result = chained.verify()
    assert not result["ok"] and result["first_bad_event"]["position"] is not None
    assert "checkpoint_restored" not in result and "integrity" not in chained._store.manifest().extra


def test_both_copies_removed_leave_digest_files_that_give_it_away(chained: Lake) -> None:
    set_checkpoint(chained, None)
    with chained._store.hot.write() as con:
        con.execute("DELETE FROM meta WHERE key = 'integrity_checkpoint'")
    result = chained.verify()
    assert not result["ok"] and "digest file not in the checkpoint" in statuses(result)
    assert "integrity" not in chained._store.manifest().extra  # a failed verify starts nothing


def test_a_checkpoint_rolled_back_to_an_older_one_is_found(lake_path: Path) -> None:
    with Lake.open(lake_path) as lake:
        fill(lake, streams=2, per=3)
        lake.seal()
        older = lake._store.manifest().extra["integrity"]
        lake.append("acc-9", deposits(2), expected_version=0, aggregate_type="BankAccount")
        lake.seal()
        set_checkpoint(lake, older)
        result = lake.verify(checkpoint=False)
        assert not result["ok"] and "checkpoint rolled back" in statuses(result)
        assert result["checkpoint"]["position"] == 8


def test_a_checkpoint_started_again_is_found(chained: Lake) -> None:
    reset = dict(chained._store.manifest().extra["integrity"])
    reset["head"], reset["digests"] = "ab" * 32, []
    set_checkpoint(chained, reset)
    result = chained.verify()
    assert not result["ok"] and "checkpoint reset" in statuses(result)


def test_an_edited_anchor_is_found(chained: Lake) -> None:
    anchor = json.loads(chained._store.hot.meta("integrity_checkpoint"))
    anchor["position"], anchor["events"] = 12, 12  # claims an earlier point of the same line with a wrong head
    anchor["digests"] = anchor["digests"][:1]
    anchor["head"] = "cd" * 32
    with chained._store.hot.write() as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'integrity_checkpoint'", (json.dumps(anchor),))
    result = chained.verify()
    assert not result["ok"] and statuses(result) & {"checkpoint reset", "chain differs from its copy"}


# -- verify() on a full disk ----------------------------------------------------------------------------
def test_verify_on_a_full_disk_reports_and_loses_nothing(chained: Lake) -> None:
    chained.append("acc-20", deposits(3), expected_version=0, aggregate_type="BankAccount")
    before = chained._store.manifest().extra["integrity"]
    tmp = chained.path / "integrity" / "digests-000000000014.parquet.tmp"
    tmp.symlink_to("/dev/full")  # every write of the new digest file fails with ENOSPC
    result = chained.verify()
    assert result["ok"] and "No space left" in result["checkpoint_error"]
    assert "checkpoint_extended_to" not in result
    assert chained._store.manifest().extra["integrity"] == before
    assert json.loads(chained._store.hot.meta("integrity_checkpoint")) == before
    assert not tmp.exists() and not (chained.path / "integrity" / "digests-000000000014.parquet").exists()
    assert chained.events().height == 16
    assert chained.verify()["checkpoint_extended_to"] == 16


def test_a_seal_on_a_full_disk_for_the_checkpoint_reports_it_and_keeps_the_events(chained: Lake) -> None:
    chained.append("acc-20", deposits(3), expected_version=0, aggregate_type="BankAccount")
    (chained.path / "integrity" / "digests-000000000014.parquet.tmp").symlink_to("/dev/full")
    sealed = chained.seal()
    assert sealed["sealed_events"] == 3 and "No space left" in sealed["integrity"]["error"]
    assert chained.check()["ok"] and chained.events().height == 16
    result = chained.verify()
    assert result["ok"] and result["checkpoint_extended_to"] == 16


# -- every way history enters a lake extends the chain ------------------------------------------------
def _generated(path: Path) -> Lake:
    from es_analytics import sample

    lake = Lake.open(path)
    sample.generate(lake, events=1500)
    return lake


def _ingested(path: Path, *, staged: bool, monkeypatch: pytest.MonkeyPatch) -> Lake:
    from es_analytics import ingest as ingest_module
    from es_analytics.ingest import ingest

    rows = [{"event_id": f"e-{s}-{v}", "event_type": "MoneyDeposited", "aggregate_type": "BankAccount",
             "aggregate_id": f"acc-{s}", "aggregate_version": v,
             "occurred_at": (T0 + timedelta(minutes=v)).isoformat(), "data": {"amount": v}}
            for v in range(1, 40) for s in range(30)]
    source = path.parent / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr(ingest_module, "_STAGE_MIN_BYTES", 0 if staged else 1 << 60)
    lake = Lake.open(path)
    assert ingest(lake, source).imported == len(rows)
    return lake


def _recorded(path: Path) -> Lake:
    from uuid import uuid4

    from eventsourcing.persistence import StoredEvent

    from es_analytics.eventsourcing import LakeFactory

    factory = LakeFactory({"LAKE_PATH": str(path), "LAKE_AUTO_SEAL_ROWS": "100"})
    try:
        recorder = factory.application_recorder()
        for _ in range(5):
            stream = uuid4()
            recorder.insert_events([StoredEvent(originator_id=stream, originator_version=v,
                                                topic="bank:Account.Credited", state=b'{"amount": 1}')
                                    for v in range(1, 31)])
    finally:
        factory.close()
    return Lake.open(path)


MAKERS = {
    "generate": lambda path, mp: _generated(path),
    "ingest": lambda path, mp: _ingested(path, staged=False, monkeypatch=mp),
    "staged ingest": lambda path, mp: _ingested(path, staged=True, monkeypatch=mp),
    "eventsourcing recorder": lambda path, mp: _recorded(path),
}


@pytest.mark.parametrize("how", list(MAKERS))
def test_a_lake_made_any_way_is_chained_and_one_edited_byte_is_found(
    how: str, lake_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from es_analytics.cli import cli

    lake = MAKERS[how](lake_path, monkeypatch)
    manifest = lake._store.manifest()
    chain = manifest.extra.get("integrity")
    assert chain and chain["position"] == manifest.sealed_position > 0  # chained as it was sealed
    assert set(chain["files"]) == {f.path for f in manifest.files}  # compacted files included
    lake.close()
    clean = CliRunner().invoke(cli, ["verify", "--lake", str(lake_path), "--no-files"])
    assert clean.exit_code == 0, clean.output
    flip_byte(lake_path / manifest.files[-1].path, at=0.4)
    for args in (["--no-files"], []):
        bad = CliRunner().invoke(cli, ["verify", "--lake", str(lake_path), *args])
        assert bad.exit_code == 1 and "did not verify" in bad.output, (args, bad.output)


@pytest.fixture(scope="module")
def several_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake whose sealed files come from a seal, an import and a compaction (closed again)."""
    from es_analytics import sample

    path = tmp_path_factory.mktemp("several") / "lake"
    with Lake.open(path) as lake:
        sample.generate(lake, events=600)
        fill(lake, streams=2, per=3)
        lake.seal()
        lake.append("acc-0", deposits(1), expected_version=3, aggregate_type="BankAccount")
        lake.seal()
    return path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1000), at=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_property_any_single_byte_change_to_any_sealed_file_is_reported(
    several_files: Path, which: int, at: float, mask: int
) -> None:
    with Lake.open(several_files) as lake:
        files = lake._store.manifest().files
        assert len(files) >= 3
        path = several_files / files[which % len(files)].path
        original = path.read_bytes()
        try:
            flip_byte(path, at, mask)
            result = lake.verify(checkpoint=False)
            assert not result["ok"], (path.name, at, mask)
            assert any(p.get("path") == files[which % len(files)].path for p in result["problems"])
        finally:
            path.write_bytes(original)
