"""Ranged, streaming reader of one object for RETR.

RETR opens a download with :func:`open_download`: one GET from the REST offset, whose
answer says the size and the ETag (a missing object fails right there, before any reply).
Every later GET of the download (a reopened stream, a seek) is pinned to that ETag. A thread
reads ahead (at most ``READ_AHEAD`` chunks, so memory per download stays bounded) so the data
channel does not wait on COS between chunks; a caller that already reads on a thread of its
own (the download pump) turns that off. A stream that breaks is reopened from the current
offset a couple of times; one that still cannot deliver raises instead of returning a short
file: the client sees 426/451, never a silently truncated download.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from typing import Callable, Optional, Union

from .. import logcontext
from ..errors import ResumeRefused, StorageError
from .bodies import ObjectStream
from .bucket import Bucket

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
READ_AHEAD = 2
REOPEN_ATTEMPTS = 2


class _ReadAhead:
    """Reads ``stream`` on a thread into a queue of at most ``READ_AHEAD`` chunks."""

    def __init__(self, stream: ObjectStream, chunk_size: int) -> None:
        self._stream = stream
        self._chunk_size = chunk_size
        self._queue: queue.Queue[Union[bytes, BaseException]] = queue.Queue(READ_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=logcontext.carried(self._run), name="cos-read-ahead",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._stream.read(self._chunk_size)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:
            self._put(exc)

    def _put(self, item: Union[bytes, BaseException]) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def next_chunk(self) -> bytes:
        """Return the next chunk (``b""`` at the end); raises what the reader thread hit."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._stream.close()
        self._thread.join()


class _Direct:
    """Reads ``stream`` in the caller's thread, with the interface of ``_ReadAhead``."""

    def __init__(self, stream: ObjectStream, chunk_size: int) -> None:
        self.stream = stream
        self._chunk_size = chunk_size

    def next_chunk(self) -> bytes:
        return self.stream.read(self._chunk_size)

    def close(self) -> None:
        self.stream.close()


