"""The event processor: order per stream, checkpoints that survive restarts, holds, gaps, dead letters."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_analytics import Event, Lake
from es_analytics.errors import InvalidArgumentError
from es_analytics.processing import EventProcessor
from tests.strategies import bank_histories, import_batch


class Balances:
    """A read model: balance and applied versions per account; it fails loudly on out-of-order input."""

    def __init__(self, poison: str | None = None) -> None:
        self.balances: dict[str, Decimal] = {}
        self.versions: dict[str, list[int]] = {}
        self.poison = poison
        self.strict = True

    def __call__(self, event: dict[str, Any]) -> None:
        if event["event_id"] == self.poison:
            raise ValueError("cannot handle this one")
        seen = self.versions.setdefault(event["aggregate_id"], [])
        assert not self.strict or not seen or event["aggregate_version"] > seen[-1], "out of order"
        seen.append(event["aggregate_version"])
        data, kind = event["data"], event["event_type"]
        amount = Decimal(str(data.get("initialDeposit", data.get("amount", 0))))
        sign = {"AccountOpened": 1, "MoneyDeposited": 1, "MoneyWithdrawn": -1}.get(kind, 0)
        self.balances[event["aggregate_id"]] = self.balances.get(event["aggregate_id"], Decimal(0)) + sign * amount


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _fill(lake: Lake, history: list) -> pl.DataFrame:
    for batch in history:
        import_batch(lake, batch)
    return lake.events()


def test_poll_applies_in_order_and_resumes_from_the_checkpoint(bank_lake: Lake) -> None:
    model = Balances()
    with EventProcessor(bank_lake, "balances", model, batch_size=3) as processor:
        result = processor.poll()
        assert (result.received, result.applied, result.checkpoint) == (8, 8, 8)
        assert model.balances == {"acc-1": Decimal(120), "acc-2": Decimal(0), "acc-3": Decimal(500)}
    bank_lake.append("acc-3", [Event("MoneyDeposited", {"amount": 5, "description": "", "newBalance": 505})],
                     expected_version=1, aggregate_type="BankAccount")
    again = Balances()
    with EventProcessor(bank_lake, "balances", again) as processor:  # a restart: only the new event
        assert processor.checkpoint == 8
        assert processor.poll().applied == 1
        assert again.balances == {"acc-3": Decimal(5)}
        assert processor.applied_versions().filter(pl.col("aggregate_id") == "acc-3")["version"].item() == 2


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=bank_histories(max_accounts=4, max_events=25, max_batches=2), data=st.data())
def test_shuffled_duplicated_gapped_input_gives_the_ordered_read_model(
        tmp_path_factory: pytest.TempPathFactory, history: list, data: st.DataObject) -> None:
    with Lake.open(tmp_path_factory.mktemp("lake")) as lake:
        events = _fill(lake, history)
        ordered = Balances()
        with EventProcessor(lake, "ordered", ordered) as processor:
            processor.poll()
        rows = list(range(events.height))
        shuffled = data.draw(st.permutations(rows), label="order")
        repeats = data.draw(st.lists(st.sampled_from(rows), max_size=10), label="duplicates")
        cut = data.draw(st.integers(0, len(shuffled)), label="first delivery")
        messy = Balances()
        with EventProcessor(lake, "messy", messy, batch_size=data.draw(st.integers(1, 8))) as processor:
            first = events[[*shuffled[:cut], *repeats]]
            processor.deliver(first.drop("position") if data.draw(st.booleans()) else first)
            processor.deliver(events[shuffled[cut:]])  # the gaps are filled by the second delivery
            processor.deliver(events[repeats])
            assert processor.held().height == 0
            assert processor.dead_letters().height == 0
            assert set(processor.gaps()["resolution"]) <= {"filled"}
        assert messy.balances == ordered.balances
        assert messy.versions == ordered.versions


def test_failing_handler_leaves_the_event_in_dead_letters_and_processes_the_rest(bank_lake: Lake) -> None:
    poison = bank_lake.events("acc-1")["event_id"][1]
    model = Balances(poison=poison)
    with EventProcessor(bank_lake, "balances", model, retries=2) as processor:
        result = processor.poll()
        assert (result.applied, result.dead_lettered) == (7, 1)
        dead = processor.dead_letters()
        assert dead.select("event_id", "aggregate_id", "aggregate_version", "attempts").row(0) == (
            poison, "acc-1", 2, 3)
        assert dead["error"].item() == "ValueError: cannot handle this one"
        assert "Traceback" in dead["detail"].item()
        assert model.balances["acc-2"] == 0 and model.balances["acc-3"] == 500  # the rest went on
        assert processor.deliver(bank_lake.events("acc-1")).duplicates == 3  # a dead letter is not redone silently
        model.poison, model.strict = None, False  # a retried dead letter comes after its stream's later events
        assert processor.retry_dead_letters().applied == 1
        assert processor.dead_letters().height == 0
        assert model.balances["acc-1"] == 120


def test_a_gap_is_held_until_timeout_then_skipped(bank_lake: Lake) -> None:
    clock = FakeClock()
    model = Balances()
    events = bank_lake.events("acc-2")  # versions 1..4
    with EventProcessor(bank_lake, "gappy", model, hold_timeout=60, clock=clock) as processor:
        result = processor.deliver(events[[0, 2, 3]])  # version 2 is missing
        assert (result.applied, result.held) == (1, 2)
        held = processor.held()
        assert held["aggregate_version"].to_list() == [3, 4] and held["waiting_for"].to_list() == [2, 2]
        assert processor.gaps().select("kind", "after", "next", "missing", "resolution").row(0) == (
            "version", 1, 3, 1, "open")
        clock.now += 30
        assert processor.release_expired().released == 0
        clock.now += 31
        released = processor.release_expired()
        assert (released.released, released.applied) == (2, 2)
        assert model.versions["acc-2"] == [1, 3, 4]
        assert processor.gaps()["resolution"].to_list() == ["skipped"]
        late = processor.deliver(events[[1]])  # version 2 turns up after its gap was skipped
        assert late.dead_lettered == 1
        assert processor.dead_letters()["error"].item().startswith("GapSkipped")


def test_types_filter_calls_the_handler_only_for_those_types(bank_lake: Lake) -> None:
    seen: list[str] = []
    with EventProcessor(bank_lake, "closings", lambda e: seen.append(e["aggregate_id"]), types=["AccountClosed"],
                        aggregate_type="BankAccount") as processor:
        result = processor.poll()
    assert seen == ["acc-2"] and result.applied == 1 and result.received == 8


def test_reset_starts_again(bank_lake: Lake) -> None:
    model = Balances()
    with EventProcessor(bank_lake, "balances", model) as processor:
        processor.poll()
        processor.reset()
        assert processor.checkpoint == 0
        model.versions.clear()
        assert processor.poll().applied == 8


def test_bad_arguments(bank_lake: Lake) -> None:
    handler = Balances()
    with pytest.raises(InvalidArgumentError, match="processor name"):
        EventProcessor(bank_lake, "../x", handler)
    with pytest.raises(InvalidArgumentError, match="callable"):
        EventProcessor(bank_lake, "p", "nope")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        EventProcessor(bank_lake, "p", handler, batch_size=0)
    with pytest.raises(InvalidArgumentError, match="hold_timeout"):
        EventProcessor(bank_lake, "p", handler, hold_timeout=-1)
    with EventProcessor(bank_lake, "p", handler) as processor:
        with pytest.raises(InvalidArgumentError, match="lack the columns"):
            processor.deliver(pl.DataFrame({"event_id": ["x"]}))
        with pytest.raises(InvalidArgumentError, match="polars DataFrame"):
            processor.deliver([])  # type: ignore[arg-type]
        assert processor.checkpoint == 0


def test_position_gaps_are_recorded_not_waited_for(bank_lake: Lake) -> None:
    with bank_lake._store.hot.write():
        bank_lake._store.hot.con.execute("DELETE FROM events WHERE position IN (4, 5)")  # acc-2 versions 1-2
    model = Balances()
    with EventProcessor(bank_lake, "balances", model, hold_timeout=3600, batch_size=2) as processor:
        result = processor.poll()
        gaps = processor.gaps()
        assert gaps.filter(pl.col("kind") == "position").select("after", "next", "missing").rows() == [(3, 6, 2)]
        assert result.checkpoint == 8 and result.held == 2  # acc-2 versions 3 and 4 wait for 1 and 2
        assert gaps.filter(pl.col("kind") == "version").select("aggregate_id", "after", "next").rows() == [
            ("acc-2", 0, 3)]
        assert model.balances == {"acc-1": Decimal(120), "acc-3": Decimal(500)}
