"""The event record: ``Event`` (what a caller appends), its one Arrow schema, and input validation.

Everything that later becomes a path, a partition value or an SQL identifier is validated here.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from ._time import now_utc, to_utc
from .errors import InvalidArgumentError

__all__ = [
    "EVENT_COLUMNS",
    "EVENT_SCHEMA",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "Event",
    "check_aggregate_id",
    "check_aggregate_type",
    "check_event_type",
    "check_event_types",
    "new_event_id",
    "check_identifier",
    "check_version",
    "encode_json",
    "parse_json",
]

MAX_JSON_DEPTH = 64
MAX_JSON_BYTES = 1_048_576
MAX_ID_LENGTH = 1024
MAX_EVENT_TYPE_LENGTH = 255
# Integers a payload may hold: what DuckDB reads exactly (BIGINT and UBIGINT); larger ones would become
# doubles in SQL, and Python's json refuses more than 4,300 digits.
MIN_JSON_INT, MAX_JSON_INT = -(2**63), 2**64 - 1
# The key of an encrypted field (see privacy.py): only the lake writes it, so no payload may hold it.
RESERVED_KEY = "$enc"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_EVENT_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:$<>-]{0,254}")
# Unicode categories refused in ids: controls, formatting (bidi overrides, zero-width), line and paragraph
# separators. INVISIBLE_SQL is the same class for DuckDB's regular expressions (ingest).
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
INVISIBLE_SQL = r"[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]"

EVENT_SCHEMA = pa.schema(
    [
        pa.field("position", pa.int64(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("aggregate_type", pa.string(), nullable=False),
        pa.field("aggregate_id", pa.string(), nullable=False),
        pa.field("aggregate_version", pa.int64(), nullable=False),
        pa.field("occurred_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("data", pa.string(), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),
    ]
)
EVENT_COLUMNS: tuple[str, ...] = tuple(EVENT_SCHEMA.names)


def check_identifier(value: object, name: str) -> str:
    """Return ``value`` if it is an identifier (letters, digits, ``_``; not starting with a digit)."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise InvalidArgumentError(
            f"{name} must be an identifier (a letter or _ then letters, digits or _, at most 128), "
            f"got {value!r}"
        )
    return value


KNOWN_TYPES: set[str] = set()  # aggregate types that passed the check (a lake has a handful; read-only outside)


def check_aggregate_type(value: object) -> str:
    """Validate an aggregate type: it becomes a partition folder, so it must be an identifier."""
    if type(value) is str and value in KNOWN_TYPES:
        return value  # checked before: a set lookup costs far less than the regex on the append path
    checked = check_identifier(value, "aggregate_type")
    if type(checked) is str and len(KNOWN_TYPES) < 4096:
        KNOWN_TYPES.add(checked)
    return checked


def check_aggregate_id(value: object, name: str = "aggregate_id") -> str:
    """Validate a stream id: non-empty text, not only white space, without control or invisible formatting
    characters (bidi overrides, zero-width characters, line separators), at most 1024 characters. Returned
    in Unicode NFC, so that ids that look the same are the same id.

    Examples
    --------
    >>> check_aggregate_id("acc-1")
    'acc-1'
    >>> check_aggregate_id("cafe\u0301") == "caf\u00e9"
    True
    """
    if (type(value) is str and value.isascii() and value.isprintable() and 0 < len(value) <= MAX_ID_LENGTH
            and not value.isspace()):
        return value  # the usual id, first: printable ASCII is exactly "no control characters", valid UTF-8 and NFC
    if isinstance(value, uuid.UUID):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{name} must be a non-empty string, got {value!r}")
    if value.isspace():
        raise InvalidArgumentError(f"{name} must not be only white space, got {value!r}")
    if value.isascii() and not value.isprintable():
        raise InvalidArgumentError(f"{name} must not hold control characters, got {value!r}")
    _check_utf8(value, name)
    for char in value:
        if unicodedata.category(char) in _INVISIBLE:
            raise InvalidArgumentError(
                f"{name} must not hold control characters or invisible formatting characters "
                f"(U+{ord(char):04X} {unicodedata.name(char, '')}), got {value!r}".replace(" )", ")")
            )
    value = unicodedata.normalize("NFC", value)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgumentError(f"{name} is longer than {MAX_ID_LENGTH} characters: {value[:40]!r}…")
    return value


