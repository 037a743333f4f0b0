"""Repository, the fold path (``lake.aggregate``), snapshots and subscribers."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_analytics import Aggregate, ConcurrencyError, DomainEvent, Event, InvalidArgumentError, Lake, Repository, when
from es_analytics.aggregates import decode_state
from es_analytics.examples.bank import BankAccount
from es_analytics.examples.users import User
from es_analytics.repository import load

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def new_account(lake: Lake, aggregate_id: str = "acc-1", initial: Any = 100) -> BankAccount:
    repo = Repository(lake, BankAccount)
    account = BankAccount(aggregate_id)
    account.open_account(initial, "Ada Almeida")
    repo.save(account)
    return account


def spy_from_versions(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the ``from_version`` of every ``lake.events`` call (which snapshot a load started from)."""
    calls: list[int] = []
    original = lake.events

    def events(*args: Any, **kwargs: Any) -> pl.DataFrame:
        calls.append(kwargs.get("from_version", 0))
        return original(*args, **kwargs)

    monkeypatch.setattr(lake, "events", events)
    return calls


# -- get and save ------------------------------------------------------------------------------
def test_get_returns_none_for_an_absent_aggregate(empty_lake: Lake) -> None:
    assert Repository(empty_lake, BankAccount).get("nobody") is None
    assert empty_lake.aggregate(BankAccount, "nobody") is None


def test_save_then_get_round_trips_and_nothing_pending_is_a_no_op(empty_lake: Lake) -> None:
    repo = Repository(empty_lake, BankAccount)
    account = BankAccount("acc-1")
    account.open_account(100, "Ada Almeida")
    account.deposit(Decimal("20.25"), "Salary")
    assert repo.save(account) == 2
    assert repo.save(account) == 2
    loaded = repo.get("acc-1")
    assert loaded == account
    assert (loaded.balance, loaded.saved_version, loaded.pending_events) == (Decimal("120.25"), 2, ())
    assert empty_lake.current_version("acc-1") == 2


def test_a_stale_aggregate_cannot_be_saved(empty_lake: Lake) -> None:
    repo = Repository(empty_lake, BankAccount)
    new_account(empty_lake)
    first, second = repo.get("acc-1"), repo.get("acc-1")
    first.deposit(10, "a")
    repo.save(first)
    second.withdraw(100, "b")
    with pytest.raises(ConcurrencyError, match="^Concurrency conflict: expected version 1, but current version is 2") as info:
        repo.save(second)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert empty_lake.current_version("acc-1") == 2
    assert repo.get("acc-1").balance == 110


def test_a_historical_aggregate_or_another_class_cannot_be_saved(empty_lake: Lake) -> None:
    repo = Repository(empty_lake, BankAccount)
    new_account(empty_lake)
    past = repo.get("acc-1", version=1)
    assert past.historical
    past.deposit(1, "x")
    with pytest.raises(InvalidArgumentError, match="rebuilt as of a past point and cannot be saved"):
        repo.save(past)
    with pytest.raises(InvalidArgumentError, match="this repository saves BankAccount, got User"):
        repo.save(User("user-1"))
    assert empty_lake.current_version("acc-1") == 1


