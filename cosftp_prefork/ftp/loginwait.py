"""Commands a client sends ahead of a failed login's answer wait for that answer.

A failed login is answered late (``delay_failed_login``; after the auth hook's timeout too):
pyftpdlib's delayed 530 and ``ftp.loginfailures``' ``_answer_login_later`` take the
connection off the event loop (``del_channel``) and answer from a timer. That stops reading
the socket, not running the lines already read: asynchat's ``handle_read`` goes on handing
over every line of the read that brought the PASS. A client that pipelined ``USER / PASS
wrong / USER / PASS / PWD / QUIT`` had its next password checked during the delay and got
``331 331 230 257 221``, the QUIT's 221 before the 530, which then was never sent. RFC 959
answers commands in the order they came; vsftpd sleeps and reads nothing meanwhile.

Here the bytes of that read not yet run are set aside when the answer is put off, and run
once it was sent, as if just read; they are dropped if the answer closed the session (the
last try, a ban's 421, the auth hook's 421). They are what one read brought, no more
(``ftp.backpressure``: 4 KiB in clear, one TLS record of 16 KiB at most), as nothing is read
while the answer waits: what a client sends beyond waits in the kernel, and is read a read at
a time once the answer was sent, as any pipelined commands are. (A bound of their own, 64 KiB,
was never reached: 192 KiB of NOOPs sent ahead had 4,066 bytes held in clear, 16,354 over
TLS; it was dropped with its 421.)

A kick (``ftp.admission``: ``login_timeout``, a ban, the admin API) wins over the wait: the
session gets the kick's 421 and closes at once, its thread ends, and nothing it sent ahead
runs. While the answer waits, the connection stays in its loop's map asking for no event
(``compat.rest``): the session thread waits in ``poll``, and the kick (from the worker's main
thread) asks for reading, which wakes it on the end of file the kick made. Taken off the loop,
the thread slept in pyftpdlib's loop a second at a time, saw the kick only through a check
made once a second, and outlived the closed session until the answer's timer fired (up to
``delay_failed_login``): a crowd kicked while its 530s waited (hundreds of hostile sessions
and their ban) kept a thread each for nothing. Closing cancels the answer's timer, the
loop's last task. The kick of a session whose answer closes it anyway (it earned a ban) waits
for the answer: its client must read the 530, then the ban's 421.
"""

from __future__ import annotations

from typing import Any

from . import compat, scheduled


class HeldCommands:
    """Mixin for the control handler, after ``Admission`` (its ``kicked`` and
    ``obey_kick``, and its ``_kick``, which calls ``kick_arrived``): see the module
    docstring."""

    _held = b""  # sent after the PASS whose answer waits
    _answer: Any = None  # the timer of the answer that waits (pyftpdlib's _CallLater)
    _resting = False  # while the answer waits: in the loop, asking for no event

    def hold_commands(self, answer: Any) -> None:
        """The answer to the command being run (a PASS) was put off, on the timer
        ``answer``, and the connection taken off its loop (``del_channel``): set aside what
        the client sent after the command until ``run_held_commands``, and wait for the
        answer or a kick (``kick_arrived``), whichever comes first."""
        self._held = compat.take_unread_input(self)
        self._answer = answer
        compat.rest(self)
        self._resting = True
        if self.kicked:  # before the answer was put off: this thread had not seen it
            self.kick_arrived()

    def kick_arrived(self) -> None:
        """Called by ``Admission._kick`` (from the worker's main thread) once the kick shut
        the read side of the socket: a session whose answer waits is woken to read that end
        of file, and obeys the kick (``Admission.handle_read``), unless the answer closes
        the session itself."""
        if self._resting and not self.closes_after_answer():
            compat.wake_to_read(self)

    def closes_after_answer(self) -> bool:
        """True if the answer that waits closes the session itself: then a kick does not
        take its place (the session that earned a ban is a pending session of a banned
        address, and the gate kicks those: its client must still read its 530, then the
        ban's 421). Overridden by the control handler."""
        return False

    def add_channel(self, *args: Any, **kwargs: Any) -> None:
        """Back on the loop for good: the answer is being sent (its timer fired)."""
        if self._resting:
            self._resting, self._answer = False, None
            compat.unrest(self)
        super().add_channel(*args, **kwargs)

    def run_held_commands(self) -> None:
        """The login's answer was sent: run the commands set aside, in order, unless the
        session is closing or was kicked (they are dropped; a kick's 421 is sent)."""
        held, self._held = self._held, b""
        if compat.is_closed(self) or compat.is_closing(self) or self.obey_kick():
            return
        if held:
            compat.run_input(self, held)

    def close(self) -> None:
        """Also cancel the answer that waits: the loop's last task, which would keep the
        session's thread until it fired."""
        answer, self._answer = self._answer, None
        self._resting = False
        scheduled.cancel(answer)
        super().close()
