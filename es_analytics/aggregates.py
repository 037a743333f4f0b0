"""``Aggregate``: the base class of event-sourced domain objects (pure; no I/O).

A subclass sets its initial state in ``__init__``, declares one ``@when("EventType")`` handler per event
type it understands, and offers commands that validate their input, raise ``DomainError`` when a business
rule forbids them, and otherwise call :meth:`Aggregate._record`. Recording applies the event at once
(through the same handler that replays it later) and keeps it as a pending event until a repository
saves it. Replaying stored events goes through :meth:`Aggregate.apply`, one event at a time, in version
order.

Examples
--------
>>> from es_analytics.aggregates import Aggregate, DomainError, when
>>> class Counter(Aggregate):
...     def __init__(self, aggregate_id):
...         super().__init__(aggregate_id)
...         self.count = 0
...     def increment(self, by):
...         if by <= 0:
...             raise DomainError("Increment must be positive")
...         self._record("Incremented", {"by": by})
...     @when("Incremented")
...     def _incremented(self, event):
...         self.count += event.data["by"]
>>> c = Counter("c-1")
>>> c.increment(2); c.increment(3)
>>> c.count, c.version, [e.event_type for e in c.pending_events]
(5, 2, ['Incremented', 'Incremented'])
>>> Counter.replay("c-1", c.uncommitted_as_recorded()).state()
{'count': 5}
"""

from __future__ import annotations

import copy
import hashlib
import html
import json
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal, TypeVar

from .errors import DomainError, InvalidArgumentError, UnknownEventTypeError
from .events import Event, check_aggregate_id, check_aggregate_type

__all__ = [
    "Aggregate",
    "DomainError",
    "DomainEvent",
    "UnknownEventWarning",
    "decode_state",
    "encode_state",
    "when",
]

A = TypeVar("A", bound="Aggregate")
Handler = Callable[[Any, "DomainEvent"], None]
_RESERVED = frozenset({"aggregate_id", "version"})


class UnknownEventWarning(UserWarning):
    """Warned (instead of raised) when an aggregate with ``unknown_events = "warn"`` meets an unknown type."""


@dataclass(frozen=True)
class DomainEvent:
    """One event as a handler sees it: the payload parsed, the record's context alongside.

    ``recorded_at`` is ``None`` for an event recorded by a command and not saved yet. ``data`` is the
    payload after upcasting, so ``schema_version`` is the newest version known for the type.
    """

    event_type: str
    data: Mapping[str, Any]
    aggregate_version: int
    occurred_at: datetime
    recorded_at: datetime | None = None
    schema_version: int = 1
    event_id: str | None = None
    metadata: Mapping[str, Any] | None = None


def when(event_type: str) -> Callable[[Handler], Handler]:
    """Mark a method as the handler that applies events of ``event_type`` to the state.

    The method takes the :class:`DomainEvent` and changes ``self``; it must not validate or raise on a
    stored event (commands validate before they record).
    """
    Event(event_type, {})  # validates the name with the same rules as an append

    def mark(fn: Handler) -> Handler:
        fn._es_when = event_type  # type: ignore[attr-defined]
        return fn

    return mark


