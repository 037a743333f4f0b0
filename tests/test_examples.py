"""The seed's scenarios end to end through a lake, and the example domains over the sample data."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from es_analytics import ConcurrencyError, DomainError, Lake, Repository
from es_analytics.examples.bank import BankAccount
from es_analytics.examples.users import User
from es_analytics.repository import load
from es_analytics.sample import generate

START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def test_the_seed_bank_scenario(empty_lake: Lake) -> None:
    accounts = Repository(empty_lake, BankAccount)
    account = BankAccount("acc-42")
    account.open_account(1000, "John Doe")
    account.deposit(500, "Salary")
    account.withdraw(200, "Groceries")
    assert accounts.save(account) == 3
    with pytest.raises(DomainError, match="^Insufficient funds$"):
        account.withdraw(2000, "Car")
    assert accounts.save(account) == 3  # the refused command left nothing to save

    loaded = accounts.get("acc-42")
    assert (loaded.balance, loaded.status, loaded.account_holder, loaded.version) == (1300, "active", "John Doe", 3)
    stored = empty_lake.events("acc-42")
    assert stored["event_type"].to_list() == ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"]
    assert [json.loads(d).get("newBalance") for d in stored["data"]] == [None, 1500, 1300]
    assert set(stored["aggregate_type"]) == {"BankAccount"}

    with pytest.raises(DomainError, match="^Cannot close account with non-zero balance$"):
        loaded.close_account("Moving")
    loaded.withdraw(1300, "Transfer out")
    loaded.close_account("Moving")
    assert accounts.save(loaded) == 5
    closed = accounts.get("acc-42")
    assert (closed.status, closed.balance) == ("closed", 0)
    with pytest.raises(DomainError, match="^Account is closed, cannot perform operation$"):
        closed.deposit(1, "x")

    stale = accounts.get("acc-42", version=3)
    assert stale.balance == 1300
    duplicate = BankAccount("acc-42")  # a new account with a taken id expects an empty stream
    duplicate.open_account(1, "Someone Else")
    with pytest.raises(ConcurrencyError, match=r"^Concurrency conflict: expected version 0, but current version is 5 \(stream 'acc-42'\)"):
        accounts.save(duplicate)
    assert empty_lake.current_version("acc-42") == 5


def test_the_seed_user_scenario(empty_lake: Lake) -> None:
    users = Repository(empty_lake, User)
    user = User("user-7")
    user.register("greta@example.org", "Greta Haas")
    users.save(user)
    loaded = users.get("user-7")
    loaded.suspend("Terms of service violation", "admin-1")
    users.save(loaded)
    final = users.get("user-7")
    assert (final.status, final.email, final.suspension_reason, final.version) == (
        "suspended", "greta@example.org", "Terms of service violation", 2)


@pytest.fixture(scope="module")
def sample_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake.open(tmp_path_factory.mktemp("sample") / "lake")
    generate(lake, events=3000, seed=11, start=START, days=120)
    yield lake
    lake.close()


def test_sample_accounts_fold_to_the_balance_the_generator_recorded(sample_lake: Lake) -> None:
    last = sample_lake.sql(
        "SELECT aggregate_id, arg_max(data, aggregate_version) AS data, max(aggregate_version) AS version "
        "FROM events WHERE aggregate_type = 'BankAccount' GROUP BY aggregate_id ORDER BY aggregate_id"
    )
    assert last.height > 20
    for aggregate_id, data, version in last.head(60).iter_rows():
        payload = json.loads(data)
        expected = payload.get("newBalance", payload.get("initialDeposit", 0))
        account = sample_lake.aggregate(BankAccount, aggregate_id)
        assert account.version == version
        assert account.balance == Decimal(str(expected)), aggregate_id


def test_sample_users_read_as_v3(sample_lake: Lake) -> None:
    stored = sample_lake.sql("SELECT DISTINCT schema_version FROM events WHERE event_type = 'UserRegistered'")
    assert sorted(stored["schema_version"]) == [1, 2, 3]
    registered = sample_lake.events(types="UserRegistered")
    assert set(registered["schema_version"]) == {3}
    suspended = set(sample_lake.events(types="UserSuspended")["aggregate_id"])
    for aggregate_id, data in registered.head(40).select("aggregate_id", "data").iter_rows():
        payload = json.loads(data)
        user = sample_lake.aggregate(User, aggregate_id)
        assert (user.email, user.name) == (payload["profile"]["email"], payload["profile"]["name"])
        assert user.email.endswith("@example.org")
        assert user.status == ("suspended" if aggregate_id in suspended else "active")


def test_snapshots_on_sample_accounts_change_no_state(sample_lake: Lake) -> None:
    ids = sample_lake.sql("SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = 'BankAccount' "
                          "ORDER BY aggregate_id LIMIT 25")["aggregate_id"].to_list()
    repo = Repository(sample_lake, BankAccount, snapshot_every=4)
    for aggregate_id in ids:
        assert repo.get(aggregate_id) == load(sample_lake, BankAccount, aggregate_id, use_snapshots=False)
    taken = pl.concat([sample_lake.snapshots.versions(i) for i in ids])
    assert taken.height > 0
    for aggregate_id in ids:
        assert sample_lake.aggregate(BankAccount, aggregate_id) == load(
            sample_lake, BankAccount, aggregate_id, use_snapshots=False)


def test_examples_use_public_names_only() -> None:
    for module in ("bank", "users"):
        source = (Path(__file__).parents[1] / "es_analytics" / "examples" / f"{module}.py").read_text()
        imports = [line for line in source.splitlines() if line.startswith(("from ", "import "))]
        internal = [line for line in imports if line.startswith("from es_analytics.") and " import " in line
                    and line.split()[1].split(".")[1].startswith("_")]
        assert internal == []


def test_forgetting_a_user_removes_the_snapshots_that_held_the_plaintext(empty_lake: Lake) -> None:
    users = Repository(empty_lake, User, snapshot_every=1)
    user = User("user-9")
    user.register("ada@example.org", "Ada Almeida")
    users.save(user)
    assert empty_lake.snapshots.versions("user-9").height == 1
    certificate = empty_lake.forget("user-9")
    assert certificate["snapshots_deleted"] == 1
    assert empty_lake.snapshots.versions("user-9").height == 0
    erased = users.get("user-9")
    assert erased.status == "active" and "ada@example.org" not in (erased.email, erased.name)
    assert b"ada@example.org" not in (empty_lake.path / "hot.sqlite").read_bytes()
