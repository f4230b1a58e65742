"""A worker's main loop woken by a signal at once, not at its next tick.

The worker's main thread waits in its IO loop's ``poll`` (the accept loop) up to a second at
a time, and a signal does not end that wait: Python retries a ``poll`` its handler
interrupted (PEP 475). ``WakeUp`` has the interpreter write each signal's number into a pipe
(``signal.set_wakeup_fd``) whose read end the loop watches: the ``poll`` returns as soon as
a signal came, whichever thread the kernel gave it to.

``KICK_SIGNAL`` is how the admin API tells a worker that a kick or a ban waits for it in
the shared state (``admin.sessions``, ``admin.bans``): SIGURG, whose default action is to
ignore it, so that one reaching a worker before it installed its handler, or another
process that took a dead worker's pid, does nothing. One pipe per worker, whatever the
number of sessions; the shared state stays the request (a worker that missed the signal
finds it at its tick).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

log = logging.getLogger(__name__)

KICK_SIGNAL = signal.SIGURG


def wake_worker(pid: int) -> bool:
    """Send ``KICK_SIGNAL`` to the worker ``pid``; False if it could not be sent (gone)."""
    try:
        os.kill(pid, KICK_SIGNAL)
    except OSError:
        return False
    return True


class WakeUp:
    """The pipe the interpreter writes signal numbers into, watched by an IO loop: the
    numbers read since ``take`` last looked are kept."""

    def __init__(self, ioloop) -> None:
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        self._seen: set[int] = set()
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        # A handler of its own (it does nothing) is what has the interpreter catch the
        # signal and write it to the pipe.
        signal.signal(KICK_SIGNAL, lambda _signum, _frame: None)
        self._ioloop = ioloop
        ioloop.register(self._read, self, ioloop.READ)

    def take(self, signum: int) -> bool:
        """True if ``signum`` came since the last ``take`` of it."""
        if signum in self._seen:
            self._seen.discard(signum)
            return True
        return False

    # --- what pyftpdlib's IO loop calls

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self._read, 4096):
                self._seen.update(data)

    def handle_error(self) -> None:
        log.exception("reading the wake-up pipe failed")

    def handle_close(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop writing signals to the pipe, and close it."""
        signal.set_wakeup_fd(-1)
        self._ioloop.unregister(self._read)
        os.close(self._read)
        os.close(self._write)
