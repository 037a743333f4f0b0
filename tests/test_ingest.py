"""Ingest: files and databases into a lake, rejects with their lines, idempotent re-runs, real PostgreSQL."""

from __future__ import annotations

import csv
import functools
import json
import os
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from es_analytics import Lake
from es_analytics.errors import InvalidArgumentError
from es_analytics.ingest import ingest

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
COMPARED = ["event_id", "event_type", "schema_version", "aggregate_type", "aggregate_id", "aggregate_version",
            "occurred_at", "data", "metadata"]


def make_rows(streams: int = 3, per_stream: int = 4) -> list[dict[str, Any]]:
    """Bank-like events in commit order: streams interleaved, one back-dated event per stream."""
    rows = []
    for v in range(1, per_stream + 1):
        for s in range(streams):
            occurred = T0 + timedelta(days=v, minutes=s)
            if v == per_stream:
                occurred -= timedelta(days=2)  # back-dated: recorded last, occurred earlier
            rows.append({
                "event_id": f"e-{s}-{v}",
                "event_type": "AccountOpened" if v == 1 else "MoneyDeposited",
                "aggregate_type": "BankAccount",
                "aggregate_id": f"acc-{s}",
                "aggregate_version": v,
                "occurred_at": occurred.isoformat().replace("+00:00", "Z"),
                "data": {"amount": 10 * v, "note": "café ☕"},
                "metadata": {"user_id": f"teller-{s}"},
            })
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def expected_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame({
        "event_id": [r["event_id"] for r in rows],
        "event_type": [r["event_type"] for r in rows],
        "schema_version": pl.Series([r.get("schema_version", 1) for r in rows], dtype=pl.Int32),
        "aggregate_type": [r["aggregate_type"] for r in rows],
        "aggregate_id": [r["aggregate_id"] for r in rows],
        "aggregate_version": [r["aggregate_version"] for r in rows],
        "occurred_at": pl.Series([datetime.fromisoformat(r["occurred_at"].replace("Z", "+00:00")) for r in rows])
        .dt.cast_time_unit("us").dt.convert_time_zone("UTC"),
        "data": [json.dumps(r["data"], ensure_ascii=False, separators=(",", ":")) for r in rows],
        "metadata": [json.dumps(r.get("metadata", {}), separators=(",", ":")) for r in rows],
    }).sort("aggregate_id", "aggregate_version")


def stored(lake: Lake) -> pl.DataFrame:
    frame = lake.events().select(COMPARED).sort("aggregate_id", "aggregate_version")
    return frame.with_columns(pl.col("occurred_at").dt.convert_time_zone("UTC"))


def sorted_keys(frame: pl.DataFrame) -> pl.DataFrame:
    def canon(text: str) -> str:
        return json.dumps(json.loads(text), sort_keys=True)

    return frame.with_columns(pl.col("data", "metadata").map_elements(canon, return_dtype=pl.String))


# -- JSON Lines -------------------------------------------------------------------------------------
def test_jsonl_round_trip_and_rerun_adds_nothing(tmp_path: Path, empty_lake: Lake) -> None:
    rows = make_rows()
    path = write_jsonl(tmp_path / "events.jsonl", rows)
    first = ingest(empty_lake, path)
    assert (first.read, first.imported, first.rejected) == (12, 12, 0)
    assert_frame_equal(stored(empty_lake), expected_frame(rows))
    positions = empty_lake.events()["position"].to_list()
    again = ingest(empty_lake, path)
    assert (again.imported, again.already_present, again.rejected) == (0, 12, 0)
    assert empty_lake.events()["position"].to_list() == positions
    assert empty_lake.current_version("acc-1") == 4


def test_commit_order_is_kept_and_recorded_at_is_the_ingest_time(tmp_path: Path, empty_lake: Lake) -> None:
    rows = make_rows()
    before = datetime.now(timezone.utc)
    ingest(empty_lake, write_jsonl(tmp_path / "e.jsonl", rows))
    events = empty_lake.events()
    assert events["event_id"].to_list() == [r["event_id"] for r in rows]
    assert events["recorded_at"].min() >= before - timedelta(seconds=1)


