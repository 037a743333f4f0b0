"""Readers' pins: which manifest generations some reader may still be reading files of, across processes.

A reader holds a shared lock (:mod:`.locks`) on ``pins/<generation>.pin`` while it reads the files that generation
lists (a handle holds one for the snapshot its DuckDB view shows; ``verify`` for its scan). Compaction
retires files in generation ``r`` (the first that does not list them); they are deleted once no pin of a
generation below ``r`` is held. A reader pins the generation it read and then reads the manifest again: if
it moved on meanwhile, the reader pins the new one instead. So a reader that pins a generation after the
deleter found it free also sees that the generation is no longer current, and never uses its files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .locks import SharedLock, unheld

__all__ = ["PINS_DIR", "ReaderPins"]

PINS_DIR = "pins"
_NAME = re.compile(r"(\d+)\.pin")


class ReaderPins:
    """The pins of one lake folder, and the one pin a lake handle holds for its current snapshot."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / PINS_DIR
        self.generation: int | None = None
        self._held: SharedLock | None = None

    def _lock(self, generation: int) -> SharedLock:
        self.folder.mkdir(exist_ok=True)
        return SharedLock(self.folder / f"{generation}.pin")

    def hold(self, generation: int) -> None:
        """Make ``generation`` the one this handle holds (releasing the one it held before)."""
        if generation == self.generation:
            return
        held = self._lock(generation)
        self.release()
        self._held, self.generation = held, generation

    def release(self) -> None:
        if self._held is not None:
            self._held.release()
        self._held, self.generation = None, None

    @contextmanager
    def pinned(self, generation: int) -> Iterator[None]:
        """Hold ``generation`` for the duration of a block (independently of :meth:`hold`)."""
        held = self._lock(generation)
        try:
            yield
        finally:
            held.release()

    def free_below(self, generation: int) -> bool:
        """Whether no reader (of any process, this one included) holds a generation below ``generation``.
        Free pin files below it are deleted on the way."""
        if not self.folder.exists():
            return True
        free = True
        for path in self.folder.iterdir():
            match = _NAME.fullmatch(path.name)
            if match is not None and int(match.group(1)) < generation and not unheld(path):
                free = False
        return free
