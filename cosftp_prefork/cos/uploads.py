"""The upload lifecycle: one :class:`UploadSession` per STOR/APPE, streaming to COS.

An upload is a single PUT when it ends within its first part, else a multipart upload whose
parts stream through the worker's :class:`~.engine.Engine` (a :class:`PartStream`: bounded
buffers from the memory budget, explicit part bookkeeping, abort on failure). It never
touches local disk.

pyftpdlib closes the upload file on every way out of a transfer (ABOR, disconnect, timeout,
shutdown) and only afterwards says whether it finished, so the rule is: **``close()``
without a prior successful ``commit()`` never makes an object visible.** The data channel
calls :meth:`UploadSession.commit` when the client finished sending.

States and the transitions the FTP commands cause:

=============  =================================================  ==============
from           event                                              to
=============  =================================================  ==============
(opened)       STOR (its name's look-ups run beside, see naming)  NEW
(opened)       APPE to an empty file                              OVERWRITE
(opened)       APPE to a file, REST n + STOR at its end           APPEND
(opened)       REST n + STOR / SIZE + APPE of a parked upload     RESUME
NEW..RESUME    first data bytes                                   STREAMING
any open       data connection closed cleanly (``commit``)        COMMITTING
COMMITTING     COS stored it, CRC64 matches                       COMMITTED
COMMITTING     client gone meanwhile (``UploadInterrupted``)      STREAMING
COMMITTING     COS failed, or CRC64 mismatch (object deleted)     ABORTED
COMMITTING     the look-ups refuse the name (a speculative PUT    ABORTED
               undone)
any open       ABOR, oversized, refused name, then ``close``      ABORTED
any open       broken transfer ``close``, parking on, a part      PARKED
               stored
any open       broken transfer ``close`` otherwise                ABORTED
RESUME         data connection never came (``abandon``)           PARKED (again)
other open     data connection never came (``abandon``)           ABORTED
=============  =================================================  ==============

Parking (see :mod:`.resume`) keeps the parts that reached COS for a later REST + STOR; while
parking is on, a multipart upload has a live marker from its start to its end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Hashable, Iterator
from concurrent.futures import Future, wait
from typing import Callable, Optional, Union

from .. import metrics
from ..config.model import MIN_PART_SIZE, TransferConfig
from ..errors import (
    FileTooLarge,
    NotFound,
    NotStorable,
    QuotaExceeded,
    ResumeRefused,
    StorageError,
)
from .bucket import Bucket
from .checksum import Crc64, PrefixCrcs, crc64_combine
from .engine import Claim, Engine, Kept, PartPlan
from .intents import Announcement, announce
from .listing import Entry
from .naming import NameChecks
from .objects import Completed, ObjectInfo, PartInfo
from .periodic import Periodic
from .quota import AccountQuota, UploadQuota, replaced_size
from .resume import ParkedUpload, ParkRecord, ResumeStore, leading_parts

log = logging.getLogger(__name__)

MAX_COPY_PART = 5 * 1024 ** 3  # COS's largest part
CLIENT_GONE_GRACE = 0.05  # seconds; see UploadSession._finish_multipart
WAIT_SLICE = 0.05  # seconds between checks while write() waits for a buffer


class UploadState(enum.Enum):
    NEW = "new"
    OVERWRITE = "overwrite"
    APPEND = "append"
    RESUME = "resume"
    STREAMING = "streaming"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"
    PARKED = "parked"


_OPENED = {UploadState.NEW, UploadState.OVERWRITE, UploadState.APPEND, UploadState.RESUME}
_OPEN = _OPENED | {UploadState.STREAMING}
_ENDED = {UploadState.COMMITTED, UploadState.ABORTED, UploadState.PARKED}
TRANSITIONS: dict[UploadState, set[UploadState]] = {
    **{state: {UploadState.STREAMING, UploadState.COMMITTING, UploadState.ABORTED,
               UploadState.PARKED} for state in _OPEN},
    UploadState.COMMITTING: {UploadState.COMMITTED, UploadState.STREAMING,
                             UploadState.ABORTED},
    **{state: set() for state in _ENDED},
}


class UploadInterrupted(Exception):
    """The client vanished before the upload could be committed."""


class AbortRetrier:
    """Retries multipart-upload aborts that failed (COS unreachable) until they succeed, so
    an interrupted upload never stays behind costing storage. One thread per worker."""

    def __init__(self, interval: float = 5.0) -> None:
        self._pending: dict[tuple[str, str], Bucket] = {}
        self._lock = threading.Lock()
        self._periodic = Periodic("abort-retrier", interval, self._retry_all)

    def start(self) -> None:
        self._periodic.start()

    def add(self, bucket: Bucket, key: str, upload_id: str) -> None:
        with self._lock:
            self._pending[(key, upload_id)] = bucket

    def stop(self, deadline: Optional[float] = None) -> None:
        """Stop retrying (see ``Periodic.stop``); log what is still pending so an operator
        can clean it up."""
        self._periodic.stop(deadline)
        for key, upload_id in self._pending:
            log.error("multipart upload %s of %r is still pending in COS; abort it by hand",
                      upload_id, key)

    def _retry_all(self) -> None:
        with self._lock:
            pending = list(self._pending.items())
        for (key, upload_id), bucket in pending:
            self._retry(bucket, key, upload_id)

    def _retry(self, bucket: Bucket, key: str, upload_id: str) -> None:
        try:
            bucket.abort_multipart(key, upload_id)
        except NotFound:
            pass
        except StorageError as exc:
            log.debug("abort of %s still failing: %s", upload_id, exc)
            return
        log.info("aborted multipart upload %s of %r on retry", upload_id, key)
        with self._lock:
            self._pending.pop((key, upload_id), None)


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
        self._futures: list[Future] = []
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
        """Continue after ``parts`` already in COS (a parked upload)."""
        for part in parts:
            self.etags[part.number] = part.etag
            self.part_sizes[part.number] = part.size
        self.next_part = len(parts) + 1
        self.size = size
        self.continue_crc(crc64)

    def copy_first(self, source: ObjectInfo, copier) -> None:
        """Start with the bytes of ``source`` as parts copied inside COS, on ``copier``."""
        self._ensure_started()
        ranges = []
        for first in range(0, source.size, MAX_COPY_PART):
            ranges.append((self.next_part, first, min(source.size, first + MAX_COPY_PART) - 1))
            self.next_part += 1
        futures = [copier.submit(self._bucket.upload_part_copy, self._key, self.upload_id,
                                 number, source, first, last) for number, first, last in ranges]
        for (number, first, last), future in zip(ranges, futures):
            self.etags[number] = future.result()
            self.part_sizes[number] = last - first + 1
        self.size = source.size
        self.continue_crc(source.crc64)

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
        if self._filled or not self.etags:
            self._ship()
        wait(self._futures)
        self.raise_failure()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def settle(self, keep: bool) -> None:
        """Wait for the parts handed to the pool, then free the buffers. With ``keep`` (a
        park) every one is stored, started or not: its bytes were received, and a part that
        was still waiting for a pool thread was lost to the park by the luck of a thread's
        turn. Without it (an abort) those not started are cancelled and those uploading
        waited for: an abort issued before they finish would not remove them.

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
        # A copy first: after a settle cut short, a part thread may still add its part.
        return leading_parts(PartInfo(number, etag, self.part_sizes[number], 0.0)
                             for number, etag in dict(self.etags).items())

    def _buffer_claim(self) -> Claim:
        """The granted claim of the part being filled, waiting for it if need be."""
        if self._claim is None:
            self._claim = self._engine.budget.claim(self._plan.size(self.next_part), self.account)
        while not self._claim.wait(WAIT_SLICE):
            self.raise_failure()
        return self._claim

    def _ensure_started(self) -> None:
        if self.upload_id is None:
            self.upload_id = self._start()

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

    def _part_done(self, claim: Optional[Claim]) -> None:
        if claim is not None:
            self._engine.budget.release(claim)
        with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()


