"""CRC64-ECMA as COS computes it (``x-cos-hash-crc64ecma``), incrementally.

COS's CRC64-ECMA is CRC-64/XZ (reflected ECMA-182 polynomial, all-ones init and xorout;
check value 0x995DC9BBDF1939FA). fastcrc computes it at ~9.8 GiB/s here, against ~340 MiB/s
for crcmod's C extension, which on the upload path cost a quarter of a core.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Optional

from fastcrc import crc64 as _crc64

_POLY = 0xC96C5795D7870F42  # ECMA-182, reflected
_TOP = 1 << 63  # x^0 in the reflected representation


def crc64(data: bytes) -> int:
    """CRC64 of ``data``."""
    return _crc64.xz(data)


def crc64_of(chunks: Iterable[bytes]) -> int:
    """CRC64 of the bytes of ``chunks`` one after the other (no copy is made)."""
    crc = Crc64()
    for chunk in chunks:
        crc.update(chunk)
    return crc.value


def _multiply(a: int, b: int) -> int:
    """a(x) * b(x) modulo the polynomial, both reflected (zlib's ``multmodp``)."""
    product, mask = 0, _TOP
    while a:
        if a & mask:
            product ^= b
            a ^= mask
        mask >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _powers() -> list[int]:
    """x^(2^k) modulo the polynomial, for k = 0..63."""
    powers, power = [], _TOP >> 1  # x^1
    for _ in range(64):
        powers.append(power)
        power = _multiply(power, power)
    return powers


_X2N = _powers()


def crc64_combine(first: int, second: int, second_length: int) -> int:
    """CRC64 of A + B from ``first`` = CRC64(A), ``second`` = CRC64(B) and len(B), without
    the bytes (zlib's ``crc32_combine`` method: shift CRC64(A) by 8 * len(B) bits)."""
    shift, k, n = _TOP, 3, second_length  # x^(8n): start at x^(2^3)
    while n:
        if n & 1:
            shift = _multiply(_X2N[k % 64], shift)
        n >>= 1
        k += 1
    return _multiply(shift, first) ^ second


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


class PrefixCrcs:
    """The CRC64 of a stream's first bytes at every ``step`` bytes, up to ``limit`` bytes:
    enough to tell whether a later, shorter stream is a prefix of this one (two sets of
    these compared at the shorter one's length) without keeping the bytes. 8 bytes per step:
    16 KiB for the default 8 MiB."""

    def __init__(self, step: int = 4096, limit: int = 8 * 1024 * 1024) -> None:
        self.length = 0  # every byte fed, also those past ``limit``
        self._step, self._limit = step, limit
        self._crc = Crc64()  # of the bytes fed up to ``limit``
        self._marks = array("Q")

    def update(self, data: bytes) -> None:
        start = self.length
        self.length += len(data)
        end, step = min(self.length, self._limit), self._step
        at = start
        with memoryview(data) as view:  # the pieces are not copied
            while at < end:
                stop = min(end, (at // step + 1) * step)
                self._crc.update(view[at - start:stop - start])
                if stop % step == 0:
                    self._marks.append(self._crc.value)
                at = stop

    @property
    def full(self) -> bool:
        """Whether ``limit`` bytes were fed: later bytes count by their number alone
        (``skip``)."""
        return self.length >= self._limit

    def skip(self, count: int) -> None:
        """Count ``count`` more bytes, unseen; raises ``ValueError`` unless ``full``."""
        if not self.full:
            raise ValueError("the bytes within the limit must be fed, not skipped")
        self.length += count

    def at(self, length: int) -> Optional[int]:
        """The CRC64 of the first ``length`` bytes; None unless ``length`` is a positive
        multiple of the step within the bytes fed and the limit."""
        if length <= 0 or length % self._step or length // self._step > len(self._marks):
            return None
        return self._marks[length // self._step - 1]
