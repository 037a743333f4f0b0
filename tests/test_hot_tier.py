"""The hot tier's internals that appends and seals rely on: ids, positions, columnar reads, old layouts."""

from __future__ import annotations

import sqlite3
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from es_analytics import DuplicateEventError, Event, Lake
from es_analytics.errors import InvalidArgumentError
from es_analytics.events import new_event_id
from es_analytics.store.hot import HOT_COLUMNS, SQLiteHotTier, event_id_hash, hot_rows_to_arrow

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)

# The hot events table as lakes made before explicit positions and stored id hashes had it.
LEGACY_EVENTS = """
CREATE TABLE events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    UNIQUE (aggregate_id, aggregate_version)
)
"""


def test_new_event_ids_are_version_7_uuids_in_time_order() -> None:
    first = new_event_id()
    time.sleep(0.002)
    later = [new_event_id() for _ in range(1000)]
    parsed = uuid.UUID(first)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert str(parsed) == first
    assert len(set(later)) == 1000
    assert all(first < other for other in later)  # a later millisecond sorts later
    millis = uuid.UUID(later[-1]).int >> 80
    assert abs(millis - time.time_ns() // 1_000_000) < 5_000
    assert Event("Ticked", {}).event_id[14] == "7"  # the default id of an Event


def test_a_lake_with_the_old_hot_table_keeps_working_and_never_reuses_a_position(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    Lake.open(path).close()
    con = sqlite3.connect(path / "hot.sqlite")
    con.execute("DROP TABLE events")
    con.execute(LEGACY_EVENTS)
    con.execute(  # an event appended before the upgrade: it has no stored id hash
        "INSERT INTO events (event_id, event_type, schema_version, aggregate_type, aggregate_id, aggregate_version, "
        "occurred_at, recorded_at, data, metadata) VALUES ('e0', 'Ticked', 1, 'Clock', 'a', 1, ?, ?, ?, '{}')",
        (int(T0.timestamp() * 1e6), int(T0.timestamp() * 1e6), '{"n":0}'),
    )
    con.execute("INSERT INTO streams VALUES ('a', 'Clock', 1)")
    con.commit()
    con.close()
    with Lake.open(path, auto_seal_rows=0) as lake:
        lake.append("a", [Event("Ticked", {"n": n}, event_id=f"e{n}", occurred_at=T0) for n in (1, 2)],
                    expected_version=1, aggregate_type="Clock")
        lake.seal()  # hot rows are gone; the sequence must not start again at 1
        lake.append("a", [Event("Ticked", {"n": 3}, event_id="e3", occurred_at=T0)], expected_version=3,
                    aggregate_type="Clock")
        assert lake.events()["position"].to_list() == [1, 2, 3, 4]
        # the id sealed from a row without a stored hash is indexed too: a retry is recognised ...
        assert lake.append("a", [Event("Ticked", {"n": 0}, event_id="e0", occurred_at=T0)], expected_version=None,
                           aggregate_type="Clock") == 1
        # ... and a reuse with other content refused
        with pytest.raises(DuplicateEventError):
            lake.append("b", [Event("Ticked", {"n": 9}, event_id="e0")], expected_version=0, aggregate_type="Clock")
        assert lake.check()["ok"]
    columns = {r[1] for r in sqlite3.connect(path / "hot.sqlite").execute("PRAGMA table_info(events)")}
    assert "id_hash" in columns


def test_a_seal_indexes_the_sealed_ids_from_their_stored_hashes(tmp_path: Path) -> None:
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        events = [Event("Ticked", {"n": n}) for n in range(50)]
        lake.append("a", events, expected_version=0, aggregate_type="Clock")
        lake.seal()
        con = lake._store.hot.con
        stored = dict(con.execute("SELECT position, id_hash FROM sealed_ids").fetchall())
        assert stored == {n + 1: event_id_hash(str(e.event_id)) for n, e in enumerate(events)}
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 0


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_text, st.integers(-2**62, 2**62), st.integers(0, 2**40)), min_size=0, max_size=30))
def test_columnar_hot_reads_equal_row_reads(tmp_path_factory: pytest.TempPathFactory, rows: list) -> None:
    """Any text, including the separator the columnar read splits on, comes back exactly."""
    hot = SQLiteHotTier(tmp_path_factory.mktemp("hot") / "hot.sqlite")
    try:
        with hot.write():
            hot.con.executemany(
                f"INSERT INTO events ({HOT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(n + 1, f"id-{n}", "T", 1, "Agg", f"agg{text}", n + 1, micros, micros, text, f"{number}")
                 for n, (text, number, micros) in enumerate(rows)],
            )
        with hot.read():
            columnar = hot.arrow_after(0, 1_000)
            by_rows = hot_rows_to_arrow(hot.rows_after(0))
            assert hot.arrow_after(len(rows) // 2, 5).equals(hot_rows_to_arrow(hot.rows_after(len(rows) // 2, limit=5)))
        assert columnar.equals(by_rows)
        assert columnar.num_rows == len(rows)
        assert isinstance(columnar, pa.Table)
    finally:
        hot.close()


def _stored(lake: Lake) -> list[tuple]:
    frame = lake.events().drop("recorded_at")
    return sorted(frame.rows())


@pytest.mark.parametrize("max_rows", [1_000_000, 60, 7])
def test_a_seal_of_rows_kept_in_memory_writes_what_was_committed(tmp_path: Path, max_rows: int) -> None:
    """Rows a handle appended are sealed from memory, in whole or in slices, exactly as committed."""
    with Lake.open(tmp_path / "lake", auto_seal_rows=10_000) as lake:
        lake.append("big", [Event("Ticked", {"n": n}, occurred_at=T0) for n in range(150)],
                    expected_version=0, aggregate_type="Clock")  # kept as Arrow
        for n in range(5):  # kept as row tuples
            lake.append(f"small-{n % 2}", [Event("Ticked", {"n": n, "k": k}, occurred_at=T0) for k in range(2)],
                        expected_version=None, aggregate_type="Clock")
        before = _stored(lake)
        assert lake._store.hot.cached_after(0, 160, 1_000) is not None
        lake._store.seal(max_rows=max_rows)
        assert lake._store.manifest().sealed_position == 160
        assert lake._store.hot.cached_after(160, 160, 1_000) is None  # nothing left in memory
        assert _stored(lake) == before
        assert lake.check()["ok"]


def test_single_appends_to_known_streams_are_read_back_by_the_seal(tmp_path: Path) -> None:
    """The one-statement single append keeps no copy for the seal: the kept rows stop covering the hot
    tier, and the seal reads every row back instead, writing exactly what was committed."""
    with Lake.open(tmp_path / "lake", auto_seal_rows=10_000) as lake:
        lake.append("big", [Event("Ticked", {"n": n}, occurred_at=T0) for n in range(150)],
                    expected_version=0, aggregate_type="Clock")
        hot = lake._store.hot
        assert hot.cached_after(0, 150, 1_000) is not None
        for n in range(4):  # the stream is known: one statement each
            lake.append("big", [Event("Ticked", {"n": 150 + n}, occurred_at=T0)], expected_version=150 + n,
                        aggregate_type="Clock")
        assert hot.cached_after(0, 154, 1_000) is None
        lake.append("big", [Event("Ticked", {"n": n}, occurred_at=T0) for n in range(154, 254)],
                    expected_version=154, aggregate_type="Clock")  # kept, after a gap: not enough alone
        assert hot.cached_after(0, 254, 1_000) is None
        before = _stored(lake)
        lake._store.seal(max_rows=100)  # in slices
        assert lake._store.manifest().sealed_position == 254
        assert _stored(lake) == before
        assert lake.events("big")["aggregate_version"].to_list() == list(range(1, 255))
        assert lake.check()["ok"]


def test_interleaved_writers_make_a_seal_read_the_rows_back(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    with Lake.open(path, auto_seal_rows=0) as first, Lake.open(path, auto_seal_rows=0) as second:
        first._store.hot.cache_limit = second._store.hot.cache_limit = 1_000
        first.append("a", [Event("Ticked", {"n": 1}, occurred_at=T0)], expected_version=0, aggregate_type="Clock")
        second.append("b", [Event("Ticked", {"n": 2}, occurred_at=T0)], expected_version=0, aggregate_type="Clock")
        first.append("a", [Event("Ticked", {"n": 3}, occurred_at=T0)], expected_version=1, aggregate_type="Clock")
        # the first handle holds positions 1 and 3 only: it must not answer for 1..3 from memory
        assert first._store.hot.cached_after(0, 3, 100) is None
        before = _stored(first)
        first._store.seal()
        assert _stored(second) == before
        assert sorted(first.events()["position"].to_list()) == [1, 2, 3]


def test_the_kept_rows_never_exceed_their_limit(tmp_path: Path) -> None:
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        hot = lake._store.hot
        hot.cache_limit = 250
        for n in range(3):
            lake.append("a", [Event("Ticked", {"n": n, "k": k}, occurred_at=T0) for k in range(100)],
                        expected_version=None, aggregate_type="Clock")
        assert hot._cached_rows <= 250
        before = _stored(lake)
        lake._store.seal()
        assert _stored(lake) == before


def test_stream_versions_come_from_hot_rows_until_a_seal_records_them(tmp_path: Path) -> None:
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        con = lake._store.hot.con
        lake.append("a", [Event("Ticked", {"n": n}) for n in range(3)], expected_version=0, aggregate_type="Clock")
        assert con.execute("SELECT count(*) FROM streams").fetchone()[0] == 0  # an append writes no head row
        assert lake.current_version("a") == 3
        lake.seal()
        assert con.execute("SELECT aggregate_id, aggregate_type, version FROM streams").fetchall() == [("a", "Clock", 3)]
        lake.append("a", [Event("Ticked", {"n": 3})], expected_version=3, aggregate_type="Clock")
        lake.append("b", [Event("Ticked", {"n": 0})], expected_version=0, aggregate_type="Clock")
        heads = sorted(con.execute("SELECT * FROM stream_heads").fetchall())
        assert heads == [("a", "Clock", 4), ("b", "Clock", 1)]
        assert (lake.current_version("a"), lake.current_version("b"), lake.current_version("c")) == (4, 1, 0)
        with pytest.raises(InvalidArgumentError, match="is a .Clock."):
            lake.append("a", [Event("Ticked", {})], expected_version=4, aggregate_type="Other")
        lake.seal()
        assert sorted(con.execute("SELECT * FROM streams").fetchall()) == heads


def _tick(n: int) -> Event:
    return Event("Ticked", {"n": n}, occurred_at=T0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.sampled_from("ab"), st.sampled_from([None, None, 0, 1]),
                          st.integers(-1, 1)), min_size=1, max_size=30))
