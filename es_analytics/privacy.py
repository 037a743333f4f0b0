"""Personal data: per-subject field encryption (crypto-shredding), the erased marker, and key stores.

Declare which fields of an event type are personal and which field names the data subject::

    declare_personal("UserRegistered", ["profile.email", "profile.name"], subject="userId")

On append (and on the bulk import path) each declared field is replaced by an *envelope*, a small JSON
object that holds the value encrypted with the subject's own key (AES-256-GCM, a fresh 96-bit nonce per
value, the event id and the field path bound as associated data)::

    {"$enc": "A256GCM", "sub": "user-1", "iv": "<base64>", "ct": "<base64>"}

Readers with the key see the plaintext; once the key is deleted (``lake.forget``, see
:mod:`es_analytics.forgetting`) every reader sees :data:`ERASED` instead. The stored events never
change, so the hash chain over them (:mod:`es_analytics.integrity`) still verifies afterwards. Paths
run through JSON objects only (not into lists); ``lake.sql`` shows envelopes, every other field as is.

Declarations are per (event type, schema version) of the *stored* payload, because encryption happens
before anything is stored and decryption happens before upcasting on read; ``schema_version=None`` covers
every version. Keys live in a :class:`KeyStore` kept apart from the events: :class:`FileKeyStore` (a
SQLite file in the lake folder whose keys are wrapped with a master key kept outside it, deleted keys
overwritten in place) or :class:`InMemoryKeyStore`; a KMS can back the same protocol.

Examples
--------
>>> store = InMemoryKeyStore()
>>> cipher = SubjectCipher(store)
>>> box = cipher.seal_value("u-1", "ada@example.org", "evt-1", "email")
>>> sorted(box)
['$enc', 'ct', 'iv', 'sub']
>>> cipher.open_value(box, "evt-1", "email", store.keys_for(["u-1"]))
'ada@example.org'
>>> _ = store.delete_key("u-1", {})
>>> cipher.open_value(box, "evt-1", "email", store.keys_for(["u-1"]))
'[erased]'
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import polars as pl
import pyarrow as pa

from .errors import InvalidArgumentError, PrivacyError, SubjectForgottenError
from .events import Event, check_aggregate_id

__all__ = [
    "ENVELOPE_KEY",
    "ERASED",
    "FileKeyStore",
    "InMemoryKeyStore",
    "KeyStore",
    "PersonalFields",
    "Privacy",
    "SubjectCipher",
    "SubjectState",
    "declare_personal",
    "default_master_key_file",
    "master_key",
    "declarations",
    "is_envelope",
    "personal_fields",
    "undeclare_personal",
    "open_state",
    "seal_state",
    "sealed_subjects",
    "walk_envelopes",
]

ERASED = "[erased]"
"""What a reader sees in place of a personal field whose subject was forgotten."""
ENVELOPE_KEY = "$enc"
ALGORITHM = "A256GCM"
KEY_FILE = "keys.sqlite"
SubjectState = Literal["unknown", "active", "shredded", "forgotten"]


# -- declarations -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PersonalFields:
    """The personal fields of one event type (and optionally one stored schema version)."""

    event_type: str
    fields: tuple[str, ...]
    subject: str
    schema_version: int | None = None
    stream_is_subject: bool = False


_DECLARED: dict[tuple[str, int | None], PersonalFields] = {}
PERSONAL_FIELDS = _DECLARED  # the same dict (never rebound), read-only outside: empty when nothing is declared


def _check_path(path: object, name: str) -> str:
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise InvalidArgumentError(f"{name} must be a dotted field path such as 'profile.email', got {path!r}")
    return path


def declare_personal(
    event_type: str, fields: Sequence[str], *, subject: str, schema_version: int | None = None,
    stream_is_subject: bool = False,
) -> PersonalFields:
    """Declare ``fields`` (dotted paths into ``data``) of ``event_type`` personal, owned by ``subject``.

    Parameters
    ----------
    event_type
        The event type, e.g. ``"UserRegistered"``.
    fields
        Dotted paths of the personal values in the stored payload, e.g. ``["profile.email"]``.
    subject
        Dotted path of the field holding the data subject's id, e.g. ``"userId"``.
    schema_version
        The stored schema version these paths apply to; ``None`` for every version without its own
        declaration.
    stream_is_subject
        When a payload has no ``subject`` field, the stream's id is the subject (a stream per person,
        as the seed's ``UserRegistered`` ``{email, name}`` on stream ``user_123``). Off by default: a
        missing subject is then refused.

    Examples
    --------
    >>> declare_personal("NewsletterSigned", ["email"], subject="userId")
    PersonalFields(event_type='NewsletterSigned', fields=('email',), subject='userId', schema_version=None, stream_is_subject=False)
    >>> undeclare_personal("NewsletterSigned")
    """
    Event(event_type, {})  # validates the event type's spelling
    if isinstance(fields, str) or not fields:
        raise InvalidArgumentError(f"fields must be a non-empty list of dotted paths, got {fields!r}")
    paths = tuple(_check_path(f, "each personal field") for f in fields)
    _check_path(subject, "subject")
    if subject in paths:
        raise InvalidArgumentError(f"the subject field {subject!r} cannot itself be encrypted")
    if schema_version is not None and (isinstance(schema_version, bool) or not isinstance(schema_version, int)
                                       or schema_version < 1):
        raise InvalidArgumentError(f"schema_version must be a positive int or None, got {schema_version!r}")
    if not isinstance(stream_is_subject, bool):
        raise InvalidArgumentError(f"stream_is_subject must be True or False, got {stream_is_subject!r}")
    declared = PersonalFields(event_type, paths, subject, schema_version, stream_is_subject)
    _DECLARED[(event_type, schema_version)] = declared
    return declared


def undeclare_personal(event_type: str, schema_version: int | None = None) -> None:
    """Remove a declaration (events already stored stay encrypted)."""
    _DECLARED.pop((event_type, schema_version), None)


def personal_fields(event_type: str, schema_version: int) -> PersonalFields | None:
    """The declaration that applies to a stored event of this type and version, if any."""
    return _DECLARED.get((event_type, schema_version)) or _DECLARED.get((event_type, None))


def declarations() -> list[PersonalFields]:
    """Every declaration, sorted by event type and version."""
    return sorted(_DECLARED.values(), key=lambda d: (d.event_type, d.schema_version or 0))


def _get_path(tree: Mapping[str, Any], path: str) -> tuple[Any, bool]:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None, False
        node = node[part]
    return node, True


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[last] = value


# -- key stores ---------------------------------------------------------------------------------
class KeyStore(Protocol):
    """Where subjects' keys live: one 256-bit key per data subject, kept apart from the events.

    A deleted key is gone for good; the store keeps only a record that it existed and when it went.
    """

    def keys_for(self, subjects: Iterable[str], *, create: bool = False) -> dict[str, bytes | None]:
        """Each subject's key; ``None`` for a deleted key. Unknown subjects are left out unless ``create``."""

    def state(self, subject: str) -> tuple[SubjectState, dict[str, Any]]:
        """The subject's life-cycle state and the facts recorded with it (times, certificate)."""

    def delete_key(self, subject: str, info: Mapping[str, Any]) -> float:
        """Delete the subject's key for good (state ``shredded``); returns the deletion time."""

    def mark_forgotten(self, subject: str, info: Mapping[str, Any]) -> None:
        """Record that forgetting finished (state ``forgotten``), with its certificate."""

    def subjects(self) -> list[tuple[str, SubjectState]]:
        """Every subject the store knows, with its state."""


