"""The seed (``event-sourcing.txt``) replayed against es_analytics: one test per seed class.

Each test runs the seed's own example (its events, its commands, its errors, its rows) and asserts the
results the seed's JavaScript gives. docs/seed.md maps every seed piece to its es_analytics name.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from es_analytics import ConcurrencyError, DomainError, Event, Lake, Repository
from es_analytics.examples.bank import BankAccount
from es_analytics.examples.users import User
from es_analytics.ingest import ingest

T = datetime(2024, 1, 15, 10, 30, tzinfo=timezone.utc)


# -- BankAccount: the seed's rules and their messages, word for word -----------------------------
@pytest.mark.parametrize(
    ("setup", "command", "message"),
    [
        ("active", lambda a: a.open_account(100, "John Doe"), "Account already opened"),
        ("pending", lambda a: a.open_account(-1, "John Doe"), "Initial deposit must be positive"),
        ("pending", lambda a: a.deposit(10, "Salary"), "Account is pending, cannot perform operation"),
        ("active", lambda a: a.deposit(0, "Salary"), "Deposit amount must be positive"),
        ("active", lambda a: a.withdraw(-1, "Rent"), "Withdrawal amount must be positive"),
        ("active", lambda a: a.withdraw(1001, "Rent"), "Insufficient funds"),
        ("active", lambda a: a.close_account("Moving"), "Cannot close account with non-zero balance"),
        ("closed", lambda a: a.deposit(10, "Salary"), "Account is closed, cannot perform operation"),
        ("closed", lambda a: a.withdraw(10, "Rent"), "Account is closed, cannot perform operation"),
        ("closed", lambda a: a.close_account("Again"), "Account is closed, cannot perform operation"),
    ],
)
def test_bank_account_rules_raise_the_seeds_messages(setup: str, command: object, message: str) -> None:
    account = BankAccount("acc_123")
    if setup in ("active", "closed"):
        account.open_account(1000, "John Doe")
    if setup == "closed":
        account.withdraw(1000, "Transfer out")
        account.close_account("Moving")
    before = (account.version, account.balance, account.status, len(account.pending_events))
    with pytest.raises(DomainError) as info:
        command(account)  # type: ignore[operator]
    assert str(info.value) == message
    assert (account.version, account.balance, account.status, len(account.pending_events)) == before


def test_an_initial_deposit_of_zero_opens_the_account_as_in_the_seed() -> None:
    account = BankAccount("acc_0")
    account.open_account(0, "John Doe")
    assert (account.status, account.balance, account.version) == ("active", 0, 1)


# -- EventStore.appendEvents: the concurrency conflict --------------------------------------------
def test_append_events_conflict_has_the_seeds_text(empty_lake: Lake) -> None:
    events = [Event("AccountOpened", {"accountId": "acc_123", "initialDeposit": 1000, "accountHolder": "John Doe"})]
    assert empty_lake.append("acc_123", events, expected_version=0, aggregate_type="BankAccount") == 1
    late = [Event("MoneyDeposited", {"amount": 500, "description": "Salary", "newBalance": 1500})]
    with pytest.raises(ConcurrencyError) as info:
        empty_lake.append("acc_123", late, expected_version=0, aggregate_type="BankAccount")
    assert str(info.value).startswith("Concurrency conflict: expected version 0, but current version is 1")
    assert (info.value.expected, info.value.actual, info.value.aggregate_id) == (0, 1, "acc_123")
    assert empty_lake.current_version("acc_123") == 1


def test_repository_save_conflict_keeps_its_type_and_the_seeds_text(empty_lake: Lake) -> None:
    accounts = Repository(empty_lake, BankAccount)
    first = BankAccount("acc_123")
    first.open_account(1000, "John Doe")
    accounts.save(first)
    second = BankAccount("acc_123")  # a second writer that did not see the first
    second.open_account(50, "Jane Roe")
    with pytest.raises(ConcurrencyError, match="^Concurrency conflict: expected version 0, but current version is 1"):
        accounts.save(second)


# -- EventUpgrader: UserRegistered v1 -> v2 -> v3 in the seed's payload shapes ---------------------
SEED_V1 = {"id": "user_123", "email": "john@example.com", "name": "John Doe"}
SEED_V3 = {"userId": "user_123", "profile": {"email": "john@example.com", "name": "John Doe"},
           "preferences": {"newsletter": False}}


def _stored(lake: Lake, aggregate_id: str) -> list[dict[str, Any]]:
    rows = lake.sql("SELECT data FROM events WHERE aggregate_id = ? ORDER BY aggregate_version", [aggregate_id])
    return [json.loads(t) for t in rows["data"]]


def _assert_sealed_for(stored: dict[str, Any], subject: str) -> None:
    for field in ("email", "name"):
        envelope = stored[field]
        assert set(envelope) == {"$enc", "sub", "iv", "ct"} and envelope["sub"] == subject
    assert stored["id"] == subject  # the subject's id itself stays readable


@pytest.mark.parametrize("version", [1, 2])
def test_seed_shaped_v1_and_v2_events_append_as_they_are_and_read_as_v3(empty_lake: Lake, version: int) -> None:
    metadata = {"userId": "admin_456"} if version == 1 else {"userId": "admin_456", "correlationId": "reg_789"}
    event = Event("UserRegistered", SEED_V1, metadata=metadata, schema_version=version, occurred_at=T,
                  event_id="evt_001")
    assert empty_lake.append("user_123", [event], expected_version=0, aggregate_type="User") == 1
    _assert_sealed_for(_stored(empty_lake, "user_123")[0], "user_123")
    read = empty_lake.events("user_123")
    assert read["schema_version"].to_list() == [3]
    assert json.loads(read["data"][0]) == SEED_V3
    shown = json.loads(read["metadata"][0])
    assert shown == {"userId": "admin_456", "correlationId": "corr_evt_001" if version == 1 else "reg_789"}
    view = empty_lake.sql("SELECT schema_version, data, metadata FROM events_upcast")
    assert (view["schema_version"][0], json.loads(view["data"][0]), json.loads(view["metadata"][0])) == (
        3, SEED_V3, shown)
    user = empty_lake.aggregate(User, "user_123")
    assert (user.email, user.name, user.status, user.newsletter) == ("john@example.com", "John Doe", "active", False)
    empty_lake.forget("user_123")
    assert json.loads(empty_lake.events("user_123")["data"][0])["profile"] == {"email": "[erased]", "name": "[erased]"}


def test_v2_to_v3_takes_the_newsletter_flag_as_the_seed_does(empty_lake: Lake) -> None:
    event = Event("UserRegistered", {**SEED_V1, "newsletter": True}, schema_version=2, occurred_at=T)
    empty_lake.append("user_123", [event], expected_version=0, aggregate_type="User")
    assert json.loads(empty_lake.events("user_123")["data"][0])["preferences"] == {"newsletter": True}
    assert empty_lake.aggregate(User, "user_123").newsletter is True  # type: ignore[union-attr]
    assert empty_lake.states(User)["newsletter"].to_list() == [True]  # the vectorised path reads v2 too


def test_seed_shaped_old_versions_are_ingested_as_they_are(tmp_path: Path, empty_lake: Lake) -> None:
    rows = [{"event_id": f"evt_00{v}", "event_type": "UserRegistered", "schema_version": v, "aggregate_type": "User",
             "aggregate_id": f"user_{v}", "aggregate_version": 1, "occurred_at": "2024-01-15T10:30:00Z",
             "data": {**SEED_V1, "id": f"user_{v}"}, "metadata": {}} for v in (1, 2)]
    path = tmp_path / "users.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = ingest(empty_lake, path)
    assert (result.imported, result.rejected) == (2, 0)
    for v in (1, 2):
        _assert_sealed_for(_stored(empty_lake, f"user_{v}")[0], f"user_{v}")
        assert json.loads(empty_lake.events(f"user_{v}")["data"][0])["userId"] == f"user_{v}"
    metadata = [json.loads(t) for t in empty_lake.events(types="UserRegistered")["metadata"]]
    assert metadata == [{"correlationId": "corr_evt_001"}, {}]  # v2 events had their correlationId already


# -- AccountProjection: account_summary and account_transactions, column by column ---------------
def _seed_bank(lake: Lake) -> None:
    """The seed's bank example: acc_123 opened with 1000, +500, -200; acc_0 opened with 0, +50, -50, closed."""
    accounts = Repository(lake, BankAccount)
    one = BankAccount("acc_123")
    one.open_account(1000, "John Doe")
    one.deposit(500, "Salary")
    one.withdraw(200, "Groceries")
    accounts.save(one)
    zero = BankAccount("acc_0")
    zero.open_account(0, "Jane Roe")
    zero.deposit(50, "Gift")
    zero.withdraw(50, "Dinner")
    zero.close_account("Moving")
    accounts.save(zero)


