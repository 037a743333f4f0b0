"""Our own tests of the lake persistence module: concurrency, the event mapping, tiers, errors."""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4, uuid5

import pytest
from eventsourcing.persistence import (
    ApplicationRecorder,
    DataError,
    IntegrityError,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Tracking,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from es_analytics import ConcurrencyError, DuplicateEventError, Lake
from es_analytics.errors import InvalidArgumentError
from es_analytics.eventsourcing import (
    LakeApplicationRecorder,
    LakeDataError,
    LakeFactory,
    LakeSettingsError,
    LakeVersionConflictError,
)
from es_analytics.eventsourcing.datastore import decode_state, encode_state, parse_state
from es_analytics.events import parse_json

PROCESSES = 3
THREADS = 2
BATCHES = 40
SHARED = [uuid5(UUID(int=0), f"shared-{i}") for i in range(3)]


def _event(originator_id: UUID | str, version: int, state: bytes, topic: str = "bank:Account.Credited") -> StoredEvent:
    return StoredEvent(originator_id=originator_id, originator_version=version, topic=topic, state=state)


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[LakeFactory]:
    made = LakeFactory({"LAKE_PATH": str(tmp_path / "lake")})
    yield made
    made.close()


@pytest.fixture
def recorder(factory: LakeFactory) -> LakeApplicationRecorder:
    made = factory.application_recorder()
    assert isinstance(made, LakeApplicationRecorder)
    return made


# -- concurrent writers ---------------------------------------------------------------------------
def _writer(path: str, worker: int, log: str, start: threading.Barrier) -> None:
    """Threads sharing one factory insert batches over new and shared streams; log what was acknowledged."""
    factory = LakeFactory({"LAKE_PATH": path, "LAKE_AUTO_SEAL_ROWS": "150", "LAKE_DURABILITY": "normal"})
    recorder = factory.application_recorder()
    acknowledged: list[dict[str, object]] = []
    rejected = 0

    def run(thread: int) -> None:
        rng = random.Random(worker * 10 + thread)
        for n in range(BATCHES):
            events = []
            for k, originator_id in enumerate([uuid4()] * rng.randint(0, 1) + rng.sample(SHARED, rng.randint(0, 2))):
                head = recorder.select_events(originator_id, desc=True, limit=1)
                start = head[0].originator_version + 1 if head else 1
                for v in range(start, start + rng.randint(1, 4)):
                    tag = f"{worker}-{thread}-{n}-{k}-{v}"
                    state = json.dumps({"tag": tag}).encode() if v % 2 else b"\x00" + tag.encode()
                    events.append(_event(originator_id, v, state))
            if not events:
                continue
            time.sleep(0.001)  # between reading heads and writing: let the other writers race us
            try:
                ids = recorder.insert_events(events)
            except LakeVersionConflictError:
                nonlocal rejected
                rejected += 1
                continue
            acknowledged.append({"ids": ids, "events": [[str(e.originator_id), e.originator_version,
                                                          e.state.hex()] for e in events]})

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    start.wait(timeout=120)  # all processes are up: now they write at the same time
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    factory.close()
    Path(log).write_text(json.dumps({"acknowledged": acknowledged, "rejected": rejected}))


def test_concurrent_writers_give_complete_ordered_gap_free_notifications(tmp_path: Path) -> None:
    path = str(tmp_path / "lake")
    factory = LakeFactory({"LAKE_PATH": path})
    recorder = factory.application_recorder()
    seen: list[Notification] = []
    subscription = recorder.subscribe(gt=None)

    def follow() -> None:
        with subscription:
            for notification in subscription:
                seen.append(notification)

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        _check_concurrent_writers(tmp_path, path, recorder, seen)
    finally:
        subscription.stop()
        follower.join(timeout=10)
        factory.close()


def _check_concurrent_writers(tmp_path: Path, path: str, recorder: ApplicationRecorder, seen: list[Notification]) -> None:
    ctx = mp.get_context("spawn")
    logs = [tmp_path / f"w{i}.json" for i in range(PROCESSES)]
    start = ctx.Barrier(PROCESSES)
    procs = [ctx.Process(target=_writer, args=(path, i, str(logs[i]), start)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    results = [json.loads(log.read_text()) for log in logs]
    batches = [b for r in results for b in r["acknowledged"]]
    total = sum(len(b["ids"]) for b in batches)
    assert len(batches) > PROCESSES * THREADS * BATCHES // 3  # plenty got through …
    assert sum(r["rejected"] for r in results) > 0  # … while writers did collide on the shared streams

    # Each acknowledged batch holds a contiguous run of ids; together they cover 1..total exactly once.
    for batch in batches:
        assert batch["ids"] == list(range(batch["ids"][0], batch["ids"][0] + len(batch["ids"])))
    assert sorted(i for b in batches for i in b["ids"]) == list(range(1, total + 1))
    assert recorder.max_notification_id() == total

    # Reading the log back page by page gives exactly the acknowledged events, at their ids, in order.
    read: list[Notification] = []
    while len(page := recorder.select_notifications(read[-1].id if read else 0, 500, inclusive_of_start=False)):
        read.extend(page)
    assert [n.id for n in read] == list(range(1, total + 1))
    by_id = {n.id: [str(n.originator_id), n.originator_version, n.state.hex()] for n in read}
    for batch in batches:
        assert [by_id[i] for i in batch["ids"]] == batch["events"]

    # Every stream's versions run 1, 2, 3 … in notification order; the lake's invariants hold.
    streams: dict[str, list[int]] = {}
    for n in read:
        streams.setdefault(str(n.originator_id), []).append(n.originator_version)
    assert all(v == list(range(1, len(v) + 1)) for v in streams.values())
    assert max(len(streams[str(s)]) for s in SHARED) > 20
    with Lake.open(path) as lake:
        assert lake.check()["ok"]
        assert lake.sql("SELECT count(*) AS n FROM events")["n"].item() == total
        assert lake._store.manifest().sealed_position > 0  # the writers sealed: reads crossed both tiers

    # The subscription, fed by polling while other processes wrote, saw the same log.
    deadline = time.monotonic() + 30
    while len(seen) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(n.id, n.originator_id, n.originator_version, n.state) for n in seen] == [
        (n.id, n.originator_id, n.originator_version, n.state) for n in read
    ]


# -- the event mapping --------------------------------------------------------------------------
def test_json_states_become_queryable_payloads_and_binary_states_round_trip(recorder: LakeApplicationRecorder) -> None:
    account, other = uuid4(), uuid4()
    json_state = b'{"amount":{"_type_":"decimal_str","_data_":"12.50"},"timestamp":{"_type_":"datetime_iso",' \
                 b'"_data_":"2024-03-01T09:30:00+01:00"},"class_version":3}'
    binary_state = b"x\x9c\xff\x00 not json"
    ids = recorder.insert_events([_event(account, 1, json_state, "bank:Account.Opened"),
                                  _event(other, 1, binary_state, "bank.events:Deposited"),
                                  _event(account, 2, b'{"a": 1}', "bank:Account.Credited")])
    assert ids == [1, 2, 3]
    frame = recorder.datastore.lake.sql(
        "SELECT position, aggregate_id, aggregate_type, aggregate_version, event_type, schema_version, "
        "strftime(occurred_at, '%Y-%m-%d %H:%M') AS occurred, data->'amount'->>'_data_' AS amount, data, metadata "
        "FROM events ORDER BY position"
    )
    assert frame.select("aggregate_id", "aggregate_type", "aggregate_version", "event_type", "schema_version").rows() == [
        (str(account), "Account", 1, "bank:Account.Opened", 3),
        (str(other), "Aggregate", 1, "bank.events:Deposited", 1),
        (str(account), "Account", 2, "bank:Account.Credited", 1),
    ]
    assert frame["occurred"][0] == "2024-03-01 08:30" and frame["amount"][0] == "12.50"
    assert frame["data"][0] == json_state.decode() and frame["data"][2] == '{"a": 1}'  # byte for byte
    assert json.loads(frame["metadata"][1]) == {"state_encoding": "base64"}
    assert [n.state for n in recorder.select_notifications(None, 10)] == [json_state, binary_state, b'{"a": 1}']


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=100).map(lambda t: json.dumps({"t": t}).encode()),
                 st.text(max_size=100).map(lambda t: ('{"t":"' + t + '"}').encode("utf-8", "surrogatepass"))))
