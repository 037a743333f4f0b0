"""Hypothesis strategies: bitemporal event histories and (as_of, known_at) pairs.

A history is a list of commit batches. Each event has a ``recorded_at`` (commit order, never decreasing)
and an ``occurred_at`` that is on time, a little late (recorded hours after it occurred) or back-dated
(days before the stream's previous events), so "as of" and "as known at" really differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

from es_analytics import Lake
from es_analytics.events import EVENT_SCHEMA, encode_json

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
ONE_MICRO = timedelta(microseconds=1)


@dataclass(frozen=True)
class HistoryEvent:
    """One event of a generated history, before it is stored."""

    aggregate_id: str
    aggregate_version: int
    event_type: str
    data: dict[str, Any]
    occurred_at: datetime
    recorded_at: datetime


def _money(cents: int) -> float | int:
    value = Decimal(cents) / 100
    return int(value) if value == value.to_integral_value() else float(value)


@st.composite
def bank_histories(draw: st.DrawFn, *, max_accounts: int = 4, max_events: int = 30,
                   max_batches: int = 4) -> list[list[HistoryEvent]]:
    """Commit batches of BankAccount events with late and back-dated ones (every batch non-empty)."""
    ids = [f"acc-{i}" for i in range(draw(st.integers(1, max_accounts)))]
    count = draw(st.integers(1, max_events))
    cuts = sorted(draw(st.lists(st.integers(1, max(1, count - 1)), max_size=max_batches - 1, unique=True)))
    versions: dict[str, int] = {}
    last_occurred: dict[str, datetime] = {}
    clock = T0
    events: list[HistoryEvent] = []
    for _ in range(count):
        aggregate_id = draw(st.sampled_from(ids))
        version = versions.get(aggregate_id, 0) + 1
        clock += timedelta(minutes=draw(st.integers(0, 3 * 24 * 60)), microseconds=draw(st.integers(0, 999)))
        kind = draw(st.sampled_from(["on_time", "on_time", "late", "backdated", "midnight"]))
        if kind == "midnight":  # exactly on a checkpoint boundary
            occurred = clock.replace(hour=0, minute=0, second=0, microsecond=0)
        elif kind == "on_time":
            occurred = clock - timedelta(seconds=draw(st.integers(0, 60)))
        elif kind == "late":
            occurred = clock - timedelta(hours=draw(st.integers(1, 72)))
        else:
            before = last_occurred.get(aggregate_id, clock)
            occurred = before - timedelta(days=draw(st.integers(0, 20)), hours=draw(st.integers(0, 23)))
        event_type, data = _bank_event(draw, aggregate_id, version)
        events.append(HistoryEvent(aggregate_id, version, event_type, data, occurred, clock))
        versions[aggregate_id] = version
        last_occurred[aggregate_id] = max(occurred, last_occurred.get(aggregate_id, occurred))
    bounds = [0, *cuts, count]
    return [events[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def _bank_event(draw: st.DrawFn, aggregate_id: str, version: int) -> tuple[str, dict[str, Any]]:
    amount = _money(draw(st.integers(0, 500_000)))
    if version == 1:
        return "AccountOpened", {"accountId": aggregate_id, "initialDeposit": amount,
                                 "accountHolder": draw(st.sampled_from(["Ada", "Bruno", "Chen", "O'Neil"]))}
    event_type = draw(st.sampled_from(["MoneyDeposited", "MoneyDeposited", "MoneyWithdrawn", "AccountClosed"]))
    if event_type == "AccountClosed":
        return event_type, {"reason": "Customer request", "closedAt": "2024-01-01T00:00:00Z"}
    data: dict[str, Any] = {"amount": amount, "newBalance": 0}
    if draw(st.booleans()):
        data["description"] = draw(st.sampled_from(["Salary", "Rent", "ATM", ""]))
    return event_type, data


@st.composite
def time_pairs(draw: st.DrawFn, events: list[HistoryEvent]) -> tuple[datetime | None, datetime | None]:
    """An ``(as_of, known_at)`` pair near the history's own times (either may be None)."""
    occurred = sorted({e.occurred_at for e in events})
    recorded = sorted({e.recorded_at for e in events})

    def near(times: list[datetime]) -> datetime | None:
        choice = draw(st.sampled_from(["none", "exact", "before", "after", "between"]))
        if choice == "none":
            return None
        t = draw(st.sampled_from(times))
        if choice == "before":
            return t - ONE_MICRO
        if choice == "after":
            return t + ONE_MICRO
        if choice == "between":
            return t + timedelta(hours=draw(st.integers(1, 48)))
        return t

    return near(occurred), near(recorded)


def import_batch(lake: Lake, batch: list[HistoryEvent], *, aggregate_type: str = "BankAccount") -> None:
    """Store one batch straight into Parquet, keeping the history's recorded_at (the bulk-import path)."""
    table = pa.table({
        "event_id": [f"{e.aggregate_id}-v{e.aggregate_version}" for e in batch],
        "event_type": [e.event_type for e in batch],
        "schema_version": pa.array([1] * len(batch), pa.int32()),
        "aggregate_type": [aggregate_type] * len(batch),
        "aggregate_id": [e.aggregate_id for e in batch],
        "aggregate_version": pa.array([e.aggregate_version for e in batch], pa.int64()),
        "occurred_at": pa.array([e.occurred_at for e in batch], EVENT_SCHEMA.field("occurred_at").type),
        "recorded_at": pa.array([e.recorded_at for e in batch], EVENT_SCHEMA.field("recorded_at").type),
        "data": [encode_json(e.data, "data") for e in batch],
        "metadata": ["{}"] * len(batch),
    })
    lake._store.import_table(table, keep_recorded_at=True)