def test_account_projection_rows_are_the_seeds(empty_lake: Lake) -> None:
    from decimal import Decimal

    from es_analytics.examples.bank import account_summary, account_transactions

    _seed_bank(empty_lake)
    events = {r["event_id"]: r for r in empty_lake.events().iter_rows(named=True)}
    summary = {r["account_id"]: r for r in empty_lake.project(account_summary).iter_rows(named=True)}
    one, zero = summary["acc_123"], summary["acc_0"]
    first = empty_lake.events("acc_123")
    # handleAccountOpened + handleMoneyDeposited + handleMoneyWithdrawn
    assert {k: one[k] for k in ("account_holder", "current_balance", "status", "total_deposits",
                                "total_withdrawals", "transaction_count", "version")} == {
        "account_holder": "John Doe", "current_balance": Decimal(1300), "status": "active",
        "total_deposits": Decimal(1500), "total_withdrawals": Decimal(200), "transaction_count": 2, "version": 3}
    assert (one["opened_at"], one["last_activity"]) == (first["occurred_at"][0], first["occurred_at"][2])
    # handleAccountClosed sets status and last_activity, not the counts
    assert (zero["status"], zero["current_balance"], zero["total_deposits"], zero["transaction_count"],
            zero["version"]) == ("closed", Decimal(0), Decimal(50), 2, 4)
    assert zero["last_activity"] == empty_lake.events("acc_0")["occurred_at"][3]
    ledger = empty_lake.project(account_transactions)
    rows = [(r["account_id"], r["transaction_type"], r["amount"], r["description"], r["balance_after"])
            for r in ledger.iter_rows(named=True)]
    assert rows == [  # no 'Initial deposit' row for the opening with 0
        ("acc_123", "deposit", Decimal(1000), "Initial deposit", Decimal(1000)),
        ("acc_123", "deposit", Decimal(500), "Salary", Decimal(1500)),
        ("acc_123", "withdrawal", Decimal(200), "Groceries", Decimal(1300)),
        ("acc_0", "deposit", Decimal(50), "Gift", Decimal(50)),
        ("acc_0", "withdrawal", Decimal(50), "Dinner", Decimal(0)),
    ]
    for row in ledger.iter_rows(named=True):  # each row is its event's, at the event's time
        assert row["occurred_at"] == events[row["event_id"]]["occurred_at"]
    # the seed's balance_after is newBalance: the same numbers on a stream written by the commands
    stored = [json.loads(events[e]["data"]).get("newBalance") for e in ledger["event_id"]]
    assert stored[1:] == [1500, 1300, 50, 0]