def test_malformed_rows_are_rejected_with_line_and_reason(tmp_path: Path, empty_lake: Lake) -> None:
    good = make_rows(streams=1, per_stream=2)
    bad = [
        good[0],
        "not json at all",
        {**good[1], "event_id": "x1", "aggregate_version": 9, "aggregate_type": "Bank Account"},
        "",
        {**good[1], "event_id": "x2", "aggregate_id": "acc-9", "aggregate_version": "3.5"},
        {**good[1], "event_id": "x3", "aggregate_id": "acc-9", "aggregate_version": 1, "occurred_at": "2024-03-01T09:00:00"},
        {**good[1], "event_id": "x4", "aggregate_id": "acc-9", "aggregate_version": 1, "data": [1, 2]},
        '{"event_id": "x5", "event_type": "MoneyDeposited", "aggregate_type": "BankAccount", "aggregate_id": "acc-9", '
        '"aggregate_version": 1, "occurred_at": "2024-03-01T09:00:00Z", "data": {"amount": NaN}}',
        {**good[1], "event_id": None},
        {**good[1], "event_id": "x6", "aggregate_id": "acc-9", "aggregate_version": 1, "occurred_at": "yesterday"},
        good[1],
    ]
    report = tmp_path / "rejects.csv"
    result = ingest(empty_lake, write_jsonl(tmp_path / "bad.jsonl", bad), rejects_path=report)
    assert result.imported == 2
    reasons = dict(zip(result.rejects["line"].to_list(), result.rejects["reason"].to_list()))
    assert sorted(reasons) == [2, 3, 5, 6, 7, 8, 9, 10]
    assert reasons[2] == "line is not a JSON object"
    assert "aggregate_type 'Bank Account' is not an identifier" in reasons[3]
    assert "aggregate_version '3.5' is not a positive integer" in reasons[5]
    assert "has no time zone" in reasons[6]
    assert reasons[7] == "data is not a JSON object"
    assert "NaN" in reasons[8]
    assert reasons[9] == "event_id is missing"
    assert "'yesterday' is not an ISO 8601 time" in reasons[10]
    with open(report, encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    assert [int(r["line"]) for r in lines] == sorted(reasons)
    assert {r["file"] for r in lines} == {str(tmp_path / "bad.jsonl")}
    assert lines[0]["record"] == "not json at all"
    assert result.rejected == len(lines) == 8
    assert empty_lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 2


def test_naive_times_are_taken_in_the_given_zone(tmp_path: Path, empty_lake: Lake) -> None:
    row = {**make_rows(1, 1)[0], "occurred_at": "2024-07-01 12:00:00"}
    result = ingest(empty_lake, write_jsonl(tmp_path / "e.jsonl", [row]), timezone="Europe/Berlin")
    assert result.imported == 1
    assert empty_lake.events()["occurred_at"].item() == datetime(2024, 7, 1, 10, 0, tzinfo=timezone.utc)
    with pytest.raises(InvalidArgumentError, match="'Mars/Base' is not an IANA time zone"):
        ingest(empty_lake, tmp_path / "e.jsonl", timezone="Mars/Base")


def test_out_of_order_versions_across_batches_are_put_in_order(tmp_path: Path, empty_lake: Lake) -> None:
    rows = make_rows(streams=2, per_stream=5)
    shuffled = list(reversed(rows))  # every stream's versions arrive newest first, in batches of 3
    result = ingest(empty_lake, write_jsonl(tmp_path / "e.jsonl", shuffled), batch_size=3)
    assert (result.imported, result.rejected) == (10, 0)
    assert_frame_equal(stored(empty_lake), expected_frame(rows))
    for stream in ("acc-0", "acc-1"):
        events = empty_lake.events(stream)
        assert events["aggregate_version"].to_list() == [1, 2, 3, 4, 5]
        assert events["position"].is_sorted()


def test_gaps_conflicts_and_repeats(tmp_path: Path, empty_lake: Lake) -> None:
    rows = make_rows(streams=2, per_stream=3)
    ingest(empty_lake, write_jsonl(tmp_path / "first.jsonl", rows[:4]))  # versions 1-2 of both streams
    later = [
        rows[4],                                       # acc-0 v3: new
        rows[4],                                       # the same event again: repeated, skipped
        {**rows[4], "data": {"amount": 1}},            # same id, other content: rejected
        {**rows[5], "event_id": "other-id", "aggregate_version": 1},   # slot taken by another event
        {**rows[5], "aggregate_version": 5},           # acc-1 v5 after a gap (v3, v4 missing)
        {**rows[0], "aggregate_id": "acc-0"},          # known id, same slot: already present
        {**rows[2], "event_id": rows[1]["event_id"]},  # known id in another slot: rejected
        {**rows[0], "event_id": "typed", "aggregate_id": "acc-1", "aggregate_version": 3, "aggregate_type": "User"},
    ]
    result = ingest(empty_lake, write_jsonl(tmp_path / "later.jsonl", later))
    assert (result.imported, result.repeated_in_input, result.already_present) == (1, 1, 1)
    reasons = dict(zip(result.rejects["line"].to_list(), result.rejects["reason"].to_list()))
    assert "was already read at line 1 with other content" in reasons[3]
    assert "is already at version 2 and holds another event at version 1" in reasons[4]
    assert "version gap: stream acc-1 is at version 2, this event has version 5" in reasons[5]
    assert f"event_id {rows[1]['event_id']} is already in the lake as version 1 of stream acc-1" in reasons[7]
    assert "stream acc-1 is a BankAccount, not a User" in reasons[8]
    assert empty_lake.current_version("acc-0") == 3
    assert empty_lake.current_version("acc-1") == 2


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(list(range(12))), batch=st.integers(1, 12), cut=st.integers(0, 12))
def test_any_order_any_batching_gives_the_same_lake(tmp_path_factory: pytest.TempPathFactory, order: list[int],
                                                     batch: int, cut: int) -> None:
    """Property: whatever the order of the input and the batch size, and however it is split over two
    runs, the lake ends with every event exactly once and each stream in version order."""
    rows = make_rows()
    folder = tmp_path_factory.mktemp("prop")
    shuffled = [rows[i] for i in order]
    with Lake.open(folder / "lake") as lake:
        ingest(lake, write_jsonl(folder / "a.jsonl", shuffled[:cut] or [shuffled[0]]), batch_size=batch)
        result = ingest(lake, write_jsonl(folder / "b.jsonl", shuffled), batch_size=batch)
        assert result.rejected == 0
        assert_frame_equal(stored(lake), expected_frame(rows))


