"""Pattern analyses against numbers worked out by hand on small, fixed histories.

Every history is checked twice: with the events in the hot tier and after sealing them into Parquet.
"""

from __future__ import annotations

import operator
import tempfile
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from es_analytics import Event, Lake, patterns
from es_analytics.errors import InvalidArgumentError
from es_analytics.patterns._rollup import ROLLUP_DIR

UTC = timezone.utc
BERLIN = "Europe/Berlin"

Row = tuple[str, str, datetime] | tuple[str, str, datetime, dict[str, str]]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def fill(lake: Lake, rows: Sequence[Row], *, seal: bool) -> Lake:
    """Append ``(aggregate_id, event_type, occurred_at[, metadata])`` rows, each stream in the given order."""
    for row in rows:
        aggregate_id, event_type, occurred_at = row[:3]
        metadata = row[3] if len(row) > 3 else None  # type: ignore[misc]
        lake.append(aggregate_id, [Event(event_type, {"n": 1}, occurred_at=occurred_at, metadata=metadata)],
                    expected_version=None, aggregate_type="BankAccount")
    if seal:
        lake.seal()
    return lake


@pytest.fixture(params=["hot", "sealed"])
def tier(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_lake(tmp_path: object, tier: str) -> Iterator[object]:
    lakes: list[Lake] = []

    def make(rows: Sequence[Row]) -> Lake:
        lake = Lake.open(tempfile.mkdtemp(dir=str(tmp_path)))
        lakes.append(lake)
        return fill(lake, rows, seal=tier == "sealed")

    yield make
    for lake in lakes:
        lake.close()


# The autumn clock change in Berlin: 2025-10-26 03:00 CEST becomes 02:00 CET (01:00 UTC).
DST_HISTORY: list[Row] = [
    ("acc-1", "MoneyDeposited", utc(2025, 10, 24, 21, 30)),  # Berlin Oct 24 23:30: before the window
    ("acc-1", "MoneyDeposited", utc(2025, 10, 24, 22, 0)),   # Berlin Oct 25 00:00: the window's first instant
    ("acc-1", "MoneyWithdrawn", utc(2025, 10, 25, 8, 0)),    # another type
    ("acc-2", "MoneyDeposited", utc(2025, 10, 25, 10, 15)),  # Berlin Oct 25 12:15
    ("acc-2", "MoneyDeposited", utc(2025, 10, 26, 0, 30)),   # Berlin Oct 26 02:30 CEST (first pass)
    ("acc-2", "MoneyDeposited", utc(2025, 10, 26, 1, 30)),   # Berlin Oct 26 02:30 CET (second pass)
    ("acc-1", "MoneyDeposited", utc(2025, 10, 26, 22, 59)),  # Berlin Oct 26 23:59
    ("acc-1", "MoneyDeposited", utc(2025, 10, 26, 23, 0)),   # Berlin Oct 27 00:00
    ("acc-1", "MoneyDeposited", utc(2025, 10, 28, 23, 0)),   # Berlin Oct 29 00:00: the window's end, excluded
]
WINDOW = (utc(2025, 10, 24, 22), utc(2025, 10, 28, 23))  # Berlin Oct 25 00:00 .. Oct 29 00:00


def hours(**counts: int) -> pl.DataFrame:
    values = [counts.get(f"h{h}", 0) for h in range(24)]
    return pl.DataFrame({"hour": pl.Series(range(24), dtype=pl.Int32), "count": pl.Series(values, dtype=pl.Int64)})


def days(first: date, counts: list[int]) -> pl.DataFrame:
    dates = [first + timedelta(days=i) for i in range(len(counts))]
    return pl.DataFrame({"date": pl.Series(dates, dtype=pl.Date), "count": pl.Series(counts, dtype=pl.Int64)})


# -- analyze --------------------------------------------------------------------------------------
def test_analyze_in_berlin_across_the_autumn_clock_change(make_lake: object) -> None:
    lake = make_lake(DST_HISTORY)  # type: ignore[operator]
    result = patterns.analyze(lake, "MoneyDeposited", *WINDOW, tz=BERLIN, closed="left")
    assert result.total_events == 6
    # Both passes of the repeated hour 02:00-03:00 land in hour 2.
    assert_frame_equal(result.hourly, hours(h0=2, h2=2, h12=1, h23=1))
    assert_frame_equal(result.daily, days(date(2025, 10, 25), [2, 3, 1, 0]))
    assert (result.days, result.active_days) == (4, 3)
    assert result.average_per_calendar_day == 6 / 4
    assert result.average_per_day == 6 / 3  # the seed's averagePerDay: over the days with events
    assert result.peak_hour == 0
    assert_frame_equal(result.active_daily, days(date(2025, 10, 25), [2, 3, 1]))


def test_analyze_same_events_in_utc(make_lake: object) -> None:
    lake = make_lake(DST_HISTORY)  # type: ignore[operator]
    result = patterns.analyze(lake, "MoneyDeposited", *WINDOW, closed="left")
    assert_frame_equal(result.hourly, hours(h0=1, h1=1, h10=1, h22=2, h23=1))
    # UTC days touched by the window: Oct 24 (from 22:00) .. Oct 28 (until 23:00).
    assert_frame_equal(result.daily, days(date(2025, 10, 24), [1, 1, 4, 0, 0]))
    assert result.average_per_calendar_day == 6 / 5
    assert result.average_per_day == 6 / 3


def test_analyze_one_stream_several_types_and_no_events(make_lake: object) -> None:
    lake = make_lake(DST_HISTORY)  # type: ignore[operator]
    one = patterns.analyze(lake, "MoneyDeposited", *WINDOW, aggregate_id="acc-2", tz=BERLIN, closed="left")
    assert_frame_equal(one.daily, days(date(2025, 10, 25), [1, 2, 0, 0]))
    both = patterns.analyze(lake, ["MoneyDeposited", "MoneyWithdrawn"], *WINDOW, tz=BERLIN, closed="left")
    assert both.total_events == 7 and both.hourly["count"][10] == 1
    assert patterns.analyze(lake, None, *WINDOW, tz=BERLIN, closed="left").total_events == 7
    none = patterns.analyze(lake, "AccountClosed", *WINDOW, tz=BERLIN, closed="left")
    assert (none.total_events, none.days, none.active_days, none.average_per_day, none.peak_hour) == (0, 4, 0, 0.0, None)
    assert none.average_per_calendar_day == 0.0
    assert none.hourly.height == 24


def test_analyze_by_default_is_the_seeds_window_inclusive_at_both_ends(make_lake: object) -> None:
    lake = make_lake(DST_HISTORY)  # type: ignore[operator]
    seed = patterns.analyze(lake, "MoneyDeposited", *WINDOW, tz=BERLIN)
    assert (seed.closed, seed.total_events) == ("both", 7)  # the deposit at the window's end counts
    # the end's own date is touched by the window: Berlin Oct 25 .. Oct 29
    assert_frame_equal(seed.daily, days(date(2025, 10, 25), [2, 3, 1, 0, 1]))
    assert (seed.average_per_day, seed.average_per_calendar_day) == (7 / 4, 7 / 5)
    counts = {closed: patterns.analyze(lake, "MoneyDeposited", *WINDOW, tz=BERLIN, closed=closed).total_events
              for closed in ("both", "left", "right", "none")}
    assert counts == {"both": 7, "left": 6, "right": 6, "none": 5}  # the first instant has a deposit too
    one_instant = patterns.analyze(lake, "MoneyDeposited", WINDOW[0], WINDOW[0])
    assert (one_instant.total_events, one_instant.days) == (1, 1)


def test_spring_clock_change_has_no_hour_two(make_lake: object) -> None:
    # Berlin 2025-03-30: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    lake = make_lake([  # type: ignore[operator]
        ("acc-1", "MoneyDeposited", utc(2025, 3, 30, 0, 59)),  # 01:59 CET
        ("acc-1", "MoneyDeposited", utc(2025, 3, 30, 1, 0)),   # 03:00 CEST
        ("acc-1", "MoneyDeposited", utc(2025, 3, 30, 21, 59)),  # 23:59 CEST
    ])
    result = patterns.analyze(lake, "MoneyDeposited", utc(2025, 3, 29, 23), utc(2025, 3, 30, 22), tz=BERLIN,
                              closed="left")
    assert_frame_equal(result.hourly, hours(h1=1, h3=1, h23=1))
    assert_frame_equal(result.daily, days(date(2025, 3, 30), [3]))