def test_handles_that_remember_heads_agree_with_the_lake(tmp_path_factory: pytest.TempPathFactory, steps: list) -> None:
    """Two handles of one lake append in turns, sometimes with a stale expected version, and either may
    seal (which removes hot rows): each one's remembered heads must never let a wrong version through or
    turn away a right one."""
    from es_analytics import ConcurrencyError

    path = tmp_path_factory.mktemp("lake")
    handles = [Lake.open(path, auto_seal_rows=0), Lake.open(path, auto_seal_rows=0)]
    truth = {"a": 0, "b": 0}
    try:
        for n, (who, stream, sealer, skew) in enumerate(steps):
            lake = handles[who]
            expected = truth[stream] + skew
            if expected < 0:
                expected = 0
            if expected == truth[stream]:
                assert lake.append(stream, [_tick(n)], expected_version=expected, aggregate_type="Clock") == expected + 1
                truth[stream] += 1
            else:
                with pytest.raises(ConcurrencyError) as caught:
                    lake.append(stream, [_tick(n)], expected_version=expected, aggregate_type="Clock")
                assert caught.value.actual == truth[stream]
            if sealer is not None:
                handles[sealer].seal()
            assert [h.current_version(stream) for h in handles] == [truth[stream]] * 2
        for stream, version in truth.items():
            assert handles[0].events(stream)["aggregate_version"].to_list() == list(range(1, version + 1))
        positions = handles[1].sql("SELECT position FROM events ORDER BY position")["position"].to_list()
        assert positions == list(range(1, sum(truth.values()) + 1))
    finally:
        for h in handles:
            h.close()


