"""Upcasting on read: the registry, every read path, the SQL view, and the coverage report."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from es_analytics import Event, InvalidArgumentError, Lake, Repository, UpcasterRegistry
from es_analytics.errors import UpcastError
from es_analytics.examples.users import User
from es_analytics.repository import fingerprint
from es_analytics.upcasting import default_registry, upcast_frame, view_sql

T = datetime(2024, 3, 1, 9, tzinfo=timezone.utc)
V1 = {"id": "user-1", "email": "ada@example.org", "name": "Ada"}
V2 = {"id": "user-2", "email": "bo@example.org", "name": "Bo", "newsletter": True}
V3 = {"userId": "user-3", "profile": {"email": "cy@example.org", "name": "Cy"}, "preferences": {"newsletter": True}}


def register(lake: Lake, data: dict[str, Any], version: int) -> None:
    lake.append(data.get("userId") or data["id"], [Event("UserRegistered", data, schema_version=version, occurred_at=T)],
                expected_version=0, aggregate_type="User")


@pytest.fixture(params=["hot", "sealed"])
def users_lake(request: pytest.FixtureRequest, empty_lake: Lake) -> Lake:
    """Three users registered in schema versions 1, 2 and 3 (hot or sealed)."""
    for data, version in ((V1, 1), (V2, 2), (V3, 3)):
        register(empty_lake, data, version)
    if request.param == "sealed":
        empty_lake.seal()
    return empty_lake


def v3(data: dict[str, Any]) -> dict[str, Any]:
    """The seed's v2 -> v3 restructuring of a v1 or v2 payload."""
    return {"userId": data["id"], "profile": {"email": data["email"], "name": data["name"]},
            "preferences": {"newsletter": data.get("newsletter") or False}}


# -- v1 and v2 users read as v3 on every read path --------------------------------------------
def test_events_returns_v1_and_v2_users_as_v3(users_lake: Lake) -> None:
    frame = users_lake.events(types="UserRegistered")
    assert frame["schema_version"].to_list() == [3, 3, 3]
    assert [json.loads(d) for d in frame["data"]] == [v3(V1), v3(V2), V3]
    one = users_lake.events("user-1")
    assert (one["schema_version"].item(), json.loads(one["data"].item())) == (3, v3(V1))


def test_stored_events_never_change(users_lake: Lake) -> None:
    stored = users_lake.sql("SELECT aggregate_id, schema_version, data FROM events ORDER BY position")
    assert stored["schema_version"].to_list() == [1, 2, 3]
    # Personal fields may be stored encrypted; the shape of each payload is what was written.
    assert [sorted(json.loads(d)) for d in stored["data"]] == [sorted(V1), sorted(V2), sorted(V3)]


def test_the_sql_view_events_upcast(users_lake: Lake) -> None:
    frame = users_lake.sql("SELECT * FROM events_upcast ORDER BY position")
    assert frame.columns == users_lake.events().columns
    assert frame["schema_version"].to_list() == [3, 3, 3]
    assert [json.loads(d) for d in frame["data"]] == [v3(V1), v3(V2), V3]
    emails = users_lake.sql("SELECT data->>'$.profile.email' AS email FROM events_upcast ORDER BY position")
    assert emails["email"].to_list() == ["ada@example.org", "bo@example.org", "cy@example.org"]


def test_aggregate_and_repository_read_v1_and_v2_as_v3(users_lake: Lake) -> None:
    repo = Repository(users_lake, User)
    for data in (V1, V2):
        user = users_lake.aggregate(User, data["id"])
        assert (user.email, user.name, user.newsletter, user.status) == (
            data["email"], data["name"], data.get("newsletter", False), "active")
        assert repo.get(data["id"]) == user
    assert users_lake.aggregate(User, "user-3").newsletter is True


def test_events_upcast_works_in_safe_mode(lake_path: Path) -> None:
    with Lake.open(lake_path, safe_sql=True) as lake:
        register(lake, V1, 1)
        lake.seal()
        assert lake.sql("SELECT schema_version FROM events_upcast")["schema_version"].to_list() == [3]


# -- the registry -----------------------------------------------------------------------------
@pytest.fixture
def registry(empty_lake: Lake) -> UpcasterRegistry:
    """A fresh registry that ``empty_lake`` reads with."""
    registry = UpcasterRegistry()
    empty_lake.upcasters = registry
    return registry


