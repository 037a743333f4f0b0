"""Event logs in (XES, CSV, Parquet through the event-log profile), process analytics out; every figure is
checked against a plain-Python computation over the same log."""

from __future__ import annotations

import gzip
import json
import random
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from xml.sax.saxutils import quoteattr

import polars as pl
import pytest

from es_analytics import Lake, ordering
from es_analytics import process as pr
from es_analytics.errors import InvalidArgumentError
from es_analytics.ingest.eventlog import ingest_event_log, read_event_log, read_xes

T0 = datetime(2024, 1, 1, 8, tzinfo=timezone.utc)
ACTIVITIES = ["Create Fine", "Send Fine", "Insert Fine Notification", "Añadir penalización", "Payment",
              "Appeal to Judge", "it's 'quoted'; DROP TABLE events; --"]
RESOURCES = ["ana", "bo", "chen", None]


def make_log(cases: int = 60, seed: int = 3) -> list[dict]:
    """Events in file order: case, activity, time (ties inside cases), resource, amount (a number)."""
    rng = random.Random(seed)
    rows = []
    for c in range(cases):
        t = T0 + timedelta(hours=rng.randrange(0, 24 * 40))
        for _ in range(rng.randint(1, 6)):
            rows.append({"case": f"C {c:03d}", "activity": rng.choice(ACTIVITIES), "time": t,
                         "resource": rng.choice(RESOURCES), "amount": rng.randint(1, 500)})
            t += timedelta(minutes=rng.choice([0, 0, 5, 90, 600, 3000]))  # equal timestamps happen
    rng.shuffle(rows)  # file order is not time order
    return rows


def write_xes(path: Path, rows: list[dict], *, offset: timedelta = timedelta(hours=2)) -> None:
    """An XES file of ``rows`` (times written in a +02:00 zone), traces in first-seen order."""
    traces: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        traces[row["case"]].append(row)
    zone = timezone(offset)
    lines = ["<?xml version='1.0' encoding='UTF-8'?>", '<log xes.version="1.0" xmlns="http://www.xes-standard.org/">',
             '<string key="concept:name" value="a log attribute, not a case"/>']
    for case, events in traces.items():
        lines.append(f'<trace><string key="concept:name" value={quoteattr(case)}/>'
                     f'<string key="region" value="north"/>')
        for e in events:
            lines.append("<event>")
            lines.append(f'<string key="concept:name" value={quoteattr(e["activity"])}/>')
            lines.append(f'<date key="time:timestamp" value="{e["time"].astimezone(zone).isoformat()}"/>')
            if e["resource"] is not None:
                lines.append(f'<string key="org:resource" value="{e["resource"]}"/>')
            lines.append(f'<int key="amount" value="{e["amount"]}"/>')
            lines.append('<string key="lifecycle:transition" value="complete"/></event>')
        lines.append("</trace>")
    lines.append("</log>")
    text = "\n".join(lines)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")


def ordered_cases(rows: list[dict]) -> dict[str, list[dict]]:
    """The reference order: by time, ties in the order the XES file lists them (trace by trace)."""
    traces: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        traces[row["case"]].append(row)
    return {case: sorted(events, key=lambda e: e["time"]) for case, events in traces.items()}  # sort is stable


def p90(values: list[float]) -> float:
    return values[0] if len(values) == 1 else statistics.quantiles(values, n=10, method="inclusive")[8]


@pytest.fixture
def log_lake(tmp_path: Path) -> tuple[Lake, dict[str, list[dict]]]:
    rows = make_log()
    write_xes(tmp_path / "fines.xes.gz", rows)
    lake = Lake.open(tmp_path / "lake")
    result = ingest_event_log(lake, tmp_path / "fines.xes.gz")
    assert (result.read, result.imported, result.rejected) == (len(rows), len(rows), 0)
    return lake, ordered_cases(rows)