def _new_key() -> bytes:
    return os.urandom(32)


MASTER_KEY_ENV = "ES_ANALYTICS_MASTER_KEY"
MASTER_KEY_FILE_ENV = "ES_ANALYTICS_MASTER_KEY_FILE"


def default_master_key_file() -> Path:
    """Where the master key lives when no environment variable names one: the user's configuration
    folder (``$XDG_CONFIG_HOME/es_analytics/master.key``, else ``~/.config/es_analytics/master.key``),
    outside every lake folder."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "es_analytics" / "master.key"


def master_key() -> bytes:
    """The key that wraps every data subject's key in a :class:`FileKeyStore` (32 bytes).

    From ``ES_ANALYTICS_MASTER_KEY`` (base64 of 32 bytes) if set, else from the file that
    ``ES_ANALYTICS_MASTER_KEY_FILE`` names, else from :func:`default_master_key_file`, which is made (mode
    0600) on first use. A copy of a lake folder alone therefore decrypts nothing.
    """
    text = os.environ.get(MASTER_KEY_ENV)
    source = MASTER_KEY_ENV
    if text is None:
        path = Path(os.environ.get(MASTER_KEY_FILE_ENV) or default_master_key_file())
        source = str(path)
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            text = _make_master_key_file(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise PrivacyError(f"cannot read the master key file {source!r}: {exc}") from exc
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise PrivacyError(f"the master key from {source} is not the base64 text of 32 bytes")
    return key


def _make_master_key_file(path: Path) -> str:
    """Write a new master key to ``path`` unless another process just did; returns the file's text."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(base64.b64encode(_new_key()).decode("ascii") + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # never replaces a key another process made first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_text(encoding="ascii")
    except OSError as exc:
        raise PrivacyError(f"cannot create the master key file {str(path)!r}: {exc}") from exc