class Aggregate:
    """Base class of event-sourced aggregates: ``when``-handlers, commands, replay, pending events.

    Class attributes a subclass may set:

    ``aggregate_type``
        The stream type stored with its events (defaults to the class name; must be an identifier).
    ``class_version``
        Bump it when the meaning of the state changes without the handlers' code changing; snapshots
        taken by another class version (or other handler code) are ignored, never misread.
    ``unknown_events``
        ``"error"`` (default): replaying an event type without a handler raises
        ``UnknownEventTypeError``. ``"warn"``: warns ``UnknownEventWarning``, skips it and counts its version.
    ``schema_versions``
        ``{event_type: version}`` the commands record (default 1), e.g. ``{"UserRegistered": 3}``.

    A subclass's ``__init__`` takes the aggregate id alone (replay, snapshots and fingerprints construct
    it that way) and sets the initial state. State is every public instance attribute other than
    ``aggregate_id`` and ``version`` (see :meth:`state`); keep its values JSON-like, ``Decimal`` or
    ``datetime`` so snapshots can store them.
    """

    aggregate_type: ClassVar[str] = "Aggregate"
    class_version: ClassVar[int] = 1
    unknown_events: ClassVar[Literal["error", "warn"]] = "error"
    schema_versions: ClassVar[Mapping[str, int]] = {}
    _handlers: ClassVar[dict[str, Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "aggregate_type" not in cls.__dict__:
            cls.aggregate_type = cls.__name__
        check_aggregate_type(cls.aggregate_type)
        if cls.unknown_events not in ("error", "warn"):
            raise InvalidArgumentError(
                f"{cls.__name__}.unknown_events must be 'error' or 'warn', got {cls.unknown_events!r}"
            )
        handlers: dict[str, Handler] = {}
        for klass in reversed(cls.__mro__):
            own: dict[str, str] = {}
            for name, value in vars(klass).items():
                event_type = getattr(value, "_es_when", None)
                if event_type is None:
                    continue
                if event_type in own:
                    raise InvalidArgumentError(
                        f"{klass.__name__} has two @when({event_type!r}) handlers: {own[event_type]} and {name}"
                    )
                own[event_type] = name
                handlers[event_type] = value
        cls._handlers = handlers

    def __init__(self, aggregate_id: str) -> None:
        self.aggregate_id = check_aggregate_id(aggregate_id)
        self.version = 0
        self._pending: list[Event] = []
        self._saved_version = 0
        self._historical = False

    # -- replay -------------------------------------------------------------------------------
    @classmethod
    def handled_event_types(cls) -> tuple[str, ...]:
        """The event types this class has ``when``-handlers for, sorted."""
        return tuple(sorted(cls._handlers))

    def apply(self, event: DomainEvent) -> None:
        """Apply one stored event (the next in version order) to the state."""
        handler = self._handlers.get(event.event_type)
        if handler is None:
            self._unknown(event)
        else:
            handler(self, event)
        self.version = event.aggregate_version

    def _unknown(self, event: DomainEvent) -> None:
        message = (
            f"{type(self).__name__} has no @when handler for {event.event_type!r} "
            f"(stream {self.aggregate_id!r}, version {event.aggregate_version}); handled types: "
            f"{', '.join(self.handled_event_types()) or 'none'}. Add a handler, or set "
            f"unknown_events = 'warn' on the class to skip such events"
        )
        if self.unknown_events == "warn":
            warnings.warn(message, UnknownEventWarning, stacklevel=3)
            return
        raise UnknownEventTypeError(event.event_type, type(self).__name__, message)

    @classmethod
    def replay(cls: type[A], aggregate_id: str, events: Iterable[DomainEvent]) -> A:
        """A new aggregate with ``events`` applied in order (its saved version is the last one's)."""
        aggregate = cls(aggregate_id)
        for event in events:
            aggregate.apply(event)
        aggregate._saved_version = aggregate.version
        return aggregate

    # -- commands -----------------------------------------------------------------------------
    def _record(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        occurred_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> DomainEvent:
        """Apply a new event now and keep it pending until it is saved. Commands call this last."""
        new = Event(event_type, data, metadata=metadata, occurred_at=occurred_at,
                    schema_version=self.schema_versions.get(event_type, 1))
        event = DomainEvent(
            event_type, json.loads(new.data_json), self.version + 1, new.occurred_at,  # type: ignore[arg-type]
            None, new.schema_version, new.event_id, json.loads(new.metadata_json),
        )
        self.apply(event)
        self._pending.append(new)
        return event

    @property
    def pending_events(self) -> tuple[Event, ...]:
        """Events recorded by commands and not saved yet, oldest first (the uncommitted events)."""
        return tuple(self._pending)

    @property
    def saved_version(self) -> int:
        """The stream version this object was loaded at or last saved at (the expected version)."""
        return self._saved_version

    def mark_saved(self, version: int) -> None:
        """Forget the pending events after a repository stored them as versions up to ``version``."""
        self._pending.clear()
        self._saved_version = self.version = version

    def uncommitted_as_recorded(self) -> list[DomainEvent]:
        """The pending events as handlers see them (for tests and previews)."""
        first = self.version - len(self._pending) + 1
        return [
            DomainEvent(e.event_type, json.loads(e.data_json), first + i, e.occurred_at,  # type: ignore[arg-type]
                        None, e.schema_version, e.event_id, json.loads(e.metadata_json))
            for i, e in enumerate(self._pending)
        ]

    # -- state --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The state fields: public instance attributes other than ``aggregate_id`` and ``version``."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in _RESERVED}

    @classmethod
    def from_state(cls: type[A], aggregate_id: str, version: int, state: Mapping[str, Any]) -> A:
        """An aggregate with the given state and version (how a snapshot is restored).

        ``state`` must hold every field ``__init__`` sets; fields that handlers added later are restored too.
        """
        aggregate = cls(aggregate_id)
        missing = set(aggregate.state()) - set(state)
        if missing:
            raise InvalidArgumentError(
                f"state for {cls.__name__} lacks the fields {sorted(missing)} (got {sorted(state)})"
            )
        bad = [k for k in state if not isinstance(k, str) or k.startswith("_") or k in _RESERVED]
        if bad:
            raise InvalidArgumentError(f"state for {cls.__name__} holds fields that are not state: {bad}")
        for key, value in state.items():
            setattr(aggregate, key, copy.deepcopy(value))
        aggregate.version = aggregate._saved_version = version
        return aggregate

    @property
    def historical(self) -> bool:
        """True if rebuilt as of a past point (``as_of``, ``known_at`` or ``version``); it cannot be saved."""
        return self._historical

    @classmethod
    def fingerprint(cls) -> str:
        """A hash of what shapes the state: class name and version, handled types and handler code.

        Snapshots are stored with it; a snapshot with another fingerprint is ignored.
        """
        digest = hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}:{cls.class_version}".encode())
        digest.update(repr(sorted(cls(f"{cls.__name__}-fingerprint").state())).encode())
        for event_type in cls.handled_event_types():
            digest.update(event_type.encode())
            _hash_code(digest, cls._handlers[event_type].__code__)
        return digest.hexdigest()[:32]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Aggregate)
        return (self.aggregate_id, self.version, self.state()) == (other.aggregate_id, other.version, other.state())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.state().items())
        pending = f", pending={len(self._pending)}" if self._pending else ""
        return f"{type(self).__name__}({self.aggregate_id!r}, version={self.version}{pending}, {fields})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
            f"{html.escape(_show(v))}</td></tr>"
            for k, v in self.state().items()
        )
        pending = f" · {len(self._pending)} pending" if self._pending else ""
        return (
            f"<div><strong>{html.escape(type(self).__name__)}</strong> "
            f"<code>{html.escape(self.aggregate_id)}</code> · version {self.version}{pending}"
            f"<table>{rows}</table></div>"
        )


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _hash_code(digest: Any, code: types.CodeType) -> None:
    """Feed a code object into ``digest`` without memory addresses (nested code objects recurse)."""
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _hash_code(digest, const)
        else:
            digest.update(repr(const).encode())


