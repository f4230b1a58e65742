"""Streaming upload of one object: single PUT when small, parallel multipart when large.

The writer follows one rule that pyftpdlib forces on us: **``close()`` without a prior
``commit()`` never makes an object visible**. pyftpdlib closes the upload file on every path
out of a transfer (client ABOR, disconnect, timeout, server shutdown) and only afterwards
reports whether the transfer finished, so the data channel calls
:meth:`MultipartWriter.commit` explicitly when the client finished sending. Nothing becomes a
visible object unless all of its bytes arrived.

Any other ``close()`` parks the upload when ``resume_ttl`` allows it and at least one part
reached COS (see :mod:`.resume`; :meth:`MultipartWriter.resume` continues it for REST n +
STOR), and aborts it otherwise. A client's ABOR and an oversized upload are always aborted.
While parking is on, a multipart upload has a live marker from its start to its end, so the
janitor can tell it from another tool's.

Memory bound: at most ``max_in_flight`` parts are queued or uploading per upload plus the one
being filled, i.e. ``(max_in_flight + 1) * part_size`` bytes plus one data-channel read.
``write`` blocks (back-pressure on the data channel) while that many parts are outstanding.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor, Future, wait
from typing import Callable, Optional

from . import metrics
from .checksum import Crc64
from .config import MIN_PART_SIZE
from .errors import FileTooLarge, NotFound, StorageError
from .resume import ParkedUpload, ParkRecord, leading_parts, mark_live, park, unmark_live
from .storage import Bucket, ObjectInfo, PartInfo

log = logging.getLogger(__name__)

MAX_COPY_PART = 5 * 1024 ** 3  # COS's largest part
CLIENT_GONE_GRACE = 0.05  # seconds; see _finish_multipart


class AbortRetrier:
    """Retries multipart-upload aborts that failed (COS unreachable) until they succeed, so
    an interrupted upload never stays behind costing storage. One thread per worker."""

    def __init__(self, interval: float = 5.0) -> None:
        self._interval = interval
        self._pending: dict[tuple[str, str], Bucket] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="abort-retrier", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, bucket: Bucket, key: str, upload_id: str) -> None:
        with self._lock:
            self._pending[(key, upload_id)] = bucket

    def stop(self) -> None:
        """Stop retrying; log what is still pending so an operator can clean it up."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for key, upload_id in self._pending:
            log.error("multipart upload %s of %r is still pending in COS; abort it by hand",
                      upload_id, key)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
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


class UploadInterrupted(Exception):
    """The client vanished before the upload could be committed."""