# -- TemporalQueryService.analyzeEventPatterns ------------------------------------------------------
def test_analyze_event_patterns_is_the_seeds(empty_lake: Lake) -> None:
    from es_analytics import patterns

    at = [datetime(2024, 1, d, h, tzinfo=timezone.utc) for d, h in [(1, 9), (1, 9), (1, 14), (3, 9), (5, 0)]]
    deposits = [Event("MoneyDeposited", {"amount": 10, "description": "", "newBalance": 10 * (i + 1)},
                      occurred_at=t) for i, t in enumerate(at)]
    empty_lake.append("acc_123", deposits, expected_version=0, aggregate_type="BankAccount")
    empty_lake.append("acc_9", [Event("MoneyDeposited", {"amount": 1}, occurred_at=at[0])], expected_version=0,
                      aggregate_type="BankAccount")
    window = (datetime(2024, 1, 1, 9, tzinfo=timezone.utc), datetime(2024, 1, 5, tzinfo=timezone.utc))
    result = patterns.analyze(empty_lake, "MoneyDeposited", *window, aggregate_id="acc_123")
    # timeWindow.start <= timestamp <= timeWindow.end: both bounds count
    assert result.total_events == 5
    assert dict(result.hourly.filter(pl.col("count") > 0).rows()) == {0: 1, 9: 3, 14: 1}  # hourlyDistribution
    assert {d.isoformat(): n for d, n in result.active_daily.rows()} == {  # dailyTotals
        "2024-01-01": 3, "2024-01-03": 1, "2024-01-05": 1}
    assert result.average_per_day == 5 / 3  # averagePerDay: totalEvents / dailyTotals.size
    assert patterns.analyze(empty_lake, "MoneyDeposited", *window, aggregate_id="acc_123",
                            closed="left").total_events == 4