def test_a_missing_step_is_an_upcast_error_on_read(empty_lake: Lake, registry: UpcasterRegistry) -> None:
    registry.register("PriceSet", 2, lambda d: {**d, "currency": "EUR"})
    empty_lake.append("p-1", [Event("PriceSet", {"price": 1})], expected_version=0, aggregate_type="Product")
    with pytest.raises(UpcastError, match=r"cannot upcast 'PriceSet' from schema_version 1: no upcaster from v1 "
                                          r"to v2 \(newest is v3\)") as info:
        empty_lake.events("p-1")
    assert (info.value.event_type, info.value.from_version) == ("PriceSet", 1)
    with pytest.raises(UpcastError, match="no upcaster from v1 to v2"):
        empty_lake.events()


def test_a_failing_upcaster_is_reported_with_its_cause(registry: UpcasterRegistry) -> None:
    def price_set_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"amount": data["price"]}

    registry.register("PriceSet", 1, price_set_v1_to_v2)
    with pytest.raises(UpcastError, match=r"price_set_v1_to_v2 failed: KeyError\('price'\)") as info:
        registry.upcast("PriceSet", 1, {"cost": 3})
    assert isinstance(info.value.__cause__, KeyError)
    registry.unregister("PriceSet", 1)
    registry.register("PriceSet", 1, lambda data: [data])
    with pytest.raises(UpcastError, match="returned list, not a dict"):
        registry.upcast("PriceSet", 1, {})
    registry.unregister("PriceSet", 1)
    registry.register("PriceSet", 1, lambda data: {"x": float("nan")})
    with pytest.raises(UpcastError, match="the upcast payload is not JSON: Out of range float"):
        registry.upcast_json("PriceSet", 1, "{}")


def test_registering_a_second_function_for_a_step_is_refused(registry: UpcasterRegistry) -> None:
    def price_set_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return data

    def other(data: dict[str, Any]) -> dict[str, Any]:
        return data

    registry.register("PriceSet", 1, price_set_v1_to_v2)
    registry.register("PriceSet", 1, price_set_v1_to_v2)  # a notebook cell run again
    with pytest.raises(InvalidArgumentError, match="already upcasts with .*price_set_v1_to_v2"):
        registry.register("PriceSet", 1, other)
    with pytest.raises(InvalidArgumentError, match="schema_version must be a positive int"):
        registry.register("PriceSet", 0, other)
    with pytest.raises(InvalidArgumentError, match="an upcaster must be callable"):
        registry.register("PriceSet", 3, "nope")  # type: ignore[arg-type]


def test_the_example_registers_the_user_chain_in_the_default_registry() -> None:
    assert default_registry.newest_version("UserRegistered") == 3
    assert default_registry.path("UserRegistered", 1) == "1→2→3"
    assert default_registry.upcast("UserRegistered", 1, dict(V1)) == (v3(V1), 3)


json_payloads = st.dictionaries(st.text(max_size=6), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8), max_size=5)


@settings(deadline=None)  # timings vary on a loaded machine; the property is what counts
@given(json_payloads)
def test_an_upcast_on_the_newest_version_changes_nothing(data: dict[str, Any]) -> None:
    text = json.dumps(data)
    assert default_registry.upcast_json("UserRegistered", 3, text) == (text, 3)
    assert default_registry.upcast("UserRegistered", 3, data) == (data, 3)


@settings(deadline=None)  # timings vary on a loaded machine; the property is what counts
@given(st.lists(st.tuples(st.sampled_from(["UserRegistered", "MoneyDeposited", "Other"]), st.integers(1, 3),
                          json_payloads), max_size=12))
def test_upcast_frame_touches_only_the_rows_that_need_a_step(rows: list[tuple[str, int, dict[str, Any]]]) -> None:
    registry = UpcasterRegistry()
    registry.register("UserRegistered", 1, lambda d: {"v": 2})
    registry.register("UserRegistered", 2, lambda d: {**d, "v": 3})
    frame = pl.DataFrame({"event_type": [r[0] for r in rows], "schema_version": [r[1] for r in rows],
                          "data": [json.dumps(r[2]) for r in rows]},
                         schema={"event_type": pl.String, "schema_version": pl.Int32, "data": pl.String})
    out = upcast_frame(frame, registry)
    for (event_type, version, data), (new_version, text) in zip(rows, out.select("schema_version", "data").rows()):
        if event_type == "UserRegistered" and version < 3:
            assert (new_version, json.loads(text)["v"]) == (3, 3)
        else:
            assert (new_version, text) == (version, json.dumps(data))


def test_the_sql_view_follows_upcasters_registered_later(empty_lake: Lake, registry: UpcasterRegistry) -> None:
    empty_lake.append("p-1", [Event("PriceSet", {"price": 1})], expected_version=0, aggregate_type="Product")
    assert empty_lake.sql("SELECT data FROM events_upcast")["data"].item() == '{"price":1}'
    registry.register("PriceSet", 1, lambda d: {"amount": d["price"]})
    assert empty_lake.sql("SELECT schema_version, data FROM events_upcast").row(0) == (2, '{"amount":1}')


