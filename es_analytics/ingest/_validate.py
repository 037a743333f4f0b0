"""Turn raw batches into event records, or into rejects with a reason, in DuckDB queries per batch.

A cheap query takes the rows that pass every check (all of them, in a clean file); the rows it stops go
through the full query, which names the first thing wrong with each.

Every check of ``Event`` and ``Lake.append`` is applied column-wise: identifiers, versions, timezone-aware
ISO 8601 times, payloads that are JSON objects. The SQL below is fixed text; everything that comes from
the source (JSON keys, time zone) is a bound parameter, and source column names never reach SQL (readers
rename columns to the event record's names first).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..events import INVISIBLE_SQL, MAX_EVENT_TYPE_LENGTH, MAX_ID_LENGTH, MAX_JSON_BYTES, parse_json
from ..errors import InvalidArgumentError
from ._sources import FIELDS, RawBatch

__all__ = ["Validator", "VALID_COLUMNS"]

VALID_COLUMNS = (
    "event_id", "event_type", "schema_version", "aggregate_type", "aggregate_id", "aggregate_version",
    "occurred_at", "data", "metadata", "_line",
)
_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
_CONTROL = INVISIBLE_SQL
_UNFIT_ID = r"^\s+$|" + INVISIBLE_SQL  # only white space, or a control or invisible formatting character
_ISO_WITH_ZONE = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d.*([Zz]|[+-]\d\d(:?\d\d)?)"
_ISO = r"\d{4}-\d\d-\d\d([T ]\d\d:\d\d.*)?"


def _text_expr(name: str, kind: str, json_index: int | None) -> str:
    """SQL giving the field as text (or NULL), whatever the source's encoding."""
    if json_index is not None:
        return f"_j[{json_index}]"
    if kind == "nested":
        return f"to_json({name})::VARCHAR"
    if kind in ("timestamp", "naive"):
        return f"{name}::VARCHAR"
    return f"{name}::VARCHAR"


def _json_expr(name: str, json_index: int | None, kind: str) -> str:
    """SQL giving a payload field as JSON text: an object stays JSON; a string is taken as JSON text."""
    if json_index is not None:
        return f"_j[{json_index}]"
    if kind == "nested":
        return f"to_json({name})::VARCHAR"
    return f"{name}::VARCHAR"


def _occurred_expr(kind: str) -> str:
    if kind == "timestamp":
        return "occurred_at_src::TIMESTAMPTZ"
    if kind == "naive":
        return "CASE WHEN $tz IS NOT NULL THEN timezone($tz, occurred_at_src::TIMESTAMP) END"
    return (
        f"CASE WHEN regexp_full_match(occurred_at, '{_ISO_WITH_ZONE}') THEN TRY_CAST(occurred_at AS TIMESTAMPTZ) "
        f"WHEN $tz IS NOT NULL AND regexp_full_match(occurred_at, '{_ISO}') "
        "THEN timezone($tz, TRY_CAST(occurred_at AS TIMESTAMP)) END"
    )


