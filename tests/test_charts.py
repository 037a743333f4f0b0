"""Every chart function gives a valid Vega-Lite spec with data, tooltips, titles and the one theme."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl
import pytest

from es_analytics import Event, Lake, charts, patterns
from es_analytics.charts import _theme
from es_analytics.errors import InvalidArgumentError

UTC = timezone.utc
START, END = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    """Twenty accounts over two months: opened, a few deposits and withdrawals, some closed."""
    with Lake.open(tmp_path_factory.mktemp("lake")) as lake:
        for n in range(20):
            opened = START + timedelta(days=2 * n, hours=9 + n % 8)
            kinds = ["AccountOpened"] + ["MoneyDeposited", "MoneyWithdrawn"] * (1 + n % 3)
            if n % 4 == 0:
                kinds.append("AccountClosed")
            events = [Event(kind, {"amount": 10}, occurred_at=opened + timedelta(hours=7 * i),
                            metadata={"user_id": f"teller-{n % 3}"}) for i, kind in enumerate(kinds)]
            lake.append(f"acc-{n:02d}", events, expected_version=0, aggregate_type="BankAccount")
        lake.seal()
        yield lake


def data_rows(spec: dict[str, Any]) -> int:
    return sum(len(rows) for rows in spec.get("datasets", {}).values())


def units(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every unit spec (one with a mark) inside layers, facets and concatenations."""
    found = []
    stack = [spec]
    while stack:
        node = stack.pop()
        if "mark" in node:
            found.append(node)
        for key in ("layer", "vconcat", "hconcat", "concat"):
            stack.extend(node.get(key, []))
        if "spec" in node:
            stack.append(node["spec"])
    return found


def mark_type(unit: dict[str, Any]) -> str:
    mark = unit["mark"]
    return str(mark["type"] if isinstance(mark, dict) else mark)


def title_text(spec: dict[str, Any]) -> str:
    title = spec["title"]
    return str(title["text"] if isinstance(title, dict) else title)


def check_common(chart: Any, *, title: str) -> dict[str, Any]:
    spec: dict[str, Any] = chart.to_dict()  # validates against the Vega-Lite schema
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/v6")
    assert data_rows(spec) > 0
    assert title in title_text(spec)
    assert spec["config"]["font"] == _theme.FONT and spec["config"]["range"]["category"] == _theme.CATEGORY
    assert all("tooltip" in u["encoding"] for u in units(spec) if mark_type(u) != "text" and
               "tooltip" not in u.get("mark", {})), "every visible mark has a tooltip"
    return spec


def test_hourly(lake: Lake) -> None:
    result = patterns.analyze(lake, "MoneyDeposited", START, END, tz="Europe/Berlin")
    spec = check_common(charts.hourly(result), title="MoneyDeposited by hour of day")
    assert mark_type(spec) == "bar"
    assert (spec["encoding"]["x"]["field"], spec["encoding"]["x"]["type"]) == ("hour", "ordinal")
    assert spec["encoding"]["y"]["field"] == "count"
    assert "Europe/Berlin" in spec["encoding"]["x"]["title"]
    rows = next(iter(spec["datasets"].values()))
    assert len(rows) == 24 and sum(r["count"] for r in rows) == result.total_events
    assert [r["hour"] for r in rows if r["peak"]] == [result.peak_hour]
    assert {t["field"] for t in spec["encoding"]["tooltip"]} == {"hours", "count", "share"}


