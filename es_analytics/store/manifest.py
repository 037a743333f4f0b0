"""The manifest: which sealed files exist and up to which position they hold, replaced atomically.

A reader's snapshot is the manifest's files plus the hot rows above ``sealed_position``. The manifest is
written to a temporary name, fsynced, renamed over the old one, and the folder is fsynced, so a crash
leaves either the old or the new manifest, never a mix.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import LakeCorruptError

__all__ = ["FileEntry", "Manifest", "fsync_dir", "manifest_exists", "publish_no_replace", "read_manifest", "write_manifest"]

MANIFEST_NAME = "manifest.json"
FORMAT = 1


@dataclass(frozen=True)
class FileEntry:
    """One sealed Parquet file, by its path relative to the lake folder."""

    path: str
    aggregate_type: str
    rows: int
    bytes: int
    min_position: int
    max_position: int
    level: int = 0


@dataclass(frozen=True)
class Manifest:
    """The sealed tier's table of contents at one generation."""

    generation: int = 0
    sealed_position: int = 0
    last_recorded_at: int = 0
    files: tuple[FileEntry, ...] = ()
    # Files compaction replaced: (path, when, generation), the generation being the first that does not
    # list them; they are deleted once no reader holds an older generation (see pins.py).
    retired: tuple[tuple[str, float, int], ...] = ()
    # Files this generation dropped from ``retired``: deleted right after it was published, and on the
    # next open if a crash came first. No other unlisted file is ever deleted as garbage (see recovery).
    deleting: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def next(self, **changes: Any) -> Manifest:
        """The manifest of the following generation, with ``changes`` applied."""
        return replace(self, generation=self.generation + 1, **changes)

    def to_json(self) -> str:
        body = {
            "format": FORMAT,
            "generation": self.generation,
            "sealed_position": self.sealed_position,
            "last_recorded_at": self.last_recorded_at,
            "files": [asdict(f) for f in self.files],
            "retired": [list(r) for r in self.retired],
            "deleting": list(self.deleting),
            "extra": self.extra,
        }
        return json.dumps(body, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        body = json.loads(text)
        if body.get("format") != FORMAT:
            raise LakeCorruptError(f"manifest format {body.get('format')!r} is not {FORMAT}")
        return cls(
            generation=int(body["generation"]),
            sealed_position=int(body["sealed_position"]),
            last_recorded_at=int(body.get("last_recorded_at", 0)),
            files=tuple(FileEntry(**f) for f in body["files"]),
            retired=tuple((str(r[0]), float(r[1]), int(r[2]) if len(r) > 2 else 0) for r in body.get("retired", [])),
            deleting=tuple(str(p) for p in body.get("deleting", [])),
            extra=dict(body.get("extra", {})),
        )


def manifest_exists(folder: Path) -> bool:
    return (folder / MANIFEST_NAME).exists()


def read_manifest(folder: Path) -> Manifest:
    """The current manifest of the lake in ``folder`` (an empty one if none was written yet)."""
    path = folder / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Manifest()
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise LakeCorruptError(f"the manifest {str(path)!r} cannot be read: {exc}") from exc


def fsync_dir(folder: Path) -> None:
    """Make renames and new names inside ``folder`` durable (Windows makes them durable on its own and
    cannot open a folder as a file)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (a temporary name) and fsync it."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Atomically replace the manifest. Callers hold the seal lock, so there is one writer."""
    tmp = folder / f".{MANIFEST_NAME}.{uuid.uuid4().hex}.tmp"
    write_durably(tmp, manifest.to_json().encode("utf-8"))
    os.replace(tmp, folder / MANIFEST_NAME)
    fsync_dir(folder)


def publish_no_replace(tmp: Path, final: Path) -> None:
    """Give a finished temporary file its final name, failing if that name exists (no silent overwrite)."""
    os.link(tmp, final)  # raises FileExistsError instead of replacing
    os.unlink(tmp)
    fsync_dir(final.parent)