class RangedReader(io.RawIOBase):
    """A read-only, seekable file object over ``key``; raises ``StorageError`` on COS faults.

    ``read_ahead`` (on by default) reads COS on a thread of the reader's own; set it to False
    before the first ``read`` when the caller is such a thread already.
    """

    read_ahead = True

    def __init__(self, bucket: Bucket, key: str, *, name: str, size: int, etag: str = "",
                 chunk_size: int = CHUNK_SIZE, offset: int = 0,
                 opened: Optional[ObjectStream] = None) -> None:
        super().__init__()
        self.name = name
        self._bucket = bucket
        self._key = key
        self._size = size
        self._chunk_size = chunk_size
        self._pos = offset
        # The GET that found the object, from ``offset``: read first, no request more.
        self._opened = opened
        self._ahead: Optional[Union[_ReadAhead, _Direct]] = None
        self._pending = memoryview(b"")
        self._reopens_left = REOPEN_ATTEMPTS
        # Of the version being sent (the one ``size`` belongs to, if given, else the one the
        # first GET finds); every GET asks for that one.
        self._etag = etag

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset``; the next ``read`` starts a new ranged GET from there."""
        if whence != io.SEEK_SET or offset < 0:
            raise ValueError("only absolute, non-negative seeks are supported")
        if offset != self._pos:
            self._drop_stream()
            self._pos = offset
        return self._pos

    @property
    def size(self) -> int:
        """The size of the version being sent."""
        return self._size

    def read(self, size: int = -1) -> bytes:
        """Return up to ``size`` bytes (all that is left for -1); ``b""`` at end of object."""
        if self._pos >= self._size:
            return b""
        if size is None or size < 0:
            size = self._size - self._pos
        if not self._pending:
            chunk = self._next_chunk()
            if size >= len(chunk):  # the usual case: the producer asks for whole chunks
                self._pos += len(chunk)
                return chunk
            self._pending = memoryview(chunk)
        data = bytes(self._pending[:size])
        self._pending = self._pending[size:]
        self._pos += len(data)
        return data

    def _next_chunk(self) -> bytes:
        while True:
            if self._ahead is None:
                source = _ReadAhead if self.read_ahead else _Direct
                self._ahead = source(self._stream(), self._chunk_size)
            try:
                data = self._ahead.next_chunk()
                if not data:
                    raise self._short()
                return data
            except StorageError as exc:
                self._reopen_after(exc)

    def splice_into(self, pipe: int, size: int) -> Optional[int]:
        """Move up to ``size`` bytes from the current offset into the pipe ``pipe`` in the
        kernel (plain-HTTP COS, see ``ObjectStream.splice_into``); return how many (0 at
        the end of the object), or None when the stream cannot, or bytes were read already
        (then ``read`` the rest). A stream that breaks is reopened as for ``read``. Only for
        a reader without read-ahead (``read_ahead`` False)."""
        if self._pos >= self._size:
            return 0
        if self._pending or self.read_ahead:
            return None
        return self._from_stream(
            lambda stream: stream.splice_into(pipe, min(size, self._size - self._pos)))

    def readinto(self, buffer) -> int:  # type: ignore[override]
        """``read`` into ``buffer``; without read-ahead, straight from the COS socket into
        it (no bytes object per chunk)."""
        if self._pos >= self._size:
            return 0
        if self._pending or self.read_ahead:
            data = self.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)
        view = memoryview(buffer).cast("B")[: self._size - self._pos]
        return self._from_stream(lambda stream: stream.readinto(view))

    def _from_stream(self, move: Callable[[ObjectStream], Optional[int]]) -> Optional[int]:
        """``move(stream)`` on the open stream (opened if need be): the bytes it moved, 0
        being a stream that ended early; a stream that broke is reopened as for ``read``."""
        while True:
            if self._ahead is None:
                self._ahead = _Direct(self._stream(), self._chunk_size)
            try:
                moved = move(self._ahead.stream)
                if moved == 0:
                    raise self._short()
                if moved is not None:
                    self._pos += moved
                return moved
            except StorageError as exc:
                self._reopen_after(exc)

    def _stream(self) -> ObjectStream:
        """The GET that found the object (from the REST offset) if unused, else a new one."""
        stream, self._opened = self._opened or self._open_stream(), None
        return stream

    def _short(self) -> StorageError:
        return StorageError(f"COS download of {self._key} ended at byte {self._pos} of "
                            f"{self._size}", code="ShortRead")

    def _reopen_after(self, exc: StorageError) -> None:
        """The stream broke: drop it so that the next read reopens it from the current
        offset, or raise ``exc`` once the reopens are spent."""
        self._drop_stream()
        if self._reopens_left <= 0:
            raise exc
        self._reopens_left -= 1
        log.warning("path=%s: COS stream broke at byte %d (%s); reopening", self.name,
                    self._pos, exc)

    def _open_stream(self) -> ObjectStream:
        """GET from the current offset, pinned to the version the download started with:
        an overwrite meanwhile must fail the download, not splice two versions."""
        try:
            stream = self._bucket.open_read(self._key, self._pos, self._etag)
        except StorageError as exc:
            if exc.code == "PreconditionFailed":
                raise StorageError(f"{self.name} was replaced during the download; stopped "
                                   f"at byte {self._pos} rather than mix two versions",
                                   code="ObjectChanged") from exc
            raise
        self._etag = self._etag or stream.etag
        return stream

    def close(self) -> None:
        if not self.closed:
            if self._pos < self._size:
                log.info("path=%s: download stopped at byte %d of %d", self.name, self._pos,
                         self._size)
            self._drop_stream()
        super().close()

    def _drop_stream(self) -> None:
        self._pending = memoryview(b"")
        if self._opened is not None:
            self._opened.close()
            self._opened = None
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None


def open_download(bucket: Bucket, key: str, *, name: str, offset: int = 0) -> RangedReader:
    """A download of ``key`` from byte ``offset`` in one GET, whose answer gives the size and
    the ETag the rest of the download is pinned to. Raises ``NotFound`` for a missing key and
    ``ResumeRefused`` when ``offset`` lies past the end.

    A GET from the very end of an object (or past it) is refused by COS (416): a HEAD then
    tells the size, and a download from exactly the end sends nothing."""
    try:
        stream = bucket.open_read(key, offset)
    except StorageError as exc:
        if exc.status != 416 or not offset:
            raise
        info = bucket.head(key)
        if offset > info.size:
            raise ResumeRefused(f"REST position ({offset}) > file size ({info.size})") from exc
        return RangedReader(bucket, key, name=name, size=info.size, etag=info.etag,
                            offset=offset)
    return RangedReader(bucket, key, name=name, size=stream.size, etag=stream.etag,
                        offset=offset, opened=stream)
