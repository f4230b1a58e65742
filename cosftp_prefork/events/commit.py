"""Group commit: a worker's events reach the spool's disk in as few syncs as possible.

Each session thread hands its event over and waits until it is on disk (its reply, such as
an upload's 226, must not go out before). The first thread that finds no batch being written
writes one itself (leader), with every event queued by then; the events that arrive while it
writes wait, and the first of their threads to notice the leader done writes the next batch.
With one upload at a time an event costs one batch, written by its own session's thread (no
hand-over to another thread, whose wake-up a busy worker would delay); with many sessions
the syncs per second stay bounded by the disk's sync time, whatever the upload rate, and each
session waits at most for the batch in flight and its own.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from .spool import BatchWriter, SpoolError

log = logging.getLogger(__name__)


class GroupCommit:
    """Writes the events of one worker's threads to the spool, a batch at a time."""

    def __init__(self, writer: BatchWriter) -> None:
        self._writer = writer
        self._changed = threading.Condition()
        self._queue: list[bytes] = []
        self._filling = 1  # the batch now taking events
        self._written = 0  # the last batch that ended (written or failed)
        self._writing = False
        self._failures: dict[int, SpoolError] = {}
        self._shut = False

    def append(self, line: bytes) -> None:
        """Queue ``line`` (a record from ``spool.encode_record``) and return once it is on
        disk; raise ``SpoolError`` if its batch could not be written."""
        with self._changed:
            if self._shut:
                raise SpoolError("the worker is stopping; no more events")
            self._queue.append(line)
            batch = self._filling
            while self._written < batch:
                if self._writing:
                    self._changed.wait()
                else:
                    self._lead()
            failure = self._failures.get(batch)
        if failure is not None:
            raise failure

    def _lead(self) -> None:
        """Write what is queued as the next batch (called holding the condition's lock,
        which is released while writing)."""
        lines, self._queue = self._queue, []
        batch = self._filling
        self._filling += 1
        self._writing = True
        self._changed.release()
        try:
            failure = self._write(lines)
        finally:
            self._changed.acquire()
        self._writing = False
        self._failures.pop(batch - 64, None)  # long since read by its waiters
        if failure is not None:
            self._failures[batch] = failure
        self._written = batch
        self._changed.notify_all()

    def _write(self, lines: list[bytes]) -> Optional[SpoolError]:
        try:
            self._writer.write(lines)
        except SpoolError as exc:
            log.error("%d events not written: %s", len(lines), exc)
            return exc
        except OSError as exc:  # the state file's lock (the batch's own are SpoolError)
            log.error("%d events not written: %s", len(lines), exc)
            return SpoolError(f"cannot write to the event spool: {exc}")
        return None

    def close(self) -> None:
        """Refuse further events (those queued are written by their own threads)."""
        with self._changed:
            self._shut = True
