"""Projections: the seed's bank read models, full builds, materialised tables, refresh, views, privacy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from es_analytics import Event, Lake
from es_analytics.errors import InvalidArgumentError
from es_analytics.examples.bank import BankAccount, account_summary, account_transactions
from es_analytics.materialized import compact
from es_analytics.projections import EventProjection, StateProjection, build
from es_analytics.temporal import Count, Json, Last, Reducers, Sum
from es_analytics.temporal.bounds import Bounds
from tests.strategies import T0, bank_histories, import_batch

SUMMARY_COLUMNS = ["account_id", "account_holder", "current_balance", "status", "total_deposits",
                   "total_withdrawals", "transaction_count", "opened_at", "last_activity", "version"]


def _row(frame: pl.DataFrame, account_id: str) -> dict[str, object]:
    return frame.filter(pl.col("account_id") == account_id).row(0, named=True)


# -- the seed's tables ------------------------------------------------------------------------
def test_account_summary_matches_the_seed_table(bank_lake: Lake) -> None:
    summary = bank_lake.project(account_summary)
    assert summary.columns == SUMMARY_COLUMNS
    assert summary["account_id"].to_list() == ["acc-1", "acc-2", "acc-3"]
    one = _row(summary, "acc-1")
    assert (one["account_holder"], one["current_balance"], one["status"]) == ("Ada Almeida", Decimal("120"), "active")
    assert (one["total_deposits"], one["total_withdrawals"], one["transaction_count"], one["version"]) == (
        Decimal("150"), Decimal("30"), 2, 3)
    closed = _row(summary, "acc-2")  # closed accounts keep their row
    assert (closed["status"], closed["current_balance"], closed["transaction_count"], closed["version"]) == (
        "closed", Decimal("0"), 2, 4)
    only_opened = _row(summary, "acc-3")  # the initial deposit is a deposit, not a transaction (as in the seed)
    assert (only_opened["total_deposits"], only_opened["transaction_count"]) == (Decimal("500"), 0)
    events = bank_lake.events("acc-2")
    assert closed["opened_at"] == events["occurred_at"][0]
    assert closed["last_activity"] == events["occurred_at"].max()


def test_account_transactions_ledger(bank_lake: Lake) -> None:
    ledger = bank_lake.project(account_transactions)
    assert ledger.columns == ["account_id", "position", "version", "event_id", "transaction_type", "amount",
                              "description", "balance_after", "occurred_at", "recorded_at"]
    assert ledger["position"].is_sorted()
    one = ledger.filter(pl.col("account_id") == "acc-1")
    assert one["transaction_type"].to_list() == ["deposit", "deposit", "withdrawal"]
    assert one["description"].to_list() == ["Initial deposit", "Salary", "Rent"]
    assert one["amount"].to_list() == [Decimal("100"), Decimal("50"), Decimal("30")]
    assert one["balance_after"].to_list() == [Decimal("100"), Decimal("150"), Decimal("120")]
    assert set(ledger["transaction_type"]) == {"deposit", "withdrawal"}
    assert ledger.filter(pl.col("account_id") == "acc-2")["description"].to_list() == ["Gift", "Groceries"]  # opened with 0
    # per account: rows = transaction_count (+1 for a positive initial deposit), last balance_after = current_balance
    last = ledger.group_by("account_id").agg(pl.len().alias("n"), pl.col("balance_after").last())
    summary = bank_lake.project(account_summary)
    joined = summary.join(last, on="account_id").sort("account_id")
    assert joined["n"].to_list() == [3, 2, 1]
    assert joined["transaction_count"].to_list() == [2, 2, 0]
    assert joined["balance_after"].to_list() == joined["current_balance"].to_list()


def test_summary_agrees_with_the_aggregate_fold(bank_lake: Lake) -> None:
    summary = bank_lake.project(account_summary)
    for account_id in summary["account_id"]:
        account = bank_lake.aggregate(BankAccount, account_id)
        assert account is not None
        row = _row(summary, account_id)
        assert (row["current_balance"], row["status"], row["account_holder"], row["version"]) == (
            account.balance, account.status, account.account_holder, account.version)


def test_as_of_and_known_at_filter_both_clocks(empty_lake: Lake) -> None:
    empty_lake.append("a", [Event("AccountOpened", {"accountId": "a", "initialDeposit": 10, "accountHolder": "A"},
                                  occurred_at=T0)], expected_version=0, aggregate_type="BankAccount")
    empty_lake.append("a", [Event("MoneyDeposited", {"amount": 5, "description": "late", "newBalance": 15},
                                  occurred_at=T0 + timedelta(days=2))], expected_version=1, aggregate_type="BankAccount")
    # back-dated: recorded now, occurred on day 1
    empty_lake.append("a", [Event("MoneyWithdrawn", {"amount": 3, "description": "fix", "newBalance": 12},
                                  occurred_at=T0 + timedelta(days=1))], expected_version=2, aggregate_type="BankAccount")
    day1 = empty_lake.project(account_summary, as_of=T0 + timedelta(days=1, hours=1))
    assert _row(day1, "a")["current_balance"] == Decimal("7")
    assert _row(day1, "a")["last_activity"] == T0 + timedelta(days=1)
    known_before_fix = empty_lake.events("a")["recorded_at"][1]
    early = empty_lake.project(account_summary, as_of=T0 + timedelta(days=1, hours=1), known_at=known_before_fix)
    assert _row(early, "a")["current_balance"] == Decimal("10")
    assert empty_lake.project(account_summary, as_of=T0 - timedelta(days=1)).height == 0
    with pytest.raises(InvalidArgumentError, match="timezone-aware"):
        empty_lake.project(account_summary, as_of=T0.replace(tzinfo=None))


# -- materialised projections -----------------------------------------------------------------
def test_materialize_refresh_and_views(bank_lake: Lake) -> None:
    done = bank_lake.materialize(account_summary)
    assert done["rows"] == 3 and done["mode"] == "full"
    view = bank_lake.sql("SELECT * FROM account_summary ORDER BY account_id")
    assert_frame_equal(view, bank_lake.project(account_summary))
    account = BankAccount("acc-4")
    account.open_account(7, "Dana")
    bank_lake.append("acc-4", list(account.pending_events), expected_version=0, aggregate_type="BankAccount")
    bank_lake.append("acc-1", [Event("MoneyDeposited", {"amount": 1, "description": "", "newBalance": 0})],
                     expected_version=3, aggregate_type="BankAccount")
    (result,) = bank_lake.refresh(account_summary)
    assert (result["mode"], result["events"], result["rows"]) == ("incremental", 2, 4)
    assert bank_lake.refresh("account_summary")[0]["mode"] == "current"
    joined = bank_lake.sql(
        "SELECT s.account_id, s.version, count(e.position) AS n FROM account_summary s "
        "JOIN events e ON e.aggregate_id = s.account_id GROUP BY ALL ORDER BY 1")
    assert joined["n"].to_list() == joined["version"].cast(pl.UInt32).to_list() or joined["n"].to_list() == joined[
        "version"].to_list()
    assert_frame_equal(bank_lake.project(account_summary), build(bank_lake, account_summary, Bounds()))
    assert bank_lake.projections().row(0, named=True)["behind"] == 0


def test_views_come_back_after_reopening(bank_lake: Lake) -> None:
    bank_lake.materialize(account_transactions)
    before = bank_lake.sql("SELECT * FROM account_transactions ORDER BY position")
    path = bank_lake.path
    bank_lake.close()
    with Lake.open(path) as again:
        assert_frame_equal(again.sql("SELECT * FROM account_transactions ORDER BY position"), before)


def test_rebuild_and_changed_definition(bank_lake: Lake) -> None:
    bank_lake.materialize(account_summary)
    assert bank_lake.rebuild(account_summary)["mode"] == "full"
    narrow = StateProjection("account_summary", aggregate_type="BankAccount", key="account_id",
                             fields=Reducers(deposits=Count(on="MoneyDeposited")),
                             columns=["account_id", "deposits"])
    try:
        assert bank_lake.refresh(narrow)[0]["mode"] == "full"  # another definition: never merged into the old table
        assert bank_lake.sql("SELECT * FROM account_summary").columns == ["account_id", "deposits"]
    finally:
        from es_analytics import projections

        projections._REGISTRY["account_summary"] = account_summary  # the last definition of a name wins
        bank_lake.rebuild(account_summary)


def test_refresh_adds_a_file_and_compaction_replaces_them_all(bank_lake: Lake) -> None:
    bank_lake.materialize(account_summary)
    folder = bank_lake.path / "projections" / "account_summary"
    for version in (1, 2):
        bank_lake.append("acc-3", [Event("MoneyDeposited", {"amount": 1, "description": "", "newBalance": 0})],
                         expected_version=version, aggregate_type="BankAccount")
        bank_lake.refresh(account_summary)
    parts = {p.name for p in folder.glob("*.parquet")}
    assert len(parts) == 3  # the full build and one file of changed rows per refresh
    before = bank_lake.project(account_summary)
    assert _row(before, "acc-3")["current_balance"] == Decimal("502")
    compact(bank_lake, account_summary)
    assert bank_lake.projections()["files"].to_list() == [1]
    # the replaced files stay one generation for readers still using them, then go
    bank_lake.append("acc-3", [Event("MoneyDeposited", {"amount": 1, "description": "", "newBalance": 0})],
                     expected_version=3, aggregate_type="BankAccount")
    bank_lake.refresh(account_summary)
    assert not {p.name for p in folder.glob("*.parquet")} & parts
    assert not list(folder.glob(".*.tmp"))
    before = before.with_columns(
        pl.when(pl.col("account_id") == "acc-3").then(pl.col("current_balance") + 1)
        .otherwise(pl.col("current_balance")).alias("current_balance"),
        pl.when(pl.col("account_id") == "acc-3").then(pl.col("version") + 1).otherwise(pl.col("version")),
        pl.when(pl.col("account_id") == "acc-3").then(pl.col("total_deposits") + 1)
        .otherwise(pl.col("total_deposits")).alias("total_deposits"),
        pl.when(pl.col("account_id") == "acc-3").then(pl.col("transaction_count") + 1)
        .otherwise(pl.col("transaction_count")).alias("transaction_count"),
    ).drop("last_activity")
    assert_frame_equal(bank_lake.project(account_summary).drop("last_activity"), before)
    assert_frame_equal(bank_lake.sql("SELECT * FROM account_summary ORDER BY account_id").drop("last_activity"), before)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=bank_histories(max_accounts=4, max_events=30, max_batches=5), data=st.data())
def test_refresh_after_every_batch_equals_a_full_rebuild(tmp_path_factory: pytest.TempPathFactory,
                                                         history: list, data: st.DataObject) -> None:
    bulk = data.draw(st.booleans(), label="bulk import (else appends)")  # both keep recorded_at in order
    with Lake.open(tmp_path_factory.mktemp("lake"), durability="normal") as lake:
        for number, batch in enumerate(history):
            if bulk:
                import_batch(lake, batch)
            else:
                for event in batch:
                    lake.append(event.aggregate_id, [Event(event.event_type, event.data, occurred_at=event.occurred_at)],
                                expected_version=event.aggregate_version - 1, aggregate_type="BankAccount")
            if data.draw(st.booleans(), label="seal"):
                lake.seal()
            if number == 0 or data.draw(st.booleans(), label="refresh now"):
                lake.refresh(account_summary) if number else lake.materialize(account_summary)
                lake.refresh(account_transactions) if number else lake.materialize(account_transactions)
                if data.draw(st.booleans(), label="compact"):
                    compact(lake, account_summary)
                    compact(lake, account_transactions)
                for projection in (account_summary, account_transactions):
                    assert_frame_equal(lake.project(projection), build(lake, projection, Bounds()))
        states = lake.states(BankAccount).sort("aggregate_id")
        summary = lake.project(account_summary)
        assert summary["account_id"].to_list() == states["aggregate_id"].to_list()
        assert [Decimal(v) for v in summary["current_balance"]] == [Decimal(v) for v in states["balance"]]


# -- personal data ----------------------------------------------------------------------------
@pytest.fixture
def holders_personal() -> Iterator[None]:
    from es_analytics.privacy import declare_personal, undeclare_personal

    declare_personal("AccountOpened", ["accountHolder"], subject="accountId")
    yield
    undeclare_personal("AccountOpened")


def test_personal_holder_is_stored_encrypted_and_erased_after_forget(lake_path: Path, holders_personal: None) -> None:
    with Lake.open(lake_path) as lake:
        for account_id, holder in (("p-1", "Zelda Quixote"), ("p-2", "Yusuf Umber")):
            account = BankAccount(account_id)
            account.open_account(10, holder)
            lake.append(account_id, list(account.pending_events), expected_version=0, aggregate_type="BankAccount")
        lake.materialize(account_summary)
        assert lake.project(account_summary)["account_holder"].to_list() == ["Zelda Quixote", "Yusuf Umber"]
        stored = b"".join(p.read_bytes() for p in (lake_path / "projections").rglob("*.parquet"))
        assert b"Zelda" not in stored and b"Yusuf" not in stored
        lake.forget("p-1")
        assert lake.project(account_summary)["account_holder"].to_list() == ["[erased]", "Yusuf Umber"]
        view = lake.sql("SELECT account_holder FROM account_summary ORDER BY account_id")
        assert view["account_holder"].to_list() == ["[erased]", "Yusuf Umber"]
        assert build(lake, account_summary, Bounds())["account_holder"].to_list() == ["[erased]", "Yusuf Umber"]


# -- bad input --------------------------------------------------------------------------------
def test_bad_definitions_and_arguments_raise_typed_errors(bank_lake: Lake) -> None:
    fields = Reducers(total=Sum(Json("amount", "DECIMAL(18,4)"), on="MoneyDeposited"))
    with pytest.raises(InvalidArgumentError, match="lake view"):
        StateProjection("events", aggregate_type="BankAccount", fields=fields, columns=["aggregate_id", "total"])
    with pytest.raises(InvalidArgumentError, match="identifier"):
        StateProjection("x; DROP", aggregate_type="BankAccount", fields=fields, columns=["aggregate_id", "total"])
    with pytest.raises(InvalidArgumentError, match="columns must name"):
        StateProjection("p", aggregate_type="BankAccount", fields=fields, columns=["aggregate_id", "nope"])
    with pytest.raises(InvalidArgumentError, match="Last or First"):
        StateProjection("p", aggregate_type="BankAccount", fields=fields, columns=["aggregate_id", "total"],
                        personal={"total": "amount"})
    with pytest.raises(InvalidArgumentError, match="reserved"):
        EventProjection("p", aggregate_type="BankAccount", event_types=["X"], columns={"position": Json("a")})
    with pytest.raises(InvalidArgumentError, match="at least one event type"):
        EventProjection("p", aggregate_type="BankAccount", event_types=[], columns={"a": Json("a")})
    with pytest.raises(InvalidArgumentError, match="expected a projection"):
        bank_lake.project("account_summary")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="no projection named"):
        bank_lake.refresh("nothing_like_it")
    holder = Reducers(holder=Last(Json("accountHolder"), on="AccountOpened"))
    assert StateProjection("holders", aggregate_type="BankAccount", fields=holder,
                           columns=["aggregate_id", "holder"]).columns == ["aggregate_id", "holder"]
    assert not (bank_lake.path / "projections").exists()  # nothing was written by the failures


def test_safe_sql_lakes_materialise_through_arrow_datasets(lake_path: Path) -> None:
    with Lake.open(lake_path, safe_sql=True) as lake:
        account = BankAccount("s-1")
        account.open_account(5, "Sam")
        lake.append("s-1", list(account.pending_events), expected_version=0, aggregate_type="BankAccount")
        lake.materialize(account_transactions)
        lake.append("s-1", [Event("MoneyDeposited", {"amount": 2, "description": "", "newBalance": 7})],
                    expected_version=1, aggregate_type="BankAccount")
        assert lake.refresh(account_transactions)[0]["events"] == 1
        view = lake.sql("SELECT balance_after FROM account_transactions ORDER BY position")
        assert view["balance_after"].to_list() == [Decimal("5"), Decimal("7")]


def test_a_damaged_projection_does_not_break_other_queries(bank_lake: Lake, caplog: pytest.LogCaptureFixture) -> None:
    bank_lake.materialize(account_summary)
    path = bank_lake.path
    bank_lake.close()
    for file in (path / "projections" / "account_summary").glob("*.parquet"):
        file.unlink()
    with Lake.open(path) as again:
        assert again.sql("SELECT count(*) AS n FROM events")["n"].item() == 8
        assert "account_summary" in caplog.text and "rebuild" in caplog.text
        again.rebuild(account_summary)
        assert again.sql("SELECT count(*) AS n FROM account_summary")["n"].item() == 3


def test_a_crash_before_publishing_leaves_the_old_table(bank_lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    import es_analytics.materialized as materialized

    bank_lake.materialize(account_summary)
    before = bank_lake.sql("SELECT * FROM account_summary ORDER BY account_id")
    bank_lake.append("acc-3", [Event("MoneyDeposited", {"amount": 9, "description": "", "newBalance": 0})],
                     expected_version=1, aggregate_type="BankAccount")

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(materialized, "_publish", crash)
    with pytest.raises(OSError, match="power cut"):
        bank_lake.refresh(account_summary)
    monkeypatch.undo()
    assert_frame_equal(bank_lake.sql("SELECT * FROM account_summary ORDER BY account_id"), before)
    assert bank_lake.projections()["behind"].item() == 1
    assert bank_lake.refresh(account_summary)[0]["events"] == 1  # the unpublished file is simply redone
    assert_frame_equal(bank_lake.project(account_summary), build(bank_lake, account_summary, Bounds()))
    listed = set(json.loads((bank_lake.path / "projections" / "account_summary" / "state.json").read_text())["files"])
    assert {p.name for p in (bank_lake.path / "projections" / "account_summary").glob("*.parquet")} == listed


def test_refresh_all_reports_projections_this_process_does_not_define(bank_lake: Lake) -> None:
    from es_analytics import projections

    other = StateProjection("deposits_only", aggregate_type="BankAccount",
                            fields=Reducers(deposits=Count(on="MoneyDeposited")), columns=["aggregate_id", "deposits"])
    bank_lake.materialize(other)
    bank_lake.materialize(account_summary)
    del projections._REGISTRY["deposits_only"]  # as in a process that never imported its definition
    done = {r["name"]: r["mode"] for r in bank_lake.refresh()}
    assert done == {"account_summary": "current", "deposits_only": "skipped: not defined here"}
    assert bank_lake.sql("SELECT sum(deposits) AS n FROM deposits_only")["n"].item() == 2  # its view still works


def test_event_projection_where_keeps_only_rows_that_meet_the_condition(bank_lake: Lake) -> None:
    big = EventProjection("big_deposits", aggregate_type="BankAccount", event_types=["MoneyDeposited"],
                          where={"MoneyDeposited": Json("amount", "DECIMAL(18,4)") > 20},
                          columns={"amount": Json("amount", "DECIMAL(18,4)")})
    assert bank_lake.project(big)["amount"].to_list() == [Decimal("50")]
    with pytest.raises(InvalidArgumentError, match="where names 'MoneyWithdrawn', which is not one of the event types"):
        EventProjection("bad_where", aggregate_type="BankAccount", event_types=["MoneyDeposited"],
                        where={"MoneyWithdrawn": Json("amount", "DECIMAL(18,4)") > 0}, columns={"a": Json("amount")})
    with pytest.raises(InvalidArgumentError, match="must be a BOOLEAN value"):
        EventProjection("bad_where", aggregate_type="BankAccount", event_types=["MoneyDeposited"],
                        where={"MoneyDeposited": Json("amount")}, columns={"a": Json("amount")})
    with pytest.raises(InvalidArgumentError, match="can only be compared with a number"):
        Json("amount") > "x"  # noqa: B015