# -- CSV and Parquet -----------------------------------------------------------------------------------
def test_csv_with_column_mapping_and_row_numbers(tmp_path: Path, empty_lake: Lake) -> None:
    rows = make_rows(streams=2, per_stream=2)
    path = tmp_path / "events.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["uid", "kind", "stream_kind", "stream", "seq", "when", "payload"])
        for r in rows:
            out.writerow([r["event_id"], r["event_type"], r["aggregate_type"], r["aggregate_id"], r["aggregate_version"],
                          r["occurred_at"], json.dumps(r["data"], ensure_ascii=False)])
        handle.write("broken,row\n")
        out.writerow(["z", "MoneyDeposited", "BankAccount", "acc-7", "1", "2024-03-01T09:00:00Z", "{not json"])
    mapping = {"event_id": "uid", "event_type": "kind", "aggregate_type": "stream_kind", "aggregate_id": "stream",
               "aggregate_version": "seq", "occurred_at": "when", "data": "payload"}
    result = ingest(empty_lake, path, mapping=mapping)
    assert result.imported == 4
    assert result.rejects.select("line", "reason").rows() == [
        (6, "CSV row has 2 fields, the header has 7"), (7, "data is not a JSON object")]
    expected = expected_frame([{**r, "metadata": {}} for r in rows])
    assert_frame_equal(stored(empty_lake), expected)
    with pytest.raises(InvalidArgumentError, match="has no column 'nope'"):
        ingest(empty_lake, path, mapping={**mapping, "event_id": "nope"})
    with pytest.raises(InvalidArgumentError, match="has no column for event_id"):
        ingest(empty_lake, path)


