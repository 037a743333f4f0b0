"""Errors of the lake persistence module: each is the library's persistence error AND an es_analytics error.

The library's code catches its own classes (``IntegrityError`` when two writers race), notebooks catch
es_analytics' classes; both work::

    LakeConflictError(IntegrityError, EsAnalyticsError)        a record exists already (tracking, snapshot)
    └── LakeVersionConflictError(…, ConcurrencyError)           a stream is not at the version the events continue
    LakeDataError(DataError, InvalidArgumentError)              an id, topic, version or state the lake cannot hold
    LakeOperationalError(OperationalError, LakeBusyError)       the lake stayed locked longer than its timeout
    LakeSettingsError(InvalidArgumentError, OSError)            a missing or bad setting (LAKE_PATH, …)
"""

from __future__ import annotations

from eventsourcing.persistence import DataError, IntegrityError, OperationalError

from ..errors import ConcurrencyError, EsAnalyticsError, InvalidArgumentError, LakeBusyError

__all__ = [
    "LakeConflictError",
    "LakeDataError",
    "LakeOperationalError",
    "LakeSettingsError",
    "LakeVersionConflictError",
]


class LakeConflictError(IntegrityError, EsAnalyticsError):
    """Raised when a record with the same key exists: a tracked notification id that does not go up,
    a snapshot stored twice. Nothing was written."""


class LakeVersionConflictError(LakeConflictError, ConcurrencyError):
    """Raised by ``insert_events`` when a stream's events do not continue its stored version without a gap
    or repeat (another writer got there first, or the event exists). ``.aggregate_id``, ``.expected`` (the
    version the events continue) and ``.actual`` (the stored version) are originator versions. Nothing
    of the batch was written."""


class LakeDataError(DataError, InvalidArgumentError):
    """Raised when a stored event cannot go into the lake: an originator id that is not a UUID in ``uuid``
    mode, a topic that is not a valid event type, a version that is not an int, a state that is not bytes."""


class LakeOperationalError(OperationalError, LakeBusyError):
    """Raised when the lake's hot tier stayed locked by another process for longer than its timeout."""


class LakeSettingsError(InvalidArgumentError, OSError):
    """Raised by the factory when a setting is missing or malformed (e.g. no ``LAKE_PATH``)."""
