"""The ``eventsourcing`` library's own recorder suites, run unchanged against lake recorders.

The suites ship in the library's wheel (``eventsourcing/tests/persistence.py``). They are imported as a
module (not by name) so that pytest does not collect the abstract base classes themselves.
"""

from __future__ import annotations

import tempfile

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ProcessRecorder,
    TrackingRecorder,
)
from eventsourcing.tests import persistence as suites
from eventsourcing.utils import Environment

from es_analytics.eventsourcing import (
    LakeAggregateRecorder,
    LakeApplicationRecorder,
    LakeFactory,
    LakeProcessRecorder,
    LakeSnapshotRecorder,
    LakeTrackingRecorder,
)


class LakeFixture:
    """A fresh lake folder per test, and a factory on it that is checked and closed after the test."""

    settings: dict[str, str] = {}

    def setUp(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="es-lake-")
        self._factories: list[LakeFactory] = []
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        try:
            for factory in self._factories:  # whatever a suite did, the lake passes its own fsck
                with factory.datastore.lock:  # a suite's reader threads may still be finishing a read
                    report = factory.lake.check()
                assert report["ok"], report["problems"]
        finally:
            for factory in self._factories:
                factory.close()
            self._folder.cleanup()

    def lake_factory(self) -> LakeFactory:
        factory = LakeFactory({"LAKE_PATH": self._folder.name, **self.settings})
        self._factories.append(factory)
        return factory


class TestLakeAggregateRecorder(LakeFixture, suites.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return self.lake_factory().aggregate_recorder()


class TestLakeSnapshotRecorder(LakeFixture, suites.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        recorder = self.lake_factory().aggregate_recorder("snapshots")
        assert isinstance(recorder, LakeSnapshotRecorder)
        return recorder


class TestLakeApplicationRecorder(LakeFixture, suites.ApplicationRecorderTestCase[ApplicationRecorder]):
    def create_recorder(self) -> ApplicationRecorder:
        return self.lake_factory().application_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestLakeApplicationRecorderWhileSealing(TestLakeApplicationRecorder):
    """The same suite on a lake that seals into Parquet after every few events, so that reads cross tiers."""

    settings = {"LAKE_AUTO_SEAL_ROWS": "2", "LAKE_DURABILITY": "normal"}


class TestLakeTrackingRecorder(LakeFixture, suites.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.lake_factory().tracking_recorder()


class TestLakeProcessRecorder(LakeFixture, suites.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.lake_factory().process_recorder()


class TestLakeNonInterleavingNotificationIDs(LakeFixture, suites.NonInterleavingNotificationIDsBaseCase):
    insert_num = 10_000

    def create_recorder(self) -> ApplicationRecorder:
        return self.lake_factory().application_recorder()


class LakeTrackingRecorderSubclass(LakeTrackingRecorder):
    pass


class TestLakeInfrastructureFactory(suites.InfrastructureFactoryTestCase[LakeFactory]):
    def setUp(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="es-lake-")
        self.env = Environment("TestCase")
        self.env[LakeFactory.PERSISTENCE_MODULE] = "es_analytics.eventsourcing"
        self.env[LakeFactory.LAKE_PATH] = self._folder.name
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        self._folder.cleanup()

    def expected_factory_class(self) -> type[LakeFactory]:
        return LakeFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return LakeAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return LakeApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return LakeTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return LakeTrackingRecorderSubclass

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return LakeProcessRecorder
