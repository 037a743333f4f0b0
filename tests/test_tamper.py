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