def test_snapshots_depend_on_the_upcasters(empty_lake: Lake) -> None:
    registry = UpcasterRegistry()
    before = fingerprint(User, registry)
    registry.register("UserRegistered", 1, lambda d: d)
    assert fingerprint(User, registry) != before
    registry.register("Unrelated", 1, lambda d: d)
    assert fingerprint(User, registry) == fingerprint(User, registry)


# -- the coverage report ----------------------------------------------------------------------
def test_coverage_lists_each_version_with_counts_times_and_verdict(users_lake: Lake) -> None:
    register(users_lake, {**V1, "id": "user-4"}, 1)
    users_lake.append("user-1", [Event("UserSuspended", {"reason": "x", "suspendedBy": "a"})],
                      expected_version=1, aggregate_type="User")
    register(users_lake, {**V3, "userId": "user-5"}, 4)
    report = users_lake.upcasting_coverage()
    assert report.columns == ["event_type", "schema_version", "events", "first_seen", "last_seen",
                              "newest_version", "reaches_newest", "status", "path"]
    assert report.select("event_type", "schema_version", "events", "newest_version", "reaches_newest", "status",
                         "path").rows() == [
        ("UserRegistered", 1, 2, 3, True, "upcast", "1→2→3"),
        ("UserRegistered", 2, 1, 3, True, "upcast", "2→3"),
        ("UserRegistered", 3, 1, 3, True, "newest", ""),
        ("UserRegistered", 4, 1, 3, False, "ahead", ""),
        ("UserSuspended", 1, 1, None, True, "unversioned", ""),
    ]
    recorded = users_lake.sql("SELECT min(recorded_at) AS lo, max(recorded_at) AS hi FROM events "
                              "WHERE event_type = 'UserRegistered' AND schema_version = 1")
    first = report.filter(pl.col("schema_version") == 1, pl.col("event_type") == "UserRegistered")
    assert (first["first_seen"].item(), first["last_seen"].item()) == recorded.row(0)
    assert str(report.schema["first_seen"]) == "Datetime(time_unit='us', time_zone='UTC')"


def test_coverage_reports_a_broken_chain(empty_lake: Lake, registry: UpcasterRegistry) -> None:
    registry.register("PriceSet", 2, lambda d: d)
    empty_lake.append("p-1", [Event("PriceSet", {"price": 1})], expected_version=0, aggregate_type="Product")
    row = empty_lake.upcasting_coverage().row(0, named=True)
    assert (row["status"], row["reaches_newest"], row["path"], row["events"]) == ("broken chain", False, "1", 1)


def test_coverage_of_an_empty_lake_is_empty(empty_lake: Lake) -> None:
    report = empty_lake.upcasting_coverage()
    assert report.height == 0 and report.columns[0] == "event_type"


def test_the_view_calls_python_only_for_rows_that_need_it() -> None:
    registry = UpcasterRegistry()
    assert "CASE WHEN false THEN es_upcast_version" in view_sql(registry, None)
    registry.register("UserRegistered", 1, lambda d: d)
    registry.register("PriceSet", 1, lambda d: d)
    sql = view_sql(registry, '"$enc":"A256GCM"')
    assert "CASE WHEN event_type IN ('PriceSet', 'UserRegistered') THEN es_upcast_version" in sql
    assert ("CASE WHEN (event_type IN ('PriceSet', 'UserRegistered') OR contains(data, '\"$enc\":\"A256GCM\"')) "
            "THEN es_upcast_data") in sql


# -- vectorized upcasters ---------------------------------------------------------------------
def price_set_v1_to_v2_rows(data: dict[str, Any]) -> dict[str, Any]:
    return {"amount": data["price"], "currency": "EUR"}


def price_set_v1_to_v2_vectorized(texts: pl.Series) -> pl.Series:
    decoded = texts.str.json_decode(pl.Struct({"price": pl.Int64})).struct.field("price")
    return pl.DataFrame({"amount": decoded}).select(
        pl.struct(pl.col("amount"), currency=pl.lit("EUR")).struct.json_encode()).to_series()


def price_set_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "tax": 0}


