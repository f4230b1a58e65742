"""A download sent by one thread, off the session's IO loop (plain binary RETR).

Through asynchat, every chunk of a download crossed two threads (the COS read-ahead and the
IO loop) and cost an IO loop turn; measured in docs/performance.md, that made the worker spend
about three times the SDK client's CPU per GiB. Here one thread reads a chunk from COS and
writes it to the data socket, then the next: the kernel's socket buffers keep both connections
busy meanwhile, memory stays one chunk per download, and the IO loop only hears of the end.

Where COS is reached over plain HTTP (a clear TCP socket) and the source offers
``splice_into`` (``cos.downloads.RangedReader``), the bytes do not pass through the worker's
memory at all: ``splice(2)`` moves them from the COS socket into a pipe and from the pipe into
the data socket, which saves the two copies (into the worker and out of it) that were most of
the worker's CPU per GiB (docs/performance.md, "Where the CPU goes"). A source that cannot
(TLS to COS) is read and sent in chunks as before.

The pump knows nothing of FTP: the data channel starts it, is told from the pump's thread
when it ended (``on_done``), and reads ``error`` then, in its own thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import threading
from typing import BinaryIO, Callable, Optional

from .. import logcontext, metrics
from ..cos.streams import SPLICEABLE
from .throttle import Throttle

SPLICE = "splice"
COPY = "copy"


class Pump:
    """Copies ``source`` to the connected socket ``sock`` in chunks of ``chunk_size``.

    ``on_sent(n)`` counts progress, ``on_done()`` reports the end (all sent, or ``error`` set),
    both from the pump's thread; ``pace`` (a rate limit) says when bytes may go; a pump
    stopped by ``stop()`` reports nothing. A send that makes no progress for ``timeout``
    seconds fails with ``TimeoutError`` (``timeout`` must be positive: the descriptor is
    shared with the non-blocking data channel).
    """

    def __init__(self, source: BinaryIO, sock: socket.socket, chunk_size: int, timeout: float,
                 on_sent: Callable[[int], None], on_done: Callable[[], None],
                 pace: Optional[Throttle] = None) -> None:
        self.error: Optional[BaseException] = None
        self.done = False
        self.how: Optional[str] = None  # SPLICE or COPY, once the first bytes are on their way
        self._source = source
        self._chunk_size = chunk_size
        self._on_sent = on_sent
        self._on_done = on_done
        self._pace = pace  # a rate limit: each send waits for what it lets go
        self._stopping = threading.Event()
        # A duplicate of the descriptor, with a timeout of its own (the data channel's socket
        # stays non-blocking), closed by the pump: the data channel may close its own first.
        self._out = socket.socket(fileno=os.dup(sock.fileno()))
        self._out.settimeout(timeout)
        self._thread = threading.Thread(target=logcontext.carried(self._run),
                                        name="cos-download", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if not (SPLICEABLE and hasattr(self._source, "splice_into") and self._spliced()):
                self._relaying(COPY)
                self._copy()
        except BaseException as exc:  # handed to the data channel's thread by on_done
            self.error = exc
        finally:
            self._out.close()
        if not self._stopping.is_set():
            self.done = True
            self._on_done()

    def _relaying(self, how: str) -> None:
        """Say how the bytes go (``SPLICE``, ``COPY``), once: ``how`` and the metric."""
        if self.how is None:
            self.how = how
            metrics.download_relayed(how)

    def _copy(self) -> None:
        """Read into one buffer and send from it, chunk after chunk."""
        buffer = memoryview(bytearray(self._chunk_size))
        while not self._stopping.is_set():
            count = self._source.readinto(buffer)
            if not count:
                break
            self._send(buffer[:count])

    def _spliced(self) -> bool:
        """Move the file through a pipe of this pump's (closed at the end: a download holds
        two descriptors more, and at most a pipe's worth of the kernel's memory); False,
        before any byte went, if the source cannot."""
        reader, writer = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            with contextlib.suppress(OSError):  # the default 64 KiB if refused
                fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, self._chunk_size)
            room = fcntl.fcntl(writer, fcntl.F_GETPIPE_SZ)
            while not self._stopping.is_set():
                moved = self._source.splice_into(writer, room)  # the pipe is empty here
                if moved is None:
                    return False
                self._relaying(SPLICE)
                if not moved:
                    break
                self._send_from(reader, moved)
            return True
        finally:
            os.close(reader)
            os.close(writer)

    def _send(self, data: memoryview) -> None:
        # send, not sendall: the timeout is then for each step, a stall; sendall's would be
        # for the whole chunk, which a slow client may well take longer for.
        while data and not self._stopping.is_set():
            sent = self._out.send(data[:self._allowed(len(data))])
            self._count(sent)
            data = data[sent:]

    def _send_from(self, pipe: int, count: int) -> None:
        """Splice ``count`` bytes from ``pipe`` into the data socket, as ``_send`` sends."""
        while count and not self._stopping.is_set():
            try:
                sent = os.splice(pipe, self._out.fileno(), self._allowed(count),
                                 flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                self._wait_writable()
                continue
            self._count(sent)
            count -= sent

    def _allowed(self, count: int) -> int:
        """How many of ``count`` bytes may go now (waits for the rate limit, if any)."""
        return count if self._pace is None else self._pace.wait_for(count, self._stopping)

    def _count(self, sent: int) -> None:
        if self._pace is not None:
            self._pace.used(sent)
        self._on_sent(sent)

    def _wait_writable(self) -> None:
        poller = select.poll()
        poller.register(self._out, select.POLLOUT)
        if not poller.poll(self._out.gettimeout() * 1000):
            raise TimeoutError("the client took nothing within the data connection timeout")

    def stop(self) -> None:
        """Stop and wait for the pump; the caller first shuts the socket down, so that a
        send waiting for the client fails at once."""
        self._stopping.set()
        self._thread.join()
