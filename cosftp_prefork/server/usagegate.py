"""The usage table's gate (``server.usage``): the changes of a cluster node's reservations
go on side by side, each across its two steps (the table's rows and Redis), and a rewrite
of what the rows hold (``server.quotashare``) gets its turn between them, soon, under a
steady crowd of them.

Two bytes of the table's file carry record locks (``fcntl.lockf``: the kernel's, given back
when their process dies):

* the *gate*: held shared by each process while any of its changes is between its steps,
  exclusive by a rewrite;
* the *turnstile*: passed (taken shared, then given back) by each change before it takes its
  share of the gate, and held exclusive by a rewrite from before it waits for the gate until
  it is done. Linux grants a shared lock beside a waiting exclusive one, so a rewrite waiting
  for the gate alone would wait for a moment when no change of any process is under way,
  which a steady crowd never gives (measured: 4 rewrites in 12 s, one a second when idle);
  with the turnstile held, changes that start meanwhile wait and those under way end.

The kernel counts one lock a process and checks every wait against a cycle of processes
(EDEADLK), whichever threads hold and wait: a process must never wait for the turnstile while
it holds a share of the gate or the table's lock (a rewrite waiting for the gate held by a
change that waits for the table's lock would close one, although that wait ends). So a
change that finds the turnstile taken while its process holds the gate lets its process's
changes end first (the rewrite waits for them anyway), and waits for the turnstile holding
its process's thread lock of the table (no other thread of it takes the table's lock then);
a rewrite drains its own process's changes, takes that thread lock, then the turnstile, the
gate, and the table's lock last. A change waits at most for the changes under way when the
rewrite came, and the rewrite's own Redis call (``redis_timeout`` if Redis hangs).
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager

GATE = (1, 1)  # (length, start) of the gate's byte in the file
TURNSTILE = (1, 2)


def lock_record(fd: int, kind: int, region: tuple[int, int], wait: bool = True) -> bool:
    """Take the record lock ``kind`` over ``region`` of the file ``fd`` (True); without
    ``wait``, nothing (False) if another process holds it now."""
    try:
        fcntl.lockf(fd, kind | (0 if wait else fcntl.LOCK_NB), *region)
    except OSError:  # without wait: EAGAIN or EACCES, another process holds it
        if wait:
            raise
        return False
    return True


class ChangeGate:
    """The gate and turnstile of the table open as ``fd``, for the threads of this process;
    ``table_lock`` is the table's thread lock (taken before its record lock)."""

    def __init__(self, fd: int, table_lock: threading.Lock) -> None:
        self._fd, self._table_lock = fd, table_lock
        # One thread of this process goes through the turnstile at a time, and none while
        # this process rewrites: only those threads take this process's share of the gate.
        self._entry = threading.Lock()
        self._state = threading.Condition()  # guards _changes; notified as they end
        self._changes = 0  # this process's changes between their two steps

    def _lock(self, kind: int, region: tuple[int, int], wait: bool = True) -> bool:
        return lock_record(self._fd, kind, region, wait)

    def _drained(self) -> None:
        """Wait until no change of this process is between its steps (it holds no share of
        the gate then)."""
        with self._state:
            while self._changes:
                self._state.wait()

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Hold a share of the gate across a change's two steps; pass the turnstile first
        (wait while a rewrite holds it)."""
        with self._entry:
            with self._state:
                sharing = self._changes > 0
            if sharing and not self._lock(fcntl.LOCK_SH, TURNSTILE, wait=False):
                self._drained()  # a rewrite waits for this process's changes: let them end
                sharing = False
            if not sharing:
                with self._table_lock:  # no table lock of this process while it waits
                    self._lock(fcntl.LOCK_SH, TURNSTILE)
            with self._state:
                if not self._changes:  # never waits: a rewrite holds both or neither
                    self._lock(fcntl.LOCK_SH, GATE)
                self._changes += 1
            fcntl.lockf(self._fd, fcntl.LOCK_UN, *TURNSTILE)
        try:
            yield
        finally:
            with self._state:
                self._changes -= 1
                if not self._changes:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN, *GATE)
                    self._state.notify_all()

    @contextmanager
    def rewriting(self) -> Iterator[None]:
        """Hold the turnstile and the gate exclusive, and the table's thread lock (the
        caller takes the table's record lock within): no change of any process is between
        its steps, none starts. Waits for those under way."""
        with self._entry:
            self._drained()
            with self._table_lock:
                self._lock(fcntl.LOCK_EX, TURNSTILE)
                try:
                    self._lock(fcntl.LOCK_EX, GATE)
                    try:
                        yield
                    finally:
                        fcntl.lockf(self._fd, fcntl.LOCK_UN, *GATE)
                finally:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN, *TURNSTILE)
