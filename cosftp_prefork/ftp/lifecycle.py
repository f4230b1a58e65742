"""A session's data-transfer lifecycle: one explicit state machine for the transfer command
in hand, and for the ABOR, QUIT, new data connections and stops that meet it.

RFC 959 gives every transfer command answered 125/150 exactly one final reply, and puts it
before the reply of the command that ended the transfer (ABOR: 426 then 226; QUIT: the
transfer's reply, then 221). pyftpdlib spreads this over flags (its pending QUIT, its
queued files, our data channel's "ABOR came") and answered in other orders; here the
session's state says which reply is owed, and who sends it.

=============  ===================================================  ============
state          event                                                next
=============  ===================================================  ============
IDLE           transfer command, no data connection yet (150)       WAITING
IDLE           transfer command on an open data connection (125)    TRANSFERRING
WAITING        its data connection opened                           TRANSFERRING
WAITING        given up with its final reply: ABOR (426, 226),      IDLE
               PASV/EPSV/PORT/EPRT (425), the connection timed out
               or failed (425), QUIT (425, then 221 and closed)
WAITING        a stop (426, then 421)                               IDLE
WAITING        given up by REIN or USER (425, then 220 / 331)       IDLE
WAITING        the session closes (given up, no reply)              IDLE
TRANSFERRING   the data channel closed (an upload committed or      IDLE
               not), its reply sent
TRANSFERRING   ABOR: pyftpdlib closes the data channel and answers  ABORTING
               426, 226 (225 if it had ended)
ABORTING       the data channel closed, without a reply of its own  IDLE
TRANSFERRING   QUIT (later commands are ignored)                    QUITTING
QUITTING       the data channel closed, its reply sent: 221         CLOSED
QUITTING       a stop: the data channel closes (426), then 221      CLOSED
any other      the session closes (a stop: the transfer's 426, 421) CLOSED
=============  ===================================================  ============

A transfer command in WAITING or TRANSFERRING, and PASV, EPSV, PORT or EPRT in
TRANSFERRING, are refused (450) before they change anything.
An upload commits inside the data channel's close, on the session's own thread: no command
is read meanwhile, so nothing can meet a commit (an ABOR read after it finds the session
IDLE and gets 225, as vsftpd answers).
"""

from __future__ import annotations

import enum
import logging
from typing import Optional

from . import compat

log = logging.getLogger(__name__)

GIVEN_UP = ("425 No data connection came; the transfer was given up for the new PASV, "
            "EPSV, PORT or EPRT.")
# The final replies of a transfer command answered 150 whose data connection never came
# (a client waits for it before the reply of the command that ended it).
ABORTED_WAITING = "426 Transfer aborted (ABOR) before its data connection opened."
QUIT_WAITING = "425 No data connection came before QUIT; the transfer was given up."
LOGIN_ANEW = ("425 No data connection came before the new login (REIN or USER); the transfer "
              "was given up.")
STOPPED = "426 Server shutting down; transfer aborted."
TRANSFER_BUSY = ("450 Another transfer is under way or waiting for its data connection; "
                 "wait for its reply or send ABOR.")
DATA_CONNECTION_BUSY = ("450 A transfer is under way on the data connection; wait for its "
                        "reply or send ABOR.")
SHUTTING_DOWN = "421 Server shutting down; closing control connection."


class TransferState(enum.Enum):
    """Where a session's transfer command is in its life (see the module's table)."""

    IDLE = "no transfer command under way (a data connection may be open or coming)"
    WAITING = "a transfer command answered 150 waits for its data connection"
    TRANSFERRING = "the data connection carries the transfer command's bytes"
    ABORTING = "ABOR closes the transfer; ABOR's replies answer it, not the data channel"
    QUITTING = "QUIT came during the transfer: its reply goes out, then 221"
    CLOSED = "the session closed: nothing more is answered"


_MOVES: dict[TransferState, set[TransferState]] = {
    TransferState.IDLE: {TransferState.WAITING, TransferState.TRANSFERRING,
                         TransferState.CLOSED},
    TransferState.WAITING: {TransferState.TRANSFERRING, TransferState.IDLE,
                            TransferState.CLOSED},
    TransferState.TRANSFERRING: {TransferState.IDLE, TransferState.ABORTING,
                                 TransferState.QUITTING, TransferState.CLOSED},
    TransferState.ABORTING: {TransferState.IDLE, TransferState.CLOSED},
    TransferState.QUITTING: {TransferState.CLOSED},
    TransferState.CLOSED: set(),
}