def test_daily_shows_every_calendar_day_and_the_average(lake: Lake) -> None:
    result = patterns.analyze(lake, "MoneyDeposited", START, END)
    spec = check_common(charts.daily(result), title="MoneyDeposited per day")
    assert [mark_type(u) for u in spec["layer"]] == ["area", "point", "rule"]
    # The time axis zooms and pans (a selection bound to the x scale).
    (days,) = spec["params"]
    assert (days["select"], days["bind"]) == ({"type": "interval", "encodings": ["x"]}, "scales")
    assert days["views"] == [spec["layer"][1]["name"]]
    assert spec["layer"][0]["encoding"]["x"]["type"] == "temporal"
    datasets = list(spec["datasets"].values())
    assert sorted(len(d) for d in datasets) == [1, result.days]
    assert [d for d in datasets if len(d) == 1][0][0]["average"] == pytest.approx(result.average_per_calendar_day)
    assert f"{result.average_per_day:.2f} per active day" in spec["title"]["subtitle"]


def test_overview_stacks_both(lake: Lake) -> None:
    spec = charts.overview(patterns.analyze(lake, "MoneyDeposited", START, END)).to_dict()
    assert len(spec["vconcat"]) == 2 and spec["config"]["font"] == _theme.FONT
    assert all("config" not in part for part in spec["vconcat"])


def test_heatmap(lake: Lake) -> None:
    result = patterns.heatmap(lake, None, START, END, tz="America/New_York")
    spec = check_common(charts.heatmap(result), title="All events: weekday × hour")
    assert mark_type(spec) == "rect"
    assert spec["encoding"]["color"]["field"] == "average"
    assert spec["encoding"]["y"]["sort"] == {"field": "weekday", "op": "min", "order": "ascending"}
    assert data_rows(spec) == 168
    assert charts.heatmap(result, value="count").to_dict()["encoding"]["color"]["field"] == "count"
    with pytest.raises(InvalidArgumentError, match="value must be"):
        charts.heatmap(result, value="median")


def test_trend(lake: Lake) -> None:
    result = patterns.trend(lake, "MoneyDeposited", START, END, window=7)
    spec = check_common(charts.trend(result), title="MoneyDeposited: trend")
    top, change = spec["vconcat"]
    assert [mark_type(u) for u in top["layer"]] == ["area", "line", "point"]
    assert top["layer"][1]["encoding"]["y"]["field"] == "rolling_mean"
    assert change["encoding"]["y"]["field"] == "change"
    assert change["encoding"]["color"]["scale"]["domain"] == ["up", "down", "partial week"]


def test_anomalies_facets_by_type(lake: Lake) -> None:
    result = patterns.anomalies(lake, START, END, baseline=14)
    spec = check_common(charts.anomalies(result), title="Anomalous days")
    assert spec["facet"]["row"]["field"] == "event_type"
    assert [mark_type(u) for u in spec["spec"]["layer"]] == ["line", "point"]
    assert spec["spec"]["layer"][1]["transform"] == [{"filter": "datum.anomaly"}]
    one = charts.anomalies(result, event_type="MoneyDeposited").to_dict()
    assert data_rows(one) == result.daily.filter(pl.col("event_type") == "MoneyDeposited").height
    with pytest.raises(InvalidArgumentError, match="no daily counts"):
        charts.anomalies(result, event_type="Nope")


def test_latency(lake: Lake) -> None:
    result = patterns.latency(lake, "AccountOpened", "AccountClosed")
    spec = check_common(charts.latency(result), title="AccountOpened → AccountClosed")
    assert spec["encoding"]["x"]["sort"] == {"field": "order", "op": "min"}
    assert sum(r["aggregates"] for r in next(iter(spec["datasets"].values()))) == result.converted == 5
    assert "p50 " in spec["title"]["subtitle"] and "5 of 20 aggregates (25.0%)" in spec["title"]["subtitle"]


def test_funnel(lake: Lake) -> None:
    result = patterns.funnel(lake, ["AccountOpened", "MoneyWithdrawn", "AccountClosed"])
    spec = check_common(charts.funnel(result), title="Funnel")
    assert [mark_type(u) for u in spec["layer"]] == ["bar", "text"]
    rows = next(iter(spec["datasets"].values()))
    assert [r["label"] for r in rows] == ["1. AccountOpened", "2. MoneyWithdrawn", "3. AccountClosed"]
    assert [r["aggregates"] for r in rows] == [20, 20, 5]
    assert rows[1]["median_time"] == "14.0 h"  # opened, deposited 7 h later, withdrawn 7 h after that