def test_every_state_round_trips_exactly(state: bytes) -> None:
    data, metadata, _, _ = encode_state(state, 0)
    assert decode_state(data, metadata) == state
    json.loads(data)  # the lake's data column always holds JSON


_JSON_PIECES = st.sampled_from(['{"a":', '{"a":1,"a":2}', "[", "]", "}", "{", "1e999", "-1.5e3", "NaN", '"\\ud800"',
                                '"\\u00e9"', '"é"', ",", '"k":', "null", "true", "12345678901234567890", " "])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(_JSON_PIECES, max_size=12).map("".join),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                              lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                              max_leaves=80).map(lambda v: json.dumps({"v": v}))))
def test_the_fast_state_parser_accepts_exactly_what_the_lake_accepts(text: str) -> None:
    try:
        expected = parse_json(text, "state")
    except InvalidArgumentError:
        with pytest.raises(InvalidArgumentError):
            parse_state(text)
    else:
        assert parse_state(text) == expected


def test_streams_that_start_at_version_0_keep_lake_versions_from_1(recorder: LakeApplicationRecorder) -> None:
    stream = uuid4()
    recorder.insert_events([_event(stream, v, b"{}") for v in range(0, 3)])
    lake = recorder.datastore.lake
    assert lake.events(str(stream))["aggregate_version"].to_list() == [1, 2, 3]
    assert lake.check()["ok"]
    assert [e.originator_version for e in recorder.select_events(stream, gt=0, lte=1)] == [1]
    with pytest.raises(LakeVersionConflictError, match="^Concurrency conflict: expected version 1, but current version is 2") as caught:
        recorder.insert_events([_event(stream, 2, b"{}")])
    assert isinstance(caught.value, IntegrityError) and isinstance(caught.value, ConcurrencyError)
    assert (caught.value.expected, caught.value.actual) == (1, 2)