def test_zone_with_quarter_hour_offset(make_lake: object) -> None:
    # Kathmandu is UTC+05:45.
    lake = make_lake([("acc-1", "MoneyDeposited", utc(2025, 5, 1, 18, 14)),  # 23:59 local
                      ("acc-1", "MoneyDeposited", utc(2025, 5, 1, 18, 15))])  # 00:00 next day
    result = patterns.analyze(lake, "MoneyDeposited", utc(2025, 5, 1), utc(2025, 5, 2), tz="Asia/Kathmandu")
    assert_frame_equal(result.hourly, hours(h0=1, h23=1))
    assert_frame_equal(result.daily, days(date(2025, 5, 1), [1, 1]))


def test_zone_with_an_offset_in_seconds_is_bucketed_row_by_row(make_lake: object) -> None:
    # Monrovia kept UTC-00:44:30 until 1972: not whole quarter hours.
    lake = make_lake([("acc-1", "MoneyDeposited", utc(1960, 6, 2, 0, 44)),  # Jun 1 23:59:30 local
                      ("acc-1", "MoneyDeposited", utc(1960, 6, 2, 0, 45))])  # Jun 2 00:00:30 local
    result = patterns.analyze(lake, "MoneyDeposited", utc(1960, 6, 1, 12), utc(1960, 6, 2, 12),
                              tz="Africa/Monrovia")
    assert_frame_equal(result.hourly, hours(h0=1, h23=1))
    assert_frame_equal(result.daily, days(date(1960, 6, 1), [1, 1]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": datetime(2025, 1, 1), "end": utc(2025, 2, 1)}, "start must be timezone-aware"),
        ({"start": utc(2025, 2, 1), "end": utc(2025, 1, 1)}, r"must be before end .* \(both ends inclusive\)"),
        ({"start": utc(2025, 1, 1), "end": utc(2025, 1, 1), "closed": "left"}, r"must be before end .* \(end exclusive\)"),
        ({"start": utc(2025, 1, 1), "end": utc(2025, 2, 1), "closed": "middle"},
         "closed must be one of 'both', 'left', 'right', 'none', got 'middle'"),
        ({"start": utc(2025, 1, 1), "end": utc(2025, 2, 1), "tz": "Mars/Olympus"}, "not a known IANA time zone"),
        ({"start": utc(2025, 1, 1), "end": utc(2025, 2, 1), "tz": ""}, "tz must be an IANA"),
        ({"start": utc(2025, 1, 1), "end": utc(2025, 2, 1), "tz": "localtime"}, "not a known IANA time zone"),
        ({"start": utc(2025, 1, 1), "end": utc(2025, 2, 1), "tz": "../../etc/passwd"}, "not a known IANA time zone"),
        ({"start": utc(2025, 1, 1), "end": utc(2025, 2, 1), "event_type": 7}, "event_type must be"),
        ({"start": utc(2025, 1, 1), "end": utc(2025, 2, 1), "event_type": []}, "event_type must be"),
        ({"start": utc(2025, 1, 1), "end": utc(2025, 2, 1), "aggregate_id": ""}, "aggregate_id must be"),
    ],
)
def test_analyze_rejects_bad_input(tmp_path: object, kwargs: dict[str, object], message: str) -> None:
    args = {"event_type": "MoneyDeposited", **kwargs}
    with Lake.open(str(tmp_path)) as lake:
        with pytest.raises(InvalidArgumentError, match=message):
            patterns.analyze(lake, args.pop("event_type"), args.pop("start"), args.pop("end"), **args)  # type: ignore[arg-type]


