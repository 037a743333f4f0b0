"""The ``eventsourcing`` library's sample application run end to end on a lake, then analysed with es_analytics."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from functools import singledispatchmethod
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import pytest
from eventsourcing.application import AggregateNotFoundError, ProcessingEvent
from eventsourcing.domain import Aggregate as LibraryAggregate
from eventsourcing.domain import event
from eventsourcing.persistence import JSONTranscoder
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System
from eventsourcing.tests import application as sample
from eventsourcing.tests import domain

from es_analytics import Lake
from es_analytics.aggregates import Aggregate, DomainEvent, when

DOMAIN = "eventsourcing.tests.domain:BankAccount"
SETTINGS = ("PERSISTENCE_MODULE", "LAKE_PATH")


class TestLakeExampleApplication(sample.ExampleApplicationTestCase):
    """The library's own example-application test, unchanged, with the lake selected by environment."""

    expected_factory_topic = "es_analytics.eventsourcing.factory:LakeFactory"

    def setUp(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="es-lake-")
        self._saved = {key: os.environ.get(key) for key in SETTINGS}
        os.environ["PERSISTENCE_MODULE"] = "es_analytics.eventsourcing"
        os.environ["LAKE_PATH"] = self._folder.name
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._folder.cleanup()


class BankAccount(Aggregate):
    """The library sample's bank account as es_analytics rebuilds it from the lake (payloads as transcoded)."""

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.full_name: str | None = None
        self.balance = Decimal("0.00")
        self.overdraft_limit = Decimal("0.00")
        self.is_closed = False

    @when(f"{DOMAIN}.Opened")
    def _opened(self, event: DomainEvent) -> None:
        self.full_name = event.data["full_name"]

    @when(f"{DOMAIN}.TransactionAppended")
    def _transaction_appended(self, event: DomainEvent) -> None:
        self.balance += Decimal(event.data["amount"]["_data_"])

    @when(f"{DOMAIN}.OverdraftLimitSet")
    def _overdraft_limit_set(self, event: DomainEvent) -> None:
        self.overdraft_limit = Decimal(event.data["overdraft_limit"]["_data_"])

    @when(f"{DOMAIN}.Closed")
    def _closed(self, event: DomainEvent) -> None:
        self.is_closed = True


@pytest.fixture
def bank(tmp_path: Path) -> Iterator[tuple[sample.BankAccounts, Path, list[UUID]]]:
    """The sample application on a lake, with three accounts and a history of transactions."""
    path = tmp_path / "bank-lake"
    app = sample.BankAccounts(env={
        "PERSISTENCE_MODULE": "es_analytics.eventsourcing", "LAKE_PATH": str(path), "IS_SNAPSHOTTING_ENABLED": "y",
    })
    ids = [app.open_account(name, f"{name.lower()}@example.com") for name in ("Alice", "Bob", "Chen")]
    for step in range(1, 13):
        account_id = ids[step % 3]
        app.credit_account(account_id, Decimal(f"{step * 7}.25"))
        if step % 4 == 0:
            app.credit_account(account_id, Decimal("-5.00"))
    account = app.get_account(ids[2])
    account.set_overdraft_limit(Decimal("100.00"))
    app.save(account)
    app.take_snapshot(ids[0])
    account = app.get_account(ids[1])
    account.close()
    app.save(account)
    yield app, path, ids
    app.close()


def test_the_lake_rebuilds_every_version_the_application_does(bank: tuple[sample.BankAccounts, Path, list[UUID]]) -> None:
    app, path, ids = bank
    with Lake.open(path) as lake:
        for account_id in ids:
            latest: domain.BankAccount = app.repository.get(account_id)
            assert lake.current_version(str(account_id)) == latest.version
            for version in range(1, latest.version + 1):
                expected: domain.BankAccount = app.repository.get(account_id, version=version)
                rebuilt = lake.aggregate(BankAccount, str(account_id), version=version)
                assert rebuilt is not None
                assert (rebuilt.version, rebuilt.balance, rebuilt.full_name, rebuilt.overdraft_limit, rebuilt.is_closed) == (
                    expected.version, expected.balance, expected.full_name, expected.overdraft_limit, expected.is_closed
                )


def test_business_time_is_the_domain_events_timestamp(bank: tuple[sample.BankAccounts, Path, list[UUID]]) -> None:
    app, path, ids = bank
    domain_events = list(app.events.get(ids[0]))
    with Lake.open(path) as lake:
        frame = lake.events(str(ids[0]))
        assert frame["occurred_at"].to_list() == [e.timestamp for e in domain_events]
        third = domain_events[2]
        as_of = lake.aggregate(BankAccount, str(ids[0]), as_of=third.timestamp)
        assert as_of is not None
        assert (as_of.version, as_of.balance) == (3, app.repository.get(ids[0], version=3).balance)


