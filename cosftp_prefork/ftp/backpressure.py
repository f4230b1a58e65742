"""A client that sends commands and reads no replies: what it makes the worker queue is bounded.

pyftpdlib reads a control connection whenever it is readable, replies to every command it
finds, and queues in the worker whatever reply the kernel's socket buffer cannot take. A
client that pipelines ``HELP`` (437 bytes answered to 6 sent, before any login) and never
reads grew a worker by about 5 MiB a second for as long as it was connected; a logged-in
one, whose commands keep resetting its idle timer, for good.

Here the session stops reading its control connection while ``MAX_QUEUED_REPLIES``
replies wait in the worker, and reads again once the client took them. One read brings at
most ``PLAIN_READ_SIZE`` bytes of commands in clear (a TLS read brings one record, 16 KiB
at most), so the replies of one read are bounded too. A session that closes with replies
unread (its idle timeout's ``421`` among them) is closed ``CLOSE_GRACE`` seconds later
whether they were sent or not: pyftpdlib's ``close_when_done`` waits for the client.

A paused session asks its loop for no read event, and a kick (``ftp.admission``: a ban, a
``login_timeout``, the admin API) arrives as one, the end of file of the read side it shut:
``kick_arrived`` (called by ``Admission._kick``, from the worker's main thread) has the loop
ask for reading again (``compat.wake_to_read``), which wakes the session's thread at once, and
``Admission.handle_read`` obeys the kick (this mixin comes after it). Before, a paused session
looked for a kick once a second (a timer on its loop): the kicked session, its socket and its
thread lasted up to a second more.
"""

from __future__ import annotations

import logging

from . import compat, scheduled

log = logging.getLogger(__name__)

# Replies a session may hold in the worker beyond the kernel's socket buffer (which takes
# the first few MiB) before it stops reading commands; a polite client that pipelines a few
# commands never comes near.
MAX_QUEUED_REPLIES = 64
# What one read of a clear-text control connection takes: at most 682 six-byte commands,
# and their replies, before the pause is seen. A TLS read returns one record whatever this
# is, so this stays at pyftpdlib's size there (a smaller read would leave decrypted bytes in
# the TLS object that no readiness event announces).
PLAIN_READ_SIZE = 4096
TLS_READ_SIZE = 65536
# A session closing with replies still unread is given this long to send them.
CLOSE_GRACE = 10.0


class ReplyBackPressure:
    """Mixin for the control handler, after ``Admission`` (its ``kicked`` and
    ``handle_read``, and its ``_kick``, which calls ``kick_arrived``) and before
    ``HeldCommands`` (the next ``kick_arrived``): see the module docstring."""

    _reading_paused_once = False
    _reading_paused = False  # the loop asks for no read event
    _close_deadline = None  # once closing with replies unread

    @property
    def ac_in_buffer_size(self) -> int:
        return TLS_READ_SIZE if compat.tls_established(self) else PLAIN_READ_SIZE

    def initiate_send(self) -> None:
        super().initiate_send()
        if compat.is_closed(self):
            return
        if len(self.producer_fifo) >= MAX_QUEUED_REPLIES:
            self._pause_reading()
        else:
            self._reading_paused = False  # AsyncChat.initiate_send asked for reading again

    def handle_read(self) -> None:
        """Read nothing while replies wait (a TLS read may be asked for by the TLS layer
        itself, with the replies still unsent)."""
        if len(self.producer_fifo) >= MAX_QUEUED_REPLIES:
            self._pause_reading()
            return
        super().handle_read()

    def _pause_reading(self) -> None:
        compat.stop_reading(self)
        self._reading_paused = True
        # A kick that came before the flag was set did not wake the loop: its flag (set
        # before ``kick_arrived`` reads ours) is seen here, after stop_reading's change.
        if self.kicked:
            compat.wake_to_read(self)
        if not self._reading_paused_once:
            self._reading_paused_once = True
            log.info("the client reads no replies: %d wait; its commands are not read until "
                     "it takes them", len(self.producer_fifo))

    def kick_arrived(self) -> None:
        """Called by ``Admission._kick`` (from the worker's main thread) once the kick shut
        the read side of the socket: a paused session is woken to read that end of file, and
        obeys the kick (``Admission.handle_read``)."""
        if self._reading_paused:
            compat.wake_to_read(self)
        super().kick_arrived()

    def close_when_done(self) -> None:
        """Close once the replies are sent, or ``CLOSE_GRACE`` seconds from now."""
        if self.producer_fifo and self._close_deadline is None and \
                not compat.is_closed(self):
            self._close_deadline = self.ioloop.call_later(CLOSE_GRACE, self._close_unread,
                                                          _errback=self.handle_error)
        super().close_when_done()

    def _close_unread(self) -> None:
        if not compat.is_closed(self):
            log.info("closed with %d replies the client did not read",
                     len(self.producer_fifo))
            compat.skip_tls_shutdown(self)  # its closing handshake could not be sent either
            self.close()

    def close(self) -> None:
        scheduled.cancel(self._close_deadline)
        super().close()
