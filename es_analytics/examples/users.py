"""The seed's user: ``UserRegistered`` in three schema versions, ``UserSuspended`` and ``UserDataDeleted``.

``UserRegistered`` payloads by schema version, as in the seed's ``EventUpgrader``:

- v1: ``{id, email, name}``
- v2: the same payload; the event's metadata holds a ``correlationId``
- v3 (newest): ``{userId, profile: {email, name}, preferences: {newsletter}}``

Importing this module registers the upcasters v1 -> v2 -> v3, so every read path returns v3 payloads;
stored events never change. v1 -> v2 adds ``metadata.correlationId`` when it is missing
(``corr_<event_id>``: the seed draws a random one, which would differ on every read); v2 -> v3
restructures the payload exactly as the seed does (``newsletter`` from ``data.newsletter``, else false).

Personal data: the e-mail address and name, owned by the user. The declarations follow the stored shape
of each schema version: in v1 and v2 the fields are ``email`` and ``name`` and the data subject is in
``id``; in v3 they are ``profile.email`` and ``profile.name`` with the subject in ``userId``. So a v1 or v2
event in the seed's shape is appended (or ingested) as it is, encrypted for the right subject.

Examples
--------
>>> user = User("user-1")
>>> user.register("ada@example.org", "Ada Almeida")
>>> user.suspend("Chargeback dispute", "admin-1")
>>> user.status, user.email, user.pending_events[0].schema_version
('suspended', 'ada@example.org', 3)
>>> user_registered_v2_to_v3({"id": "u-1", "email": "a@example.org", "name": "A"})
{'userId': 'u-1', 'profile': {'email': 'a@example.org', 'name': 'A'}, 'preferences': {'newsletter': False}}
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from es_analytics import Aggregate, DomainError, DomainEvent, Event, InvalidArgumentError, Lake, upcaster, when
from es_analytics.errors import SubjectForgottenError
from es_analytics.temporal import Column, Const, Json, Last, Reducers
from es_analytics.privacy import declare_personal

__all__ = ["User", "delete_user_data", "user_registered_v1_to_v2", "user_registered_v2_to_v3"]


# Personal data per stored schema version (the paths of the stored payload and its data subject).
declare_personal("UserRegistered", ["email", "name"], subject="id", schema_version=1, stream_is_subject=True)
declare_personal("UserRegistered", ["email", "name"], subject="id", schema_version=2, stream_is_subject=True)
declare_personal("UserRegistered", ["profile.email", "profile.name"], subject="userId")


@upcaster("UserRegistered", 1, whole_event=True)
def user_registered_v1_to_v2(event: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2: the payload as it is; ``metadata.correlationId`` added when missing (``corr_<event_id>``)."""
    metadata = dict(event["metadata"])
    if not metadata.get("correlationId"):
        metadata["correlationId"] = f"corr_{event['event_id']}"
    return {**event, "metadata": metadata}


@upcaster("UserRegistered", 2)
def user_registered_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """v2 ``{id, email, name}`` -> v3 ``{userId, profile: {email, name}, preferences: {newsletter}}``."""
    return {"userId": data.get("id"), "profile": {"email": data.get("email"), "name": data.get("name")},
            "preferences": {"newsletter": data.get("newsletter") or False}}