def test_one_insert_spans_several_streams_atomically_in_input_order(recorder: LakeApplicationRecorder) -> None:
    a, b = uuid4(), uuid4()
    assert recorder.insert_events([_event(a, 1, b"{}"), _event(b, 1, b"{}"), _event(a, 2, b"{}")]) == [1, 2, 3]
    assert [(n.originator_id, n.originator_version) for n in recorder.select_notifications(1, 10)] == [
        (a, 1), (b, 1), (a, 2)]
    with pytest.raises(IntegrityError):  # b's second event is fine, a's repeats version 2: nothing is written
        recorder.insert_events([_event(b, 2, b"{}"), _event(a, 2, b"{}")])
    assert recorder.max_notification_id() == 3
    assert [e.originator_version for e in recorder.select_events(b)] == [1]


def test_reads_cover_sealed_and_hot_events_alike(recorder: LakeApplicationRecorder) -> None:
    a, b = uuid4(), uuid4()
    recorder.insert_events([_event(a, v, b'{"v":%d}' % v, f"m:A.E{v % 2}") for v in range(1, 6)])
    lake = recorder.datastore.lake
    assert lake.seal()["sealed_events"] == 5
    recorder.insert_events([_event(a, 6, b"{}", "m:A.E0"), _event(b, 1, b"\x01", "m:A.E1")])
    assert [n.id for n in recorder.select_notifications(3, 10)] == [3, 4, 5, 6, 7]
    assert [n.id for n in recorder.select_notifications(2, 3, stop=6, topics=["m:A.E0"])] == [2, 4, 6]
    assert [n.id for n in recorder.select_notifications(4, 10, inclusive_of_start=False)] == [5, 6, 7]
    assert [e.originator_version for e in recorder.select_events(a, gt=3, desc=True)] == [6, 5, 4]
    assert recorder.select_events(a, lte=1)[0].state == b'{"v":1}'
    assert recorder.max_notification_id() == 7


