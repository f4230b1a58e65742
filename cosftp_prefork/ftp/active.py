"""The active data connector (PORT/EPRT): pyftpdlib's, answering its command once and
forgotten by the session once its connection is made or has failed."""

from __future__ import annotations

import socket

from . import compat


class CosActiveDTP(compat.ActiveDTP):
    """pyftpdlib answers PORT when its connection to the client is made (200) or failed
    (425). Three flaws are mended here:

    - once connected and answered 200, a failure of the data connection before any
      transfer (the client closed its listener) was answered 425 as well: two replies to
      one PORT, and every later reply one behind;
    - the session kept the connector after it connected or failed, so a transfer command
      with no data connection left (a second RETR after the first's, or after a failed
      PORT) was taken as waiting for an active connection: 150, then nothing, until the
      session's timeout. It now gets 425;
    - a data connection that failed as it was handed over (the client closed its
      listener at once) was kept as the session's data channel, closed: the next transfer
      answered 125 and then nothing.
    """

    _answered = False

    def handle_connect(self) -> None:
        # Read (and so clear) the connection's error here, where pyftpdlib would: once it
        # passes, pyftpdlib answers 200, and a later failure is the data channel's.
        error = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, "connecting the active data connection failed")
        self._answered = self.cmd_channel.connected
        try:
            super().handle_connect()
        finally:
            compat.forget_active_connector(self.cmd_channel, self)
            channel = self.cmd_channel.data_channel
            if channel is not None and compat.is_closed(channel):
                self.cmd_channel.data_channel = None

    def handle_close(self) -> None:
        if self._answered:
            self.close()
        else:
            super().handle_close()

    def close(self) -> None:
        compat.forget_active_connector(self.cmd_channel, self)
        super().close()
