"""Agreement with pm4py (a test-only oracle: it is AGPL and never imported by es_analytics): the same XES
file read by pm4py and ingested into a lake gives the same cases, events, start and end activities, every
directly-follows edge with its count and median time, every variant count and every case duration.

Logs: generated ones with equal timestamps, many activities and multi-year spans, and the real logs of
``../shared/data/eventlogs/`` where that folder is present next to the project.
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from es_analytics import Lake
from es_analytics import process as pr
from es_analytics.ingest.eventlog import ingest_event_log

from test_process import T0, write_xes

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "eventlogs"
REAL = sorted(p for p in SHARED.glob("*.xes*")) if SHARED.is_dir() else []


def generated(tmp_path: Path, *, activities: int, cases: int, years: int, seed: int) -> Path:
    rng = random.Random(seed)
    names = [f"Step {i:02d} – {'é' * (i % 3)}ñ" for i in range(activities)]
    rows = []
    for c in range(cases):
        t = T0 + timedelta(days=rng.randrange(0, 365 * years))
        for _ in range(rng.randint(1, 12)):
            rows.append({"case": f"case-{c}", "activity": rng.choice(names), "time": t,
                         "resource": rng.choice(["r1", "r2", None]), "amount": rng.randint(0, 9)})
            t += timedelta(seconds=rng.choice([0, 0, 0, 1, 3600, 86400 * rng.randint(1, 200)]))
    path = tmp_path / f"generated-{seed}.xes"
    write_xes(path, rows)
    return path


LOGS = {
    "ties-few-activities": dict(activities=4, cases=150, years=1, seed=1),
    "many-activities": dict(activities=40, cases=200, years=2, seed=2),
    "multi-year": dict(activities=8, cases=120, years=13, seed=3),
}


@pytest.fixture(params=[*LOGS, *(p.name for p in REAL)])
def log_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param in LOGS:
        return generated(tmp_path, **LOGS[request.param])
    return SHARED / request.param


def pm4py_view(path: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pm4py

        frame = pm4py.read_xes(str(path))
        dfg, starts, ends = pm4py.discover_dfg(frame)
        performance, _, _ = pm4py.discover_performance_dfg(frame)
        return {
            "events": len(frame), "cases": frame["case:concept:name"].nunique(),
            "dfg": dict(dfg), "starts": dict(starts), "ends": dict(ends),
            "median": {edge: float(stats["median"]) for edge, stats in performance.items()},
            "variants": {tuple(v): int(n) for v, n in pm4py.get_variants(frame).items()},
            "durations": sorted(float(d) for d in pm4py.get_all_case_durations(frame)),
        }


def test_process_analytics_agree_with_pm4py(log_file: Path, tmp_path: Path) -> None:
    expected = pm4py_view(log_file)
    with Lake.open(tmp_path / "lake") as lake:
        result = ingest_event_log(lake, log_file)
        assert (result.imported, result.rejected) == (expected["events"], 0)
        cases = pr.cases(lake, "Case")
        assert (cases.height, int(cases["events"].sum())) == (expected["cases"], expected["events"])
        graph = pr.directly_follows(lake, "Case")
        assert {(s, t): n for s, t, n in graph.select("source", "target", "frequency").iter_rows()} == expected["dfg"]
        medians = {(s, t): m for s, t, m in graph.select("source", "target", "median_seconds").iter_rows()}
        assert medians == pytest.approx(expected["median"])
        assert dict(pr.start_activities(lake, "Case").select("activity", "cases").iter_rows()) == expected["starts"]
        assert dict(pr.end_activities(lake, "Case").select("activity", "cases").iter_rows()) == expected["ends"]
        variants = pr.variants(lake, "Case")
        assert Counter({tuple(v): n for v, n in variants.select("variant", "cases").iter_rows()}) == Counter(
            expected["variants"])
        assert sorted(cases["duration_seconds"].to_list()) == pytest.approx(expected["durations"])


@pytest.mark.parametrize("suffix", ["json", "xml"])
def test_an_object_centric_log_flattened_on_a_type_agrees_with_pm4py(tmp_path: Path, suffix: str) -> None:
    """OCEL 2.0 written by pm4py, read by es_analytics and flattened on an object type: the same
    directly-follows graph and variants as pm4py's own flattening."""
    import pandas as pd

    rng = random.Random(5)
    activities = ["Place Order", "Pick Item", "Pack", "Ship", "Pay Invoice"]
    items = [f"i{n}" for n in range(40)]
    orders = [f"o{n}" for n in range(12)]
    events, relations = [], []
    t = pd.Timestamp("2024-01-01 08:00")
    for n in range(300):
        t += pd.Timedelta(minutes=rng.choice([0, 1, 30, 240]))
        activity = rng.choice(activities)
        events.append({"ocel:eid": f"e{n}", "ocel:activity": activity, "ocel:timestamp": t,
                       "weight": float(rng.randint(1, 9))})
        for oid, kind in [(rng.choice(orders), "order")] + [(i, "item") for i in rng.sample(items, rng.randint(0, 3))]:
            relations.append({"ocel:eid": f"e{n}", "ocel:activity": activity, "ocel:timestamp": t, "ocel:oid": oid,
                              "ocel:type": kind, "ocel:qualifier": "part"})
    objects = pd.DataFrame([{"ocel:oid": o, "ocel:type": "order"} for o in orders]
                           + [{"ocel:oid": i, "ocel:type": "item"} for i in items])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pm4py
        from pm4py.objects.ocel.obj import OCEL

        ocel = OCEL(events=pd.DataFrame(events), objects=objects, relations=pd.DataFrame(relations))
        path = tmp_path / f"orders.{suffix}ocel"
        (pm4py.write_ocel2_json if suffix == "json" else pm4py.write_ocel2_xml)(ocel, str(path))
        expected = {}
        for kind in ("order", "item"):
            # pm4py's variants read a case's rows as consecutive: sort the flattened log by case (stable)
            flat = pm4py.ocel_flattening(ocel, kind).sort_values(["case:concept:name", "time:timestamp"], kind="stable")
            dfg, starts, ends = pm4py.discover_dfg(flat)
            expected[kind] = (dict(dfg), {tuple(v): int(c) for v, c in pm4py.get_variants(flat).items()}, len(flat))
    with Lake.open(tmp_path / "lake") as lake:
        for kind in ("order", "item"):
            result = ingest_event_log(lake, path, object_type=kind, aggregate_type=kind.capitalize(),
                                      timezone="UTC", log_name=f"orders-{kind}")
            dfg, variants, rows = expected[kind]
            assert (result.imported, result.rejected) == (rows, 0)
            graph = pr.directly_follows(lake, kind.capitalize())
            assert {(s, t): n for s, t, n in graph.select("source", "target", "frequency").iter_rows()} == dfg
            found = pr.variants(lake, kind.capitalize())
            assert {tuple(v): n for v, n in found.select("variant", "cases").iter_rows()} == variants
        weights = lake.sql("SELECT DISTINCT json_extract(data, '$.weight')::DOUBLE AS w FROM events")["w"].to_list()
        assert set(weights) <= {float(w) for w in range(1, 10)}
