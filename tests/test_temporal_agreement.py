"""Vectorised == checkpoints == fold == fold with snapshots == a plain reference replay, at random instants.

Random multi-account histories with late and back-dated events are committed in batches (straight into
Parquet with their own ``recorded_at``, and the last batch sometimes through the hot tier); snapshots
are taken between batches and a checkpoint set is built part-way, so later back-dated events must be
picked up by every path. For random ``(as_of, known_at)`` each path must equal the reference, which
replays ``lake.events()`` in plain Python following API.md: keep events with ``occurred_at <= as_of``
and ``recorded_at <= known_at``, apply them in version order.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_analytics import Event, Lake, Repository
from es_analytics.aggregates import Aggregate, DomainEvent, when
from es_analytics.examples.bank import BankAccount
from es_analytics.repository import load
from es_analytics.temporal import Column, Count, First, Json, Last, Max, Min, Reducers, checkpoints

from strategies import HistoryEvent, bank_histories, import_batch, time_pairs

MONEY = "DECIMAL(18,4)"
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Ledger(Aggregate):
    """A test aggregate over the bank's events that uses every reducer kind (and NULL payload fields)."""

    aggregate_type = "BankAccount"
    reducers = Reducers(
        deposits=Count(on="MoneyDeposited"),
        first_deposit=First(Json("amount", MONEY), on="MoneyDeposited"),
        largest_withdrawal=Max(Json("amount", MONEY), on="MoneyWithdrawn"),
        smallest_withdrawal=Min(Json("amount", MONEY), on="MoneyWithdrawn"),
        last_description=Last(Json("description"), on=["MoneyDeposited", "MoneyWithdrawn"]),
        opened_at=First(Column("occurred_at"), on="AccountOpened"),
        last_activity=Last(Column("occurred_at"), on=["AccountOpened", "MoneyDeposited", "MoneyWithdrawn",
                                                      "AccountClosed"]),
    )

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.deposits = 0
        self.first_deposit: Decimal | None = None
        self.largest_withdrawal: Decimal | None = None
        self.smallest_withdrawal: Decimal | None = None
        self.last_description: str | None = None
        self.opened_at: datetime | None = None
        self.last_activity: datetime | None = None

    @when("AccountOpened")
    def _opened(self, event: DomainEvent) -> None:
        self.opened_at = self.opened_at or event.occurred_at
        self.last_activity = event.occurred_at

    @when("MoneyDeposited")
    def _deposited(self, event: DomainEvent) -> None:
        self.deposits += 1
        if self.first_deposit is None:
            self.first_deposit = Decimal(str(event.data["amount"]))
        self.last_description = event.data.get("description")
        self.last_activity = event.occurred_at

    @when("MoneyWithdrawn")
    def _withdrawn(self, event: DomainEvent) -> None:
        amount = Decimal(str(event.data["amount"]))
        self.largest_withdrawal = amount if self.largest_withdrawal is None else max(amount, self.largest_withdrawal)
        self.smallest_withdrawal = amount if self.smallest_withdrawal is None else min(amount, self.smallest_withdrawal)
        self.last_description = event.data.get("description")
        self.last_activity = event.occurred_at

    @when("AccountClosed")
    def _closed(self, event: DomainEvent) -> None:
        self.last_activity = event.occurred_at


# -- the reference: a plain replay of the stored events ---------------------------------------
def _bank_step(state: dict[str, Any], event_type: str, data: dict[str, Any], occurred: datetime) -> None:
    if event_type == "AccountOpened":
        state.update(balance=Decimal(str(data["initialDeposit"])), status="active",
                     account_holder=data["accountHolder"])
    elif event_type == "MoneyDeposited":
        state["balance"] += Decimal(str(data["amount"]))
    elif event_type == "MoneyWithdrawn":
        state["balance"] -= Decimal(str(data["amount"]))
    else:
        state["status"] = "closed"


def _ledger_step(state: dict[str, Any], event_type: str, data: dict[str, Any], occurred: datetime) -> None:
    state["last_activity"] = occurred
    if event_type == "AccountOpened" and state["opened_at"] is None:
        state["opened_at"] = occurred
    if event_type in ("MoneyDeposited", "MoneyWithdrawn"):
        amount = Decimal(str(data["amount"]))
        state["last_description"] = data.get("description")
        if event_type == "MoneyDeposited":
            state["deposits"] += 1
            state["first_deposit"] = state["first_deposit"] if state["first_deposit"] is not None else amount
        else:
            low, high = state["smallest_withdrawal"], state["largest_withdrawal"]
            state["largest_withdrawal"] = amount if high is None else max(amount, high)
            state["smallest_withdrawal"] = amount if low is None else min(amount, low)