zones = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"])
instants = st.integers(0, 40 * 86400 - 1).map(lambda s: utc(2025, 3, 1) + timedelta(seconds=s))
# Bounds on quarter hours are answered from rollups of sealed files, others by scanning the events.
bound = st.one_of(instants, st.integers(0, 40 * 96).map(lambda q: utc(2025, 3, 1) + timedelta(minutes=15 * q)))


CLOSED = {"both": (operator.ge, operator.le), "left": (operator.ge, operator.lt),
          "right": (operator.gt, operator.le), "none": (operator.gt, operator.lt)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(times=st.lists(st.one_of(instants, bound), min_size=0, max_size=25), tz=zones,
       bounds=st.tuples(bound, bound).filter(lambda b: b[0] != b[1]), sealed=st.integers(0, 25),
       closed=st.sampled_from(sorted(CLOSED)))
def test_analyze_agrees_with_a_row_by_row_count(tmp_path: object, times: list[datetime], tz: str,
                                                bounds: tuple[datetime, datetime], sealed: int, closed: str) -> None:
    start, end = sorted(bounds)
    after, before = CLOSED[closed]
    times = [*times, start, end]  # events on both bounds: counted or not as `closed` says
    with Lake.open(tempfile.mkdtemp(dir=str(tmp_path))) as lake:
        # The first `sealed` events go to Parquet, the rest stay in the hot tier.
        for part, seal in ((times[:sealed], True), (times[sealed:], False)):
            if part:
                lake.append("acc-1", [Event("MoneyDeposited", {}, occurred_at=t) for t in part],
                            expected_version=None, aggregate_type="BankAccount")
                if seal:
                    lake.seal()
        result = patterns.analyze(lake, "MoneyDeposited", start, end, tz=tz, closed=closed)  # type: ignore[arg-type]
    local = [t.astimezone(ZoneInfo(tz)) for t in times if after(t, start) and before(t, end)]
    assert result.total_events == len(local) == result.hourly["count"].sum() == result.daily["count"].sum()
    for hour, count in result.hourly.iter_rows():
        assert count == sum(1 for t in local if t.hour == hour)
    expected_days = {t.date() for t in local}
    assert set(result.active_daily["date"].to_list()) == expected_days
    last = end if closed in ("both", "right") else end - timedelta(microseconds=1)
    first_day, last_day = start.astimezone(ZoneInfo(tz)).date(), last.astimezone(ZoneInfo(tz)).date()
    assert result.daily["date"].to_list() == [first_day + timedelta(days=i)
                                              for i in range((last_day - first_day).days + 1)]
    if closed == "left":
        assert result.days == len(patterns.calendar_days(start, end, tz))
    assert result.average_per_day == (len(local) / len(expected_days) if local else 0.0)


def test_prepare_builds_the_missing_rollups(tmp_path: Path) -> None:
    with Lake.open(tmp_path / "lake") as lake:
        fill(lake, DST_HISTORY, seal=True)
        fill(lake, LIFECYCLE, seal=True)
        # sealing already counted the new files (a seal hook), so nothing is missing
        assert len(list((tmp_path / "lake" / ROLLUP_DIR).glob("*.parquet"))) == 2
        assert patterns.prepare(lake)["built"] == 0
        for cached in (tmp_path / "lake" / ROLLUP_DIR).glob("*.parquet"):
            cached.unlink()
        done = patterns.prepare(lake, progress=False)
        assert (done["files"], done["built"]) == (2, 2)
        assert len(list((tmp_path / "lake" / ROLLUP_DIR).glob("*.parquet"))) == 2
        assert patterns.prepare(lake)["built"] == 0
        assert patterns.analyze(lake, None, utc(2025, 1, 1), utc(2026, 1, 1)).total_events == len(DST_HISTORY) + len(
            LIFECYCLE)


def test_rollups_of_sealed_files_are_cached_and_follow_the_snapshot(tmp_path: Path) -> None:
    window = (utc(2025, 10, 24), utc(2025, 10, 30))
    with Lake.open(tmp_path / "lake") as lake:
        fill(lake, DST_HISTORY, seal=True)
        first = patterns.analyze(lake, "MoneyDeposited", *window)
        cached = sorted((tmp_path / "lake" / ROLLUP_DIR).glob("*.parquet"))
        assert len(cached) == 1 and first.total_events == 8
        # A new sealed file and new hot rows are counted; the cached rollup is reused.
        fill(lake, [("acc-3", "MoneyDeposited", utc(2025, 10, 27, 12))], seal=True)
        fill(lake, [("acc-3", "MoneyDeposited", utc(2025, 10, 27, 13))], seal=False)
        second = patterns.analyze(lake, "MoneyDeposited", *window)
        assert second.total_events == 10 and second.hourly["count"][12] == 1 and second.hourly["count"][13] == 1
        assert len(list((tmp_path / "lake" / ROLLUP_DIR).glob("*.parquet"))) == 2
        lake.compact()
        assert patterns.analyze(lake, "MoneyDeposited", *window).daily.equals(second.daily)
    with Lake.open(tmp_path / "lake") as lake:
        assert patterns.prepare(lake)["built"] == 0  # every sealed file has its rollup
    # A damaged cache file is computed again (and rewritten) by the next reader.
    for path in (tmp_path / "lake" / ROLLUP_DIR).glob("*.parquet"):
        path.write_bytes(b"not parquet")
    with Lake.open(tmp_path / "lake") as lake:
        assert patterns.analyze(lake, "MoneyDeposited", *window).daily.equals(second.daily)
    assert all(p.read_bytes()[:4] == b"PAR1" for p in (tmp_path / "lake" / ROLLUP_DIR).glob("*.parquet"))


# -- heatmap ----------------------------------------------------------------------------------------
def test_heatmap_weekday_by_hour(make_lake: object) -> None:
    lake = make_lake(DST_HISTORY)  # type: ignore[operator]
    cells = patterns.heatmap(lake, "MoneyDeposited", *WINDOW, tz=BERLIN).cells
    assert cells.height == 7 * 24
    # Oct 25 2025 is a Saturday (6), Oct 26 a Sunday (7), Oct 27 a Monday (1).
    filled = cells.filter(pl.col("count") > 0).sort("weekday", "hour")
    assert filled.select("weekday", "day_name", "hour", "count").rows() == [
        (1, "Mon", 0, 1), (6, "Sat", 0, 1), (6, "Sat", 12, 1), (7, "Sun", 2, 2), (7, "Sun", 23, 1)]
    per_weekday = dict(cells.group_by("weekday").agg(pl.col("days").first()).rows())
    assert per_weekday == {1: 1, 2: 1, 3: 0, 4: 0, 5: 0, 6: 1, 7: 1}
    assert cells.filter(pl.col("weekday") == 7, pl.col("hour") == 2)["average"].item() == 2.0


# -- trend and anomalies ------------------------------------------------------------------------------
def daily_rows(first: date, counts: list[int], event_type: str = "MoneyDeposited") -> list[Row]:
    rows: list[Row] = []
    for i, count in enumerate(counts):
        day = datetime(first.year, first.month, first.day, 12, tzinfo=UTC) + timedelta(days=i)
        rows += [("acc-1", event_type, day + timedelta(minutes=k)) for k in range(count)]
    return rows


def test_trend_rolling_mean_and_week_over_week(make_lake: object) -> None:
    counts = [1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 0, 0, 14]  # Mon 2025-06-02 .. Sun 2025-06-15
    lake = make_lake(daily_rows(date(2025, 6, 2), counts))  # type: ignore[operator]
    result = patterns.trend(lake, "MoneyDeposited", utc(2025, 6, 2), utc(2025, 6, 16), window=3)
    assert result.daily["count"].to_list() == counts
    assert result.daily["rolling_mean"].to_list()[:4] == [None, None, 2.0, 3.0]
    assert result.daily["rolling_mean"][13] == 14 / 3
    weekly = result.weekly
    assert weekly["week"].to_list() == [date(2025, 6, 2), date(2025, 6, 9)]
    assert weekly["count"].to_list() == [28, 14]
    assert weekly["change"].to_list() == [None, -14]
    assert weekly["change_pct"].to_list() == [None, -50.0]
    assert weekly["complete"].to_list() == [True, True]


def test_trend_marks_partial_weeks(make_lake: object) -> None:
    lake = make_lake(daily_rows(date(2025, 6, 4), [1, 1, 1]))  # type: ignore[operator]
    result = patterns.trend(lake, "MoneyDeposited", utc(2025, 6, 4), utc(2025, 6, 10))
    assert result.weekly.select("week", "days", "complete").rows() == [
        (date(2025, 6, 2), 5, False), (date(2025, 6, 9), 1, False)]
    with pytest.raises(InvalidArgumentError, match="window must be"):
        patterns.trend(lake, "MoneyDeposited", utc(2025, 6, 4), utc(2025, 6, 10), window=0)


ANOMALY_COUNTS = [5, 5, 6, 4, 5, 5, 6, 4, 5, 30]


def test_anomalies_against_the_whole_window(make_lake: object) -> None:
    lake = make_lake(daily_rows(date(2025, 6, 1), ANOMALY_COUNTS))  # type: ignore[operator]
    result = patterns.anomalies(lake, utc(2025, 6, 1), utc(2025, 6, 11), baseline=None)
    # median 5; absolute deviations 0,0,1,1,0,0,1,1,0,25 -> MAD 0.5
    assert set(result.daily["median"].to_list()) == {5.0} and set(result.daily["mad"].to_list()) == {0.5}
    expected = [0.6745 * (c - 5) / 0.5 for c in ANOMALY_COUNTS]
    assert result.daily["robust_z"].to_list() == pytest.approx(expected)
    assert result.anomalies.select("date", "count").rows() == [(date(2025, 6, 10), 30)]


def test_anomalies_against_a_trailing_baseline(make_lake: object) -> None:
    lake = make_lake(daily_rows(date(2025, 6, 1), ANOMALY_COUNTS)  # type: ignore[operator]
                     + daily_rows(date(2025, 6, 1), [1] + [0] * 9, "AccountOpened"))
    result = patterns.anomalies(lake, utc(2025, 6, 1), utc(2025, 6, 11), baseline=3, min_history=3)
    deposits = result.daily.filter(pl.col("event_type") == "MoneyDeposited")
    z = deposits["robust_z"].to_list()
    assert z[:3] == [None, None, None]  # fewer than 3 days of history
    # Day 4 (count 4): baseline 5,5,6 -> median 5, MAD 0, mean absolute deviation 1/3.
    assert z[3] == pytest.approx((4 - 5) / (1.253314 / 3))
    # Day 10 (count 30): baseline 6,4,5 -> median 5, MAD 1.
    assert z[9] == pytest.approx(0.6745 * 25)
    assert result.anomalies.select("event_type", "date").rows() == [("MoneyDeposited", date(2025, 6, 10))]
    # A flat baseline (AccountOpened 0,0,0 from day 5 on) gives z = 0.
    opened = result.daily.filter(pl.col("event_type") == "AccountOpened")["robust_z"].to_list()
    assert opened[4:] == [0.0] * 6
    assert result.daily.height == 20


def test_anomalies_ignore_tiny_deviations(make_lake: object) -> None:
    # Quiet days (median 0, MAD 0): two events is a huge z-score but only two events.
    lake = make_lake(daily_rows(date(2025, 6, 1), [0, 0, 0, 1, 0, 0, 0, 2, 0, 9]))  # type: ignore[operator]
    window = (utc(2025, 6, 1), utc(2025, 6, 11))
    result = patterns.anomalies(lake, *window, baseline=7, min_history=7)
    z = result.daily["robust_z"].to_list()
    # Day 8: baseline 0,0,0,1,0,0,0 -> median 0, MAD 0, mean absolute deviation 1/7.
    assert z[7] == pytest.approx(2 / (1.253314 / 7))
    # Day 10: baseline 0,1,0,0,0,2,0 -> mean absolute deviation 3/7.
    assert z[9] == pytest.approx(9 / (1.253314 * 3 / 7))
    assert result.anomalies["count"].to_list() == [9]
    loose = patterns.anomalies(lake, *window, baseline=7, min_history=7, min_deviation=0)
    assert loose.anomalies["count"].to_list() == [9, 2]


def test_anomalies_reject_bad_settings(tmp_path: object) -> None:
    with Lake.open(str(tmp_path)) as lake:
        for kwargs, message in [({"threshold": 0}, "threshold"), ({"baseline": 0}, "baseline"),
                                ({"baseline": 3, "min_history": 5}, "min_history"),
                                ({"min_deviation": -1}, "min_deviation")]:
            with pytest.raises(InvalidArgumentError, match=message):
                patterns.anomalies(lake, utc(2025, 1, 1), utc(2025, 2, 1), **kwargs)  # type: ignore[arg-type]


# -- latency and funnel ------------------------------------------------------------------------------
T0 = utc(2025, 4, 1, 9)
LIFECYCLE: list[Row] = [
    ("acc-1", "AccountOpened", T0),
    ("acc-1", "MoneyDeposited", T0 + timedelta(hours=1)),
    ("acc-1", "MoneyWithdrawn", T0 + timedelta(hours=3)),
    ("acc-1", "MoneyWithdrawn", T0 + timedelta(hours=5)),
    ("acc-2", "AccountOpened", T0),
    ("acc-2", "MoneyWithdrawn", T0 + timedelta(days=1)),
    ("acc-3", "AccountOpened", T0 + timedelta(days=2)),
    # Stream order decides: the withdrawal at version 1 comes before the opening.
    ("acc-4", "MoneyWithdrawn", T0),
    ("acc-4", "AccountOpened", T0 + timedelta(hours=1)),
    ("acc-4", "MoneyWithdrawn", T0 + timedelta(hours=1, minutes=10)),
    ("acc-5", "MoneyDeposited", T0),
    ("acc-5", "AccountOpened", T0 + timedelta(minutes=1)),
    ("acc-5", "MoneyWithdrawn", T0 + timedelta(minutes=2)),
]


def test_latency_first_withdrawal_after_opening(make_lake: object) -> None:
    lake = make_lake(LIFECYCLE)  # type: ignore[operator]
    result = patterns.latency(lake, "AccountOpened", "MoneyWithdrawn", percentiles=(50, 90))
    assert result.pairs.select("aggregate_id", "latency_seconds").rows() == [
        ("acc-1", 10_800.0), ("acc-2", 86_400.0), ("acc-3", None), ("acc-4", 600.0), ("acc-5", 60.0)]
    assert (result.started, result.converted, result.conversion) == (5, 4, 0.8)
    # Sorted latencies 60, 600, 10800, 86400: p50 = (600 + 10800) / 2; p90 at index 2.7.
    assert result.percentiles["percentile"].to_list() == [50.0, 90.0]
    assert result.percentiles["seconds"].to_list() == pytest.approx([5_700.0, 10_800 + 0.7 * 75_600])
    buckets = dict(result.histogram.select("bucket", "aggregates").rows())
    assert buckets["1–5 min"] == 1 and buckets["5–15 min"] == 1  # 60 s is on the 1-minute edge
    assert buckets["3–12 h"] == 1 and buckets["1–3 days"] == 1  # 3 h is on the 3-hour edge
    assert sum(buckets.values()) == 4
    assert result.histogram["order"].to_list() == list(range(12))


def test_latency_window_selects_the_starting_aggregates(make_lake: object) -> None:
    lake = make_lake(LIFECYCLE)  # type: ignore[operator]
    result = patterns.latency(lake, "AccountOpened", "MoneyWithdrawn", start=T0 + timedelta(days=1))
    assert result.pairs["aggregate_id"].to_list() == ["acc-3"]
    assert result.converted == 0 and result.percentiles["seconds"].to_list() == [None] * 4
    with pytest.raises(InvalidArgumentError, match="percentiles"):
        patterns.latency(lake, "AccountOpened", "MoneyWithdrawn", percentiles=(50, 101))
    with pytest.raises(InvalidArgumentError, match="to_type"):
        patterns.latency(lake, "AccountOpened", ["MoneyWithdrawn", "AccountClosed"])


def test_funnel_in_stream_order(make_lake: object) -> None:
    lake = make_lake(LIFECYCLE)  # type: ignore[operator]
    steps = patterns.funnel(lake, ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"]).steps
    assert steps.select("step", "event_type", "aggregates").rows() == [
        (1, "AccountOpened", 5), (2, "MoneyDeposited", 1), (3, "MoneyWithdrawn", 1)]
    assert steps["conversion"].to_list() == [1.0, 0.2, 0.2]
    assert steps["step_conversion"].to_list() == [1.0, 0.2, 1.0]
    assert steps["median_seconds"].to_list() == [None, 3_600.0, 7_200.0]
    within = patterns.funnel(lake, ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"],
                             within=timedelta(hours=2)).steps
    assert within["aggregates"].to_list() == [5, 1, 0]
    assert within["step_conversion"].to_list() == [1.0, 0.2, 0.0]
    repeated = patterns.funnel(lake, ["MoneyWithdrawn", "MoneyWithdrawn"]).steps
    assert repeated["aggregates"].to_list() == [4, 2]  # acc-1 and acc-4 withdrew twice


def test_funnel_rejects_bad_steps(tmp_path: object) -> None:
    with Lake.open(str(tmp_path)) as lake:
        with pytest.raises(InvalidArgumentError, match="at least two"):
            patterns.funnel(lake, ["AccountOpened"])
        with pytest.raises(InvalidArgumentError, match="at least two"):
            patterns.funnel(lake, "AccountOpened")
        with pytest.raises(InvalidArgumentError, match="within"):
            patterns.funnel(lake, ["AccountOpened", "MoneyDeposited"], within=timedelta(0))


# -- cohorts, mix, top ----------------------------------------------------------------------------------
COHORT_HISTORY: list[Row] = [
    ("acc-a", "AccountOpened", utc(2025, 1, 15, 12)),
    ("acc-a", "MoneyDeposited", utc(2025, 2, 3, 12)),
    ("acc-a", "MoneyDeposited", utc(2025, 3, 3, 12)),
    ("acc-b", "AccountOpened", utc(2025, 1, 31, 23, 30)),  # Feb 1 00:30 in Berlin
    ("acc-b", "MoneyDeposited", utc(2025, 3, 10, 12)),
    ("acc-c", "AccountOpened", utc(2025, 2, 10, 12)),
    ("acc-c", "MoneyDeposited", utc(2025, 2, 20, 12)),
]


def test_cohorts_by_month_of_first_event(make_lake: object) -> None:
    lake = make_lake(COHORT_HISTORY)  # type: ignore[operator]
    table = patterns.cohorts(lake).table
    assert table.select("cohort", "month", "cohort_size", "active").rows() == [
        (date(2025, 1, 1), 0, 2, 2), (date(2025, 1, 1), 1, 2, 1), (date(2025, 1, 1), 2, 2, 2),
        (date(2025, 2, 1), 0, 1, 1)]
    assert table["retention"].to_list() == [1.0, 0.5, 1.0, 1.0]
    berlin = patterns.cohorts(lake, tz=BERLIN)
    assert berlin.table.select("cohort", "month", "cohort_size", "active").rows() == [
        (date(2025, 1, 1), 0, 1, 1), (date(2025, 1, 1), 1, 1, 1), (date(2025, 1, 1), 2, 1, 1),
        (date(2025, 2, 1), 0, 2, 2), (date(2025, 2, 1), 1, 2, 1)]
    assert berlin.matrix.columns == ["cohort", "cohort_size", "0", "1", "2"]
    deposits = patterns.cohorts(lake, activity="MoneyDeposited").table
    assert deposits.select("cohort", "month", "active").rows() == [
        (date(2025, 1, 1), 1, 1), (date(2025, 1, 1), 2, 2), (date(2025, 2, 1), 0, 1)]


def test_mix_per_day_and_week(make_lake: object) -> None:
    lake = make_lake(DST_HISTORY)  # type: ignore[operator]
    table = patterns.mix(lake, *WINDOW, every="day", tz=BERLIN).table
    assert table.select("period", "event_type", "count").rows() == [
        (date(2025, 10, 25), "MoneyDeposited", 2), (date(2025, 10, 25), "MoneyWithdrawn", 1),
        (date(2025, 10, 26), "MoneyDeposited", 3), (date(2025, 10, 27), "MoneyDeposited", 1)]
    assert table["share"].to_list() == [2 / 3, 1 / 3, 1.0, 1.0]
    weekly = patterns.mix(lake, *WINDOW, every="week", tz=BERLIN).table
    assert weekly.select("period", "event_type", "count").rows() == [
        (date(2025, 10, 20), "MoneyDeposited", 5), (date(2025, 10, 20), "MoneyWithdrawn", 1),
        (date(2025, 10, 27), "MoneyDeposited", 1)]
    with pytest.raises(InvalidArgumentError, match="every must be one of"):
        patterns.mix(lake, *WINDOW, every="hour")  # type: ignore[arg-type]


def test_top_actors_and_correlation_ids(make_lake: object) -> None:
    alice, bob = {"user_id": "alice", "correlation_id": "c-1"}, {"user_id": "bob", "correlation_id": "c-2"}
    lake = make_lake([  # type: ignore[operator]
        ("acc-1", "AccountOpened", utc(2025, 1, 1), alice), ("acc-1", "MoneyDeposited", utc(2025, 1, 2), alice),
        ("acc-2", "MoneyDeposited", utc(2025, 1, 3), alice), ("acc-2", "MoneyDeposited", utc(2025, 1, 4), bob),
        ("acc-3", "AccountOpened", utc(2025, 1, 5), bob), ("acc-3", "MoneyDeposited", utc(2025, 1, 6)),
    ])
    result = patterns.top(lake, "user_id")
    assert result.events_with_key == 5
    assert result.table.select("value", "events", "share", "aggregates", "event_types").rows() == [
        ("alice", 3, 0.6, 2, 2), ("bob", 2, 0.4, 2, 2)]
    assert result.table["first_at"].to_list()[0] == utc(2025, 1, 1)
    assert patterns.top(lake, "correlation_id", n=1).table["value"].to_list() == ["c-1"]
    assert patterns.top(lake, "user_id", start=utc(2025, 1, 4)).table["events"].to_list() == [2]
    assert patterns.top(lake, "tenant").table.height == 0
    for key in ("user id", "x') OR 1=1 --", ""):
        with pytest.raises(InvalidArgumentError, match="key must be"):
            patterns.top(lake, key)
    with pytest.raises(InvalidArgumentError, match="n must be"):
        patterns.top(lake, "user_id", n=0)


def test_results_are_frozen(make_lake: object) -> None:
    lake = make_lake(DST_HISTORY)  # type: ignore[operator]
    result = patterns.analyze(lake, "MoneyDeposited", *WINDOW)
    with pytest.raises(AttributeError):
        result.total_events = 3  # type: ignore[misc]
    assert "total_events=7" in repr(result)
