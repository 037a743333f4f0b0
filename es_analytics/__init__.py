"""es_analytics: an event-sourcing analytics and temporal-query workbench over an event lake."""

from __future__ import annotations

from .aggregates import Aggregate, DomainEvent, when
from .errors import ConcurrencyError, DomainError, DuplicateEventError, InvalidArgumentError
from .events import Event
from .lake import Lake
from .repository import Repository
from .upcasting import UpcasterRegistry, upcaster
from . import patterns as _patterns  # noqa: F401  (registers its seal hook: slot rollups built at seal time)

__all__ = [
    "Aggregate",
    "ConcurrencyError",
    "DomainError",
    "DomainEvent",
    "DuplicateEventError",
    "Event",
    "InvalidArgumentError",
    "Lake",
    "Repository",
    "UpcasterRegistry",
    "upcaster",
    "when",
]
__version__ = "0.1.0"