@pytest.mark.parametrize("sealed", [False, True])
def test_a_retry_through_the_one_statement_append_is_recognised(tmp_path: Path, sealed: bool) -> None:
    """The single-event path (a remembered head, one INSERT) must hand retries of hot or sealed events and
    reused ids to the full path."""
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        first = _tick(1)
        lake.append("a", [first], expected_version=0, aggregate_type="Clock")
        if sealed:
            lake.seal()
        lake.append("a", [_tick(2)], expected_version=1, aggregate_type="Clock")  # the head is remembered again
        hot = lake._store.hot
        assert hot._heads.get("a") == ("Clock", 2) and hot._seen_version is not None
        assert lake.append("a", [first], expected_version=None, aggregate_type="Clock") == 1  # a retry
        reused = Event("Ticked", {"n": 99}, event_id=first.event_id, occurred_at=T0)
        with pytest.raises(DuplicateEventError):
            lake.append("a", [reused], expected_version=2, aggregate_type="Clock")
        assert lake.events("a")["aggregate_version"].to_list() == [1, 2]
        assert lake.append("a", [_tick(3)], expected_version=2, aggregate_type="Clock") == 3


def test_a_handles_own_other_writes_make_it_read_heads_again(tmp_path: Path) -> None:
    """A bulk import through the same handle moves a stream's head without an append: the next single
    append must see the new head, not the remembered one."""
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        lake.append("a", [_tick(1)], expected_version=0, aggregate_type="Clock")
        assert lake._store.hot._heads.get("a") == ("Clock", 1)
        table = pa.table({
            "event_id": [new_event_id()], "event_type": ["Ticked"], "schema_version": pa.array([1], pa.int32()),
            "aggregate_type": ["Clock"], "aggregate_id": ["a"], "aggregate_version": [2],
            "occurred_at": pa.array([T0], pa.timestamp("us", tz="UTC")), "data": ['{"n": 2}'], "metadata": ["{}"],
        })
        lake._store.import_table(table)
        from es_analytics import ConcurrencyError

        with pytest.raises(ConcurrencyError) as caught:
            lake.append("a", [_tick(3)], expected_version=1, aggregate_type="Clock")
        assert caught.value.actual == 2
        assert lake.append("a", [_tick(3)], expected_version=2, aggregate_type="Clock") == 3
        assert lake.events("a")["aggregate_version"].to_list() == [1, 2, 3]


def test_a_head_remembered_before_another_handle_sealed_is_not_trusted(tmp_path: Path) -> None:
    """The other handle appends and seals, which deletes its hot row: only the raised sealed position
    tells this handle that its remembered head (version 1) is stale."""
    from es_analytics import ConcurrencyError

    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as mine, Lake.open(tmp_path / "lake", auto_seal_rows=0) as other:
        mine.append("a", [_tick(1)], expected_version=0, aggregate_type="Clock")
        other.append("a", [_tick(2)], expected_version=1, aggregate_type="Clock")
        other.seal()
        with pytest.raises(ConcurrencyError) as caught:
            mine.append("a", [_tick(3)], expected_version=1, aggregate_type="Clock")
        assert caught.value.actual == 2
        assert mine.append("b", [_tick(4)], expected_version=0, aggregate_type="Clock") == 1
        assert mine.sql("SELECT position FROM events ORDER BY position")["position"].to_list() == [1, 2, 3]
        assert mine.events("a")["aggregate_version"].to_list() == [1, 2]


@pytest.mark.parametrize("ids", ["made", "given"])
@pytest.mark.parametrize("then", ["nothing", "seal", "seal and append", "import"])
def test_a_one_event_append_never_reuses_a_position_another_handle_took(tmp_path: Path, then: str, ids: str) -> None:
    """This handle remembers stream "a" and the last position; another handle appends to another stream
    (and maybe seals, deleting its hot row, or imports). The one-statement append (of a made id, or of a
    given one through ``events_with_id``) must see that the next position is taken, hot or sealed, and take
    the full path: positions stay 1..n in commit order."""
    def tick(n: int) -> Event:
        return _tick(n) if ids == "made" else Event("Ticked", {"n": n}, event_id=f"given-{n}", occurred_at=T0)

    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as mine, Lake.open(tmp_path / "lake", auto_seal_rows=0) as other:
        mine.append("a", [tick(1)], expected_version=0, aggregate_type="Clock")
        mine.append("a", [tick(2)], expected_version=1, aggregate_type="Clock")
        other.append("b", [_tick(3)], expected_version=0, aggregate_type="Clock")
        expected_ids = ["a", "a", "b"]
        if then.startswith("seal"):
            other.seal()
        if then == "seal and append":
            other.append("b", [_tick(4)], expected_version=1, aggregate_type="Clock")
            expected_ids.append("b")
        if then == "import":
            other._store.import_table(pa.table({
                "event_id": [new_event_id()], "event_type": ["Ticked"], "schema_version": pa.array([1], pa.int32()),
                "aggregate_type": ["Clock"], "aggregate_id": ["c"], "aggregate_version": [1],
                "occurred_at": pa.array([T0], pa.timestamp("us", tz="UTC")), "data": ['{"n": 4}'], "metadata": ["{}"],
            }))
            expected_ids.append("c")
        assert mine.append("a", [tick(5)], expected_version=2, aggregate_type="Clock") == 3
        expected_ids.append("a")
        stored = mine.sql("SELECT position, aggregate_id, recorded_at FROM events ORDER BY position")
        assert stored["position"].to_list() == list(range(1, len(expected_ids) + 1))
        assert stored["aggregate_id"].to_list() == expected_ids
        assert stored["recorded_at"].is_sorted()
        assert mine.check()["ok"]
        _hot_ids_consistent(mine)