# -- the user example: buildUserState -------------------------------------------------------------
def _seed_user_events() -> list[Event]:
    """The seed's two events, with the v1 payload's ``id`` (the subject the upgrader reads)."""
    return [
        Event("UserRegistered", {"id": "user_123", "email": "john@example.com", "name": "John Doe"},
              event_id="evt_001", occurred_at=datetime(2024, 1, 15, 10, 30, tzinfo=timezone.utc),
              metadata={"userId": "admin_456", "correlationId": "reg_789"}),
        Event("UserSuspended", {"reason": "Suspicious activity detected", "suspendedBy": "security_system"},
              event_id="evt_002", occurred_at=datetime(2024, 2, 1, 14, 20, tzinfo=timezone.utc),
              metadata={"userId": "security_bot", "correlationId": "alert_321"}),
    ]


def test_build_user_state_gives_the_seeds_user(empty_lake: Lake) -> None:
    empty_lake.append("user_123", _seed_user_events(), expected_version=0, aggregate_type="User")
    user = empty_lake.aggregate(User, "user_123")
    assert user is not None
    assert (user.aggregate_id, user.email, user.name, user.status) == (
        "user_123", "john@example.com", "John Doe", "suspended")
    assert (user.registered_at, user.suspended_at, user.suspension_reason) == (
        datetime(2024, 1, 15, 10, 30, tzinfo=timezone.utc), datetime(2024, 2, 1, 14, 20, tzinfo=timezone.utc),
        "Suspicious activity detected")
    before = empty_lake.aggregate(User, "user_123", as_of=datetime(2024, 1, 20, tzinfo=timezone.utc))
    assert (before.status, before.suspended_at) == ("active", None)  # type: ignore[union-attr]
    states = empty_lake.states(User).row(0, named=True)  # the same state, vectorised (no personal fields)
    assert (states["status"], states["registered_at"], states["suspension_reason"]) == (
        "suspended", user.registered_at, "Suspicious activity detected")