# -- reading and ingesting logs --------------------------------------------------------------------------------
def test_xes_is_read_event_by_event_with_case_attributes(tmp_path: Path) -> None:
    rows = make_log(cases=5)
    write_xes(tmp_path / "log.xes", rows)
    frame = read_xes(tmp_path / "log.xes")
    assert frame.height == len(rows)
    assert {"case:concept:name", "case:region", "concept:name", "time:timestamp", "amount"} <= set(frame.columns)
    assert frame["case:region"].unique().to_list() == ["north"]
    assert "a log attribute, not a case" not in frame["concept:name"].to_list()
    assert frame["amount"].dtype == pl.Int64
    assert Counter(frame["concept:name"].to_list()) == Counter(r["activity"] for r in rows)
    with pytest.raises(InvalidArgumentError, match="not a readable XES log"):
        (tmp_path / "bad.xes").write_text("<log><trace>", encoding="utf-8")
        read_xes(tmp_path / "bad.xes")


def test_an_event_log_goes_in_whole_with_versions_in_time_order_and_again_adds_nothing(
        tmp_path: Path, log_lake: tuple[Lake, dict[str, list[dict]]]) -> None:
    lake, reference = log_lake
    stored = lake.events().sort("aggregate_id", "aggregate_version")
    assert stored["aggregate_type"].unique().to_list() == ["Case"]
    for case, events in reference.items():
        part = stored.filter(pl.col("aggregate_id") == case)
        assert part["event_type"].to_list() == [e["activity"] for e in events]  # real names, as they are
        assert part["occurred_at"].to_list() == [e["time"] for e in events]
        assert [json.loads(d)["amount"] for d in part["data"].to_list()] == [e["amount"] for e in events]
    again = ingest_event_log(lake, tmp_path / "fines.xes.gz")
    assert (again.imported, again.already_present) == (0, sum(map(len, reference.values())))
    assert ordering.summary(lake)["late_events"].item() == 0  # history, not lateness
    assert ordering.lateness(lake)["events"].sum() == 0


def test_csv_and_parquet_logs_with_their_own_column_names(tmp_path: Path) -> None:
    rows = make_log(cases=8)
    frame = pl.DataFrame([{**r, "time": r["time"].isoformat()} for r in rows])
    frame.write_csv(tmp_path / "log.csv")
    frame.with_columns(("P" + pl.col("case")).alias("case")).write_parquet(tmp_path / "log.parquet")  # other cases
    with Lake.open(tmp_path / "lake") as lake:
        for name in ("log.csv", "log.parquet"):
            result = ingest_event_log(lake, tmp_path / name, case="case", activity="activity", timestamp="time",
                                      aggregate_type="Fine", log_name=name.replace(".", "-"))
            assert (result.imported, result.rejected) == (len(rows), 0)
        assert lake.sql("SELECT count(*) AS n FROM events WHERE aggregate_type = 'Fine'")["n"].item() == 2 * len(rows)
        assert read_event_log(tmp_path / "log.csv").height == len(rows)
        with pytest.raises(InvalidArgumentError, match="the case column 'nope'"):
            ingest_event_log(lake, tmp_path / "log.csv", case="nope", activity="activity", timestamp="time")


def test_the_command_line_imports_a_log_and_never_hides_a_rejected_row(tmp_path: Path) -> None:
    rows = make_log(cases=4)
    frame = pl.DataFrame([{**r, "time": r["time"].isoformat()} for r in rows])
    frame = pl.concat([frame, frame.head(1).with_columns(pl.lit("no time").alias("time"),
                                                         pl.lit("C 999").alias("case"))])
    frame.write_csv(tmp_path / "log.csv")
    args = [sys.executable, "-m", "es_analytics.cli", "ingest", "--lake", str(tmp_path / "lake"), "--event-log",
            str(tmp_path / "log.csv"), "--case", "case", "--activity", "activity", "--timestamp", "time",
            "--rejects", str(tmp_path / "rejects.csv")]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert f"{len(rows)} of {len(rows) + 1} rows went in" in done.stderr
    assert "occurred_at is missing" in (tmp_path / "rejects.csv").read_text(encoding="utf-8")
    assert subprocess.run([*args, "--allow-rejects"], capture_output=True, text=True).returncode == 0


