"""The es-analytics command line: the installed entry point end to end, and every command through CliRunner."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import polars as pl
import pytest
from click.testing import CliRunner

from es_analytics import Lake
from es_analytics.cli import cli

BIN = Path(sys.executable).parent / "es-analytics"
ROW = {"event_type": "MoneyDeposited", "aggregate_type": "BankAccount", "aggregate_id": "acc-1",
       "occurred_at": "2025-03-01T09:00:00Z", "data": {"amount": 10}}


def run_bin(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.fixture(scope="module")
def sample_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sample lake, made once through the command line."""
    path = tmp_path_factory.mktemp("cli") / "sample"
    result = CliRunner().invoke(cli, ["generate", "--lake", str(path), "--events", "3000", "--no-progress"])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def lake_copy(sample_path: Path, tmp_path: Path) -> Path:
    """A copy of the sample lake that a test may change."""
    target = tmp_path / "lake"
    shutil.copytree(sample_path, target)
    return target


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# -- the installed entry point ---------------------------------------------------------------------------
def test_entry_point_init_ingest_and_query(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({**ROW, "event_id": f"e{v}", "aggregate_version": v}) + "\n"
                              for v in (1, 2)) + "{broken\n", encoding="utf-8")
    env = {"ES_ANALYTICS_LAKE": str(lake)}
    assert "created an empty lake" in run_bin("init", env=env).stdout
    ingested = run_bin("ingest", str(events), "--input-format", "jsonl", "--rejects", str(tmp_path / "r.csv"),
                       "--format", "json", env=env)
    assert ingested.returncode == 3, ingested.stderr  # a rejected row never passes silently
    summary = json.loads(ingested.stdout)
    assert (summary["imported"], summary["rejected"]) == (2, 1)
    assert f"{events}:3: line is not a JSON object" in ingested.stderr
    assert "2 of 3 rows went in (2 new)" in ingested.stderr and "1 of 3 rows rejected" in ingested.stderr
    partial = run_bin("ingest", str(events), "--allow-rejects", "--rejects", str(tmp_path / "r2.csv"), env=env)
    assert partial.returncode == 0, partial.stderr
    assert re.search(r"^already_present\s+2$", partial.stdout, re.MULTILINE)
    query = run_bin("sql", "SELECT event_id, aggregate_version FROM events ORDER BY position", "--format", "csv",
                    env=env)
    assert query.stdout.splitlines() == ["event_id,aggregate_version", "e1,1", "e2,2"]