def test_parquet_with_nested_payload_and_timestamps(tmp_path: Path, empty_lake: Lake) -> None:
    rows = make_rows(streams=2, per_stream=3)
    table = pa.table({
        "id": [r["event_id"] for r in rows],
        "event_type": [r["event_type"] for r in rows],
        "aggregate_type": [r["aggregate_type"] for r in rows],
        "aggregate_id": [r["aggregate_id"] for r in rows],
        "version": pa.array([r["aggregate_version"] for r in rows], pa.int32()),
        "timestamp": pa.array([datetime.fromisoformat(r["occurred_at"].replace("Z", "+00:00")) for r in rows],
                              pa.timestamp("ms", tz="Europe/Paris")),
        "data": pa.array([r["data"] for r in rows]),
        "metadata": [json.dumps(r["metadata"]) for r in rows],
    })
    pq.write_table(table, tmp_path / "events.parquet", row_group_size=2)
    result = ingest(empty_lake, tmp_path / "events.parquet", batch_size=4)
    assert (result.imported, result.rejected) == (6, 0)
    assert_frame_equal(stored(empty_lake), expected_frame(rows))


def test_parquet_naive_timestamps_need_a_zone(tmp_path: Path, empty_lake: Lake) -> None:
    rows = make_rows(1, 2)
    table = pa.table({
        "event_id": [r["event_id"] for r in rows], "event_type": [r["event_type"] for r in rows],
        "aggregate_type": [r["aggregate_type"] for r in rows], "aggregate_id": [r["aggregate_id"] for r in rows],
        "aggregate_version": [r["aggregate_version"] for r in rows],
        "occurred_at": pa.array([datetime(2024, 1, 1, 12), datetime(2024, 1, 2, 12)], pa.timestamp("us")),
        "data": ["{}", "{}"],
    })
    pq.write_table(table, tmp_path / "naive.parquet")
    refused = ingest(empty_lake, tmp_path / "naive.parquet")
    assert refused.imported == 0 and refused.rejects["line"].to_list() == [1, 2]
    assert "without time zone" in refused.rejects["reason"][0]
    taken = ingest(empty_lake, tmp_path / "naive.parquet", timezone="UTC")
    assert taken.imported == 2


# -- the seed's SQL table ---------------------------------------------------------------------------------
SEED_DDL = (
    "CREATE TABLE events (id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL, aggregate_type TEXT NOT NULL, "
    "event_type TEXT NOT NULL, event_data {json} NOT NULL, metadata {json}, version INTEGER NOT NULL, "
    "timestamp {ts} NOT NULL, UNIQUE (aggregate_id, version))"
)


def seed_values(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["event_id"], r["aggregate_id"], r["aggregate_type"], r["event_type"], json.dumps(r["data"]),
             json.dumps(r["metadata"]), r["aggregate_version"], r["occurred_at"]) for r in rows]


def test_seed_sqlite_table_round_trip(tmp_path: Path, empty_lake: Lake) -> None:
    rows = make_rows()
    db = tmp_path / "seed.db"
    con = sqlite3.connect(db)
    con.execute(SEED_DDL.format(json="TEXT", ts="TEXT"))
    con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", seed_values(rows))
    con.execute("INSERT INTO events VALUES ('bad', 'acc-x', 'BankAccount', 'MoneyDeposited', 'oops', NULL, 1, "
                "'2024-03-01T09:00:00Z')")
    con.commit()
    con.close()
    result = ingest(empty_lake, f"sqlite:///{db}", batch_size=5)
    assert (result.imported, result.rejected) == (12, 1)
    assert result.rejects.row(0)[:3] == (f"sqlite:///{db}#events", 13, "data is not a JSON object")
    assert_frame_equal(stored(empty_lake), expected_frame(rows))
    assert ingest(empty_lake, db).already_present == 12  # a plain path to a .db file works too