# -- the analyses --------------------------------------------------------------------------------------------
def test_directly_follows_graph_matches_a_count_over_the_log(log_lake: tuple[Lake, dict[str, list[dict]]]) -> None:
    lake, reference = log_lake
    gaps: dict[tuple[str, str], list[float]] = defaultdict(list)
    cases_with: dict[tuple[str, str], set[str]] = defaultdict(set)
    for case, events in reference.items():
        for a, b in zip(events, events[1:]):
            gaps[(a["activity"], b["activity"])].append((b["time"] - a["time"]).total_seconds())
            cases_with[(a["activity"], b["activity"])].add(case)
    graph = pr.directly_follows(lake, "Case")
    assert graph.height == len(gaps)
    for source, target, frequency, median, high, cases in graph.iter_rows():
        values = gaps[(source, target)]
        assert frequency == len(values) and cases == len(cases_with[(source, target)])
        assert median == pytest.approx(statistics.median(values))
        assert high == pytest.approx(p90(values))
    assert graph["frequency"].to_list() == sorted(graph["frequency"].to_list(), reverse=True)


def test_variants_cases_and_boundaries_match_the_log(log_lake: tuple[Lake, dict[str, list[dict]]]) -> None:
    lake, reference = log_lake
    sequences = {case: tuple(e["activity"] for e in events) for case, events in reference.items()}
    counts = Counter(sequences.values())
    found = pr.variants(lake, "Case")
    assert {tuple(v): n for v, n in zip(found["variant"].to_list(), found["cases"].to_list())} == counts
    assert found["share"].sum() == pytest.approx(1.0)
    table = pr.cases(lake, "Case")
    assert table.height == len(reference)
    for case, start, end, duration, events, variant, rework in table.iter_rows():
        mine = reference[case]
        assert (start, end) == (mine[0]["time"], mine[-1]["time"])
        assert duration == (mine[-1]["time"] - mine[0]["time"]).total_seconds()
        assert events == len(mine) and tuple(variant) == sequences[case]
        assert rework == len(mine) - len({e["activity"] for e in mine})
    starts = pr.start_activities(lake, "Case")
    assert dict(starts.select("activity", "cases").iter_rows()) == Counter(s[0] for s in sequences.values())
    ends = pr.end_activities(lake, "Case")
    assert dict(ends.select("activity", "cases").iter_rows()) == Counter(s[-1] for s in sequences.values())


def test_handovers_and_arrivals_match_the_log(log_lake: tuple[Lake, dict[str, list[dict]]]) -> None:
    lake, reference = log_lake
    expected: Counter[tuple[str, str]] = Counter()
    for events in reference.values():
        owned = [e["resource"] for e in events if e["resource"] is not None]
        expected.update((a, b) for a, b in zip(owned, owned[1:]) if a != b)
    found = pr.handovers(lake, "Case")
    assert {(s, t): n for s, t, n, _ in found.iter_rows()} == expected
    days = pr.arrivals(lake, "Case", every="day")
    started = Counter(e[0]["time"].replace(hour=0, minute=0) for e in reference.values())
    assert {d: n for d, n in zip(days["period"].to_list(), days["started"].to_list()) if n} == started
    assert days["finished"].sum() == len(reference)
    with pytest.raises(InvalidArgumentError, match="every must be one of"):
        pr.arrivals(lake, "Case", every="fortnight")


