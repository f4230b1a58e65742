"""The active data connector (PORT/EPRT): PORT is answered at once, as vsftpd and proftpd
answer it, and the connection the transfer command then uses is made meanwhile."""

from __future__ import annotations

import socket

from . import compat, scheduled

PORT_ACCEPTED = "200 Active data connection requested; the transfer command will use it."
CONNECT_FAILED = "425 Can't open the data connection to the address PORT or EPRT gave."
CONNECT_TIMED_OUT = "425 The data connection to the address PORT or EPRT gave timed out."


class CosActiveDTP(compat.ActiveDTP):
    """pyftpdlib answers PORT/EPRT only once its connection to the client is made (200) or
    has failed (425): a client that sends the transfer command without waiting for that
    reply (lftp with ``ftp:sync-mode off``) read the transfer's 150 as PORT's reply and
    every later reply one behind (lftp hung, reconnecting). Here the command is answered
    200 as soon as the connection is under way (the bounce checks, foreign address and
    privileged port, still refuse it first with 501); a connection that fails or times
    out then ends a transfer command waiting for it with 425, and an idle session hears
    nothing (its next transfer command gets 425).

    The session forgets the connector once its connection is made or has failed, so a
    transfer command with no data connection left (a second RETR after the first's) gets
    425 rather than 150 and a wait; a connection that failed as it was handed over (the
    client closed its listener at once) is no data channel.
    """

    timeout = 0  # pyftpdlib's timer answered 421 to PORT: ``connect_timeout`` instead
    connect_timeout = 60  # seconds (the ``connect_timeout`` option: configure_handler)
    _answered = False
    _timer = None

    def __init__(self, ip: str, port: int, cmd_channel) -> None:
        super().__init__(ip, port, cmd_channel)
        if compat.is_closed(self):
            return  # refused at once: pyftpdlib answered 425
        self._timer = self.ioloop.call_later(self.connect_timeout, self.handle_timeout,
                                             _errback=self.handle_error)
        self._answered = True
        cmd_channel.respond(PORT_ACCEPTED)

    def handle_connect(self) -> None:
        self._stop_timer()
        error = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, "connecting the active data connection failed")
        channel = self.cmd_channel
        compat.forget_active_connector(channel, self)
        self.del_channel()  # the socket is the data channel's from here on
        if not channel.connected:
            self.close()
            return
        handler = channel.dtp_handler(self.socket, channel)
        if compat.is_closed(handler):
            channel.data_connection_missed(CONNECT_FAILED)
            return
        channel.data_channel = handler
        channel.data_connection_opened()

    def handle_write(self) -> None:
        """Nothing: asyncore calls this right after ``handle_connect``, when the descriptor
        is the data channel's; asynchat's version set its IO events to READ, and a transfer
        that had waited for the connection (started inside ``handle_connect``) then sent no
        more than the socket took at once and never ended."""

    def handle_close(self) -> None:
        if not self._answered:
            super().handle_close()
        elif not compat.is_closed(self):
            self.close()
            self.cmd_channel.data_connection_missed(CONNECT_FAILED)

    def handle_timeout(self) -> None:
        self.close()
        self.cmd_channel.data_connection_missed(CONNECT_TIMED_OUT)

    def _stop_timer(self) -> None:
        scheduled.cancel(self._timer)

    def close(self) -> None:
        self._stop_timer()
        compat.forget_active_connector(self.cmd_channel, self)
        super().close()