# -- EventStore -------------------------------------------------------------------------------------
def test_event_store_append_get_version_and_all_events(empty_lake: Lake) -> None:
    opened = Event("AccountOpened", {"accountId": "acc_123", "initialDeposit": 1000, "accountHolder": "John Doe"},
                   occurred_at=T)
    assert empty_lake.current_version("acc_123") == 0  # getCurrentVersion of an unknown aggregate
    # appendEvents(aggregateId, expectedVersion, events) returns expectedVersion + events.length
    assert empty_lake.append("acc_123", [opened], expected_version=0, aggregate_type="BankAccount") == 1
    later = [Event("MoneyDeposited", {"amount": 500, "description": "Salary", "newBalance": 1500},
                   occurred_at=datetime(2024, 1, 16, tzinfo=timezone.utc)),
             Event("MoneyWithdrawn", {"amount": 200, "description": "Rent", "newBalance": 1300},
                   occurred_at=datetime(2024, 1, 17, tzinfo=timezone.utc))]
    assert empty_lake.append("acc_123", later, expected_version=1, aggregate_type="BankAccount") == 3
    empty_lake.append("user_123", _seed_user_events(), expected_version=0, aggregate_type="User")
    assert empty_lake.current_version("acc_123") == 3
    # getEvents(aggregateId, fromVersion): versions after fromVersion, in version order
    assert empty_lake.events("acc_123", from_version=1)["aggregate_version"].to_list() == [2, 3]
    assert empty_lake.events("acc_123")["event_type"].to_list() == ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"]
    # getAllEvents(fromTimestamp, eventTypes): every stream, in commit order
    since = empty_lake.events(since=datetime(2024, 1, 16, tzinfo=timezone.utc),
                              types=["MoneyWithdrawn", "UserSuspended"])
    assert since.select("aggregate_id", "event_type").rows() == [("acc_123", "MoneyWithdrawn"),
                                                               ("user_123", "UserSuspended")]
    assert since["position"].is_sorted()
    assert empty_lake.events()["aggregate_id"].to_list() == ["acc_123"] * 3 + ["user_123"] * 2


# -- BankAccount: fromEvents, replay, uncommitted events ------------------------------------------
def test_bank_account_commands_events_and_replay() -> None:
    account = BankAccount("acc_123")
    account.open_account(1000, "John Doe")
    account.deposit(500, "Salary")
    account.withdraw(200, "Groceries")
    pending = account.pending_events  # getUncommittedEvents
    assert [e.event_type for e in pending] == ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"]
    assert [json.loads(e.data_json) for e in pending] == [
        {"accountId": "acc_123", "initialDeposit": 1000, "accountHolder": "John Doe"},
        {"amount": 500, "description": "Salary", "newBalance": 1500},
        {"amount": 200, "description": "Groceries", "newBalance": 1300},
    ]
    assert (account.balance, account.status, account.version) == (1300, "active", 3)
    rebuilt = BankAccount.replay("acc_123", account.uncommitted_as_recorded())  # fromEvents
    assert (rebuilt.balance, rebuilt.status, rebuilt.account_holder, rebuilt.version) == (1300, "active", "John Doe", 3)
    assert rebuilt.pending_events == ()  # replay leaves no uncommitted events
    account.mark_saved(3)  # markEventsAsCommitted
    assert account.pending_events == ()
    account.withdraw(1300, "Transfer out")
    account.close_account("Moving")
    closed = json.loads(account.pending_events[-1].data_json)
    assert closed["reason"] == "Moving" and closed["closedAt"].endswith("Z")
    assert account.status == "closed"


