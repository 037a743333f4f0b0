"""The seed (``event-sourcing.txt``) replayed against es_analytics: one test per seed class.

Each test runs the seed's own example (its events, its commands, its errors, its rows) and asserts the
results the seed's JavaScript gives. docs/seed.md maps every seed piece to its es_analytics name.
"""

from __future__ import annotations

import pytest

from es_analytics import ConcurrencyError, DomainError, Event, Lake, Repository
from es_analytics.examples.bank import BankAccount


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
