"""CRC64-ECMA as COS computes it (``x-cos-hash-crc64ecma``), incrementally.

COS's CRC64-ECMA is CRC-64/XZ (reflected ECMA-182 polynomial, all-ones init and xorout;
check value 0x995DC9BBDF1939FA). fastcrc computes it at ~9.8 GiB/s here, against ~340 MiB/s
for crcmod's C extension, which on the upload path cost a quarter of a core.
"""

from __future__ import annotations

from typing import Optional

from fastcrc import crc64 as _crc64


def crc64(data: bytes) -> int:
    """CRC64 of ``data``."""
    return _crc64.xz(data)


class Crc64:
    """Running CRC64 of the bytes fed to :meth:`update`."""

    def __init__(self, initial: Optional[int] = None) -> None:
        """``initial``: the CRC64 of bytes that come before, to continue from (APPE)."""
        self._value = initial

    def update(self, data: bytes) -> None:
        self._value = _crc64.xz(data) if self._value is None else _crc64.xz(data, self._value)

    @property
    def value(self) -> int:
        return _crc64.xz(b"") if self._value is None else self._value
