"""Signals across fork: a child of the master must never run the master's handlers.

Between ``fork()`` and the moment a child has installed its own handlers (a worker first
imports its whole stack: pyftpdlib, the COS SDK, OpenSSL) a signal would run the master's
handler in the child, which only queues it in the child's copy of the master: a SIGTERM sent
then is lost, and the worker serves on until the master gives up waiting and kills it. So the
master forks with these signals blocked, and the child unblocks them once its handlers are in
place: whatever arrived meanwhile is delivered to them then.
"""

from __future__ import annotations

import os
import signal

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