@pytest.mark.parametrize("how", ["same object", "pickled copy", "copy.copy", "deepcopy"])
@pytest.mark.parametrize("size", [1, 3])
def test_events_whose_ids_were_made_with_them_skip_the_sealed_probe_only_once(tmp_path: Path, how: str, size: int) -> None:
    """An event with a generated id may skip the look-up among sealed ids on its first append only. The
    same object again, or any copy made before that append (say, queued for a retry), must be recognised
    as a retry after a seal, not stored twice."""
    import copy
    import pickle

    events = [Event("Ticked", {"n": n}, occurred_at=T0) for n in range(size)]
    copies = {
        "same object": lambda: events,
        "pickled copy": lambda: pickle.loads(pickle.dumps(events)),
        "copy.copy": lambda: [copy.copy(e) for e in events],
        "deepcopy": lambda: copy.deepcopy(events),
    }
    again = copies[how]()  # taken before the first append
    assert [e == c for e, c in zip(events, again)] == [True] * size
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        lake.append("warm", [_tick(0)], expected_version=0, aggregate_type="Clock")  # remembered heads
        assert lake.append("a", events, expected_version=0, aggregate_type="Clock") == size
        lake.seal()
        lake.append("a", [_tick(9)], expected_version=size, aggregate_type="Clock")
        assert lake.append("a", again, expected_version=None, aggregate_type="Clock") == size
        assert lake.append("a", events, expected_version=None, aggregate_type="Clock") == size
        stored = lake.events("a")
        assert stored["aggregate_version"].to_list() == list(range(1, size + 2))
        assert stored["event_id"].n_unique() == size + 1


@pytest.mark.parametrize("how", ["same object", "copy.copy", "pickled copy"])
def test_a_generated_id_appended_alone_to_a_known_stream_is_indexed_by_the_seal(tmp_path: Path, how: str) -> None:
    """A single event with a generated id, appended to a stream this handle knows, is stored without its
    id hash (the one-statement path skips hashing); the seal hashes it, so a retry after the seal is still
    recognised and a reuse of the id with other content still refused."""
    import copy
    import pickle

    event = Event("Ticked", {"n": 1}, occurred_at=T0)
    again = {"same object": lambda: event, "copy.copy": lambda: copy.copy(event),
             "pickled copy": lambda: pickle.loads(pickle.dumps(event))}[how]()
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        con = lake._store.hot.con
        lake.append("a", [_tick(0)], expected_version=0, aggregate_type="Clock")  # the head is remembered
        assert lake.append("a", [event], expected_version=1, aggregate_type="Clock") == 2
        assert con.execute("SELECT id_hash FROM events WHERE event_id = ?", (event.event_id,)).fetchone() == (None,)
        lake.seal()
        indexed = con.execute("SELECT position FROM sealed_ids WHERE id_hash = ?", (event_id_hash(str(event.event_id)),))
        assert indexed.fetchall() == [(2,)]
        assert lake.append("a", [again], expected_version=None, aggregate_type="Clock") == 2
        with pytest.raises(DuplicateEventError):
            lake.append("b", [Event("Ticked", {"n": 9}, event_id=event.event_id, occurred_at=T0)],
                        expected_version=0, aggregate_type="Clock")
        assert lake.events("a")["event_id"].n_unique() == 2
        assert lake.check()["ok"]


def test_the_sealed_id_index_merges_its_recent_level_and_finds_ids_in_both(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seals add id hashes to the small recent level; once it holds max(MERGE_MIN_IDS, an eighth of the base)
    it is merged into the base in the seal's transaction. Retries and reused ids are recognised either way."""
    import es_analytics.store.hot as hot_module

    monkeypatch.setattr(hot_module, "MERGE_MIN_IDS", 25)
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        con = lake._store.hot.con
        count = lambda table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: E731
        batches = []
        for n in range(5):  # 10 events a seal: the third seal merges (30 >= 25); the next two stay recent
            events = [Event("Ticked", {"n": n, "i": i}, occurred_at=T0) for i in range(10)]
            lake.append(f"s{n}", events, expected_version=0, aggregate_type="Clock")
            lake.seal()
            batches.append(events)
            assert count("event_ids") + count("recent_ids") == 10 * (n + 1)
            assert lake._store.hot.meta("recent_ids_rows") == count("recent_ids")
            assert lake._store.hot.meta("event_ids_rows") == count("event_ids")
        assert count("event_ids") == 30 and count("recent_ids") == 20
        for n in (0, 4):  # one batch in the base, one in the recent level: both are retries
            assert lake.append(f"s{n}", batches[n], expected_version=None, aggregate_type="Clock") == 10
            with pytest.raises(DuplicateEventError):
                lake.append("other", [Event("Ticked", {"x": 1}, event_id=batches[n][3].event_id, occurred_at=T0)],
                            expected_version=0, aggregate_type="Clock")
        assert lake.events()["event_id"].n_unique() == 50
        assert lake.check()["ok"]


def test_a_bulk_import_as_large_as_a_merge_goes_straight_into_the_base_level(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import es_analytics.store.hot as hot_module

    monkeypatch.setattr(hot_module, "MERGE_MIN_IDS", 25)
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        con = lake._store.hot.con
        small = hot_rows_to_arrow([(n + 1, f"id-{n}", "Ticked", 1, "Clock", "a", n + 1, 0, 0, "{}", "{}")
                                   for n in range(10)]).drop_columns(["position", "recorded_at"])
        lake._store.import_table(small)
        assert con.execute("SELECT count(*) FROM recent_ids").fetchone()[0] == 10
        big = hot_rows_to_arrow([(n + 1, f"big-{n}", "Ticked", 1, "Clock", "b", n + 1, 0, 0, "{}", "{}")
                                 for n in range(40)]).drop_columns(["position", "recorded_at"])
        lake._store.import_table(big)
        assert con.execute("SELECT count(*) FROM event_ids").fetchone()[0] == 40
        assert con.execute("SELECT count(*) FROM recent_ids").fetchone()[0] == 10
        with pytest.raises(DuplicateEventError):
            lake.append("c", [Event("Ticked", {}, event_id="big-7", occurred_at=T0)], expected_version=0,
                        aggregate_type="Clock")
        with pytest.raises(DuplicateEventError):
            lake.append("c", [Event("Ticked", {}, event_id="id-7", occurred_at=T0)], expected_version=0,
                        aggregate_type="Clock")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), st.booleans()), min_size=1, max_size=10))