class MultipartWriter:
    """A write-only file object that streams to ``key`` in ``bucket``.

    ``write`` raises ``StorageError`` once any part has failed and ``FileTooLarge`` past
    ``max_size``; ``commit`` raises ``StorageError`` and leaves nothing behind on failure.
    """

    def __init__(
        self,
        bucket: Bucket,
        key: str,
        *,
        name: str,
        part_size: int,
        max_size: int,
        executor: Executor,
        max_in_flight: int,
        log_context: str = "",
        retrier: Optional[AbortRetrier] = None,
        resume_ttl: float = 0,
        owner: str = "",
    ) -> None:
        self.name = name
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        self._max_size = max_size
        self._executor = executor
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._ctx = log_context or key
        self._retrier = retrier
        self._resume_ttl = resume_ttl
        self._owner = owner  # the FTP user, recorded when the upload is parked
        self._like: Optional[ObjectInfo] = None  # APPE: the object whose attributes to keep
        self._discard = False  # True: never park (ABOR, oversized)
        self._resumed = False  # continues a parked upload
        self._buffer = bytearray()
        # CRC64 of the bytes shipped so far, and its value after each part: a parked
        # upload records the one at the end of the parts it keeps.
        self._crc: Optional[Crc64] = Crc64()
        self._crc_after: dict[int, int] = {}
        self._size = 0
        self._upload_id: Optional[str] = None
        self._next_part = 1
        self._futures: list[Future] = []
        self._etags: dict[int, str] = {}
        self._part_sizes: dict[int, int] = {}
        self._failure: Optional[BaseException] = None
        self._state = "open"  # open -> committed | aborted | parked

    @property
    def closed(self) -> bool:
        return self._state != "open"

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        """Buffer ``data``, shipping every full part; return ``len(data)``."""
        self._check_open()
        self._raise_part_failure()
        if self._size + len(data) > self._max_size:
            self._discard = True
            raise FileTooLarge(
                f"upload exceeds single_file_max_size ({self._max_size} bytes)", code="TooLarge"
            )
        self._size += len(data)
        self._buffer += data
        # Strictly more than a part: a file of exactly one part stays a single PUT.
        while len(self._buffer) > self._part_size:
            # One copy into the bytes the SDK needs (it only computes Content-MD5 for bytes);
            # deleting from the front of a bytearray does not move the rest.
            with memoryview(self._buffer) as view:
                part = bytes(view[: self._part_size])
            del self._buffer[: self._part_size]
            self._submit_part(part)
        return len(data)

    def begin_with_copy(self, source: ObjectInfo) -> None:
        """Start the object with the bytes of ``source`` copied inside COS (for APPE).

        ``source`` must be at least 1 MiB (COS's smallest non-last part). Without its CRC64
        the integrity check cannot cover the copied bytes and is skipped for this upload.
        """
        self._start_multipart()
        for first in range(0, source.size, MAX_COPY_PART):
            last = min(source.size, first + MAX_COPY_PART) - 1
            number = self._next_part
            self._next_part += 1
            self._etags[number] = self._bucket.upload_part_copy(
                self._key, self._upload_id, number, source, first, last)
            self._part_sizes[number] = last - first + 1
        self._size = source.size
        self._continue_crc(source.crc64)

    def continue_object(self, source: ObjectInfo) -> None:
        """Start with the bytes of the stored object ``source`` (APPE, or REST + STOR at its
        end). From 1 MiB on they are copied inside COS; a smaller one cannot be a copied part
        (COS's smallest non-last part), so its few bytes are read and sent again. The new
        object keeps the storage class, encryption, headers and metadata of ``source``."""
        self._like = source.for_new_bytes()
        if source.size >= MIN_PART_SIZE:
            self.begin_with_copy(source)
        elif source.size:
            self.write(self._bucket.read_small(source.key, source.size))

    def resume(self, parked: ParkedUpload) -> None:
        """Continue ``parked``: its parts stay, the bytes written next follow them."""
        self._upload_id = parked.record.upload_id
        self._resumed = True
        for part in parked.parts:
            self._etags[part.number] = part.etag
            self._part_sizes[part.number] = part.size
        self._next_part = len(parked.parts) + 1
        self._size = parked.size
        self._continue_crc(parked.record.crc64)
        metrics.UPLOADS_RESUMED.inc()
        log.info("%s: resuming parked upload %s of %s at byte %d", self._ctx,
                 parked.record.upload_id, parked.record.user, parked.size)

    def _continue_crc(self, crc64: Optional[int]) -> None:
        """Go on from the CRC64 of the bytes already in place; without it (an object stored
        by something that reports none) the integrity check is skipped for this upload."""
        self._crc = Crc64(crc64) if crc64 is not None else None
        if crc64 is not None:
            self._crc_after[self._next_part - 1] = crc64

    def cancel(self) -> None:
        """The client gave up on this upload (ABOR): discard it on close, never park it."""
        self._discard = True

    def abandon(self) -> None:
        """Close an upload whose transfer never started (the client gave up on the data
        connection): a resumed parked upload is parked again as it was, anything else is
        discarded."""
        if not self._resumed:
            self._discard = True
        self.close()

    def commit(self, still_wanted: Callable[[float], bool] = lambda _wait: True) -> None:
        """Make the object visible: one PUT if no part was shipped, else complete the upload.

        ``still_wanted(seconds)`` is asked just before the object would become visible, with
        how long it may wait for a sign that the client is gone; if it says no,
        ``UploadInterrupted`` is raised and the writer stays open, for ``close()`` to park
        or abort. On any other failure the upload is aborted and ``StorageError`` raised.
        """
        self._check_open()
        try:
            if self._upload_id is None:
                if not still_wanted(0.0):
                    raise UploadInterrupted(self.name)
                body = bytes(self._buffer)
                self._checksum(body)
                reported = self._bucket.put(self._key, body, self._like)
            else:
                reported = self._finish_multipart(still_wanted)
        except UploadInterrupted:
            raise
        except BaseException:
            self._abort()
            raise
        self._unmark()
        self._verify(reported)
        self._buffer = bytearray()
        self._state = "committed"
        log.info("%s: stored %d bytes", self._ctx, self._size)

    def _verify(self, reported: Optional[int]) -> None:
        """Compare the CRC64 of what the client sent with what COS stored.

        A mismatch means COS holds other bytes than the client sent: delete the object
        rather than serve it, and fail the transfer.
        """
        if reported is None or self._crc is None or reported == self._crc.value:
            return
        self._state = "aborted"
        log.error("%s: CRC64 mismatch: sent %d, COS reports %d; deleting the object",
                  self._ctx, self._crc.value, reported)
        self._bucket.delete(self._key)
        raise StorageError(f"integrity check failed for {self.name}: CRC64 of the data "
                           "received differs from the stored object's", code="CRC64Mismatch")

    def close(self) -> None:
        """Park or abort unless :meth:`commit` succeeded; idempotent."""
        if self._state != "open":
            return
        if self._resume_ttl and not self._discard and self._upload_id and self._park():
            return
        log.warning("%s: upload aborted after %d bytes; nothing stored", self._ctx, self._size)
        self._abort()

    def _park(self) -> bool:
        """Keep the parts that reached COS for a later REST + STOR; False if none did or the
        record cannot be written (the caller then aborts)."""
        self._settle()
        stored = leading_parts(PartInfo(number, etag, self._part_sizes[number], 0.0)
                               for number, etag in self._etags.items())
        if not stored:
            return False
        resumable = sum(part.size for part in stored)
        record = ParkRecord(user=self._owner, path=self.name, key=self._key,
                            upload_id=self._upload_id or "", size=resumable,
                            parts=len(stored), crc64=self._crc_after.get(len(stored)))
        try:
            park(self._bucket, record, self._ctx)
        except StorageError as exc:
            log.error("%s: cannot park upload %s: %s", self._ctx, self._upload_id, exc)
            return False
        self._state = "parked"
        self._buffer = bytearray()
        metrics.UPLOADS_PARKED.inc()
        log.warning("%s: upload interrupted after %d bytes; parked %d bytes as upload %s for "
                    "%ds: REST %d + STOR continues it", self._ctx, self._size, resumable,
                    self._upload_id, self._resume_ttl, resumable)
        return True

    def _checksum(self, data: bytes, number: Optional[int] = None) -> None:
        """Fold ``data`` into the CRC64; remember the value after part ``number``."""
        if self._crc is not None:
            self._crc.update(data)
            if number is not None:
                self._crc_after[number] = self._crc.value

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError("I/O operation on closed upload")

    def _raise_part_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _start_multipart(self) -> None:
        self._upload_id = self._bucket.create_multipart(self._key, self._like)
        if self._resume_ttl:
            mark_live(self._bucket, self._key, self._upload_id, self._owner, self.name,
                      self._ctx)

    def _unmark(self) -> None:
        """The multipart upload ended: drop its live marker (see :mod:`.resume`)."""
        if self._resume_ttl and self._upload_id:
            unmark_live(self._bucket, self._key, self._upload_id, self._ctx)

    def _submit_part(self, data: bytes) -> None:
        if self._upload_id is None:
            self._start_multipart()
        number = self._next_part
        self._next_part += 1
        self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        self._part_sizes[number] = len(data)
        self._checksum(data, number)
        future = self._executor.submit(self._upload_part, number, data)
        future.add_done_callback(lambda _f: self._slots.release())
        self._futures.append(future)

    def _upload_part(self, number: int, data: bytes) -> None:
        try:
            self._etags[number] = self._bucket.upload_part(
                self._key, self._upload_id or "", number, data
            )
        except BaseException as exc:
            self._failure = self._failure or exc
            raise

    def _finish_multipart(self, still_wanted: Callable[[float], bool]) -> Optional[int]:
        # A killed client closes its data and control connections a moment apart, in either
        # order; the last parts' upload time is spent waiting for the control one to close.
        grace_ends = time.monotonic() + CLIENT_GONE_GRACE
        if self._buffer or not self._etags:
            self._submit_tail()
        wait(self._futures)
        self._raise_part_failure()
        if not still_wanted(max(0.0, grace_ends - time.monotonic())):
            raise UploadInterrupted(self.name)
        parts = sorted(self._etags.items())
        return self._bucket.complete_multipart(self._key, self._upload_id or "", parts).crc64

    def _submit_tail(self) -> None:
        tail, self._buffer = bytes(self._buffer), bytearray()
        self._submit_part(tail)

    def _settle(self) -> None:
        """Cancel parts not started; wait for those uploading (an abort issued before they
        finish would not remove them, and a park wants them stored)."""
        for future in self._futures:
            future.cancel()
        wait(self._futures)

    def _abort(self) -> None:
        self._state = "aborted"
        self._buffer = bytearray()
        self._settle()
        if self._upload_id is None:
            return
        try:
            self._bucket.abort_multipart(self._key, self._upload_id)
        except NotFound:
            pass
        except StorageError as exc:
            log.error("%s: could not abort multipart upload %s: %s; will retry", self._ctx,
                      self._upload_id, exc)
            if self._retrier is not None:
                self._retrier.add(self._bucket, self._key, self._upload_id)
            return  # the live marker stays, for the janitor should the retries not succeed
        self._unmark()
