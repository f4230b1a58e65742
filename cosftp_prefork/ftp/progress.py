"""How far a transfer got, as the client sees it: the figures of ``cosftpctl sessions``,
``status``, xferlog and vsftpd.log.

A download's bytes are counted when the client's TCP acknowledged them, not when the server
handed them to its socket: the kernel buffers megabytes per connection (Linux grows a send
buffer up to ``net.ipv4.tcp_wmem``'s 4 MiB, and the client's receive buffer holds more), so
a slow client's download looked megabytes ahead, and a file that fit in the buffers looked
finished, at 0 B/s, while the client was still reading it. Acknowledged is what was handed
over minus what the kernel still holds (``tcpqueue``); ``TCP_INFO``'s ``tcpi_bytes_acked``
would count TLS records and handshakes rather than file bytes. Where the kernel cannot
tell, the handed-over count stands in.

An upload's bytes are those the server read from the data connection.

==========  =====================================================  ==========
phase       event                                                  next
==========  =====================================================  ==========
OPEN        the transfer ended, a download the server sent whole   DELIVERING
            and the client's TCP has not acknowledged all of yet
OPEN        the transfer ended otherwise                           ENDED
DELIVERING  the client acknowledged everything (all of it counts)  ENDED
DELIVERING  the connection is gone (a reset: what it had counts)   ENDED
==========  =====================================================  ==========

The data channel replies 226 and closes once the whole file is handed over (waiting for the
client's acknowledgement would cost a round trip per file); in DELIVERING the meter follows
the connection the kernel still sends on. A meter is read once a second by the worker's tick
(one ioctl, or one netlink query, per transfer a second; none per send) and ended by the data
channel's thread before its socket closes: a lock keeps the tick from asking a descriptor
that is closed, or already reused.
"""

from __future__ import annotations

import collections
import enum
import threading
from typing import Callable, Optional

from .tcpqueue import unsent, unsent_after_close

# ``rate`` is over the last RATE_WINDOW seconds (samples a second apart): what a client
# does now, not its average since the start.
RATE_WINDOW = 5


class Phase(enum.Enum):
    OPEN = "open"  # the data channel sends or receives
    DELIVERING = "delivering"  # closed by the server; the kernel still sends the tail
    ENDED = "ended"


class TransferMeter:
    """The progress of one transfer on one data connection.

    ``handed`` returns the bytes handed to (download) or read from (upload) ``sock``, the
    data channel's socket (or TLS connection). ``nbytes`` and ``rate`` are the figures as of
    the last ``sample``; ``result``, once the transfer ended, is the figure its logs give;
    ``credited`` is for the worker's totals, which add what moved since they last looked.
    """

    def __init__(self, upload: bool, handed: Callable[[], int], sock, now: float) -> None:
        self.upload = upload
        self.counted = False  # a file transfer (in the worker's totals), not a listing
        self.phase = Phase.OPEN
        self.nbytes = 0
        self.rate = 0.0
        self.result: Optional[int] = None
        self.credited = 0
        # A file transfer's file (what the client named) and the bytes it should move, if
        # known (``ALLO``, the object's size less the ``REST`` offset): for its progress bar.
        self.name = ""
        self.expected: Optional[int] = None
        # Dropped when the transfer ends: the session keeps its last meter, not the data
        # channel these reach.
        self._handed: Optional[Callable[[], int]] = handed
        self._sock = sock
        self._connection: Optional[tuple[int, tuple, tuple]] = None  # while DELIVERING
        self._samples = collections.deque([(now, 0)], maxlen=RATE_WINDOW + 1)
        self._lock = threading.Lock()

    @property
    def finished(self) -> bool:
        """The transfer ended (its data channel closed, ``result`` known)."""
        return self.phase is not Phase.OPEN

    def sample(self, now: float) -> int:
        """Update the figures (the worker's tick, ``now`` from ``time.monotonic()``); return
        ``nbytes``."""
        with self._lock:
            if self.phase is Phase.OPEN:
                self._count(self._handed(), None if self.upload else unsent(self._sock.fileno()))
            elif self.phase is Phase.DELIVERING:
                self._follow()
            if self.phase is not Phase.ENDED:
                self._samples.append((now, self.nbytes))
                (then, before), (last, after) = self._samples[0], self._samples[-1]
                self.rate = (after - before) / (last - then) if last > then else 0.0
            return self.nbytes

    def finish(self, complete: bool) -> int:
        """End the transfer while its socket is still open (the data channel's thread);
        return ``result``: a download sent whole counts every byte (the kernel delivers the
        rest after the close), a broken one what the client had acknowledged by then."""
        with self._lock:
            if self.phase is not Phase.OPEN:
                return self.result or 0
            handed, sock = self._handed(), self._sock
            queued = 0 if self.upload else unsent(sock.fileno())
            self._count(handed, queued)
            self.result = handed if complete or self.upload else self.nbytes
            self._handed = self._sock = None
            self.phase = Phase.ENDED
            if self.nbytes < self.result:
                self._connection = _addresses(sock)
                if self._connection is not None:
                    self.phase = Phase.DELIVERING
            if self.phase is Phase.ENDED:
                self._end(self.result)
            return self.result

    def _count(self, handed: int, queued: Optional[int]) -> None:
        # Handed-over first, queue second: a send completing in between then counts as
        # still queued, so a figure may lag, never run ahead. It never goes back: the FIN
        # of a shut-down socket is counted in its queue too.
        self.nbytes = max(self.nbytes, handed - (queued or 0))

    def _follow(self) -> None:
        """DELIVERING: count what the client acknowledged since; end when it has it all,
        or when the connection is gone."""
        queued = unsent_after_close(*self._connection)
        if queued is None:
            self._end(self.nbytes)  # reset by the client, or the system cannot tell
        elif queued <= 1:  # at most our FIN
            self._end(self.result)
        else:
            self._count(self.result, queued - 1)

    def _end(self, nbytes: int) -> None:
        self.nbytes = max(self.nbytes, nbytes)
        self.rate = 0.0
        self._connection = None
        self.phase = Phase.ENDED


def _addresses(sock) -> Optional[tuple[int, tuple, tuple]]:
    """``(family, local, peer)`` of ``sock``, None if it is not connected any more."""
    try:
        return sock.family, sock.getsockname(), sock.getpeername()
    except OSError:
        return None