# -- EventSourcedRepository and SnapshotStore ---------------------------------------------------------
def test_repository_get_by_id_save_snapshot_every_10_and_publish(empty_lake: Lake) -> None:
    published: list[str] = []
    empty_lake.subscribe(lambda events: published.extend(events["event_type"].to_list()))  # the event bus
    accounts = Repository(empty_lake, BankAccount)
    assert accounts.snapshot_every == 10 and accounts.get("acc_123") is None  # getById of a missing aggregate
    account = BankAccount("acc_123")
    account.open_account(1000, "John Doe")
    for i in range(8):
        account.deposit(10, f"Deposit {i}")
    assert accounts.save(account) == 9
    assert empty_lake.snapshots.versions("acc_123").height == 0
    loaded = accounts.get("acc_123")
    assert loaded is not None
    loaded.withdraw(80, "Rent")
    assert accounts.save(loaded) == 10  # newVersion % 10 == 0: a snapshot
    assert empty_lake.snapshots.versions("acc_123")["aggregate_version"].to_list() == [10]
    assert published == ["AccountOpened"] + ["MoneyDeposited"] * 8 + ["MoneyWithdrawn"]
    again = accounts.get("acc_123")  # from the snapshot plus the events after it
    assert (again.balance, again.status, again.account_holder, again.version) == (  # type: ignore[union-attr]
        1000, "active", "John Doe", 10)
    assert accounts.save(again) == 10  # nothing to save  # type: ignore[arg-type]


def test_snapshot_store_keeps_the_last_3(empty_lake: Lake) -> None:
    accounts = Repository(empty_lake, BankAccount)
    account = BankAccount("acc_123")
    account.open_account(1000, "John Doe")
    for version in range(2, 51):
        account.deposit(1, "Interest")
        if version % 10 == 0:
            accounts.save(account)
    assert empty_lake.snapshots.versions("acc_123")["aggregate_version"].to_list() == [30, 40, 50]
    assert accounts.get("acc_123").balance == 1049  # type: ignore[union-attr]


# -- EventUpgrader: upgradeEvent on one event -------------------------------------------------------
def test_upgrade_event_runs_the_chain_on_payload_and_metadata() -> None:
    from es_analytics.upcasting import default_registry

    data, metadata, version = default_registry.upcast_event(
        "UserRegistered", 1, dict(SEED_V1), {"userId": "admin_456"}, event_id="evt_001")
    assert (data, metadata, version) == (SEED_V3, {"userId": "admin_456", "correlationId": "corr_evt_001"}, 3)
    assert default_registry.upcast_event("UserRegistered", 3, SEED_V3, {}) == (SEED_V3, {}, 3)


# -- TemporalQueryService -------------------------------------------------------------------------------
def test_temporal_queries_are_the_seeds(empty_lake: Lake) -> None:
    day = lambda d: datetime(2024, 1, d, 12, tzinfo=timezone.utc)  # noqa: E731
    empty_lake.append("acc_123", [
        Event("AccountOpened", {"accountId": "acc_123", "initialDeposit": 1000, "accountHolder": "John Doe"},
              occurred_at=day(1)),
        Event("MoneyDeposited", {"amount": 500, "description": "Salary", "newBalance": 1500}, occurred_at=day(10)),
        Event("MoneyWithdrawn", {"amount": 200, "description": "Rent", "newBalance": 1300}, occurred_at=day(20)),
    ], expected_version=0, aggregate_type="BankAccount")
    empty_lake.append("acc_456", [
        Event("AccountOpened", {"accountId": "acc_456", "initialDeposit": 50, "accountHolder": "Jane Roe"},
              occurred_at=day(15))], expected_version=0, aggregate_type="BankAccount")
    # getAggregateAtTime: events with timestamp <= T, upgraded, folded; null before the first
    assert empty_lake.aggregate(BankAccount, "acc_123", as_of=day(10)).balance == 1500  # type: ignore[union-attr]
    assert empty_lake.aggregate(BankAccount, "acc_123", as_of=datetime(2023, 12, 31, tzinfo=timezone.utc)) is None
    # getSystemStateAtTime: every aggregate's events up to T, grouped by aggregate
    system = empty_lake.system_state(day(15))
    assert {r["aggregate_id"]: [e["event_type"] for e in r["events"]] for r in system.iter_rows(named=True)} == {
        "acc_123": ["AccountOpened", "MoneyDeposited"], "acc_456": ["AccountOpened"]}
    # getEventsBetween(start, end, eventTypes): both ends inclusive
    between = empty_lake.events_between(day(10), day(20), types=["MoneyDeposited", "MoneyWithdrawn"])
    assert between["event_type"].to_list() == ["MoneyDeposited", "MoneyWithdrawn"]
    assert empty_lake.events_between(day(10), day(20))["aggregate_id"].to_list() == ["acc_123", "acc_456", "acc_123"]