# -- the eventsourcing library -----------------------------------------------------------------------------
@functools.cache
def eventsourcing_classes() -> tuple[type, type]:
    """A small application of the eventsourcing library: dogs that learn tricks (with a Decimal price)."""
    from decimal import Decimal

    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate as ESAggregate
    from eventsourcing.domain import event

    class Dog(ESAggregate):
        @event("Registered")
        def __init__(self, name: str) -> None:
            self.name = name
            self.tricks: list[str] = []
            self.spent = Decimal("0")

        @event("TrickAdded")
        def add_trick(self, trick: str, price: Decimal) -> None:
            self.tricks.append(trick)
            self.spent += price

    class DogSchool(Application):
        pass

    return Dog, DogSchool


def eventsourcing_app(env: dict[str, str]) -> tuple[Any, list[Any]]:
    from decimal import Decimal

    Dog, DogSchool = eventsourcing_classes()
    app = DogSchool(env=env)
    dogs = []
    for name, tricks in (("Fido", ["roll", "sit", "beg"]), ("Rex", ["fetch"])):
        dog = Dog(name)
        for i, trick in enumerate(tricks):
            dog.add_trick(trick, Decimal(f"{i + 1}.25"))
        app.save(dog)
        dogs.append(dog)
    return app, dogs


def lake_dog_class() -> type:
    """The same dog as an es_analytics aggregate, folding the ingested events."""
    from decimal import Decimal

    from es_analytics.aggregates import Aggregate, when

    class Dog(Aggregate):
        aggregate_type = "Dog"

        def __init__(self, aggregate_id: str) -> None:
            super().__init__(aggregate_id)
            self.name = ""
            self.tricks: list[str] = []
            self.spent = Decimal("0")

        @when("Registered")
        def _registered(self, event: Any) -> None:
            self.name = event.data["name"]

        @when("TrickAdded")
        def _trick(self, event: Any) -> None:
            self.tricks.append(event.data["trick"])
            self.spent += Decimal(event.data["price"])

    return Dog


def check_eventsourcing_round_trip(lake: Lake, app: Any, dogs: list[Any]) -> None:
    lake_dog = lake_dog_class()
    for dog in dogs:
        for version in range(1, dog.version + 1):
            theirs = app.repository.get(dog.id, version=version)
            ours = lake.aggregate(lake_dog, str(dog.id), version=version)
            assert ours is not None
            assert (ours.name, ours.tricks, ours.spent, ours.version) == (
                theirs.name, theirs.tricks, theirs.spent, theirs.version)
        events = lake.events(str(dog.id))
        assert events["occurred_at"][0] == dog.created_on
        assert json.loads(events["metadata"][0])["topic"].endswith("Dog.Registered")
    assert lake.sql("SELECT DISTINCT aggregate_type FROM events")["aggregate_type"].to_list() == ["Dog"]


def test_eventsourcing_sqlite_round_trip(tmp_path: Path, empty_lake: Lake) -> None:
    db = tmp_path / "dogs.db"
    app, dogs = eventsourcing_app({"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(db)})
    result = ingest(empty_lake, db, format="eventsourcing")
    assert (result.imported, result.rejected) == (6, 0)
    check_eventsourcing_round_trip(empty_lake, app, dogs)
    again = ingest(empty_lake, f"sqlite:///{db}")  # the stored-events table is recognised by its columns
    assert (again.imported, again.already_present) == (0, 6)


def test_eventsourcing_undecodable_state_is_rejected(tmp_path: Path, empty_lake: Lake) -> None:
    db = tmp_path / "es.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE stored_events (originator_id TEXT, originator_version INTEGER, topic TEXT, state BLOB)")
    con.execute("INSERT INTO stored_events VALUES ('a', 1, 'app:Dog.Registered', X'00ff10')")
    con.execute("INSERT INTO stored_events VALUES ('b', 1, 'nonsense', '{}')")
    con.commit()
    con.close()
    result = ingest(empty_lake, db)
    assert result.imported == 0
    assert result.rejects.select("line", "reason").rows() == [
        (1, "state is neither JSON nor zlib-compressed JSON (is the application's cipher on?)"),
        (2, "topic 'nonsense' is not 'module:Class.Event'"),
    ]


# -- bad arguments -------------------------------------------------------------------------------------------
def test_bad_arguments_are_typed_errors(tmp_path: Path, empty_lake: Lake) -> None:
    with pytest.raises(InvalidArgumentError, match="no file at"):
        ingest(empty_lake, tmp_path / "missing.jsonl")
    with pytest.raises(InvalidArgumentError, match="cannot tell the format"):
        ingest(empty_lake, tmp_path / "events.txt")
    with pytest.raises(InvalidArgumentError, match="format must be one of"):
        ingest(empty_lake, tmp_path / "x.jsonl", format="xml")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="mapping names unknown fields"):
        ingest(empty_lake, write_jsonl(tmp_path / "e.jsonl", make_rows(1, 1)), mapping={"stream": "x"})
    db = tmp_path / "x.db"
    sqlite3.connect(db).close()
    with pytest.raises(InvalidArgumentError, match="table must be an identifier"):
        ingest(empty_lake, db, table="events; DROP TABLE x")
    with pytest.raises(InvalidArgumentError, match="has no table 'events'"):
        ingest(empty_lake, db)
    assert empty_lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 0