INITIAL = {
    BankAccount: lambda: {"balance": Decimal(0), "status": "pending", "account_holder": None},
    Ledger: lambda: {"deposits": 0, "first_deposit": None, "largest_withdrawal": None, "smallest_withdrawal": None,
                     "last_description": None, "opened_at": None, "last_activity": None},
}
STEP = {BankAccount: _bank_step, Ledger: _ledger_step}


def reference(lake: Lake, cls: type, as_of: datetime | None, known_at: datetime | None) -> list[dict[str, Any]]:
    rows = lake.events().sort("aggregate_id", "aggregate_version").iter_rows(named=True)
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if (as_of is not None and row["occurred_at"] > as_of) or (known_at is not None and row["recorded_at"] > known_at):
            continue
        state = out.setdefault(row["aggregate_id"], {"aggregate_id": row["aggregate_id"], "version": 0,
                                                     **INITIAL[cls]()})
        STEP[cls](state, row["event_type"], json.loads(row["data"]), row["occurred_at"])
        state["version"] = row["aggregate_version"]
    return [out[k] for k in sorted(out)]


# -- building the lake ------------------------------------------------------------------------
def build(lake: Lake, batches: list[list[HistoryEvent]], checkpoint_after: int, hot_last: bool, finally_: str) -> None:
    """Commit the batches; checkpoint after one of them; at the end extend only the inputs, or fold them in."""
    repo = Repository(lake, BankAccount, snapshot_every=1, keep_snapshots=50)
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        if last and hot_last and i > 0:
            for e in batch:
                lake.append(e.aggregate_id, [Event(e.event_type, e.data, occurred_at=e.occurred_at)],
                            expected_version=e.aggregate_version - 1, aggregate_type="BankAccount")
        else:
            import_batch(lake, batch)
        for aggregate_id in sorted({e.aggregate_id for e in batch}):
            repo.get(aggregate_id)  # takes a snapshot of the newest version
        if i == checkpoint_after:
            lake.checkpoint(BankAccount, every="day")
            lake.checkpoint(Ledger, every="day")
    for cls in (BankAccount, Ledger):
        if finally_ == "inputs":  # the newest events extracted, the checkpoints not yet updated
            checkpoints.refresh(lake, cls.reducers, "BankAccount", every="day", rebuild=False)
        elif finally_ == "merge":  # the newest events folded into the existing checkpoints
            lake.checkpoint(cls, every="day")


def check_all_paths(lake: Lake, cls: type, as_of: datetime | None, known_at: datetime | None) -> None:
    expected = reference(lake, cls, as_of, known_at)
    for method in ("scan", "checkpoint", "fold"):
        got = lake.states(cls, as_of=as_of, known_at=known_at, method=method)  # type: ignore[arg-type]
        assert got.columns == ["aggregate_id", "version", *INITIAL[cls]()], method
        assert got.to_dicts() == expected, (method, as_of, known_at)
    if cls is BankAccount:
        repo = Repository(lake, BankAccount, snapshot_every=1)
        for row in expected:
            for aggregate in (repo.get(row["aggregate_id"], as_of=as_of, known_at=known_at),
                              load(lake, BankAccount, row["aggregate_id"], as_of=as_of, known_at=known_at,
                                   use_snapshots=False)):
                assert aggregate is not None
                assert {"aggregate_id": aggregate.aggregate_id, "version": aggregate.version,
                        **aggregate.state()} == row


@SETTINGS
@given(data=st.data(), batches=bank_histories())
def test_every_path_equals_the_reference_replay(data: st.DataObject, batches: list[list[HistoryEvent]]) -> None:
    checkpoint_after = data.draw(st.integers(0, len(batches) - 1), label="checkpoint_after")
    hot_last = data.draw(st.booleans(), label="hot_last")
    finally_ = data.draw(st.sampled_from(["none", "inputs", "merge"]), label="finally")
    events = [e for batch in batches for e in batch]
    with tempfile.TemporaryDirectory() as folder, Lake.open(folder) as lake:
        build(lake, batches, checkpoint_after, hot_last, finally_)
        for _ in range(3):
            as_of, known_at = data.draw(time_pairs(events), label="as_of, known_at")
            check_all_paths(lake, BankAccount, as_of, known_at)
            check_all_paths(lake, Ledger, as_of, known_at)