def test_cohorts(lake: Lake) -> None:
    result = patterns.cohorts(lake, aggregate_type="BankAccount")
    spec = check_common(charts.cohorts(result), title="Monthly cohort retention")
    rect, text = spec["layer"]
    assert rect["encoding"]["color"]["scale"]["domain"] == [0, 1]
    assert text["encoding"]["text"]["format"] == ".0%"
    assert {r["cohort_month"] for r in next(iter(spec["datasets"].values()))} == {"2025-03", "2025-04"}


def test_mix(lake: Lake) -> None:
    result = patterns.mix(lake, START, END, every="week")
    spec = check_common(charts.mix(result), title="Event-type mix over time")
    assert spec["encoding"]["y"]["stack"] == "normalize"
    assert spec["encoding"]["color"]["field"] == "event_type"
    assert (mark_type(spec), spec["encoding"]["x"]["field"]) == ("bar", "label")
    assert spec["encoding"]["x"]["sort"] == {"field": "period", "op": "min"}
    assert charts.mix(result, normalize=False).to_dict()["encoding"]["y"]["stack"] == "zero"
    # An event type is picked from the legend: the others fade.
    assert spec["params"] == [{"name": "picked", "select": {"type": "point", "fields": ["event_type"]},
                               "bind": "legend"}]
    assert spec["encoding"]["opacity"]["condition"]["param"] == "picked"
    daily = charts.mix(patterns.mix(lake, START, END, every="day")).to_dict()
    assert (mark_type(daily), daily["encoding"]["x"]["type"]) == ("area", "temporal")


def test_top(lake: Lake) -> None:
    result = patterns.top(lake, "user_id", n=2)
    spec = check_common(charts.top(result), title="Top user_id values")
    assert spec["encoding"]["y"]["sort"] == "-x" and data_rows(spec) == 2


def test_every_chart_draws_an_empty_result(tmp_path: Path) -> None:
    with Lake.open(tmp_path / "empty") as empty:
        made = [
            charts.hourly(patterns.analyze(empty, "X", START, END)),
            charts.daily(patterns.analyze(empty, "X", START, END)),
            charts.heatmap(patterns.heatmap(empty, None, START, END)),
            charts.trend(patterns.trend(empty, "X", START, END)),
            charts.anomalies(patterns.anomalies(empty, START, END, event_type="X")),
            charts.latency(patterns.latency(empty, "A", "B")),
            charts.funnel(patterns.funnel(empty, ["A", "B"])),
            charts.cohorts(patterns.cohorts(empty)),
            charts.mix(patterns.mix(empty, START, END)),
            charts.top(patterns.top(empty)),
        ]
    for chart in made:
        assert charts.to_svg(chart).lstrip().startswith("<svg")


def test_charts_refuse_too_many_rows() -> None:
    big = pl.DataFrame({"date": pl.date_range(datetime(2000, 1, 1), datetime(2020, 1, 1), "1d", eager=True)})
    result = patterns.PatternResult("X", START, END, "UTC", None, 0,
                                    pl.DataFrame({"hour": range(24), "count": [0] * 24}),
                                    big.with_columns(count=pl.lit(1)), 1.0, 1.0)
    with pytest.raises(InvalidArgumentError, match="aggregate first"):
        _theme.check_rows(result.daily, "charts.daily")
    assert charts.daily(result).to_dict()["title"]["text"] == "X per month"  # 7,306 days drawn as 241 months
    with pytest.raises(InvalidArgumentError, match="needs the columns"):
        _theme.check_rows(pl.DataFrame({"x": [1]}), "test", required=("hour",))
    with pytest.raises(InvalidArgumentError, match="needs a polars DataFrame"):
        _theme.check_rows([1, 2], "test")  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", ["png", "svg", "html", "json"])
