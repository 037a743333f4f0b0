"""The seed's bank account: open, deposit, withdraw, close, with the seed's rules and messages.

Rule violations raise ``DomainError`` with the seed's messages, word for word (``Account is closed, cannot
perform operation``, ``Insufficient funds``, ...). Money is ``Decimal`` in the state (exact cents) and a
JSON number in the payloads. The balance is derived from the amounts (initial deposit plus deposits minus
withdrawals), never from the stored ``newBalance``, so a back-dated event gives the right past balance.

Examples
--------
>>> from decimal import Decimal
>>> account = BankAccount("acc-1")
>>> account.open_account(100, "Ada Almeida")
>>> account.deposit(Decimal("25.50"), "Salary")
>>> account.withdraw(500, "Rent")
Traceback (most recent call last):
...
es_analytics.errors.DomainError: Insufficient funds
>>> account.balance, account.status, account.version
(Decimal('125.5'), 'active', 2)
"""

from __future__ import annotations

import math
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from es_analytics import Aggregate, DomainError, DomainEvent, Event, InvalidArgumentError, when
from es_analytics.temporal import Const, Json, Last, Reducers, Sum

__all__ = ["BankAccount"]


def _money(value: Any, name: str) -> Decimal:
    """A command's amount as a Decimal (int, Decimal, float or numeric text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise InvalidArgumentError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    try:
        amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}") from None
    if not amount.is_finite():
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    return amount


def _stored(value: Any) -> Decimal:
    """An amount read back from a payload (JSON number) as an exact Decimal."""
    return Decimal(str(value))


def _json_number(amount: Decimal) -> int | float:
    return int(amount) if amount == amount.to_integral_value() else float(amount)


class BankAccount(Aggregate):
    """The seed's bank account. State: ``balance``, ``status``, ``account_holder`` (and ``version``).

    ``status`` is ``'pending'`` before ``open_account``, then ``'active'``, then ``'closed'``.
    """

    # The same state as the handlers below, as reducers: ``lake.states(BankAccount)`` rebuilds every
    # account in one DuckDB query (DECIMAL sums stay exact, like the Decimal balance).
    reducers = Reducers(
        balance=Sum({"AccountOpened": Json("initialDeposit", "DECIMAL(18,4)"),
                     "MoneyDeposited": Json("amount", "DECIMAL(18,4)"),
                     "MoneyWithdrawn": -Json("amount", "DECIMAL(18,4)")}),
        status=Last({"AccountOpened": Const("active"), "AccountClosed": Const("closed")}, default="pending"),
        account_holder=Last(Json("accountHolder"), on="AccountOpened"),
    )

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.balance = Decimal(0)
        self.status = "pending"
        self.account_holder: str | None = None

    # -- commands -----------------------------------------------------------------------------
    def open_account(self, initial_deposit: Any, account_holder: str, *, occurred_at: datetime | None = None) -> None:
        """Open the account with an initial deposit (0 is allowed).

        Every command takes an optional ``occurred_at`` (business time, default now), e.g. to record a
        correction back-dated to when the money really moved; the rules are checked against the state now.
        """
        amount = _money(initial_deposit, "initial_deposit")
        if self.status != "pending":
            raise DomainError("Account already opened")
        if amount < 0:
            raise DomainError("Initial deposit must be positive")
        if not isinstance(account_holder, str) or not account_holder.strip():
            raise DomainError("Account holder name is required")
        self._record("AccountOpened", {"accountId": self.aggregate_id, "initialDeposit": _json_number(amount),
                                       "accountHolder": account_holder}, occurred_at=occurred_at)

    def deposit(self, amount: Any, description: str = "", *, occurred_at: datetime | None = None) -> None:
        """Deposit a positive amount into an active account."""
        value = _money(amount, "amount")
        self._validate_active_account()
        if value <= 0:
            raise DomainError("Deposit amount must be positive")
        self._record("MoneyDeposited", {"amount": _json_number(value), "description": description,
                                        "newBalance": _json_number(self.balance + value)}, occurred_at=occurred_at)

    def withdraw(self, amount: Any, description: str = "", *, occurred_at: datetime | None = None) -> None:
        """Withdraw a positive amount, at most the balance, from an active account."""
        value = _money(amount, "amount")
        self._validate_active_account()
        if value <= 0:
            raise DomainError("Withdrawal amount must be positive")
        if value > self.balance:
            raise DomainError("Insufficient funds")
        self._record("MoneyWithdrawn", {"amount": _json_number(value), "description": description,
                                        "newBalance": _json_number(self.balance - value)}, occurred_at=occurred_at)

    def close_account(self, reason: str, *, occurred_at: datetime | None = None) -> None:
        """Close an active account whose balance is zero."""
        self._validate_active_account()
        if self.balance != 0:
            raise DomainError("Cannot close account with non-zero balance")
        when = Event("AccountClosed", {}, occurred_at=occurred_at).occurred_at  # validated, UTC, default now
        assert when is not None
        self._record("AccountClosed", {"reason": reason, "closedAt": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
                     occurred_at=when)

    def _validate_active_account(self) -> None:
        """The seed's ``validateActiveAccount``: commands other than opening need an active account."""
        if self.status != "active":
            raise DomainError(f"Account is {self.status}, cannot perform operation")

    # -- handlers -----------------------------------------------------------------------------
    @when("AccountOpened")
    def _opened(self, event: DomainEvent) -> None:
        self.balance = _stored(event.data["initialDeposit"])
        self.account_holder = event.data["accountHolder"]
        self.status = "active"

    @when("MoneyDeposited")
    def _deposited(self, event: DomainEvent) -> None:
        self.balance += _stored(event.data["amount"])

    @when("MoneyWithdrawn")
    def _withdrawn(self, event: DomainEvent) -> None:
        self.balance -= _stored(event.data["amount"])

    @when("AccountClosed")
    def _closed(self, event: DomainEvent) -> None:
        self.status = "closed"
from es_analytics.examples.bank_projections import account_summary, account_transactions  # noqa: E402,F401
