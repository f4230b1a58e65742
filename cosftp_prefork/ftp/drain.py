"""The data connection of an upload the server refused while the client was still sending
(quota crossed, ``single_file_max_size`` passed, a name refused, COS failing, a part buffer
not filled): kept open a little after the reply and read to nowhere, so that the client can
finish sending and read why.

Closing a socket with unread bytes in its receive buffer makes the kernel send a reset, and
a client still sending then (``curl -T``, most cameras) reports a network error (curl: 55,
Failed sending data) and never reads the ``552`` waiting on the control connection. ProFTPD
calls the same thing a lingering abort (``TimeoutLinger``).

The drain is bounded: it ends at the client's end of file, after ``DRAIN_SECONDS`` or after
``DRAIN_BYTES``, whichever comes first; what it reads is discarded by the kernel
(``MSG_TRUNC``: no copy, no buffer per drain), never stored and never counted in a quota. It
runs on the session's own IO loop (no thread of its own), holds one descriptor, and a session
has at most one: a new one, or the end of the session, closes the previous one (nobody would
read a reply any more).

A refused STOR from byte 0 hands over its first bytes (``PrefixCrcs``): what the drain reads
is fed on into them, so that they tell what the client sent in all (its retry of the first
bytes alone is refused: ``ftp.retries``). While they want bytes (the first 8 MiB) those are
read for real, 64 KiB at a time into bytes freed with each read; after, discarded unseen.
"""

from __future__ import annotations

import enum
import logging
import socket
import time
from typing import Optional

from ..cos.checksum import PrefixCrcs
from . import compat, scheduled

log = logging.getLogger(__name__)

# A few seconds: enough for a client on a fast line to send what its socket buffers and the
# rest of a file that crossed the quota a little; short enough that a client trickling bytes
# keeps nothing for long. (ProFTPD's TimeoutLinger defaults to 10 s.)
DRAIN_SECONDS = 5.0
# What a 100 Mbit/s client sends in those seconds: a file passing its quota by more than that
# gets the reset (and its network error) rather than the server reading it all.
DRAIN_BYTES = 64 * 1024 * 1024
# The kernel discards into it (MSG_TRUNC): shared by every drain of the process, never read.
_SCRATCH = bytearray(256 * 1024)
# What one read takes of the bytes a refused STOR's first bytes want (see above).
SEEN_READ = 64 * 1024


class DrainEnd(enum.Enum):
    """How a drain ended (one log line says which)."""

    EOF = "the client closed it"
    TIME = f"closed after {DRAIN_SECONDS:g} s (the drain's time bound)"
    BYTES = f"closed after {DRAIN_BYTES} bytes (the drain's byte bound)"
    BROKEN = "the client reset it"
    REPLACED = "another refused upload of the session took its place"
    SESSION = "the session ended"


class Drain:
    """Read and discard what the client still sends on ``sock`` (a duplicate of the refused
    upload's data socket; the drain closes it), registered on ``ioloop``. ``path`` names the
    upload in the log line that ends the drain; ``prefix``, if given, takes every byte read
    after those it holds (see the module docstring)."""

    def __init__(self, sock: socket.socket, ioloop, path: str,
                 seconds: float = DRAIN_SECONDS, limit: int = DRAIN_BYTES,
                 prefix: Optional[PrefixCrcs] = None) -> None:
        self.socket, self.ioloop, self.path, self.limit = sock, ioloop, path, limit
        self.prefix = prefix
        self.discarded = 0
        self.end: Optional[DrainEnd] = None
        self._started = time.monotonic()
        self._fd = sock.fileno()
        sock.setblocking(False)
        # The upload's pacing may have raised the low-water mark: wake for any byte.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        compat.watch_readable(ioloop, self._fd, self)
        self._deadline = ioloop.call_later(seconds, self.close, DrainEnd.TIME,
                                           _errback=self.handle_error)

    # --- what the IO loop calls

    def readable(self) -> bool:
        return self.end is None

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        wanted = min(len(_SCRATCH), self.limit - self.discarded)
        seen = self.prefix is not None and not self.prefix.full
        try:
            if seen:  # bytes of its own: _SCRATCH is shared by the sessions' threads
                data = self.socket.recv(min(wanted, SEEN_READ))
                count = len(data)
            else:
                count = self.socket.recv_into(_SCRATCH, wanted, socket.MSG_TRUNC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in compat.DISCONNECTED:
                self.close(DrainEnd.BROKEN)
                return
            raise
        if not count:
            self.close(DrainEnd.EOF)
            return
        self.discarded += count
        if seen:
            self.prefix.update(data)
        elif self.prefix is not None:
            self.prefix.skip(count)
        if self.discarded >= self.limit:
            self.close(DrainEnd.BYTES)

    def handle_write_event(self) -> None:
        """Never asked for (``writable`` is False)."""

    def handle_close(self) -> None:
        self.close(DrainEnd.BROKEN)

    def handle_error(self) -> None:
        log.exception("path=%s: draining the refused upload's data connection failed",
                      self.path)
        self.close(DrainEnd.BROKEN)

    def close(self, end: DrainEnd = DrainEnd.SESSION) -> None:
        """Stop draining (``end`` says why; the IO loop closing calls it without one) and
        close the socket: with nothing unread (the client's end of file) that is a FIN,
        otherwise the reset the drain put off."""
        if self.end is not None:
            return
        self.end = end
        scheduled.cancel(self._deadline)
        self.ioloop.unregister(self._fd)
        self.socket.close()
        log.info("path=%s: the refused upload's data connection: %d bytes discarded after the "
                 "reply in %.1f s; %s", self.path, self.discarded,
                 time.monotonic() - self._started, end.value)