def test_filters_select_cases_activities_variants_attributes_and_time(
        log_lake: tuple[Lake, dict[str, list[dict]]]) -> None:
    lake, reference = log_lake
    some = sorted(reference)[:10]
    assert sorted(pr.cases(lake, "Case", cases=some)["case_id"].to_list()) == some
    only = pr.cases(lake, "Case", activities=["Payment"])
    assert only["events"].sum() == sum(1 for es in reference.values() for e in es if e["activity"] == "Payment")
    top = pr.variants(lake, "Case")["variant"][0].to_list()
    assert pr.cases(lake, "Case", variant=top)["case_id"].to_list() == sorted(
        (c for c, es in reference.items() if [e["activity"] for e in es] == top),
        key=lambda c: (reference[c][0]["time"], c))
    with_bo = {c for c, es in reference.items() if any(e["resource"] == "bo" for e in es)}
    assert set(pr.cases(lake, "Case", attributes={"org:resource": "bo"})["case_id"].to_list()) == with_bo
    cut = T0 + timedelta(days=20)
    early = pr.cases(lake, "Case", as_of=cut)
    assert early["events"].sum() == sum(1 for es in reference.values() for e in es if e["time"] <= cut)
    assert pr.cases(lake, "Case", known_at=T0).height == 0  # nothing was recorded before the import
    hostile = ACTIVITIES[-1]
    assert pr.directly_follows(lake, "Case", activities=[hostile])["source"].unique().to_list() in ([], [hostile])
    assert lake.sql("SELECT count(*) AS n FROM events")["n"].item() == sum(map(len, reference.values()))
    with pytest.raises(InvalidArgumentError):
        pr.cases(lake, "Case", variant="Payment")
    with pytest.raises(InvalidArgumentError):
        pr.cases(lake, "Not a type!")


# -- charts --------------------------------------------------------------------------------------------------
def test_process_charts_draw_what_the_analyses_found(log_lake: tuple[Lake, dict[str, list[dict]]]) -> None:
    from es_analytics import charts
    from es_analytics.charts import process as pc

    lake, reference = log_lake
    graph = pr.directly_follows(lake, "Case")
    drawn = pc.process_map(graph, starts=pr.start_activities(lake, "Case")).to_dict()
    layers = {layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]: layer
              for layer in drawn["layer"]}
    nodes = drawn["datasets"][layers["circle"]["data"]["name"]]
    edges = drawn["datasets"][layers["rule"]["data"]["name"]]
    assert {n["activity"] for n in nodes} == {a for es in reference.values() for e in es for a in [e["activity"]]}
    assert len(edges) == graph.filter(pl.col("source") != pl.col("target")).height
    starts = {es[0]["activity"] for es in reference.values()}
    assert {n["activity"] for n in nodes if n["x"] == 0} <= starts
    found = pr.variants(lake, "Case")
    explorer = pc.variant_explorer(found, top=5).to_dict()
    steps = next(iter(explorer["datasets"].values()))
    assert len(steps) == sum(found.head(5)["length"].to_list())
    events = pr.events(lake, "Case", max_cases=20)
    assert events["case_id"].n_unique() == 20
    for chart in (pc.process_map(graph), pc.variant_explorer(found), pc.dotted_chart(events),
                  pc.performance_spectrum(events), pc.case_durations(pr.cases(lake, "Case"))):
        svg = charts.to_svg(chart)
        assert svg.startswith("<svg") and "<path" in svg
    with pytest.raises(InvalidArgumentError, match="needs the columns"):
        pc.case_durations(found)
    with pytest.raises(InvalidArgumentError, match="min_frequency"):
        pc.process_map(graph, min_frequency=10**9)


def test_a_chart_of_many_activities_does_not_repeat_an_eight_colour_palette(tmp_path: Path) -> None:
    from es_analytics.charts import process as pc

    log = pl.DataFrame({"case": [f"c{i % 5}" for i in range(60)], "activity": [f"Activity {i % 15}" for i in range(60)],
                        "time": [(T0 + timedelta(minutes=i)).isoformat() for i in range(60)]})
    with Lake.open(tmp_path / "lake") as lake:
        ingest_event_log(lake, log, case="case", activity="activity", timestamp="time")
        spec = pc.dotted_chart(pr.events(lake, "Case")).to_dict()
    assert spec["encoding"]["color"]["scale"]["scheme"] == "category20"