class User(Aggregate):
    """The seed's user (its ``buildUserState``). State: ``email``, ``name``, ``newsletter``, ``status``,
    ``registered_at``, ``suspended_at``, ``suspension_reason`` (the seed's ``id`` is ``aggregate_id``).

    ``status`` is ``'pending'`` before ``register``, then ``'active'``, then ``'suspended'``; a
    ``UserDataDeleted`` tombstone (see :func:`delete_user_data`) makes it ``'deleted'``.
    """

    schema_versions = {"UserRegistered": 3}

    # The non-personal fields as reducers for ``lake.states(User)`` (all three payload versions). E-mail
    # and name stay out on purpose: they are personal data, and checkpoints would cache them.
    reducers = Reducers(
        newsletter=Last(Json("preferences.newsletter", "BOOLEAN", alternatives=("newsletter",), default=False),
                        on="UserRegistered", default=False),
        status=Last({"UserRegistered": Const("active"), "UserSuspended": Const("suspended"),
                     "UserDataDeleted": Const("deleted")}, default="pending"),
        registered_at=Last(Column("occurred_at"), on="UserRegistered"),
        suspended_at=Last(Column("occurred_at"), on="UserSuspended"),
        suspension_reason=Last(Json("reason"), on="UserSuspended"),
    )

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.email: str | None = None
        self.name: str | None = None
        self.newsletter = False
        self.status = "pending"
        self.registered_at: datetime | None = None
        self.suspended_at: datetime | None = None
        self.suspension_reason: str | None = None

    # -- commands -----------------------------------------------------------------------------
    def register(self, email: str, name: str, *, newsletter: bool = False) -> None:
        """Register the user (v3 payload)."""
        if not isinstance(email, str) or not isinstance(name, str) or not isinstance(newsletter, bool):
            raise InvalidArgumentError(
                f"email and name must be text and newsletter a bool, got {email!r}, {name!r}, {newsletter!r}"
            )
        if self.status != "pending":
            raise DomainError("User already registered")
        if "@" not in email.strip(" @"):
            raise DomainError("Invalid email address")
        if not name.strip():
            raise DomainError("Name is required")
        self._record("UserRegistered", {"userId": self.aggregate_id, "profile": {"email": email, "name": name},
                                        "preferences": {"newsletter": newsletter}})

    def suspend(self, reason: str, suspended_by: str) -> None:
        """Suspend an active user."""
        if self.status == "suspended":
            raise DomainError("User is already suspended")
        if self.status != "active":
            raise DomainError("User is not registered")
        if not isinstance(reason, str) or not reason.strip():
            raise DomainError("A reason is required")
        self._record("UserSuspended", {"reason": reason, "suspendedBy": suspended_by})

    # -- handlers -----------------------------------------------------------------------------
    @when("UserRegistered")
    def _registered(self, event: DomainEvent) -> None:
        profile = event.data.get("profile") or {}
        self.email = profile.get("email")
        self.name = profile.get("name")
        self.newsletter = bool((event.data.get("preferences") or {}).get("newsletter", False))
        self.status = "active"
        self.registered_at = event.occurred_at

    @when("UserSuspended")
    def _suspended(self, event: DomainEvent) -> None:
        self.status = "suspended"
        self.suspended_at = event.occurred_at
        self.suspension_reason = event.data.get("reason")

    @when("UserDataDeleted")
    def _data_deleted(self, event: DomainEvent) -> None:
        self.status = "deleted"


def delete_user_data(lake: Lake, user_id: str, *, reason: str | None = None) -> dict[str, Any]:
    """The seed's ``GDPRCompliantEventStore.deleteUserData``: delete the user's key, then add the tombstone.

    ``lake.forget(user_id)`` crypto-shreds the user's personal fields (and appends the lake's own
    ``SubjectForgotten`` record to the stream ``privacy:<user_id>``); then the seed's tombstone
    ``UserDataDeleted {deletedAt}`` is appended to the user's own stream. Running it again completes an
    interrupted run and adds no second tombstone. Returns the erasure certificate of ``lake.forget`` with
    ``tombstone_version`` added (only ``tombstone_version`` when an earlier run had deleted the key).
    """
    certificate: dict[str, Any] = {}
    try:
        certificate = lake.forget(user_id, reason=reason)
    except SubjectForgottenError:
        pass  # an earlier run deleted the key; make sure the tombstone is there
    done = lake.events(user_id, types="UserDataDeleted")
    if done.height:
        return {**certificate, "tombstone_version": int(done["aggregate_version"][0])}
    deleted_at = datetime.now(timezone.utc)
    tombstone = Event("UserDataDeleted", {"deletedAt": deleted_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
                      occurred_at=deleted_at)
    version = lake.append(user_id, [tombstone], expected_version=None, aggregate_type=User.aggregate_type)
    return {**certificate, "tombstone_version": version}