def test_every_sealed_id_is_indexed_once_whatever_the_merges(
        tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[int, bool]]) -> None:
    """Whatever the sizes of the seals and imports, the two levels together hold exactly one (hash,
    position) pair per sealed event, and their row counts are what the hot tier's meta says."""
    from unittest.mock import patch

    import es_analytics.store.hot as hot_module

    with patch.object(hot_module, "MERGE_MIN_IDS", 5), \
            Lake.open(tmp_path_factory.mktemp("ids") / "lake", auto_seal_rows=0) as lake:
        for i, (size, imported) in enumerate(steps):
            if imported:
                rows = [(n + 1, f"imp-{i}-{n}", "Ticked", 1, "Clock", f"i{i}", n + 1, 0, 0, "{}", "{}")
                        for n in range(size)]
                lake._store.import_table(hot_rows_to_arrow(rows).drop_columns(["position", "recorded_at"]))
            else:
                lake.append(f"s{i}", [Event("Ticked", {"n": n}, occurred_at=T0) for n in range(size)],
                            expected_version=0, aggregate_type="Clock")
                lake.seal()
        con = lake._store.hot.con
        stored = lake.events()
        expected = sorted((event_id_hash(e), p) for e, p in zip(stored["event_id"], stored["position"]))
        assert sorted(con.execute("SELECT id_hash, position FROM sealed_ids").fetchall()) == expected
        for table, key in (("event_ids", "event_ids_rows"), ("recent_ids", "recent_ids_rows")):
            assert int(lake._store.hot.meta(key, 0)) == con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.mark.parametrize("damage", ["lost ids", "wrong counts"])
def test_check_finds_a_damaged_sealed_id_index_and_rebuilds_it(tmp_path: Path, damage: str) -> None:
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        events = [Event("Ticked", {"n": n}, occurred_at=T0) for n in range(20)]
        lake.append("a", events, expected_version=0, aggregate_type="Clock")
        lake.seal()
        lake.append("b", [_tick(1)], expected_version=0, aggregate_type="Clock")  # stays hot
        assert lake.check()["ok"]
        con = lake._store.hot.con
        with lake._store.hot.write():
            if damage == "lost ids":
                con.execute("DELETE FROM recent_ids WHERE position % 3 = 0")
            else:
                lake._store.hot.set_meta("recent_ids_rows", 7)
        report = lake.check()
        assert not report["ok"]
        assert [p["check"] for p in report["problems"]] == ["sealed-id index"]
        assert report["problems"][0]["repairable"]
        repaired = lake.check(repair=True)
        assert repaired["ok"], repaired
        assert any("rebuilt the sealed-id index" in r for r in repaired["repaired"])
        # retries of sealed events are recognised again
        assert lake.append("a", events, expected_version=None, aggregate_type="Clock") == 20
        with pytest.raises(DuplicateEventError):
            lake.append("c", [Event("Ticked", {"x": 1}, event_id=events[3].event_id, occurred_at=T0)],
                        expected_version=0, aggregate_type="Clock")


@settings(max_examples=25, deadline=None)
@given(batches=st.lists(st.tuples(st.integers(1, 260), st.booleans(), st.sampled_from(["a", "b", "c"])),
                        min_size=1, max_size=5))
def test_rows_kept_in_memory_equal_the_rows_stored(tmp_path_factory: pytest.TempPathFactory,
                                                   batches: list[tuple[int, bool, str]]) -> None:
    """Whatever the batch sizes (small ones kept as row tuples, large ones inserted and kept column by
    column), generated or given ids, and streams, the rows kept for the seal are the rows SQLite holds;
    only a one-event append to a stream the handle knows (one statement) may keep nothing, so the seal reads
    the rows back."""
    path = tmp_path_factory.mktemp("kept") / "lake"
    with Lake.open(path, auto_seal_rows=100_000) as lake:
        hot = lake._store.hot
        n = 0
        # a one-event append that may have been one statement
        one_statement = any(size == 1 and stream in {s for _, _, s in batches[:i]}
                            for i, (size, _, stream) in enumerate(batches))
        for size, given_ids, stream in batches:
            events = [Event("Ticked", {"n": n + k, "s": "é" * (k % 3)}, metadata={"k": k},
                            occurred_at=datetime(2024, 3, 1, 9, 0, k % 60, k, tzinfo=timezone.utc),
                            **({"event_id": f"id-{n + k}"} if given_ids else {}))
                      for k in range(size)]
            lake.append(stream, events, expected_version=None, aggregate_type="Clock")
            n += size
        kept = hot.cached_after(0, n, n)
        assert kept is not None or one_statement
        if kept is not None:
            assert kept.equals(hot.arrow_after(0, n))
        hashes = dict(hot.con.execute("SELECT event_id, id_hash FROM events").fetchall())
        assert all(h is None or h == event_id_hash(i) for i, h in hashes.items())
        assert sum(h is not None for h in hashes.values()) >= sum(s for s, g, _ in batches if g)


