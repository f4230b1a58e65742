"""Commands a client sends ahead of a failed login's answer wait for that answer.

A failed login is answered late (``delay_failed_login``; after the auth hook's timeout too):
pyftpdlib's delayed 530 and ``CosFTPHandler._answer_login_later`` take the connection off the
event loop (``del_channel``) and answer from a timer. That stops reading the socket, not
running the lines already read: asynchat's ``handle_read`` goes on handing over every line
of the read that brought the PASS. A client that pipelined ``USER / PASS wrong / USER / PASS
/ PWD / QUIT`` had its next password checked during the delay and got ``331 331 230 257
221``, the QUIT's 221 before the 530, which then was never sent. RFC 959 answers commands in
the order they came; vsftpd sleeps and reads nothing meanwhile.

Here the bytes of that read not yet run are set aside when the answer is put off, and run
once it was sent, as if just read; they are dropped if the answer closed the session (the
last try, a ban's 421, the auth hook's 421). They are what one read brought, no more
(``ftp.backpressure``: 4 KiB in clear, one TLS record of 16 KiB at most), as nothing is read
while the answer waits: what a client sends beyond waits in the kernel, and is read a read at
a time once the answer was sent, as any pipelined commands are. (A bound of their own, 64 KiB,
was never reached: 192 KiB of NOOPs sent ahead had 4,066 bytes held in clear, 16,354 over
TLS; it was dropped with its 421.)

A kick (``ftp.admission``: ``login_timeout``, a ban, the admin API) wins over the wait: the
session gets the kick's 421 and closes within ``KICK_CHECK_INTERVAL``, and nothing it sent
ahead runs. Off the event loop, the session does not see the end of file a kick makes; the
kick was seen only after the answer, once the commands sent ahead had run: a password among
them went to the password checks (and, its deadline not past, was checked and its failure
counted towards a ban), and a QUIT among them answered 221 with the kick's 421 never sent.
"""

from __future__ import annotations

from . import compat
from .backpressure import KICK_CHECK_INTERVAL


class HeldCommands:
    """Mixin for the control handler, after ``Admission`` (its ``kicked`` and
    ``obey_kick``): see the module docstring."""

    _held = b""  # sent after the PASS whose answer waits
    _kick_watch = None  # while the answer waits

    def hold_commands(self) -> None:
        """Set aside what the client sent after the command being run (a PASS whose answer
        was just put off), until ``run_held_commands``; look for a kick meanwhile."""
        self._held = compat.take_unread_input(self)
        if self._kick_watch is None:
            self._kick_watch = self.ioloop.call_every(KICK_CHECK_INTERVAL, self._watch_kick,
                                                      _errback=self.handle_error)

    def _watch_kick(self) -> None:
        """While the answer waits: a kicked session is put back on its event loop, then
        answered 421 and closed (``obey_kick``). Off the loop, a 421 the socket could not
        take at once (a client that reads no replies) would have its send asked of a loop
        that no longer knows the connection: an error, not the reply."""
        if self.kicked and not self.closes_after_answer():
            self.add_channel()
            self.obey_kick()

    def closes_after_answer(self) -> bool:
        """True if the answer that waits closes the session itself: then a kick does not
        take its place (the session that earned a ban is a pending session of a banned
        address, and the gate kicks those: its client must still read its 530, then the
        ban's 421). Overridden by the control handler."""
        return False

    def run_held_commands(self) -> None:
        """The login's answer was sent: run the commands set aside, in order, unless the
        session is closing or was kicked (they are dropped; a kick's 421 is sent)."""
        self._stop_kick_watch()
        held, self._held = self._held, b""
        if compat.is_closed(self) or compat.is_closing(self) or self.obey_kick():
            return
        if held:
            compat.run_input(self, held)

    def _stop_kick_watch(self) -> None:
        watch, self._kick_watch = self._kick_watch, None
        if watch is not None and not watch.cancelled:
            watch.cancel()

    def close(self) -> None:
        self._stop_kick_watch()
        super().close()
