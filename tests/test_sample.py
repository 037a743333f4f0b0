"""The sample-data generator: deterministic, of the asked size, and holding what every feature needs."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from es_analytics import Event, Lake
from es_analytics.errors import InvalidArgumentError
from es_analytics.sample import generate, plan


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "lake"
    with Lake.open(path) as lake:
        result = generate(lake, events=6_000, seed=3)
    assert 5_000 < result["events"] < 7_000
    return path


def _raw(path: Path) -> pl.DataFrame:
    with Lake.open(path) as lake:
        return lake.sql("SELECT * EXCLUDE (data), data FROM events ORDER BY position")


def test_same_seed_same_events(sample: Path, tmp_path: Path) -> None:
    with Lake.open(tmp_path / "again") as lake:
        generate(lake, events=6_000, seed=3)
    a, b = _raw(sample), _raw(tmp_path / "again")
    # personal fields are encrypted with fresh nonces, so compare everything but User payloads
    mask = pl.col("aggregate_type") != "User"
    assert_frame_equal(a.filter(mask), b.filter(mask))
    assert_frame_equal(a.drop("data"), b.drop("data"))


def test_history_is_consistent(sample: Path) -> None:
    with Lake.open(sample) as lake:
        assert lake.check()["ok"]
        frame = lake.events()
    assert frame["recorded_at"].is_sorted()
    bank = frame.filter(pl.col("aggregate_type") == "BankAccount")
    first = bank.group_by("aggregate_id").agg(pl.col("event_type").sort_by("aggregate_version").first())
    assert set(first["event_type"]) == {"AccountOpened"}
    amounts = bank.with_columns(
        amount=pl.col("data").str.json_path_match("$.amount").cast(pl.Float64).fill_null(0.0),
        initial=pl.col("data").str.json_path_match("$.initialDeposit").cast(pl.Float64).fill_null(0.0),
        new_balance=pl.col("data").str.json_path_match("$.newBalance").cast(pl.Float64),
    ).with_columns(
        delta=pl.when(pl.col("event_type") == "MoneyWithdrawn").then(-pl.col("amount"))
        .when(pl.col("event_type") == "MoneyDeposited").then(pl.col("amount")).otherwise(pl.col("initial"))
    ).sort("aggregate_id", "aggregate_version").with_columns(
        balance=pl.col("delta").cum_sum().over("aggregate_id"))
    money = amounts.filter(pl.col("new_balance").is_not_null())
    assert (money["balance"] - money["new_balance"]).abs().max() < 0.01  # newBalance follows the amounts
    assert amounts["balance"].min() >= -0.005  # never overdrawn
    closed = amounts.filter(pl.col("event_type") == "AccountClosed")
    assert closed.height > 0 and closed["balance"].abs().max() < 0.01


def test_history_has_what_features_need(sample: Path) -> None:
    with Lake.open(sample) as lake:
        frame = lake.sql("SELECT * FROM events")
        versions = set(frame.filter(pl.col("event_type") == "UserRegistered")["schema_version"])
    assert versions == {1, 2, 3}
    ordered = frame.sort("aggregate_id", "aggregate_version").with_columns(
        back=pl.col("occurred_at") < pl.col("occurred_at").shift(1).over("aggregate_id"),
        late=(pl.col("recorded_at") - pl.col("occurred_at")) > pl.duration(hours=1),
    )
    assert ordered["back"].sum() > 0  # back-dated corrections
    assert ordered["late"].sum() > 0  # late-recorded events
    hours = frame.group_by(pl.col("occurred_at").dt.hour()).len().sort("occurred_at")["len"]
    assert hours.max() > 4 * hours.min()  # a daily rhythm
    weekday = frame.group_by(pl.col("occurred_at").dt.weekday() >= 6).len().sort("occurred_at")["len"].to_list()
    assert weekday[1] / 2 < weekday[0] / 5  # quieter weekends
    meta = json.loads(frame["metadata"][0])
    assert {"user_id", "correlation_id", "causation_id", "command"} <= set(meta)


def test_plan_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="events must be an int"):
        plan(10)
    with pytest.raises(InvalidArgumentError, match="reaches into the future"):
        plan(1000, start=datetime(2100, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(InvalidArgumentError, match="start must be timezone-aware"):
        plan(1000, start=datetime(2024, 1, 1))
    with Lake.open(tmp_path / "l") as lake:
        lake.append("x", [Event("X", {})], expected_version=0, aggregate_type="T")
        with pytest.raises(InvalidArgumentError, match="needs an empty lake"):
            generate(lake, events=1000)


def test_every_money_movement_moves_money(sample: Path) -> None:
    with Lake.open(sample) as lake:
        amounts = lake.sql(
            "SELECT CAST(data->>'amount' AS DECIMAL(18, 2)) AS amount FROM events "
            "WHERE event_type IN ('MoneyDeposited', 'MoneyWithdrawn')")["amount"]
    assert amounts.min() > 0
