"""File locks across processes, through ``portalocker`` (``flock`` on POSIX, ``LockFileEx`` on Windows).

- :func:`exclusive` — one holder at a time of a lock file (sealing, a checkpoint or projection build);
- :class:`SharedLock` — many holders at once (readers' pins), and :func:`unheld` to learn that none
  holds one.

A lock belongs to an open file, so two handles of one process exclude each other like two processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import portalocker

__all__ = ["SharedLock", "exclusive", "unheld"]

_EXCLUSIVE = portalocker.LockFlags.EXCLUSIVE
_SHARED = portalocker.LockFlags.SHARED
_NOW = portalocker.LockFlags.NON_BLOCKING


@contextmanager
def exclusive(path: Path, *, wait: bool = True, timeout: float | None = None) -> Iterator[bool]:
    """Hold the lock file ``path`` alone. Yields True once held; with ``wait=False`` yields False at once
    if another holder has it; with ``timeout`` raises ``TimeoutError`` after that many seconds."""
    handle = open(path, "a+b")
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                portalocker.lock(handle, _EXCLUSIVE | _NOW)
                break
            except portalocker.exceptions.LockException:
                if not wait:
                    yield False
                    return
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{str(path)!r} has been locked for {timeout:.0f} s") from None
                time.sleep(0.01)
        try:
            yield True
        finally:
            portalocker.unlock(handle)
    finally:
        handle.close()


class SharedLock:
    """A shared lock on one file, held until :meth:`release` (or the process ends)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = open(path, "a+b")
        try:
            portalocker.lock(self._handle, _SHARED)
        except BaseException:
            self._handle.close()
            raise

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases its lock
            self._handle = None


def unheld(path: Path) -> bool:
    """Whether nobody holds a lock on ``path``; if so the file is deleted (it may not exist afterwards).
    A file another holder still has open cannot be deleted on some systems: it is then left for later."""
    try:
        handle = open(path, "r+b")
    except FileNotFoundError:
        return True
    try:
        try:
            portalocker.lock(handle, _EXCLUSIVE | _NOW)
        except portalocker.exceptions.LockException:
            return False
        try:
            os.unlink(path)
        except OSError:  # Windows refuses to delete an open file; an empty pin file is harmless
            pass
        return True
    finally:
        handle.close()
