"""The master's signals: queued by their handlers and taken by its loop (``SignalQueue``),
and held across fork: a child of the master must never run the master's handlers.

Between ``fork()`` and the moment a child has installed its own handlers (a worker first
imports its whole stack: pyftpdlib, the COS SDK, OpenSSL) a signal would run the master's
handler in the child, which only queues it in the child's copy of the master: a SIGTERM sent
then is lost, and the worker serves on until the master gives up waiting and kills it. So the
master forks with these signals blocked, and the child unblocks them once its handlers are in
place: whatever arrived meanwhile is delivered to them then.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections import deque
from collections.abc import Iterable
from typing import Optional

HELD = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
                  signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD})


def fork_holding_signals() -> int:
    """``os.fork()`` with ``HELD`` blocked; the parent's mask is restored at once, the child
    keeps them blocked until it calls ``release_signals``. Returns ``fork``'s result."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        raise
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return pid


def release_signals() -> None:
    """In a child, once its own handlers are installed: deliver what was held."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)


class SignalQueue:
    """The master's signals, as gunicorn's arbiter takes them: a handler only queues the
    signal and wakes ``wait`` through a pipe (``signal.set_wakeup_fd``), and the loop
    handles it where it is safe to (never inside whatever the signal interrupted)."""

    def __init__(self) -> None:
        self._queue: deque[int] = deque()
        self._wake_r, self._wake_w = os.pipe()

    def install(self, signums: Iterable[int]) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w)
        for signum in signums:
            signal.signal(signum, self._queue_signal)

    def _queue_signal(self, signum: int, frame) -> None:
        self._queue.append(signum)

    def wait(self, timeout: float) -> Optional[int]:
        """The next signal queued, waiting at most ``timeout`` seconds for one; None if
        none came."""
        if not self._queue:
            with contextlib.suppress(InterruptedError):
                select.select([self._wake_r], [], [], timeout)
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        return self._queue.popleft() if self._queue else None

    def close(self) -> None:
        """In a child just forked: drop the master's wake-up pipe."""
        signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)
