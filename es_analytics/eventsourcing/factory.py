"""The infrastructure factory the library finds through ``PERSISTENCE_MODULE=es_analytics.eventsourcing``."""

from __future__ import annotations

from typing import Any, cast

from eventsourcing.persistence import AggregateRecorder, ApplicationRecorder, InfrastructureFactory, ProcessRecorder
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

from ..errors import InvalidArgumentError, LakeError
from ..lake import Lake
from .datastore import LakeDatastore, OriginatorIdType
from .errors import LakeSettingsError
from .recorders import (
    LakeAggregateRecorder,
    LakeApplicationRecorder,
    LakeProcessRecorder,
    LakeSnapshotRecorder,
    LakeTrackingRecorder,
)

__all__ = ["LakeFactory"]


class LakeFactory(InfrastructureFactory[LakeTrackingRecorder]):
    """Makes the lake recorders of one application from its settings (environment variables).

    Settings (each may be prefixed with the application's name, e.g. ``BANKACCOUNTS_LAKE_PATH``):

    ``LAKE_PATH``
        The lake folder (required); created if missing. Give each application its own lake: the lake's
        positions are the application's notification log.
    ``LAKE_DURABILITY``
        ``full`` (default, fsync per commit) or ``normal``.
    ``LAKE_AUTO_SEAL_ROWS``
        Seal into Parquet once this many events wait in the hot tier (default 50000; 0 turns it off).
    ``ORIGINATOR_ID_TYPE``
        ``uuid`` (default) or ``text``, as for the library's SQLite and PostgreSQL modules.
    ``LAKE_AGGREGATE_TYPE``
        The ``aggregate_type`` of streams whose first topic names no enclosing class (default ``Aggregate``).
    ``LAKE_POLL_INTERVAL``
        Seconds between a subscription's polls for other processes' writes (default 0.1).
    ``CREATE_TABLE``
        ``y`` (default) creates side tables (snapshots) when a recorder is made.
    """

    LAKE_PATH = "LAKE_PATH"
    LAKE_DURABILITY = "LAKE_DURABILITY"
    LAKE_AUTO_SEAL_ROWS = "LAKE_AUTO_SEAL_ROWS"
    LAKE_AGGREGATE_TYPE = "LAKE_AGGREGATE_TYPE"
    LAKE_POLL_INTERVAL = "LAKE_POLL_INTERVAL"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
    CREATE_TABLE = "CREATE_TABLE"

    aggregate_recorder_class = LakeAggregateRecorder
    application_recorder_class = LakeApplicationRecorder
    tracking_recorder_class = LakeTrackingRecorder
    process_recorder_class = LakeProcessRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        path = self.env.get(self.LAKE_PATH)
        if not path:
            keys = ", ".join(self.env.create_keys(self.LAKE_PATH))
            raise LakeSettingsError(f"no lake folder in the environment: set one of {keys}")
        durability = self.env.get(self.LAKE_DURABILITY, "full")
        if durability not in ("full", "normal"):
            raise LakeSettingsError(f"{self.LAKE_DURABILITY} must be 'full' or 'normal', got {durability!r}")
        auto_seal_rows = int(self._number(self.LAKE_AUTO_SEAL_ROWS, "50000", int))
        poll_interval = self._number(self.LAKE_POLL_INTERVAL, "0.1", float)
        id_type = self.env.get(self.ORIGINATOR_ID_TYPE, "uuid").lower()
        if id_type not in ("uuid", "text"):
            raise LakeSettingsError(f"{self.ORIGINATOR_ID_TYPE} must be 'uuid' or 'text', got {id_type!r}")
        try:
            lake = Lake.open(path, durability=cast(Any, durability), auto_seal_rows=auto_seal_rows)
        except LakeError as exc:
            raise LakeSettingsError(f"{self.LAKE_PATH}={path!r}: {exc}") from exc
        try:
            self.datastore = LakeDatastore(
                lake,
                originator_id_type=cast(OriginatorIdType, id_type),
                default_aggregate_type=self.env.get(self.LAKE_AGGREGATE_TYPE, "Aggregate"),
                poll_interval=poll_interval,
            )
        except InvalidArgumentError as exc:
            lake.close()
            raise LakeSettingsError(f"{self.LAKE_AGGREGATE_TYPE}: {exc}") from exc

    def _number(self, key: str, default: str, kind: type[int] | type[float]) -> float:
        text = self.env.get(key, default)
        try:
            value = kind(text)
        except ValueError:
            raise LakeSettingsError(f"{key} must be a {kind.__name__}, got {text!r}") from None
        if value < 0:
            raise LakeSettingsError(f"{key} must not be negative, got {text!r}")
        return value

    @property
    def lake(self) -> Lake:
        """The lake the recorders write (share it with care: recorder calls hold ``datastore.lock``)."""
        return self.datastore.lake

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        """Lake events for ``purpose="events"``; a side table for anything else (snapshots)."""
        if purpose == "events":
            return self.aggregate_recorder_class(self.datastore)
        recorder = LakeSnapshotRecorder(self.datastore, purpose)
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def application_recorder(self) -> ApplicationRecorder:
        topic = self.env.get(self.APPLICATION_RECORDER_TOPIC)
        cls: type[LakeApplicationRecorder] = resolve_topic(topic) if topic else self.application_recorder_class
        if not (isinstance(cls, type) and issubclass(cls, LakeApplicationRecorder)):
            raise LakeSettingsError(f"{self.APPLICATION_RECORDER_TOPIC} {topic!r} is not a LakeApplicationRecorder")
        return cls(self.datastore)

    def tracking_recorder(
        self, tracking_recorder_class: type[LakeTrackingRecorder] | None = None
    ) -> LakeTrackingRecorder:
        cls = tracking_recorder_class
        if cls is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            cls = resolve_topic(topic) if topic else self.tracking_recorder_class
        if not isinstance(cls, type) or not issubclass(cls, LakeTrackingRecorder):
            raise LakeSettingsError(f"the tracking recorder class {cls!r} is not a LakeTrackingRecorder")
        return cls(self.datastore)

    def process_recorder(self) -> ProcessRecorder:
        topic = self.env.get(self.PROCESS_RECORDER_TOPIC)
        cls: type[LakeProcessRecorder] = resolve_topic(topic) if topic else self.process_recorder_class
        if not (isinstance(cls, type) and issubclass(cls, LakeProcessRecorder)):
            raise LakeSettingsError(f"{self.PROCESS_RECORDER_TOPIC} {topic!r} is not a LakeProcessRecorder")
        return cls(self.datastore)

    def env_create_table(self) -> bool:
        return bool(strtobool(self.env.get(self.CREATE_TABLE, "yes") or "yes"))

    def close(self) -> None:
        self.datastore.close()


Factory = LakeFactory
