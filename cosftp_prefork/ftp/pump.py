"""A download sent by one thread, off the session's IO loop (plain binary RETR).

Through asynchat, every chunk of a download crossed two threads (the COS read-ahead and the
IO loop) and cost an IO loop turn; measured in docs/performance.md, that made the worker spend
about three times the SDK client's CPU per GiB. Here one thread reads a chunk from COS and
writes it to the data socket, then the next: the kernel's socket buffers keep both connections
busy meanwhile, memory stays one chunk per download, and the IO loop only hears of the end.

The pump knows nothing of FTP: the data channel starts it, is told from the pump's thread
when it ended (``on_done``), and reads ``error`` then, in its own thread.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import BinaryIO, Callable, Optional

from .. import logcontext
from .throttle import Throttle


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
            while not self._stopping.is_set():
                data = self._source.read(self._chunk_size)
                if not data:
                    break
                self._send(memoryview(data))
        except BaseException as exc:  # handed to the data channel's thread by on_done
            self.error = exc
        finally:
            self._out.close()
        if not self._stopping.is_set():
            self.done = True
            self._on_done()

    def _send(self, data: memoryview) -> None:
        # send, not sendall: the timeout is then for each step, a stall; sendall's would be
        # for the whole chunk, which a slow client may well take longer for.
        while data and not self._stopping.is_set():
            allowed = len(data) if self._pace is None else \
                self._pace.wait_for(len(data), self._stopping)
            sent = self._out.send(data[:allowed]) if allowed else 0
            if self._pace is not None:
                self._pace.used(sent)
            self._on_sent(sent)
            data = data[sent:]

    def stop(self) -> None:
        """Stop and wait for the pump; the caller first shuts the socket down, so that a
        send waiting for the client fails at once."""
        self._stopping.set()
        self._thread.join()
