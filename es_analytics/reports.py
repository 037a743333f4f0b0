"""Compliance reports as self-contained HTML (styles and charts inlined, no network), and PDF.

Each function returns a :class:`Report`: ``html`` (one file), ``data`` (the full tables as polars
DataFrames), ``facts`` and the lake ``watermark`` it was made at. ``report.save("x.html")`` writes it;
``report.save("x.pdf")`` prints it with a headless Chromium when one is installed.

- :func:`audit_trail`: who did what, when, why and from which command, for one aggregate, data subject,
  actor or correlation id over a period. Personal fields are masked: an audit trail discloses no
  personal data.
- :func:`subject_access_report`: everything the lake holds about one person, decrypted (other
  subjects' personal fields stay masked).
- :func:`erasure_certificate`: when the key was deleted, the tombstone, and the verification scan.
- :func:`as_known_at`: what the lake said at a past moment, and what it learned since.
- :func:`integrity_report`: the hash-chain verification with its head, checkpoint and files.
"""

from __future__ import annotations

import html as html_lib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ._time import to_utc_or_none
from .errors import (
    EsAnalyticsError,
    InvalidArgumentError,
    PrivacyError,
    ReportError,
    SubjectForgottenError,
    UnknownSubjectError,
)
from .events import check_aggregate_id
from .forgetting import TOMBSTONE_TYPE, subject_events, tombstone_stream
from .privacy import ERASED, is_envelope, walk_envelopes

if TYPE_CHECKING:
    from .lake import Lake

__all__ = [
    "Report",
    "as_known_at",
    "audit_trail",
    "erasure_certificate",
    "integrity_report",
    "subject_access_report",
]

MASK = "‹personal›"
MAX_ROWS_SHOWN = 500
_AUDIT_SHOWN = ["position", "occurred_at", "recorded_at", "actor", "command", "event_type", "stream", "why",
                "correlation_id", "details"]
_AUDIT_COLUMNS = ["position", "occurred_at", "recorded_at", "actor", "command", "event_type", "aggregate_type",
                  "aggregate_id", "aggregate_version", "why", "correlation_id", "causation_id", "details"]


