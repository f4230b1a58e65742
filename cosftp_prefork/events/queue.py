"""What the event queue holds, read from the spool without changing it: for the admin API.

The figures come from the directory alone (batch names carry their event numbers, a batch's
modification time is when it was written) and from the dead-letter file, whose lines a
``QueueReader`` counts as the file grows: reading them takes no lock a worker or the events
process waits for, creates nothing, and costs a listing plus the new bytes of the dead-letter
file, whatever its size. Nothing here sends or loads an HTTP client: the admin child imports
it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

from ..config.hooks import HooksConfig
from ..safefiles import open_fd
from .deadletter import dead_letter_path
from .spool import scan

CHUNK = 1 << 20


@dataclass(frozen=True)
class QueueStatus:
    """The spool at one moment. ``queued``: events waiting for at least one destination;
    ``oldest_queued_seconds``: the age of the oldest of them (None: none waits)."""

    queued: int
    batches: int
    spool_bytes: int
    spool_limit_bytes: int
    oldest_queued_seconds: Optional[float]
    dead_letters: int


class QueueReader:
    """Reads the spool of ``hooks`` again at each ``status()``; keeps only where it stopped
    counting the dead-letter file."""

    def __init__(self, hooks: HooksConfig) -> None:
        self.directory = hooks.spool_dir
        self.limit = hooks.spool_max
        self._dead = (0, 0, 0)  # the file's inode, bytes counted, lines in them

    def status(self, now: Optional[float] = None) -> QueueStatus:
        """The queue now; an empty one if the spool does not exist (yet). Raises
        ``OSError`` if it cannot be read."""
        if not os.path.isdir(self.directory):
            return QueueStatus(0, 0, 0, self.limit, None, 0)
        batches, usage = scan(self.directory)
        oldest = None
        for batch in batches:  # the first still there (the events process deletes them)
            try:
                written = os.lstat(os.path.join(self.directory, batch.name)).st_mtime
            except FileNotFoundError:
                continue
            oldest = max(0.0, (time.time() if now is None else now) - written)
            break
        return QueueStatus(sum(b.last - b.first + 1 for b in batches), usage.batches,
                           usage.bytes, self.limit, oldest, self._dead_letters())

    def _dead_letters(self) -> int:
        """Lines of the dead-letter file: those counted before, plus the new bytes' (the
        file is only appended to; another inode or a shorter file is counted anew)."""
        try:
            fd = open_fd(dead_letter_path(self.directory), os.O_RDONLY)
        except FileNotFoundError:
            self._dead = (0, 0, 0)
            return 0
        try:
            info = os.fstat(fd)
            inode, counted, lines = self._dead
            if inode != info.st_ino or counted > info.st_size:
                counted, lines = 0, 0
            while chunk := os.pread(fd, CHUNK, counted):
                counted += len(chunk)
                lines += chunk.count(b"\n")
        finally:
            os.close(fd)
        self._dead = (info.st_ino, counted, lines)
        return lines
