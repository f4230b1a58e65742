"""The master's helper processes (not workers): the metrics exporter, the admin API and the
events process.

Each is forked by the master with signals held, started again if it dies (after a back-off
that grows while it keeps dying young) and stopped with the master. ``SupervisedChild`` is
that bookkeeping, one for all of them; a subclass says what the child does (``serve``, run
in the forked process). A child that serves a socket the master bound (``sock``: a port in
use is refused at start, and the port outlives a restart of the child) may be replaced at
once (``retire``: the old one finishes its requests meanwhile); the events process is
replaced only once the old one has exited (``replace``): never two on the spool.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from typing import Optional

from ..config.model import Config

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
YOUNG_SECONDS = 5.0  # a child that dies younger than this is restarted ever more slowly
STOP_TIMEOUT = 5.0


class SupervisedChild:
    """The master's view of one helper process: its socket (if it serves one), its pid,
    its restarts, and the pids of those it replaced that are still finishing their
    requests."""

    name = "child"  # for the log
    title = "cosftp: child"  # the process title (the config path follows)
    log_name = "child"  # how its log lines name the process

    def __init__(self, sock: Optional[socket.socket] = None) -> None:
        self.sock = sock
        self.pid: Optional[int] = None
        self.retiring: set[int] = set()
        self._failures = 0
        self._started = self._next_start = 0.0
        self._replacing = False

    def due(self) -> bool:
        """True if none runs and the back-off after the last one's death is over."""
        return self.pid is None and time.monotonic() >= self._next_start

    def started(self, pid: int) -> None:
        self.pid = pid
        self._started = time.monotonic()
        log.info("started %s (pid %d)", self.name, pid)

    def not_started(self, exc: OSError, retry: float) -> None:
        """Its fork failed (``exc``): try again in ``retry`` seconds."""
        self._next_start = time.monotonic() + retry
        log.error("cannot start %s: %s; trying again in %.0fs", self.name, exc, retry)

    def reaped(self, pid: int, how: str) -> bool:
        """Note that ``pid`` exited; True if it was this child (started again later: at
        once if it was being replaced, after the back-off if it died)."""
        if pid in self.retiring:
            self.retiring.discard(pid)
            log.info("%s (pid %d) replaced: exited (%s)", self.name, pid, how)
            return True
        if pid != self.pid:
            return False
        self.pid = None
        if self._replacing:
            self._replacing, self._failures, self._next_start = False, 0, 0.0
            log.info("%s (pid %d) exited (%s); starting its replacement", self.name, pid, how)
            return True
        lived = time.monotonic() - self._started
        self._failures = self._failures + 1 if lived < YOUNG_SECONDS else 1
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

    def replace(self) -> None:
        """TERM the running child; a new one (with the master's config of then) follows
        only once it is reaped."""
        if self.pid is not None and not self._replacing:
            self._replacing = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def signal(self, signum: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

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

    def close(self) -> None:
        """Close the socket it serves, if any (the master's copy, or a sibling's copy in
        another child)."""
        if self.sock is not None:
            self.sock.close()

    def serve(self, config: Config, master_pid: int) -> int:
        """In the forked child: do the work until TERM or the master is gone; return the
        exit status."""
        raise NotImplementedError


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
