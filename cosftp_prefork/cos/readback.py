"""A write whose answer was lost, read back: what COS holds under its name tells whether it
was carried out.

A connection reset or cut in mid-answer (``ClientError``) leaves the gateway unable to tell
from the error whether COS stored the object; a retry of a write COS did carry out may then
fail for that very reason (NoSuchUpload for a completion, FileAlreadyExists for a PUT with
``x-cos-forbid-overwrite``). Only the name holding exactly the bytes sent (their size, and
the CRC64 COS reports equal to theirs) counts as stored; where that cannot be read (the HEAD
fails, or COS reports no CRC64), the outcome is unknown and the client is told so, never
"nothing stored" (docs/reliability.md, "Lost answers").

A copy of an object onto itself (MFMT's: it sets the object's time) proves nothing by its
bytes, which were there before: its metadata is read back instead, the time asked
(:func:`copied_unheard`). A read-back that finds the write not carried out says so
(:func:`not_done`): a completion's NoSuchUpload then means no missing file.

A multipart upload that COS started while the answer naming it was lost is no write to
read back but one to undo: :func:`abort_unheard_starts` when every try failed,
:func:`abort_other_starts` when a later one was answered.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

from ..errors import NotFound, OutcomeUnknown, StorageError
from .bucket import Bucket
from .calls import RETRY_ATTEMPTS, back_off
from .objects import NewUpload, ObjectInfo

log = logging.getLogger(__name__)

# COS dates an upload to the second; this much more is allowed for its clock and ours.
CLOCK_SLACK = 1.0


def unheard(error: StorageError) -> bool:
    """Whether the request that failed with ``error`` may have been carried out: its own
    answer was lost, or an earlier try's."""
    return error.code == "ClientError" or error.unheard


def may_be_done(error: StorageError, completion: bool = False) -> bool:
    """Whether the write that failed with ``error`` may have been carried out all the same:
    an unanswered try (:func:`unheard`), or, for a CompleteMultipartUpload
    (``completion``), NoSuchUpload (``NotFound``), what a retry of a completion COS did
    carry out finds. Never an ``OutcomeUnknown``: that is a read-back's own verdict (its
    code copied from the lost answer's), and reading back again could turn "not known" into
    "stored" for a name a speculative PUT's look-ups refused, whose undo it was."""
    if isinstance(error, OutcomeUnknown):
        return False
    return unheard(error) or (completion and isinstance(error, NotFound))


def not_done(error: StorageError, found: str) -> StorageError:
    """``error``, of a write that :func:`may_be_done`, once a read-back ``found`` it was
    not: its code and request id, its message with what was found, and never ``NotFound``
    (a completion's NoSuchUpload is no missing file: it would be answered ``550``)."""
    return StorageError(f"{error.strerror}; {found}", code=error.code,
                        request_id=error.request_id, status=error.status)


def holding(bucket: Bucket, key: str, size: int, crc64: Optional[int],
            error: StorageError, rounds: int = 1) -> Optional[ObjectInfo]:
    """The object ``key`` if it holds ``size`` bytes whose CRC64 is ``crc64`` (the write
    that failed with ``error`` stored them, or the name held them already); None if the name
    holds nothing or other bytes. The HEAD (its failures retried as any call's) is asked up
    to ``rounds`` times, each round after a back-off that goes on growing from where the
    HEAD's own retries left off. Raises ``OutcomeUnknown``, naming ``error``, if it fails
    every time or no CRC64 can be compared."""
    for round_ in range(rounds):
        try:
            found = bucket.head(key)
            break
        except NotFound:
            return None
        except StorageError as exc:
            if round_ == rounds - 1:
                raise OutcomeUnknown(f"{error.strerror}; reading back what COS holds failed "
                                     f"too ({exc})", code=error.code,
                                     request_id=error.request_id) from error
            back_off(f"HEAD {key} (read-back)", exc, RETRY_ATTEMPTS + round_)
    if found.size != size:
        return None
    if crc64 is None or found.crc64 is None:
        raise OutcomeUnknown(f"{error.strerror}; COS holds {size} bytes there, without a "
                             "CRC64 to tell whether they are the ones sent", code=error.code,
                             request_id=error.request_id) from error
    return found if found.crc64 == crc64 else None