@settings(deadline=None)  # timings vary on a loaded machine; the property is what counts
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 10**6)), max_size=20))
def test_vectorized_and_row_upcasters_give_the_same_payloads(rows: list[tuple[int, int]]) -> None:
    texts = [json.dumps({"price": p}) if v == 1 else json.dumps({"amount": p, "currency": "EUR"})
             if v == 2 else json.dumps({"amount": p, "currency": "EUR", "tax": 0}) for v, p in rows]
    frame = pl.DataFrame({"event_type": ["PriceSet"] * len(rows), "schema_version": [v for v, _ in rows],
                          "data": texts}, schema={"event_type": pl.String, "schema_version": pl.Int32, "data": pl.String})
    results = []
    for vectorized in (False, True):
        registry = UpcasterRegistry()
        registry.register("PriceSet", 1, price_set_v1_to_v2_vectorized if vectorized else price_set_v1_to_v2_rows,
                          vectorized=vectorized)
        registry.register("PriceSet", 2, price_set_v2_to_v3)
        out = upcast_frame(frame, registry)
        results.append([(v, json.loads(d)) for v, d in out.select("schema_version", "data").rows()])
    assert results[0] == results[1]
    assert all(v == 3 and set(d) == {"amount", "currency", "tax"} for v, d in results[1])


def test_a_vectorized_upcaster_also_serves_single_payloads(registry: UpcasterRegistry) -> None:
    registry.register("PriceSet", 1, price_set_v1_to_v2_vectorized, vectorized=True)
    assert registry.upcast("PriceSet", 1, {"price": 4}) == ({"amount": 4, "currency": "EUR"}, 2)


def test_a_vectorized_upcaster_must_return_one_text_per_payload(empty_lake: Lake, registry: UpcasterRegistry) -> None:
    registry.register("PriceSet", 1, lambda texts: texts.head(1), vectorized=True)
    empty_lake.append("p-1", [Event("PriceSet", {"price": 1}), Event("PriceSet", {"price": 2})],
                      expected_version=0, aggregate_type="Product")
    with pytest.raises(UpcastError, match="must return a String Series of 2 JSON texts"):
        empty_lake.events("p-1")


def test_the_sql_view_shows_forgotten_fields_as_erased(users_lake: Lake) -> None:
    from es_analytics.privacy import ERASED

    users_lake.forget("user-1")
    row = users_lake.sql("SELECT data FROM events_upcast WHERE aggregate_id = 'user-1' "
                         "AND event_type = 'UserRegistered'")["data"].item()
    assert json.loads(row)["profile"] == {"email": ERASED, "name": ERASED}
    assert json.loads(users_lake.events("user-1")["data"].item())["profile"]["email"] == ERASED
    other = users_lake.sql("SELECT data->>'$.profile.email' AS e FROM events_upcast WHERE aggregate_id = 'user-2'")
    assert other["e"].item() == "bo@example.org"


# -- whole-event steps (payload and metadata) ----------------------------------------------------------
def test_a_whole_event_step_changes_metadata_on_every_read_path(empty_lake: Lake, registry: UpcasterRegistry) -> None:
    @registry.register("PriceSet", 1, whole_event=True)
    def price_set_v1_to_v2(event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "data": {"amount": event["data"]["price"]},
                "metadata": {**event["metadata"], "source": f"v{event['schema_version']}:{event['event_id']}"}}

    registry.register("PriceSet", 2, lambda d: {**d, "currency": "EUR"})
    empty_lake.append("p-1", [Event("PriceSet", {"price": 5}, event_id="e-1", metadata={"by": "ops"}),
                              Event("PriceSet", {"amount": 6, "currency": "USD"}, event_id="e-2", schema_version=3)],
                      expected_version=0, aggregate_type="Product")
    expected = [({"amount": 5, "currency": "EUR"}, {"by": "ops", "source": "v1:e-1"}),
                ({"amount": 6, "currency": "USD"}, {})]
    for frame in (empty_lake.events("p-1"), empty_lake.sql("SELECT * FROM events_upcast ORDER BY position")):
        assert [(json.loads(d), json.loads(m)) for d, m in frame.select("data", "metadata").rows()] == expected
    assert empty_lake.sql("SELECT metadata FROM events ORDER BY position")["metadata"].to_list() == ['{"by":"ops"}', "{}"]
    assert registry.upcast("PriceSet", 1, {"price": 7}) == ({"amount": 7, "currency": "EUR"}, 3)
    assert registry.whole_event_types() == {"PriceSet"}
    before = registry.fingerprint(["PriceSet"])
    registry.unregister("PriceSet", 1)
    registry.register("PriceSet", 1, price_set_v1_to_v2)  # the same function as a payload step
    assert registry.fingerprint(["PriceSet"]) != before and registry.whole_event_types() == set()


def test_whole_event_steps_are_checked(registry: UpcasterRegistry) -> None:
    with pytest.raises(InvalidArgumentError, match="either vectorized or whole_event"):
        registry.register("PriceSet", 1, lambda e: e, vectorized=True, whole_event=True)
    registry.register("PriceSet", 1, lambda e: {"data": e["data"]}, whole_event=True)
    with pytest.raises(UpcastError, match="must return the event with dicts 'data' and 'metadata'"):
        registry.upcast_event("PriceSet", 1, {"price": 1}, {})