def test_column_hashes_equal_the_per_event_hash_from_several_threads_at_once() -> None:
    """Imports hash whole columns in DuckDB (on a private database, from any thread); the values are the
    ones a single append computes in Python."""
    from concurrent.futures import ThreadPoolExecutor

    from es_analytics.store.engine import _hash_ids

    def run(k: int) -> bool:
        ids = [f"{k}-{n}-é" if n % 3 else new_event_id() for n in range(2_000)]
        table = pa.table({"event_id": ids, "position": pa.array(range(len(ids)), pa.int64())})
        hashed = _hash_ids(table)
        return hashed["id_hash"].to_list() == [event_id_hash(i) for i in ids] and \
            hashed["position"].to_list() == list(range(len(ids)))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, range(8)))


def test_the_unsent_mark_is_taken_once_whatever_the_threads() -> None:
    """Of several threads appending the same event objects, one sees each event unsent; no event object
    gets an instance dict on the way (that would cost the garbage collector per batch)."""
    import gc
    from concurrent.futures import ThreadPoolExecutor

    events = [Event("Ticked", {"n": n}, occurred_at=T0) for n in range(3_000)]
    given = Event("Ticked", {"n": 0}, event_id="given-id", occurred_at=T0)
    with ThreadPoolExecutor(4) as pool:
        taken = list(pool.map(lambda k: sum(e._take_unsent() for e in events), range(4)))
    assert sum(taken) == len(events)
    assert not any(e._take_unsent() for e in events) and not given._take_unsent()
    fresh = [Event("Ticked", {"n": n}, occurred_at=T0) for n in range(3_000)]
    gc.collect()
    gc.disable()  # the count of new tracked objects then only grows
    try:
        before = gc.get_count()[0]
        assert all([e._take_unsent() for e in fresh])
        assert gc.get_count()[0] - before < 10
    finally:
        gc.enable()


@pytest.mark.parametrize("count", [7, 100, 250])
def test_rows_of_several_streams_in_one_transaction_are_kept_as_stored(tmp_path: Path, count: int) -> None:
    """``append_rows`` (several streams at once) inserts small batches as row tuples and large ones column
    by column; either way the rows kept for the seal equal the rows SQLite holds, and the seal writes them."""
    with Lake.open(tmp_path / "lake", auto_seal_rows=100_000) as lake:
        hot = lake._store.hot
        streams = ["a", "b", "c"]
        rows = [(f"id-{n}", "Ticked", 1 + n % 2, "Clock", streams[n % 3], n // 3 + 1, 1_700_000_000_000_000 + n,
                 f'{{"n": {n}}}', '{"k": "é"}') for n in range(count)]
        assert hot.append_rows(rows, lake._store.lookup_sealed) == 1
        kept = hot.cached_after(0, count, count)
        assert kept is not None and kept.equals(hot.arrow_after(0, count))
        stored = dict(hot.con.execute("SELECT event_id, id_hash FROM events").fetchall())
        assert stored == {f"id-{n}": event_id_hash(f"id-{n}") for n in range(count)}
        before = _stored(lake)
        lake.seal()
        assert _stored(lake) == before and lake.check()["ok"]
        assert [lake.current_version(s) for s in streams] == [len(range(i, count, 3)) for i in range(3)]


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80), min_size=1,
                    max_size=50))
def test_the_column_hash_is_the_per_event_hash_and_the_one_stored_by_earlier_versions(ids: list[str]) -> None:
    """``EVENT_ID_HASH_SQL`` gives what ``event_id_hash`` gives for any id, and what lakes written with
    ``md5_number_lower`` hold (their sealed-id index stays valid)."""
    import duckdb

    from es_analytics.store.hot import EVENT_ID_HASH_SQL

    with duckdb.connect() as con:
        con.register("t", pa.table({"event_id": ids}))
        rows = con.sql(f"SELECT {EVENT_ID_HASH_SQL}, (md5_number_lower(event_id) >> 1)::BIGINT FROM t").fetchall()
    assert [r[0] for r in rows] == [event_id_hash(i) for i in ids] == [r[1] for r in rows]


def _hot_ids_consistent(lake: Lake) -> None:
    """``hot_ids`` holds exactly the ids of the hot rows at or below its watermark, with their positions."""
    con = lake._store.hot.con
    through = con.execute("SELECT value FROM meta WHERE key = 'hot_ids_through'").fetchone()[0]
    below = set(con.execute("SELECT event_id, position FROM events WHERE position <= ?", (through,)).fetchall())
    assert set(con.execute("SELECT event_id, position FROM hot_ids").fetchall()) == below


