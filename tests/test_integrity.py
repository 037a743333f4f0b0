"""Tamper evidence: the hash chain, its checkpoint in the manifest, and what verify reports."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from es_analytics import Event, Lake
from es_analytics.errors import TamperEvidenceError
from es_analytics.examples.users import User
from es_analytics.integrity import GENESIS, chain_head

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)


def fill(lake: Lake, accounts: int = 4, per: int = 5) -> None:
    for a in range(accounts):
        events = [Event("MoneyDeposited", {"amount": a * 10 + i, "description": f"d{i}"},
                        occurred_at=T0 + timedelta(hours=i)) for i in range(per)]
        lake.append(f"acc-{a}", events, expected_version=0, aggregate_type="BankAccount")


def independent_head(lake: Lake) -> str:
    """The chain recomputed in plain Python from the documented canonical form."""
    frame = lake.sql("SELECT * FROM events ORDER BY position")
    head = GENESIS
    for row in frame.iter_rows(named=True):
        fields = [str(row["position"]), row["event_id"], row["event_type"], str(row["schema_version"]),
                  row["aggregate_type"], row["aggregate_id"], str(row["aggregate_version"]),
                  str(int(row["occurred_at"].timestamp() * 1_000_000)),
                  str(int(row["recorded_at"].timestamp() * 1_000_000)), row["data"], row["metadata"]]
        digest = hashlib.sha256("\x1f".join(fields).encode("utf-8")).digest()
        head = hashlib.sha256(head + digest).digest()
    return head.hex()


def sealed_file(lake: Lake, index: int = 0) -> Path:
    return lake.path / lake._store.manifest().files[index].path


def rewrite_value(path: Path, row: int, column: str, change: str) -> None:
    table = pq.read_table(path)
    values = table[column].to_pylist()
    values[row] = change
    table = table.set_column(table.schema.get_field_index(column), table.schema.field(column), pa.array(values))
    pq.write_table(table, path, compression="zstd", row_group_size=2048)


@pytest.fixture
def sealed_lake(empty_lake: Lake) -> Lake:
    fill(empty_lake)
    empty_lake.seal()
    return empty_lake


def test_a_clean_lake_verifies_and_its_checkpoint_lands_in_the_manifest(sealed_lake: Lake) -> None:
    first = sealed_lake.verify()
    assert first["ok"] and first["first_bad_event"] is None and first["checked_events"] == 20
    assert first["chain_head"] == independent_head(sealed_lake)
    extra = sealed_lake._store.manifest().extra["integrity"]
    assert extra["head"] == first["chain_head"] and extra["events"] == 20 and extra["position"] == 20
    assert set(extra["files"]) == {f.path for f in sealed_lake._store.manifest().files}
    second = sealed_lake.verify()
    assert second["ok"] and second["checkpoint"]["head"] == first["chain_head"]
    assert [f["status"] for f in second["files"]] == ["ok"]


def test_an_edited_value_in_a_sealed_parquet_file_is_found(sealed_lake: Lake) -> None:
    sealed_lake.verify()
    path = sealed_file(sealed_lake)
    table = pq.read_table(path)
    row = 7
    target = table.slice(row, 1).to_pylist()[0]
    rewrite_value(path, row, "data", target["data"].replace('"amount":', '"amount":9', 1))
    sealed_lake._store.sealed._files.clear()

    result = sealed_lake.verify()

    assert not result["ok"]
    bad = result["first_bad_event"]
    assert bad["position"] == target["position"] and bad["event_id"] == target["event_id"]
    assert bad["aggregate_id"] == target["aggregate_id"] and bad["file"] == str(path.relative_to(sealed_lake.path))
    assert [f["status"] for f in result["files"]] == ["bytes changed"]
    assert "checkpoint_extended_to" not in result  # a failed verify never moves the checkpoint
    with pytest.raises(TamperEvidenceError, match="does not verify"):
        sealed_lake.verify(raise_on_failure=True)


@pytest.mark.parametrize("where", [0.3, 0.5, 0.9])
def test_a_flipped_byte_in_a_sealed_parquet_file_is_reported(sealed_lake: Lake, where: float) -> None:
    sealed_lake.verify()
    path = sealed_file(sealed_lake)
    raw = bytearray(path.read_bytes())
    at = int(len(raw) * where)
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    sealed_lake._store.sealed._files.clear()

    result = sealed_lake.verify()

    assert not result["ok"]
    rel = str(path.relative_to(sealed_lake.path))
    assert any(p["path"] == rel for p in result["problems"])
    assert {f["path"]: f["status"] for f in result["files"]}[rel] == "bytes changed"


def test_edits_and_deletions_in_the_hot_tier_are_found(empty_lake: Lake) -> None:
    fill(empty_lake)
    empty_lake.verify()
    with empty_lake._store.hot.write() as con:
        con.execute("UPDATE events SET metadata = '{\"user_id\":\"mallory\"}' WHERE position = 12")
    result = empty_lake.verify()
    assert not result["ok"] and result["first_bad_event"]["position"] == 12
    assert result["first_bad_event"]["file"] == "hot tier"
    with empty_lake._store.hot.write() as con:
        con.execute("UPDATE events SET metadata = '{}' WHERE position = 12")
        con.execute("DELETE FROM events WHERE position = 9")
    result = empty_lake.verify()
    assert not result["ok"] and result["first_bad_event"]["position"] == 9
    assert "no longer holds" in result["first_bad_event"]["note"]


def test_the_checkpoint_extends_and_covers_later_events(empty_lake: Lake) -> None:
    fill(empty_lake, accounts=2)
    assert empty_lake.verify()["checkpoint_extended_to"] == 10
    fill_more = [Event("MoneyDeposited", {"amount": 1}, occurred_at=T0)]
    empty_lake.append("acc-9", fill_more, expected_version=0, aggregate_type="BankAccount")
    result = empty_lake.verify()
    assert result["ok"] and result["checkpoint_extended_to"] == 11
    assert result["chain_head"] == independent_head(empty_lake)
    with empty_lake._store.hot.write() as con:
        con.execute("UPDATE events SET data = '{\"amount\":1000}' WHERE position = 11")
    assert empty_lake.verify()["first_bad_event"]["position"] == 11


def test_sealing_compaction_and_forgetting_keep_the_chain(empty_lake: Lake) -> None:
    fill(empty_lake)
    user = User("u-1")
    user.register("chain@example.org", "Chain Person")
    empty_lake.append("u-1", list(user.pending_events), expected_version=0, aggregate_type="User")
    head = empty_lake.verify()["chain_head"]
    empty_lake.seal()
    empty_lake.compact()
    after = empty_lake.verify(checkpoint=False)
    assert after["ok"] and after["chain_head"] == head
    assert {f["status"] for f in after["files"]} == {"ok"}  # compaction recorded its files' hashes
    empty_lake.forget("u-1")
    result = empty_lake.verify()
    assert result["ok"] and result["checked_events"] == 22  # 20 deposits, the user, the tombstone


def test_an_edited_digest_file_is_reported(sealed_lake: Lake) -> None:
    sealed_lake.verify()
    chunk = sealed_lake._store.manifest().extra["integrity"]["digests"][0]["path"]
    path = sealed_lake.path / chunk
    path.write_bytes(path.read_bytes() + b"\0")
    result = sealed_lake.verify()
    assert not result["ok"] and any(p["path"] == chunk for p in result["problems"])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=40), st.binary(min_size=32, max_size=32))
def test_property_chain_head_equals_the_plain_loop(digests: list[bytes], start: bytes) -> None:
    expected = start
    for d in digests:
        expected = hashlib.sha256(expected + d).digest()
    array = pa.chunked_array([pa.array(digests[:7], pa.binary()), pa.array(digests[7:], pa.binary())])
    assert chain_head(array, start) == expected
    assert chain_head(array.combine_chunks().slice(min(3, len(digests))), start) == chain_head(
        pa.array(digests[3:], pa.binary()), start)


def test_sealing_checkpoints_so_an_edit_before_any_verify_is_found(empty_lake: Lake) -> None:
    fill(empty_lake, accounts=2)
    first = empty_lake.seal()["integrity"]
    assert first["added"] == 10 and first["head"] == independent_head(empty_lake)
    fill_more = [Event("MoneyDeposited", {"amount": 7}, occurred_at=T0)]
    empty_lake.append("acc-7", fill_more, expected_version=0, aggregate_type="BankAccount")
    second = empty_lake.seal()["integrity"]
    assert second["added"] == 1 and second["events"] == 11 and second["head"] == independent_head(empty_lake)
    path = sealed_file(empty_lake, 1)
    rewrite_value(path, 0, "metadata", '{"user_id":"mallory"}')
    result = empty_lake.verify()
    assert not result["ok"] and result["first_bad_event"]["position"] == 11


def test_verify_does_not_hold_the_seal_lock_while_it_compares(sealed_lake: Lake,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import es_analytics.integrity as integrity

    original, free = integrity._check, []

    def spy(store: object, con: object, *rest: object) -> object:
        with sealed_lake._store.seal_lock(wait=False) as got:  # a seal or an import could run now
            free.append(got)
        return original(store, con, *rest)

    monkeypatch.setattr(integrity, "_check", spy)
    assert sealed_lake.verify()["ok"] and free == [True]


def test_seal_leaves_the_first_checkpoint_of_a_large_older_lake_to_verify(empty_lake: Lake,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import es_analytics.integrity as integrity

    monkeypatch.setattr(integrity, "FIRST_CHECKPOINT_LIMIT", 5)
    with empty_lake._store.hot.write() as con:  # a lake made before chains were anchored at creation
        con.execute("DELETE FROM meta WHERE key = ?", (integrity.ANCHOR_KEY,))
    fill(empty_lake, accounts=2)
    assert "run lake.verify()" in empty_lake.seal()["integrity"]["skipped"]
    assert "integrity" not in empty_lake._store.manifest().extra
    assert empty_lake.verify()["checkpoint_extended_to"] == 10
    empty_lake.append("acc-9", [Event("MoneyDeposited", {"amount": 1}, occurred_at=T0)], expected_version=0,
                      aggregate_type="BankAccount")
    assert empty_lake.seal()["integrity"]["added"] == 1  # once started, every seal extends it


def test_a_new_lake_chains_its_first_seal_whatever_its_size(empty_lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    import es_analytics.integrity as integrity

    monkeypatch.setattr(integrity, "FIRST_CHECKPOINT_LIMIT", 5)
    fill(empty_lake, accounts=2)
    assert empty_lake.seal()["integrity"]["added"] == 10