@dataclass(frozen=True)
class Report:
    """One rendered report: its HTML, the tables behind it, its key facts and the lake watermark."""

    kind: str
    title: str
    html: str = field(repr=False)
    watermark: str
    data: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False)
    facts: dict[str, Any] = field(default_factory=dict, repr=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report to ``path``: ``.html`` as is, ``.pdf`` printed by headless Chromium.

        Raises
        ------
        InvalidArgumentError
            The suffix is neither ``.html`` nor ``.pdf``.
        ReportError
            PDF was asked for but no Chromium is installed, or printing failed.
        """
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in (".html", ".htm", ".pdf"):
            raise InvalidArgumentError(f"a report is saved as .html or .pdf, got {target.name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".pdf":
            _print_pdf(self.html, target)
        else:
            target.write_text(self.html, encoding="utf-8")
        return target

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html_lib.escape(self.html, quote=True)}" '
                'style="width:100%;height:640px;border:1px solid #e5e7eb"></iframe>')


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _print_pdf(document: str, target: Path) -> None:
    browser = _chromium()
    if browser is None:
        raise ReportError("saving a report as PDF needs Chromium (apt-get install chromium); "
                          "or save it as .html and print that from a browser")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "report.html"
        source.write_text(document, encoding="utf-8")
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={tmp}/profile", "--no-pdf-header-footer",
                   f"--print-to-pdf={target}", source.as_uri()]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=120)
        except (subprocess.SubprocessError, OSError) as exc:
            raise ReportError(f"Chromium could not print the report to {str(target)!r}: {exc}") from exc
    if not target.exists() or target.stat().st_size == 0:
        raise ReportError(f"Chromium wrote no PDF to {str(target)!r}")


# -- rendering ------------------------------------------------------------------------------------
def _env() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%fZ")
    return str(value)


_WIDE = frozenset({"data", "metadata", "details", "path", "value"})
_PROSE = frozenset({"why", "detail", "note", "then", "now"})


def _css_class(column: str, mono: Sequence[str]) -> str:
    """Payloads wrap in a wide cell, prose wraps, everything else (ids, times, numbers) stays on one line."""
    if column in _WIDE:
        return "mono wide" if column in mono else "wide"
    if column in _PROSE:
        return ""
    return "mono nowrap" if column in mono else "nowrap"


def _table(frame: pl.DataFrame, mono: Sequence[str] = ()) -> dict[str, Any]:
    shown = frame.head(MAX_ROWS_SHOWN)
    return {
        "columns": shown.columns,
        "rows": [[_cell(v) for v in row] for row in shown.iter_rows()],
        "classes": [_css_class(c, mono) for c in shown.columns],
        "truncated": frame.height > shown.height,
        "total": frame.height,
    }


def _section(title: str, *, paragraphs: Sequence[str] = (), facts: Sequence[tuple[str, Any]] = (),
             table: pl.DataFrame | None = None, mono: Sequence[str] = (), svg: str | None = None,
             collapsed: bool = False) -> dict[str, Any]:
    return {"title": title, "paragraphs": list(paragraphs), "facts": [(k, _cell(v)) for k, v in facts],
            "table": None if table is None else _table(table, mono), "svg": svg, "collapsed": collapsed}


def _render(lake: Lake, kind: str, title: str, subtitle: str, sections: list[dict[str, Any]],
            stamp: Sequence[tuple[str, Any]] = (), verdict: dict[str, str] | None = None,
            data: Mapping[str, pl.DataFrame] | None = None, facts: Mapping[str, Any] | None = None) -> Report:
    from . import __version__

    watermark = _watermark(lake)
    made_at = datetime.now(timezone.utc)
    stamp_rows = [("Lake watermark", f"{watermark} (position {watermark.position}, "
                                     f"recorded up to {_cell(watermark.recorded_at)})"),
                  ("Made at", _cell(made_at)), *[(k, _cell(v)) for k, v in stamp]]
    document = _env().get_template("report.html.j2").render(
        title=title, subtitle=subtitle, stamp=stamp_rows, sections=sections, verdict=verdict,
        version=__version__, made_at=_cell(made_at), lake_path=str(lake.path), watermark=str(watermark),
    )
    return Report(kind, title, document, str(watermark), dict(data or {}), dict(facts or {}))


def _watermark(lake: Lake) -> Any:
    """The lake's watermark; read from the hot tier's bookkeeping when a sealed file no longer reads
    (an integrity report must still render on a damaged lake)."""
    try:
        return lake.watermark()
    except EsAnalyticsError:
        from .temporal.bounds import Watermark

        hot = lake._store.hot
        micros = hot.last_recorded_at()
        return Watermark(hot.max_position(), datetime.fromtimestamp(micros / 1_000_000, timezone.utc))


def _chart_per_day(frame: pl.DataFrame, title: str) -> str | None:
    """Events per day by type, as inline SVG (None when there is nothing to draw)."""
    if frame.height == 0:
        return None
    import altair as alt

    from .charts import to_svg
    from .charts._theme import finish

    per_day = (frame.with_columns(pl.col("occurred_at").dt.convert_time_zone("UTC").dt.date().alias("day"))
               .group_by("day", "event_type").len("events").sort("day"))
    peak = int(per_day.group_by("day").agg(pl.col("events").sum())["events"].max())  # type: ignore[arg-type]
    axis = alt.Axis(values=list(range(peak + 1)), format="d") if peak <= 8 else alt.Axis(format="d")
    chart = alt.Chart(per_day).mark_bar().encode(
        x=alt.X("day:T", title="Day (UTC, occurred_at)"),
        y=alt.Y("events:Q", title="Events", stack=True, axis=axis),
        color=alt.Color("event_type:N", title="Event type"),
        tooltip=["day:T", "event_type:N", "events:Q"],
    )
    return to_svg(finish(chart, title=title, height=180))


# -- inputs ---------------------------------------------------------------------------------------
def _stream_label() -> pl.Expr:
    return pl.format("{} {} v{}", "aggregate_type", "aggregate_id", "aggregate_version").alias("stream")


def _window(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    start, end = to_utc_or_none(since, "since"), to_utc_or_none(until, "until")
    if start is not None and end is not None and start > end:
        raise InvalidArgumentError(
            f"the period is the wrong way round: since {start.isoformat()} is after until {end.isoformat()}; "
            "swap them"
        )
    return start, end


def _mask(text: str, keep_subject: str | None = None, keys: Mapping[str, bytes | None] | None = None,
          event_id: str = "", lake: Lake | None = None) -> str:
    """Replace envelopes by :data:`MASK`, or, for ``keep_subject``, by the decrypted value."""
    if '"$enc"' not in text:
        return text
    data = json.loads(text)
    for path, envelope, parent, key in list(walk_envelopes(data)):
        if keep_subject is not None and envelope.get("sub") == keep_subject and lake is not None:
            parent[key] = lake._privacy.cipher.open_value(envelope, event_id, path, keys or {})
        else:
            parent[key] = MASK
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _audit_rows(lake: Lake, where: str, params: list[Any], since: datetime | None,
                until: datetime | None) -> pl.DataFrame:
    clauses, values = [f"({where})"], list(params)
    if since is not None:
        clauses.append("occurred_at >= ?")
        values.append(since)
    if until is not None:
        clauses.append("occurred_at <= ?")
        values.append(until)
    frame = lake._query(
        "SELECT position, occurred_at, recorded_at, "
        "json_extract_string(metadata, '$.user_id') AS actor, json_extract_string(metadata, '$.command') AS command, "
        "event_type, aggregate_type, aggregate_id, aggregate_version, "
        "coalesce(json_extract_string(data, '$.reason'), json_extract_string(metadata, '$.reason'), "
        "json_extract_string(data, '$.description')) AS why, "
        "json_extract_string(metadata, '$.correlation_id') AS correlation_id, "
        "json_extract_string(metadata, '$.causation_id') AS causation_id, event_id, data AS details "
        f"FROM events WHERE {' AND '.join(clauses)} ORDER BY position",
        values, what="audit trail",
    )
    masked = [_mask(t)[:200] for t in frame["details"].to_list()]
    return frame.with_columns(pl.Series("details", masked, pl.String))


def _subject_state(lake: Lake, subject_id: str) -> tuple[str, dict[str, Any]]:
    state, info = lake.key_store.state(subject_id)
    if state == "unknown":
        raise UnknownSubjectError(subject_id, "no key was ever made for it (check the id's spelling)")
    return state, info


# -- the reports ----------------------------------------------------------------------------------
def audit_trail(
    lake: Lake,
    *,
    aggregate_id: str | None = None,
    subject_id: str | None = None,
    actor: str | None = None,
    correlation_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Report:
    """Who did what, when, why and from which command: the events of exactly one selector over a period.

    Parameters
    ----------
    lake
        The lake.
    aggregate_id, subject_id, actor, correlation_id
        Exactly one: one stream; a data subject (the streams holding their data, what they did, their
        tombstone); an actor (``metadata.user_id``); or one correlation id.
    since, until
        Bounds on ``occurred_at`` (inclusive, timezone-aware).

    Raises
    ------
    InvalidArgumentError
        Not exactly one selector, ``since`` after ``until``, or an ``aggregate_id`` the lake does not hold.
    UnknownSubjectError
        ``subject_id`` names no data subject of the lake.
    """
    chosen = {k: v for k, v in (("aggregate_id", aggregate_id), ("subject_id", subject_id), ("actor", actor),
                                ("correlation_id", correlation_id)) if v is not None}
    if len(chosen) != 1:
        raise InvalidArgumentError(
            "an audit trail needs exactly one of aggregate_id, subject_id, actor or correlation_id, "
            f"got {sorted(chosen) or 'none'}"
        )
    (what, value), = chosen.items()
    value = check_aggregate_id(value, what)
    start, end = _window(since, until)
    if what == "aggregate_id":
        if lake.current_version(value) == 0:
            raise InvalidArgumentError(f"the lake holds no stream {value!r}; check the aggregate id")
        where, params = "aggregate_id = ?", [value]
    elif what == "actor":
        where, params = "json_extract_string(metadata, '$.user_id') = ?", [value]
    elif what == "correlation_id":
        where, params = "json_extract_string(metadata, '$.correlation_id') = ?", [value]
    else:
        _subject_state(lake, value)
        streams = sorted(set(subject_events(lake, value)["aggregate_id"].to_list()) | {tombstone_stream(value)})
        where = "list_contains(?, aggregate_id) OR json_extract_string(metadata, '$.user_id') = ?"
        params = [streams, value]  # type: ignore[list-item]
    frame = _audit_rows(lake, where, params, start, end)
    period = f"{_cell(start) or 'the beginning'} to {_cell(end) or 'now'}"
    sections = [
        _section("Summary", facts=[("Selector", f"{what} = {value}"), ("Period (occurred_at)", period),
                                   ("Events", frame.height), ("Streams", frame["aggregate_id"].n_unique()),
                                   ("Actors", frame["actor"].drop_nulls().n_unique()),
                                   ("Event types", ", ".join(sorted(set(frame["event_type"].to_list()))) or "none")],
                 svg=_chart_per_day(frame, "Events per day")),
        _section("Trail", paragraphs=[f"In commit order. Personal fields are shown as {MASK}; "
                                      "see the data-subject access report for a person's own data."],
                 table=frame.with_columns(_stream_label()).select(_AUDIT_SHOWN),
                 mono=("stream", "correlation_id", "details")),
    ]
    return _render(lake, "audit_trail", f"Audit trail: {what} {value}", f"Period: {period}", sections,
                   stamp=[("Selector", f"{what} = {value}")], data={"trail": frame},
                   facts={"selector": what, "value": value, "events": frame.height, "since": start, "until": end})


def subject_access_report(lake: Lake, subject_id: str) -> Report:
    """Everything the lake holds about one data subject, decrypted (a data-subject access report).

    Raises
    ------
    UnknownSubjectError
        The lake holds no personal data of ``subject_id``.
    SubjectForgottenError
        The subject was forgotten; see :func:`erasure_certificate`.
    """
    subject_id = check_aggregate_id(subject_id, "subject_id")
    state, info = _subject_state(lake, subject_id)
    if state != "active":
        raise SubjectForgottenError(subject_id, "the lake holds no readable personal data of it any more; "
                                                "make its erasure certificate instead")
    raw = subject_events(lake, subject_id)
    keys = lake.key_store.keys_for([subject_id])
    fields = []
    for row in raw.select("position", "recorded_at", "event_type", "aggregate_id", "event_id", "data").iter_rows():
        for path, envelope, _, _ in walk_envelopes(json.loads(row[5])):
            if envelope.get("sub") == subject_id:
                value = lake._privacy.cipher.open_value(envelope, row[4], path, keys)
                fields.append((row[0], row[1], row[2], row[3], path,
                               value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)))
    personal = pl.DataFrame(fields, schema={"position": pl.Int64, "recorded_at": raw.schema["recorded_at"],
                                           "event_type": pl.String, "aggregate_id": pl.String,
                                           "field": pl.String, "value": pl.String}, orient="row")
    streams = sorted(set(raw["aggregate_id"].to_list()))
    held = lake._query("SELECT * FROM events WHERE list_contains(?, aggregate_id) OR "
                       "json_extract_string(metadata, '$.user_id') = ? ORDER BY position",
                       [streams, subject_id], what="subject access report")
    shown = [_mask(t, subject_id, keys, e, lake) for e, t in held.select("event_id", "data").iter_rows()]
    held = lake._present(held.with_columns(pl.Series("data", shown, pl.String)))
    created = info.get("created_at")
    facts = [("Subject", subject_id), ("Key state", state),
             ("Key created", datetime.fromtimestamp(created, timezone.utc) if created else "unknown"),
             ("Personal values held", personal.height), ("Events about or by the subject", held.height),
             ("Streams", ", ".join(streams) or "none")]
    sections = [
        _section("Summary", facts=facts, svg=_chart_per_day(held, "The subject's events per day")),
        _section("Personal data held", paragraphs=["Each value is stored encrypted with this subject's own key "
                                                   "(AES-256-GCM) and decrypted for this report."],
                 table=personal, mono=("field",)),
        _section("Events about or by the subject", paragraphs=[
            f"Payloads as readers see them (upcast to the newest schema); other people's personal fields show {MASK}."],
                 table=held.select("position", "occurred_at", "recorded_at", "event_type", "aggregate_id",
                                   "aggregate_version", "data", "metadata"), mono=("data", "metadata")),
    ]
    return _render(lake, "subject_access", f"Data-subject access report: {subject_id}",
                   "Everything this lake holds about the data subject", sections,
                   stamp=[("Subject", subject_id)], data={"personal_data": personal, "events": held},
                   facts={"subject_id": subject_id, "values": personal.height, "events": held.height})


def erasure_certificate(lake: Lake, subject_id: str) -> Report:
    """The proof that a subject was forgotten: key deletion, tombstone, and the verification scan.

    Raises
    ------
    UnknownSubjectError
        The lake never held personal data of ``subject_id``.
    PrivacyError
        The subject has not been forgotten (or forgetting was interrupted: rerun ``lake.forget``).
    """
    subject_id = check_aggregate_id(subject_id, "subject_id")
    state, info = _subject_state(lake, subject_id)
    if state != "forgotten":
        hint = "rerun lake.forget to complete it" if state == "shredded" else "call lake.forget first"
        raise PrivacyError(f"subject {subject_id!r} has not been forgotten (its state is {state!r}); {hint}")
    cert = info["certificate"]
    scan = cert["scan"]
    tomb = lake.events(tombstone_stream(subject_id), types=TOMBSTONE_TYPE)
    tomb_at = tomb["recorded_at"][0] if tomb.height else None
    shown = [lake.events(a) for a in cert["aggregates"][:20]]
    now = pl.concat(shown) if shown else pl.DataFrame()
    found = pl.DataFrame(scan["found"], schema={"path": pl.String, "what": pl.String, "how": pl.String})
    verified = bool(cert["verified"])
    verdict = {"kind": "ok" if verified else "bad",
               "text": "Verified: no file of the lake holds the subject's plaintext or key" if verified
               else "Not verified: see the warnings and the scan findings below"}
    facts = [("Subject", subject_id), ("Key deleted at", cert["key_deleted_at"]),
             ("Tombstone", f"{TOMBSTONE_TYPE} at position {cert['tombstone_position']} in stream "
                           f"{cert['tombstone_stream']}, recorded {_cell(tomb_at)}"),
             ("Events that held personal data", cert["events_affected"]),
             ("Aggregates", ", ".join(cert["aggregates"]) or "none"),
             ("Snapshots deleted", cert["snapshots_deleted"]), ("Reason", cert.get("reason") or ""),
             ("Requested by", cert.get("actor") or ""), ("Completed at", cert["forgotten_at_iso"])]
    scan_facts = [("Files scanned", scan["files_scanned"]), ("Bytes scanned", f"{scan['bytes_scanned']:,}"),
                  ("Values looked for", cert["plaintext_values_checked"]), ("Findings", len(scan["found"])),
                  ("Scan time", f"{scan['seconds']} s"), ("Remedies applied", "; ".join(cert["remedies"]) or "none")]
    sections = [
        _section("Erasure", facts=facts,
                 paragraphs=([cert["note"]] if cert.get("note") else [])
                 + [f"Warning: {w}" for w in cert.get("warnings", [])]),
        _section("Verification scan", facts=scan_facts, paragraphs=[
            "Every file under the lake folder was read: raw bytes (SQLite databases with their write-ahead logs, "
            "the key store, manifests, snapshots, projection caches) and the decoded text columns of every "
            "Parquet file. The values themselves are not recorded anywhere."], table=found, mono=("path",)),
        _section("Files scanned", table=pl.DataFrame({"path": scan["files"]}), mono=("path",), collapsed=True),
    ]
    if now.height:
        sections.append(_section("What readers show now", paragraphs=[f"Personal fields read as {ERASED!r}."],
                                 table=now.select("position", "event_type", "aggregate_id", "data"), mono=("data",)))
    return _render(lake, "erasure_certificate", f"Erasure certificate: {subject_id}",
                   "Crypto-shredding of a data subject's personal data", sections,
                   stamp=[("Subject", subject_id)], verdict=verdict,
                   data={"found": found, "files": pl.DataFrame({"path": scan["files"]})},
                   facts={k: v for k, v in cert.items() if k != "scan"} | {"files_scanned": scan["files_scanned"]})


def as_known_at(
    lake: Lake,
    known_at: datetime,
    *,
    aggregate_id: str | None = None,
    aggregate_class: type | None = None,
    as_of: datetime | None = None,
) -> Report:
    """Evidence of what the lake said at a past moment ``known_at``, and what it learned since.

    With ``aggregate_id`` the report lists that stream's events known then and those recorded later
    (corrections, late events) and, given ``aggregate_class``, the state then and now (valid ``as_of``).
    Without it, it compares event counts per type.

    Raises
    ------
    InvalidArgumentError
        ``known_at`` missing or naive, a naive ``as_of``, or a malformed ``aggregate_id``.
    """
    moment = to_utc_or_none(known_at, "known_at")
    if moment is None:
        raise InvalidArgumentError("as_known_at needs a known_at time (timezone-aware)")
    valid = to_utc_or_none(as_of, "as_of")
    then_mark = lake.watermark(moment)
    stamp = [("Known at", moment), ("Watermark then", str(then_mark)), ("Valid as of", valid or "latest")]
    if aggregate_id is None:
        counts = lake._query(
            "SELECT event_type, count(*) FILTER (WHERE recorded_at <= ?) AS known_then, count(*) AS known_now "
            "FROM events WHERE occurred_at <= coalesce(?, occurred_at) GROUP BY event_type ORDER BY event_type",
            [moment, valid], what="as known at")
        sections = [_section("Events per type, then and now", table=counts)]
        data = {"counts": counts}
    else:
        aggregate_id = check_aggregate_id(aggregate_id)
        frame = lake.events(aggregate_id, until=valid)
        then, later = frame.filter(pl.col("recorded_at") <= moment), frame.filter(pl.col("recorded_at") > moment)
        columns = ["position", "aggregate_version", "occurred_at", "recorded_at", "event_type", "data"]
        sections = [_section("Known then", paragraphs=[f"{then.height} events of {aggregate_id} recorded at or "
                                                       f"before {_cell(moment)}."], table=then.select(columns)),
                    _section("Learned since", paragraphs=["Recorded after that moment; back-dated ones changed the "
                                                          "past as it is known now."], table=later.select(columns))]
        data = {"known_then": then, "learned_since": later}
        if aggregate_class is not None:
            state_then = lake.aggregate(aggregate_class, aggregate_id, as_of=valid, known_at=moment)
            state_now = lake.aggregate(aggregate_class, aggregate_id, as_of=valid)
            before: dict[str, Any] = {} if state_then is None else state_then.state()
            after: dict[str, Any] = {} if state_now is None else state_now.state()
            names = list(dict.fromkeys([*before, *after]))
            diff = pl.DataFrame({"field": names, "then": [_cell(before.get(n)) for n in names],
                                 "now": [_cell(after.get(n)) for n in names],
                                 "changed": [before.get(n) != after.get(n) for n in names]})
            sections.insert(0, _section(f"{aggregate_class.__name__} state then and now", table=diff))
            data["state"] = diff
    return _render(lake, "as_known_at", f"As known at {_cell(moment)}",
                   f"What the lake said {'about ' + aggregate_id if aggregate_id else ''} at a past moment",
                   sections, stamp=stamp, data=data,
                   facts={"known_at": moment, "watermark_then": str(then_mark), "aggregate_id": aggregate_id})


def integrity_report(lake: Lake, *, result: Mapping[str, Any] | None = None, checkpoint: bool = False) -> Report:
    """The hash-chain verification result (runs ``lake.verify`` unless ``result`` is given)."""
    outcome = dict(result) if result is not None else lake.verify(checkpoint=checkpoint)
    ok = bool(outcome["ok"])
    point = outcome.get("checkpoint") or {}
    facts = [("Events checked", outcome["checked_events"]), ("Chain head now", outcome["chain_head"] or "n/a"),
             ("Checkpoint position", point.get("position", "none yet")),
             ("Checkpoint head", point.get("head", "none yet")), ("Checkpoint made", point.get("at", "")),
             ("Verified at", outcome["verified_at"]), ("Time", f"{outcome.get('seconds', '?')} s")]
    bad = outcome.get("first_bad_event")
    files = pl.DataFrame(outcome["files"], schema={"path": pl.String, "rows": pl.Int64, "min_position": pl.Int64,
                                                   "max_position": pl.Int64, "status": pl.String})
    problems = pl.DataFrame([{"path": p.get("path", ""), "status": p.get("status", ""), "detail": p.get("detail", "")}
                             for p in outcome["problems"]],
                            schema={"path": pl.String, "status": pl.String, "detail": pl.String})
    sections = [_section("Chain", facts=facts, paragraphs=[
        "Each event's digest is SHA-256 over its canonical stored content; the chain links every digest to the "
        "previous head in position order. Record the head elsewhere to make a rewrite of the whole lake evident."])]
    if bad:
        sections.append(_section("First event whose stored content no longer matches",
                                 facts=[(k, v) for k, v in bad.items()]))
    sections += [_section("Problems", table=problems, mono=("path",)),
                 _section("Sealed files checked", table=files, mono=("path",))]
    verdict = {"kind": "ok" if ok else "bad",
               "text": "Intact: the history matches its hash chain" if ok else "Tampering detected"}
    return _render(lake, "integrity", "Integrity verification", "Tamper evidence for the lake's history",
                   sections, stamp=[("Chain head", outcome["chain_head"] or "n/a")], verdict=verdict,
                   data={"files": files, "problems": problems}, facts=outcome)