def _reason_sql(kind: str) -> str:
    """The first thing wrong with a row, or NULL: one CASE, checked in the order a person would fix them."""
    def quoted(col: str) -> str:
        return f"'''' || left({col}, 80) || ''''"

    zone_hint = (
        "'occurred_at ' || " + quoted("occurred_at") + " || ' has no time zone; pass timezone= (--timezone) "
        "to say which zone naive times are in'"
    )
    naive = (
        f"WHEN occurred_at_ts IS NULL AND NOT regexp_full_match(occurred_at, '{_ISO_WITH_ZONE}') "
        f"AND $tz IS NULL AND regexp_full_match(occurred_at, '{_ISO}') THEN {zone_hint} "
    )
    if kind == "naive":
        naive = "WHEN occurred_at_ts IS NULL AND $tz IS NULL THEN 'occurred_at is a timestamp without time zone; pass timezone= (--timezone)' "
    elif kind == "timestamp":
        naive = ""
    return (
        "CASE WHEN NOT _parsed THEN 'line is not a JSON object' "
        "WHEN event_id IS NULL OR event_id = '' THEN 'event_id is missing' "
        f"WHEN length(event_id) > {MAX_ID_LENGTH} THEN 'event_id is longer than {MAX_ID_LENGTH} characters' "
        f"WHEN regexp_matches(event_id, '{_CONTROL}') THEN 'event_id holds control or invisible characters' "
        "WHEN regexp_full_match(event_id, '\\s+') THEN 'event_id is only white space' "
        "WHEN event_type IS NULL OR event_type = '' THEN 'event_type is missing' "
        f"WHEN length(event_type) > {MAX_EVENT_TYPE_LENGTH} THEN 'event_type is longer than {MAX_EVENT_TYPE_LENGTH} characters' "
        f"WHEN regexp_matches(event_type, '{_CONTROL}') THEN 'event_type holds control or invisible characters' "
        "WHEN regexp_full_match(event_type, '\\s+') THEN 'event_type is only white space' "
        "WHEN aggregate_type IS NULL OR aggregate_type = '' THEN 'aggregate_type is missing' "
        f"WHEN NOT regexp_full_match(aggregate_type, '{_IDENT}') THEN 'aggregate_type ' || {quoted('aggregate_type')} "
        "|| ' is not an identifier (letters, digits, _)' "
        "WHEN aggregate_id IS NULL OR aggregate_id = '' THEN 'aggregate_id is missing' "
        f"WHEN length(aggregate_id) > {MAX_ID_LENGTH} THEN 'aggregate_id is longer than {MAX_ID_LENGTH} characters' "
        f"WHEN regexp_matches(aggregate_id, '{_CONTROL}') THEN 'aggregate_id holds control or invisible characters' "
        "WHEN regexp_full_match(aggregate_id, '\\s+') THEN 'aggregate_id is only white space' "
        "WHEN aggregate_version IS NULL OR aggregate_version = '' THEN 'aggregate_version is missing' "
        "WHEN aggregate_version_n IS NULL OR aggregate_version_n < 1 THEN 'aggregate_version ' || "
        f"{quoted('aggregate_version')} || ' is not a positive integer' "
        "WHEN schema_version_n IS NULL OR schema_version_n < 1 OR schema_version_n > 2147483647 THEN "
        f"'schema_version ' || {quoted('schema_version')} || ' is not a positive integer' "
        "WHEN occurred_at IS NULL OR occurred_at = '' THEN 'occurred_at is missing' "
        f"{naive}"
        "WHEN occurred_at_ts IS NULL THEN 'occurred_at ' || " + quoted("occurred_at") + " || ' is not an ISO 8601 time' "
        "WHEN data IS NULL OR data = '' THEN 'data is missing' "
        "WHEN NOT (starts_with(ltrim(data), '{') AND json_valid(data)) THEN 'data is not a JSON object' "
        f"WHEN strlen(data) > {MAX_JSON_BYTES} THEN 'data is larger than {MAX_JSON_BYTES} bytes' "
        "WHEN NOT (starts_with(ltrim(metadata), '{') AND json_valid(metadata)) THEN 'metadata is not a JSON object' "
        f"WHEN strlen(metadata) > {MAX_JSON_BYTES} THEN 'metadata is larger than {MAX_JSON_BYTES} bytes' "
        "END"
    )


