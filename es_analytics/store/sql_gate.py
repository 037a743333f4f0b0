"""The gate in front of ``lake.sql``: one read-only query tree, or a typed refusal.

A user's statement is accepted only if DuckDB's own parser reads it as exactly one ``SELECT`` (or a plain
``EXPLAIN`` of one) and the parsed tree, serialised by ``json_serialize_sql``, holds nothing that runs other
SQL or, in safe mode, touches files:

- ``EXPLAIN ANALYZE`` runs its statement, so only ``EXPLAIN <select>`` is an explanation here;
- ``json_serialize_sql`` serialises ``SELECT`` trees only, so DDL, DML, ``COPY``, ``PRAGMA``, ``SET``,
  ``ATTACH``, ``INSTALL``, ``LOAD``, ``CALL`` … are refused at any depth;
- the table functions ``query`` and ``query_table`` (which run a string as SQL) are refused always;
- in safe mode only table functions that read no files are allowed, a table named like a file path
  (DuckDB's replacement scan of ``FROM 'x.csv'``) is refused.

The gate is the first line. The second is where the statement runs (see ``DuckReader.user_query``): in a
transaction that is always rolled back, so even a statement the gate wrongly let through could not change
the lake's views, and in safe mode on a connection whose file-system access is off and locked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import duckdb

from ..errors import QueryError, ReadOnlyQueryError

__all__ = ["check_user_sql"]

_EXPLAIN = re.compile(r"\A\s*EXPLAIN\s+(?P<query>.*)\Z", re.IGNORECASE | re.DOTALL)

# Table functions that run a string as SQL: refused in every mode.
_RUNS_SQL = frozenset({"query", "query_table"})

# Table functions safe mode allows: generators and DuckDB's read-only catalog functions (``duckdb_*``).
_SAFE_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "json_each", "json_tree", "test_all_types",
    "pragma_table_info", "pragma_show", "pragma_storage_info", "pragma_version", "pragma_database_size",
    "pragma_metadata_info", "pragma_functions", "pragma_collations", "pragma_platform",
    "pragma_user_agent",
})

# A table name that DuckDB would take for a file (a replacement scan): a path, an extension or a glob.
_FILE_LIKE = re.compile(r"[./\\:*?]")


def check_user_sql(con: duckdb.DuckDBPyConnection, sql: object, *, safe: bool) -> None:
    """Raise ``ReadOnlyQueryError`` (or ``QueryError``) unless ``sql`` is one read-only query tree."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError(f"the query must be non-empty SQL text, got {sql!r}")
    query = _the_select(con, sql)
    for node in _tree(con, query):
        _check_node(node, safe=safe)


def _the_select(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """The one SELECT the statement runs: the statement itself, or what a plain EXPLAIN explains."""
    kind = _statement_kind(con, sql)
    if kind == "SELECT":
        return sql
    if kind == "EXPLAIN":
        explained = _EXPLAIN.match(sql)
        if explained and _is_select(con, explained["query"]):
            return explained["query"]
        raise ReadOnlyQueryError(
            "lake.sql only reads: EXPLAIN is allowed only as 'EXPLAIN SELECT …' (EXPLAIN ANALYZE runs its "
            "statement)"
        )
    raise ReadOnlyQueryError(
        f"lake.sql only reads: a {kind} statement is not allowed (the lake changes only through "
        "append, seal and forget)"
    )


def _is_select(con: duckdb.DuckDBPyConnection, sql: str) -> bool:
    try:
        return _statement_kind(con, sql) == "SELECT"
    except QueryError:
        return False


def _statement_kind(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"lake.sql: {exc}") from exc
    if len(statements) != 1:
        raise QueryError(f"lake.sql runs exactly one statement, got {len(statements)}")
    return str(statements[0].type.name)


def _tree(con: duckdb.DuckDBPyConnection, query: str) -> Iterator[dict[str, Any]]:
    """Every node (JSON object) of the parsed query tree."""
    parsed = json.loads(con.sql("SELECT json_serialize_sql(?)", params=[query]).fetchall()[0][0])
    if parsed.get("error"):
        raise ReadOnlyQueryError(f"lake.sql only reads: {parsed.get('error_message', 'not a query')}")
    if len(parsed["statements"]) != 1:
        raise QueryError(f"lake.sql runs exactly one statement, got {len(parsed['statements'])}")
    stack: list[Any] = [parsed["statements"][0]]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_node(node: dict[str, Any], *, safe: bool) -> None:
    kind = node.get("type")
    if kind == "TABLE_FUNCTION":
        name = str(node["function"].get("function_name", "")).lower()
        if name in _RUNS_SQL:
            raise ReadOnlyQueryError(f"lake.sql only reads: the table function {name}() runs other SQL")
        if safe and name not in _SAFE_TABLE_FUNCTIONS and not name.startswith("duckdb_"):
            raise ReadOnlyQueryError(
                f"lake.sql in safe mode reads only the lake: the table function {name}() may read files "
                "outside the lake"
            )
    elif kind == "BASE_TABLE" and safe and _FILE_LIKE.search(str(node.get("table_name", ""))):
        raise ReadOnlyQueryError(
            f"lake.sql in safe mode reads only the lake: {node['table_name']!r} names a file outside the lake"
        )