def test_entry_point_errors_go_to_stderr_with_status(tmp_path: Path) -> None:
    missing = run_bin("events", "--lake", str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert "no lake at" in missing.stderr and "es-analytics init" in missing.stderr
    run_bin("init", "--lake", str(tmp_path / "lake"))
    refused = run_bin("sql", "--lake", str(tmp_path / "lake"), "SELECT * FROM read_csv('/etc/passwd')")
    assert refused.returncode == 1
    assert "ReadOnlyQueryError" in refused.stderr
    usage = run_bin("state", "--lake", str(tmp_path / "lake"), "acc-1", "--as-of", "2025-06-01T12:00")
    assert usage.returncode == 2
    assert "has no time zone; add Z (UTC) or an offset" in usage.stderr


def test_entry_point_demo_on_a_small_sample(tmp_path: Path) -> None:
    result = run_bin("demo", "--lake", str(tmp_path / "sample"), "--events", "3000", "--build", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    for heading in ("1. What the lake holds", "One account through time", "Every account as of",
                    "When do deposits happen?", "5. Integrity", "hash chain over"):
        assert heading in result.stdout
    assert "OK" in result.stdout
    written = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert written[0] == "deposit-patterns.png" and written[1].startswith("known-at-acc-")
    assert "<html" in (tmp_path / "b" / written[1]).read_text(encoding="utf-8")[:500].lower()
    assert "Creating the sample lake" in result.stdout
    # the printed facts are the lake's, whatever the machine's time zone
    again = run_bin("demo", "--lake", str(tmp_path / "sample"), "--build", str(tmp_path / "b2"),
                    env={"TZ": "America/Los_Angeles"})
    found = re.search(r"A deposit to (\S+) that occurred (\S+ \S+) UTC was only recorded (\S+ \S+) UTC", again.stdout)
    assert found, again.stdout
    with Lake.open(tmp_path / "sample") as lake:
        row = lake.sql("SELECT strftime(occurred_at, '%Y-%m-%d %H:%M') AS o, strftime(recorded_at, '%Y-%m-%d %H:%M') AS r "
                       "FROM events WHERE aggregate_id = ? AND recorded_at - occurred_at > INTERVAL 3 DAY "
                       "AND event_type = 'MoneyDeposited' ORDER BY position LIMIT 1", [found.group(1)]).row(0)
        assert (found.group(2), found.group(3)) == row
        states = lake.sql(  # the demo shows every account as of an hour after that deposit occurred
            "SELECT count(DISTINCT aggregate_id) AS n FROM events WHERE aggregate_type = 'BankAccount' AND "
            "occurred_at <= (SELECT occurred_at FROM events WHERE aggregate_id = ? AND event_type = 'MoneyDeposited' "
            "AND recorded_at - occurred_at > INTERVAL 3 DAY ORDER BY position LIMIT 1) + INTERVAL 1 HOUR",
            [found.group(1)])["n"].item()
    assert re.search(rf"^{states:,} accounts rebuilt in", again.stdout, re.MULTILINE)
    # the three balances of the account through time, against the lake's own fold
    from datetime import timedelta

    from es_analytics.examples.bank import BankAccount

    printed = re.findall(r"balance\s+([\d,]+\.\d\d)\s+(\w+)\s+version (\d+)", again.stdout)[:3]
    with Lake.open(tmp_path / "sample") as lake:
        occurred, recorded = lake.sql(
            "SELECT occurred_at, recorded_at FROM events WHERE aggregate_id = ? AND event_type = 'MoneyDeposited' "
            "AND recorded_at - occurred_at > INTERVAL 3 DAY ORDER BY position LIMIT 1", [found.group(1)]).row(0)
        as_of = occurred + timedelta(hours=1)
        folds = [lake.aggregate(BankAccount, found.group(1), as_of=as_of, known_at=recorded - timedelta(seconds=1)),
                 lake.aggregate(BankAccount, found.group(1), as_of=as_of), lake.aggregate(BankAccount, found.group(1))]
    assert printed == [(f"{a.balance:,.2f}", a.status, str(a.version)) for a in folds]


# -- every command ------------------------------------------------------------------------------------------
def all_commands() -> list[tuple[str, click.Command]]:
    found = []
    with click.Context(cli, info_name="es-analytics") as ctx:
        for name in cli.list_commands(ctx):
            command = cli.get_command(ctx, name)
            assert command is not None
            found.append((name, command))
            if isinstance(command, click.Group):
                found += [(f"{name} {sub}", command.commands[sub]) for sub in command.list_commands(ctx)]
    return found


def test_help_lists_every_command_and_each_ends_with_an_example() -> None:
    names = {name for name, _ in all_commands()}
    assert {"init", "generate", "ingest", "sql", "events", "state", "patterns", "report", "seal", "verify",
            "forget", "lab", "demo"} <= names
    for name, _ in all_commands():
        text = invoke(*name.split(), "--help").output
        example = text.rsplit("Example:", 1)
        assert len(example) == 2, f"{name} --help has no Example"
        lines = [line.strip() for line in example[1].splitlines() if line.strip()]
        assert lines and all(line.startswith("es-analytics ") for line in lines), f"{name}: help must end with it"


def test_events_with_filters(sample_path: Path) -> None:
    out = invoke("events", "--lake", str(sample_path), "acc-0000001", "--format", "json").output
    rows = json.loads(out)
    assert [r["aggregate_version"] for r in rows] == list(range(1, len(rows) + 1))
    csv_out = invoke("events", "--lake", str(sample_path), "--type", "MoneyWithdrawn", "--since", "2025-03-01",
                     "--until", "2025-03-31", "--format", "csv").output
    frame = pl.read_csv(io.StringIO(csv_out), try_parse_dates=True)
    assert set(frame["event_type"]) == {"MoneyWithdrawn"}
    assert frame.height > 0
    assert frame["occurred_at"].dt.month().unique().to_list() == [3]


def test_state_of_one_and_of_all_as_of_and_known_at(sample_path: Path) -> None:
    from datetime import datetime, timezone

    from es_analytics.examples.bank import BankAccount

    with Lake.open(sample_path) as lake:
        account = lake.sql("SELECT aggregate_id FROM events WHERE event_type = 'AccountOpened' "
                           "ORDER BY occurred_at LIMIT 1")["aggregate_id"].item()
        expected_one = lake.aggregate(BankAccount, account, as_of=datetime(2025, 6, 1, tzinfo=timezone.utc))
        expected_all = lake.states(BankAccount, as_of=datetime(2025, 6, 1, tzinfo=timezone.utc),
                                   known_at=datetime(2025, 6, 15, tzinfo=timezone.utc))
    assert expected_one is not None
    one = json.loads(invoke("state", "--lake", str(sample_path), account, "--as-of", "2025-06-01",
                            "--format", "json").output)
    assert (one["version"], one["status"], float(one["balance"])) == (
        expected_one.version, expected_one.status, float(expected_one.balance))
    every = invoke("state", "--lake", str(sample_path), "--type", "BankAccount", "--as-of", "2025-06-01",
                   "--known-at", "2025-06-15", "--format", "csv").output
    frame = pl.read_csv(io.StringIO(every))
    assert frame["aggregate_id"].to_list() == expected_all["aggregate_id"].to_list()
    assert frame["version"].to_list() == expected_all["version"].to_list()
    by_class = invoke("state", "--lake", str(sample_path), "--class", "es_analytics.examples.bank:BankAccount",
                      "--as-of", "2025-06-01", "--known-at", "2025-06-15", "--format", "csv").output
    assert by_class == every
    bad_class = CliRunner().invoke(cli, ["state", "--lake", str(sample_path), "--class", "no.such.module:Thing"])
    assert bad_class.exit_code == 1 and "cannot import 'no.such.module:Thing'" in bad_class.output
    gone = CliRunner().invoke(cli, ["state", "--lake", str(sample_path), account, "--as-of", "2000-01-01"])
    assert gone.exit_code == 1 and "did not exist at that time" in gone.output
    unknown = CliRunner().invoke(cli, ["state", "--lake", str(sample_path), "--type", "Spaceship"])
    assert unknown.exit_code == 1 and "no aggregate class for type 'Spaceship'" in unknown.output


def test_sql_outputs(sample_path: Path, tmp_path: Path) -> None:
    query = "SELECT aggregate_type, count(*) AS n FROM events GROUP BY ALL ORDER BY aggregate_type"
    with Lake.open(sample_path) as lake:
        expected = lake.sql(query)
    table = invoke("sql", "--lake", str(sample_path), query).output
    assert "| BankAccount" in table and f"{expected['n'][0]:,}" in table
    as_json = json.loads(invoke("sql", "--lake", str(sample_path), query, "--format", "json").output)
    assert as_json == expected.to_dicts()
    target = tmp_path / "out.parquet"
    invoke("sql", "--lake", str(sample_path), query, "--format", "parquet", "--output", str(target))
    assert pl.read_parquet(target).equals(expected)
    bound = invoke("sql", "--lake", str(sample_path), "SELECT count(*) AS n FROM events WHERE aggregate_id = ?",
                   "--param", "acc-0000001", "--format", "csv").output
    assert int(bound.splitlines()[1]) == len(json.loads(invoke(
        "events", "--lake", str(sample_path), "acc-0000001", "--format", "json").output))
    no_output = CliRunner().invoke(cli, ["sql", "--lake", str(sample_path), query, "--format", "parquet"])
    assert no_output.exit_code == 1 and "--format parquet needs --output" in no_output.output
    changed = CliRunner().invoke(cli, ["sql", "--lake", str(sample_path), "DELETE FROM events"])
    assert changed.exit_code == 1 and "ReadOnlyQueryError" in changed.output


def test_patterns_summary_and_chart(sample_path: Path, tmp_path: Path) -> None:
    from datetime import datetime, timezone

    from es_analytics import patterns

    with Lake.open(sample_path) as lake:
        expected = patterns.analyze(lake, "MoneyDeposited", datetime(2025, 1, 1, tzinfo=timezone.utc),
                                    datetime(2025, 7, 1, tzinfo=timezone.utc), tz="Europe/Berlin")
    chart = tmp_path / "p.json"
    out = invoke("patterns", "--lake", str(sample_path), "MoneyDeposited", "--start", "2025-01-01",
                 "--end", "2025-07-01", "--tz", "Europe/Berlin", "--chart", str(chart), "--format", "json").output
    body = json.loads(out[: out.rindex("}") + 1])
    assert body["total_events"] == expected.total_events
    assert body["hourly"] == expected.hourly.to_dicts()
    spec = json.loads(chart.read_text(encoding="utf-8"))
    assert "vega-lite" in spec["$schema"] and len(spec["vconcat"]) == 2
    table = invoke("patterns", "--lake", str(sample_path), "MoneyDeposited", "--start", "2025-01-01",
                   "--end", "2025-07-01").output
    assert "total_events" in table and "█" in table


def test_seal_verify_and_tamper_detection(lake_copy: Path) -> None:
    with Lake.open(lake_copy) as lake:
        from es_analytics import Event

        lake.append("acc-new", [Event("AccountOpened", {"accountId": "acc-new", "initialDeposit": 5,
                                                        "accountHolder": "Ann"})],
                    expected_version=0, aggregate_type="BankAccount")
    sealed = json.loads(invoke("seal", "--lake", str(lake_copy), "--format", "json").output)
    assert sealed["sealed_events"] == 1
    ok = json.loads(invoke("verify", "--lake", str(lake_copy), "--format", "json").output)
    assert ok["ok"] is True and ok["first_bad_event"] is None
    assert ok["fsck_ok"] is True and ok["checked_events"] == sealed["sealed_position"]
    import pyarrow.parquet as pq

    with Lake.open(lake_copy) as lake:
        path = lake_copy / lake._store.manifest().files[0].path
    table = pq.read_table(path)
    data = table["data"].to_pylist()
    data[0] = data[0].replace("1", "9", 1) if "1" in data[0] else data[0] + " "
    pq.write_table(table.set_column(table.schema.get_field_index("data"), "data",
                                    __import__("pyarrow").array(data)), path)
    bad = CliRunner().invoke(cli, ["verify", "--lake", str(lake_copy), "--no-files"])
    assert bad.exit_code == 1
    assert "did not verify" in bad.output


def test_forget_and_reports(lake_copy: Path, tmp_path: Path) -> None:
    with Lake.open(lake_copy) as lake:
        subject = lake.sql("SELECT min(aggregate_id) AS s FROM events WHERE aggregate_type = 'User'")["s"].item()
        account = lake.sql("SELECT min(aggregate_id) AS a FROM events WHERE aggregate_type = 'BankAccount'")["a"].item()
    access = tmp_path / "access.html"
    out = invoke("report", "subject", "--lake", str(lake_copy), subject, "-o", str(access), "--format", "json").output
    assert json.loads(out)["file"] == str(access)
    assert subject in access.read_text(encoding="utf-8")
    refused = CliRunner().invoke(cli, ["forget", "--lake", str(lake_copy), subject], input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    certificate = json.loads(invoke("forget", "--lake", str(lake_copy), subject, "--reason", "test", "--yes",
                                    "--format", "json").output)
    assert certificate["subject_id"] == subject and certificate["verified"] is True
    again = CliRunner().invoke(cli, ["forget", "--lake", str(lake_copy), subject, "--yes"])
    assert again.exit_code == 1 and "SubjectForgottenError" in again.output
    for args in (["erasure", subject], ["audit", "--aggregate-id", account], ["integrity"],
                 ["known-at", "2025-06-01", "--aggregate-id", account, "--type", "BankAccount"]):
        target = tmp_path / f"{args[0]}.html"
        result = CliRunner().invoke(cli, ["report", args[0], "--lake", str(lake_copy), *args[1:], "-o", str(target)])
        assert result.exit_code == 0, result.output
        assert target.stat().st_size > 1000 and "watermark" in result.output
    both = CliRunner().invoke(cli, ["report", "audit", "--lake", str(lake_copy)])
    assert both.exit_code == 1 and "InvalidArgumentError" in both.output


def test_generate_refuses_a_lake_with_events(sample_path: Path) -> None:
    result = CliRunner().invoke(cli, ["generate", "--lake", str(sample_path), "--events", "1000"])
    assert result.exit_code == 1
    assert "needs an empty lake" in result.output


def test_ingest_mapping_option_and_bad_pairs(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["uid", "event_type", "aggregate_type", "aggregate_id", "aggregate_version", "ts", "data"])
        out.writerow(["a1", "MoneyDeposited", "BankAccount", "acc-1", 1, "2025-03-01 10:00:00", '{"amount": 1}'])
    lake = tmp_path / "lake"
    result = invoke("ingest", "--lake", str(lake), str(path), "--map", "event_id=uid", "--map", "occurred_at=ts",
                    "--timezone", "Europe/Berlin", "--format", "json").stdout
    assert json.loads(result)["imported"] == 1
    with Lake.open(lake) as opened:
        assert opened.events()["occurred_at"].dt.hour().item() == 9
    bad = CliRunner().invoke(cli, ["ingest", "--lake", str(lake), str(path), "--map", "event_id"])
    assert bad.exit_code == 2 and "is not FIELD=COLUMN" in bad.output


def test_lab_command_line(lake_copy: Path, tmp_path: Path) -> None:
    out = invoke("lab", "--lake", str(lake_copy), "--no-browser", "--port", "8899", "--dry-run").output
    assert out.startswith(f"ES_ANALYTICS_LAKE={lake_copy} ")
    assert "-m jupyterlab --notebook-dir=" in out and "--no-browser" in out and "--port=8899" in out
    assert ("--allow-root" in out) == (os.geteuid() == 0)


def test_lab_starts_jupyterlab_with_the_lake(lake_copy: Path, tmp_path: Path) -> None:
    """The installed entry point starts a real JupyterLab server on the notebooks, with the lake set."""
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    (notebooks / "hello.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data"), "JUPYTER_TOKEN": "test-token"}
    server = subprocess.Popen(
        [str(BIN), "lab", "--lake", str(lake_copy), "--notebooks", str(notebooks), "--no-browser", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        listing = None
        while time.monotonic() < deadline and listing is None:
            try:
                url = f"http://127.0.0.1:{port}/api/contents?token=test-token"
                with urllib.request.urlopen(url, timeout=2) as response:
                    listing = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert listing is not None, "JupyterLab did not answer"
        assert [item["name"] for item in listing["content"]] == ["hello.ipynb"]
    finally:
        server.terminate()
        server.wait(timeout=30)
