"""Property tests of the event lake: random histories of appends, seals, compactions and reopenings
read back exactly as a plain model says, from either tier; payloads round-trip unchanged."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from es_analytics import ConcurrencyError, Event, Lake

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=12) | st.floats(
    allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
payloads = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads, payloads)
def test_payloads_round_trip_through_the_lake(data: dict, metadata: dict) -> None:
    event = Event("Happened", data, metadata=metadata, occurred_at=T0)
    assert json.loads(event.data_json) == data
    with tempfile.TemporaryDirectory() as tmp, Lake.open(Path(tmp) / "l") as lake:
        lake.append("a", [event], expected_version=0, aggregate_type="T")
        hot = lake.events("a")
        lake.seal()
        sealed = lake.events("a")
        assert_frame_equal(hot, sealed)
        assert json.loads(sealed["data"].item()) == data
        assert json.loads(sealed["metadata"].item()) == metadata


operation = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 4), st.integers(1, 4), st.sampled_from(["right", "stale", "any"])),
    st.tuples(st.just("seal")),
    st.tuples(st.just("compact")),
    st.tuples(st.just("reopen")),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=30))
def test_random_histories_read_back_as_the_model_says(ops: list[tuple]) -> None:
    model: dict[str, list[str]] = {}
    order: list[str] = []
    counter = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lake"
        lake = Lake.open(path, auto_seal_rows=7)
        try:
            for op in ops:
                if op[0] == "append":
                    _, s, n, mode = op
                    stream = f"s{s}"
                    have = len(model.get(stream, []))
                    expected = {"right": have, "stale": have + 1, "any": None}[mode]
                    events = []
                    for _ in range(n):
                        counter += 1
                        events.append(Event("Ticked", {"c": counter}, event_id=f"e{counter}",
                                            occurred_at=T0 + timedelta(minutes=counter)))
                    try:
                        version = lake.append(stream, events, expected_version=expected, aggregate_type="Clock")
                    except ConcurrencyError as exc:
                        assert mode == "stale" and exc.actual == have
                        continue
                    model.setdefault(stream, []).extend(e.event_id for e in events)  # type: ignore[misc]
                    order.extend(e.event_id for e in events)  # type: ignore[misc]
                    assert version == len(model[stream])
                elif op[0] == "seal":
                    lake.seal()
                elif op[0] == "compact":
                    lake.compact()
                else:
                    lake.close()
                    lake = Lake.open(path, auto_seal_rows=7)
            frame = lake.events()
            assert frame["event_id"].to_list() == order
            assert frame["position"].to_list() == list(range(1, len(order) + 1))
            for stream, ids in model.items():
                one = lake.events(stream)
                assert one["event_id"].to_list() == ids
                assert one["aggregate_version"].to_list() == list(range(1, len(ids) + 1))
                assert lake.current_version(stream) == len(ids)
            assert lake.check()["ok"]
        finally:
            lake.close()


_any_version = st.none() | st.integers(-3, 3) | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=2)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=6) | st.text(min_size=1020, max_size=1030) | st.uuids(),
       st.sampled_from(["Clock", "Clock2", "_x", "2bad", "", "a-b", "Ünï", "x" * 129]) | st.text(max_size=4),
       _any_version, st.booleans())
def test_single_and_batched_appends_refuse_exactly_what_the_checks_refuse(
        aggregate_id: object, aggregate_type: object, expected: object, single: bool) -> None:
    """``Lake.append`` tests the usual single-append values inline and sends the rest to the checks: it must
    accept exactly what ``check_aggregate_id``, ``check_aggregate_type`` and ``check_version`` accept, in
    that order, for one event and for a batch alike, and a refused append stores nothing."""
    from es_analytics import InvalidArgumentError
    from es_analytics.events import check_aggregate_id, check_aggregate_type, check_version

    try:
        stream = check_aggregate_id(aggregate_id)
        check_aggregate_type(aggregate_type)
        check_version(expected, "expected_version", allow_none=True)
        refused = None
    except InvalidArgumentError as exc:
        refused = str(exc)
    with tempfile.TemporaryDirectory() as tmp, Lake.open(Path(tmp) / "lake", durability="normal") as lake:
        for _ in range(2):  # the second time the type is among the checked ones and the stream is known
            events = [Event("Ticked", {"n": 1})] if single else [Event("Ticked", {"n": 1}), Event("Ticked", {"n": 2})]
            try:
                lake.append(aggregate_id, events, expected_version=expected, aggregate_type=aggregate_type)  # type: ignore[arg-type]
            except InvalidArgumentError as exc:
                assert str(exc) == refused
            except ConcurrencyError:
                assert refused is None and expected not in (None, lake.current_version(stream))
            else:
                assert refused is None
        stored = lake.events()
        if refused is not None:
            assert stored.height == 0
        else:
            assert set(stored["aggregate_id"].to_list()) <= {stream}


@given(st.datetimes(timezones=st.timezones()))
def test_micros_by_timedelta_division_equal_to_micros(value: datetime) -> None:
    """The one-event append computes ``to_micros`` inline as ``(t - EPOCH) // MICROSECOND``."""
    from es_analytics._time import EPOCH, MICROSECOND, from_micros, to_micros

    try:
        expected = to_micros(value)
    except OverflowError:
        return  # a local time whose UTC offset leaves the datetime range
    assert (value - EPOCH) // MICROSECOND == expected
    assert from_micros(expected) == value.astimezone(timezone.utc).replace(fold=0)
