"""Part bookkeeping of one multipart upload: the bytes of an upload, part by part, in
buffers claimed from the worker's budget, through the engine's part pool to COS."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable
from concurrent.futures import Future, wait
from typing import Callable, Optional

from .bucket import Bucket
from .checksum import Crc64, crc64_combine
from .engine import Claim, Engine, OwnerExecutor, PartPlan
from .objects import ObjectInfo, PartInfo
from .resume import leading_parts

log = logging.getLogger(__name__)

MAX_COPY_PART = 5 * 1024 ** 3  # COS's largest part
WAIT_SLICE = 0.05  # seconds between checks while write() waits for a buffer


def copy_ranges(size: int) -> list[tuple[int, int]]:
    """The (first, last) byte ranges, as few and as even as COS allows, in which the ``size``
    bytes of an object are copied as parts: each at most ``MAX_COPY_PART``, and none a tail
    under COS's 1 MiB smallest part (5 GiB + 100 bytes in ranges of 5 GiB left a 100-byte
    part that CompleteMultipartUpload would refuse)."""
    count = -(-size // MAX_COPY_PART)
    step = -(-size // count) if count else 0
    return [(first, min(size, first + step) - 1) for first in range(0, size, step or 1)]


class PartStream:
    """The bytes of one upload on their way to COS, part by part.

    A part is the list of data-channel reads that filled it, sent as they are (no copy).

    The part being filled is held in a buffer claimed from the worker's budget before its
    first byte is taken; a full part is shipped to the engine's part pool when more bytes
    follow, and its claim is given back once COS acknowledged it (or it failed). At most
    ``max_in_flight`` parts of one upload are queued or uploading at once.

    No upload ever waits for a claim while it holds a buffer (a full one is shipped first):
    with every waiter holding nothing, the parts in flight always free the budget again.

    :meth:`room` says, without blocking, how many bytes can be taken now (the data channel
    stops reading its socket while it is 0); :meth:`write` waits instead.
    """

    def __init__(self, bucket: Bucket, key: str, plan: PartPlan, engine: Engine,
                 max_in_flight: int, start: Callable[[], str],
                 account: Hashable = None) -> None:
        self._bucket, self._key, self._plan, self._engine = bucket, key, plan, engine
        self.account = account  # whose share of the engine's turns and budget it takes
        self._max_in_flight = max_in_flight
        self._start = start  # begins the multipart upload, returns its id
        self.upload_id: Optional[str] = None
        self.next_part = 1  # the number the part being filled will have
        self.etags: dict[int, str] = {}
        self.part_sizes: dict[int, int] = {}
        # The CRC64 of the bytes up to and including part ``_base_part`` (None: unknown, no
        # integrity check), then each later part's own CRC64, checked against COS's.
        self._base_crc: Optional[int] = 0
        self._base_part = 0
        self.part_crcs: dict[int, int] = {}
        self.size = 0
        self._chunks: list[bytes] = []
        self._filled = 0
        self._claim: Optional[Claim] = None  # the buffer of the part being filled
        self._futures: list[Future] = []  # the parts shipped and the copies sent
        # copy_first's source, copier and (number, first byte, last byte) of each copy,
        # until the upload starts.
        self._to_copy: Optional[tuple[ObjectInfo, OwnerExecutor, list[tuple[int, int, int]]]] \
            = None
        # The sizes of parts 1..c, copies of the version this upload continues: a park keeps
        # them whether COS made them or not (a stop may cut a copy short).
        self.copied: tuple[int, ...] = ()
        self._in_flight = 0
        self._changed = threading.Condition()
        self.failure: Optional[BaseException] = None

    @property
    def owner(self) -> Hashable:
        """Whose turn the engine's pools serve within its account's: this upload."""
        return self

    def room(self, more_coming: Callable[[], bool],
             ready: Callable[[int], bool] = lambda _size: True) -> int:
        """How many bytes :meth:`write` takes now without waiting (0: wait for a buffer).
        ``more_coming()`` tells a full part from the last one: only when bytes follow it
        is it shipped, so that a file of exactly one part stays a single PUT. ``ready(size)``
        says whether the bytes that would claim a buffer of ``size`` for the next part are
        there; if not, nothing is claimed yet (0)."""
        if self.failure is not None:
            return 1  # write() raises it
        claim = self._claim
        if claim is not None and claim.granted:
            if claim.size > self._filled:
                return claim.size - self._filled
            if not more_coming():
                return 1  # the end of the file
            with self._changed:
                if self._in_flight >= self._max_in_flight:
                    return 0
            self._ship()
        if self._claim is None:
            size = self._plan.size(self.next_part)
            if not ready(size):
                return 0
            self._claim = self._engine.budget.claim(size, self.account)
        return self._claim.size - self._filled if self._claim.granted else 0

    def hoarding(self, limit: float) -> bool:
        """Whether the buffer of the part being filled has been held, not yet full, for
        more than ``limit`` seconds while other uploads wait for one."""
        claim = self._claim
        return claim is not None and claim.granted and self._filled < claim.size and \
            time.monotonic() - claim.granted_at > limit and self._engine.budget.contended

    def write(self, data: bytes) -> None:
        """Take ``data``, shipping each part once bytes follow it; waits for buffers."""
        if self._to_copy is not None:
            self._ensure_started()
        view, taken = memoryview(data), 0
        while taken < len(data):
            self.raise_failure()
            claim = self._buffer_claim()
            room = claim.size - self._filled
            if room == 0:
                self._ship()
                continue
            whole = taken == 0 and len(data) <= room and isinstance(data, bytes)
            piece = data if whole else bytes(view[taken:taken + room])
            self._chunks.append(piece)
            self._filled += len(piece)
            self.size += len(piece)
            taken += len(piece)

    def adopt(self, parts: tuple[PartInfo, ...], size: int, crc64: Optional[int]) -> None:
        """Continue after ``parts`` (a parked upload's): those with an ETag are in COS, the
        others copies still to be made (:meth:`copy_again`)."""
        for part in parts:
            if part.etag:
                self.etags[part.number] = part.etag
            self.part_sizes[part.number] = part.size
        self.next_part = len(parts) + 1
        self.size = size
        self.continue_crc(crc64)

    def copy_first(self, source: ObjectInfo, copier: OwnerExecutor) -> None:
        """Start with the bytes of ``source`` as parts copied inside COS, on ``copier``.

        Only their numbers, sizes and CRC64 are taken now: the copies are sent when the
        upload starts (its first bytes, or :meth:`finish` for none), so that an APPE is
        answered without waiting for them and one given up before a byte costs no copy.
        They then run while the bytes arrive; :meth:`finish` and :meth:`settle` wait for
        them as for the parts."""
        ranges = []
        for first, last in copy_ranges(source.size):
            ranges.append((self.next_part, first, last))
            self.part_sizes[self.next_part] = last - first + 1
            self.next_part += 1
        self.size = source.size
        self.continue_crc(source.crc64)
        self.copied = tuple(last - first + 1 for _, first, last in ranges)
        self._to_copy = (source, copier, ranges)

    def copy_again(self, source: ObjectInfo, sizes: tuple[int, ...],
                   copier: OwnerExecutor) -> None:
        """A parked upload adopted (:meth:`adopt`) begins with parts of ``sizes``, copies of
        ``source`` (the version it continues): those COS does not hold (a stop cut their
        copy short) are copied again, pinned to its ETag, once the upload goes on, as
        :meth:`copy_first` sends its copies."""
        ranges, first = [], 0
        for number, size in enumerate(sizes, start=1):
            ranges.append((number, first, first + size - 1))
            first += size
        self.copied = sizes
        missing = [item for item in ranges if item[0] not in self.etags]
        if missing:
            self._to_copy = (source, copier, missing)

    @property
    def multipart(self) -> bool:
        """Whether the upload is a multipart one: started, or to start with copied parts."""
        return self.upload_id is not None or self._to_copy is not None

    def continue_crc(self, crc64: Optional[int]) -> None:
        """Go on from the CRC64 of the bytes already in place; without it (an object stored
        by something that reports none) the integrity check is skipped for this upload."""
        self._base_crc, self._base_part = crc64, self.next_part - 1

    def crc_through(self, last_part: int) -> Optional[int]:
        """The CRC64 of the bytes up to and including part ``last_part``, combined from the
        parts' own CRC64s; None if the bytes before this upload's parts have none."""
        value = self._base_crc
        for number in range(self._base_part + 1, last_part + 1):
            if value is None:
                return None
            value = crc64_combine(value, self.part_crcs[number], self.part_sizes[number])
        return value

    def take_body(self) -> tuple[bytes, Optional[int]]:
        """The buffered bytes as one body (for a single PUT) and their CRC64 (None: no
        integrity check)."""
        chunks, self._chunks, self._filled = self._chunks, [], 0
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        base = self._base_crc
        if base is None:
            return body, None
        crc = Crc64(base)  # continued over the body in C: combining costs 12 us in Python
        crc.update(body)
        return body, crc.value

    def finish(self) -> None:
        """Ship what is buffered as the last part and wait for every part; raises the
        first part failure."""
        if self._filled or self.next_part == 1:
            self._ship()
        self._ensure_started()  # the copies of an APPE that got no byte
        wait(self._futures)
        self.raise_failure()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def settle(self, keep: bool) -> None:
        """Wait for the parts handed to the pool and the copies sent, then free the
        buffers. With ``keep`` (a park) every one is stored, started or not: its bytes were
        received, and a part that was still waiting for a pool thread was lost to the park
        by the luck of a thread's turn. Without it (an abort) those not started are
        cancelled and those running waited for: an abort issued before they finish would
        not remove them.

        In a stopping worker the wait ends at the stop's deadline (``Engine.hurry``): the
        parts COS has not stored by then are left out (those not started are cancelled), so
        that the upload is still parked with those it did store before the worker exits."""
        futures = self._futures if keep else [future for future in self._futures
                                              if not future.cancel()]
        unsettled = wait(futures, timeout=self._engine.settle_timeout()).not_done
        if unsettled:
            for future in unsettled:
                future.cancel()
            log.warning("key=%s: %d parts not stored by the stop's deadline; going on "
                        "without them", self._key, len(unsettled))
        self.drop_buffer()

    def drop_buffer(self) -> None:
        self._chunks, self._filled = [], 0
        if self._claim is not None:
            self._engine.budget.release(self._claim)
        self._claim = None

    def stored_parts(self) -> list[PartInfo]:
        """Parts 1..k for a park (see ``leading_parts``): those COS holds, and the copies of
        the version this upload continues whether COS made them or not (ETag "": a stop's
        deadline cut them short; a resume copies them again); none unless they hold every
        byte this upload continues (an APPE's copied parts, a parked upload's): the CRC64
        those bytes came with is that of all of them."""
        # A copy first: after a settle cut short, a part thread may still add its part.
        etags = dict(self.etags)
        numbers = set(etags) | set(range(1, len(self.copied) + 1))
        run = leading_parts(PartInfo(number, etags.get(number, ""), self.part_sizes[number],
                                     0.0) for number in numbers)
        return run if len(run) >= self._base_part else []

    def _buffer_claim(self) -> Claim:
        """The granted claim of the part being filled, waiting for it if need be."""
        if self._claim is None:
            self._claim = self._engine.budget.claim(self._plan.size(self.next_part), self.account)
        while not self._claim.wait(WAIT_SLICE):
            self.raise_failure()
        return self._claim

    def _ensure_started(self) -> None:
        """Begin the multipart upload if need be, then send the copies of :meth:`copy_first`
        (not waited for: their futures join the parts')."""
        if self.upload_id is None:
            self.upload_id = self._start()
        if self._to_copy is not None:
            source, copier, ranges = self._to_copy
            self._to_copy = None
            self._futures.extend(copier.submit(self._copy_part, number, source, first, last)
                                 for number, first, last in ranges)

    def _ship(self) -> None:
        """Hand the buffered part to the part pool; its claim goes with it."""
        self._ensure_started()
        with self._changed:
            while self._in_flight >= self._max_in_flight and self.failure is None:
                self._changed.wait(WAIT_SLICE)
            self.raise_failure()
            self._in_flight += 1
        number, claim = self.next_part, self._claim
        self.next_part += 1
        self._claim = None
        chunks, self._chunks, self._filled = self._chunks, [], 0
        self.part_sizes[number] = sum(len(chunk) for chunk in chunks)
        future = self._engine.parts.submit(self.owner, self._upload_part, number, chunks,
                                           account=self.account)
        future.add_done_callback(lambda _f: self._part_done(claim))
        self._futures.append(future)

    def _upload_part(self, number: int, chunks: list[bytes]) -> None:
        try:
            part = self._bucket.upload_part(self._key, self.upload_id or "", number, chunks)
            self.part_crcs[number] = part.crc64
            self.etags[number] = part.etag
        except BaseException as exc:
            self.failure = self.failure or exc
            raise

    def _copy_part(self, number: int, source: ObjectInfo, first: int, last: int) -> None:
        try:
            self.etags[number] = self._bucket.upload_part_copy(
                self._key, self.upload_id or "", number, source, first, last)
        except BaseException as exc:
            self.failure = self.failure or exc
            raise

    def _part_done(self, claim: Optional[Claim]) -> None:
        if claim is not None:
            self._engine.budget.release(claim)
        with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()
