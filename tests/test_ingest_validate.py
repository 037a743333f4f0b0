"""The validator's fast path (one cheap query, the full query only for the rows it stops) gives exactly what
the full query gives alone: the same valid rows in line order and the same rejects with the same reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from es_analytics.ingest import _sources as src
from es_analytics.ingest._validate import VALID_COLUMNS, Validator

GOOD = {
    "event_id": "e-1", "event_type": "MoneyDeposited", "aggregate_type": "BankAccount", "aggregate_id": "acc-1",
    "aggregate_version": 1, "occurred_at": "2024-03-01T09:00:00Z", "data": {"amount": 10}, "metadata": {"u": 1},
}
# Changes of one field: some break a check, some only look suspicious to the fast path (and are valid).
CHANGES: list[tuple[str, Any]] = [
    ("event_id", ""), ("event_id", None), ("event_id", "a\u0001b"), ("event_id", "x" * 1025), ("event_id", 7),
    ("event_type", "Money Deposited"), ("event_type", ""), ("aggregate_type", "Bank-Account"),
    ("aggregate_id", "acc\u007f"), ("aggregate_id", ""), ("aggregate_version", "3.5"), ("aggregate_version", 0),
    ("aggregate_version", " 5 "), ("aggregate_version", "12"), ("schema_version", 2), ("schema_version", 0),
    ("schema_version", 2**31), ("occurred_at", "2024-03-01T09:00:00"), ("occurred_at", "yesterday"),
    ("occurred_at", "2024-03-01 09:00:00+02:00"), ("occurred_at", ""), ("data", [1, 2]), ("data", "{\"a\": 1}"),
    ("data", "not json"), ("data", {"note": "NaN and Infinity"}), ("data", {}), ("metadata", None),
    ("metadata", "{}"), ("metadata", 5), ("metadata", {"x": "Infinity"}),
    ("data", {"nested": {"a": [1, {"b": "}{"}]}, "é": "ü\u2028"}), ("data", " {\"a\": 1}"), ("data", True),
    ("metadata", {"k": "{"}), ("metadata", "[]"),
]
RAW_LINES = ["", "not json", "[1, 2]", "  ", '{"event_id": "e-9", "data": {"amount": NaN}}',
             json.dumps({**GOOD, "data": "{\"amount\": NaN}"})]


def _line(choice: int | None, version: int) -> str:
    if choice is None:
        return json.dumps({**GOOD, "event_id": f"e-{version}", "aggregate_version": version}, ensure_ascii=False)
    if choice >= len(CHANGES):
        return RAW_LINES[choice - len(CHANGES)]
    key, value = CHANGES[choice]
    row: dict[str, Any] = {**GOOD, "event_id": f"e-{version}", "aggregate_version": version}
    row[key] = value
    return json.dumps(row, ensure_ascii=False)


def _run_both(path: Path, timezone: str | None) -> tuple[Any, Any]:
    columns, batches = src.read_jsonl(path, {}, 1 << 16)
    validator = Validator(columns, json_lines=True, kinds={}, timezone=timezone)
    try:
        batch = next(batches)
        fast = validator.run(batch)
        raw = batch.table  # the full query alone, over the same batch (DuckDB finds ``raw`` here)
        full_good, full_rejects = validator._run_full(raw)
        full_rejects = sorted(list(batch.rejects) + full_rejects, key=lambda r: r[0])
        return fast, (full_good, full_rejects)
    finally:
        validator.close()


@settings(max_examples=40, deadline=None)
@given(choices=st.lists(st.one_of(st.none(), st.integers(0, len(CHANGES) + len(RAW_LINES) - 1)), min_size=1,
                        max_size=40),
       timezone=st.sampled_from([None, "Europe/Berlin"]))
def test_fast_path_agrees_with_the_full_query(tmp_path_factory: Any, choices: list[int | None],
                                              timezone: str | None) -> None:
    path = tmp_path_factory.mktemp("v") / "e.jsonl"
    lines = [json.dumps(GOOD)] + [_line(c, i + 2) for i, c in enumerate(choices)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (good, rejects), (full_good, full_rejects) = _run_both(path, timezone)
    assert good.column_names == list(VALID_COLUMNS)
    assert good.to_pylist() == full_good.to_pylist()
    assert rejects == full_rejects
    assert good["_line"].to_pylist() == sorted(good["_line"].to_pylist())


def test_a_clean_block_takes_the_fast_path_only(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps({**GOOD, "event_id": f"e-{v}", "aggregate_version": v}) + "\n"
                            for v in range(1, 50)), encoding="utf-8")
    columns, batches = src.read_jsonl(path, {}, 1 << 16)
    validator = Validator(columns, json_lines=True, kinds={}, timezone=None)

    def no_full_query(raw: Any) -> Any:
        raise AssertionError("the full query ran for a clean block")

    monkeypatch.setattr(validator, "_run_full", no_full_query)
    good, rejects = validator.run(next(batches))
    validator.close()
    assert rejects == [] and good.num_rows == 49
    assert good["aggregate_version"].to_pylist() == list(range(1, 50))


_LINE_TEXT = st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(_LINE_TEXT, min_size=1, max_size=30), final_newline=st.booleans(),
       block=st.sampled_from([16, 64, 1 << 16]), hold=st.booleans())
def test_the_json_lines_reader_yields_every_line_once_with_its_number(
        tmp_path_factory: Any, lines: list[str], final_newline: bool, block: int, hold: bool) -> None:
    """Whatever the block size (lines longer than a block included), the reader's records, in order, are the
    file's lines with their newlines, numbered from 1, and its progress adds up to the file's size; blocks
    still held when later ones are read (``hold``) keep their lines (their buffers are not reused)."""
    path = tmp_path_factory.mktemp("r") / "e.jsonl"
    text = "\n".join([json.dumps(GOOD), *lines]) + ("\n" if final_newline else "")
    path.write_bytes(text.encode("utf-8"))
    _, batches = src.read_jsonl(path, {}, block)
    records, numbers, progress, held = [], [], 0, []
    for batch in batches:
        if hold:
            held.append(batch.table)
        else:
            records += batch.table["_record"].to_pylist()
            numbers += batch.table["_line"].to_pylist()
        progress += batch.progress
        assert batch.rejects == []
    for table in held:
        records += table["_record"].to_pylist()
        numbers += table["_line"].to_pylist()
    data = text.encode("utf-8")
    expected = [part + b"\n" for part in data.split(b"\n")[:-1]] + ([] if data.endswith(b"\n") else [data.rsplit(b"\n", 1)[-1]])
    assert [r.encode("utf-8") for r in records] == expected
    assert numbers == list(range(1, len(expected) + 1))
    assert progress == len(text.encode("utf-8"))


def test_fields_read_from_one_shared_key_agree_on_both_paths(tmp_path: Path) -> None:
    """A mapping may read two fields from one key (no json_transform structure then): same result."""
    path = tmp_path / "e.jsonl"
    lines = [{**GOOD, "event_id": f"e-{v}", "aggregate_version": v, "payload": {"n": v}} for v in range(1, 6)]
    lines[2]["payload"] = "not an object"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    columns, batches = src.read_jsonl(path, {"data": "payload", "metadata": "payload"}, 1 << 16)
    validator = Validator(columns, json_lines=True, kinds={}, timezone=None)
    assert validator._structure is None
    batch = next(batches)
    good, rejects = validator.run(batch)
    full_good, full_rejects = validator._run_full(batch.table)
    validator.close()
    assert good.to_pylist() == full_good.to_pylist() and rejects == full_rejects
    assert good["data"].to_pylist() == good["metadata"].to_pylist() == [f'{{"n":{v}}}' for v in (1, 2, 4, 5)]
    assert [r[0] for r in rejects] == [3]