def written_unheard(bucket: Bucket, key: str, size: int, crc64: Optional[int],
                    error: StorageError, completion: bool = False) -> Optional[ObjectInfo]:
    """The object ``key`` if the write that failed with ``error`` may have been carried out
    all the same and the name holds its ``size`` bytes of CRC64 ``crc64`` (:func:`holding`);
    None if ``error`` says it was not, or the name holds something else. An unanswered try
    (:func:`unheard`) leaves it open; for a CompleteMultipartUpload (``completion``) so does
    NoSuchUpload (``NotFound``), what a retry of a completion COS did carry out finds.
    Raises ``OutcomeUnknown`` as :func:`holding` does."""
    if not may_be_done(error, completion):
        return None
    return holding(bucket, key, size, crc64, error)


def copied_unheard(bucket: Bucket, source: ObjectInfo, target: str, error: StorageError,
                   client_mtime: Optional[float] = None,
                   completion: bool = False) -> Optional[ObjectInfo]:
    """What ``target`` holds if the copy of ``source`` there (with ``client_mtime`` as its
    MFMT time, if given) failed with ``error`` and may have been carried out all the same
    (:func:`may_be_done`, ``completion`` for a multipart copy's); None if ``error`` says it
    was not. The copy counts as made if ``target`` holds the bytes of ``source``
    (:func:`holding`) and, with ``client_mtime``, that time (``x-cos-meta-mtime``, whole
    seconds). A copy onto ``source`` itself (MFMT's) proves nothing by its bytes, which
    were there before: only its time tells (with none to tell, None). Raises
    ``OutcomeUnknown`` as :func:`holding` does, and :func:`not_done`'s error if ``target``
    holds something else: the copy was not made (or was replaced since)."""
    onto_itself = target == source.key
    if not may_be_done(error, completion) or (onto_itself and client_mtime is None):
        return None
    found = holding(bucket, target, source.size, source.crc64, error)
    timed = client_mtime is None or \
        (found is not None and found.client_mtime == float(int(client_mtime)))
    if found is not None and timed:
        return found
    if onto_itself:
        raise not_done(error, f"{target} read back without the time asked: the time was "
                       "not set") from error
    raise not_done(error, f"{target} read back without the bytes of {source.key}: not "
                   f"renamed, {source.key} kept") from error


def abort_unheard_starts(bucket: Bucket, key: str, since: float,
                         error: StorageError) -> int:
    """Abort the multipart uploads of ``key`` that an InitiateMultipartUpload sent at
    ``since`` (``time.time()``) and failed with ``error`` may have started unanswered; return
    how many (:func:`_abort_starts`)."""
    if not unheard(error):
        return 0
    return _abort_starts(bucket, key, since, str(error))


def abort_other_starts(bucket: Bucket, key: str, since: float, started: NewUpload) -> int:
    """Abort the multipart uploads of ``key`` other than ``started`` that the tries of the
    InitiateMultipartUpload sent at ``since`` which went unanswered before one was answered
    (``started.unheard``) may have started; return how many (:func:`_abort_starts`). Found
    by ``bench/chaos.py --cos-faults``: such an upload stayed, the janitor taking it for
    another tool's."""
    if not started.unheard:
        return 0
    return _abort_starts(bucket, key, since, "a later try was answered",
                         keep=started.upload_id)


def _abort_starts(bucket: Bucket, key: str, since: float, why: str, keep: str = "") -> int:
    """Abort the multipart uploads of ``key`` (but ``keep``) that InitiateMultipartUpload
    tries sent at ``since`` (``time.time()``) whose answers were lost (``why``) may have
    started; return how many. COS's List Multipart Uploads tells an upload's key, id,
    initiator (the credentials: every worker's alike) and start time, not who asked for it,
    so the ones taken are those of exactly ``key`` started since then (within
    ``CLOCK_SLACK``) that hold no part: the gateway never learned their ids, so it sent them
    none. Another session starting an upload of the same name in that second, before its
    first part, loses it (its STOR fails with ``451``, its client still holding the bytes),
    the price of not leaving uploads the janitor takes for another tool's. A listing or
    abort that fails is logged: the uploads stay, as before."""
    earliest = math.floor(since) - CLOCK_SLACK
    aborted = 0
    try:
        for upload in bucket.list_uploads(key):
            if upload.key != key or upload.upload_id == keep or \
                    upload.initiated < earliest or bucket.list_parts(key, upload.upload_id):
                continue
            bucket.abort_multipart(key, upload.upload_id)
            aborted += 1
    except StorageError as exc:
        log.error("%s: multipart uploads started while COS's answers were lost (%s) could "
                  "not all be found and aborted: %s", key, why, exc)
    if aborted:
        log.warning("%s: aborted %d multipart upload(s) COS started though its answer was "
                    "lost (%s)", key, aborted, why)
    return aborted