# -- PostgreSQL (a real server: .ci/run starts it) ------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres_url() -> str:
    """The URL of the test server; started with .ci/postgres.sh when the environment names none."""
    import subprocess

    import psycopg

    url = os.environ.get("ES_ANALYTICS_POSTGRES_URL")
    if not url:
        script = Path(__file__).resolve().parents[1] / ".ci" / "postgres.sh"
        url = subprocess.run([str(script)], check=True, capture_output=True, text=True).stdout.strip()
    psycopg.connect(url).close()
    return url


@pytest.fixture
def pg_schema(postgres_url: str) -> Any:
    """A fresh schema per test, dropped afterwards; yields (url with search_path, connection)."""
    import uuid

    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    con = psycopg.connect(postgres_url, autocommit=True)
    con.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{sep}options=-csearch_path%3D{schema}", schema, con
    con.execute(f"DROP SCHEMA {schema} CASCADE")
    con.close()


@pytest.mark.postgres
def test_seed_postgres_table_round_trip(pg_schema: Any, empty_lake: Lake) -> None:
    url, schema, con = pg_schema
    rows = make_rows()
    con.execute(f"SET search_path = {schema}")
    con.execute(SEED_DDL.format(json="JSONB", ts="TIMESTAMPTZ"))
    with con.cursor() as cursor:
        cursor.executemany("INSERT INTO events VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", seed_values(rows))
    result = ingest(empty_lake, url, batch_size=4)
    assert (result.imported, result.rejected) == (12, 0)
    assert result.sources[0].startswith("postgresql://es_analytics:***@")
    # JSONB keeps objects, not their key order.
    assert_frame_equal(sorted_keys(stored(empty_lake)), sorted_keys(expected_frame(rows)))
    assert ingest(empty_lake, url).already_present == 12


@pytest.mark.postgres
def test_eventsourcing_postgres_round_trip(pg_schema: Any, empty_lake: Lake, postgres_url: str) -> None:
    from urllib.parse import urlsplit

    url, schema, _ = pg_schema
    parts = urlsplit(postgres_url)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": parts.path.lstrip("/"),
        "POSTGRES_HOST": parts.hostname or "localhost", "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "", "POSTGRES_PASSWORD": parts.password or "", "POSTGRES_SCHEMA": schema,
    }
    app, dogs = eventsourcing_app(env)
    try:
        result = ingest(empty_lake, url, format="eventsourcing", table="dogschool_events")
        assert (result.imported, result.rejected) == (6, 0)
        check_eventsourcing_round_trip(empty_lake, app, dogs)
    finally:
        app.close()