def test_a_tracking_conflict_rolls_back_the_events(factory: LakeFactory) -> None:
    recorder = factory.process_recorder()
    assert isinstance(recorder, ProcessRecorder)
    recorder.insert_events([_event(uuid4(), 1, b"{}")], tracking=Tracking("upstream", 5))
    with pytest.raises(IntegrityError, match="not greater than the recorded 5"):
        recorder.insert_events([_event(uuid4(), 1, b"{}")], tracking=Tracking("upstream", 5))
    assert recorder.max_notification_id() == 1
    assert recorder.max_tracking_id("upstream") == 5


def test_a_subscription_sees_another_handles_writes_by_polling(tmp_path: Path) -> None:
    path = str(tmp_path / "lake")
    reader = LakeFactory({"LAKE_PATH": path, "LAKE_POLL_INTERVAL": "0.02"})
    writer = LakeFactory({"LAKE_PATH": path})
    try:
        stream = uuid4()
        with reader.application_recorder().subscribe(gt=None, topics=["m:A.B"]) as subscription:
            writer.application_recorder().insert_events([_event(stream, 1, b"{}", "m:A.A"), _event(stream, 2, b"{}", "m:A.B")])
            notification = next(subscription)
        assert (notification.id, notification.originator_version, notification.topic) == (2, 2, "m:A.B")
    finally:
        reader.close()
        writer.close()


# -- errors -----------------------------------------------------------------------------------------
def test_bad_input_is_a_typed_error_and_writes_nothing(recorder: LakeApplicationRecorder) -> None:
    with pytest.raises(LakeDataError, match="originator_id 'acc-1' is not a UUID; set ORIGINATOR_ID_TYPE=text"):
        recorder.insert_events([_event(uuid4(), 1, b"{}"), _event("acc-1", 1, b"{}")])
    with pytest.raises(LakeDataError, match="topic 'bad topic' cannot be an event_type"):
        recorder.insert_events([_event(uuid4(), 1, b"{}", "bad topic")])
    with pytest.raises(DataError, match="originator_version must be an int"):
        recorder.insert_events([_event(uuid4(), "1", b"{}")])  # type: ignore[arg-type]
    assert issubclass(LakeDataError, InvalidArgumentError)
    assert recorder.max_notification_id() is None


def test_text_originator_ids(tmp_path: Path) -> None:
    factory = LakeFactory({"LAKE_PATH": str(tmp_path / "lake"), "ORIGINATOR_ID_TYPE": "text"})
    try:
        recorder = factory.application_recorder()
        recorder.insert_events([_event("acc-1", 1, b"{}")])
        assert [(e.originator_id, e.originator_version) for e in recorder.select_events("acc-1")] == [("acc-1", 1)]
        assert recorder.select_notifications(None, 1)[0].originator_id == "acc-1"
    finally:
        factory.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no lake folder in the environment: set one of LAKE_PATH"),
        ({"LAKE_DURABILITY": "always"}, "LAKE_DURABILITY must be 'full' or 'normal', got 'always'"),
        ({"ORIGINATOR_ID_TYPE": "int"}, "ORIGINATOR_ID_TYPE must be 'uuid' or 'text', got 'int'"),
        ({"LAKE_AUTO_SEAL_ROWS": "many"}, "LAKE_AUTO_SEAL_ROWS must be a int, got 'many'"),
        ({"LAKE_AGGREGATE_TYPE": "no such"}, "LAKE_AGGREGATE_TYPE: default_aggregate_type must be an identifier"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path: Path, env: dict[str, str], message: str) -> None:
    settings_ = {"LAKE_PATH": str(tmp_path / "lake"), **env} if env else {}
    with pytest.raises(LakeSettingsError, match=message) as caught:
        LakeFactory(settings_)
    assert isinstance(caught.value, OSError)


