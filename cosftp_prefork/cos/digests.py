"""Checksums of stored objects for HASH, XCRC, XMD5 and XSHA*.

What COS already knows is answered without reading the object: CRC64 from
``x-cos-hash-crc64ecma``, MD5 from the ETag of an object stored in one PUT. Everything else
streams the object once through the hash, with the download path's read-ahead and retries.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from typing import Protocol

from .bucket import Bucket
from .checksum import Crc64
from .downloads import CHUNK_SIZE, RangedReader
from .objects import ObjectInfo

# Names as in draft-bryan-ftpext-hash (IANA hash names) plus COS's own CRC64.
ALGORITHMS = ("SHA-256", "SHA-1", "SHA-512", "MD5", "CRC32", "CRC64")
_HASHLIB_NAMES = {"SHA-256": "sha256", "SHA-1": "sha1", "SHA-512": "sha512", "MD5": "md5"}
_PLAIN_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


class _Hasher(Protocol):
    def update(self, data: bytes) -> None: ...

    def hexdigest(self) -> str: ...


class _Crc32:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes) -> None:
        self._value = zlib.crc32(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


class _Crc64:
    def __init__(self) -> None:
        self._crc = Crc64()

    def update(self, data: bytes) -> None:
        self._crc.update(data)

    def hexdigest(self) -> str:
        return f"{self._crc.value:016x}"


def _hasher(algorithm: str) -> _Hasher:
    if algorithm == "CRC32":
        return _Crc32()
    if algorithm == "CRC64":
        return _Crc64()
    return hashlib.new(_HASHLIB_NAMES[algorithm])


def stored_digest(info: ObjectInfo, algorithm: str) -> str:
    """Return the lowercase hex ``algorithm`` digest COS already has for ``info``, or ""."""
    if algorithm == "CRC64" and info.crc64 is not None:
        return f"{info.crc64:016x}"
    if algorithm == "MD5" and _PLAIN_MD5.match(info.etag):
        return info.etag.lower()  # a multipart ETag has a "-N" suffix and is no MD5
    return ""


def digest(bucket: Bucket, info: ObjectInfo, algorithm: str) -> str:
    """Return the lowercase hex ``algorithm`` digest of the object ``info``: from what COS
    stored if it can, else by reading the object. Raises ``StorageError``."""
    known = stored_digest(info, algorithm)
    if known:
        return known
    hasher = _hasher(algorithm)
    with RangedReader(bucket, info.key, name=info.key, size=info.size) as reader:
        while chunk := reader.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()
