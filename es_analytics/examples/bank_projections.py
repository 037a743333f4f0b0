"""The seed's read models of the bank: ``account_summary`` and ``account_transactions``.

They compute what the seed's ``AccountProjection`` handlers compute, column by column, with two
deliberate differences: balances come from the amounts (not the stored ``newBalance``), so a back-dated
correction gives the right balances, and ``last_activity`` is the latest business time of the account's
events (the seed's is the time of the last event applied, which a back-dated correction would move
backwards). A stream without ``AccountOpened`` (e.g. ``as_of`` before the opening) shows as
``'pending'``, where the seed's updates would find no row.

``account_summary`` — one row per account, closed accounts included:

==================  ===========================================================================
account_id          the account's stream (``aggregate_id``)
account_holder      from ``AccountOpened`` (personal data: shown as readers may see it)
current_balance     initial deposit + deposits − withdrawals, from the amounts (DECIMAL, exact)
status              ``'pending'`` (no ``AccountOpened`` yet), ``'active'`` or ``'closed'``
total_deposits      initial deposit + every deposit
total_withdrawals   every withdrawal
transaction_count   deposits + withdrawals (the seed does not count the opening)
opened_at           ``occurred_at`` of ``AccountOpened``
last_activity       the latest ``occurred_at`` of any of the account's events (business time; a
                    back-dated correction recorded later does not move it backwards)
version             the account's last version
==================  ===========================================================================

``account_transactions`` — one row per money movement, ordered by ``position`` (the seed's
auto-increment ``id``): ``account_id, position, version, event_id, transaction_type`` (``'deposit'`` or
``'withdrawal'``), ``amount`` (positive), ``description``, ``balance_after`` (the running balance in
stream order, from the amounts, not the stored ``newBalance``), ``occurred_at`` (the seed's
``timestamp``), ``recorded_at``. As in the seed, the opening has a row (a ``'deposit'`` described as
``'Initial deposit'``) only when its initial deposit is positive. So an account's rows number
``transaction_count``, plus one for a positive initial deposit, and its last ``balance_after`` is
``current_balance``.

Examples
--------
>>> import tempfile
>>> from es_analytics import Lake
>>> from es_analytics.examples.bank import BankAccount
>>> with Lake.open(tempfile.mkdtemp()) as lake:
...     account = BankAccount("acc-1")
...     account.open_account(100, "Ada Almeida")
...     account.withdraw(30, "Rent")
...     _ = lake.append("acc-1", list(account.pending_events), expected_version=0, aggregate_type="BankAccount")
...     summary = lake.project(account_summary)
...     ledger = lake.project(account_transactions)
>>> summary.select("account_id", "current_balance", "transaction_count").rows()
[('acc-1', Decimal('70.0000'), 1)]
>>> ledger["balance_after"].to_list()
[Decimal('100.0000'), Decimal('70.0000')]
"""

from __future__ import annotations

from es_analytics.projections import EventProjection, Running, StateProjection
from es_analytics.temporal import Column, Const, Count, First, Json, Last, Max, Reducers, Sum

__all__ = ["account_summary", "account_transactions"]

_MONEY = "DECIMAL(18,4)"
_INITIAL = Json("initialDeposit", _MONEY)
_AMOUNT = Json("amount", _MONEY)
_MOVEMENTS = ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"]

account_summary = StateProjection(
    "account_summary",
    aggregate_type="BankAccount",
    key="account_id",
    fields=Reducers(
        account_holder=Last(Json("accountHolder"), on="AccountOpened"),
        current_balance=Sum({"AccountOpened": _INITIAL, "MoneyDeposited": _AMOUNT, "MoneyWithdrawn": -_AMOUNT}),
        status=Last({"AccountOpened": Const("active"), "AccountClosed": Const("closed")}, default="pending"),
        total_deposits=Sum({"AccountOpened": _INITIAL, "MoneyDeposited": _AMOUNT}),
        total_withdrawals=Sum(_AMOUNT, on="MoneyWithdrawn"),
        transaction_count=Count(on=["MoneyDeposited", "MoneyWithdrawn"]),
        opened_at=First(Column("occurred_at"), on="AccountOpened"),
        last_activity=Max(Column("occurred_at"), on=[*_MOVEMENTS, "AccountClosed"]),
    ),
    columns=["account_id", "account_holder", "current_balance", "status", "total_deposits", "total_withdrawals",
             "transaction_count", "opened_at", "last_activity", "version"],
    personal={"account_holder": "accountHolder"},
)
"""The seed's account summary: one row per account (see the module docstring for the columns)."""

account_transactions = EventProjection(
    "account_transactions",
    aggregate_type="BankAccount",
    key="account_id",
    event_types=_MOVEMENTS,
    where={"AccountOpened": _INITIAL > 0},
    columns={
        "version": Column("aggregate_version"),
        "event_id": Column("event_id"),
        "transaction_type": {"AccountOpened": Const("deposit"), "MoneyDeposited": Const("deposit"),
                 "MoneyWithdrawn": Const("withdrawal")},
        "amount": {"AccountOpened": _INITIAL, "MoneyDeposited": _AMOUNT, "MoneyWithdrawn": _AMOUNT},
        "description": {"AccountOpened": Const("Initial deposit"), "MoneyDeposited": Json("description"),
                        "MoneyWithdrawn": Json("description")},
        "balance_after": Running({"AccountOpened": _INITIAL, "MoneyDeposited": _AMOUNT, "MoneyWithdrawn": -_AMOUNT}),
        "occurred_at": Column("occurred_at"),
        "recorded_at": Column("recorded_at"),
    },
)
"""The seed's transactions table: one row per money movement with the balance after it."""