def check_event_type(value: object, name: str = "event_type") -> str:
    """Validate an event type: any text of 1 to 255 characters that is not only white space and holds no
    control or invisible formatting character, returned in Unicode NFC. Real activity names such as
    ``"W_Completeren aanvraag"`` or ``"Send Fine"`` are event types; they are data, never paths or SQL.

    Examples
    --------
    >>> check_event_type("Send Fine")
    'Send Fine'
    >>> check_event_type("")
    Traceback (most recent call last):
    ...
    es_analytics.errors.InvalidArgumentError: event_type must be a non-empty string, got ''
    """
    if type(value) is str and _EVENT_TYPE.fullmatch(value):
        return value  # the usual name: letters, digits and _ . : - $ < >
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{name} must be a non-empty string, got {value!r}")
    checked = check_aggregate_id(value, name)
    if len(checked) > MAX_EVENT_TYPE_LENGTH:
        raise InvalidArgumentError(f"{name} is longer than {MAX_EVENT_TYPE_LENGTH} characters: {checked[:40]!r}…")
    return checked


def check_event_types(types: object) -> list[str] | None:
    """Validate a ``types=`` filter: ``None``, one event type, or a collection of them (sorted list)."""
    if types is None:
        return None
    if isinstance(types, str):
        return [types]
    if not isinstance(types, (list, tuple, set, frozenset)) or not all(isinstance(t, str) for t in types):
        raise InvalidArgumentError(f"types must be an event type or a list of them, got {types!r}")
    return sorted(types)


