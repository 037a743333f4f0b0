"""lake.explore: the sliders move both clocks and the table and chart follow the states query."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from es_analytics import Lake
from es_analytics.errors import InvalidArgumentError
from es_analytics.examples.bank import BankAccount
from es_analytics.sample import generate


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake.open(tmp_path_factory.mktemp("explore") / "lake")
    generate(lake, events=3_000, seed=3)
    yield lake
    lake.close()


def test_moving_the_sliders_shows_the_states_of_that_moment(bank: Lake) -> None:
    explorer = bank.explore(BankAccount, steps=20)
    assert_frame_equal(explorer.frame, bank.states(BankAccount))
    early = explorer.as_of.options[5][1]
    explorer.as_of.value = early  # what dragging the slider does
    expected = bank.states(BankAccount, as_of=early, known_at=explorer.known_at.value)
    assert_frame_equal(explorer.frame, expected)
    assert expected.height < bank.states(BankAccount).height
    assert f"<b>{expected.height:,}</b> BankAccount as of <b>{explorer.as_of.label}</b>" in explorer.summary.value
    richest = expected.sort("balance", descending=True)["aggregate_id"][0]
    assert richest in explorer.table.value
    explorer.known_at.value = explorer.known_at.options[0][1]  # as known at the first recorded moment
    assert_frame_equal(explorer.frame, bank.states(BankAccount, as_of=early, known_at=explorer.known_at.options[0][1]))
    bars = explorer.drawn.to_dict()
    drawn = next(iter(bars["datasets"].values())) if "datasets" in bars else bars["data"]["values"]
    counts = explorer.frame.group_by("status").len()
    assert {row["status"]: row["aggregates"] for row in drawn} == dict(counts.iter_rows())
    assert explorer.seconds > 0


def test_explore_refuses_what_it_cannot_show(bank: Lake, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="steps must be"):
        bank.explore(BankAccount, steps=1)
    with Lake.open(tmp_path / "empty") as empty:
        with pytest.raises(InvalidArgumentError, match="no BankAccount events"):
            empty.explore(BankAccount)
