"""The Aggregate base class and the two example domains, without a lake."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from es_analytics import Aggregate, DomainError, DomainEvent, InvalidArgumentError, when
from es_analytics.aggregates import UnknownEventWarning, decode_state, encode_state
from es_analytics.errors import UnknownEventTypeError
from es_analytics.examples.bank import BankAccount
from es_analytics.examples.users import User

T = datetime(2024, 3, 1, 9, tzinfo=timezone.utc)


def stored(event_type: str, data: dict[str, Any], version: int) -> DomainEvent:
    return DomainEvent(event_type, data, version, T, T)


def opened(balance: Any = 100) -> BankAccount:
    account = BankAccount("acc-1")
    account.open_account(balance, "Ada Almeida")
    return account


# -- the bank account's rules ------------------------------------------------------------------
def test_open_deposit_withdraw_close_records_the_seed_events() -> None:
    account = opened(100)
    account.deposit(50, "Salary")
    account.withdraw(150, "Rent")
    account.close_account("Customer request")
    events = account.pending_events
    assert [e.event_type for e in events] == ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn", "AccountClosed"]
    assert json.loads(events[0].data_json) == {"accountId": "acc-1", "initialDeposit": 100,
                                               "accountHolder": "Ada Almeida"}
    assert json.loads(events[1].data_json) == {"amount": 50, "description": "Salary", "newBalance": 150}
    assert json.loads(events[2].data_json) == {"amount": 150, "description": "Rent", "newBalance": 0}
    closed = json.loads(events[3].data_json)
    assert closed["reason"] == "Customer request"
    assert datetime.fromisoformat(closed["closedAt"]) == events[3].occurred_at
    assert (account.balance, account.status, account.version) == (0, "closed", 4)


def test_a_new_account_is_pending_and_zero_initial_deposit_is_allowed() -> None:
    account = BankAccount("acc-1")
    assert (account.status, account.balance, account.account_holder, account.version) == ("pending", 0, None, 0)
    account.open_account(0, "Ada Almeida")
    assert (account.status, account.balance, account.account_holder) == ("active", 0, "Ada Almeida")


@pytest.mark.parametrize(
    ("setup", "command", "message"),
    [
        ("opened", lambda a: a.open_account(10, "Again"), "Account already opened"),
        ("new", lambda a: a.open_account(-1, "Ada"), "Initial deposit must be positive"),
        ("new", lambda a: a.open_account(10, "  "), "Account holder name is required"),
        ("new", lambda a: a.deposit(10, "x"), "Account is pending, cannot perform operation"),
        ("opened", lambda a: a.deposit(0, "x"), "Deposit amount must be positive"),
        ("opened", lambda a: a.deposit(-5, "x"), "Deposit amount must be positive"),
        ("new", lambda a: a.withdraw(10, "x"), "Account is pending, cannot perform operation"),
        ("opened", lambda a: a.withdraw(0, "x"), "Withdrawal amount must be positive"),
        ("opened", lambda a: a.withdraw(Decimal("100.01"), "x"), "Insufficient funds"),
        ("new", lambda a: a.close_account("x"), "Account is pending, cannot perform operation"),
        ("opened", lambda a: a.close_account("x"), "Cannot close account with non-zero balance"),
        ("closed", lambda a: a.close_account("x"), "Account is closed, cannot perform operation"),
        ("closed", lambda a: a.deposit(1, "x"), "Account is closed, cannot perform operation"),
        ("closed", lambda a: a.withdraw(1, "x"), "Account is closed, cannot perform operation"),
    ],
)
def test_each_rule_raises_domain_error_and_records_nothing(setup: str, command: Any, message: str) -> None:
    account = BankAccount("acc-1")
    if setup in ("opened", "closed"):
        account.open_account(100, "Ada Almeida")
    if setup == "closed":
        account.withdraw(100, "Empty")
        account.close_account("Done")
    before = (account.version, account.balance, account.status, len(account.pending_events))
    with pytest.raises(DomainError, match=f"^{message}$"):
        command(account)
    assert (account.version, account.balance, account.status, len(account.pending_events)) == before


@pytest.mark.parametrize("bad", ["ten", True, None, float("nan"), float("inf"), [1]])
def test_amounts_that_are_not_numbers_are_invalid_arguments(bad: Any) -> None:
    account = opened()
    with pytest.raises(InvalidArgumentError, match="amount must be a"):
        account.deposit(bad, "x")
    assert account.version == 1


def test_withdrawing_the_whole_balance_is_allowed_and_amounts_are_exact() -> None:
    account = opened(Decimal("0.30"))
    account.deposit(0.1, "x")
    account.deposit("0.2", "y")
    assert account.balance == Decimal("0.6")
    account.withdraw(Decimal("0.6"), "all")
    assert account.balance == 0


def test_balance_comes_from_amounts_not_the_stored_new_balance() -> None:
    events = [
        stored("AccountOpened", {"accountId": "acc-1", "initialDeposit": 100, "accountHolder": "Ada"}, 1),
        stored("MoneyDeposited", {"amount": 20.5, "description": "late", "newBalance": 999}, 2),
        stored("MoneyWithdrawn", {"amount": 10, "description": "x", "newBalance": -1}, 3),
    ]
    account = BankAccount.replay("acc-1", events)
    assert account.balance == Decimal("110.5")
    assert (account.version, account.saved_version, account.pending_events) == (3, 3, ())


def test_replaying_recorded_events_gives_the_same_state() -> None:
    account = opened(75)
    account.deposit(25, "a")
    account.withdraw(40, "b")
    replayed = BankAccount.replay("acc-1", account.uncommitted_as_recorded())
    assert replayed == account
    assert replayed.state() == {"balance": Decimal(60), "status": "active", "account_holder": "Ada Almeida"}


def test_mark_saved_clears_pending_and_sets_the_saved_version() -> None:
    account = opened()
    account.deposit(1, "x")
    account.mark_saved(2)
    assert (account.pending_events, account.saved_version, account.version) == ((), 2, 2)


# -- users -----------------------------------------------------------------------------------
def test_user_register_and_suspend() -> None:
    user = User("user-1")
    user.register("ada@example.org", "Ada Almeida", newsletter=True)
    user.suspend("Chargeback dispute", "admin-2")
    registered, suspended = user.pending_events
    assert registered.schema_version == 3 and suspended.schema_version == 1
    assert json.loads(registered.data_json) == {
        "userId": "user-1", "profile": {"email": "ada@example.org", "name": "Ada Almeida"},
        "preferences": {"newsletter": True},
    }
    assert json.loads(suspended.data_json) == {"reason": "Chargeback dispute", "suspendedBy": "admin-2"}
    state = user.state()
    assert (state.pop("registered_at"), state.pop("suspended_at")) == (registered.occurred_at, suspended.occurred_at)
    assert state == {"email": "ada@example.org", "name": "Ada Almeida", "newsletter": True,
                     "status": "suspended", "suspension_reason": "Chargeback dispute"}


@pytest.mark.parametrize(
    ("registered", "command", "message"),
    [
        (True, lambda u: u.register("b@example.org", "B"), "User already registered"),
        (False, lambda u: u.register("not-an-email", "B"), "Invalid email address"),
        (False, lambda u: u.register("b@example.org", " "), "Name is required"),
        (False, lambda u: u.suspend("x", "admin"), "User is not registered"),
        (True, lambda u: u.suspend(" ", "admin"), "A reason is required"),
    ],
)
def test_user_rules(registered: bool, command: Any, message: str) -> None:
    user = User("user-1")
    if registered:
        user.register("a@example.org", "A")
    with pytest.raises(DomainError, match=f"^{message}$"):
        command(user)


def test_suspending_twice_is_refused() -> None:
    user = User("user-1")
    user.register("a@example.org", "A")
    user.suspend("x", "admin")
    with pytest.raises(DomainError, match="^User is already suspended$"):
        user.suspend("y", "admin")


# -- the base class ----------------------------------------------------------------------------
class Counter(Aggregate):
    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.count = 0

    def increment(self, by: int) -> None:
        self._record("Incremented", {"by": by})

    @when("Incremented")
    def _incremented(self, event: DomainEvent) -> None:
        self.count += event.data["by"]


class LenientCounter(Counter):
    unknown_events = "warn"


def test_unknown_event_types_are_an_error_by_default() -> None:
    counter = Counter("c-1")
    with pytest.raises(UnknownEventTypeError, match="Counter has no @when handler for 'Reset'.*version 1.*"
                                                    "handled types: Incremented") as info:
        counter.apply(stored("Reset", {}, 1))
    assert (info.value.event_type, info.value.aggregate_class) == ("Reset", "Counter")


def test_unknown_event_types_can_be_downgraded_to_a_warning() -> None:
    events = [stored("Incremented", {"by": 2}, 1), stored("Reset", {}, 2), stored("Incremented", {"by": 3}, 3)]
    with pytest.warns(UnknownEventWarning, match="'Reset'"):
        counter = LenientCounter.replay("c-1", events)
    assert (counter.count, counter.version) == (5, 3)


def test_handlers_are_inherited_and_the_type_defaults_to_the_class_name() -> None:
    assert LenientCounter.handled_event_types() == ("Incremented",)
    assert (Counter.aggregate_type, LenientCounter.aggregate_type) == ("Counter", "LenientCounter")


def test_a_bad_aggregate_type_or_unknown_events_choice_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="aggregate_type must be an identifier"):
        type("Bad", (Aggregate,), {"aggregate_type": "no spaces please"})
    with pytest.raises(InvalidArgumentError, match="unknown_events must be 'error' or 'warn', got 'ignore'"):
        type("Bad", (Aggregate,), {"unknown_events": "ignore"})
    with pytest.raises(InvalidArgumentError, match="event_type must not be only white space"):
        when("   ")
    assert when("Send Fine")  # a real activity name is an event type


def test_two_handlers_for_one_event_type_in_one_class_are_refused() -> None:
    def twice() -> type:
        class Twice(Aggregate):
            @when("Happened")
            def _first(self, event: DomainEvent) -> None: ...

            @when("Happened")
            def _second(self, event: DomainEvent) -> None: ...

        return Twice

    with pytest.raises(InvalidArgumentError, match="Twice has two @when\\('Happened'\\) handlers: _first and _second"):
        twice()


def test_from_state_restores_and_checks_the_fields() -> None:
    counter = Counter.from_state("c-1", 7, {"count": 12})
    assert (counter.count, counter.version, counter.saved_version) == (12, 7, 7)
    with pytest.raises(InvalidArgumentError, match=r"lacks the fields \['count'\] \(got \['total'\]\)"):
        Counter.from_state("c-1", 7, {"total": 12})
    with pytest.raises(InvalidArgumentError, match=r"holds fields that are not state: \['version'\]"):
        Counter.from_state("c-1", 7, {"count": 1, "version": 12})
    later = Counter.from_state("c-1", 7, {"count": 1, "note": "set by a handler"})
    assert later.state() == {"count": 1, "note": "set by a handler"}


def test_fingerprint_is_stable_and_changes_with_class_version_and_handler_code() -> None:
    assert Counter.fingerprint() == Counter.fingerprint()

    class Other(Aggregate):  # same shape, other handler code
        def __init__(self, aggregate_id: str) -> None:
            super().__init__(aggregate_id)
            self.count = 0

        @when("Incremented")
        def _incremented(self, event: DomainEvent) -> None:
            self.count += 2 * event.data["by"]

    bumped = type("Counter", (Counter,), {"class_version": 2, "__qualname__": Counter.__qualname__,
                                          "__module__": Counter.__module__})
    assert len({Counter.fingerprint(), Other.fingerprint(), bumped.fingerprint()}) == 3


def test_repr_and_html_show_the_state_escaped() -> None:
    account = BankAccount("acc-<1>")
    account.open_account(5, "<b>Ada</b>")
    assert repr(account) == ("BankAccount('acc-<1>', version=1, pending=1, balance=Decimal('5'), status='active', "
                             "account_holder='<b>Ada</b>')")
    page = account._repr_html_()
    assert "&lt;b&gt;Ada&lt;/b&gt;" in page and "<b>Ada" not in page
    assert "acc-&lt;1&gt;" in page and "version 1" in page and "1 pending" in page


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
state_values = json_values | st.decimals(allow_nan=False, allow_infinity=False) | st.datetimes(
    timezones=st.just(timezone.utc))


@settings(deadline=None)  # timings vary on a loaded machine; the property is what counts
@given(st.dictionaries(st.text(max_size=8), state_values, max_size=6))
@example({"x": {"$decimal": "1"}, "y": ({"$dict": 1},)})
def test_state_round_trips_through_snapshot_json(state: dict[str, Any]) -> None:
    back = decode_state(encode_state(state))
    assert back == _listed(state)


def _listed(value: Any) -> Any:
    """Tuples come back as lists (JSON has one sequence type)."""
    if isinstance(value, dict):
        return {k: _listed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_listed(v) for v in value]
    return value


def test_state_that_json_cannot_hold_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="of type set cannot be stored in a snapshot"):
        encode_state({"tags": {1, 2}})


def test_commands_take_a_business_time_for_back_dated_corrections() -> None:
    account = BankAccount("acc-1")
    account.open_account(10, "Ada", occurred_at=T)
    account.deposit(5, "missed deposit", occurred_at=T.replace(day=2))
    account.withdraw(15, "empty", occurred_at=T.replace(day=3))
    account.close_account("done", occurred_at=T.replace(day=4))
    assert [e.occurred_at.day for e in account.pending_events] == [1, 2, 3, 4]
    assert json.loads(account.pending_events[-1].data_json)["closedAt"] == "2024-03-04T09:00:00.000000Z"
    with pytest.raises(InvalidArgumentError, match="occurred_at must be timezone-aware"):
        BankAccount("acc-2").open_account(1, "Bo", occurred_at=datetime(2024, 1, 1))
    empty = opened(0)
    with pytest.raises(InvalidArgumentError, match="occurred_at must be timezone-aware"):
        empty.close_account("naive", occurred_at=datetime(2024, 1, 1))
    assert (empty.status, empty.version) == ("active", 1)