class TransferLifecycle:
    """Mixed into the FTP handler (before pyftpdlib's ``FTPHandler``): the session's
    ``transfer_state`` and every command and event that moves it."""

    transfer_state = TransferState.IDLE

    def _move(self, to: TransferState) -> None:
        """Go to ``to`` if the table allows it from here; otherwise stay and log the refused
        move as the bug it is (raising would end the session)."""
        if to not in _MOVES[self.transfer_state]:
            log.error("transfer lifecycle: no move from %s to %s; staying %s",
                      self.transfer_state.name, to.name, self.transfer_state.name)
            return
        self.transfer_state = to

    def _quitting(self) -> bool:
        """True once QUIT was taken or the session is closing: nothing more runs."""
        return self.transfer_state in (TransferState.QUITTING, TransferState.CLOSED) or \
            super()._quitting()

    def _transfer_busy(self) -> bool:
        """True while a transfer runs or waits for its data connection. pyftpdlib would
        start a second one anyway: queued, it replaced the first (whose 150 never got its
        final reply); on a data channel in use, it answered 125 and queued the second
        file's bytes behind the first's on the same connection."""
        return self.transfer_state in (TransferState.WAITING, TransferState.TRANSFERRING)

    def transfer_command_begins(self) -> None:
        """A file transfer command (STOR, APPE, RETR) is about to run: it counts as in
        flight for a graceful stop from now, not only from its 125/150. Its own work comes
        first (a download's GET, an upload hook's answer), and a stop that came meanwhile
        found no transfer and cut it (426)."""
        self.stats.transfer_queued(self)

    def transfer_command_ends(self) -> None:
        """The file transfer command returned: unless it waits for its data connection
        (counted so until it opens or is given up), the count of its running is dropped;
        a transfer started meanwhile counts as running (``datachannel``)."""
        if self.transfer_state is not TransferState.WAITING:
            self.stats.transfer_unqueued(self)

    def transfer_command_ran(self) -> None:
        """A transfer command (not refused as busy) ran: it waits for its data connection
        (its 150 is out; a file transfer then counts as in flight for a stop), or has one,
        or was refused (no move)."""
        if compat.transfer_waiting(self):
            self._move(TransferState.WAITING)
            if compat.file_transfer_waiting(self):
                self.stats.transfer_queued(self)
        elif self.data_channel is not None and compat.transfer_started(self.data_channel):
            self._move(TransferState.TRANSFERRING)

    def data_connection_opened(self) -> None:
        """The passive listener or the active connector set ``data_channel``: a transfer
        command waiting for it starts now (inside pyftpdlib's callback, which may also end
        it at once)."""
        if self.transfer_state is TransferState.WAITING:
            self._move(TransferState.TRANSFERRING)
        compat.data_channel_opened(self)

    def new_data_connection(self) -> bool:
        """PASV, EPSV, PORT or EPRT: False once refused (450) while a transfer runs, as a
        transfer command then is; pyftpdlib closed the running data channel for the new
        one, and the transfer's 125/150 never got its final reply (an upload was cut
        short). A transfer command waiting for its data connection is given up (425)."""
        if self.transfer_state is TransferState.TRANSFERRING:
            self.respond(DATA_CONNECTION_BUSY)
            return False
        self._drop_queued_transfers(answer=GIVEN_UP)
        return True

    def data_connection_missed(self, reply: str) -> None:
        """The data connection the session waits for will not come (its passive port timed
        out, PORT's connection failed): a transfer command waiting for it is given up with
        ``reply``, its final reply. With none waiting nothing is said; the next transfer
        command gets 425."""
        if not compat.is_closed(self):
            self._drop_queued_transfers(answer=reply)

    def _drop_queued_transfers(self, answer: Optional[str] = None) -> bool:
        """WAITING to IDLE: close the upload a STOR/APPE, and the download a RETR, left
        waiting for a data connection that never came, before the client's next data
        connection or ABOR makes it unreachable; ``answer`` is then the given-up command's
        final reply (its 150 was never answered). True if a command was given up.

        pyftpdlib only closes a queued file when the session ends: replacing an upload
        would leak its multipart upload, or lose a claimed parked one; a download kept its
        GET's connection half-read, and the next data connection (a listing's) got its
        bytes first.
        """
        queued = compat.take_queued_transfer(self)
        if queued is not None:
            log.info("path=%s: upload given up before its data connection opened",
                     queued[0].name)
            queued[0].abandon()
        sending = compat.take_queued_sending(self)
        if sending is not None and sending[2] is not None:
            log.info("path=%s: download given up before its data connection opened",
                     sending[2].name)
            sending[2].close()
        dropped = queued is not None or sending is not None
        if dropped:
            # Only then: a transfer command that gives up its predecessor first is itself
            # counted in flight already (``transfer_command_begins``).
            self.stats.transfer_unqueued(self)
            self._move(TransferState.IDLE)
            if answer is not None:
                self.respond(answer)
        return dropped

    def ftp_ABOR(self, line: str) -> None:
        """An upload the client aborts is discarded; only a broken one is parked. A transfer
        command answered 125/150 is in progress for RFC 959 from that reply on: 426 ends it,
        then 226 (pyftpdlib answered 225 alone, the 125/150 never got its final reply).
        With a data channel, ``CosDTPHandler.transfer_in_progress`` tells pyftpdlib so; a
        command still waiting for its data connection is answered here."""
        if self._drop_queued_transfers(answer=ABORTED_WAITING):
            compat.shut_down_connecting(self)
            self.respond("226 ABOR command successful.")
            return
        if self.transfer_state is TransferState.TRANSFERRING:
            self._move(TransferState.ABORTING)
            upload = self.data_channel.file_obj
            if self.data_channel.receive and upload is not None:
                upload.cancel()
        super().ftp_ABOR(line)

    @property
    def abort_answers(self) -> bool:
        """True while ABOR closes the transfer: ABOR's replies end it, the data channel
        sends none of its own."""
        return self.transfer_state is TransferState.ABORTING

    def ftp_QUIT(self, line: str) -> None:
        """RFC 959: QUIT during a transfer lets it end; its reply goes out, then 221 and
        the close (pyftpdlib answered 221 at once, the transfer's reply after it). A
        transfer command still waiting for its data connection gets its final reply (425)
        first; an idle data connection is closed (pyftpdlib waited for it to close: the
        session stayed until data_connection_timeout)."""
        if self.transfer_state is TransferState.TRANSFERRING:
            # Commands read from here on are ignored (``_quitting``), but the connection is
            # still watched: a kick or the client's hang-up closes the session at once
            # (pyftpdlib stopped reading, and a kick went unseen until the transfer ended).
            self._move(TransferState.QUITTING)
            return
        self._drop_queued_transfers(answer=QUIT_WAITING)
        if self.data_channel is not None:
            self.data_channel.close()
        super().ftp_QUIT(line)

    def _on_dtp_close(self) -> None:
        """The data channel closed and sent its reply (none after ABOR): the session is
        IDLE again, or a QUIT that waited for it is answered now."""
        state = self.transfer_state
        if state is TransferState.QUITTING and not compat.is_closed(self):
            self.data_channel = None
            self._move(TransferState.CLOSED)
            super().ftp_QUIT("")
            return
        if state in (TransferState.TRANSFERRING, TransferState.ABORTING):
            self._move(TransferState.IDLE)
        super()._on_dtp_close()

    def end_transfers(self, stopping: bool) -> None:
        """The session closes (its socket is still open). An upload still waiting for its
        data connection is given up like on ABOR (pyftpdlib would close it as broken and
        park what it copied); a QUIT that waited for the transfer gets no 221. If the
        worker is ``stopping``, a transfer waiting or running gets its final reply (426; an
        upload is parked) while the connection can still carry it, then 421, or 221 for a
        QUIT that waited for it (``_on_dtp_close``). Sent without waiting: a client that
        does not read gets what fits in the socket."""
        if self.transfer_state is TransferState.CLOSED:
            return  # QUIT was answered
        self._drop_queued_transfers(answer=STOPPED if stopping else None)
        if self.transfer_state is TransferState.QUITTING and not stopping:
            self._move(TransferState.CLOSED)  # the client is gone, or was told to go
        if stopping and self.data_channel is not None:
            self.data_channel.close()
        if self.transfer_state is not TransferState.CLOSED:
            # CLOSED first: a 421 the client's broken connection refuses closes the
            # session again from inside respond(), and that close must not say it again.
            self._move(TransferState.CLOSED)
            if stopping:
                self.respond(SHUTTING_DOWN, logfun=log.info)