@pytest.mark.parametrize("size", [1, 3, 150])
def test_a_copy_of_an_unsealed_event_with_a_made_id_is_a_retry_or_refused(tmp_path: Path, size: int) -> None:
    """Appends of ids made with their events do not index them (one B-tree less to write); a copy appended
    later, to any stream, must still be seen: as a retry with the same content, refused with other content."""
    import copy

    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        lake.append("a", [_tick(0)], expected_version=0, aggregate_type="Clock")  # a known stream: one statement
        events = [Event("Ticked", {"n": n}, occurred_at=T0) for n in range(size)]
        assert lake.append("a", events, expected_version=1, aggregate_type="Clock") == 1 + size
        lake.append("a", [_tick(9)], expected_version=1 + size, aggregate_type="Clock")
        assert lake._store.hot.con.execute("SELECT count(*) FROM hot_ids").fetchone()[0] == 0
        again = copy.deepcopy(events)
        assert lake.append("a", again, expected_version=None, aggregate_type="Clock") == 1 + size
        with pytest.raises(DuplicateEventError):
            lake.append("b", copy.deepcopy(events), expected_version=0, aggregate_type="Clock")
        altered = [Event("Ticked", {"n": -1}, event_id=events[-1].event_id, occurred_at=T0)]
        with pytest.raises(DuplicateEventError):
            lake.append("a", altered, expected_version=None, aggregate_type="Clock")
        with pytest.raises(DuplicateEventError):  # several streams at once, as the eventsourcing recorders do
            lake._store.hot.append_rows(
                [(events[0].event_id, "Ticked", 1, "Clock", "c", 1, 0, '{"n": 0}', "{}")], lake._store.lookup_sealed)
        _hot_ids_consistent(lake)
        stored = lake.events()
        assert stored.height == size + 2 and stored["event_id"].n_unique() == size + 2
        lake.seal()
        assert lake._store.hot.con.execute("SELECT count(*) FROM hot_ids").fetchone()[0] == 0
        assert lake.append("a", copy.deepcopy(events), expected_version=None, aggregate_type="Clock") == 1 + size
        assert lake.check()["ok"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["made", "given", "copy", "altered", "seal"]),
                          st.sampled_from("ab"), st.integers(1, 3)), min_size=1, max_size=25))
def test_ids_made_with_events_and_given_ids_mix_without_a_repeat(ops: list[tuple[str, str, int]]) -> None:
    """Any mix of appends of made ids (not indexed), given ids (indexed), copies and altered copies of
    earlier events, and seals: every id is stored once, retries answer, reuses are refused, and
    ``hot_ids`` always holds exactly the hot rows at or below its watermark."""
    import copy
    import tempfile

    stored: dict[str, tuple[str, Event]] = {}  # event_id -> (stream, event as appended)
    versions = {"a": 0, "b": 0}
    counter = 0
    with tempfile.TemporaryDirectory() as tmp, Lake.open(Path(tmp) / "lake", auto_seal_rows=0,
                                                         durability="normal") as lake:
        for kind, stream, n in ops:
            if kind == "seal":
                lake.seal()
                _hot_ids_consistent(lake)
                continue
            earlier = list(stored.values())
            if kind in ("copy", "altered") and not earlier:
                continue
            if kind == "made":
                batch = [Event("Ticked", {"k": i}, occurred_at=T0) for i in range(n)]
            elif kind == "given":
                counter += 1
                batch = [Event("Ticked", {"k": i}, event_id=f"g{counter}-{i}", occurred_at=T0) for i in range(n)]
            else:
                home, original = earlier[n % len(earlier)]
                batch = [copy.copy(original)] if kind == "copy" else [
                    Event("Ticked", {"k": "other"}, event_id=original.event_id, occurred_at=T0)]
            if kind == "copy" and home == stream:
                before = lake.current_version(stream)
                lake.append(stream, batch, expected_version=None, aggregate_type="Clock")
                assert lake.current_version(stream) == before  # a retry: nothing stored again
            elif kind in ("copy", "altered"):
                with pytest.raises(DuplicateEventError):
                    lake.append(stream, batch, expected_version=None, aggregate_type="Clock")
            else:
                assert lake.append(stream, batch, expected_version=versions[stream], aggregate_type="Clock") == \
                    versions[stream] + len(batch)
                versions[stream] += len(batch)
                stored.update((e.event_id, (stream, e)) for e in batch)  # type: ignore[misc]
            _hot_ids_consistent(lake)
        frame = lake.events()
        assert sorted(frame["event_id"].to_list()) == sorted(stored)
        assert lake.check()["ok"]