# -- the lake additions the adapter stands on --------------------------------------------------------
def _row(event_id: str, stream: str, version: int, data: str = "{}", aggregate_type: str = "Counter") -> tuple:
    return (event_id, "Counted", 1, aggregate_type, stream, version, 1_700_000_000_000_000, data, "{}")


def test_append_rows_retries_conflicts_and_rollback(tmp_path: Path) -> None:
    with Lake.open(tmp_path / "lake") as lake:
        store = lake._store
        rows = [_row("e1", "a", 1), _row("e2", "b", 1), _row("e3", "a", 2)]
        assert store.hot.append_rows(rows, store.lookup_sealed) == 1
        lake.seal()
        assert store.hot.append_rows(rows, store.lookup_sealed) is None  # an acknowledged retry, sealed or not
        with pytest.raises(DuplicateEventError, match="'e2'"):
            store.hot.append_rows([_row("e1", "a", 1), _row("e2", "b", 1, '{"x":1}'), _row("e3", "a", 2)], store.lookup_sealed)
        with pytest.raises(DuplicateEventError, match="mixes events already stored with new ones"):
            store.hot.append_rows([_row("e3", "a", 2), _row("e4", "a", 3)], store.lookup_sealed)
        with pytest.raises(ConcurrencyError, match=r"expected version 2, but current version is 1 \(stream 'b'\)"):
            store.hot.append_rows([_row("e5", "a", 3), _row("e6", "b", 3)], store.lookup_sealed)
        with pytest.raises(InvalidArgumentError, match="stream 'a' is a 'Counter', not a 'Other'"):
            store.hot.append_rows([_row("e7", "a", 3, aggregate_type="Other")], store.lookup_sealed)

        def refuse(con: object) -> None:
            raise RuntimeError("checkpoint refused")

        with pytest.raises(RuntimeError, match="checkpoint refused"):
            store.hot.append_rows([_row("e8", "c", 1)], store.lookup_sealed, within=refuse)
        assert store.hot.append_rows([_row("e9", "a", 3), _row("e10", "c", 1)], store.lookup_sealed) == 4
        frame = lake.events()
        assert frame.select("position", "event_id", "aggregate_id", "aggregate_version").rows() == [
            (1, "e1", "a", 1), (2, "e2", "b", 1), (3, "e3", "a", 2), (4, "e9", "a", 3), (5, "e10", "c", 1)]
        assert [lake.current_version(s) for s in "abc"] == [3, 1, 1]
        assert store.read_positions(1, until=4, types=["Counted"])["position"].to_pylist() == [2, 3, 4]
        assert lake.check()["ok"]


class _CustomApplicationRecorder(LakeApplicationRecorder):
    pass


def test_recorder_classes_chosen_by_topic(tmp_path: Path) -> None:
    from eventsourcing.utils import get_topic

    topic = get_topic(_CustomApplicationRecorder)
    factory = LakeFactory({"LAKE_PATH": str(tmp_path / "lake"), "APPLICATION_RECORDER_TOPIC": topic})
    try:
        assert type(factory.application_recorder()) is _CustomApplicationRecorder
        factory.env["APPLICATION_RECORDER_TOPIC"] = get_topic(StoredEvent)
        with pytest.raises(LakeSettingsError, match="is not a LakeApplicationRecorder"):
            factory.application_recorder()
        factory.env["PROCESS_RECORDER_TOPIC"] = topic
        with pytest.raises(LakeSettingsError, match="is not a LakeProcessRecorder"):
            factory.process_recorder()
    finally:
        factory.close()
