"""The upload lifecycle: one :class:`UploadSession` per STOR/APPE, streaming to COS.

An upload is a single PUT when it ends within its first part, else a multipart upload whose
parts stream through the worker's :class:`~.engine.Engine` (a :class:`~.parts.PartStream`:
bounded buffers from the memory budget, explicit part bookkeeping, abort on failure). It
never touches local disk; an abort COS refused is retried by :class:`~.aborts.AbortRetrier`.

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
import time
from collections.abc import Hashable, Iterator
from typing import Callable, Optional, Union

from .. import metrics
from ..config.model import MIN_PART_SIZE, TransferConfig
from ..errors import (
    FileTooLarge,
    NotFound,
    NotStorable,
    ParkOutdated,
    QuotaExceeded,
    ResumeRefused,
    StorageError,
)
from .aborts import AbortRetrier
from .bucket import Bucket
from .checksum import PrefixCrcs
from .engine import Engine, Kept, PartPlan
from .intents import Announcement, announce
from .listing import Entry
from .naming import NameChecks
from .objects import Completed, ObjectInfo
from .parts import PartStream
from .quota import AccountQuota, UploadQuota, replaced_size
from .readback import abort_other_starts, abort_unheard_starts, written_unheard
from .resume import ParkedUpload, ParkRecord, ResumeStore

log = logging.getLogger(__name__)

CLIENT_GONE_GRACE = 0.05  # seconds; see UploadSession._finish_multipart


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
                 quota: Optional[UploadQuota] = None, account: Hashable = None,
                 replaces: Optional[Callable[[], Optional[str]]] = None) -> None:
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
        # APPE, and a resumed park of one: the ETag of the version its first bytes came from.
        self._continues = ""
        # An upload from nothing, and a resumed park of one: the ETag of the file it replaces
        # ("" none, None not known), asked when it is parked. None: not asked yet, a HEAD
        # is sent when its multipart upload starts (see _start_multipart).
        self._replaces = replaces
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
        self._parked: Optional[ParkedUpload] = None  # the park it continues, if it does
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
        if self.prefix is not None:
            # Before anything may refuse them: the prefix is what the client sent, also a
            # chunk refused here (the FTP layer reads on what follows it: ftp.retries).
            self.prefix.update(data)
        self._check_open()
        self._raise_part_failure()
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
        return len(data)

    def _raise_part_failure(self) -> None:
        """Raise what a part that failed raised. COS storing other bytes than were sent
        (``CRC64Mismatch``) discards the upload: the parts stored whole before it are not
        parked either, as when it is found at the commit (the abort docs/reliability.md
        promises); a part COS failed to store leaves them parked for a resume."""
        try:
            self._parts.raise_failure()
        except StorageError as exc:
            if exc.code == "CRC64Mismatch":
                self._discard = True
            raise

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
        end). From 1 MiB on they are copied inside COS once the first bytes arrive, while
        the client sends the rest (see ``PartStream.copy_first``); a smaller one cannot be a
        copied part (COS's smallest non-last part), so its few bytes are read now and sent
        again. The new object keeps the storage class, encryption, headers and metadata of
        ``source``."""
        self._like = source.for_new_bytes()
        self._continues = source.etag
        if source.size >= MIN_PART_SIZE:
            self._parts.copy_first(source, self._engine.copier(self._parts.owner,
                                                               self._parts.account))
        elif source.size:
            self._parts.write(self._bucket.read_small(source.key, source.size))

    def resume(self, parked: ParkedUpload) -> None:
        """Continue ``parked``: its parts stay, the bytes written next follow them. It
        commits only while the name holds what its upload began with (a parked APPE: the
        version it continues; a parked STOR: the file it replaces, or none), see
        :meth:`_check_unchanged`, and is parked again as the same upload."""
        record = parked.record
        self._parts.upload_id = record.upload_id
        self._continues = record.continues
        self._replaces = lambda: record.replaces
        self._parked = parked
        self._parts.adopt(parked.parts, parked.size, record.crc64)
        if record.copies:
            version = ObjectInfo(record.key, sum(record.copies), 0.0, record.continues)
            self._parts.copy_again(version, record.copies,
                                   self._engine.copier(self._parts.owner, self._parts.account))
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
        or abort. On any other failure the upload is aborted and ``StorageError`` raised
        (``ParkOutdated`` for a resumed one whose name another session wrote meanwhile).

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
            if not self._parts.multipart:
                if not still_wanted(0.0):
                    raise UploadInterrupted(self.name)
                self._check_unchanged()
                body, sent = self._parts.take_body()
                reported = self._put(body, sent)
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
        # A new file's transfer line (written after this) says its path and bytes already;
        # an APPE or a resume says here the whole object's size, which its line does not.
        log.log(logging.DEBUG if self._from_nothing else logging.INFO,
                "path=%s: stored %d bytes", self.name, self._parts.size)

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
        """Keep the parts that reached COS for a later REST + STOR (and the copies of the
        version it continues that a stop cut short, which a resume makes again); False if
        no part did, a copy found that version replaced (nothing left to continue), or the
        record cannot be written (the caller then aborts)."""
        self._parts.settle(keep=True)
        stored = self._parts.stored_parts()
        failure = self._parts.failure
        if not any(part.etag for part in stored) or \
                (isinstance(failure, StorageError) and failure.code == "ObjectChanged"):
            return False
        resumable = sum(part.size for part in stored)
        upload_id = self._parts.upload_id or ""
        record = ParkRecord(user=self._store.user, path=self.name, key=self._key,
                            upload_id=upload_id, size=resumable, parts=len(stored),
                            crc64=self._parts.crc_through(len(stored)),
                            continues=self._continues, copies=self._parts.copied,
                            replaces=self._replaces() if self._replaces else None)
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
        if self._replaces is None and self._from_nothing and self._store.enabled:
            # What the name holds, for a park of this upload: asked when its first part is
            # sent, not at its start (a request more for every small file, which is never
            # parked), and beside CreateMultipartUpload, whose answer the first part waits
            # for anyway. A file stored meanwhile counts as the one it started over.
            found = self._engine.lookups.for_owner(self._parts.owner, self._parts.account) \
                .submit(self._bucket.head, self._key)
            self._replaces = lambda: found_etag(found.result)
        since = time.time()
        try:
            started = self._bucket.create_multipart(self._key, self._like)
        except StorageError as exc:
            abort_unheard_starts(self._bucket, self._key, since, exc)
            raise
        abort_other_starts(self._bucket, self._key, since, started)
        self._store.started(self._key, started.upload_id, self.name)
        return started.upload_id

    def _unmark(self) -> None:
        """The multipart upload ended: drop its live marker (see :mod:`.resume`)."""
        if self._parts.upload_id:
            self._store.ended(self._key, self._parts.upload_id)

    def _put(self, body: bytes, sent: Optional[int]) -> Completed:
        """Store ``body`` (CRC64 ``sent``) in one PUT, as the name's look-ups allow if they
        run; return what COS reports. A PUT whose answers were lost is read back
        (:func:`.readback.written_unheard`): the name holding those bytes is the object stored.
        Raises ``NotStorable``, ``StorageError``, or ``OutcomeUnknown`` if the read-back
        cannot tell."""
        try:
            if self._checks is None:
                return self._bucket.put(self._key, body, self._like)
            # A speculative PUT that went unanswered waited for the verdict (see naming):
            # the name is allowed when its error gets here.
            return self._checks.put(self._bucket, self._key, body, self._like)
        except StorageError as exc:
            found = written_unheard(self._bucket, self._key, len(body), sent, exc)
            if found is None:
                raise
            log.warning("path=%s: COS stored the object though its answer was lost (%s): "
                        "it holds the %d bytes sent, CRC64 read back", self.name, exc,
                        found.size)
            return Completed(found.etag, found.crc64)

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
        try:
            return self._bucket.complete_multipart(self._key, self._parts.upload_id or "",
                                                   parts)
        except StorageError as exc:
            found = self._completed_unheard(exc)
            if found is None:
                raise
            return found

    def _completed_unheard(self, error: StorageError) -> Optional[Completed]:
        """What COS stored if the completion that failed with ``error`` was carried out
        all the same, else None; raises ``OutcomeUnknown`` if that cannot be read back. An
        answer lost on the way (``ClientError``) leaves that open, and a retry of a
        completion COS did carry out finds the upload gone (``NotFound``: NoSuchUpload).
        Only the name holding exactly the bytes sent counts as stored (see
        :mod:`.readback`). Those bytes may have been there before: an upload that a lost
        request did not complete is aborted then, as it still holds its parts."""
        sent = self._parts.crc_through(self._parts.next_part - 1)
        found = written_unheard(self._bucket, self._key, self._parts.size, sent, error,
                                completion=True)
        if found is None:
            return None
        log.warning("path=%s: COS completed the upload though its answer was lost (%s): "
                    "the object holds the %d bytes sent, CRC64 read back", self.name, error,
                    found.size)
        if not isinstance(error, NotFound):
            self._abort_upload()
        return Completed(found.etag, found.crc64)

    def _check_unchanged(self) -> None:
        """Before an upload that continues a stored object (APPE) or a parked upload
        replaces the file: raise ``StorageError`` (``ObjectChanged``), or for a resumed
        park ``ParkOutdated``, if another session wrote it meanwhile. An APPE commits only
        over the version whose bytes it took: two APPEs of one file at once would otherwise
        both succeed, and the file keep only the last one's bytes. A resumed park commits
        only while the name holds what its upload began with, as the park was kept only
        while it did (:func:`outdated`, the rule SIZE and REST went by): a file another
        session stored since the upload broke, or while the resume ran, would otherwise be
        lost to an upload begun before it. CompleteMultipartUpload takes no ETag condition
        (COS documents only ``x-cos-forbid-overwrite`` there, which refuses any object), so
        a write in the moment between this HEAD and the completion still goes unnoticed."""
        if not self._continues and self._parked is None:
            return
        try:
            info: Optional[ObjectInfo] = self._bucket.head(self._key)
        except NotFound:
            info = None
        if self._parked is not None:
            now = None if info is None else Entry(self._key, False, info.size, info.mtime,
                                                  info.etag)
            if outdated(self._parked, now):
                raise ParkOutdated(f"{self.name} was written by another session since "
                                   "this upload was interrupted; the bytes stored before are "
                                   "discarded, send the whole file again")
        elif (info.etag if info is not None else "") != self._continues:
            raise StorageError(f"{self.name} was changed by another session while this append "
                               "ran; nothing was appended, try again", code="ObjectChanged")

    def _abort(self) -> None:
        if self.state is not UploadState.ABORTED:
            self._move(UploadState.ABORTED)
        if self._checks is not None:
            self._checks.cancel()
        self._parts.settle(keep=False)
        if self._abort_upload():
            self._unmark()

    def _abort_upload(self) -> bool:
        """Abort the multipart upload, if one was started (one gone already counts as
        aborted); False if COS refused: the abort is retried (see :mod:`.aborts`)."""
        upload_id = self._parts.upload_id
        if upload_id is None:
            return True
        try:
            self._bucket.abort_multipart(self._key, upload_id)
        except NotFound:
            pass
        except StorageError as exc:
            retried = self._retrier is not None and \
                self._retrier.add(self._bucket, self._key, upload_id)
            log.error("path=%s: could not abort multipart upload %s: %s; %s", self.name,
                      upload_id, exc, "will retry" if retried else
                      "left to the janitor (too many aborts pending)")
            return False  # the live marker stays, for the janitor should the retries fail
        return True


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
        """What an upload to ``path`` would continue: the parked upload unless the file
        ``entry`` was written since it began (see :func:`outdated`), else the file, else
        None. A parked upload the file outdates is discarded."""
        parked = self._store.find(key)
        if parked is None or not outdated(parked, entry):
            return parked or entry
        self._store.discard(parked)
        return entry

    def offer(self, path: str, source: Optional[Source]) -> None:
        """SIZE reported ``source``: an APPE next continues it if it is a parked upload."""
        if isinstance(source, ParkedUpload):
            self._offered = (path, source.record.upload_id)

    def new(self, path: str, key: str, announced: Optional[int] = None,
            checks: Optional[NameChecks] = None) -> UploadSession:
        """An upload that starts from nothing (STOR); with ``checks``, of a name whose
        look-ups run while its bytes arrive (whether a file has it is not known yet). Where
        a quota counts it, a HEAD of ``key`` is sent beside them: the file it replaces, whose
        size the quota gives back and whose ETag a park of it records (see
        :func:`outdated`); elsewhere that is asked when it turns out to need parts (see
        ``UploadSession._start_multipart``)."""
        if self._quota is None or not self._quota.counts(key):
            return self._session(path, key, UploadState.NEW, announced, checks,
                                 Counted(new_file=True))
        found = self._engine.lookups.for_owner(self).submit(self._bucket.head, key)
        return self._session(path, key, UploadState.NEW, announced, checks,
                             Counted(new_file=True, replaced=replaced_size(found)),
                             lambda: found_etag(found.result))

    def append(self, path: str, key: str, existing: Optional[Entry],
               announced: Optional[int] = None) -> UploadSession:
        """APPE: the existing object's bytes (copied inside COS), then the client's; or,
        right after SIZE reported a parked upload, that upload. The old object stays as it
        is until the new one commits."""
        parked = self._offered_parked(path, key, existing)
        if parked is not None:
            return self._resumed(path, key, parked, announced)
        if existing is None:  # a new file: there is nothing it replaces
            return self._session(path, key, UploadState.NEW, announced, None,
                                 Counted(new_file=True), lambda: "")
        if existing.size == 0:  # it starts over an empty file, and stays one file
            return self._session(path, key, UploadState.OVERWRITE, announced, None,
                                 Counted(new_file=False, replaced=lambda: 0),
                                 lambda: existing.etag or None)
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
                 counted: Counted,
                 replaces: Optional[Callable[[], Optional[str]]] = None) -> UploadSession:
        """The upload, its first bytes reserved in the quotas that count it (raises
        ``QuotaExceeded`` before anything is stored or claimed); ``replaces`` tells the ETag
        of the file an upload from nothing replaces, if known at its start (see
        :class:`UploadSession`)."""
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
                             quota=quota, account=self._account, replaces=replaces)

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


