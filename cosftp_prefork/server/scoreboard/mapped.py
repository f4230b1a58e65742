"""The state file mapped into memory, and its record locks: what every table of it
(``state``, ``sessions``, ``bans``) reads and writes through."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from contextlib import contextmanager


class MappedFile:
    """The mapping of one state file, shared by the processes that opened it."""

    def __init__(self, path: str, fd: int, mapping: mmap.mmap) -> None:
        self.path = path
        self._fd = fd
        self._map = mapping
        self._thread_lock = threading.Lock()

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    @contextmanager
    def _locked(self, start: int, end: int, wait: bool = True):
        """Lock bytes ``start:end`` of the file (threads and processes); yield them as
        uint32s. Without ``wait``, raise ``BlockingIOError`` at once if they are held."""
        if not self._thread_lock.acquire(blocking=wait):
            raise BlockingIOError("the state file is held by another thread")
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB,
                        end - start, start)
        except OSError as exc:
            self._thread_lock.release()
            if not wait and exc.errno in (errno.EACCES, errno.EAGAIN):  # lockf(3) says either
                raise BlockingIOError("the state file is held by another process") from exc
            raise
        try:
            whole = memoryview(self._map)
            rows = whole[start:end].cast("I")
            try:
                yield rows
            finally:
                rows.release()
                whole.release()
                fcntl.lockf(self._fd, fcntl.LOCK_UN, end - start, start)
        finally:
            self._thread_lock.release()


def clip(text: str, size: int) -> bytes:
    """``text`` as UTF-8 in at most ``size`` bytes, cut on a character boundary."""
    return text.encode("utf-8", "replace")[:size].decode("utf-8", "ignore").encode("utf-8")


def unclip(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")
