"""Compliance reports: each renders offline, states the watermark and holds the expected rows."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from es_analytics import Event, Lake
from es_analytics import reports
from es_analytics.errors import (
    InvalidArgumentError,
    PrivacyError,
    SubjectForgottenError,
    UnknownSubjectError,
)
from es_analytics.examples.bank import BankAccount
from es_analytics.examples.users import User

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


@pytest.fixture
def lake(empty_lake: Lake) -> Lake:
    """Two users and an account, with actors, commands, correlation ids and one back-dated correction."""
    for user_id, email, name, hour in (("u-1", "ann.r5@example.org", "Ann Rivera-Q", 1),
                                       ("u-2", "ben.t8@example.org", "Ben Takahashi-Q", 2)):
        empty_lake.append(user_id, [Event("UserRegistered", {"userId": user_id, "profile": {"email": email, "name": name},
                                                              "preferences": {"newsletter": False}},
                                          schema_version=3, occurred_at=at(hour),
                                          metadata={"user_id": user_id, "command": "register",
                                                    "correlation_id": f"c-{user_id}"})],
                          expected_version=0, aggregate_type="User")
    meta = {"user_id": "teller-1", "command": "open_account", "correlation_id": "c-acc", "causation_id": "cmd-1"}
    empty_lake.append("acc-1", [Event("AccountOpened", {"accountId": "acc-1", "initialDeposit": 100,
                                                         "accountHolder": "Ann Rivera-Q"}, occurred_at=at(3),
                                      metadata=meta)], expected_version=0, aggregate_type="BankAccount")
    empty_lake.append("acc-1", [Event("MoneyDeposited", {"amount": 50, "description": "salary", "newBalance": 150},
                                      occurred_at=at(30), metadata={**meta, "command": "deposit"})],
                      expected_version=1, aggregate_type="BankAccount")
    empty_lake.append("u-1", [Event("UserSuspended", {"reason": "Chargeback dispute", "suspendedBy": "admin-7"},
                                    occurred_at=at(40), metadata={"user_id": "admin-7", "command": "suspend",
                                                                  "correlation_id": "c-susp"})],
                      expected_version=1, aggregate_type="User")
    empty_lake.seal()
    return empty_lake


def offline(html: str) -> bool:
    """No resource is fetched: no src/href to anything, only the SVG namespaces as URLs."""
    urls = set(re.findall(r"https?://[^\"' )]+", html))
    return not re.search(r"<(script|link|img)\b[^>]*(src|href)=", html) and urls <= {
        "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def test_audit_trail_of_an_aggregate(lake: Lake, tmp_path: Path) -> None:
    report = reports.audit_trail(lake, aggregate_id="acc-1")
    trail = report.data["trail"]
    assert trail["event_type"].to_list() == ["AccountOpened", "MoneyDeposited"]
    assert trail["actor"].to_list() == ["teller-1", "teller-1"]
    assert trail["command"].to_list() == ["open_account", "deposit"]
    assert trail["why"].to_list() == [None, "salary"]
    assert trail["causation_id"].to_list() == ["cmd-1", "cmd-1"]
    assert report.watermark == str(lake.watermark()) and report.watermark in report.html
    assert "<svg" in report.html and offline(report.html)
    assert "&#34;accountHolder&#34;:&#34;Ann Rivera-Q&#34;" in report.html  # undeclared fields show, escaped
    path = report.save(tmp_path / "audit.html")
    assert path.read_text(encoding="utf-8") == report.html


def test_audit_trail_masks_personal_fields_and_filters_the_period(lake: Lake) -> None:
    report = reports.audit_trail(lake, subject_id="u-1", since=at(0), until=at(35))
    trail = report.data["trail"]
    assert trail["aggregate_id"].to_list() == ["u-1"]  # the suspension at hour 40 is outside the period
    assert "ann.r5@example.org" not in report.html and reports.MASK in trail["details"][0]
    everything = reports.audit_trail(lake, subject_id="u-1").data["trail"]
    assert everything["event_type"].to_list() == ["UserRegistered", "UserSuspended"]
    assert everything["why"].to_list() == [None, "Chargeback dispute"]
    by_actor = reports.audit_trail(lake, actor="admin-7").data["trail"]
    assert by_actor["aggregate_id"].to_list() == ["u-1"]
    by_correlation = reports.audit_trail(lake, correlation_id="c-acc").data["trail"]
    assert by_correlation["position"].to_list() == trail["position"].to_list()[:0] + [3, 4]


def test_audit_trail_rejects_bad_input(lake: Lake) -> None:
    with pytest.raises(InvalidArgumentError, match="wrong way round"):
        reports.audit_trail(lake, aggregate_id="acc-1", since=at(10), until=at(1))
    with pytest.raises(InvalidArgumentError, match="exactly one of"):
        reports.audit_trail(lake, aggregate_id="acc-1", actor="teller-1")
    with pytest.raises(InvalidArgumentError, match="exactly one of"):
        reports.audit_trail(lake)
    with pytest.raises(InvalidArgumentError, match="timezone-aware"):
        reports.audit_trail(lake, actor="teller-1", since=datetime(2025, 1, 1))
    with pytest.raises(UnknownSubjectError, match="'u-404'"):
        reports.audit_trail(lake, subject_id="u-404")
    with pytest.raises(InvalidArgumentError, match="no stream 'acc-404'"):
        reports.audit_trail(lake, aggregate_id="acc-404")


def test_subject_access_report_decrypts_only_the_subjects_data(lake: Lake) -> None:
    report = reports.subject_access_report(lake, "u-1")
    personal = report.data["personal_data"]
    assert sorted(zip(personal["field"], personal["value"])) == [("profile.email", "ann.r5@example.org"),
                                                               ("profile.name", "Ann Rivera-Q")]
    assert report.data["events"]["event_type"].to_list() == ["UserRegistered", "UserSuspended"]
    assert "ann.r5@example.org" in report.html and "ben.t8@example.org" not in report.html
    assert report.watermark in report.html and offline(report.html)
    with pytest.raises(UnknownSubjectError):
        reports.subject_access_report(lake, "u-404")


def test_erasure_certificate(lake: Lake) -> None:
    with pytest.raises(PrivacyError, match="has not been forgotten"):
        reports.erasure_certificate(lake, "u-2")
    certificate = lake.forget("u-2", reason="GDPR art. 17 request", actor="dpo-1")
    report = reports.erasure_certificate(lake, "u-2")
    assert report.facts["tombstone_position"] == certificate["tombstone_position"]
    assert report.facts["files_scanned"] == certificate["scan"]["files_scanned"] > 3
    assert report.data["found"].height == 0 and "Verified" in report.html
    assert set(report.data["files"]["path"]) == set(certificate["scan"]["files"])
    assert "GDPR art. 17 request" in report.html and certificate["key_deleted_at"] in report.html
    assert "ben.t8@example.org" not in report.html and "[erased]" in report.html
    assert report.watermark in report.html and offline(report.html)
    with pytest.raises(SubjectForgottenError, match="erasure certificate"):
        reports.subject_access_report(lake, "u-2")
    with pytest.raises(UnknownSubjectError):
        reports.erasure_certificate(lake, "u-404")


def test_as_known_at_shows_what_the_lake_said_then(lake: Lake) -> None:
    middle = lake.events("acc-1")["recorded_at"][1]
    correction = Event("MoneyDeposited", {"amount": 25, "description": "missed deposit", "newBalance": 175},
                       occurred_at=at(10))
    lake.append("acc-1", [correction], expected_version=2, aggregate_type="BankAccount")
    report = reports.as_known_at(lake, middle, aggregate_id="acc-1", aggregate_class=BankAccount)
    assert report.data["known_then"]["aggregate_version"].to_list() == [1, 2]
    assert report.data["learned_since"]["aggregate_version"].to_list() == [3]
    state = {r["field"]: (r["then"], r["now"]) for r in report.data["state"].iter_rows(named=True)}
    assert state["balance"] == ("150", "175")
    assert str(lake.watermark(middle)) in report.html and report.watermark in report.html
    overall = reports.as_known_at(lake, middle).data["counts"]
    deposits = overall.filter(overall["event_type"] == "MoneyDeposited").row(0, named=True)
    assert (deposits["known_then"], deposits["known_now"]) == (1, 2)
    with pytest.raises(InvalidArgumentError, match="timezone-aware"):
        reports.as_known_at(lake, datetime(2025, 1, 1))


def test_integrity_report_clean_and_tampered(lake: Lake) -> None:
    clean = reports.integrity_report(lake, checkpoint=True)
    assert clean.facts["ok"] and "Intact" in clean.html and clean.facts["chain_head"] in clean.html
    with lake._store.hot.write() as con:
        con.execute("INSERT INTO events (event_id, event_type, schema_version, aggregate_type, aggregate_id, "
                    "aggregate_version, occurred_at, recorded_at, data, metadata) VALUES "
                    "('x', 'MoneyDeposited', 1, 'BankAccount', 'acc-1', 3, 0, 0, '{}', '{}')")
    assert reports.integrity_report(lake).facts["ok"]  # a new event past the checkpoint is not tampering
    path = lake.path / lake._store.manifest().files[0].path
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    tampered = reports.integrity_report(lake)
    assert not tampered.facts["ok"] and "Tampering detected" in tampered.html
    assert tampered.data["problems"]["path"].to_list()[0] == str(path.relative_to(lake.path))
    assert tampered.watermark in tampered.html and offline(tampered.html)


def test_reports_save_only_html_or_pdf(lake: Lake, tmp_path: Path) -> None:
    report = reports.integrity_report(lake)
    with pytest.raises(InvalidArgumentError, match=r"\.html or \.pdf"):
        report.save(tmp_path / "report.docx")
    assert json.loads(json.dumps(report.facts, default=str))["ok"] is True
    assert report._repr_html_().startswith("<iframe srcdoc=")


def test_user_domain_reads_erased_after_forget(lake: Lake) -> None:
    lake.forget("u-1")
    user = lake.aggregate(User, "u-1")
    assert user is not None and user.email == "[erased]" and user.status == "suspended"


def test_pdf_is_printed_by_chromium_or_refused_with_a_hint(lake: Lake, tmp_path: Path) -> None:
    from es_analytics.errors import ReportError

    report = reports.integrity_report(lake)
    target = tmp_path / "integrity.pdf"
    if reports._chromium() is None:
        with pytest.raises(ReportError, match="apt-get install chromium"):
            report.save(target)
        assert not target.exists()
    else:
        report.save(target)
        assert target.read_bytes().startswith(b"%PDF") and target.stat().st_size > 5_000


def test_the_pdf_of_an_audit_trail_holds_every_column_and_row_of_the_html(lake: Lake, tmp_path: Path) -> None:
    import re

    import pypdf

    report = reports.audit_trail(lake, aggregate_id="acc-1")
    shown = lake.events("acc-1")
    target = tmp_path / "audit.pdf"
    report.save(target)
    text = " ".join(page.extract_text() for page in pypdf.PdfReader(target).pages)
    flat = re.sub(r"\s+", "", text)  # wrapped cells break words across lines
    html_tables = re.findall(r"<thead><tr>(.*?)</tr></thead>", report.html, re.S)
    headers = [h for table in html_tables for h in re.findall(r"<th>(.*?)</th>", table)]
    assert len(headers) >= 10
    for header in headers:
        assert re.sub(r"\s+", "", header) in flat, header
    for position in shown["position"].to_list():
        assert re.search(rf"\b{position}\b", text)
    import html as markup

    cells = [re.sub(r"\s+", "", markup.unescape(re.sub(r"<[^>]+>", "", c)))
             for table in re.findall(r"<tbody>(.*?)</tbody>", report.html, re.S)
             for c in re.findall(r"<td[^>]*>(.*?)</td>", table, re.S)]
    assert len(cells) >= 10 * shown.height
    missing = [c for c in cells if c not in flat]
    assert not missing, missing[:5]  # every cell of every table of the HTML is on a page
