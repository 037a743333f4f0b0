"""The one place that checks times: naive datetimes are rejected, everything else becomes UTC."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .errors import InvalidArgumentError

__all__ = ["EPOCH", "from_micros", "now_utc", "to_micros", "to_utc", "to_utc_or_none"]

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)  # (t - EPOCH) // MICROSECOND is to_micros(t), in two C operations
_MIN_MICROS = -62135596800 * 1_000_000  # 0001-01-01
_MAX_MICROS = 253402300799 * 1_000_000  # 9999-12-31


def to_utc(value: object, name: str) -> datetime:
    """Return ``value`` as an aware UTC datetime, or raise ``InvalidArgumentError`` naming ``name``.

    Examples
    --------
    >>> to_utc(datetime(2024, 3, 1, 9, tzinfo=timezone.utc), "as_of").isoformat()
    '2024-03-01T09:00:00+00:00'
    >>> to_utc(datetime(2024, 3, 1, 9), "as_of")
    Traceback (most recent call last):
    ...
    es_analytics.errors.InvalidArgumentError: as_of must be timezone-aware, got datetime.datetime(2024, 3, 1, 9, 0); pass tzinfo=timezone.utc
    """
    if not isinstance(value, datetime):
        raise InvalidArgumentError(
            f"{name} must be a timezone-aware datetime, got {type(value).__name__} {value!r}"
        )
    try:
        offset = value.utcoffset()
    except (ValueError, TypeError, OverflowError) as exc:  # a tzinfo whose offset Python refuses (over 24 h)
        raise InvalidArgumentError(f"{name} has a time zone Python cannot use ({value.tzinfo!r}): {exc}") from None
    if offset is None:
        raise InvalidArgumentError(
            f"{name} must be timezone-aware, got {value!r}; pass tzinfo=timezone.utc"
        )
    try:
        return value.astimezone(timezone.utc)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. 9999-12-31 23:00 at -05:00 is after year 9999
        raise InvalidArgumentError(f"{name} {value.isoformat()} is outside the years 1..9999 in UTC: {exc}") from None


def to_utc_or_none(value: object, name: str) -> datetime | None:
    """Like :func:`to_utc` but lets ``None`` through."""
    return None if value is None else to_utc(value, name)


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact, no float rounding)."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime of a microsecond count."""
    if not _MIN_MICROS <= micros <= _MAX_MICROS:
        raise InvalidArgumentError(f"timestamp {micros!r} µs is outside the years 1..9999")
    return EPOCH + timedelta(microseconds=micros)


def now_utc() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)
