"""A server-side TLS connection that keeps TLS 1.3 session tickets off the wire until the
server next writes on it.

A TLS 1.3 server sends its session tickets right after the handshake, outside it. A client
that only uploads may never read them, and a socket closed on unread bytes is reset, not
closed: the client's kernel sends a RST and drops the part of the upload it had not sent
yet (lftp lost the end of every upload of a full handshake, measured; curl issue 6149,
lftp issue 666). The OpenSSL that pyOpenSSL runs on sends them whatever its contexts say
(``SSL_CTX_set_num_tickets`` is not exposed): two after a full handshake, one after a
resumed one.

So OpenSSL writes into memory here, and this class moves its records to the socket: the
records written when a TLS 1.3 handshake completes (the tickets, nothing else: the server's
flight went out before the client's Finished came) wait until the server writes again, a
download's first bytes or the closing alert, and are dropped if the client ended its side
first. trio holds them back the same way (trio issue 819).

During the handshake it reads the socket a record at a time, as OpenSSL would: records sent
right behind the client's Finished (an upload's first bytes) stay in the socket, which stays
readable and so wakes the IO loop once the handshake is done. Afterwards ``recv`` reads
what the socket holds, up to ``READ_SIZE`` at a time, and decrypts every record of it: a
Python exception per read, not four per 16 KiB record. What a read then leaves in memory
(the rest of what was asked for, or the client's closing alert met after its last bytes)
wakes no IO loop: ``input_held`` says so, and the data channel reads again
(``ftp.tls.CosTLSDTPHandler``).

The object stands where pyftpdlib's TLS channel keeps its ``SSL.Connection`` over the socket
and behaves as one: the same methods raise the same pyOpenSSL errors (``WantReadError``,
``WantWriteError``, ``SysCallError`` with the socket's errno); what it does not define is
the ``SSL.Connection``'s, or else the socket's.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections import deque
from typing import Any, Optional, Union

from OpenSSL import SSL

from .tlsresume import session_reused

BIO_CHUNK = 65536
RECORD_HEADER = 5  # content type, version, length (2 bytes)
RECORD_PLAINTEXT = 16384  # the most a TLS record holds (2**14 bytes), what one SSL_read gives
# The most one read of the socket takes after the handshake, whatever the caller asks for:
# its records are decrypted before the next read, so OpenSSL's memory buffer holds no more
# than this (and a record's plaintext). Fewer calls, and exceptions, per GiB than one read
# a record; reads of 64 KiB to 1 MiB measured alike on a socketpair (docs/performance.md).
READ_SIZE = 256 * 1024
TLS_1_3 = "TLSv1.3"


def _syscall_error(error: OSError) -> SSL.SysCallError:
    """The error pyOpenSSL raises when the socket under it fails with ``error``."""
    return SSL.SysCallError(error.errno, errno.errorcode.get(error.errno, str(error)))


class HeldTicketsConnection:
    """Server side of a TLS connection on ``sock`` with ``context``, in accept state."""

    def __init__(self, context: SSL.Context, sock: socket.socket) -> None:
        self._tls = SSL.Connection(context, None)  # None: OpenSSL reads and writes memory
        self._tls.set_accept_state()
        self._sock = sock
        # Records for the socket, in order; a partial send leaves a view of the rest.
        self._unsent: deque[Union[bytes, memoryview]] = deque()
        # Whether OpenSSL may have written since ``_take`` last emptied its buffer: set at
        # each call that can write (handshake, read, write, shutdown), so that a flush after
        # none reads nothing (reading an empty buffer raises ``WantReadError``).
        self._may_have_written = False
        self._held = b""  # the tickets, until something else goes out
        self._peer_ended = False
        self._header = b""  # of the record being read from the socket (handshake)
        self._record_left = 0  # bytes of that record's body still in the socket
        self._inbox: Optional[memoryview] = None  # a socket read's bytes, once reading data
        # Whether the last ``recv`` returned with input in memory that no readiness event
        # announces (plaintext, whole records, the end of the stream met after data).
        self._input_held = False
        # How reading ended, raised again: OpenSSL answers a read after a fatal error with
        # an empty error queue, which pyOpenSSL raises as a bare ``SSL.Error``.
        self._read_end: Optional[SSL.Error] = None
        self._shutdown_result: Optional[bool] = None

    def __getattr__(self, name: str) -> Any:
        if hasattr(SSL.Connection, name):
            return getattr(self._tls, name)
        return getattr(self._sock, name)

    def do_handshake(self) -> None:
        """Go on with the handshake as far as the bytes received allow.

        Raises ``SSL.WantReadError`` when it needs the client's next bytes,
        ``SSL.WantWriteError`` when the socket did not take what the client waits for, and
        what ``SSL.Connection.do_handshake`` raises."""
        while True:
            try:
                self._may_have_written = True
                self._tls.do_handshake()
            except SSL.WantReadError:
                if not self._flush():
                    raise SSL.WantWriteError() from None
                if self._receive():
                    continue
                raise
            except SSL.Error:
                with contextlib.suppress(SSL.SysCallError):
                    self._flush()  # the alert, if the socket takes it: the error is OpenSSL's
                raise
            break
        last = self._take()
        if self._tls.get_protocol_version_name() == TLS_1_3:
            self._held = last
        elif last:
            self._unsent.append(last)  # TLS 1.2: the server's Finished, the client awaits it
        self._flush()

    def session_reused(self) -> bool:
        """Return True if the handshake (done) resumed a session (``tlsresume``)."""
        return session_reused(self._tls)

    def recv(self, bufsiz: int) -> bytes:
        """Return up to ``bufsiz`` bytes of plaintext: what memory holds, else what one read
        of the socket brings (up to ``READ_SIZE`` bytes of records, decrypted up to
        ``bufsiz``; the rest is held: ``input_held``).

        Raises ``SSL.WantReadError`` when no whole record came; once the stream ended, what
        ended it (``SSL.ZeroReturnError``, ``SSL.SysCallError``, an ``SSL.Error`` of a
        record that fails) at every call, or from the next one on if this one returns the
        bytes before it (``input_held``)."""
        if self._read_end is not None:
            self._input_held = False
            raise self._read_end
        chunks: list[bytes] = []
        got = self._decrypt(bufsiz, chunks) if self._input_held else 0
        if not got and self._read_end is None and self._receive_some():
            got = self._decrypt(bufsiz, chunks)
        if self._read_end is None:
            # What reading made OpenSSL write (a key update's answer); not after the end:
            # OpenSSL answers a hang-up with an alert, which would meet a closed socket.
            self._flush()
        if got:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._input_held = False
        if self._read_end is not None:
            raise self._read_end
        raise SSL.WantReadError()

    def input_held(self) -> bool:
        """Return True if the last ``recv`` left input in memory, which its next call
        returns (or raises: the end of the stream) without the socket turning readable."""
        return self._input_held

    def _decrypt(self, bufsiz: int, chunks: list[bytes]) -> int:
        """Append to ``chunks`` the plaintext of the records OpenSSL holds, up to
        ``bufsiz`` bytes; return how many. The end of the stream met is kept in
        ``_read_end``; ``_input_held`` says whether more may be left in memory."""
        got = 0
        self._may_have_written = True
        while got < bufsiz:
            try:
                chunk = self._tls.recv(min(bufsiz - got, RECORD_PLAINTEXT))
            except SSL.WantReadError:
                self._input_held = False
                return got
            except SSL.Error as end:  # the closing alert, a hang-up, a record that fails
                self._read_end = end
                self._input_held = bool(got)
                return got
            chunks.append(chunk)
            got += len(chunk)
        self._input_held = True
        return got

    def send(self, buf: bytes) -> int:
        """Encrypt ``buf`` and return its length, the tickets going out first; raises
        ``SSL.WantWriteError`` (nothing of ``buf`` taken) while the socket has not taken
        what an earlier call encrypted."""
        self._release_held()
        if not self._flush():
            raise SSL.WantWriteError()
        self._may_have_written = True
        # pyOpenSSL's contexts allow partial writes: OpenSSL takes a record (16 KiB) a call.
        # All of ``buf`` at once makes one flush, one socket send, per call, not per record.
        data = memoryview(buf)
        sent = 0
        while sent < len(data):
            sent += self._tls.send(data[sent:])
        self._flush()
        return sent

    def shutdown(self) -> bool:
        """Send the closing alert, as ``SSL.Connection.shutdown``, and return its result;
        raises ``SSL.WantWriteError`` until the socket took it. Tickets still held go out
        before it, unless the client already ended its side: nobody would read them.

        After a stream that ended without the client's closing alert, return True at once:
        OpenSSL refuses the shutdown of a connection it failed (an empty ``SSL.Error``,
        again at every call: pyftpdlib called it again and again, a core spinning)."""
        if self._shutdown_result is None:
            if self._peer_ended:
                self._held = b""
            if isinstance(self._read_end, SSL.SysCallError):
                return True
            self._may_have_written = True
            self._shutdown_result = self._tls.shutdown()
        if not self._flush():
            raise SSL.WantWriteError()
        return self._shutdown_result

    def _release_held(self) -> None:
        if self._held:
            self._unsent.append(self._held)
            self._held = b""

    def _take(self) -> bytes:
        """Remove and return what OpenSSL wrote since the last call.

        A memory BIO's read gives all it holds up to the size asked, so a read shorter than
        that emptied it: no read follows to be answered ``WantReadError``, an exception
        raised and caught for every write of a download."""
        if not self._may_have_written:
            return b""
        self._may_have_written = False
        chunks = []
        while True:
            try:
                chunk = self._tls.bio_read(BIO_CHUNK)
            except SSL.WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < BIO_CHUNK:
                break
        return b"".join(chunks)

    def _flush(self) -> bool:
        """Send what OpenSSL wrote, after the held tickets if it wrote anything; return True
        once the socket took everything. What a send leaves stays queued as a view of the
        rest, not a copy of it."""
        written = self._take()
        if written:
            self._release_held()
            self._unsent.append(written)
        unsent = self._unsent
        while unsent:
            first = unsent[0]
            try:
                sent = self._sock.send(first)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as error:
                raise _syscall_error(error) from None
            if sent < len(first):
                unsent[0] = memoryview(first)[sent:]
                return False
            unsent.popleft()
        return True

    def _receive(self) -> bool:
        """During the handshake: give OpenSSL the socket's next bytes of the record being
        read, or the end of the stream; return False if there was nothing to give.

        Never more than that record: the records after it (an upload's first bytes, right
        behind the client's Finished) stay in the socket, which stays readable and wakes the
        IO loop once the handshake is done, as with OpenSSL reading the socket itself (a
        record waiting in memory would wake nobody)."""
        if self._peer_ended:
            return False
        size = self._record_left or RECORD_HEADER - len(self._header)
        try:
            data = self._sock.recv(min(size, BIO_CHUNK))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as error:
            raise _syscall_error(error) from None
        if data:
            self._tls.bio_write(data)
            if self._record_left:
                self._record_left -= len(data)
            else:
                self._header += data
                if len(self._header) == RECORD_HEADER:
                    self._record_left = int.from_bytes(self._header[3:], "big")
                    self._header = b""
        else:
            self._peer_ended = True
            self._tls.bio_shutdown()
        return True

    def _receive_some(self) -> bool:
        """After the handshake: give OpenSSL what one read of the socket brings, up to
        ``READ_SIZE`` bytes, or the end of the stream; return False if there was nothing to
        give."""
        if self._peer_ended:
            return False
        if self._inbox is None:
            self._inbox = memoryview(bytearray(READ_SIZE))
        try:
            size = self._sock.recv_into(self._inbox)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as error:
            raise _syscall_error(error) from None
        if size:
            self._tls.bio_write(self._inbox[:size])
        else:
            self._peer_ended = True
            self._tls.bio_shutdown()
        return True
