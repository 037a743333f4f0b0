"""The temporal engine: reducers, states, bitemporal questions, watermarks, diffs and checkpoints."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from strategies import HistoryEvent, import_batch

from es_analytics import Event, Lake
from es_analytics.aggregates import Aggregate, DomainEvent, when
from es_analytics.errors import InvalidArgumentError
from es_analytics.examples.bank import BankAccount
from es_analytics.examples.users import User
from es_analytics.sample import generate
from es_analytics.temporal import Column, Const, Count, Json, Last, Reducers, Sum, Watermark, checkpoints

UTC = timezone.utc
FEB1, FEB10, FEB12, FEB15 = (datetime(2025, 2, d, 12, tzinfo=UTC) for d in (1, 10, 12, 15))
MAR1, MAR5 = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 3, 5, 9, tzinfo=UTC)


def opened(aggregate_id: str, amount: float, at: datetime, recorded: datetime) -> HistoryEvent:
    data = {"accountId": aggregate_id, "initialDeposit": amount, "accountHolder": "Ada"}
    return HistoryEvent(aggregate_id, 1, "AccountOpened", data, at, recorded)


def money(kind: str, aggregate_id: str, version: int, amount: float, at: datetime, recorded: datetime) -> HistoryEvent:
    return HistoryEvent(aggregate_id, version, kind, {"amount": amount, "description": kind}, at, recorded)


@pytest.fixture
def corrected(empty_lake: Lake) -> Lake:
    """acc-1: opened 1 Feb (100), deposit 10 Feb (50); on 5 March a deposit back-dated to 12 Feb (25).

    acc-2: opened 10 Feb (0), recorded on time.
    """
    import_batch(empty_lake, [opened("acc-1", 100, FEB1, FEB1), opened("acc-2", 0, FEB10, FEB10),
                              money("MoneyDeposited", "acc-1", 2, 50, FEB10, FEB10 + timedelta(minutes=1))])
    import_batch(empty_lake, [money("MoneyDeposited", "acc-1", 3, 25, FEB12, MAR5)])
    return empty_lake


def balances(lake: Lake, **kw: object) -> dict[str, Decimal]:
    frame = lake.states(BankAccount, **kw)  # type: ignore[arg-type]
    return dict(zip(frame["aggregate_id"], frame["balance"]))


# -- bitemporal semantics ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["scan", "checkpoint", "fold"])
def test_what_the_lake_said_on_1_march_about_15_february(corrected: Lake, method: str) -> None:
    said_then = balances(corrected, as_of=FEB15, known_at=MAR1, method=method)
    known_now = balances(corrected, as_of=FEB15, method=method)
    assert said_then == {"acc-1": Decimal(150), "acc-2": Decimal(0)}
    assert known_now == {"acc-1": Decimal(175), "acc-2": Decimal(0)}
    assert balances(corrected, as_of=FEB10 - timedelta(seconds=1), method=method) == {"acc-1": Decimal(100)}
    assert balances(corrected, known_at=FEB1 - timedelta(seconds=1), method=method) == {}


def test_states_columns_order_and_types(corrected: Lake) -> None:
    frame = corrected.states(BankAccount, as_of=FEB15)
    assert frame.columns == ["aggregate_id", "version", "balance", "status", "account_holder"]
    assert frame.row(0) == ("acc-1", 3, Decimal(175), "active", "Ada")
    assert frame.schema["version"] == pl.Int64 and frame.schema["balance"] == pl.Decimal(38, 4)


def test_version_is_the_last_applied_version_not_the_count(corrected: Lake) -> None:
    # As of 11 Feb the back-dated v3 (12 Feb) is out, so the account is at version 2.
    frame = corrected.states(BankAccount, as_of=FEB12 - timedelta(hours=1))
    assert frame.filter(pl.col("aggregate_id") == "acc-1")["version"].item() == 2


def test_aggregate_agrees_with_states(corrected: Lake) -> None:
    account = corrected.aggregate(BankAccount, "acc-1", as_of=FEB15, known_at=MAR1)
    assert account is not None and (account.balance, account.version) == (Decimal(150), 2)


def test_naive_datetimes_and_bad_methods_are_refused(corrected: Lake) -> None:
    with pytest.raises(InvalidArgumentError, match="as_of must be timezone-aware"):
        corrected.states(BankAccount, as_of=datetime(2025, 2, 15))
    with pytest.raises(InvalidArgumentError, match="method must be one of"):
        corrected.states(BankAccount, method="fast")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="expected an aggregate class"):
        corrected.states("BankAccount")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="pass the watermark as known_at"):
        corrected.states(BankAccount, as_of=corrected.watermark())  # type: ignore[arg-type]


# -- reducers ----------------------------------------------------------------------------------
class Plain(Aggregate):
    """A class without reducers: states folds it."""

    aggregate_type = "BankAccount"
    unknown_events = "warn"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.deposits = 0

    @when("MoneyDeposited")
    def _deposited(self, event: DomainEvent) -> None:
        self.deposits += 1

    @when("AccountOpened")
    def _opened(self, event: DomainEvent) -> None:
        pass


def test_a_class_without_reducers_is_folded(corrected: Lake) -> None:
    frame = corrected.states(Plain, as_of=FEB15, known_at=MAR1)
    assert frame.to_dicts() == [{"aggregate_id": "acc-1", "version": 2, "deposits": 1},
                                {"aggregate_id": "acc-2", "version": 1, "deposits": 0}]
    with pytest.raises(InvalidArgumentError, match="needs reducers, and Plain declares none"):
        corrected.states(Plain, method="scan")
    with pytest.raises(InvalidArgumentError, match="declares no reducers, so it has no checkpoints"):
        corrected.checkpoint(Plain)


def test_an_empty_type_gives_an_empty_frame_with_the_columns(empty_lake: Lake) -> None:
    for method in ("scan", "checkpoint", "fold"):
        frame = empty_lake.states(BankAccount, method=method)  # type: ignore[arg-type]
        assert frame.height == 0
        assert frame.columns == ["aggregate_id", "version", "balance", "status", "account_holder"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Json("amount; DROP TABLE x"), "a JSON path must be field names"),
        (lambda: Json("amount", "TEXT"), "Json dtype must be one of"),
        (lambda: Last(Json("a"), on="Money\x00Deposited"), "the event type must not hold control characters"),
        (lambda: Last(Json("a"), on="   "), "the event type must not be only white space"),
        (lambda: Last(Json("a")), "on= must name the event types"),
        (lambda: Last({"A": Json("a")}, on="A"), "either a mapping"),
        (lambda: Last({"A": "a"}), "must be Json"),  # type: ignore[dict-item]
        (lambda: Sum({"A": Json("a", "BIGINT"), "B": Json("b")}), "must share a type"),
        (lambda: Column("data"), "Column must be one of"),
        (lambda: Const(object()), "Const takes"),  # type: ignore[arg-type]
        (lambda: Reducers(version=Count(on="A")), "reserved column name"),
        (lambda: Reducers(**{"bad name": Count(on="A")}), "must be an identifier"),
        (lambda: Reducers(x=Json("a")), "must be a reducer"),  # type: ignore[arg-type]
        (lambda: Reducers(), "at least one field"),
    ],
)
def test_bad_declarations_name_what_is_wrong(build: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        build()  # type: ignore[operator]


def test_constants_are_quoted_and_the_fingerprint_follows_the_declaration() -> None:
    a = Reducers(s=Last({"A": Const("it's")}))
    b = Reducers(s=Last({"A": Const("its")}))
    assert "'it''s'" in a.final_select()[0]
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == Reducers(s=Last({"A": Const("it's")})).fingerprint()


def test_a_wrong_reducers_attribute_is_reported(corrected: Lake) -> None:
    class Broken(Plain):
        reducers = {"deposits": Count(on="MoneyDeposited")}

    with pytest.raises(InvalidArgumentError, match="must be a Reducers"):
        corrected.states(Broken)


# -- watermarks --------------------------------------------------------------------------------
def test_a_watermark_pins_an_analysis_after_new_events(corrected: Lake) -> None:
    mark = corrected.watermark()
    before = corrected.states(BankAccount, known_at=mark)
    corrected.append("acc-2", [Event("MoneyDeposited", {"amount": 5}, occurred_at=FEB1)], expected_version=1,
                     aggregate_type="BankAccount")
    corrected.append("acc-9", [Event("AccountOpened", {"initialDeposit": 1, "accountHolder": "X"})],
                     expected_version=0, aggregate_type="BankAccount")
    for method in ("scan", "checkpoint", "fold"):
        assert_frame_equal(corrected.states(BankAccount, known_at=mark, method=method),  # type: ignore[arg-type]
                           before, check_dtypes=method != "fold")
    assert corrected.states(BankAccount).height == 3
    assert corrected.events_between(FEB1, MAR5, known_at=mark).height == 4
    assert corrected.watermark() > mark


def test_watermark_text_round_trip_and_times(corrected: Lake) -> None:
    mark = corrected.watermark()
    assert mark.position == 4 and mark.recorded_at == MAR5
    assert Watermark.parse(str(mark)) == mark
    assert corrected.watermark(at=MAR1) == Watermark(3, FEB10 + timedelta(minutes=1))
    assert corrected.watermark(at=FEB1 - timedelta(days=1)).position == 0
    with pytest.raises(InvalidArgumentError, match="a watermark looks like"):
        Watermark.parse("yesterday")
    with pytest.raises(InvalidArgumentError, match="non-negative int"):
        Watermark(-1, MAR1)


def test_an_empty_lake_has_a_watermark_that_sees_nothing(empty_lake: Lake) -> None:
    assert empty_lake.watermark().position == 0


# -- events_between, system_state ----------------------------------------------------------------
def test_events_between_is_inclusive_ordered_by_occurred_at_and_filters_types(corrected: Lake) -> None:
    frame = corrected.events_between(FEB10, FEB12)
    assert frame["occurred_at"].to_list() == [FEB10, FEB10, FEB12]
    assert frame["event_type"].to_list() == ["AccountOpened", "MoneyDeposited", "MoneyDeposited"]
    assert corrected.events_between(FEB10, FEB12, types="MoneyDeposited").height == 2
    assert corrected.events_between(FEB10, FEB12, known_at=MAR1).height == 2
    with pytest.raises(InvalidArgumentError, match="lies before start"):
        corrected.events_between(FEB12, FEB10)
    with pytest.raises(InvalidArgumentError, match="types must be"):
        corrected.events_between(FEB10, FEB12, types=3)  # type: ignore[arg-type]


def test_system_state_groups_each_aggregates_events(corrected: Lake) -> None:
    frame = corrected.system_state(FEB15, known_at=MAR1)
    assert frame.columns == ["aggregate_type", "aggregate_id", "version", "events"]
    assert frame.select("aggregate_id", "version").rows() == [("acc-1", 2), ("acc-2", 1)]
    events = frame["events"][0].to_list()
    assert [e["event_type"] for e in events] == ["AccountOpened", "MoneyDeposited"]
    assert json.loads(events[1]["data"])["amount"] == 50
    assert corrected.system_state(FEB15).row(0)[2] == 3
    assert corrected.system_state(FEB15, aggregate_type="User").height == 0


# -- diff --------------------------------------------------------------------------------------
def test_diff_between_two_business_times_names_fields_and_causes(corrected: Lake) -> None:
    frame = corrected.diff(BankAccount, FEB1, FEB15)
    acc1 = frame.filter(pl.col("aggregate_id") == "acc-1")
    assert acc1.select("change", "field", "old", "new", "old_version", "new_version").rows() == [
        ("changed", "balance", "100", "175", 1, 3)]
    assert [e["aggregate_version"] for e in acc1["events"][0]] == [2, 3]
    acc2 = frame.filter(pl.col("aggregate_id") == "acc-2")
    assert set(acc2["field"]) == {"balance", "status", "account_holder"} and set(acc2["change"]) == {"created"}


def test_diff_between_two_knowledge_times_shows_the_correction(corrected: Lake) -> None:
    frame = corrected.diff(BankAccount, MAR1, MAR5, clock="known_at", as_of=FEB15)
    assert frame.select("aggregate_id", "field", "old", "new").rows() == [("acc-1", "balance", "150", "175")]
    cause = frame["events"][0].to_list()
    assert [(e["aggregate_version"], e["occurred_at"], e["recorded_at"]) for e in cause] == [(3, FEB12, MAR5)]


def test_diff_refuses_reversed_times_and_mixed_clocks(corrected: Lake) -> None:
    with pytest.raises(InvalidArgumentError, match="lies before t1"):
        corrected.diff(BankAccount, FEB15, FEB1)
    with pytest.raises(InvalidArgumentError, match="leave as_of unset"):
        corrected.diff(BankAccount, FEB1, FEB15, as_of=FEB1)
    with pytest.raises(InvalidArgumentError, match="leave known_at unset"):
        corrected.diff(BankAccount, FEB1, FEB15, clock="known_at", known_at=FEB1)
    with pytest.raises(InvalidArgumentError, match="clock must be"):
        corrected.diff(BankAccount, FEB1, FEB15, clock="system")  # type: ignore[arg-type]


# -- checkpoints on the sample lake ------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "lake"
    with Lake.open(path) as lake:
        generate(lake, events=6_000)
    return path


@pytest.mark.parametrize("cls", [BankAccount, User])
def test_scan_checkpoint_and_fold_agree_on_the_sample(sample_lake: Path, cls: type) -> None:
    with Lake.open(sample_lake) as lake:
        lake.checkpoint(cls, every="week")
        for as_of, known_at in [(None, None), (datetime(2025, 4, 1, tzinfo=UTC), None),
                                (datetime(2025, 7, 3, 5, tzinfo=UTC), datetime(2025, 6, 20, tzinfo=UTC)),
                                (datetime(2025, 12, 31, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC))]:
            scan = lake.states(cls, as_of=as_of, known_at=known_at, method="scan")
            assert scan.height > 0
            assert_frame_equal(lake.states(cls, as_of=as_of, known_at=known_at, method="checkpoint"), scan)
            fold = lake.states(cls, as_of=as_of, known_at=known_at, method="fold").select(scan.columns)
            assert fold.to_dicts() == scan.to_dicts()
        checkpoints.clear(lake)


def test_old_payload_versions_reach_the_vectorised_user_state(sample_lake: Path) -> None:
    with Lake.open(sample_lake) as lake:
        frame = lake.states(User)
        versions = lake.sql("SELECT DISTINCT schema_version FROM events WHERE event_type = 'UserRegistered'")
        assert sorted(versions["schema_version"]) == [1, 2, 3]
        assert frame["newsletter"].sum() > 0 and frame["newsletter"].null_count() == 0
        assert set(frame["status"]) == {"active", "suspended"}


@pytest.mark.parametrize("safe_sql", [False, True])
def test_checkpoints_follow_new_and_back_dated_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      safe_sql: bool) -> None:
    with Lake.open(tmp_path / "lake", safe_sql=safe_sql) as lake:
        generate(lake, events=3_000)
        built = lake.checkpoint(BankAccount, every="month")
        assert built["checkpoints"] >= 10
        t = datetime(2025, 5, 20, tzinfo=UTC)
        lake.append("acc-0000003", [Event("MoneyDeposited", {"amount": 1000}, occurred_at=datetime(2025, 2, 1, tzinfo=UTC))],
                    expected_version=None, aggregate_type="BankAccount")
        live = lake.states(BankAccount, as_of=t, method="checkpoint")
        assert_frame_equal(live, lake.states(BankAccount, as_of=t, method="scan"))
        lake.seal()  # the back-dated event now sits in a sealed file newer than the checkpoints
        assert_frame_equal(lake.states(BankAccount, as_of=t, method="checkpoint"), live)
        monkeypatch.setattr(checkpoints, "REFRESH_AFTER", 0)
        refreshed = lake.states(BankAccount, as_of=t, method="checkpoint")
        assert_frame_equal(refreshed, live)
        state = checkpoints.CheckpointSet.load(Path(built["folder"]))
        assert state is not None and state.position == lake.watermark().position and len(state.inputs) == 2
        assert state.checkpoint_position < state.position  # inputs extended, checkpoints not yet rebuilt
        merged = lake.checkpoint(BankAccount, every="month")
        state = checkpoints.CheckpointSet.load(Path(merged["folder"]))
        assert state is not None and state.checkpoint_position == state.position
        for as_of in (t, datetime(2025, 2, 1, tzinfo=UTC), None):
            assert_frame_equal(lake.states(BankAccount, as_of=as_of, method="checkpoint"),
                               lake.states(BankAccount, as_of=as_of, method="scan"))


def test_checkpoints_work_on_a_safe_sql_lake(sample_lake: Path, tmp_path: Path) -> None:
    with Lake.open(sample_lake, safe_sql=True) as lake:
        t = datetime(2025, 9, 1, tzinfo=UTC)
        assert_frame_equal(lake.states(BankAccount, as_of=t, method="checkpoint"),
                           lake.states(BankAccount, as_of=t, method="scan"))
        assert checkpoints.clear(lake) == 1
        with pytest.raises(InvalidArgumentError, match="every must be one of"):
            lake.checkpoint(BankAccount, every="year")  # type: ignore[arg-type]


def test_auto_reads_checkpoints_only_once_they_were_built(sample_lake: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "lake"
    shutil.copytree(sample_lake, copy)
    with Lake.open(copy) as lake:
        folder = checkpoints.folder_for(lake, "BankAccount", BankAccount.reducers)
        lake.states(BankAccount)
        assert not folder.exists()  # auto never starts a build on its own
        built = lake.checkpoint(BankAccount)
        monkeypatch.setattr(checkpoints, "REFRESH_AFTER", 0)
        lake.append("acc-new", [Event("AccountOpened", {"initialDeposit": 5, "accountHolder": "N"})],
                    expected_version=0, aggregate_type="BankAccount")
        frame = lake.states(BankAccount)  # auto: reads the set and extends its inputs by the new event
        state = checkpoints.CheckpointSet.load(folder)
        assert state is not None and state.position == built["position"] + 1
        assert frame.filter(pl.col("aggregate_id") == "acc-new")["balance"].item() == Decimal(5)


def test_a_checkpoint_set_with_a_missing_file_is_rebuilt(sample_lake: Path, tmp_path: Path) -> None:
    copy = tmp_path / "lake"
    shutil.copytree(sample_lake, copy)
    with Lake.open(copy) as lake:
        built = lake.checkpoint(BankAccount)
        state = checkpoints.CheckpointSet.load(Path(built["folder"]))
        assert state is not None
        (state.folder / state.files[0]).unlink()  # as lake.forget purges derived files
        assert checkpoints.CheckpointSet.load(state.folder) is None
        scan = lake.states(BankAccount, method="auto")  # no usable set: auto scans
        assert_frame_equal(lake.states(BankAccount, method="checkpoint"), scan)  # rebuilt
        assert checkpoints.CheckpointSet.load(state.folder) is not None


def test_the_compiled_bank_query_matches_its_golden_file() -> None:
    """The one query ``states(BankAccount, as_of=, known_at=)`` runs; review SQL changes in the diff."""
    from es_analytics.temporal.bounds import make_bounds
    from es_analytics.temporal.states import scan_sql

    golden = Path(__file__).parent / "snapshots" / "temporal_bank_states.sql"
    sql, params = scan_sql(BankAccount.reducers, make_bounds(FEB15, MAR1), "BankAccount")
    assert params == ["BankAccount", FEB15, MAR1]  # times are bound, never pasted
    assert sql + "\n" == golden.read_text(encoding="utf-8"), (
        f"the compiled SQL changed; if intended, write it to {golden}")


def test_folding_a_large_type_warns_and_names_the_cheaper_call(corrected: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    from es_analytics.temporal import states as states_module

    monkeypatch.setattr(states_module, "FOLD_WARN_EVENTS", 2)
    with pytest.warns(states_module.PerformanceWarning, match=r"declare Plain.reducers"):
        frame = corrected.states(Plain)
    assert frame.height == 2
