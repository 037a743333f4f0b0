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
