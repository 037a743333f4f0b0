"""The bitemporal bounds of a query (``as_of``, ``known_at``) and watermarks that pin an analysis.

``as_of`` bounds business time (``occurred_at``), ``known_at`` bounds system time (``recorded_at``). A
:class:`Watermark` is the lake as it was at one ``position``: passing it as ``known_at`` makes a query see
exactly the events committed up to it, so an analysis re-runs identically after new events arrive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import polars as pl

from .._time import EPOCH, to_utc, to_utc_or_none
from ..errors import InvalidArgumentError
from ..store.engine import LakeStore

__all__ = ["Bounds", "LakeLike", "Watermark", "make_bounds", "read_watermark"]

_WATERMARK = re.compile(r"(\d+)@(.+)")


class LakeLike(Protocol):
    """What the temporal engine needs of a lake (``Lake`` satisfies it; no import of ``lake.py``)."""

    _store: LakeStore

    def _present(self, frame: pl.DataFrame) -> pl.DataFrame: ...

    def _query(self, query: str, params: Any, *, what: str) -> pl.DataFrame: ...


@dataclass(frozen=True, order=True)
class Watermark:
    """The lake as it was once: every event with ``position <= position`` (recorded up to ``recorded_at``).

    ``str(watermark)`` is ``"<position>@<recorded_at ISO>"`` and :meth:`parse` reads it back, so a notebook
    can write its watermark down and pin later runs to it.

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> w = Watermark(42, datetime(2025, 3, 1, 12, tzinfo=timezone.utc))
    >>> str(w)
    '42@2025-03-01T12:00:00+00:00'
    >>> Watermark.parse(str(w)) == w
    True
    """

    position: int
    recorded_at: datetime

    def __post_init__(self) -> None:
        if isinstance(self.position, bool) or not isinstance(self.position, int) or self.position < 0:
            raise InvalidArgumentError(f"a watermark's position must be a non-negative int, got {self.position!r}")
        object.__setattr__(self, "recorded_at", to_utc(self.recorded_at, "recorded_at"))

    def __str__(self) -> str:
        return f"{self.position}@{self.recorded_at.isoformat()}"

    @classmethod
    def parse(cls, text: str) -> Watermark:
        """Read a watermark written as ``"<position>@<recorded_at ISO>"``."""
        match = _WATERMARK.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise InvalidArgumentError(f"a watermark looks like '1234@2025-03-01T12:00:00+00:00', got {text!r}")
        try:
            when = datetime.fromisoformat(match.group(2))
        except ValueError:
            raise InvalidArgumentError(f"the time of watermark {text!r} is not ISO 8601") from None
        return cls(int(match.group(1)), when)


@dataclass(frozen=True)
class Bounds:
    """Checked bounds: ``as_of`` on occurred_at, ``known_at`` on recorded_at, ``position`` from a watermark."""

    as_of: datetime | None = None
    known_at: datetime | None = None
    position: int | None = None

    def where(self, *, prefix: str = "") -> tuple[list[str], list[Any]]:
        """SQL conditions and their bound parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        for value, clause in ((self.as_of, "occurred_at <= ?"), (self.known_at, "recorded_at <= ?"),
                              (self.position, "position <= ?")):
            if value is not None:
                clauses.append(prefix + clause)
                params.append(value)
        return clauses, params

    def describe(self) -> str:
        parts = [f"as_of={self.as_of.isoformat() if self.as_of else 'now'}"]
        if self.position is not None:
            parts.append(f"watermark={self.position}")
        elif self.known_at is not None:
            parts.append(f"known_at={self.known_at.isoformat()}")
        return ", ".join(parts)


def make_bounds(as_of: object = None, known_at: object = None) -> Bounds:
    """Check ``as_of`` (aware datetime or None) and ``known_at`` (aware datetime, :class:`Watermark` or None)."""
    if isinstance(as_of, Watermark):
        raise InvalidArgumentError("as_of bounds business time; pass the watermark as known_at=")
    when = to_utc_or_none(as_of, "as_of")
    if isinstance(known_at, Watermark):
        return Bounds(when, known_at.recorded_at, known_at.position)
    return Bounds(when, to_utc_or_none(known_at, "known_at"))


def read_watermark(lake: LakeLike, at: datetime | None = None) -> Watermark:
    """The lake's newest position, or the last one recorded at or before ``at``."""
    sql = "SELECT max(position) AS position, max(recorded_at) AS recorded_at FROM events"
    params: list[Any] = []
    if at is not None:
        sql += " WHERE recorded_at <= ?"
        params.append(to_utc(at, "at"))
    row = lake._query(sql, params, what="watermark").row(0)
    if row[0] is None:  # nothing recorded yet: the watermark sees no event
        return Watermark(0, to_utc(at, "at") if at is not None else EPOCH)
    return Watermark(int(row[0]), row[1])