def test_lines_longer_than_a_block_and_a_progress_bar(tmp_path: Path, empty_lake: Lake,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_rows(streams=1, per_stream=3)
    rows[1]["data"] = {"note": "x" * 300_000}  # longer than the 64 KiB read block of batch_size=1
    result = ingest(empty_lake, write_jsonl(tmp_path / "long.jsonl", rows), batch_size=1, progress=True)
    assert (result.imported, result.rejected) == (3, 0)
    assert len(json.loads(empty_lake.events("acc-0")["data"][1])["note"]) == 300_000
    assert "ingest long.jsonl" in capsys.readouterr().err  # the tqdm bar


def test_a_concurrent_append_between_check_and_import_is_caught(tmp_path: Path, empty_lake: Lake,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer extends a stream after the ingest read its head: the import's own continuity check
    fails, the batch is checked again, and the event whose slot was taken is rejected, not duplicated."""
    from es_analytics import Event
    from es_analytics.ingest import _writer

    rows = make_rows(streams=2, per_stream=2)
    original = _writer.LakeWriter._check_heads
    raced = []

    def racing(self: Any, frame: pl.DataFrame) -> pl.DataFrame:
        checked = original(self, frame)
        if not raced:
            raced.append(empty_lake.append("acc-0", [Event("AccountOpened", {"amount": 1}, event_id="other",
                                                          occurred_at=T0)],
                                           expected_version=0, aggregate_type="BankAccount"))
        return checked

    monkeypatch.setattr(_writer.LakeWriter, "_check_heads", racing)
    result = ingest(empty_lake, write_jsonl(tmp_path / "e.jsonl", rows))
    assert raced == [1]
    # acc-1 v1, v2 and acc-0 v2 (which now continues the other writer's v1) are imported; acc-0 v1 is not.
    assert (result.imported, result.rejected) == (3, 1)
    reasons = result.rejects["reason"].to_list()
    assert any("stream acc-0 is already at version 1 and holds another event at version 1" in r for r in reasons)
    assert empty_lake.sql("SELECT count(*) AS n FROM events WHERE aggregate_id = 'acc-0'")["n"].item() == 2
    assert empty_lake.check()["ok"]


def test_a_stream_moved_after_an_earlier_batch_is_checked_again(tmp_path: Path, empty_lake: Lake,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingest remembers the heads of streams it imported; when another writer moves such a stream
    before the next batch, the import's own check fails and the batch is checked with heads read afresh."""
    from es_analytics import Event
    from es_analytics.ingest import _writer

    rows = make_rows(streams=1, per_stream=4)
    first = write_jsonl(tmp_path / "a.jsonl", rows[:2])
    second = write_jsonl(tmp_path / "b.jsonl", rows[2:])
    original = _writer.LakeWriter._check_heads
    calls = []

    def racing(self: Any, frame: pl.DataFrame) -> pl.DataFrame:
        calls.append(frame.height)
        if len(calls) == 2:  # after the first file's import, before the second file's check
            empty_lake.append("acc-0", [Event("MoneyDeposited", {"amount": 1}, event_id="other", occurred_at=T0)],
                              expected_version=2, aggregate_type="BankAccount")
        return original(self, frame)

    monkeypatch.setattr(_writer.LakeWriter, "_check_heads", racing)
    result = ingest(empty_lake, [first, second])
    assert (result.imported, result.rejected) == (3, 1)
    assert "stream acc-0 is already at version 3 and holds another event at version 3" in result.rejects["reason"][0]
    assert empty_lake.events("acc-0")["event_id"].to_list() == ["e-0-1", "e-0-2", "other", "e-0-4"]
    assert empty_lake.check()["ok"]


def test_eventsourcing_aggregate_recorder_table_without_rowid(tmp_path: Path, empty_lake: Lake) -> None:
    """The library's aggregate recorder table is WITHOUT ROWID: read in stream order instead."""
    import uuid

    db = tmp_path / "agg.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE stored_events (originator_id TEXT, originator_version INTEGER, topic TEXT, "
                "state BLOB, PRIMARY KEY (originator_id, originator_version)) WITHOUT ROWID")
    dog = uuid.uuid4()
    state = '{{"timestamp":{{"_type_":"datetime_iso","_data_":"2024-03-0{v}T10:00:00+00:00"}},"n":{v}}}'
    con.executemany("INSERT INTO stored_events VALUES (?, ?, ?, ?)",
                    [(dog.hex, v, "app:Dog.Barked", state.format(v=v).encode()) for v in (2, 1, 3)])
    con.commit()
    con.close()
    result = ingest(empty_lake, db)
    assert (result.imported, result.rejected) == (3, 0)
    events = empty_lake.events(str(dog))
    assert events["aggregate_version"].to_list() == [1, 2, 3]
    assert [json.loads(d)["n"] for d in events["data"]] == [1, 2, 3]
    assert events["event_id"][0] == f"{dog}:1"


def test_bulk_import_refuses_gaps_and_type_changes(empty_lake: Lake) -> None:
    """The lake's own continuity check under its lock, which ingest relies on against concurrent writers."""
    def table(aggregate_type: str, versions: list[int]) -> pa.Table:
        n = len(versions)
        return pa.table({
            "event_id": [f"{aggregate_type}-{v}" for v in versions], "event_type": ["Happened"] * n,
            "schema_version": pa.array([1] * n, pa.int32()), "aggregate_type": [aggregate_type] * n,
            "aggregate_id": ["s-1"] * n, "aggregate_version": pa.array(versions, pa.int64()),
            "occurred_at": pa.array([T0] * n, pa.timestamp("us", tz="UTC")), "data": ["{}"] * n, "metadata": ["{}"] * n,
        })

    store = empty_lake._store
    with pytest.raises(InvalidArgumentError, match="stream 's-1': imported versions start at 3 but the stream is at version 0"):
        store.import_table(table("BankAccount", [3, 4]), check_event_ids=False)
    store.import_table(table("BankAccount", [1, 2]), check_event_ids=False)
    with pytest.raises(InvalidArgumentError, match=r"start at 3 but the stream is at version 2 \(type 'BankAccount'\)"):
        store.import_table(table("User", [3]), check_event_ids=False)
    assert empty_lake.current_version("s-1") == 2


def test_bulk_import_takes_rows_in_any_order_with_an_order_column(empty_lake: Lake) -> None:
    """``order=`` names the commit order of rows handed over in another order (ingest passes them sorted by
    stream); positions follow it, and each type's file is sorted by stream and version."""
    import pyarrow.parquet as pq

    rows = [("b", "User", 1, 3), ("b", "User", 2, 5), ("a", "BankAccount", 1, 4), ("c", "BankAccount", 1, 1),
            ("c", "BankAccount", 2, 2)]
    frame = pl.DataFrame({
        "event_id": [f"{a}-{v}" for a, _, v, _ in rows], "event_type": ["Happened"] * 5,
        "schema_version": pl.Series([1] * 5, dtype=pl.Int32), "aggregate_type": [t for _, t, _, _ in rows],
        "aggregate_id": [a for a, _, _, _ in rows], "aggregate_version": [v for _, _, v, _ in rows],
        "occurred_at": pl.Series([T0] * 5).dt.cast_time_unit("us"), "data": ["{}"] * 5, "metadata": ["{}"] * 5,
        "commit": [c for *_, c in rows],
    })
    store = empty_lake._store
    store.import_table(frame, check_event_ids=False, order="commit")
    events = empty_lake.events()
    assert events["event_id"].to_list() == ["c-1", "c-2", "b-1", "a-1", "b-2"]
    assert events["position"].to_list() == [1, 2, 3, 4, 5]
    for entry in store.manifest().files:
        stored = pq.read_table(store.folder / entry.path)
        keys = list(zip(stored["aggregate_id"].to_pylist(), stored["aggregate_version"].to_pylist()))
        assert keys == sorted(keys) and set(stored["aggregate_type"].to_pylist()) == {entry.aggregate_type}
    with pytest.raises(InvalidArgumentError, match="not contiguous"):
        store.import_table(frame.with_columns(pl.lit(2, pl.Int64).alias("aggregate_version"),
                                              (pl.col("event_id") + "x").alias("event_id"),
                                              pl.Series([1, 2, 3, 5, 4]).alias("commit")), order="commit")
