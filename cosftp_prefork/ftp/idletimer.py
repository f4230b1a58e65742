"""The idle timer of a session (``idle_session_timeout``) runs on the session's own thread,
and counts the time the session waits for a command.

pyftpdlib starts it in ``FTPHandler.__init__``, which ``ThreadedFTPServer`` runs in the
worker's main thread, on the main thread's event loop; only then does it give the session a
thread and an event loop of its own. Left there, the timer fired in the main thread: it sent
its ``421`` and closed the session (its transfers, its filesystem, its place in the limits)
while the session's thread was still running a command, which then answered on a closed
connection; and each command's reset moved a timer in the main loop's heap from the
session's thread. Here it is stopped at accept and started again on the session's loop, so
it fires only between commands, in the thread that runs them.

pyftpdlib counts the idle time from the start of the last command: a command that ran longer
than the timeout (COS slow to answer a look-up, a checksum of a large file) had its session
closed as soon as it answered. It is counted again from the command's end.
"""

from __future__ import annotations

from . import compat


class SessionIdleTimer:
    """Mixin for the control handler, right above pyftpdlib's ``FTPHandler`` (its
    ``found_terminator`` runs the command): see the module docstring."""

    _idle_timer_moves = False  # from accept until the session's thread registers it

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # in the thread that accepted, whose loop the timer was just started on
        self._idle_timer_moves = compat.stop_idle_timer(self)

    def add_channel(self, *args, **kwargs) -> None:
        super().add_channel(*args, **kwargs)
        if self._idle_timer_moves and self.ioloop is not self.server.ioloop:
            self._idle_timer_moves = False
            compat.start_idle_timer(self)

    def found_terminator(self) -> None:
        super().found_terminator()
        compat.restart_idle_timer(self)
