"""The one error hierarchy of es_analytics.

Every error the package raises on bad input or on a broken lake is one of these::

    EsAnalyticsError
    ├── LakeError                       folder, manifest or file problems
    │   ├── NotALakeError               the folder exists but is not a lake
    │   ├── LakeCorruptError            recovery could not restore a consistent state
    │   ├── LakeBusyError(TimeoutError) a lock could not be taken in time
    │   └── ReadOnlyQueryError          ``lake.sql`` was asked to change the lake or touch files
    ├── ConcurrencyError                .aggregate_id .expected .actual
    ├── DuplicateEventError             .event_id (same id, other content)
    ├── EventSchemaError                unknown event_type / schema_version
    │   ├── UpcastError                 .event_type .from_version
    │   └── UnknownEventTypeError       .event_type .aggregate_class (no @when handler)
    ├── InvalidArgumentError(ValueError)  naive datetime, bad identifier, bad JSON, unknown choice
    │   └── QueryError                  SQL that DuckDB rejects
    ├── PrivacyError                    key store unreadable, subject key missing
    │   ├── UnknownSubjectError(LookupError)  .subject_id (no key, no personal data held)
    │   └── SubjectForgottenError       .subject_id (already forgotten)
    ├── TamperEvidenceError             the hash chain does not verify
    ├── ReportError                     a report cannot be rendered or saved (PDF without Chromium)
    └── DomainError                     a business rule inside an aggregate ('Insufficient funds')
"""

from __future__ import annotations

__all__ = [
    "ConcurrencyError",
    "DomainError",
    "DuplicateEventError",
    "EsAnalyticsError",
    "EventSchemaError",
    "InvalidArgumentError",
    "LakeBusyError",
    "LakeCorruptError",
    "LakeError",
    "NotALakeError",
    "PrivacyError",
    "QueryError",
    "ReadOnlyQueryError",
    "ReportError",
    "SubjectForgottenError",
    "TamperEvidenceError",
    "UnknownEventTypeError",
    "UnknownSubjectError",
    "UpcastError",
]


class EsAnalyticsError(Exception):
    """Root of every error es_analytics raises on purpose."""


class LakeError(EsAnalyticsError):
    """Raised when the lake folder, its manifest or one of its files cannot be used."""


class NotALakeError(LakeError):
    """Raised by ``Lake.open`` when the folder holds files but is not an event lake."""


class LakeCorruptError(LakeError):
    """Raised when recovery on open cannot bring the lake back to a consistent state."""


class LakeBusyError(LakeError, TimeoutError):
    """Raised when another process holds a lake lock longer than the timeout allows."""


class ReadOnlyQueryError(LakeError):
    """Raised when ``lake.sql`` is given a statement that would change the lake or touch files."""


class ConcurrencyError(EsAnalyticsError):
    """Raised by ``append`` when the stream's version is not the ``expected_version``.

    Nothing was appended. ``.expected`` is what the caller passed, ``.actual`` the stream's version. The
    message starts with the seed's text (``Concurrency conflict: expected version 0, but current version
    is 5``), then names the stream and what to do.
    """

    def __init__(self, aggregate_id: str, expected: int, actual: int) -> None:
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"Concurrency conflict: expected version {expected}, but current version is {actual} "
            f"(stream {aggregate_id!r}); reload the aggregate and retry the command"
        )


class DuplicateEventError(EsAnalyticsError):
    """Raised by ``append`` when an ``event_id`` is already stored with other content."""

    def __init__(self, event_id: str, detail: str = "") -> None:
        self.event_id = event_id
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"event_id {event_id!r} is already stored with other content{extra}; "
            "use a fresh event_id for a new event"
        )


class EventSchemaError(EsAnalyticsError):
    """Raised when an event's type or schema version is unknown to the reader."""


class UpcastError(EventSchemaError):
    """Raised when an upcaster chain cannot bring an event to the newest schema version."""

    def __init__(self, event_type: str, from_version: int, detail: str) -> None:
        self.event_type = event_type
        self.from_version = from_version
        super().__init__(f"cannot upcast {event_type!r} from schema_version {from_version}: {detail}")


class UnknownEventTypeError(EventSchemaError):
    """Raised when an aggregate replays an event type it has no ``@when`` handler for.

    Set ``unknown_events = "warn"`` on the aggregate class to skip such events with a warning instead.
    """

    def __init__(self, event_type: str, aggregate_class: str, message: str) -> None:
        self.event_type = event_type
        self.aggregate_class = aggregate_class
        super().__init__(message)


class InvalidArgumentError(EsAnalyticsError, ValueError):
    """Raised on bad input: naive datetimes, bad identifiers, payloads that are not JSON, unknown choices."""


class QueryError(InvalidArgumentError):
    """Raised when DuckDB rejects a query given to ``lake.sql`` (syntax, unknown column, bad parameter)."""


class PrivacyError(EsAnalyticsError):
    """Raised when the key store cannot be read or a data subject's key is missing or already deleted."""


class UnknownSubjectError(PrivacyError, LookupError):
    """Raised by ``forget`` and subject reports when the lake holds no key and no personal data of a subject."""

    def __init__(self, subject_id: str, detail: str = "") -> None:
        self.subject_id = subject_id
        extra = f"; {detail}" if detail else ""
        super().__init__(f"the lake holds no personal data of subject {subject_id!r}{extra}")


class SubjectForgottenError(PrivacyError):
    """Raised when a subject was forgotten: by ``forget`` run again, and by appends of new personal data."""

    def __init__(self, subject_id: str, detail: str = "") -> None:
        self.subject_id = subject_id
        extra = f": {detail}" if detail else ""
        super().__init__(f"subject {subject_id!r} has been forgotten{extra}")


class ReportError(EsAnalyticsError):
    """Raised when a report cannot be rendered or saved, e.g. a PDF without Chromium installed."""


class TamperEvidenceError(EsAnalyticsError):
    """Raised when the hash chain over the events does not verify and the caller asked for an exception."""


class DomainError(EsAnalyticsError):
    """Raised by an aggregate's command when a business rule forbids it ('Insufficient funds')."""