class InMemoryKeyStore:
    """Keys in a dict: for tests and throw-away lakes (keys die with the process)."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes | None] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def keys_for(self, subjects: Iterable[str], *, create: bool = False) -> dict[str, bytes | None]:
        with self._lock:
            out: dict[str, bytes | None] = {}
            for subject in subjects:
                if subject not in self._keys and create:
                    self._keys[subject] = _new_key()
                    self._info[subject] = {"state": "active", "created_at": time.time()}
                if subject in self._keys:
                    out[subject] = self._keys[subject]
            return out

    def state(self, subject: str) -> tuple[SubjectState, dict[str, Any]]:
        info = dict(self._info.get(subject, {"state": "unknown"}))
        return info.pop("state"), info

    def delete_key(self, subject: str, info: Mapping[str, Any]) -> float:
        with self._lock:
            if subject not in self._keys:
                raise PrivacyError(f"the key store holds no key for subject {subject!r}")
            if self._info[subject]["state"] != "active":  # deleted already (e.g. by a concurrent forget)
                return float(self._info[subject]["key_deleted_at"])
            self._keys[subject] = None
            when = time.time()
            self._info[subject].update(info, state="shredded", key_deleted_at=when)
            return when

    def mark_forgotten(self, subject: str, info: Mapping[str, Any]) -> None:
        with self._lock:
            self._info[subject].update(info, state="forgotten")

    def subjects(self) -> list[tuple[str, SubjectState]]:
        return sorted((s, i["state"]) for s, i in self._info.items())


class FileKeyStore:
    """Keys in a SQLite file (by default ``keys.sqlite`` in the lake folder), safe across processes, each
    wrapped with a master key kept outside the lake (:func:`master_key`).

    A subject's key is stored as AES-256-GCM of it under the master key, with the subject id as associated
    data, so neither the file nor a copy of the lake folder reveals a key, and a wrapped key moved to
    another subject does not unwrap. The file runs in WAL mode with ``synchronous=FULL`` (a key is durable
    before the event that uses it commits) and ``secure_delete`` (a deleted key's bytes are overwritten in
    place, not left in free pages); deleting a key also checkpoints and truncates the write-ahead log, so
    a deleted key is in no file.

    ``master`` gives the master key directly (32 bytes) instead of :func:`master_key`.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0,
                 master: bytes | None = None) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._con: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        if master is not None and (not isinstance(master, bytes) or len(master) != 32):
            raise InvalidArgumentError("master must be 32 bytes")
        self._master = master
        self._wrapper: Any = None

    def _wrap(self) -> Any:
        if self._wrapper is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._wrapper = AESGCM(self._master if self._master is not None else master_key())
        return self._wrapper

    def _wrapped(self, subject: str, key: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + bytes(self._wrap().encrypt(nonce, key, subject.encode("utf-8")))

    def _unwrapped(self, subject: str, stored: bytes | None) -> bytes | None:
        if stored is None:
            return None
        from cryptography.exceptions import InvalidTag

        try:
            return bytes(self._wrap().decrypt(stored[:12], stored[12:], subject.encode("utf-8")))
        except (InvalidTag, ValueError) as exc:
            raise PrivacyError(
                f"the key of subject {subject!r} in {str(self.path)!r} does not unwrap: the key store was made "
                f"with another master key (set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV} to the one it was "
                "made with)"
            ) from exc

    def _connect(self) -> sqlite3.Connection:
        if self._con is None:
            try:
                con = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                                      check_same_thread=False)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA secure_delete=ON")
                con.execute("PRAGMA synchronous=FULL")
                con.execute(
                    "CREATE TABLE IF NOT EXISTS subject_keys (subject TEXT PRIMARY KEY, key BLOB, "
                    "state TEXT NOT NULL, info TEXT NOT NULL)"
                )
            except sqlite3.DatabaseError as exc:
                raise PrivacyError(f"cannot open the key store {str(self.path)!r}: {exc}") from exc
            self._con = con
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def keys_for(self, subjects: Iterable[str], *, create: bool = False) -> dict[str, bytes | None]:
        wanted = list(dict.fromkeys(subjects))
        with self._lock, self._tx(write=create) as con:
            out = self._select(con, wanted)
            missing = [s for s in wanted if s not in out]
            if create and missing:
                now = json.dumps({"created_at": time.time()})
                fresh = {s: _new_key() for s in missing}
                con.executemany("INSERT INTO subject_keys VALUES (?, ?, ?, ?)",
                                [(s, self._wrapped(s, k), "active", now) for s, k in fresh.items()])
                out.update(fresh)
            return out

    def _select(self, con: sqlite3.Connection, subjects: list[str]) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for start in range(0, len(subjects), 500):
            chunk = subjects[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for subject, stored in con.execute(
                    f"SELECT subject, key FROM subject_keys WHERE subject IN ({marks})", chunk):
                out[subject] = self._unwrapped(subject, stored)
        return out

    def _tx(self, *, write: bool) -> Any:
        con = self._connect()
        store = self

        class _Tx:
            def __enter__(self) -> sqlite3.Connection:
                try:
                    con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                except sqlite3.DatabaseError as exc:
                    raise PrivacyError(f"the key store {str(store.path)!r} cannot be used: {exc}") from exc
                return con

            def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
                con.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def state(self, subject: str) -> tuple[SubjectState, dict[str, Any]]:
        with self._lock, self._tx(write=False) as con:
            row = con.execute("SELECT state, info FROM subject_keys WHERE subject = ?", (subject,)).fetchone()
        return ("unknown", {}) if row is None else (row[0], json.loads(row[1]))

    def delete_key(self, subject: str, info: Mapping[str, Any]) -> float:
        with self._lock, self._tx(write=True) as con:
            row = con.execute("SELECT info, state FROM subject_keys WHERE subject = ?", (subject,)).fetchone()
            if row is None:
                raise PrivacyError(f"the key store holds no key for subject {subject!r}")
            if row[1] != "active":  # deleted already (e.g. by a concurrent forget): keep the first time
                return float(json.loads(row[0])["key_deleted_at"])
            when = time.time()
            merged = {**json.loads(row[0]), **info, "key_deleted_at": when}
            con.execute("UPDATE subject_keys SET key = NULL, state = 'shredded', info = ? WHERE subject = ?",
                        (json.dumps(merged), subject))
        self.wipe()
        return when

    def wipe(self) -> bool:
        """Fold the write-ahead log into the database and truncate it, so deleted keys leave every file.

        Returns whether that completed (another process reading the store can hold it back; rerun then).
        """
        with self._lock:
            row = self._connect().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not (row and row[0])

    def mark_forgotten(self, subject: str, info: Mapping[str, Any]) -> None:
        with self._lock, self._tx(write=True) as con:
            row = con.execute("SELECT info FROM subject_keys WHERE subject = ?", (subject,)).fetchone()
            merged = {**json.loads(row[0]), **info}
            con.execute("UPDATE subject_keys SET state = 'forgotten', info = ? WHERE subject = ?",
                        (json.dumps(merged), subject))

    def subjects(self) -> list[tuple[str, SubjectState]]:
        with self._lock, self._tx(write=False) as con:
            return [(s, st) for s, st in con.execute("SELECT subject, state FROM subject_keys ORDER BY subject")]


# -- the cipher ---------------------------------------------------------------------------------
def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _aad(event_id: str, path: str) -> bytes:
    return f"{event_id}\x1f{path}".encode()


def is_envelope(value: object) -> bool:
    """Whether ``value`` is an encrypted field (an envelope object)."""
    return type(value) is dict and value.get(ENVELOPE_KEY) == ALGORITHM


class SubjectCipher:
    """Seals and opens single values with a subject's key (AES-256-GCM)."""

    def __init__(self, key_store: KeyStore) -> None:
        self.key_store = key_store

    @staticmethod
    def seal_with(key: bytes, subject: str, value: Any, event_id: str, path: str,
                  ciphers: dict[str, Any] | None = None) -> dict[str, str]:
        """Encrypt one value with ``key`` (``ciphers`` caches one AES-GCM object per subject)."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead = None if ciphers is None else ciphers.get(subject)
        if aead is None:
            aead = AESGCM(key)
            if ciphers is not None:
                ciphers[subject] = aead
        nonce = os.urandom(12)
        plain = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        sealed = aead.encrypt(nonce, plain, _aad(event_id, path))
        return {ENVELOPE_KEY: ALGORITHM, "sub": subject, "iv": _b64(nonce), "ct": _b64(sealed)}

    def seal_value(self, subject: str, value: Any, event_id: str, path: str) -> dict[str, str]:
        """Encrypt one value for ``subject`` (creating the subject's key if needed)."""
        key = self.key_store.keys_for([subject], create=True)[subject]
        if key is None:
            raise SubjectForgottenError(subject, "its key was deleted, so no new personal data can be stored")
        return self.seal_with(key, subject, value, event_id, path)

    @staticmethod
    def open_value(envelope: Mapping[str, Any], event_id: str, path: str,
                   keys: Mapping[str, bytes | None], ciphers: dict[str, Any] | None = None) -> Any:
        """Decrypt one envelope with ``keys``; :data:`ERASED` when the subject's key was deleted.

        ``ciphers`` caches one AES-GCM object per subject across calls (a frame holds many values).
        """
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        subject = str(envelope.get("sub"))
        if subject not in keys:
            raise PrivacyError(
                f"event {event_id!r}: no key for subject {subject!r} in the key store; was the lake opened "
                "with the key store it was written with?"
            )
        key = keys[subject]
        if key is None:
            return ERASED
        if ciphers is None:
            ciphers = {}
        aead = ciphers.get(subject)
        if aead is None:
            aead = ciphers[subject] = AESGCM(key)
        try:
            plain = aead.decrypt(base64.b64decode(envelope["iv"]), base64.b64decode(envelope["ct"]),
                                        _aad(event_id, path))
        except (InvalidTag, KeyError, ValueError) as exc:
            raise PrivacyError(
                f"event {event_id!r}: the encrypted field {path!r} does not decrypt (edited or moved "
                "ciphertext); run lake.verify() to locate tampering"
            ) from exc
        if plain[:1] == b'"' and b"\\" not in plain:  # a plain string: skip the JSON parser
            return plain[1:-1].decode("utf-8")
        return json.loads(plain)


SEALED_STATE_KEY = "$sealed"


def seal_state(text: str, keys: Mapping[str, bytes], aad: str) -> str:
    """Encrypt a whole derived state (a snapshot) with every subject's key in turn, so that deleting any
    one of the keys makes it unreadable; returns JSON text that names the subjects."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    data, nonces = text.encode("utf-8"), []
    for subject in sorted(keys):
        nonce = os.urandom(12)
        data = AESGCM(keys[subject]).encrypt(nonce, data, aad.encode("utf-8"))
        nonces.append(_b64(nonce))
    return json.dumps({SEALED_STATE_KEY: ALGORITHM, "subs": sorted(keys), "ivs": nonces, "ct": _b64(data)},
                      separators=(",", ":"))


def sealed_subjects(text: str) -> list[str] | None:
    """The subjects a state sealed by :func:`seal_state` needs, or None for a state stored in clear."""
    if not text.startswith('{"' + SEALED_STATE_KEY):
        return None
    return list(json.loads(text)["subs"])


def open_state(text: str, keys: Mapping[str, bytes | None], aad: str) -> str | None:
    """The clear text of a state sealed by :func:`seal_state`; None once a subject's key is gone (or the
    ciphertext does not open), so the caller folds the events instead."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    body = json.loads(text)
    data = base64.b64decode(body["ct"])
    try:
        for subject, nonce in reversed(list(zip(body["subs"], body["ivs"]))):
            key = keys.get(subject)
            if key is None:
                return None
            data = AESGCM(key).decrypt(base64.b64decode(nonce), data, aad.encode("utf-8"))
    except (InvalidTag, ValueError):
        return None
    return data.decode("utf-8")


def walk_envelopes(tree: Any) -> list[tuple[str, dict[str, Any], Any, str]]:
    """``(path, envelope, parent, key)`` for every envelope inside a JSON tree (objects only, like paths)."""
    found: list[tuple[str, dict[str, Any], Any, str]] = []
    stack: list[tuple[str, Any]] = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        if type(node) is not dict:
            continue
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            if type(value) is dict:
                if value.get(ENVELOPE_KEY) == ALGORITHM:
                    found.append((path, value, node, key))
                else:
                    stack.append((path, value))
    return found


# -- the lake's privacy layer -------------------------------------------------------------------
class Privacy:
    """Encrypts declared fields on the way in and decrypts them on the way out, for one lake."""

    def __init__(self, key_store: KeyStore) -> None:
        self.key_store = key_store
        self.cipher = SubjectCipher(key_store)

    # writing
    def encode(self, events: Sequence[Event], stream: str | None = None) -> list[tuple[str, str]]:
        """The (data, metadata) JSON text to store for each event of ``stream``, declared fields encrypted."""
        if not _DECLARED or not any(personal_fields(t, v) for t, v in {(e.event_type, e.schema_version) for e in events}):
            return [(e.data_json, e.metadata_json) for e in events]  # nothing declared personal: stored as made
        return [(self.encrypt_json(e.event_type, e.schema_version, e.event_id, e.data_json,  # type: ignore[arg-type]
                                   stream=stream), e.metadata_json) for e in events]

    def _subject(self, declared: PersonalFields, data: Mapping[str, Any], event_id: str,
                 stream: str | None = None) -> str:
        subject, found = _get_path(data, declared.subject)
        if not found and declared.stream_is_subject and stream is not None:
            subject, found = stream, True
        if not found or not isinstance(subject, str) or not subject:
            raise InvalidArgumentError(
                f"event {event_id!r} ({declared.event_type}) declares its data subject in {declared.subject!r}, "
                f"but data holds {subject!r} there; personal fields need the subject's id as text"
            )
        return check_aggregate_id(subject, "the data subject id")

    def encrypt_json(self, event_type: str, schema_version: int, event_id: str, data_json: str,
                     keys: Mapping[str, bytes | None] | None = None, ciphers: dict[str, Any] | None = None,
                     stream: str | None = None) -> str:
        """Encrypt the declared fields of one payload (JSON text in, JSON text out).

        The payload was validated when it was made, and envelopes are plain text, so the result is
        serialised without validating it again.
        """
        declared = personal_fields(event_type, schema_version)
        if declared is None:
            return data_json
        data = json.loads(data_json)
        subject = self._subject(declared, data, event_id, stream)
        if keys is None:
            keys = self.key_store.keys_for([subject], create=True)
        key = keys.get(subject)
        if key is None:
            raise SubjectForgottenError(subject, "its key was deleted, so no new personal data can be stored")
        changed = False
        for path in declared.fields:
            value, found = _get_path(data, path)
            if found and value is not None and not is_envelope(value):
                _set_path(data, path, self.cipher.seal_with(key, subject, value, event_id, path, ciphers))
                changed = True
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")) if changed else data_json

    def encrypt_table(self, table: pa.Table) -> pa.Table:
        """The bulk-import path: encrypt declared fields in an Arrow table of events (one key lookup)."""
        types = {d.event_type for d in _DECLARED.values()}
        if not types or table.num_rows == 0:
            return table
        frame = pl.from_arrow(table.select(["event_id", "event_type", "schema_version", "data", "aggregate_id"]))
        assert isinstance(frame, pl.DataFrame)
        rows = frame.with_row_index("_row").filter(pl.col("event_type").is_in(sorted(types)))
        todo = [r for r in rows.iter_rows() if personal_fields(r[2], r[3]) is not None]
        if not todo:
            return table
        parsed = [(r, json.loads(r[4])) for r in todo]
        subjects = {self._subject(personal_fields(r[2], r[3]), d, r[1], r[5]) for r, d in parsed}  # type: ignore[arg-type]
        keys = self.key_store.keys_for(sorted(subjects), create=True)
        ciphers: dict[str, Any] = {}
        sealed = [self.encrypt_json(event_type, version, event_id, text, keys, ciphers, stream=stream)
                  for (_, event_id, event_type, version, text, stream), _ in parsed]
        column = pl.from_arrow(table["data"])
        assert isinstance(column, pl.Series)
        column = column.scatter([r[0][0] for r in parsed], pl.Series(sealed, dtype=pl.String))
        index = table.schema.get_field_index("data")
        return table.set_column(index, table.schema.field(index), column.to_arrow().cast(table.schema.field(index).type))

    # reading
    def decrypt_json(self, event_id: str, text: str, keys: Mapping[str, bytes | None],
                     ciphers: dict[str, Any] | None = None) -> str:
        return self._decrypt_tree(event_id, json.loads(text), keys, {} if ciphers is None else ciphers)

    def _decrypt_tree(self, event_id: str, data: Any, keys: Mapping[str, bytes | None],
                      ciphers: dict[str, Any]) -> str:
        for path, envelope, parent, key in walk_envelopes(data):
            parent[key] = self.cipher.open_value(envelope, event_id, path, keys, ciphers)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    def decrypt_frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Decrypt every envelope in ``frame["data"]``; forgotten subjects' fields become :data:`ERASED`."""
        if frame.height == 0 or "data" not in frame.columns:
            return frame
        marker = f'"{ENVELOPE_KEY}":"{ALGORITHM}"'
        hits = frame.select(pl.col("data").str.contains(marker, literal=True).arg_true())["data"]
        if hits.len() == 0:
            return frame
        rows = hits.to_list()
        ids = frame["event_id"].gather(rows).to_list()
        trees = [json.loads(t) for t in frame["data"].gather(rows).to_list()]
        subjects = {env["sub"] for tree in trees for _, env, _, _ in walk_envelopes(tree)}
        keys = self.key_store.keys_for(sorted(subjects))
        ciphers: dict[str, Any] = {}
        data = frame["data"].to_list()
        for row, event_id, tree in zip(rows, ids, trees):
            data[row] = self._decrypt_tree(event_id, tree, keys, ciphers)
        return frame.with_columns(pl.Series("data", data, pl.String))

    @staticmethod
    def subjects_in(texts: Iterable[str]) -> set[str]:
        """The subjects whose envelopes appear in these payloads."""
        found: set[str] = set()
        for text in texts:
            found.update(env["sub"] for _, env, _, _ in walk_envelopes(json.loads(text)))
        return found

    def same_content(self, stored_data: str, event: Event, data: str) -> bool:
        """Whether a stored payload equals a retried event's payload (comparing plaintexts)."""
        if stored_data == data:
            return True
        marker = f'"{ENVELOPE_KEY}":"{ALGORITHM}"'
        if marker not in stored_data:
            return False
        keys = self.key_store.keys_for(sorted(self.subjects_in([stored_data])))
        return self.decrypt_json(event.event_id, stored_data, keys) == event.data_json  # type: ignore[arg-type]