def _ok_sql() -> str:
    """True for a row that every check of ``_reason_sql`` passes and that ``_strict_json`` need not look at.

    Each condition is at least as strict as the check it stands for, so a row it lets through gets a NULL
    reason from the full query; a row it stops (rare) is validated again by the full query, which gives
    the reason, and then by :func:`_strict_json`. Payloads pass only when they are flat objects with
    distinct keys, no word NaN or Infinity, no reserved key and no run of 19 digits; any other payload is
    parsed by the same rules as ``Event`` (plain substring tests are 10x cheaper than a regex).
    """
    text_ok = " AND ".join(
        f"starts_with({c}, '{{') AND strlen({c}) <= {MAX_JSON_BYTES} AND NOT contains({c}, 'NaN') "
        f"AND NOT contains({c}, 'Infinity') AND NOT contains({c}, 'enc\"') "
        f"AND NOT regexp_matches({c}, '[0-9]{{19}}') AND NOT contains(substr({c}, 2), '{{') "
        f"AND json_valid({c}) AND len(try(json_keys({c}))) = len(list_distinct(try(json_keys({c}))))"
        for c in ("data", "metadata"))
    return (
        f"event_id <> '' AND length(event_id) <= {MAX_ID_LENGTH} AND NOT regexp_matches(event_id, '{_UNFIT_ID}') "
        f"AND event_type <> '' AND length(event_type) <= {MAX_EVENT_TYPE_LENGTH} "
        f"AND NOT regexp_matches(event_type, '{_UNFIT_ID}') AND regexp_full_match(aggregate_type, '{_IDENT}') "
        f"AND aggregate_id <> '' AND length(aggregate_id) <= {MAX_ID_LENGTH} "
        f"AND NOT regexp_matches(aggregate_id, '{_UNFIT_ID}') "
        "AND aggregate_version_n >= 1 AND schema_version_n BETWEEN 1 AND 2147483647 AND occurred_at_ts IS NOT NULL "
        f"AND {text_ok}"
    )


_OK_SQL = _ok_sql()


