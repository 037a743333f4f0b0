"""The gate in front of ``lake.sql``: a corpus of statements it must accept or refuse, in both modes.

After every refused statement the history read back is unchanged and no file was written anywhere under
the test's folder (the lake included).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from es_analytics import Event, Lake
from es_analytics.errors import QueryError, ReadOnlyQueryError
from es_analytics.events import EVENT_SCHEMA
from es_analytics.store.reader import DuckReader

# Statements that read: accepted in both modes.
READS = [
    "SELECT 1",
    "select count(*) from events",
    "FROM events",
    "FROM events SELECT event_type",
    "SELECT * FROM events WHERE aggregate_id = 'acc-1'",
    "SELECT event_type, count(*) AS n FROM events GROUP BY ALL ORDER BY ALL",
    "WITH t AS (SELECT * FROM events) SELECT count(*) FROM t",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT sum(n) FROM r",
    "SELECT * FROM (SELECT * FROM (SELECT position FROM events) a) b",
    "SELECT position FROM events WHERE position IN (SELECT max(position) FROM events)",
    "SELECT EXISTS (SELECT 1 FROM events) AS e",
    "SELECT data->>'$.amount' AS amount FROM events",
    "SELECT json_extract(data, '$.amount') FROM events",
    "SELECT 'DROP TABLE events' AS not_a_statement",
    "SELECT 1 -- ; DROP VIEW events",
    "SELECT /* CREATE TABLE x AS SELECT 1 */ 1",
    "SELECT 'COPY (SELECT 1) TO ''x.csv''' AS text",
    "SELECT \"position\" FROM events",
    "SELECT * FROM events ORDER BY position DESC LIMIT 1",
    "SELECT * FROM events QUALIFY row_number() OVER (PARTITION BY aggregate_id ORDER BY position DESC) = 1",
    "SELECT aggregate_id, arg_max(aggregate_version, position) FROM events GROUP BY 1",
    "SELECT * FROM range(3)",
    "SELECT * FROM generate_series(1, 3)",
    "SELECT unnest([1, 2, 3])",
    "SELECT * FROM duckdb_views() WHERE view_name = 'events'",
    "SELECT count(*) FROM duckdb_columns()",
    "SELECT * FROM pragma_table_info('events')",
    "SELECT 1 UNION ALL SELECT 2",
    "SELECT 1 UNION SELECT 1",
    "SELECT 1 EXCEPT SELECT 2",
    "SELECT 1 INTERSECT SELECT 1",
    "VALUES (1), (2)",
    "SELECT * FROM (VALUES (1, 'a')) t(n, s)",
    "SUMMARIZE SELECT position FROM events",
    "SELECT * FROM (DESCRIBE events)",
    "DESCRIBE SELECT * FROM events",
    "EXPLAIN SELECT * FROM events",
    "explain select count(*) from events",
    "EXPLAIN\n  SELECT 1",
    "SELECT current_setting('threads') AS t",
    "SELECT date_trunc('day', occurred_at) AS d, count(*) FROM events GROUP BY 1",
    "SELECT * FROM events e1 JOIN events e2 USING (aggregate_id)",
    "SELECT list(event_type ORDER BY position) FROM events",
    "SELECT * FROM events USING SAMPLE 1",
    "SELECT 'é' AS ünïcode",
    "SELECT 1 AS \"DROP\"",
    "  \n\tSELECT 1\n",
    "SELECT * FROM main.events",
    "SELECT * FROM events, LATERAL (SELECT position + 1 AS p) x",
    "UNPIVOT (SELECT aggregate_id, event_type FROM events) ON event_type INTO NAME k VALUE v",
]

# Statements that change something, run other SQL or escape: refused in both modes.
CHANGES = [
    "DROP VIEW events",
    "DROP TABLE IF EXISTS events",
    "CREATE TABLE t AS SELECT 1",
    "CREATE OR REPLACE VIEW events AS SELECT 42 AS position",
    "CREATE TEMP VIEW x AS SELECT 1",
    "CREATE MACRO m(a) AS a",
    "CREATE SEQUENCE s",
    "CREATE SCHEMA s",
    "CREATE TYPE mood AS ENUM ('a')",
    "CREATE INDEX i ON events(position)",
    "ALTER VIEW events RENAME TO old_events",
    "ALTER TABLE events ADD COLUMN x INT",
    "INSERT INTO events SELECT * FROM events",
    "UPDATE events SET event_type = 'X'",
    "DELETE FROM events",
    "TRUNCATE events",
    "MERGE INTO events USING events AS s ON false WHEN NOT MATCHED THEN DO NOTHING",
    "COPY (SELECT 42) TO 'out.csv'",
    "COPY events TO 'out.parquet' (FORMAT parquet)",
    "COPY events FROM 'in.csv'",
    "EXPORT DATABASE 'dump'",
    "IMPORT DATABASE 'dump'",
    "ATTACH 'x.db' AS x",
    "ATTACH ':memory:' AS m",
    "DETACH x",
    "USE x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "SET enable_external_access = true",
    "RESET threads",
    "PRAGMA version",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "CHECKPOINT",
    "VACUUM",
    "ANALYZE",
    "BEGIN TRANSACTION",
    "COMMIT",
    "ROLLBACK",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    "DEALLOCATE p",
    "EXPLAIN ANALYZE SELECT 1",
    "EXPLAIN ANALYZE COPY (SELECT 42) TO 'out.csv'",
    "EXPLAIN ANALYZE CREATE OR REPLACE VIEW events AS SELECT 42 AS position",
    "EXPLAIN ANALYZE DROP VIEW events",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "explain analyze select 1",
    "EXPLAIN /* c */ ANALYZE SELECT 1",
    "EXPLAIN COPY (SELECT 1) TO 'out.csv'",
    "EXPLAIN CREATE TABLE t AS SELECT 1",
    "EXPLAIN (FORMAT json) SELECT 1",
    "EXPLAIN EXPLAIN ANALYZE SELECT 1",
    "SELECT * FROM query('CREATE TABLE t AS SELECT 1')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM query_table('events')",
    "SELECT * FROM (SELECT * FROM query('DROP VIEW events'))",
    "WITH q AS (SELECT * FROM query('SELECT 1')) SELECT * FROM q",
    "SELECT 1; DROP VIEW events",
    "DROP VIEW events; SELECT 1",
    "SELECT 1; SELECT 2",
    "PIVOT events ON event_type",
    "PIVOT_WIDER events ON event_type USING count(*) GROUP BY aggregate_id",
    "CREATE OR REPLACE VIEW \"events\" AS SELECT 1",
    "cReAtE tAbLe t AS SELECT 1",
    "/* SELECT */ DROP VIEW events",
    "-- SELECT\nDROP VIEW events",
    "UPDATE events SET event_type = (SELECT 'X')",
    "WITH x AS (SELECT 1) INSERT INTO events SELECT * FROM events",
    "",
    "   ",
    ";",
]

# Reads of files outside the lake: allowed normally, refused in safe mode.
OUTSIDE = [
    "SELECT * FROM read_csv('{csv}')",
    "SELECT * FROM read_csv_auto('{csv}')",
    "SELECT * FROM '{csv}'",
    "SELECT * FROM read_text('{csv}')",
    "SELECT * FROM read_blob('{csv}')",
    "SELECT * FROM glob('{folder}/*')",
    "SELECT count(*) FROM (SELECT * FROM read_csv('{csv}'))",
    "WITH x AS (SELECT * FROM read_csv('{csv}')) SELECT * FROM x",
    "SELECT count(*) FROM events WHERE event_type IN (SELECT a::VARCHAR FROM read_csv('{csv}'))",
    "SELECT * FROM read_parquet('{folder}/*.parquet')",
    "SELECT * FROM parquet_metadata('{folder}/*.parquet')",
    "SELECT * FROM sniff_csv('{csv}')",
]


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(params=[False, True], ids=["normal", "safe"])
def setting(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Lake, Path, bool]]:
    safe = bool(request.param)
    (tmp_path / "outside.csv").write_text("a\n1\n")
    with Lake.open(tmp_path / "lake", safe_sql=safe) as lake:
        for n in range(1, 4):
            lake.append("acc-1", [Event("MoneyDeposited", {"amount": n}, event_id=f"e-{n}")],
                        expected_version=n - 1, aggregate_type="BankAccount")
        lake.seal()
        lake.append("acc-1", [Event("MoneyDeposited", {"amount": 4}, event_id="e-4")],
                    expected_version=3, aggregate_type="BankAccount")
        yield lake, tmp_path, safe


def test_the_corpus_is_large_enough() -> None:
    assert len(READS) + len(CHANGES) + len(OUTSIDE) >= 100
    assert len(set(READS + CHANGES + OUTSIDE)) == len(READS + CHANGES + OUTSIDE)


@pytest.mark.parametrize("statement", READS)
def test_reads_are_accepted(setting: tuple[Lake, Path, bool], statement: str) -> None:
    lake, _, _ = setting
    assert isinstance(lake.sql(statement), pl.DataFrame)


def test_refused_statements_change_nothing(setting: tuple[Lake, Path, bool]) -> None:
    lake, folder, _ = setting
    before_events, before_files = lake.events(), _files(folder)
    cwd = os.getcwd()
    os.chdir(folder)  # relative targets ('out.csv', 'x.db') would land here
    try:
        for statement in CHANGES:
            with pytest.raises((ReadOnlyQueryError, QueryError)):
                lake.sql(statement)
            assert _files(folder) == before_files, statement
    finally:
        os.chdir(cwd)
    assert lake.events().equals(before_events)
    assert lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 4
    assert lake.current_version("acc-1") == 4


def test_the_gate_refuses_with_a_reason(setting: tuple[Lake, Path, bool]) -> None:
    lake, _, _ = setting
    with pytest.raises(ReadOnlyQueryError, match="EXPLAIN ANALYZE runs its statement"):
        lake.sql("EXPLAIN ANALYZE SELECT 1")
    with pytest.raises(ReadOnlyQueryError, match=r"query\(\) runs other SQL"):
        lake.sql("SELECT * FROM query('SELECT 1')")
    with pytest.raises(ReadOnlyQueryError, match="a DROP statement is not allowed"):
        lake.sql("DROP VIEW events")
    with pytest.raises(QueryError, match="exactly one statement"):
        lake.sql("SELECT 1; SELECT 2")


@pytest.mark.parametrize("template", OUTSIDE)
def test_outside_files_only_outside_safe_mode(setting: tuple[Lake, Path, bool], template: str) -> None:
    lake, folder, safe = setting
    pl.DataFrame({"a": [1]}).write_parquet(folder / "outside.parquet")
    statement = template.format(csv=folder / "outside.csv", folder=folder)
    if safe:
        with pytest.raises(ReadOnlyQueryError, match="safe mode"):
            lake.sql(statement)
    else:
        assert lake.sql(statement).height >= 1


def test_what_runs_for_lake_sql_is_rolled_back(tmp_path: Path) -> None:
    """The second line behind the gate: a statement that changed a view would not keep the change."""
    reader = DuckReader(tmp_path, safe=False)
    try:
        reader.install((), 0, EVENT_SCHEMA.empty_table(), (1, 0))
        before = reader.query("SELECT sql FROM duckdb_views() WHERE view_name = 'events'", None, what="t")
        reader.rolled_back("CREATE OR REPLACE VIEW events AS SELECT 42 AS position")
        reader.rolled_back("CREATE TABLE kept AS SELECT 1 AS n")
        after = reader.query("SELECT sql FROM duckdb_views() WHERE view_name = 'events'", None, what="t")
        assert after.equals(before)
        assert reader.query("SELECT count(*) AS n FROM events", None, what="t")["n"].item() == 0
        assert reader.query("SELECT count(*) AS n FROM duckdb_tables()", None, what="t")["n"].item() == 0
    finally:
        reader.close()