# -- state as JSON (snapshots) ------------------------------------------------------------------
def _to_json(value: Any) -> Any:
    """A JSON-ready copy: Decimal, datetime and one-key ``$``-dicts tagged so they come back as they were."""
    if isinstance(value, dict):
        out = {str(k): _to_json(v) for k, v in value.items()}
        if len(out) == 1 and next(iter(out)).startswith("$"):  # would read back as a tag
            return {"$dict": [list(item) for item in out.items()]}
        return out
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise InvalidArgumentError(
        f"state value {value!r:.60} of type {type(value).__name__} cannot be stored in a snapshot; "
        "use JSON values, Decimal or datetime"
    )


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        key, value = next(iter(obj.items()))
        if key == "$decimal":
            return Decimal(value)
        if key == "$datetime":
            return datetime.fromisoformat(value)
        if key == "$dict":
            return dict(value)
    return obj


def encode_state(state: Mapping[str, Any]) -> str:
    """State as JSON text, ``Decimal`` and ``datetime`` values tagged so they come back typed.

    Examples
    --------
    >>> text = encode_state({"balance": Decimal("10.50"), "status": "active"})
    >>> decode_state(text)
    {'balance': Decimal('10.50'), 'status': 'active'}
    """
    return json.dumps(_to_json(dict(state)), allow_nan=False, sort_keys=True, separators=(",", ":"))


def decode_state(text: str) -> dict[str, Any]:
    """The state encoded by :func:`encode_state`."""
    value = json.loads(text, object_hook=_untag)
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"a snapshot's state must be a JSON object, got {type(value).__name__}")
    return value