class Validator:
    """Validates raw batches of one source (its columns and encodings are fixed when it is made)."""

    def __init__(self, columns: Mapping[str, str], *, json_lines: bool, kinds: Mapping[str, str], timezone: str | None) -> None:
        self.columns = dict(columns)
        self.json_lines = json_lines
        self.kinds = dict(kinds)
        self.timezone = timezone
        self.con = duckdb.connect(config={"threads": 2})
        self.con.execute("SET TimeZone = 'UTC'")
        self._sql = self._build()

    def close(self) -> None:
        self.con.close()

    def _build(self) -> str:
        present = [f for f in FIELDS if f in self.columns]
        index = {f: i + 1 for i, f in enumerate(present)} if self.json_lines else {}
        text = {}
        for name in FIELDS:
            if name not in self.columns:
                text[name] = {"schema_version": "'1'", "metadata": "'{}'"}[name]
            elif name in ("data", "metadata"):
                text[name] = _json_expr(name, index.get(name), self.kinds.get(name, ""))
            else:
                text[name] = _text_expr(name, self.kinds.get(name, ""), index.get(name))
        occurred_kind = "" if self.json_lines else self.kinds.get("occurred_at", "")
        if self.json_lines:
            # One parse for validity, one to pull every field out as text (json_extract_string gives the
            # text of strings and numbers, and the minified JSON of objects).
            parsed = "(json_valid(_record) AND starts_with(ltrim(_record), '{'))"
            base = (f"SELECT _line, _record, {parsed} AS _parsed, "
                    f"CASE WHEN {parsed} THEN json_extract_string(_record, $paths) END AS _j FROM raw")
            # The fast path keeps only lines that are JSON objects (the others take the full query); a
            # filter instead of a CASE, which costs about as much as the extraction itself.
            fast_base = ("SELECT _line, json_extract_string(_record, $paths) AS _j FROM raw "
                         "WHERE starts_with(_record, '{') AND json_valid(_record)")
            occurred_src = "NULL"
        else:
            base = "SELECT *, true AS _parsed FROM raw"
            fast_base = "SELECT * FROM raw"
            occurred_src = "occurred_at" if "occurred_at" in self.columns else "NULL"
        fields = ", ".join(f"{expr} AS {name}" for name, expr in text.items() if name != "metadata")
        metadata = f"coalesce(nullif({text['metadata']}, ''), '{{}}')"
        fast_fields, fast_metadata, ok_sql = fields, metadata, _OK_SQL
        if self.json_lines and self._structure is not None:
            # The fast path reads the fields with json_transform (one struct, ~12% less CPU than
            # json_extract_string with a list of paths), taking payloads as JSON: an object comes out as its
            # minified text, valid by construction, so json_valid need not parse it again; a payload given
            # as a string of JSON text comes out quoted, fails starts_with('{') and goes to the full query.
            fast_base = ("SELECT _line, json_transform(_record, $structure) AS _j FROM raw "
                         "WHERE starts_with(_record, '{') AND json_valid(_record)")
            fast = {name: (f"struct_extract_at(_j, {index[name]})::VARCHAR" if name in index else text[name])
                    for name in FIELDS}
            fast_fields = ", ".join(f"{expr} AS {name}" for name, expr in fast.items() if name != "metadata")
            fast_metadata = f"coalesce(nullif({fast['metadata']}, ''), '{{}}')"
            ok_sql = _OK_SQL.replace(" AND json_valid(data)", "").replace(" AND json_valid(metadata)", "")
        record = "_record" if self.json_lines else "to_json(struct_pack(" + ", ".join(
            f"{name} := {name}" for name in FIELDS if name in self.columns) + "))::VARCHAR"
        numbers = (
            "n AS (SELECT *, "
            "CASE WHEN regexp_full_match(aggregate_version, '\\s*[0-9]{1,18}\\s*') THEN CAST(aggregate_version AS BIGINT) END AS aggregate_version_n, "
            "CASE WHEN regexp_full_match(schema_version, '\\s*[0-9]{1,10}\\s*') THEN CAST(schema_version AS BIGINT) END AS schema_version_n, "
            f"{_occurred_expr(occurred_kind)} AS occurred_at_ts FROM t)"
        )
        values = (  # ids in Unicode NFC, as Event and Lake.append store them
            "nfc_normalize(event_id) AS event_id, nfc_normalize(event_type) AS event_type, "
            "schema_version_n::INTEGER AS schema_version, "
            "aggregate_type, nfc_normalize(aggregate_id) AS aggregate_id, "
            "aggregate_version_n AS aggregate_version, occurred_at_ts AS occurred_at, "
        )
        self._fast_sql = (
            f"WITH b AS MATERIALIZED ({fast_base}), "
            f"t AS (SELECT _line, {occurred_src} AS occurred_at_src, {fast_fields}, {fast_metadata} AS metadata FROM b), "
            f"{numbers}, "
            f"o AS (SELECT *, ({ok_sql}) IS TRUE AS _ok FROM n) "
            f"SELECT _line, _ok, {values}"
            f"CASE WHEN _ok THEN {self._minified('data')} END AS data, "
            f"CASE WHEN _ok THEN {self._minified('metadata')} END AS metadata FROM o"
        )
        return (
            f"WITH b AS MATERIALIZED ({base}), "
            f"t AS (SELECT _line, _parsed, {record} AS _raw, {occurred_src} AS occurred_at_src, {fields}, "
            f"{metadata} AS metadata FROM b), "
            f"{numbers}, "
            f"r AS (SELECT *, {_reason_sql(occurred_kind)} AS _reason FROM n) "
            "SELECT _line, _reason, CASE WHEN _reason IS NOT NULL THEN left(rtrim(_raw, chr(13) || chr(10)), 500) END AS _raw, "
            f"{values}"
            f"CASE WHEN _reason IS NULL THEN {self._minified('data')} END AS data, "
            f"CASE WHEN _reason IS NULL THEN {self._minified('metadata')} END AS metadata FROM r"
        )

    def _minified(self, name: str) -> str:
        """Payload JSON as stored: objects read from JSON Lines come minified already (JSON text inside a
        string is kept as written); other sources' text is minified here."""
        if self.json_lines:
            return name
        return f"json({name})::VARCHAR"

    @property
    def _structure(self) -> str | None:
        """The json_transform structure of the fast path: each present field's source key, payloads as
        JSON and the rest as text, in ``FIELDS`` order (None when two fields share a key)."""
        keys = {f: self.columns[f] for f in FIELDS if f in self.columns}
        if len(set(keys.values())) != len(keys):
            return None
        return json.dumps({key: "JSON" if f in ("data", "metadata") else "VARCHAR" for f, key in keys.items()})

    def params(self, sql: str | None = None) -> dict[str, Any]:
        """The bound parameters of ``sql`` (the full query by default): source keys and the time zone."""
        sql = self._sql if sql is None else sql
        params: dict[str, Any] = {"tz": self.timezone}
        if self.json_lines:
            params["paths"] = ["/" + self.columns[f].replace("~", "~0").replace("/", "~1")
                               for f in FIELDS if f in self.columns]
            params["structure"] = self._structure
        return {name: value for name, value in params.items() if f"${name}" in sql}

    def run(self, batch: RawBatch) -> tuple[pa.Table, list[tuple[int, str, str]]]:
        """Valid rows (the columns of ``VALID_COLUMNS``) and rejects ``(line, reason, record)``.

        One cheap query (``_fast_sql``) takes the rows that pass every check; only the other rows (none
        in a clean file) go through the full query, which names the first thing wrong with each.
        """
        raw = batch.table
        if not self.json_lines and "occurred_at" in self.columns:
            raw = raw.append_column("occurred_at_src", raw["occurred_at"])
        rejects = list(batch.rejects)
        if not raw.num_rows:
            return pa.table({c: [] for c in VALID_COLUMNS}), rejects
        fast = self.con.sql(self._fast_sql, params=self.params(self._fast_sql)).to_arrow_table()
        ok = fast["_ok"]
        if fast.num_rows == raw.num_rows and pc.all(ok).as_py():
            return fast.select(list(VALID_COLUMNS)), rejects
        good = fast.filter(ok).select(list(VALID_COLUMNS))
        rest = raw.filter(pc.invert(pc.is_in(raw["_line"], good["_line"])))
        slow_good, slow_rejects = self._run_full(rest)
        rejects += slow_rejects
        rejects.sort(key=lambda r: r[0])
        good = pa.concat_tables([good, slow_good.cast(good.schema)])
        return good.take(pc.sort_indices(good["_line"])), rejects

    def _run_full(self, raw: pa.Table) -> tuple[pa.Table, list[tuple[int, str, str]]]:
        """The full query over ``raw``: valid rows and rejects with their reason."""
        result = self.con.sql(self._sql, params=self.params()).to_arrow_table()
        rejects = []
        blank = self._blank_lines(result) if self.json_lines else None
        bad = result.filter(pa.compute.invert(pa.compute.is_null(result["_reason"])))
        for line, reason, record in zip(bad["_line"].to_pylist(), bad["_reason"].to_pylist(), bad["_raw"].to_pylist()):
            if blank is not None and line in blank:
                continue
            rejects.append((line, reason, record or ""))
        good = result.filter(pa.compute.is_null(result["_reason"]))
        good, strict = _strict_json(good)
        rejects += strict
        return good.select(list(VALID_COLUMNS)), rejects

    def _blank_lines(self, result: pa.Table) -> set[int]:
        """Empty lines of a JSON Lines file are skipped, not rejected."""
        raw = result.filter(pa.compute.invert(pa.compute.is_null(result["_reason"])))
        lines = raw["_line"].to_pylist()
        texts = raw["_raw"].to_pylist()
        return {line for line, text in zip(lines, texts) if text is None or not text.strip()}


def _strict_json(good: pa.Table) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """Parse the payloads that the fast path could not prove clean with ``Event``'s own rules
    (:func:`es_analytics.events.parse_json`): duplicate keys, NaN and Infinity, integers SQL cannot hold
    exactly, the reserved key of encrypted fields. DuckDB accepts all of those."""
    rejects, keep = [], []
    for i in range(good.num_rows):
        ok = True
        for name in ("data", "metadata"):
            text = good[name][i].as_py()
            try:
                parse_json(text, name)
            except InvalidArgumentError as exc:
                rejects.append((good["_line"][i].as_py(), str(exc), text[:500]))
                ok = False
                break
        keep.append(ok)
    return good.filter(pa.array(keep, pa.bool_())), rejects
