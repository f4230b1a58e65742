"""Ranged, streaming reader of one object for RETR.

The GET starts lazily at the first ``read`` so that pyftpdlib's ``open`` + ``seek(REST)`` costs
one request, not two. A stream that ends before the announced length raises instead of
returning a short file: the client must see 426, never a silently truncated download.
"""

from __future__ import annotations

import io
import logging
from typing import Optional

from .errors import StorageError
from .storage import Bucket, ObjectStream

log = logging.getLogger(__name__)


class RangedReader(io.RawIOBase):
    """A read-only, seekable file object over ``key``; raises ``StorageError`` on COS faults."""

    def __init__(self, bucket: Bucket, key: str, *, name: str, size: int,
                 log_context: str = "") -> None:
        super().__init__()
        self.name = name
        self._bucket = bucket
        self._key = key
        self._size = size
        self._ctx = log_context or key
        self._pos = 0
        self._stream: Optional[ObjectStream] = None

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

    def read(self, size: int = -1) -> bytes:
        """Return up to ``size`` bytes (all that is left for -1); ``b""`` at end of object."""
        if self._pos >= self._size:
            return b""
        if size is None or size < 0:
            size = self._size - self._pos
        if self._stream is None:
            self._stream = self._bucket.open_read(self._key, self._pos)
        data = self._stream.read(size)
        if not data:
            raise StorageError(
                f"COS download of {self._key} ended at byte {self._pos} of {self._size}",
                code="ShortRead",
            )
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            if self._pos < self._size:
                log.info("%s: download stopped at byte %d of %d", self._ctx, self._pos, self._size)
            self._drop_stream()
        super().close()

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