Source = Union[Entry, ParkedUpload]


class UploadSession:
    """A write-only file object that streams to ``key`` in ``bucket`` (see the module doc).

    ``write`` raises ``StorageError`` once any part has failed and ``FileTooLarge`` past
    ``max_size``; ``commit`` raises ``StorageError`` and leaves nothing behind on failure.
    """

    def __init__(self, bucket: Bucket, key: str, *, name: str, state: UploadState,
                 transfer: TransferConfig, engine: Engine, store: ResumeStore,
                 retrier: Optional[AbortRetrier] = None,
                 announced: Optional[int] = None, checks: Optional[NameChecks] = None,
                 quota: Optional[UploadQuota] = None, account: Hashable = None) -> None:
        self.name = name
        self.state = state
        self.announced = announced  # ALLO's size, if the client sent one
        # A new name's look-ups, running while the bytes arrive (see naming).
        self._checks = checks
        self._bucket, self._key, self._store = bucket, key, store
        self._max_size = transfer.single_file_max_size
        self._engine = engine
        self._retrier = retrier
        self._quota = quota  # the bytes reserved in the quotas that count this file
        self._like: Optional[ObjectInfo] = None  # APPE: the object whose attributes to keep
        self._continues: Optional[ObjectInfo] = None  # APPE: the version its bytes came from
        self._announcement: Optional[Announcement] = None  # APPE: no other one meanwhile
        # A STOR's bytes alone make the object: once committed, ``stored`` tells all of it.
        self._from_nothing = state in (UploadState.NEW, UploadState.OVERWRITE)
        # Such an upload's first bytes, for the FTP layer to tell a retry of it that a
        # client cut short (see ftp.retries).
        self.prefix: Optional[PrefixCrcs] = PrefixCrcs() if self._from_nothing else None
        self.stored: Optional[ObjectInfo] = None
        self.stored_body: Optional[Kept] = None  # a single PUT's bytes, see KeptBodies
        # Once committed, whatever the upload was: the key, size, ETag and CRC64 COS has.
        self.committed: Optional[ObjectInfo] = None
        self.resumed = False  # it continues a parked upload
        self._discard = False  # the client gave up on it (ABOR, oversized): never park
        plan = PartPlan.for_upload(transfer.min_part_size, transfer.single_file_max_size,
                                   transfer.max_part_size, announced)
        self._parts = PartStream(bucket, key, plan, engine, transfer.upload_thread_num,
                                 self._start_multipart, account)

    @property
    def closed(self) -> bool:
        return self.state not in _OPEN

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._parts.size

    def writable(self) -> bool:
        return True

    def _move(self, state: UploadState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise ValueError(f"upload {self.name}: no transition from {self.state.value} to "
                             f"{state.value}")
        self.state = state
        if state in _ENDED and self._announcement is not None:
            self._announcement.release()
        if state in _ENDED and self._quota is not None:
            if state is UploadState.COMMITTED:
                self._quota.finish(self._parts.size)
            else:
                self._quota.cancel()

    def room(self, more_coming: Callable[[], bool] = lambda: True,
             ready: Callable[[int], bool] = lambda _size: True) -> int:
        """How many bytes ``write`` takes now without waiting for a buffer (back-pressure:
        while it is 0 the data channel leaves the bytes in its socket); see
        :meth:`PartStream.room`."""
        return 1 if self.closed else self._parts.room(more_coming, ready)

    def hoarding(self, limit: float) -> bool:
        """See :meth:`PartStream.hoarding`."""
        return not self.closed and self._parts.hoarding(limit)

    def write(self, data: bytes) -> int:
        """Stream ``data``; return ``len(data)``."""
        self._check_open()
        self._parts.raise_failure()
        if self._parts.size + len(data) > self._max_size:
            self._discard = True
            raise FileTooLarge(
                f"upload exceeds single_file_max_size ({self._max_size} bytes)", code="TooLarge"
            )
        if self.state is not UploadState.STREAMING:
            self._move(UploadState.STREAMING)
        if self._checks is not None and self._checks.settled():
            self._name_allowed()  # a refused name stops the transfer at once
        if self._quota is not None:
            try:
                self._quota.take(len(data))
            except QuotaExceeded:
                self._discard = True  # undone, never parked
                raise
        self._parts.write(data)
        if self.prefix is not None:
            self.prefix.update(data)
        return len(data)

    def _name_allowed(self) -> None:
        """Wait for the verdict on a new name; ``NotStorable`` if refused (never parked)."""
        try:
            self._checks.allow()
        except NotStorable:
            self._discard = True
            raise

    def announce(self) -> None:
        """Hold an intent on this file until the upload ends, so that no other APPE (or
        directory rename around it) runs meanwhile; raises ``Conflict`` if one does."""
        self._announcement = announce(self._bucket, "append", self._key)

    def continue_object(self, source: ObjectInfo) -> None:
        """Start with the bytes of the stored object ``source`` (APPE, or REST + STOR at its
        end). From 1 MiB on they are copied inside COS; a smaller one cannot be a copied part
        (COS's smallest non-last part), so its few bytes are read and sent again. The new
        object keeps the storage class, encryption, headers and metadata of ``source``."""
        self._like = source.for_new_bytes()
        self._continues = source
        if source.size >= MIN_PART_SIZE:
            self._parts.copy_first(source, self._engine.copier(self._parts.owner,
                                                               self._parts.account))
        elif source.size:
            self._parts.write(self._bucket.read_small(source.key, source.size))

    def resume(self, parked: ParkedUpload) -> None:
        """Continue ``parked``: its parts stay, the bytes written next follow them."""
        self._parts.upload_id = parked.record.upload_id
        self._parts.adopt(parked.parts, parked.size, parked.record.crc64)
        self.resumed = True
        metrics.UPLOADS_RESUMED.inc()
        log.info("path=%s: resuming parked upload %s of %s at byte %d", self.name,
                 parked.record.upload_id, parked.record.user, parked.size)

    def cancel(self) -> None:
        """The client gave up on this upload (ABOR): discard it on close, never park it."""
        self._discard = True

    def abandon(self) -> None:
        """Close an upload whose transfer never started (the client gave up on the data
        connection): a resumed parked upload is parked again as it was, anything else is
        discarded."""
        if self.state is not UploadState.RESUME:
            self._discard = True
        self.close()

    def commit(self, still_wanted: Callable[[float], bool] = lambda _wait: True) -> None:
        """Make the object visible: one PUT if no part was shipped, else complete the upload.

        ``still_wanted(seconds)`` is asked just before the object would become visible, with
        how long it may wait for a sign that the client is gone; if it says no,
        ``UploadInterrupted`` is raised and the upload stays open, for ``close()`` to park
        or abort. On any other failure the upload is aborted and ``StorageError`` raised.

        A STOR that commits sets :attr:`stored` from COS's answer: the key, size and ETag of
        the new object, and the attributes the upload gave it (none: COS's defaults), all
        that a copy of it must keep (see ``mtimes.set_client_mtime``). Its time is not
        known (COS answers a PUT with none): ``mtime`` is 0. One stored with a single PUT
        keeps its bytes in :attr:`stored_body` where the worker's
        :class:`.engine.KeptBodies` has room: a rename right after it stores them again.
        """
        self._check_open()
        self._move(UploadState.COMMITTING)
        if self._quota is not None:
            self._quota.before_commit()
        try:
            if self._parts.upload_id is None:
                if not still_wanted(0.0):
                    raise UploadInterrupted(self.name)
                self._check_unchanged()
                body, sent = self._parts.take_body()
                if self._checks is None:
                    reported = self._bucket.put(self._key, body, self._like)
                else:
                    reported = self._checks.put(self._bucket, self._key, body, self._like)
                self._parts.drop_buffer()
                if self._from_nothing:  # an attribute, not a local: see KeptBodies
                    self.stored_body = self._engine.kept.keep(body)
            else:
                reported = self._finish_multipart(still_wanted)
                sent = self._parts.crc_through(self._parts.next_part - 1)
        except UploadInterrupted:
            self._move(UploadState.STREAMING)
            raise
        except BaseException:
            self._abort()
            raise
        self._unmark()
        self._verify(sent, reported.crc64)
        self._move(UploadState.COMMITTED)
        self.committed = ObjectInfo(self._key, self._parts.size, 0.0, reported.etag,
                                    reported.crc64)
        if self._from_nothing and reported.etag:  # no ETag: nothing to pin a copy to
            self.stored = self.committed
        log.info("path=%s: stored %d bytes", self.name, self._parts.size)

    def _verify(self, sent: Optional[int], reported: Optional[int]) -> None:
        """Compare the CRC64 of what the client sent with what COS stored (each part was
        checked already; this catches parts mixed up or missing in the object).

        A mismatch means COS holds other bytes than the client sent: delete the object
        rather than serve it, and fail the transfer.
        """
        if reported is None or sent is None or reported == sent:
            return
        self._move(UploadState.ABORTED)
        log.error("path=%s: CRC64 mismatch: sent %d, COS reports %d; deleting the object",
                  self.name, sent, reported)
        self._bucket.delete(self._key)
        raise StorageError(f"integrity check failed for {self.name}: CRC64 of the data "
                           "received differs from the stored object's", code="CRC64Mismatch")

    def close(self) -> None:
        """Park or abort unless :meth:`commit` succeeded; idempotent."""
        if self.closed:
            return
        if self._checks is not None:  # a parked upload needs no verdict: its look-ups end
            self._checks.cancel()
        if self._store.enabled and not self._discard and self._parts.upload_id and self._park():
            return
        log.warning("path=%s: upload aborted after %d bytes; nothing stored", self.name,
                    self._parts.size)
        self._abort()

    def _park(self) -> bool:
        """Keep the parts that reached COS for a later REST + STOR; False if none did or the
        record cannot be written (the caller then aborts)."""
        self._parts.settle(keep=True)
        stored = self._parts.stored_parts()
        if not stored:
            return False
        resumable = sum(part.size for part in stored)
        upload_id = self._parts.upload_id or ""
        record = ParkRecord(user=self._store.user, path=self.name, key=self._key,
                            upload_id=upload_id, size=resumable, parts=len(stored),
                            crc64=self._parts.crc_through(len(stored)))
        try:
            self._store.park(record)
        except StorageError as exc:
            log.error("path=%s: cannot park upload %s: %s", self.name, upload_id, exc)
            return False
        self._move(UploadState.PARKED)
        metrics.UPLOADS_PARKED.inc()
        log.warning("path=%s: upload interrupted after %d bytes; parked %d bytes as upload %s for "
                    "%ds: REST %d + STOR continues it", self.name, self._parts.size, resumable,
                    upload_id, self._store.ttl, resumable)
        return True

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed upload")

    def _start_multipart(self) -> str:
        upload_id = self._bucket.create_multipart(self._key, self._like)
        self._store.started(self._key, upload_id, self.name)
        return upload_id

    def _unmark(self) -> None:
        """The multipart upload ended: drop its live marker (see :mod:`.resume`)."""
        if self._parts.upload_id:
            self._store.ended(self._key, self._parts.upload_id)

    def _finish_multipart(self, still_wanted: Callable[[float], bool]) -> Completed:
        # A killed client closes its data and control connections a moment apart, in either
        # order; the last parts' upload time is spent waiting for the control one to close.
        grace_ends = time.monotonic() + CLIENT_GONE_GRACE
        self._parts.finish()
        if not still_wanted(max(0.0, grace_ends - time.monotonic())):
            raise UploadInterrupted(self.name)
        if self._checks is not None:
            self._name_allowed()
        self._check_unchanged()
        parts = sorted(self._parts.etags.items())
        return self._bucket.complete_multipart(self._key, self._parts.upload_id or "",
                                               parts)

    def _check_unchanged(self) -> None:
        """Before an upload that continues a stored object (APPE) replaces it: raise
        ``StorageError`` (``ObjectChanged``) if the object is no longer the version whose
        bytes it took. Two APPEs of one file at once would otherwise both succeed, and the
        file keep only the last one's bytes. COS has no conditional completion: a write in
        the moment between this HEAD and the completion still goes unnoticed."""
        source = self._continues
        if source is None or not source.etag:
            return
        try:
            now = self._bucket.head(self._key).etag
        except NotFound:
            now = ""
        if now != source.etag:
            raise StorageError(f"{self.name} was changed by another session while this append "
                               "ran; nothing was appended, try again", code="ObjectChanged")

    def _abort(self) -> None:
        if self.state is not UploadState.ABORTED:
            self._move(UploadState.ABORTED)
        if self._checks is not None:
            self._checks.cancel()
        self._parts.settle(keep=False)
        upload_id = self._parts.upload_id
        if upload_id is None:
            return
        try:
            self._bucket.abort_multipart(self._key, upload_id)
        except NotFound:
            pass
        except StorageError as exc:
            log.error("path=%s: could not abort multipart upload %s: %s; will retry", self.name,
                      upload_id, exc)
            if self._retrier is not None:
                self._retrier.add(self._bucket, self._key, upload_id)
            return  # the live marker stays, for the janitor should the retries not succeed
        self._unmark()


class SessionUploads:
    """Opens the uploads of one FTP session and decides what each continues: nothing, the
    stored file, or a parked upload. Holds the one fact that links two commands: the parked
    upload a SIZE reported, which a following APPE continues (``curl -C -``)."""

    def __init__(self, bucket: Bucket, transfer: TransferConfig, engine: Engine,
                 store: ResumeStore, retrier: Optional[AbortRetrier] = None,
                 quota: Optional[AccountQuota] = None, account: Hashable = None) -> None:
        self._bucket, self._transfer, self._engine = bucket, transfer, engine
        self._store, self._retrier, self._quota = store, retrier, quota
        self._account = account  # the FTP user: its uploads share one share of the engine
        self._offered: Optional[tuple[str, str]] = None  # (path, upload id) SIZE reported

    def source(self, path: str, key: str, entry: Optional[Entry]) -> Optional[Source]:
        """What an upload to ``path`` would continue: the parked upload if it is newer than
        the file ``entry``, else the file, else None. A parked upload not newer than the
        file is discarded: the file was written since."""
        parked = self._store.find(key)
        if parked is None or entry is None or parked.parked_at > entry.mtime:
            return parked or entry
        # COS times have whole seconds: in a tie, the file is what the client last saw, and
        # the parked upload can no longer be reached either way.
        self._store.discard(parked)
        return entry

    def offer(self, path: str, source: Optional[Source]) -> None:
        """SIZE reported ``source``: an APPE next continues it if it is a parked upload."""
        if isinstance(source, ParkedUpload):
            self._offered = (path, source.record.upload_id)

    def new(self, path: str, key: str, overwrite: bool = False,
            announced: Optional[int] = None,
            checks: Optional[NameChecks] = None) -> UploadSession:
        """An upload that starts from nothing (STOR); with ``checks``, of a name whose
        look-ups run while its bytes arrive (whether a file has it is not known yet)."""
        if overwrite:  # APPE to an empty file: it stays one file
            return self._session(path, key, UploadState.OVERWRITE, announced, checks,
                                 Counted(new_file=False, replaced=lambda: 0))
        return self._session(path, key, UploadState.NEW, announced, checks,
                             Counted(new_file=True))

    def append(self, path: str, key: str, existing: Optional[Entry],
               announced: Optional[int] = None) -> UploadSession:
        """APPE: the existing object's bytes (copied inside COS), then the client's; or,
        right after SIZE reported a parked upload, that upload. The old object stays as it
        is until the new one commits."""
        parked = self._offered_parked(path, key, existing)
        if parked is not None:
            return self._resumed(path, key, parked, announced)
        if existing is None or existing.size == 0:
            return self.new(path, key, existing is not None, announced)
        return self._continued(path, key, existing.size, announced, checked=False)

    def at_offset(self, path: str, key: str, entry: Optional[Entry], offset: int,
                  announced: Optional[int] = None) -> UploadSession:
        """REST ``offset`` + STOR: continue the parked upload or the file ending at
        ``offset``; raises ``ResumeRefused`` otherwise."""
        source = self.source(path, key, entry)
        stored = source.size if source is not None else 0
        if source is None or stored != offset:
            raise ResumeRefused(f"Cannot resume at byte {offset}: the stored part of this "
                                f"file ends at byte {stored}")
        if isinstance(source, ParkedUpload):
            return self._resumed(path, key, source, announced)
        return self._continued(path, key, offset, announced)

    def _offered_parked(self, path: str, key: str,
                        existing: Optional[Entry]) -> Optional[ParkedUpload]:
        """The parked upload this session's SIZE reported for ``path``, if it is still what
        an upload would continue; else None (a plain APPE asks COS nothing more)."""
        if self._offered is None or self._offered[0] != path:
            return None
        source = self.source(path, key, existing)
        if isinstance(source, ParkedUpload) and source.record.upload_id == self._offered[1]:
            return source
        return None

    def _session(self, path: str, key: str, state: UploadState,
                 announced: Optional[int], checks: Optional[NameChecks],
                 counted: Counted) -> UploadSession:
        """The upload, its first bytes reserved in the quotas that count it (raises
        ``QuotaExceeded`` before anything is stored or claimed)."""
        quota = None
        if self._quota is not None and self._quota.counts(key):
            replaced = counted.replaced
            if replaced is None:  # what the file replaces, asked beside its bytes
                replaced = replaced_size(self._engine.lookups.for_owner(self).submit(
                    self._bucket.head, key))
            quota = self._quota.upload(key, counted.new_file, counted.base, announced,
                                       replaced)
        return UploadSession(self._bucket, key, name=path, state=state,
                             transfer=self._transfer, engine=self._engine, store=self._store,
                             retrier=self._retrier, announced=announced, checks=checks,
                             quota=quota, account=self._account)

    def _resumed(self, path: str, key: str, parked: ParkedUpload,
                 announced: Optional[int]) -> UploadSession:
        """An upload that continues ``parked``, taken away from other sessions first."""
        upload = self._session(path, key, UploadState.RESUME, announced, None,
                               Counted(new_file=True, base=parked.size))
        with _given_up_on_failure(upload):
            self._store.claim(parked)
        upload.resume(parked)
        return upload

    def _continued(self, path: str, key: str, size: int, announced: Optional[int],
                   checked: bool = True) -> UploadSession:
        """An upload that starts with the bytes of the stored file ``key``, which must be
        ``size`` bytes long if ``checked`` (REST + STOR at its end)."""
        upload = self._session(path, key, UploadState.APPEND, announced, None,
                               Counted(new_file=False, replaced=lambda: size))
        with _given_up_on_failure(upload):
            upload.announce()
            existing = self._bucket.head(key)
            if checked and existing.size != size:
                raise ResumeRefused(f"{path} changed while resuming; try again")
            upload.continue_object(existing)
        return upload


@dataclasses.dataclass(frozen=True)
class Counted:
    """How the quotas count an upload: whether it makes a file more (unless one of its name
    is there), the bytes of it already in COS but not counted (a parked upload's), and the
    size of the file it replaces (None: asked of COS beside the bytes)."""

    new_file: bool
    base: int = 0
    replaced: Optional[Callable[[], Optional[int]]] = None


@contextlib.contextmanager
def _given_up_on_failure(upload: UploadSession) -> Iterator[UploadSession]:
    """Discard ``upload`` (nothing is parked) if setting it up fails."""
    try:
        yield upload
    except BaseException:
        upload.cancel()
        upload.close()
        raise
