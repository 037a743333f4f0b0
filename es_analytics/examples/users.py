"""The seed's user: ``UserRegistered`` in three schema versions, and ``UserSuspended``.

``UserRegistered`` payloads by schema version:

- v1: ``{userId, email, name}``
- v2: ``{userId, profile: {email, name}}``
- v3 (newest): ``{userId, profile: {email, name}, preferences: {newsletter}}``

Importing this module registers the upcasters v1 -> v2 -> v3, so every read path returns v3 payloads.
Stored events never change.

Examples
--------
>>> user = User("user-1")
>>> user.register("ada@example.org", "Ada Almeida")
>>> user.suspend("Chargeback dispute", "admin-1")
>>> user.status, user.email, user.pending_events[0].schema_version
('suspended', 'ada@example.org', 3)
>>> user_registered_v1_to_v2({"userId": "u-1", "email": "a@example.org", "name": "A"})
{'userId': 'u-1', 'profile': {'email': 'a@example.org', 'name': 'A'}}
"""

from __future__ import annotations

from typing import Any

from es_analytics import Aggregate, DomainError, DomainEvent, InvalidArgumentError, upcaster, when
from es_analytics.temporal import Const, Json, Last, Reducers
from es_analytics.privacy import declare_personal

__all__ = ["User", "user_registered_v1_to_v2", "user_registered_v2_to_v3"]


# Personal data: the e-mail address and name, owned by the user (``userId``, the aggregate id). The paths
# are those of the stored payload, per stored schema version (v1 kept them at the top level).
declare_personal("UserRegistered", ["email", "name"], subject="userId", schema_version=1)
declare_personal("UserRegistered", ["profile.email", "profile.name"], subject="userId")


@upcaster("UserRegistered", 1)
def user_registered_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v1 ``{userId, email, name}`` -> v2 ``{userId, profile: {email, name}}`` (other keys kept)."""
    rest = {k: v for k, v in data.items() if k not in ("email", "name")}
    return {**rest, "profile": {"email": data.get("email"), "name": data.get("name")}}


@upcaster("UserRegistered", 2)
def user_registered_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """v2 -> v3: adds ``preferences: {newsletter: false}`` (v2 users never opted in)."""
    return {**data, "preferences": {"newsletter": False}}


class User(Aggregate):
    """The seed's user. State: ``email``, ``name``, ``newsletter``, ``status``, ``suspension_reason``.

    ``status`` is ``'pending'`` before ``register``, then ``'active'``, then ``'suspended'``.
    """

    schema_versions = {"UserRegistered": 3}

    # The non-personal fields as reducers for ``lake.states(User)`` (all three payload versions). E-mail
    # and name stay out on purpose: they are personal data, and checkpoints would cache them.
    reducers = Reducers(
        newsletter=Last(Json("preferences.newsletter", "BOOLEAN", default=False), on="UserRegistered",
                        default=False),
        status=Last({"UserRegistered": Const("active"), "UserSuspended": Const("suspended")}, default="pending"),
        suspension_reason=Last(Json("reason"), on="UserSuspended"),
    )

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.email: str | None = None
        self.name: str | None = None
        self.newsletter = False
        self.status = "pending"
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

    @when("UserSuspended")
    def _suspended(self, event: DomainEvent) -> None:
        self.status = "suspended"
        self.suspension_reason = event.data.get("reason")
