"""The bodies of COS requests and answers: a part's chunks sent without a copy, a GET's
bytes read or spliced into a pipe."""

from __future__ import annotations

import bisect
import io
import itertools
from collections.abc import Sequence
from typing import Any, Optional, Union

from ..errors import StorageError
from .streams import SocketBody, body_into, socket_body


class ObjectStream:
    """The body of a GET, read in chunks, or moved into a pipe by :meth:`splice_into`;
    ``close()`` releases the connection. ``size`` is the whole object's (a ranged GET says
    it in Content-Range), ``length`` this body's."""

    def __init__(self, raw: Any, length: int, etag: str = "", size: Optional[int] = None) -> None:
        self._raw = raw
        self.length = length
        self.etag = etag
        self.size = length if size is None else size
        self._body: Union[SocketBody, bool, None] = False  # False: not asked yet

    def read(self, size: int) -> bytes:
        """Return up to ``size`` bytes, ``b""`` at the end; raises ``StorageError`` on a reset."""
        try:
            return self._raw.read(size)
        except Exception as exc:  # urllib3 raises several unrelated types on a broken stream
            raise _stream_broke(exc) from exc

    def readinto(self, buffer: memoryview) -> int:
        """Read up to ``len(buffer)`` bytes into ``buffer``; how many, 0 at the end."""
        try:
            return body_into(self._raw, buffer)
        except Exception as exc:  # http.client, socket and TLS errors alike
            raise _stream_broke(exc) from exc

    def splice_into(self, pipe: int, size: int) -> Optional[int]:
        """Move up to ``size`` bytes into the pipe ``pipe`` in the kernel, never through
        this process's memory; return how many (0 at the end), or None if this stream
        cannot (see :func:`streams.socket_body`): then read it. Asked before any ``read``;
        once it answered a number, the stream is read by this method only."""
        try:
            if self._body is False:
                self._body = socket_body(self._raw)
            if self._body is None:
                return None
            return self._body.splice_into(pipe, size)
        except OSError as exc:
            raise _stream_broke(exc) from exc

    def close(self) -> None:
        if self._body:
            self._body.close()
        else:
            self._raw.close()


def read_exactly(stream: ObjectStream, key: str, size: int) -> bytes:
    """The first ``size`` bytes of ``stream`` (of ``key``); ``ShortRead`` if it has fewer,
    ``StreamError`` if it breaks."""
    chunks, got = [], 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            raise StorageError(f"COS GET {key} ended after {got} of {size} bytes",
                               code="ShortRead")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _stream_broke(exc: Exception) -> StorageError:
    return StorageError(f"COS download stream broke: {exc}", code="StreamError")


class ChunkedBody:
    """A read-only file over a list of byte strings, for a request body: the SDK and
    ``requests`` take the length, read it in blocks and may rewind it."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = list(chunks)
        self._starts = list(itertools.accumulate((len(c) for c in self._chunks), initial=0))
        self._position = 0

    def __len__(self) -> int:
        return self._starts[-1]

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self)}[whence]
        self._position = max(0, min(len(self), base + offset))
        return self._position

    def read(self, size: int = -1) -> bytes:
        end = len(self) if size is None or size < 0 else min(len(self), self._position + size)
        pieces = []
        while self._position < end:
            index = bisect.bisect_right(self._starts, self._position) - 1
            start = self._position - self._starts[index]
            piece = self._chunks[index][start:start + end - self._position]
            pieces.append(piece)
            self._position += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