def test_loading_a_stream_of_another_type_is_refused(empty_lake: Lake) -> None:
    new_account(empty_lake)
    with pytest.raises(InvalidArgumentError, match="stream 'acc-1' is a 'BankAccount', not a 'User'"):
        empty_lake.aggregate(User, "acc-1")
    with pytest.raises(InvalidArgumentError, match="aggregate_class must be an Aggregate subclass"):
        empty_lake.aggregate(dict, "acc-1")  # type: ignore[type-var]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"snapshot_every": -1}, "snapshot_every must be a non-negative int"),
    ({"keep_snapshots": 0}, "keep_snapshots must be a positive int"),
])
def test_bad_repository_options(empty_lake: Lake, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        Repository(empty_lake, BankAccount, **kwargs)


def test_naive_times_are_refused(bank_lake: Lake) -> None:
    with pytest.raises(InvalidArgumentError, match="as_of must be timezone-aware"):
        bank_lake.aggregate(BankAccount, "acc-1", as_of=datetime(2024, 1, 1))


# -- temporal semantics ------------------------------------------------------------------------
def append(lake: Lake, aggregate_id: str, *events: Event) -> int:
    return lake.append(aggregate_id, list(events), expected_version=None, aggregate_type="BankAccount")


def opened_at(minutes: float, amount: Any = 100) -> Event:
    return Event("AccountOpened", {"accountId": "acc-1", "initialDeposit": amount, "accountHolder": "Ada"},
                 occurred_at=at(minutes))


def deposited(minutes: float, amount: Any) -> Event:
    return Event("MoneyDeposited", {"amount": amount, "description": "", "newBalance": 0}, occurred_at=at(minutes))


def test_as_of_and_version_select_the_past_state(empty_lake: Lake) -> None:
    append(empty_lake, "acc-1", opened_at(0), deposited(10, 5), deposited(20, 7))
    balance = lambda **kw: empty_lake.aggregate(BankAccount, "acc-1", **kw).balance  # noqa: E731
    assert empty_lake.aggregate(BankAccount, "acc-1", as_of=at(-1)) is None
    assert [balance(as_of=at(m)) for m in (0, 9, 10, 25)] == [100, 100, 105, 112]
    assert [balance(version=v) for v in (1, 2, 3, 9)] == [100, 105, 112, 112]
    assert empty_lake.aggregate(BankAccount, "acc-1", as_of=at(25), version=2).version == 2


def test_a_back_dated_event_recorded_after_a_snapshot_gives_the_right_as_of_state(
    empty_lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository(empty_lake, BankAccount, snapshot_every=2)
    append(empty_lake, "acc-1", opened_at(0), deposited(10, 5), deposited(20, 7))
    before_correction = empty_lake.events("acc-1")["recorded_at"].max()
    repo._snapshot(repo.get("acc-1"))  # snapshot at version 3: max occurred_at = minute 20
    assert empty_lake.snapshots.versions("acc-1")["aggregate_version"].to_list() == [3]
    append(empty_lake, "acc-1", deposited(5, 1000))  # back-dated to minute 5, recorded last

    calls = spy_from_versions(empty_lake, monkeypatch)
    # As of minute 15 the correction counts, but deposit 3 (minute 20) does not: the snapshot (which
    # holds deposit 3) must not be used.
    assert empty_lake.aggregate(BankAccount, "acc-1", as_of=at(15)).balance == 1105
    # Known before the correction was recorded: the correction is invisible.
    assert empty_lake.aggregate(BankAccount, "acc-1", as_of=at(15), known_at=before_correction).balance == 105
    # As of now the snapshot is usable and the correction is the tail.
    assert empty_lake.aggregate(BankAccount, "acc-1").balance == 1112
    assert calls == [0, 0, 3]


def test_snapshot_every_10_keeps_the_newest_3(empty_lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repository(empty_lake, BankAccount, snapshot_every=10, keep_snapshots=3)
    account = BankAccount("acc-1")
    account.open_account(0, "Ada")
    repo.save(account)
    versions = []
    for n in range(2, 56):
        account.deposit(1, f"d{n}")
        repo.save(account)
        versions.append(empty_lake.snapshots.versions("acc-1")["aggregate_version"].to_list())
    assert versions[35 - 2] == [10, 20, 30]
    assert versions[-1] == [30, 40, 50]
    calls = spy_from_versions(empty_lake, monkeypatch)
    assert repo.get("acc-1").balance == 54
    assert repo.get("acc-1", version=45).balance == 44
    assert repo.get("acc-1", version=25).balance == 24  # older than every kept snapshot
    assert calls == [50, 40, 0]


def test_a_multi_event_save_that_crosses_a_multiple_takes_a_snapshot(empty_lake: Lake) -> None:
    repo = Repository(empty_lake, BankAccount, snapshot_every=4)
    account = BankAccount("acc-1")
    account.open_account(0, "Ada")
    for _ in range(5):
        account.deposit(2, "x")
    repo.save(account)
    (row,) = empty_lake.snapshots.versions("acc-1").rows(named=True)
    assert row["aggregate_version"] == 6
    assert row["max_recorded_at"] == empty_lake.events("acc-1")["recorded_at"].max()


def test_get_takes_a_snapshot_of_a_long_stream_written_without_the_repository(empty_lake: Lake) -> None:
    append(empty_lake, "acc-1", opened_at(0), *[deposited(i, 1) for i in range(1, 12)])
    repo = Repository(empty_lake, BankAccount, snapshot_every=5)
    assert repo.get("acc-1", version=11).balance == 110  # historical reads take none
    assert empty_lake.snapshots.versions("acc-1").height == 0
    assert repo.get("acc-1").balance == 111
    assert empty_lake.snapshots.versions("acc-1")["aggregate_version"].to_list() == [12]


def test_a_snapshot_of_an_older_class_version_is_ignored(empty_lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repository(empty_lake, BankAccount, snapshot_every=2)
    account = BankAccount("acc-1")
    account.open_account(10, "Ada")
    account.deposit(5, "x")
    repo.save(account)
    (row,) = empty_lake.snapshots.versions("acc-1").rows(named=True)
    # Poison the stored state: were it read by the new class version, the balance would be wrong.
    with empty_lake._store.hot.write() as con:
        con.execute("UPDATE snapshots SET state = ? WHERE aggregate_id = 'acc-1'",
                    ('{"account_holder":"X","balance":{"$decimal":"999"},"status":"active"}',))
    assert empty_lake.aggregate(BankAccount, "acc-1").balance == 999  # same class: the snapshot is used
    monkeypatch.setattr(BankAccount, "class_version", 2)
    calls = spy_from_versions(empty_lake, monkeypatch)
    assert empty_lake.aggregate(BankAccount, "acc-1").balance == 15
    assert calls == [0]
    # A load by the new class version takes its own snapshot beside the old one, which stays unused.
    assert Repository(empty_lake, BankAccount, snapshot_every=2).get("acc-1").balance == 15
    fingerprints = empty_lake.snapshots.versions("acc-1")["fingerprint"].to_list()
    assert len(set(fingerprints)) == 2 and row["fingerprint"] in fingerprints
    assert empty_lake.aggregate(BankAccount, "acc-1").balance == 15


def test_snapshots_of_one_aggregate_can_be_deleted(empty_lake: Lake) -> None:
    repo = Repository(empty_lake, BankAccount, snapshot_every=1)
    for name in ("acc-1", "acc-2"):
        account = BankAccount(name)
        account.open_account(1, "Ada")
        repo.save(account)
        account.deposit(1, "x")
        repo.save(account)
    assert empty_lake.snapshots.delete("acc-1") == 2
    assert empty_lake.snapshots.versions("acc-1").height == 0
    assert empty_lake.snapshots.versions("acc-2")["aggregate_version"].to_list() == [1, 2]
    assert repo.get("acc-1").balance == 2


def test_snapshots_survive_sealing_and_reopening(lake_path: Path) -> None:
    with Lake.open(lake_path) as lake:
        repo = Repository(lake, BankAccount, snapshot_every=3)
        account = BankAccount("acc-1")
        account.open_account(1, "Ada")
        for _ in range(3):
            account.deposit(1, "x")
        repo.save(account)
        lake.seal()
    with Lake.open(lake_path) as lake:
        assert lake.snapshots.versions("acc-1")["aggregate_version"].to_list() == [4]
        assert lake.aggregate(BankAccount, "acc-1").balance == 4


# -- subscribers -------------------------------------------------------------------------------
def test_subscribers_get_the_committed_events_after_commit(empty_lake: Lake) -> None:
    seen: list[pl.DataFrame] = []
    versions_at_call: list[int] = []

    def handler(events: pl.DataFrame) -> None:
        seen.append(events)
        versions_at_call.append(empty_lake.current_version(events["aggregate_id"][0]))

    unsubscribe = empty_lake.subscribe(handler)
    account = new_account(empty_lake)
    account.deposit(5, "a")
    account.withdraw(3, "b")
    Repository(empty_lake, BankAccount).save(account)
    assert [f["aggregate_version"].to_list() for f in seen] == [[1], [2, 3]]
    assert [f["event_type"].to_list() for f in seen][1] == ["MoneyDeposited", "MoneyWithdrawn"]
    assert versions_at_call == [1, 3]
    unsubscribe()
    new_account(empty_lake, "acc-2")
    assert len(seen) == 2


def test_a_retried_append_publishes_nothing_twice(empty_lake: Lake) -> None:
    seen: list[int] = []
    empty_lake.subscribe(lambda events: seen.append(events.height))
    event = Event("AccountOpened", {"accountId": "a", "initialDeposit": 1, "accountHolder": "A"}, event_id="e-1")
    for _ in range(2):
        empty_lake.append("acc-1", [event], expected_version=0, aggregate_type="BankAccount")
    assert seen == [1]


def test_a_failing_subscriber_does_not_undo_the_commit(empty_lake: Lake, caplog: pytest.LogCaptureFixture) -> None:
    after: list[int] = []

    def broken(events: pl.DataFrame) -> None:
        raise RuntimeError("projection is down")

    empty_lake.subscribe(broken)
    empty_lake.subscribe(lambda events: after.append(events.height))
    with caplog.at_level(logging.ERROR, logger="es_analytics"):
        new_account(empty_lake)
    assert empty_lake.current_version("acc-1") == 1
    assert after == [1]
    (failure,) = empty_lake.subscriber_errors
    assert failure.handler.endswith("broken") and isinstance(failure.error, RuntimeError)
    assert failure.positions == tuple(empty_lake.events("acc-1")["position"].to_list())
    assert "projection is down" in caplog.text


def test_subscribe_needs_a_callable(empty_lake: Lake) -> None:
    with pytest.raises(InvalidArgumentError, match="handler must be callable"):
        empty_lake.subscribe("not callable")  # type: ignore[arg-type]


# -- property: with and without snapshots, hot and sealed, the fold agrees with a naive one ------
@pytest.fixture(scope="module")
def shared_lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    lake = Lake.open(tmp_path_factory.mktemp("prop") / "lake", durability="normal")
    yield lake
    lake.close()


operations = st.lists(
    st.tuples(st.sampled_from(["deposit", "withdraw"]), st.integers(1, 500), st.integers(-30 * 24, 30 * 24),
              st.booleans()),
    min_size=1, max_size=25,
)


def naive_balance(rows: list[dict[str, Any]], as_of: datetime | None, known_at: datetime | None) -> Decimal | None:
    """The definition: fold events with occurred_at <= as_of and recorded_at <= known_at, in version order."""
    kept = [r for r in rows if (as_of is None or r["occurred_at"] <= as_of)
            and (known_at is None or r["recorded_at"] <= known_at)]
    if not kept:
        return None
    balance = Decimal(0)
    for r in sorted(kept, key=lambda r: r["aggregate_version"]):
        amount = Decimal(str(r["amount"]))
        balance = amount if r["event_type"] == "AccountOpened" else balance + (
            amount if r["event_type"] == "MoneyDeposited" else -amount)
    return balance


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, every=st.integers(1, 6), seal_after=st.integers(0, 25), picks=st.lists(
    st.tuples(st.integers(-40 * 24, 40 * 24), st.integers(0, 30)), min_size=1, max_size=6))
def test_loading_with_and_without_snapshots_agrees_at_random_points(
    shared_lake: Lake, ops: list[tuple[str, int, int, bool]], every: int, seal_after: int,
    picks: list[tuple[int, int]],
) -> None:
    lake, aggregate_id = shared_lake, f"acc-{uuid.uuid4()}"
    repo = Repository(lake, BankAccount, snapshot_every=every, keep_snapshots=2)
    account = BankAccount(aggregate_id)
    account.open_account(1000, "Ada")
    repo.save(account)
    for i, (kind, amount, hours, flush) in enumerate(ops):
        when = T0 + timedelta(hours=hours)  # random business times: many events are back-dated
        # The history, not the rules, is under test: record through the handlers without the checks.
        account._record("MoneyDeposited" if kind == "deposit" else "MoneyWithdrawn",
                        {"amount": amount, "description": "", "newBalance": 0}, occurred_at=when)
        if flush or i == len(ops) - 1:
            repo.save(account)
        if i == seal_after:
            lake.seal()
    rows = [dict(r, amount=json.loads(r["data"]).get("amount", json.loads(r["data"]).get("initialDeposit")))
            for r in lake.events(aggregate_id).iter_rows(named=True)]
    recorded = sorted({r["recorded_at"] for r in rows})
    for hours, k in picks:
        as_of = T0 + timedelta(hours=hours)
        known_at = recorded[k % len(recorded)] if k % 3 else None
        expected = naive_balance(rows, as_of, known_at)
        with_snapshots = load(lake, BankAccount, aggregate_id, as_of=as_of, known_at=known_at)
        without = load(lake, BankAccount, aggregate_id, as_of=as_of, known_at=known_at, use_snapshots=False)
        got = [None if a is None else a.balance for a in (with_snapshots, without)]
        assert got == [expected, expected]
        if with_snapshots is not None:
            assert with_snapshots == without
    assert load(lake, BankAccount, aggregate_id) == load(lake, BankAccount, aggregate_id, use_snapshots=False)


def test_snapshot_state_is_what_the_fold_gives(empty_lake: Lake) -> None:
    repo = Repository(empty_lake, BankAccount, snapshot_every=2)
    account = BankAccount("acc-1")
    account.open_account(Decimal("10.10"), "Ada")
    account.deposit(Decimal("0.05"), "x")
    repo.save(account)
    state = empty_lake.snapshots.hot.con.execute("SELECT state FROM snapshots").fetchone()[0]
    assert decode_state(state) == empty_lake.aggregate(BankAccount, "acc-1").state()
    assert decode_state(state)["balance"] == Decimal("10.15")


def _deposit_with_retries(path: str, times: int) -> int:
    """Worker: load, deposit 1, save; on a conflict reload and retry. Returns how many conflicts it saw."""
    conflicts = 0
    with Lake.open(path, durability="normal") as lake:
        repo = Repository(lake, BankAccount, snapshot_every=5)
        for _ in range(times):
            while True:
                account = repo.get("acc-1")
                assert account is not None
                account.deposit(1, "worker")
                try:
                    repo.save(account)
                    break
                except ConcurrencyError:
                    conflicts += 1
    return conflicts


def test_processes_saving_one_aggregate_lose_no_deposit(lake_path: Path) -> None:
    import multiprocessing

    with Lake.open(lake_path) as lake:
        new_account(lake)
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        results = [pool.apply_async(_deposit_with_retries, (str(lake_path), 10)) for _ in range(2)]
        [r.get(timeout=120) for r in results]
    with Lake.open(lake_path) as lake:
        assert lake.current_version("acc-1") == 21
        assert lake.events("acc-1")["aggregate_version"].to_list() == list(range(1, 22))
        assert lake.aggregate(BankAccount, "acc-1").balance == 120
        assert load(lake, BankAccount, "acc-1") == load(lake, BankAccount, "acc-1", use_snapshots=False)
        assert lake.snapshots.versions("acc-1").height > 0


def test_aggregate_history_shows_the_state_after_each_event(empty_lake: Lake) -> None:
    append(empty_lake, "acc-1", opened_at(0, 100), deposited(10, 20.25), deposited(20, 0.5))
    append(empty_lake, "acc-1", deposited(5, 1000))  # back-dated, recorded last
    trace = empty_lake.aggregate_history(BankAccount, "acc-1")
    assert trace.columns == ["aggregate_version", "position", "event_type", "occurred_at", "recorded_at",
                             "balance", "status", "account_holder"]
    assert trace["balance"].to_list() == [Decimal("100"), Decimal("120.25"), Decimal("120.75"), Decimal("1120.75")]
    assert trace["status"].to_list() == ["active"] * 4
    past = empty_lake.aggregate_history(BankAccount, "acc-1", as_of=at(12))
    assert past["aggregate_version"].to_list() == [1, 2, 4]
    assert past["balance"][-1] == empty_lake.aggregate(BankAccount, "acc-1", as_of=at(12)).balance
    before = empty_lake.aggregate_history(BankAccount, "acc-1", as_of=at(-1))
    assert before.height == 0 and before.columns == trace.columns


class Ticket(Aggregate):
    """A class whose handler adds a state field that ``__init__`` does not set."""

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status = "open"

    def close(self, by: str) -> None:
        self._record("TicketClosed", {"by": by})

    @when("TicketClosed")
    def _closed(self, event: DomainEvent) -> None:
        self.status = "closed"
        self.closed_by = event.data["by"]


def test_snapshots_restore_fields_that_handlers_add(empty_lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repository(empty_lake, Ticket, snapshot_every=1)
    ticket = Ticket("t-1")
    ticket.close("ada")
    repo.save(ticket)
    calls = spy_from_versions(empty_lake, monkeypatch)
    loaded = empty_lake.aggregate(Ticket, "t-1")
    assert calls == [1]  # from the snapshot
    assert loaded == load(empty_lake, Ticket, "t-1", use_snapshots=False)
    assert loaded.state() == {"status": "closed", "closed_by": "ada"}


def test_a_subscriber_can_ask_for_some_event_types(empty_lake: Lake) -> None:
    seen: list[list[str]] = []
    empty_lake.subscribe(lambda events: seen.append(events["event_type"].to_list()), types=["MoneyWithdrawn"])
    account = new_account(empty_lake)
    account.deposit(5, "a")
    account.withdraw(3, "b")
    Repository(empty_lake, BankAccount).save(account)
    assert seen == [["MoneyWithdrawn"]]
    with pytest.raises(InvalidArgumentError, match="types must be an event type or a list of them"):
        empty_lake.subscribe(print, types=[1])  # type: ignore[list-item]


def test_known_at_a_watermark_is_the_lake_exactly_at_that_position(empty_lake: Lake) -> None:
    repo = Repository(empty_lake, BankAccount, snapshot_every=1)
    account = new_account(empty_lake)
    account.deposit(5, "a")
    repo.save(account)
    mark = empty_lake.watermark()
    account.deposit(7, "b")
    repo.save(account)
    assert empty_lake.aggregate(BankAccount, "acc-1", known_at=mark).balance == 105
    assert empty_lake.aggregate(BankAccount, "acc-1").balance == 112
    assert empty_lake.aggregate_history(BankAccount, "acc-1", known_at=mark)["aggregate_version"].to_list() == [1, 2]
    same_time = type(mark)(mark.position - 1, mark.recorded_at)  # a position inside what that time knew
    assert empty_lake.aggregate(BankAccount, "acc-1", known_at=same_time).balance == 100
    assert load(empty_lake, BankAccount, "acc-1", known_at=same_time, use_snapshots=False).balance == 100


def test_a_snapshots_table_from_before_max_position_is_replaced(empty_lake: Lake) -> None:
    with empty_lake._store.hot.write() as con:
        con.execute("CREATE TABLE snapshots (aggregate_id TEXT, fingerprint TEXT, aggregate_version INTEGER, "
                    "aggregate_type TEXT, max_occurred_at INTEGER, max_recorded_at INTEGER, state TEXT, "
                    "taken_at INTEGER)")
        con.execute("INSERT INTO snapshots VALUES ('acc-1', 'x', 1, 'BankAccount', 0, 0, '{}', 0)")
    repo = Repository(empty_lake, BankAccount, snapshot_every=1)
    new_account(empty_lake)
    assert repo.get("acc-1").balance == 100
    assert empty_lake.snapshots.versions("acc-1")["aggregate_version"].to_list() == [1]
