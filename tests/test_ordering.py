"""Ordering diagnostics: gaps, occurred_at running backwards, lateness, duplicate event ids, and their charts."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings

from es_analytics import Event, Lake, charts, ordering
from es_analytics.errors import InvalidArgumentError
from es_analytics.ordering import LATENESS_BUCKETS
from tests.strategies import T0, bank_histories, import_batch


def _append(lake: Lake, aggregate_id: str, version: int, occurred_days: float, **data: object) -> None:
    lake.append(aggregate_id, [Event("MoneyDeposited", {"amount": 1, **data}, occurred_at=T0 + timedelta(days=occurred_days))],
                expected_version=version - 1, aggregate_type="BankAccount")


def test_a_healthy_lake_has_no_findings(bank_lake: Lake) -> None:
    assert ordering.version_gaps(bank_lake).height == 0
    assert ordering.position_gaps(bank_lake).height == 0
    assert ordering.duplicate_event_ids(bank_lake).height == 0
    assert ordering.summary(bank_lake).row(0, named=True) == {
        "events": 8, "streams": 3, "version_gaps": 0, "position_gaps": 0, "backwards_in_time": 0,
        "late_events": 0, "duplicate_event_ids": 0}


def test_an_event_removed_behind_the_lakes_back_shows_as_both_gaps(bank_lake: Lake) -> None:
    with bank_lake._store.hot.write():
        bank_lake._store.hot.con.execute("DELETE FROM events WHERE position = 2")  # acc-1, version 2
    gaps = ordering.version_gaps(bank_lake)
    assert gaps.select("aggregate_type", "aggregate_id", "after_version", "next_version", "missing", "position").rows() == [
        ("BankAccount", "acc-1", 1, 3, 1, 3)]
    assert ordering.position_gaps(bank_lake).rows() == [(1, 3, 1)]
    assert ordering.version_gaps(bank_lake, aggregate_type="User").height == 0
    found = ordering.summary(bank_lake).row(0, named=True)
    assert (found["version_gaps"], found["position_gaps"]) == (1, 1)


def test_backwards_in_time_finds_the_back_dated_event(empty_lake: Lake) -> None:
    _append(empty_lake, "a", 1, 2)
    _append(empty_lake, "a", 2, 1)  # back-dated by one day
    _append(empty_lake, "a", 3, 1.5)  # still before version 1
    _append(empty_lake, "a", 4, 3)
    found = ordering.backwards_in_time(empty_lake)
    assert found["aggregate_version"].to_list() == [2, 3]  # largest jump first
    assert found["backwards"].to_list() == [timedelta(days=1), timedelta(days=0.5)]
    assert found["latest_before"].to_list() == [T0 + timedelta(days=2)] * 2


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=bank_histories(max_accounts=3, max_events=30, max_batches=3))
def test_backwards_and_lateness_agree_with_a_row_by_row_count(tmp_path_factory: pytest.TempPathFactory,
                                                             history: list) -> None:
    with Lake.open(tmp_path_factory.mktemp("lake")) as lake:
        for batch in history:
            import_batch(lake, batch)
        events = [e for batch in history for e in batch]
        expected_backwards, latest = set(), {}
        for e in sorted(events, key=lambda e: (e.aggregate_id, e.aggregate_version)):
            if e.aggregate_id in latest and e.occurred_at < latest[e.aggregate_id]:
                expected_backwards.add((e.aggregate_id, e.aggregate_version))
            latest[e.aggregate_id] = max(latest.get(e.aggregate_id, e.occurred_at), e.occurred_at)
        found = ordering.backwards_in_time(lake)
        assert set(found.select("aggregate_id", "aggregate_version").rows()) == expected_backwards
        counts = [0] * len(LATENESS_BUCKETS)
        for e in events:
            seconds = (e.recorded_at - e.occurred_at) / timedelta(seconds=1)
            counts[next(i for i, (upper, _) in enumerate(LATENESS_BUCKETS) if seconds < upper)] += 1
        distribution = ordering.lateness(lake)
        assert distribution["events"].to_list() == counts
        assert distribution["share"].sum() == pytest.approx(1.0)
        hour = sum(1 for e in events if e.recorded_at - e.occurred_at > timedelta(hours=1))
        assert ordering.late_events(lake, threshold=timedelta(hours=1)).height == hour
        assert ordering.summary(lake)["late_events"].item() == hour


def test_lateness_by_type_and_late_events(bank_lake: Lake) -> None:
    by_type = ordering.lateness(bank_lake, by_type=True)
    assert by_type.height == 4 * len(LATENESS_BUCKETS)  # every bucket for every type, empty ones too
    assert by_type.group_by("event_type").agg(pl.col("events").sum()).sort("event_type")["events"].to_list() == [
        1, 3, 2, 2]
    _append(bank_lake, "acc-3", 2, -30)  # recorded now, occurred a long time ago
    late = ordering.late_events(bank_lake, threshold=timedelta(days=1))
    assert late["aggregate_id"].to_list() == ["acc-3"] and late["lateness"][0] > timedelta(days=300)
    with pytest.raises(InvalidArgumentError, match="threshold"):
        ordering.late_events(bank_lake, threshold=3600)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="limit"):
        ordering.late_events(bank_lake, limit=0)
    with pytest.raises(InvalidArgumentError, match="aggregate_type"):
        ordering.lateness(bank_lake, aggregate_type="no such; type")


def test_duplicate_event_ids_in_ingest_input(bank_lake: Lake) -> None:
    stored = bank_lake.events("acc-1")
    ids = stored["event_id"].to_list()
    incoming = pl.DataFrame({
        "event_id": [ids[0], ids[1], "new-1", "new-1", "new-2"],
        "aggregate_id": ["acc-1", "acc-1", "x", "x", "y"],
        "data": [stored["data"][0].replace(",", ", "),  # the same payload, written differently: a retry
                 '{"amount": 999}',  # other content under a stored id: a conflict
                 '{"a":1}', '{"a":1}', '{"b":2}'],
    })
    found = ordering.duplicate_event_ids(bank_lake, incoming)
    assert found.select("event_id", "in_input", "in_lake", "same_content").rows() == sorted([
        (ids[0], 1, True, True), (ids[1], 1, True, False), ("new-1", 2, False, True)])
    assert found.filter(pl.col("event_id") == "new-1")["aggregate_ids"].to_list() == [["x"]]
    with pytest.raises(InvalidArgumentError, match="event_id column"):
        ordering.duplicate_event_ids(bank_lake, pl.DataFrame({"id": ["a"]}))


def test_charts_of_the_diagnostics(empty_lake: Lake) -> None:
    _append(empty_lake, "a", 1, 2)
    _append(empty_lake, "a", 2, 1)
    spec = charts.ordering.lateness(ordering.lateness(empty_lake)).to_dict()
    assert spec["mark"]["type"] == "bar"
    assert spec["encoding"]["x"]["field"] == "bucket" and spec["encoding"]["y"]["scale"]["type"] == "symlog"
    assert spec["encoding"]["x"]["sort"] == [label for _, label in LATENESS_BUCKETS]
    stacked = charts.ordering.lateness(ordering.lateness(empty_lake, by_type=True)).to_dict()
    assert stacked["encoding"]["color"]["field"] == "event_type"
    points = charts.ordering.backwards(ordering.backwards_in_time(empty_lake)).to_dict()
    assert points["mark"]["type"] == "point" and points["encoding"]["y"]["field"] == "days"
    (values,) = [v for k, v in points["datasets"].items()]
    assert [row["days"] for row in values] == [1.0]
    with empty_lake._store.hot.write():
        empty_lake._store.hot.con.execute("DELETE FROM events WHERE position = 1")
    bars = charts.ordering.gaps(ordering.version_gaps(empty_lake)).to_dict()
    assert bars["encoding"]["y"]["field"] == "aggregate_id"
    assert charts.ordering.gaps(ordering.position_gaps(empty_lake)).to_dict()["encoding"]["y"]["field"] == "label"
    assert "svg" in charts.to_svg(charts.ordering.gaps(ordering.position_gaps(empty_lake)))
    with pytest.raises(InvalidArgumentError, match="needs the columns"):
        charts.ordering.backwards(pl.DataFrame({"x": [1]}))
