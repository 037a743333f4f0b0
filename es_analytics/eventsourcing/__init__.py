"""The event lake as a persistence module for the ``eventsourcing`` library (optional extra).

Select it the way the library selects persistence modules, and name the lake folder::

    PERSISTENCE_MODULE=es_analytics.eventsourcing
    LAKE_PATH=/data/bank-lake

Every application event then lands in the lake as it is saved: ``originator_id`` as ``aggregate_id``,
``originator_version`` as ``aggregate_version``, the topic as ``event_type`` and the state as ``data`` (the
transcoder's JSON as it is, anything else base64 in a wrapper object), so ``lake.sql``, ``lake.events``
and the temporal queries work on it with no export step. Notification ids are lake positions:
gap-free and in commit order, one batch never interleaved with another. Snapshots and tracking records
live in side tables of the lake's SQLite hot tier, so a process application's events and its tracking
record commit in one transaction. Tested against the library's own recorder suites, 9.5.x.

Examples
--------
>>> import tempfile
>>> from decimal import Decimal
>>> from eventsourcing.tests.application import BankAccounts
>>> folder = tempfile.mkdtemp()
>>> app = BankAccounts(env={"PERSISTENCE_MODULE": "es_analytics.eventsourcing", "LAKE_PATH": folder})
>>> account_id = app.open_account("Alice", "alice@example.com")
>>> app.credit_account(account_id, Decimal("10.00"))
>>> app.get_balance(account_id)
Decimal('10.00')
>>> app.close()
>>> from es_analytics import Lake
>>> with Lake.open(folder) as lake:
...     lake.sql("SELECT position, aggregate_type, aggregate_version, data->>'full_name' AS name FROM events").rows()
[(1, 'BankAccount', 1, 'Alice'), (2, 'BankAccount', 2, None)]
"""

from __future__ import annotations

try:
    import eventsourcing.persistence  # noqa: F401  (the library, not this package: imports are absolute)
except ImportError as exc:  # pragma: no cover - only without the optional extra
    raise ImportError(
        "es_analytics.eventsourcing needs the eventsourcing library: pip install 'es_analytics[eventsourcing]'"
    ) from exc

from .datastore import LakeDatastore
from .errors import (
    LakeConflictError,
    LakeDataError,
    LakeOperationalError,
    LakeSettingsError,
    LakeVersionConflictError,
)
from .factory import Factory, LakeFactory
from .recorders import (
    LakeAggregateRecorder,
    LakeApplicationRecorder,
    LakeProcessRecorder,
    LakeSnapshotRecorder,
    LakeSubscription,
    LakeTrackingRecorder,
)

__all__ = [
    "Factory",
    "LakeAggregateRecorder",
    "LakeApplicationRecorder",
    "LakeConflictError",
    "LakeDataError",
    "LakeDatastore",
    "LakeFactory",
    "LakeOperationalError",
    "LakeProcessRecorder",
    "LakeSettingsError",
    "LakeSnapshotRecorder",
    "LakeSubscription",
    "LakeTrackingRecorder",
    "LakeVersionConflictError",
]
