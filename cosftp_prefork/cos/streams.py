"""The body of a streamed GET's answer: read into the caller's buffer, or moved from the
socket into a pipe in the kernel (``splice(2)``) so that a download's bytes never pass
through the worker; the connection goes back to its pool once the whole body was read."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any, Callable, Optional

import urllib3
from urllib3.util.wait import wait_for_read


class SocketBody:
    """The rest of a streamed answer's body, framed by Content-Length and read from a plain
    TCP socket, for a caller that moves it in the kernel (``splice(2)`` into a pipe) instead
    of reading it into memory. :func:`socket_body` makes one from a streamed answer.

    The bytes the answer's reader had buffered with the head go into the pipe first. A body
    that ends before its Content-Length raises ``ConnectionError``; one from which no byte
    arrives within the answer's timeout, ``TimeoutError``.
    """

    def __init__(self, release: Callable[[bool], None], sock: socket.socket,
                 buffered: bytes, remaining: int) -> None:
        self._release = release  # gives the connection back: True once the whole body went
        self._sock = sock
        self._buffered = memoryview(buffered)  # the first of the ``remaining`` bytes
        self.remaining = remaining  # bytes of the body not yet in a pipe
        self._timeout = sock.gettimeout()

    def splice_into(self, pipe: int, size: int) -> int:
        """Move up to ``size`` bytes of the body into the pipe ``pipe`` (which has room
        for them); return how many, 0 at the end of the body."""
        size = min(size, self.remaining)
        if not size:
            return 0
        if self._buffered:
            moved = os.write(pipe, self._buffered[:size])
            self._buffered = self._buffered[moved:]
        else:
            moved = self._splice(pipe, size)
        self.remaining -= moved
        return moved

    def _splice(self, pipe: int, size: int) -> int:
        while True:
            try:
                moved = os.splice(self._sock.fileno(), pipe, size,
                                  flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                if not wait_for_read(self._sock, timeout=self._timeout):
                    raise TimeoutError(f"COS sent nothing for {self._timeout} s") from None
                continue
            if not moved:
                raise ConnectionError(f"COS answer cut short: {self.remaining} bytes missing")
            return moved

    def close(self) -> None:
        """Give the connection back to its pool: ready for the next request once the whole
        body went, else closed."""
        self._release(not self.remaining)


def _response_release(response: urllib3.BaseHTTPResponse) -> Callable[[bool], None]:
    """How a :class:`SocketBody` of urllib3's ``response`` gives its connection back."""
    def release(whole: bool) -> None:
        if whole:  # http.client's answer closed, as it closes itself after a read to the end
            response._fp.close()  # the answer, not the connection
            response.release_conn()
        response.close()
        response.release_conn()  # a closed connection: the pool opens a new one for it
    return release


class StreamedBody:
    """The body of a streamed GET's answer (status below 400, ``Sender.start(stream=True)``)
    written and read on a pooled connection here, as the small requests' answers are, not
    through urllib3's ``urlopen`` and http.client's response (a quarter of the worker's CPU
    per small RETR, docs/performance.md): read by :meth:`read` or :meth:`readinto`, or
    moved into a pipe by the :class:`SocketBody` of :meth:`socket_body`. The connection goes
    back to the pool once the whole body was read, and is closed if the body is given up
    before (:meth:`close`, which may come from another thread while one reads: it shuts the
    connection down first, so that a read waiting for COS returns at once)."""

    def __init__(self, pool: urllib3.HTTPConnectionPool, conn: Any, reader: Any, length: int,
                 reusable: bool) -> None:
        self._pool, self._conn, self._reader = pool, conn, reader
        self.remaining = length  # bytes of the body not read yet
        self._reusable = reusable
        self._lock = threading.Lock()  # the connection is given back once

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end), ``b""`` at the end;
        ``ConnectionError`` if the connection ends first."""
        data = self._reader.read(min(size, self.remaining)) if self.remaining else b""
        self._count(len(data))
        return data

    def readinto(self, buffer: memoryview) -> int:
        """Read into ``buffer``; how many bytes, 0 at the end."""
        count = self._reader.readinto(buffer[:self.remaining]) if self.remaining else 0
        self._count(count or 0)
        return count or 0

    def socket_body(self) -> Optional[SocketBody]:
        """The rest of the body as a :class:`SocketBody`, or None (see :func:`socket_body`)."""
        sock = self._conn.sock if self._conn is not None else None
        if not SPLICEABLE or type(sock) is not socket.socket:
            return None
        buffered = self._reader.read1(min(self.remaining, 64 * 1024)) if self.remaining else b""
        self.remaining -= len(buffered)
        return SocketBody(self._release, sock, buffered, self.remaining + len(buffered))

    def close(self) -> None:
        self._release(not self.remaining)

    def _count(self, count: int) -> None:
        if not count and self.remaining:
            raise ConnectionError(f"COS answer cut short: {self.remaining} bytes missing")
        self.remaining -= count
        if not self.remaining:
            self._release(True)

    def _release(self, whole: bool) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        if not whole and conn.sock is not None:
            with contextlib.suppress(OSError):  # a read blocked in another thread returns
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._reader.close()
        if not (whole and self._reusable):
            conn.close()
        self._pool._put_conn(conn if whole and self._reusable else None)


# Linux, Python 3.10 and later (os.splice, fcntl.F_SETPIPE_SZ came together): else copied.
SPLICEABLE = hasattr(os, "splice")


def body_into(response: urllib3.BaseHTTPResponse, buffer: memoryview) -> int:
    """Read the next bytes of a streamed answer's body into ``buffer``; how many, 0 at its
    end (or where the connection ended: the caller knows the size it expects). Through
    http.client's ``readinto``, which fills ``buffer`` from the socket: urllib3's ``read``
    makes a new bytes object per read, which cost a relay 10-20 % more CPU per GiB
    (docs/performance.md). At the end the connection goes back to the pool, as urllib3's
    ``read`` gives it back."""
    if isinstance(response, StreamedBody):
        return response.readinto(buffer)
    answer = response._fp  # http.client's response under urllib3's
    count = answer.readinto(buffer)
    if answer.isclosed():
        response.release_conn()
    return count


def socket_body(response: urllib3.BaseHTTPResponse) -> Optional[SocketBody]:
    """The body of a streamed answer (``Sender.start(stream=True)``) not read yet, as a
    :class:`SocketBody`; None when it cannot be spliced: TLS (the bytes on the socket are
    ciphertext), a body not framed by Content-Length, or no ``splice`` on this system.
    After this, the body is read only through the :class:`SocketBody`."""
    if isinstance(response, StreamedBody):
        return response.socket_body()
    answer = getattr(response, "_fp", None)  # http.client's response under urllib3's
    conn = response.connection
    sock = getattr(conn, "sock", None)
    if not SPLICEABLE or type(sock) is not socket.socket or answer is None or \
            getattr(answer, "chunked", True) or getattr(answer, "length", None) is None or \
            answer.fp is None:
        return None
    remaining = answer.length
    # What http.client's reader holds past the head: read1 returns it without reading the
    # socket (or, with nothing buffered, reads once from it: bytes the body sends anyway).
    buffered = answer.fp.read1(min(remaining, 64 * 1024)) if remaining else b""
    return SocketBody(_response_release(response), sock, buffered, remaining)