def test_sql_over_the_applications_events(bank: tuple[sample.BankAccounts, Path, list[UUID]]) -> None:
    app, path, ids = bank
    with Lake.open(path) as lake:
        balances = lake.sql(
            "SELECT aggregate_id, sum(CAST(data->'amount'->>'_data_' AS DECIMAL(18, 2))) AS balance, "
            "count(*) FILTER (WHERE event_type LIKE '%.TransactionAppended') AS transactions "
            "FROM events WHERE aggregate_type = 'BankAccount' GROUP BY aggregate_id ORDER BY aggregate_id"
        )
        expected = sorted((str(i), app.get_balance(i)) for i in ids)
        assert list(zip(balances["aggregate_id"], balances["balance"])) == expected
        assert balances["transactions"].sum() == 12 + 3
        log = lake.sql("SELECT position, aggregate_id, aggregate_version, event_type FROM events ORDER BY position")
    notifications = app.recorder.select_notifications(start=1, limit=1000)
    assert [(n.id, str(n.originator_id), n.originator_version, n.topic) for n in notifications] == log.rows()


def test_the_application_keeps_working_after_the_lake_seals(bank: tuple[sample.BankAccounts, Path, list[UUID]]) -> None:
    app, path, ids = bank
    before = app.get_balance(ids[0])
    with Lake.open(path) as lake:
        assert lake.seal()["sealed_events"] == lake.sql("SELECT count(*) AS n FROM events")["n"].item()
    app.credit_account(ids[0], Decimal("1.00"))
    assert app.get_balance(ids[0]) == before + Decimal("1.00")
    notifications = app.recorder.select_notifications(start=1, limit=1000)
    assert [n.id for n in notifications] == list(range(1, len(notifications) + 1))
    with Lake.open(path) as lake:
        rebuilt = lake.aggregate(BankAccount, str(ids[0]))
        assert rebuilt is not None and rebuilt.balance == before + Decimal("1.00")
        assert lake.check()["ok"]


# -- a process application: events and tracking records committed together ------------------------
class Counter(LibraryAggregate):
    """Counts an account's transactions (an aggregate of the follower application)."""

    def __init__(self, account_id: UUID) -> None:
        self.account_id = account_id
        self.count = 0

    @staticmethod
    def create_id(account_id: UUID) -> UUID:
        return uuid5(NAMESPACE_URL, f"/counters/{account_id}")

    @event("Incremented")
    def increment(self) -> None:
        self.count += 1


class TransactionCounters(ProcessApplication[UUID]):
    """Follows the bank: one counter per account, incremented by each transaction."""

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(sample.EmailAddressAsStr())  # to read the bank's events

    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        """Other events change nothing."""

    @policy.register
    def _(self, domain_event: domain.BankAccount.TransactionAppended, processing_event: ProcessingEvent[UUID]) -> None:
        try:
            counter: Counter = self.repository.get(Counter.create_id(domain_event.originator_id))
        except AggregateNotFoundError:
            counter = Counter(domain_event.originator_id)
        counter.increment()
        processing_event.collect_events(counter)


def test_a_process_application_on_lakes_tracks_what_it_processed(tmp_path: Path) -> None:
    env = {
        "PERSISTENCE_MODULE": "es_analytics.eventsourcing",
        "BANKACCOUNTS_LAKE_PATH": str(tmp_path / "bank"),
        "TRANSACTIONCOUNTERS_LAKE_PATH": str(tmp_path / "counters"),
    }
    system = System(pipes=[[sample.BankAccounts, TransactionCounters]])
    runner = SingleThreadedRunner[UUID](system, env=env)
    runner.start()
    bank = runner.get(sample.BankAccounts)
    ids = [bank.open_account(name, f"{name}@example.com") for name in ("ann", "ben")]
    for amount in range(1, 8):
        bank.credit_account(ids[amount % 2], Decimal(amount))
    runner.stop()

    runner = SingleThreadedRunner[UUID](system, env=env)  # a restart processes nothing twice …
    runner.start()
    runner.get(sample.BankAccounts).credit_account(ids[0], Decimal(100))  # … and carries on
    counters = runner.get(TransactionCounters)
    assert counters.recorder.max_tracking_id("BankAccounts") == 10
    assert [counters.repository.get(Counter.create_id(i)).count for i in ids] == [4, 4]
    runner.stop()
    with Lake.open(tmp_path / "counters") as lake:
        counts = lake.sql(
            "SELECT aggregate_type, count(*) AS events, count(DISTINCT aggregate_id) AS counters FROM events GROUP BY ALL"
        )
        assert counts.rows() == [("Counter", 2 + 8, 2)]
        assert lake.check()["ok"]