def outdated(parked: ParkedUpload, entry: Optional[Entry]) -> bool:
    """Whether the file ``entry`` (None: no file) makes ``parked`` obsolete: written by
    someone else since the upload began.

    A park that continues a stored version (APPE) is obsolete once the file is another
    version (its ETag), or gone; one of an upload from nothing (STOR) once the name holds
    other than what the upload started over (that file's ETag, or still no file). Whatever
    the times say, which have whole seconds: a park made in the second of the file it
    continues or replaces is kept, and a file stored while the upload ran, before the park,
    is not overwritten by its resume. A record that names neither (written before they were
    kept, or the HEAD at the upload's start failed), or a file whose ETag is not known, goes
    by the times: the park must be newer, and in a tie the file is what the client last
    saw."""
    record = parked.record
    if entry is None or entry.etag:
        now = entry.etag if entry is not None else ""
        if record.continues:
            return now != record.continues
        if record.replaces is not None:
            return now != record.replaces
    return entry is not None and parked.parked_at <= entry.mtime


def found_etag(head: Callable[[], ObjectInfo]) -> Optional[str]:
    """What a park of an upload from nothing records as the file it replaces, from
    ``head()``, a HEAD of its key: that file's ETag, "" if there was none, None if the HEAD
    failed or gave no ETag (the park then goes by the times, see :func:`outdated`)."""
    try:
        return head().etag or None
    except NotFound:
        return ""
    except StorageError as exc:
        log.warning("cannot tell which file an upload replaces (%s): a park of it goes by "
                    "the times", exc)
        return None


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