def test_an_empty_hot_table_of_an_older_lake_loses_its_event_id_index_and_a_full_one_keeps_it(tmp_path: Path) -> None:
    def unique_on_id(path: Path) -> bool:
        con = sqlite3.connect(path / "hot.sqlite")
        try:
            return any(i[2] and [c[2] for c in con.execute("SELECT * FROM pragma_index_info(?)", (i[1],))] == ["event_id"]
                       for i in con.execute("SELECT * FROM pragma_index_list('events')").fetchall())
        finally:
            con.close()

    for rows in (0, 1):
        path = tmp_path / f"lake-{rows}"
        with Lake.open(path, auto_seal_rows=0) as lake:
            lake.append("a", [_tick(1), _tick(2)], expected_version=0, aggregate_type="Clock")
            lake.seal()
        con = sqlite3.connect(path / "hot.sqlite")
        con.execute("DROP VIEW stream_heads")
        con.execute("DROP TABLE events")
        con.execute(LEGACY_EVENTS)
        con.execute("DELETE FROM meta WHERE key = 'hot_ids_through'")
        if rows:
            con.execute(
                "INSERT INTO events (position, event_id, event_type, schema_version, aggregate_type, aggregate_id, "
                "aggregate_version, occurred_at, recorded_at, data, metadata) "
                "VALUES (3, 'old', 'Ticked', 1, 'Clock', 'a', 3, ?, ?, '{\"n\": 3}', '{}')",
                (int(T0.timestamp() * 1e6), time.time_ns() // 1000))
        con.commit()
        con.close()
        assert unique_on_id(path)
        with Lake.open(path, auto_seal_rows=0) as lake:
            assert unique_on_id(path) == bool(rows)
            _hot_ids_consistent(lake)
            version = lake.append("a", [_tick(4)], expected_version=2 + rows, aggregate_type="Clock")
            assert version == 3 + rows
            if rows:  # the row kept from before is indexed, and its id refused with other content
                with pytest.raises(DuplicateEventError):
                    lake.append("b", [Event("Ticked", {"n": 0}, event_id="old")], expected_version=0, aggregate_type="Clock")
            assert lake.events()["position"].to_list() == list(range(1, 4 + rows))
            report = lake.check()
            assert report["ok"], report


def test_an_import_finds_an_unindexed_hot_id_among_many(tmp_path: Path) -> None:
    """A bulk import checks its ids against the lake; with more ids than one look-up statement takes, the
    hot rows of made ids are indexed first (one pass) instead of being scanned for every chunk."""
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        made = [Event("Ticked", {"n": n}, occurred_at=T0) for n in range(1_000)]
        lake.append("a", made, expected_version=0, aggregate_type="Clock")

        def table(ids: list[str], stream: str) -> pa.Table:
            return pa.table({
                "event_id": ids, "event_type": ["Ticked"] * len(ids), "schema_version": pa.array([1] * len(ids), pa.int32()),
                "aggregate_type": ["Clock"] * len(ids), "aggregate_id": [stream] * len(ids),
                "aggregate_version": list(range(1, len(ids) + 1)),
                "occurred_at": pa.array([T0] * len(ids), pa.timestamp("us", tz="UTC")),
                "data": ['{"n": 1}'] * len(ids), "metadata": ["{}"] * len(ids),
            })

        fresh = [new_event_id() for _ in range(900)]
        with pytest.raises(InvalidArgumentError, match="already in the lake"):
            lake._store.import_table(table([*fresh, str(made[500].event_id)], "b"))
        assert lake._store.hot.con.execute("SELECT count(*) FROM hot_ids").fetchone()[0] == 0  # rolled back
        lake._store.import_table(table(fresh, "b"))
        assert lake.events("b").height == 900
        _hot_ids_consistent(lake)
        assert lake.check()["ok"]


@pytest.mark.parametrize("damage", ["lost entry", "stray entry", "watermark past an unindexed row"])
def test_check_finds_a_damaged_hot_id_index_and_rebuilds_it(tmp_path: Path, damage: str) -> None:
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        lake.append("a", [Event("Ticked", {"n": n}, event_id=f"g{n}", occurred_at=T0) for n in range(3)],
                    expected_version=0, aggregate_type="Clock")
        made = Event("Ticked", {"n": 3}, occurred_at=T0)
        lake.append("a", [made], expected_version=3, aggregate_type="Clock")
        assert lake.check()["ok"]
        con = lake._store.hot.con
        if damage == "lost entry":
            con.execute("DELETE FROM hot_ids WHERE event_id = 'g1'")
        elif damage == "stray entry":
            con.execute("INSERT INTO hot_ids VALUES ('ghost', 99)")
        else:
            con.execute("UPDATE meta SET value = 4 WHERE key = 'hot_ids_through'")
        report = lake.check()
        assert not report["ok"] and any(p["check"] == "hot-id index" for p in report["problems"])
        repaired = lake.check(repair=True)
        assert "rebuilt the hot-id index from the hot rows" in repaired["repaired"]
        assert lake.check()["ok"]
        _hot_ids_consistent(lake)
        with pytest.raises(DuplicateEventError):  # the made id is indexed now, and refused with other content
            lake.append("b", [Event("Ticked", {"n": 0}, event_id=made.event_id)], expected_version=0, aggregate_type="Clock")


def test_given_ids_appended_alone_are_indexed_by_the_one_statement_path(tmp_path: Path) -> None:
    """A single event with a given id, to a stream the handle knows, goes in through ``events_with_id``:
    the row, its ``hot_ids`` entry and the raised watermark in one statement; a repeat of the id, hot or
    sealed, is a retry or refused; rows of made ids in between send it to the full path, which indexes them."""
    with Lake.open(tmp_path / "lake", auto_seal_rows=0) as lake:
        con = lake._store.hot.con
        lake.append("a", [Event("Ticked", {"n": 1}, event_id="g1", occurred_at=T0)], expected_version=0,
                    aggregate_type="Clock")
        before = con.total_changes
        lake.append("a", [Event("Ticked", {"n": 2}, event_id="g2", occurred_at=T0)], expected_version=1,
                    aggregate_type="Clock")
        assert con.total_changes - before == 3  # the row, the entry, the watermark: one statement's trigger
        assert dict(con.execute("SELECT event_id, position FROM hot_ids").fetchall()) == {"g1": 1, "g2": 2}
        made = Event("Ticked", {"n": 3}, occurred_at=T0)
        lake.append("a", [made], expected_version=2, aggregate_type="Clock")  # not indexed
        lake.append("a", [Event("Ticked", {"n": 4}, event_id="g4", occurred_at=T0)], expected_version=3,
                    aggregate_type="Clock")  # the full path: indexes the made id too
        _hot_ids_consistent(lake)
        assert con.execute("SELECT position FROM hot_ids WHERE event_id = ?", (made.event_id,)).fetchone() == (3,)
        assert lake.append("a", [Event("Ticked", {"n": 2}, event_id="g2", occurred_at=T0)], expected_version=None,
                           aggregate_type="Clock") == 2  # a retry
        with pytest.raises(DuplicateEventError):
            lake.append("a", [Event("Ticked", {"n": 9}, event_id="g2", occurred_at=T0)], expected_version=None,
                        aggregate_type="Clock")
        lake.seal()
        lake.append("a", [Event("Ticked", {"n": 5}, event_id="g5", occurred_at=T0)], expected_version=4,
                    aggregate_type="Clock")
        assert lake.append("a", [Event("Ticked", {"n": 1}, event_id="g1", occurred_at=T0)], expected_version=None,
                           aggregate_type="Clock") == 1  # sealed: found by the trigger's probe, then the full path
        assert lake.events("a")["event_id"].to_list() == ["g1", "g2", made.event_id, "g4", "g5"]
        _hot_ids_consistent(lake)
        assert lake.check()["ok"]