# -- EventProcessor: per-aggregate ordering ---------------------------------------------------------
def test_event_processor_applies_each_aggregate_in_version_order(empty_lake: Lake) -> None:
    from es_analytics.processing import EventProcessor

    empty_lake.append("acc_123", [Event("AccountOpened", {"initialDeposit": 1}), Event("MoneyDeposited", {"amount": 1}),
                                  Event("MoneyDeposited", {"amount": 2})], expected_version=0, aggregate_type="BankAccount")
    events = empty_lake.events("acc_123")
    applied: list[int] = []
    with EventProcessor(empty_lake, "seed_order", lambda e: applied.append(e["aggregate_version"])) as processor:
        # version 3 arrives first: it is not version lastProcessed + 1, so it waits (queueForLaterProcessing)
        assert processor.deliver(events[2]).held == 1 and applied == []
        processor.deliver(events[0])
        assert applied == [1]
        processor.deliver(events[1])  # the missing version: it and the queued one are processed in order
        assert applied == [1, 2, 3]
        assert processor.deliver(events[1]).duplicates == 1 and applied == [1, 2, 3]


# -- GDPRCompliantEventStore: per-user key, deleteUserData, UserDataDeleted ---------------------------
def test_gdpr_store_encrypts_per_user_and_delete_user_data_adds_the_tombstone(empty_lake: Lake) -> None:
    from es_analytics.examples.users import delete_user_data

    empty_lake.append("user_123", _seed_user_events(), expected_version=0, aggregate_type="User")
    other = User("user_456")
    other.register("jane@example.com", "Jane Roe")
    Repository(empty_lake, User).save(other)
    stored = _stored(empty_lake, "user_123")[0]  # storeEvent: PII encrypted with the user's own key
    _assert_sealed_for(stored, "user_123")
    assert set(empty_lake.key_store.keys_for(["user_123", "user_456"])) == {"user_123", "user_456"}
    certificate = delete_user_data(empty_lake, "user_123")
    assert certificate["subject_id"] == "user_123" and certificate["tombstone_version"] == 3
    assert empty_lake.key_store.keys_for(["user_123"]) == {"user_123": None}  # the key is gone
    tombstone = empty_lake.events("user_123").row(-1, named=True)
    assert tombstone["event_type"] == "UserDataDeleted" and json.loads(tombstone["data"])["deletedAt"].endswith("Z")
    user = empty_lake.aggregate(User, "user_123")
    assert (user.email, user.name, user.status) == ("[erased]", "[erased]", "deleted")  # type: ignore[union-attr]
    assert empty_lake.aggregate(User, "user_456").email == "jane@example.com"  # type: ignore[union-attr]
    assert delete_user_data(empty_lake, "user_123")["tombstone_version"] == 3  # once only


# -- docs/seed.md stays true: its tests exist and its example runs ----------------------------------
SEED_DOC = Path(__file__).resolve().parents[1] / "docs" / "seed.md"


def test_every_test_named_in_docs_seed_md_exists() -> None:
    import re

    named = set(re.findall(r"`(test_\w+)`", SEED_DOC.read_text(encoding="utf-8")))
    here = {name for name in globals() if name.startswith("test_")}
    assert named and not named - here


def test_the_example_of_docs_seed_md_runs() -> None:
    import re

    blocks = re.findall(r"^```python\n(.*?)^```", SEED_DOC.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/seed.md", "exec"), {"__name__": "__seed_doc__"})  # noqa: S102