def check_version(value: object, name: str, *, allow_none: bool = False) -> int | None:
    """Validate a version number: a non-negative int (``bool`` is refused)."""
    if type(value) is int and value >= 0:
        return value
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _check_utf8(text: str, name: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(
            f"{name} holds a lone surrogate at index {exc.start}; text must be valid Unicode"
        ) from None


def _check_tree(value: object, name: str) -> None:
    """Walk a JSON-like value without recursion: types, depth, keys, floats, strings."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidArgumentError(f"{name} is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str):
            _check_utf8(item, name)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidArgumentError(f"{name} holds {item!r}, which JSON cannot represent")
        elif isinstance(item, Mapping):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise InvalidArgumentError(f"{name} has a non-string key {key!r}; JSON keys are text")
                if key == RESERVED_KEY:
                    raise InvalidArgumentError(
                        f"{name} holds the key {RESERVED_KEY!r}, which marks fields the lake encrypted; declare "
                        "the field personal (declare_personal) and store it in clear instead"
                    )
                _check_utf8(key, name)
                stack.append((sub, depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((sub, depth + 1) for sub in item)
        elif type(item) is int:
            if not MIN_JSON_INT <= item <= MAX_JSON_INT:
                raise InvalidArgumentError(
                    f"{name} holds an integer of {item.bit_length()} bits, outside {MIN_JSON_INT}..{MAX_JSON_INT} "
                    "(what SQL reads exactly); store it as text"
                )
        elif item is not None and not isinstance(item, (bool, int)):
            raise InvalidArgumentError(
                f"{name} holds a {type(item).__name__} ({item!r:.60}), which is not JSON; "
                "use dicts, lists, str, int, float, bool or None"
            )


def encode_json(value: object, name: str) -> str:
    """Validate a JSON-like value and return its compact JSON text.

    A ``str`` is taken as JSON text and parsed strictly first (see :func:`parse_json`).

    Examples
    --------
    >>> encode_json({"amount": 10}, "data")
    '{"amount":10}'
    >>> encode_json({"x": float("nan")}, "data")
    Traceback (most recent call last):
    ...
    es_analytics.errors.InvalidArgumentError: data holds nan, which JSON cannot represent
    """
    if isinstance(value, str):
        value = parse_json(value, name)
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"{name} must be a JSON object (a dict), got {type(value).__name__}")
    _check_tree(value, name)
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if len(text.encode("utf-8")) > MAX_JSON_BYTES:
        raise InvalidArgumentError(f"{name} is larger than {MAX_JSON_BYTES} bytes as JSON")
    return text


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidArgumentError(f"JSON object holds the key {key!r} twice")
        result[key] = value
    return result


def _reject_constant(token: str) -> None:
    raise InvalidArgumentError(f"JSON text holds {token}, which is not valid JSON")


def parse_json(text: str, name: str) -> Any:
    """Parse JSON text strictly: no NaN/Infinity, no duplicate keys, bounded size and depth."""
    if len(text) > MAX_JSON_BYTES:
        raise InvalidArgumentError(f"{name} is larger than {MAX_JSON_BYTES} bytes as JSON")
    _check_utf8(text, name)
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{name}: {exc}") from None
    except RecursionError:
        raise InvalidArgumentError(f"{name} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidArgumentError(f"{name} is not valid JSON: {exc}") from None
    _check_tree(value, name)
    return value


def new_event_id() -> str:
    """A fresh event id: a UUID version 7 (RFC 9562), time-ordered to the millisecond.

    48 bits of Unix time in milliseconds, then 74 random bits. Ids made later sort later, so an index on
    ``event_id`` (the hot tier's ``hot_ids`` when such an id is appended again, the tables of readers) grows
    at its end instead of at random pages (see docs/decisions.md).

    Examples
    --------
    >>> a, b = new_event_id(), new_event_id()
    >>> len(a), a[14], a != b
    (36, '7', True)
    """
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80) | (0x7 << 76) | (((rand >> 62) & 0xFFF) << 64) | (0x2 << 62) | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class Event:
    """A new event to append; validated when it is made.

    Parameters
    ----------
    event_type
        Past-tense name such as ``"MoneyDeposited"``.
    data
        The payload: a dict of JSON values (or JSON text of an object).
    metadata
        Correlation id, causation id, actor and the like (a dict of JSON values).
    occurred_at
        Business time, timezone-aware; defaults to now.
    event_id
        Unique id and idempotency key; defaults to a fresh time-ordered UUID (:func:`new_event_id`).
    schema_version
        Version of the payload's shape, for upcasting (default 1).

    Examples
    --------
    >>> e = Event("MoneyDeposited", {"amount": 10}, event_id="e-1")
    >>> e.data_json, e.schema_version
    ('{"amount":10}', 1)
    """

    event_type: str
    data: Mapping[str, Any]
    metadata: Mapping[str, Any] | None = None
    occurred_at: datetime | None = None
    event_id: str | None = None
    schema_version: int = 1
    data_json: str = field(init=False, repr=False, compare=False)
    metadata_json: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (type(self.event_type) is str and _EVENT_TYPE.fullmatch(self.event_type)):
            object.__setattr__(self, "event_type", check_event_type(self.event_type))
        version = self.schema_version
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 2**31 - 1:
            raise InvalidArgumentError(f"schema_version must be a positive int, got {version!r}")
        if self.event_id is None:
            # An id made here cannot be stored anywhere yet: the first append of this very object may skip
            # looking for it among sealed ids (``Lake.append`` takes the mark; copies never carry it).
            object.__setattr__(self, "event_id", new_event_id())
            object.__setattr__(self, "_unsent", True)
        else:
            object.__setattr__(self, "event_id", check_aggregate_id(self.event_id, "event_id"))
        occurred = now_utc() if self.occurred_at is None else to_utc(self.occurred_at, "occurred_at")
        object.__setattr__(self, "occurred_at", occurred)
        object.__setattr__(self, "data_json", encode_json(self.data, "data"))
        metadata = {} if self.metadata is None else self.metadata
        object.__setattr__(self, "metadata_json", encode_json(metadata, "metadata"))

    def _take_unsent(self) -> bool:
        """True once, for the first append of an event whose id was made with it (see ``__post_init__``).

        The mark is removed with ``object.__delattr__``: of two threads appending one event object only one
        succeeds. (Reaching it through ``__dict__`` would make Python build a dict for every event, 1,000
        objects per batch for the garbage collector to count and walk.)
        """
        if not getattr(self, "_unsent", False):
            return False
        try:
            object.__delattr__(self, "_unsent")
        except AttributeError:  # another thread took it first
            return False
        return True

    def __getstate__(self) -> dict[str, Any]:
        """Pickled and copied events are never "unsent": the original may have been appended since."""
        state = dict(self.__dict__)
        state.pop("_unsent", None)
        return state
