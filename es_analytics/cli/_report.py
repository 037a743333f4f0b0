"""``report``: the compliance reports of ``es_analytics.reports`` as self-contained HTML (or PDF) files."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from .. import reports
from ._commands import resolve_class
from ._common import Moment, echo_pairs, format_option, lake_option, open_lake, translate

__all__ = ["report"]

_output = click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
                       help="The report file, .html or .pdf (default: build/<report>.html).")


def _default(kind: str, *parts: str | None) -> Path:
    name = "-".join([kind, *(re.sub(r"[^A-Za-z0-9_.-]+", "_", p) for p in parts if p)])
    return Path("build") / f"{name}.html"


def _write(made: Any, output: Path, fmt: str) -> None:
    path = made.save(output)
    facts = {k: v for k, v in made.facts.items() if not isinstance(v, (list, dict)) or len(str(v)) < 200}
    echo_pairs({"report": made.title, "file": str(path), "watermark": made.watermark, **facts}, fmt)


@click.group()
def report() -> None:
    """Write a compliance report (audit trail, subject access, erasure, as known at, integrity).

    Each report is one self-contained HTML file (styles and charts inlined, works offline), or PDF
    when the file name ends in .pdf and Chromium is installed.

    \b
    Example:
      es-analytics report audit --lake my-lake --aggregate-id acc-0000001 -o build/audit.html
    """


@report.command("audit")
@lake_option
@click.option("--aggregate-id", default=None, help="One stream.")
@click.option("--subject", "subject_id", default=None, help="A data subject.")
@click.option("--actor", default=None, help="An actor (metadata.user_id).")
@click.option("--correlation-id", default=None, help="One correlation id.")
@click.option("--since", type=Moment(), default=None, help="occurred_at on or after.")
@click.option("--until", type=Moment(), default=None, help="occurred_at on or before.")
@_output
@format_option("table", "json")
@translate
def audit(lake_path: Path, aggregate_id: str | None, subject_id: str | None, actor: str | None,
          correlation_id: str | None, since: datetime | None, until: datetime | None, output: Path | None,
          fmt: str) -> None:
    """Audit trail: who did what, when, why and from which command (one selector, a period).

    \b
    Example:
      es-analytics report audit --lake my-lake --actor teller-07 --since 2025-03-01 --until 2025-03-31
    """
    with open_lake(lake_path) as lake:
        made = reports.audit_trail(lake, aggregate_id=aggregate_id, subject_id=subject_id, actor=actor,
                                   correlation_id=correlation_id, since=since, until=until)
    _write(made, output or _default("audit", aggregate_id or subject_id or actor or correlation_id), fmt)


@report.command("subject")
@lake_option
@click.argument("subject_id")
@_output
@format_option("table", "json")
@translate
def subject(lake_path: Path, subject_id: str, output: Path | None, fmt: str) -> None:
    """Data-subject access report: everything the lake holds about one person, decrypted.

    \b
    Example:
      es-analytics report subject --lake my-lake user-0000042 -o build/access-user-0000042.html
    """
    with open_lake(lake_path) as lake:
        made = reports.subject_access_report(lake, subject_id)
    _write(made, output or _default("subject", subject_id), fmt)


@report.command("erasure")
@lake_option
@click.argument("subject_id")
@_output
@format_option("table", "json")
@translate
def erasure(lake_path: Path, subject_id: str, output: Path | None, fmt: str) -> None:
    """Erasure certificate of a forgotten subject: key deletion, tombstone, verification scan.

    \b
    Example:
      es-analytics report erasure --lake my-lake user-0000042
    """
    with open_lake(lake_path) as lake:
        made = reports.erasure_certificate(lake, subject_id)
    _write(made, output or _default("erasure", subject_id), fmt)


@report.command("known-at")
@lake_option
@click.argument("known_at", type=Moment())
@click.option("--aggregate-id", default=None, help="One stream (else counts per event type).")
@click.option("--type", "type_name", default=None, help="Aggregate type, to show its state then and now.")
@click.option("--as-of", type=Moment(), default=None, help="Business time of that state.")
@_output
@format_option("table", "json")
@translate
def known_at(lake_path: Path, known_at: datetime, aggregate_id: str | None, type_name: str | None,
             as_of: datetime | None, output: Path | None, fmt: str) -> None:
    """"As known at" evidence: what the lake said at a past moment, and what it learned since.

    \b
    Example:
      es-analytics report known-at --lake my-lake 2025-03-01 --aggregate-id acc-0000001 --type BankAccount
    """
    cls = resolve_class(type_name, None) if type_name else None
    with open_lake(lake_path) as lake:
        made = reports.as_known_at(lake, known_at, aggregate_id=aggregate_id, aggregate_class=cls, as_of=as_of)
    _write(made, output or _default("known-at", known_at.strftime("%Y%m%dT%H%M%S"), aggregate_id), fmt)


@report.command("integrity")
@lake_option
@_output
@format_option("table", "json")
@translate
def integrity(lake_path: Path, output: Path | None, fmt: str) -> None:
    """Integrity report: the hash-chain verification with its head, checkpoint and files.

    \b
    Example:
      es-analytics report integrity --lake my-lake -o build/integrity.pdf
    """
    with open_lake(lake_path) as lake:
        made = reports.integrity_report(lake)
    _write(made, output or _default("integrity"), fmt)
