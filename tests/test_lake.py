"""The event lake: appends, optimistic concurrency, idempotent retries, reads, SQL, sealing, check."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from es_analytics import ConcurrencyError, DuplicateEventError, Event, Lake
from es_analytics.errors import (
    EsAnalyticsError,
    InvalidArgumentError,
    NotALakeError,
    QueryError,
    ReadOnlyQueryError,
)

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def lake(tmp_path: Path):
    with Lake.open(tmp_path / "lake") as opened:
        yield opened


def deposit(n: int, amount: int = 10, **kw: object) -> Event:
    return Event("MoneyDeposited", {"amount": amount}, event_id=f"e-{n}", occurred_at=T0 + timedelta(hours=n), **kw)


def test_append_returns_new_version_and_events_come_back_in_order(lake: Lake) -> None:
    assert lake.append("acc-1", [deposit(1), deposit(2)], expected_version=0, aggregate_type="BankAccount") == 2
    assert lake.append("acc-1", [deposit(3)], expected_version=2, aggregate_type="BankAccount") == 3
    frame = lake.events("acc-1")
    assert frame.columns == [
        "position", "event_id", "event_type", "schema_version", "aggregate_type", "aggregate_id",
        "aggregate_version", "occurred_at", "recorded_at", "data", "metadata",
    ]
    assert frame["aggregate_version"].to_list() == [1, 2, 3]
    assert frame["event_id"].to_list() == ["e-1", "e-2", "e-3"]
    assert frame["position"].to_list() == [1, 2, 3]
    assert [json.loads(d)["amount"] for d in frame["data"]] == [10, 10, 10]
    assert frame["occurred_at"].to_list() == [T0 + timedelta(hours=n) for n in (1, 2, 3)]
    assert lake.current_version("acc-1") == 3
    assert lake.current_version("unknown") == 0


def test_concurrency_error_carries_expected_and_actual_and_appends_nothing(lake: Lake) -> None:
    lake.append("acc-1", [deposit(1)], expected_version=0, aggregate_type="BankAccount")
    with pytest.raises(ConcurrencyError, match="^Concurrency conflict: expected version 0, but current version is 1") as info:
        lake.append("acc-1", [deposit(2)], expected_version=0, aggregate_type="BankAccount")
    assert (info.value.expected, info.value.actual, info.value.aggregate_id) == (0, 1, "acc-1")
    assert lake.events("acc-1").height == 1
    assert lake.append("acc-1", [deposit(3)], expected_version=None, aggregate_type="BankAccount") == 2


@pytest.mark.parametrize("sealed", [False, True], ids=["hot", "sealed"])
def test_retry_of_a_stored_append_returns_the_same_version_and_stores_nothing(lake: Lake, sealed: bool) -> None:
    batch = [deposit(1), deposit(2)]
    assert lake.append("acc-1", batch, expected_version=0, aggregate_type="BankAccount") == 2
    lake.append("acc-1", [deposit(3)], expected_version=2, aggregate_type="BankAccount")
    if sealed:
        lake.seal()
    assert lake.append("acc-1", batch, expected_version=0, aggregate_type="BankAccount") == 2
    assert lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 3
    with pytest.raises(DuplicateEventError, match="'e-2' is already stored with other content") as info:
        lake.append("acc-1", [deposit(2, amount=99)], expected_version=None, aggregate_type="BankAccount")
    assert info.value.event_id == "e-2"
    with pytest.raises(DuplicateEventError):
        lake.append("acc-2", [deposit(1)], expected_version=0, aggregate_type="BankAccount")
    assert lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 3


def test_a_batch_mixing_stored_and_new_events_is_refused(lake: Lake) -> None:
    lake.append("acc-1", [deposit(1)], expected_version=0, aggregate_type="BankAccount")
    with pytest.raises(DuplicateEventError, match="mixes events already stored"):
        lake.append("acc-1", [deposit(1), deposit(2)], expected_version=None, aggregate_type="BankAccount")
    assert lake.current_version("acc-1") == 1


def test_stream_belongs_to_one_aggregate_type(lake: Lake) -> None:
    lake.append("x-1", [deposit(1)], expected_version=0, aggregate_type="BankAccount")
    with pytest.raises(InvalidArgumentError, match="is a 'BankAccount', not a 'User'"):
        lake.append("x-1", [deposit(2)], expected_version=1, aggregate_type="User")


BAD_APPENDS = [
    ({"aggregate_id": ""}, "aggregate_id must be a non-empty string"),
    ({"aggregate_id": 5}, "aggregate_id must be a non-empty string"),
    ({"aggregate_id": "a\x00b"}, "control characters"),
    ({"aggregate_type": "Bank Account"}, "aggregate_type must be an identifier"),
    ({"aggregate_type": "../etc"}, "aggregate_type must be an identifier"),
    ({"expected_version": -1}, "expected_version must be a non-negative int"),
    ({"expected_version": 1.0}, "expected_version must be a non-negative int"),
    ({"expected_version": True}, "expected_version must be a non-negative int"),
    ({"events": []}, "events is empty"),
    ({"events": [{"event_type": "X"}]}, "events must hold Event objects"),
    ({"events": "nope"}, "events must be a list of Event"),
    ({"events": [deposit(1), deposit(1)]}, "repeat an event_id"),
]


@pytest.mark.parametrize(("change", "message"), BAD_APPENDS)
def test_bad_appends_raise_typed_errors_and_change_nothing(lake: Lake, change: dict, message: str) -> None:
    args = {"aggregate_id": "acc-1", "events": [deposit(1)], "expected_version": 0, "aggregate_type": "BankAccount"}
    args.update(change)
    with pytest.raises(InvalidArgumentError, match=message):
        lake.append(args.pop("aggregate_id"), args.pop("events"), **args)
    assert lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 0


class _ThirtyHours(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=30)


BAD_EVENTS = [
    ({"occurred_at": datetime(2024, 3, 1, 9)}, "occurred_at must be timezone-aware"),
    ({"data": {"x": float("nan")}}, "cannot represent"),
    ({"data": {"x": float("inf")}}, "cannot represent"),
    ({"data": {"x": {1, 2}}}, "holds a set"),
    ({"data": {"x": b"bytes"}}, "holds a bytes"),
    ({"data": {1: "a"}}, "non-string key"),
    ({"data": {"x": "\ud800"}}, "lone surrogate"),
    ({"data": '{"a": 1, "a": 2}'}, "holds the key 'a' twice"),
    ({"data": '{"a": NaN}'}, "not valid JSON"),
    ({"data": "[1, 2]"}, "must be a JSON object"),
    ({"data": {"x": "y" * 1_100_000}}, "larger than"),
    ({"metadata": {"x": {2, 3}}}, "metadata holds a set"),
    ({"event_id": ""}, "event_id must be a non-empty string"),
    ({"event_type": ""}, "event_type must be a non-empty string"),
    ({"event_type": "   "}, "event_type must not be only white space"),
    ({"event_type": "Sent\u202e"}, "event_type must not hold control characters or invisible"),
    ({"event_type": "x" * 256}, "event_type is longer than 255"),
    ({"event_type": 5}, "event_type must be a non-empty string"),
    ({"schema_version": 0}, "schema_version must be a positive int"),
    ({"schema_version": True}, "schema_version must be a positive int"),
    ({"data": {"x": 10**4000}}, "integer of 13288 bits"),
    ({"data": {"x": -(2**63) - 1}}, "outside"),
    ({"data": '{"x": ' + "7" * 5000 + "}"}, "not valid JSON"),
    ({"occurred_at": datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))}, "outside the years"),
    ({"occurred_at": datetime(2024, 1, 1, tzinfo=_ThirtyHours())}, "time zone Python cannot use"),
    ({"event_id": "id\u202e"}, "invisible formatting"),
]


@pytest.mark.parametrize(("change", "message"), BAD_EVENTS)
def test_bad_events_are_refused_when_made(change: dict, message: str) -> None:
    args = {"event_type": "MoneyDeposited", "data": {"amount": 1}}
    args.update(change)
    with pytest.raises(InvalidArgumentError, match=message):
        Event(args.pop("event_type"), args.pop("data"), **args)


def test_too_deep_json_is_refused() -> None:
    deep: dict = {}
    node = deep
    for _ in range(80):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(InvalidArgumentError, match="nested deeper than 64"):
        Event("X", deep)
    with pytest.raises(InvalidArgumentError, match="nested deeper than 64"):
        Event("X", '{"x":' * 3000 + "1" + "}" * 3000)


def test_events_filters(lake: Lake) -> None:
    lake.append("acc-1", [deposit(1), deposit(2), Event("MoneyWithdrawn", {"amount": 1}, event_id="w-3",
                occurred_at=T0 + timedelta(hours=3))], expected_version=0, aggregate_type="BankAccount")
    lake.append("acc-2", [deposit(4)], expected_version=0, aggregate_type="BankAccount")
    for aggregate_id in ("acc-1", None):
        assert lake.events(aggregate_id, from_version=1).filter(pl.col("aggregate_id") == "acc-1")[
            "aggregate_version"].to_list() == [2, 3]
        assert lake.events(aggregate_id, types=["MoneyWithdrawn"])["event_id"].to_list() == ["w-3"]
        assert lake.events(aggregate_id, types="MoneyWithdrawn")["event_id"].to_list() == ["w-3"]
        window = lake.events(aggregate_id, since=T0 + timedelta(hours=2), until=T0 + timedelta(hours=3))
        assert window["event_id"].to_list() == ["e-2", "w-3"]
    future = datetime.now(timezone.utc) + timedelta(days=1)
    assert lake.events(known_at=future).height == 4
    assert lake.events(known_at=T0).height == 0
    with pytest.raises(InvalidArgumentError, match="since must be timezone-aware"):
        lake.events(since=datetime(2024, 1, 1))
    with pytest.raises(InvalidArgumentError, match="types must be"):
        lake.events(types=[1])
    with pytest.raises(InvalidArgumentError, match="from_version"):
        lake.events("acc-1", from_version=-2)


def test_sealed_and_hot_reads_agree(lake: Lake) -> None:
    for n in range(1, 30):
        lake.append(f"acc-{n % 4}", [deposit(n)], expected_version=None, aggregate_type="BankAccount")
    before_all, before_one = lake.events(), lake.events("acc-1")
    result = lake.seal()
    assert result["sealed_events"] == 29
    assert_frame_equal(lake.events(), before_all)
    assert_frame_equal(lake.events("acc-1"), before_one)
    lake.append("acc-1", [deposit(100)], expected_version=None, aggregate_type="BankAccount")
    assert lake.events("acc-1")["event_id"].to_list()[-1] == "e-100"
    assert lake.events().height == 30


def test_recorded_at_is_monotonic_with_position(lake: Lake) -> None:
    for n in range(20):
        lake.append(f"a{n % 3}", [deposit(n)], expected_version=None, aggregate_type="BankAccount")
    frame = lake.events()
    assert frame["position"].is_sorted() and frame["recorded_at"].is_sorted()


def test_sql_binds_parameters_and_refuses_changes(lake: Lake) -> None:
    lake.append("acc-1", [deposit(1), deposit(2)], expected_version=0, aggregate_type="BankAccount")
    result = lake.sql("SELECT event_id FROM events WHERE aggregate_version = ? ORDER BY 1", [2])
    assert result["event_id"].to_list() == ["e-2"]
    assert lake.sql("SELECT $v AS v", {"v": "'; DROP TABLE x; --"})["v"].item() == "'; DROP TABLE x; --"
    for statement in ("DROP VIEW events", "CREATE TABLE t AS SELECT 1", "COPY (SELECT 1) TO 'x.csv'",
                      "ATTACH 'x.db'", "INSTALL httpfs", "SET threads = 1", "PRAGMA version"):
        with pytest.raises(ReadOnlyQueryError, match="only reads"):
            lake.sql(statement)
    with pytest.raises(QueryError, match="exactly one statement"):
        lake.sql("SELECT 1; SELECT 2")
    with pytest.raises(QueryError):
        lake.sql("SELECT nope FROM events")
    assert lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 2


def test_safe_sql_blocks_reading_outside_files(tmp_path: Path) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    with Lake.open(tmp_path / "lake", safe_sql=True) as lake:
        lake.append("acc-1", [deposit(1)], expected_version=0, aggregate_type="BankAccount")
        lake.seal()
        lake.append("acc-1", [deposit(2)], expected_version=1, aggregate_type="BankAccount")
        assert lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 2
        with pytest.raises(ReadOnlyQueryError, match="outside the lake"):
            lake.sql("SELECT * FROM read_csv(?)", [str(outside)])
    with Lake.open(tmp_path / "lake") as lake:
        assert lake.sql("SELECT * FROM read_csv(?)", [str(outside)])["a"].to_list() == [1]


def test_open_refuses_a_folder_that_is_not_a_lake(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotALakeError, match="is not an event lake"):
        Lake.open(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotALakeError, match="is a file"):
        Lake.open(tmp_path / "file")
    with pytest.raises(InvalidArgumentError, match="durability"):
        Lake.open(tmp_path / "new", durability="sometimes")  # type: ignore[arg-type]


def test_every_error_is_an_es_analytics_error() -> None:
    from es_analytics import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), EsAnalyticsError)
    assert issubclass(errors.InvalidArgumentError, ValueError)
    assert issubclass(errors.LakeBusyError, TimeoutError)


def test_reopen_keeps_everything_and_positions_never_reused(tmp_path: Path) -> None:
    with Lake.open(tmp_path / "l") as lake:
        lake.append("a", [deposit(1), deposit(2)], expected_version=0, aggregate_type="T")
        lake.seal()
        lake.append("a", [deposit(3)], expected_version=2, aggregate_type="T")
    with Lake.open(tmp_path / "l") as lake:
        lake.seal()
        lake.append("b", [deposit(4)], expected_version=0, aggregate_type="T")
        frame = lake.events()
        assert frame["position"].to_list() == [1, 2, 3, 4]
        assert lake.current_version("a") == 3
        assert lake.check()["ok"]


@pytest.mark.parametrize("background", [False, True])
def test_auto_seal_moves_events_to_parquet(tmp_path: Path, background: bool) -> None:
    with Lake.open(tmp_path / "l", auto_seal_rows=10, seal_in_background=background) as lake:
        for n in range(25):
            lake.append(f"s{n % 5}", [deposit(n)], expected_version=None, aggregate_type="T")
            assert lake.events().height == n + 1  # every acknowledged event is readable, sealing or not
        lake._store.wait_for_seal()
        assert lake._store.manifest().sealed_position >= (20 if not background else 10)
        assert lake.events().height == 25
        assert list((tmp_path / "l" / "events" / "aggregate_type=T").glob("*.parquet"))
        assert lake.check()["ok"]


def test_a_failing_background_seal_is_logged_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from es_analytics.store.sealed import ParquetSealedTier

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    with Lake.open(tmp_path / "l", auto_seal_rows=5, seal_in_background=True) as lake:
        monkeypatch.setattr(ParquetSealedTier, "write", broken)
        for n in range(12):
            lake.append(f"s{n % 3}", [deposit(n)], expected_version=None, aggregate_type="T")
        lake._store.wait_for_seal()
        assert isinstance(lake._store.seal_error, OSError)
        assert "background seal" in caplog.text
        assert lake._store.manifest().sealed_position == 0
        assert lake.events().height == 12
        monkeypatch.undo()
        assert lake.seal()["sealed_events"] == 12
        assert lake.check()["ok"]


def test_compaction_keeps_every_event_and_point_reads(tmp_path: Path) -> None:
    with Lake.open(tmp_path / "l", auto_seal_rows=0) as lake:
        for n in range(40):
            lake.append(f"s{n % 7}", [deposit(n)], expected_version=None, aggregate_type="T")
            if n % 5 == 4:
                lake.seal()
        before, one = lake.events(), lake.events("s3")
        assert lake.compact() == ["T"]
        assert [f.level for f in lake._store.manifest().files] == [1]
        assert_frame_equal(lake.events(), before)
        assert_frame_equal(lake.events("s3"), one)
        assert lake.check()["ok"]


def test_files_replaced_by_compaction_stay_for_a_grace_period(tmp_path: Path) -> None:
    with Lake.open(tmp_path / "l", auto_seal_rows=0) as lake:
        for n in range(6):
            lake.append("s", [deposit(n)], expected_version=None, aggregate_type="T")
            lake.seal()
        old = [tmp_path / "l" / f.path for f in lake._store.manifest().files]
        lake.compact()
        assert all(p.exists() for p in old)  # a reader that started before may still use them
        assert {str(p.relative_to(tmp_path / "l")) for p in old} == {p for p, *_ in lake._store.manifest().retired}
        lake._store.retire_grace_seconds = 0
        lake.seal()
        assert not any(p.exists() for p in old)
        assert lake._store.manifest().retired == ()
        assert lake.events("s").height == 6


def test_retired_files_are_deleted_as_soon_as_no_reader_holds_them(tmp_path: Path) -> None:
    path = tmp_path / "l"
    with Lake.open(path, auto_seal_rows=0) as lake, Lake.open(path, auto_seal_rows=0) as reader:
        lake._store.retire_grace_seconds = 0
        for n in range(6):
            lake.append("s", [deposit(n)], expected_version=None, aggregate_type="T")
            lake.seal()
        assert reader.sql("SELECT count(*) AS n FROM events")["n"].item() == 6  # its view reads these files
        old = [path / f.path for f in lake._store.manifest().files]
        lake.compact()
        lake.seal()
        assert all(p.exists() for p in old)  # the other handle's snapshot still lists them
        assert reader.sql("SELECT count(*) AS n FROM events")["n"].item() == 6  # it moves to the new files
        lake.seal()
        assert not any(p.exists() for p in old)
        assert lake._store.manifest().retired == ()
        assert_frame_equal(reader.events("s"), lake.events("s"))
        assert lake.check()["ok"]


def test_automatic_compaction_rewrites_new_files_not_the_whole_type(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from es_analytics.store import engine

    monkeypatch.setattr(engine, "COMPACT_TARGET_ROWS", 100)
    with Lake.open(tmp_path / "l", auto_seal_rows=0) as lake:
        lake._store.compact_after_files = 3
        for n in range(300):
            lake.append(f"s{n % 30}", [deposit(n)], expected_version=None, aggregate_type="T")
        lake.seal()
        lake.compact()
        big = {f.path for f in lake._store.manifest().files}
        assert len(big) == 3 and all(f.level == 1 for f in lake._store.manifest().files)
        for round_ in range(3):  # three small seals: the third makes three level-0 files, which are merged
            for n in range(10):
                lake.append(f"new{n}", [deposit(1000 + 10 * round_ + n)], expected_version=None, aggregate_type="T")
            lake.seal()
        files = lake._store.manifest().files
        assert big <= {f.path for f in files}  # the big files were not rewritten
        assert [f.level for f in files if f.path not in big] == [1]
        assert sum(f.rows for f in files) == 330
        assert lake.events().height == 330 and lake.events("new3").height == 3
        assert lake.check()["ok"]


def test_check_reports_damage_it_cannot_repair(tmp_path: Path) -> None:
    with Lake.open(tmp_path / "l") as lake:
        lake.append("s", [deposit(1), deposit(2)], expected_version=0, aggregate_type="T")
        lake.seal()
        entry = lake._store.manifest().files[0]
        data = (tmp_path / "l" / entry.path).read_bytes()
        (tmp_path / "l" / entry.path).write_bytes(data[: len(data) // 2])
        report = lake.check(repair=True)
        assert not report["ok"]
        details = " ".join(p["detail"] for p in report["problems"])
        assert "no readable Parquet footer" in details and "bytes, the manifest says" in details
        assert (tmp_path / "l" / entry.path).exists()  # never deleted: that would lose history


def test_seal_hooks_see_new_files_and_cannot_break_a_seal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from es_analytics.store import engine

    seen: list[list[str]] = []

    def record(folder: Path, files: object) -> None:
        seen.append(list(files))  # type: ignore[call-overload]

    def broken(folder: Path, files: object) -> None:
        raise RuntimeError("cache disk full")

    engine.SEAL_HOOKS.extend([record, broken])
    try:
        with Lake.open(tmp_path / "l") as lake:
            lake.append("s", [deposit(1)], expected_version=0, aggregate_type="T")
            lake.seal()
            assert seen == [[f.path for f in lake._store.manifest().files]]
            assert "cache disk full" in caplog.text
            assert lake.events("s").height == 1
            lake.seal()  # nothing new: hooks are not called
            assert len(seen) == 1
    finally:
        engine.SEAL_HOOKS.remove(record)
        engine.SEAL_HOOKS.remove(broken)


def test_every_read_path_returns_utc_times(lake: Lake) -> None:
    lake.append("a", [deposit(1)], expected_version=0, aggregate_type="T")
    for _ in range(2):
        frames = [lake.events(), lake.events("a"), lake.sql("SELECT occurred_at, recorded_at FROM events")]
        for frame in frames:
            assert frame.schema["occurred_at"] == pl.Datetime("us", "UTC")
            assert frame.schema["recorded_at"] == pl.Datetime("us", "UTC")
        assert lake.sql("SELECT hour(occurred_at) AS h FROM events")["h"].item() == (T0 + timedelta(hours=1)).hour
        lake.seal()


@pytest.mark.parametrize("sealed", [False, True], ids=["hot", "sealed"])
def test_bulk_import_refuses_a_known_event_id_and_writes_nothing(lake: Lake, sealed: bool) -> None:
    import pyarrow as pa

    lake.append("acc-1", [deposit(1)], expected_version=0, aggregate_type="BankAccount")
    if sealed:
        lake.seal()
    table = pa.table({
        "event_id": ["fresh", "e-1"], "event_type": ["MoneyDeposited"] * 2, "schema_version": pa.array([1, 1], pa.int32()),
        "aggregate_type": ["BankAccount"] * 2, "aggregate_id": ["acc-9", "acc-9"], "aggregate_version": [1, 2],
        "occurred_at": pa.array([T0, T0], pa.timestamp("us", tz="UTC")), "data": ["{}", "{}"], "metadata": ["{}", "{}"],
    })
    with pytest.raises(InvalidArgumentError, match="event_id 'e-1' is already in the lake"):
        lake._store.import_table(table)
    assert lake.events()["event_id"].to_list() == ["e-1"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12) | st.text(st.characters(max_codepoint=0x7f), max_size=12)
       | st.text(st.sampled_from(" e\u0301\u00e9\u202e\u200b\u2028\u00ad\x85a"), max_size=6))
def test_id_checks_accept_exactly_the_documented_ids(value: str) -> None:
    """Non-empty, not only white space, no character of the Unicode categories Cc, Cf, Zl, Zp (controls,
    bidi and zero-width formatting, line separators), valid Unicode; returned in NFC: the ASCII shortcut
    of ``check_aggregate_id`` agrees with that definition for any text."""
    import unicodedata

    from es_analytics.events import check_aggregate_id

    try:
        value.encode("utf-8")
        encodable = True
    except UnicodeEncodeError:
        encodable = False
    expected = (bool(value) and not value.isspace() and encodable
                and not any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in value))
    try:
        checked = check_aggregate_id(value)
        accepted = True
    except InvalidArgumentError:
        accepted = False
    assert accepted == expected
    if accepted:
        assert checked == unicodedata.normalize("NFC", value)
        assert check_aggregate_id(unicodedata.normalize("NFD", value)) == checked  # twins are one id


def test_look_alike_ids_are_one_stream_and_invisible_ones_are_refused(lake: Lake) -> None:
    lake.append("caf\u00e9", [deposit(1)], expected_version=0, aggregate_type="BankAccount")
    with pytest.raises(ConcurrencyError):  # the NFD spelling of the same id is the same stream
        lake.append("cafe\u0301", [deposit(2)], expected_version=0, aggregate_type="BankAccount")
    assert lake.events("cafe\u0301")["aggregate_id"].to_list() == ["caf\u00e9"]
    for bad in ("   ", "acc\u202e1", "a\u2028b", "zero\u200bwidth", "\u2066x\u2069"):
        with pytest.raises(InvalidArgumentError, match="white space|invisible|control"):
            lake.append(bad, [deposit(3)], expected_version=0, aggregate_type="BankAccount")
    assert lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 1


def test_an_aggregate_type_is_checked_on_every_call_even_after_valid_ones(tmp_path: Path) -> None:
    from es_analytics.events import check_aggregate_type

    assert check_aggregate_type("BankAccount") == "BankAccount"
    assert check_aggregate_type("BankAccount") == "BankAccount"  # answered from the set of checked types
    for bad in ("Bank Account", "../x", "", 5, None, "BankAccount\n"):
        with pytest.raises(InvalidArgumentError, match="aggregate_type must be an identifier"):
            check_aggregate_type(bad)