def test_save_offline(lake: Lake, tmp_path: Path, suffix: str) -> None:
    chart = charts.hourly(patterns.analyze(lake, "MoneyDeposited", START, END))
    path = charts.save(chart, tmp_path / "out" / f"hourly.{suffix}", scale=1)
    data = path.read_bytes()
    if suffix == "png":
        assert data.startswith(b"\x89PNG")
    elif suffix == "svg":
        assert data.lstrip().startswith(b"<svg") and b"by hour of day" in data
    elif suffix == "html":
        # Vega is inlined: no script is fetched from a CDN.
        assert b"cdn.jsdelivr" not in data and b"<script src=" not in data and len(data) > 100_000
    else:
        assert json.loads(data)["title"]["text"] == "MoneyDeposited by hour of day"


def test_save_rejects_unknown_suffix(tmp_path: Path) -> None:
    chart = alt.Chart(pl.DataFrame({"a": [1]})).mark_bar().encode(x="a:Q")
    with pytest.raises(InvalidArgumentError, match="cannot save a chart as 'x.gif'"):
        charts.save(chart, tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()


def test_to_svg_and_theme_registration() -> None:
    chart = _theme.finish(alt.Chart(pl.DataFrame({"a": [1, 2]})).mark_bar().encode(x="a:O", y="a:Q"), title="T")
    assert charts.to_svg(chart).lstrip().startswith("<svg")
    assert charts.register_theme() == "es_analytics" and "es_analytics" in alt.theme.names()
    previous = alt.theme.active
    try:
        charts.register_theme(enable=True)
        assert alt.theme.active == "es_analytics"
        # A user's own chart gets the look under "config", as Altair documents themes, and stays valid.
        own = alt.Chart(pl.DataFrame({"day": ["Mon", "Tue"], "n": [3, 5]})).mark_bar().encode(x="day:N", y="n:Q")
        spec = own.to_dict()  # validates against the Vega-Lite schema
        assert not {"background", "axis", "legend", "range", "font", "bar"} & set(spec)
        assert spec["config"]["font"] == _theme.FONT and spec["config"]["range"]["category"] == _theme.CATEGORY
        assert spec["config"]["background"] == "#ffffff" and spec["config"]["axisX"] == {"grid": False, "labelAngle": 0}
        svg = charts.to_svg(own)
        assert _theme.CATEGORY[0] in svg and "Inter" in svg  # the bars in the accent colour, the theme's font
        alt.theme.enable("default")
        assert "font" not in own.to_dict().get("config", {})
    finally:
        alt.theme.enable(previous)


def test_format_duration() -> None:
    assert [charts.format_duration(s) for s in (0, 59, 60, 3599, 3600, 86399, 86400)] == [
        "0 s", "59 s", "1.0 min", "60.0 min", "1.0 h", "24.0 h", "1.0 days"]


# -- what a notebook shows: the renderer and the data transformer "es_analytics" ---------------------
def every_chart(lake: Lake) -> dict[str, Any]:
    return {
        "hourly": charts.hourly(patterns.analyze(lake, "MoneyDeposited", START, END)),
        "overview": charts.overview(patterns.analyze(lake, "MoneyDeposited", START, END, tz="Europe/Berlin")),
        "heatmap": charts.heatmap(patterns.heatmap(lake, None, START, END)),
        "trend": charts.trend(patterns.trend(lake, "MoneyDeposited", START, END)),
        "anomalies": charts.anomalies(patterns.anomalies(lake, START, END, baseline=14)),
        "latency": charts.latency(patterns.latency(lake, "AccountOpened", "AccountClosed")),
        "funnel": charts.funnel(patterns.funnel(lake, ["AccountOpened", "MoneyWithdrawn"])),
        "cohorts": charts.cohorts(patterns.cohorts(lake)),
        "mix": charts.mix(patterns.mix(lake, START, END, every="day")),
        "top": charts.top(patterns.top(lake, "user_id")),
    }


def test_renderer_bundle_is_a_vega5_spec_and_an_svg_without_scripts(lake: Lake) -> None:
    from es_analytics.charts import display

    for name, chart in every_chart(lake).items():
        spec = chart.to_dict()
        bundle, metadata = display.mimebundle(spec)
        assert set(bundle) == {"application/vnd.vega.v5+json", "image/svg+xml", "text/plain"}, name
        vega = bundle["application/vnd.vega.v5+json"]
        assert vega["$schema"] == "https://vega.github.io/schema/vega/v5.json"
        assert metadata == {"application/vnd.vega.v5+json": {"embed_options": {"renderer": "svg", "actions": False}}}
        text = json.dumps(bundle)
        assert "<script" not in text and "vegaEmbed" not in text and "http://" not in text.replace(
            "http://www.w3.org/", ""), name
        assert bundle["image/svg+xml"].startswith("<svg") and 'class="marks"' in bundle["image/svg+xml"]
        label = f"<es_analytics chart: {title_text(spec)}>" if "title" in spec else "<es_analytics chart>"
        assert bundle["text/plain"] == label


def same_ids(svg: str) -> str:
    import re

    return re.sub(r"(gradient_|clip)\d+", r"\1", svg)


def test_compact_data_draws_the_same_chart(lake: Lake) -> None:
    """The columnar, dictionary- and affix-coded data sets give Vega the same rows: the same picture."""
    import vl_convert as vlc

    from es_analytics.charts import display

    rewritten = 0
    for name, chart in every_chart(lake).items():
        spec = chart.to_dict()
        plain = vlc.vegalite_to_vega(spec, vl_version=display.COMPILE_WITH)
        compact = display.mimebundle(spec)[0]["application/vnd.vega.v5+json"]
        rewritten += sum("flatten" in json.dumps(d.get("transform", [])) for d in compact["data"])
        # (gradient ids count up from one rendering to the next)
        assert same_ids(vlc.vega_to_svg(compact)) == same_ids(vlc.vega_to_svg(plain)), name
    assert rewritten >= 5  # most of these charts have data sets of 20 rows or more


def test_compact_text_round_trips() -> None:
    from es_analytics.charts import display

    dates = [f"2025-01-{d:02d}T00:00:00" for d in range(1, 29)]
    values, expr = display._compact_text(dates, 'datum["d"]')
    assert values[0] == "01" and expr == '"2025-01-" + datum["d"] + "T00:00:00"'
    kinds = ["a\"b", "c"] * 10
    values, expr = display._compact_text(kinds, 'datum["k"]')
    assert values[:2] == [0, 1] and expr == '["a\\"b", "c"][datum["k"]]'
    assert display._compact_text(["x1", "y2"], "d") == (["x1", "y2"], None)


def test_a_users_chart_of_decimal_money_renders(tmp_path: Path) -> None:
    """``lake.states`` holds money as Decimal; charted as it is, the chart gets floats, the frame stays exact."""
    from decimal import Decimal

    from es_analytics.charts import display
    from es_analytics.examples.bank import BankAccount

    with Lake.open(tmp_path / "bank") as bank:
        bank.append("acc-1", [Event("AccountOpened", {"initialDeposit": 100.10, "accountHolder": "A"}),
                              Event("MoneyDeposited", {"amount": 0.2})], expected_version=0,
                    aggregate_type="BankAccount")
        states = bank.states(BankAccount)
    assert isinstance(states["balance"].dtype, pl.Decimal) and states["balance"].item() == Decimal("100.3")
    chart = alt.Chart(states).mark_bar().encode(x="aggregate_id:N", y="balance:Q")
    before = alt.data_transformers.active
    try:
        alt.data_transformers.enable("default")
        with pytest.raises(TypeError, match="Decimal is not JSON serializable"):
            json.dumps(chart.to_dict())
        alt.data_transformers.enable(display.DATA_TRANSFORMER_NAME)
        spec = chart.to_dict()
        rows = next(iter(spec["datasets"].values()))
        assert rows[0]["balance"] == 100.3 and isinstance(rows[0]["balance"], float)
        assert json.loads(chart.to_json())["datasets"]
        assert "image/svg+xml" in display.mimebundle(spec)[0]
        assert states["balance"].item() == Decimal("100.3")  # the frame is untouched
        # More than 5,000 rows are still refused (aggregate first), unless the user lifts the limit.
        big = pl.DataFrame({"x": range(6_000)})
        with pytest.raises(alt.MaxRowsError):
            alt.Chart(big).mark_point().encode(x="x:Q").to_dict()
    finally:
        alt.data_transformers.enable(before)


@pytest.mark.parametrize(("years", "grain", "label"), [(3, "week", "%b %Y"), (13, "month", "%Y")])
def test_a_long_window_is_drawn_per_week_or_month_with_labels_that_fit(lake: Lake, years: int, grain: str,
                                                                        label: str) -> None:
    start = END - timedelta(days=365 * years)
    result = patterns.analyze(lake, "MoneyDeposited", start, END)
    assert result.daily.height > 1_000  # more days than a daily chart shows legibly (over 5,000 at 13 years)
    spec = check_common(charts.daily(result), title=f"MoneyDeposited per {grain}")
    assert spec["layer"][0]["encoding"]["x"]["axis"]["format"] == label
    drawn = [d for d in spec["datasets"].values()][0]
    counts = drawn["count"] if isinstance(drawn, dict) else [row["count"] for row in drawn]
    assert sum(counts) == result.total_events  # nothing lost in the coarser grain
    assert len(counts) < result.daily.height / 6


def test_the_mix_of_many_event_types_uses_twenty_colours_and_a_legend_in_columns() -> None:
    periods = pl.datetime_range(datetime(2025, 1, 1), datetime(2025, 3, 1), "1mo", time_zone="UTC", eager=True)
    table = pl.DataFrame({"period": periods}).join(
        pl.DataFrame({"event_type": [f"Activity number {i}" for i in range(16)]}), how="cross").with_columns(
        count=pl.lit(3), share=pl.lit(1 / 16))
    result = patterns.MixResult(grain="month", tz="UTC", table=table)
    color = charts.mix(result).to_dict()["encoding"]["color"]
    assert color["scale"]["scheme"] == "category20" and color["legend"]["columns"] == 2


def test_anomalies_of_many_types_over_a_long_window_show_the_types_with_most_anomalies() -> None:
    dates = pl.date_range(datetime(2024, 1, 1), datetime(2025, 12, 31), "1d", eager=True)  # 731 days
    types = [f"Type {i:02d}" for i in range(12)]  # 8,772 rows: more than a chart embeds
    daily = pl.DataFrame({"date": dates}).join(pl.DataFrame({"event_type": types}), how="cross").with_columns(
        count=pl.lit(5), median=pl.lit(5.0), mad=pl.lit(1.0), robust_z=pl.lit(0.0),
        anomaly=(pl.col("event_type").str.slice(5).cast(pl.Int64) >= 9) & (pl.col("date").dt.day() == 1))
    result = patterns.AnomalyResult(tz="UTC", threshold=3.5, baseline=None, min_deviation=3, daily=daily)
    spec = charts.anomalies(result).to_dict()
    shown = {row["event_type"] for row in next(iter(spec["datasets"].values()))} if isinstance(
        next(iter(spec["datasets"].values())), list) else set(next(iter(spec["datasets"].values()))["event_type"])
    assert {"Type 09", "Type 10", "Type 11"} <= shown and len(shown) == 5_000 // 731
    assert "of 12 event types with the most" in spec["title"]["subtitle"]
