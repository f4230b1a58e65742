"""The master's helper processes besides the workers (the metrics exporter, the admin API):
each serves a socket the master bound (a port in use is refused at start, and the port
outlives a restart of the child), is forked like a worker, and is started again, after a
back-off, if it dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from typing import Optional

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
STOP_TIMEOUT = 5.0
FAST_FAILURE_SECONDS = 5.0


class ChildProcess:
    """The master's view of one helper process: its socket, its pid, its restarts, and the
    pids of those it replaced that are still finishing their requests."""

    def __init__(self, name: str, sock: socket.socket) -> None:
        self.name, self.sock = name, sock
        self.pid: Optional[int] = None
        self.retiring: set[int] = set()
        self._failures = 0
        self._started = self._next_start = 0.0

    def due(self) -> bool:
        """True if none runs and the back-off after the last one's death is over."""
        return self.pid is None and time.monotonic() >= self._next_start

    def started(self, pid: int) -> None:
        self.pid = pid
        self._started = time.monotonic()
        log.info("started %s (pid %d)", self.name, pid)

    def reaped(self, pid: int, how: str) -> bool:
        """Note that ``pid`` exited; True if it was this child (started again later, unless
        it was one being replaced)."""
        if pid in self.retiring:
            self.retiring.discard(pid)
            log.info("%s (pid %d) replaced: exited (%s)", self.name, pid, how)
            return True
        if pid != self.pid:
            return False
        self.pid = None
        lived = time.monotonic() - self._started
        self._failures = self._failures + 1 if lived < FAST_FAILURE_SECONDS else 1
        delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** self._failures)
        self._next_start = time.monotonic() + delay
        log.error("%s (pid %d) exited (%s); restarting in %.1fs", self.name, pid, how, delay)
        return True

    def retire(self) -> None:
        """Have the running child replaced at once (it knows an old configuration): TERM it
        (it stops accepting and finishes the requests in flight) without waiting for it."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        self.retiring.add(self.pid)
        self.pid, self._next_start = None, 0.0

    def stop(self) -> None:
        """TERM the child and any being replaced, and wait for them (KILL after
        ``STOP_TIMEOUT``)."""
        pids = self.retiring | ({self.pid} if self.pid is not None else set())
        self.pid, self.retiring = None, set()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for pid in pids:
            _wait(pid, deadline)


def _wait(pid: int, deadline: float) -> None:
    """Reap ``pid``, SIGKILLing it once ``deadline`` passed."""
    try:
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.05)
    except (ChildProcessError, ProcessLookupError):
        pass  # already reaped
