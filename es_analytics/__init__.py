"""es_analytics: an event-sourcing analytics and temporal-query workbench over an event lake."""

from __future__ import annotations

from .errors import ConcurrencyError, DomainError, DuplicateEventError
from .events import Event
from .lake import Lake

__all__ = ["ConcurrencyError", "DomainError", "DuplicateEventError", "Event", "Lake"]
__version__ = "0.1.0"
