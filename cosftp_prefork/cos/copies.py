"""Renaming. COS has no rename: copy, then delete the originals.

Objects up to ``multipart_copy_threshold`` (CopyObject's limit is 5 GB) are copied in one
request, larger ones with a multipart copy (UploadPartCopy, parts in parallel). For a
directory the originals are deleted only after every copy succeeded; if any copy fails, the
copies already made are removed again and the directory stays where it was.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor, Future, wait
from contextlib import suppress
from dataclasses import dataclass
from typing import Callable, Optional

from ..config.model import MAX_PARTS, TransferConfig, part_size_for
from ..errors import Conflict, InvalidPath, NotFound, StorageError
from ..paths import RESERVED_NAME, ftp_path_for_key, is_reserved, key_bytes
from .bucket import Bucket
from .listing import all_objects
from .objects import ObjectInfo
from .readback import abort_other_starts, abort_unheard_starts, copied_unheard
from .resume import mark_live, unmark_live

log = logging.getLogger(__name__)

# rename_directory's ``reserve``: (key, new key, size) of each object -> settle(done).
Reserve = Callable[[list[tuple[str, str, int]]], Callable[[bool], None]]
DELETE_BATCH = 1000  # the most keys COS deletes in one request


@dataclass(frozen=True)
class Moved:
    """One object a rename copied: what it was, where it went, the copy's ETag."""

    source: ObjectInfo
    target: str
    etag: str


def copy_object(bucket: Bucket, source: ObjectInfo, target: str, transfer: TransferConfig,
                executor: Executor, client_mtime: Optional[float] = None,
                pinned: bool = False) -> str:
    """Copy ``source`` (as a HEAD found it: a listing does not say its encryption, class or
    metadata) to ``target`` inside COS, in parts above the threshold, keeping all of them;
    with ``client_mtime`` as its MFMT time if given (``target`` may then be ``source.key``).
    The parts are pinned to the ETag of ``source``, and so is a single copy if ``pinned``
    (``StorageError`` with code ``ObjectChanged`` once ``source`` has another ETag).

    Part copies run on ``executor``; call this from a thread that is not one of its own.
    Return the copy's ETag. Raises ``StorageError``; a failed multipart copy is aborted.
    A copy whose answers were lost (a single copy, or a multipart copy's completion) is
    read back (:func:`.readback.copied_unheard`): ``target`` holding the bytes of
    ``source`` (and ``client_mtime``) is the copy made; holding anything else, the copy was
    not (``StorageError``, never ``NotFound``). Multipart uploads that an
    InitiateMultipartUpload whose answers were lost started are aborted
    (:func:`.readback.abort_unheard_starts`).
    """
    if source.size <= transfer.multipart_copy_threshold:
        return _copy_once(bucket, source, target, client_mtime, pinned)
    since = time.time()
    try:
        started = bucket.create_multipart(target, source, client_mtime)
    except StorageError as exc:
        # An upload COS started unanswered would stay, billed, taken for another tool's.
        abort_unheard_starts(bucket, target, since, exc)
        raise
    abort_other_starts(bucket, target, since, started)
    upload_id = started.upload_id
    # Like an upload, marked live so the janitor aborts it should this process die.
    if transfer.resume_ttl > 0:
        mark_live(bucket, target, upload_id, "", f"copy of {source.key}")
    return _copy_parts(bucket, source, target, upload_id, transfer, executor, client_mtime)


def _copy_once(bucket: Bucket, source: ObjectInfo, target: str,
               client_mtime: Optional[float] = None, pinned: bool = False) -> str:
    """One CopyObject of ``source`` to ``target`` (see :meth:`Bucket.copy`); return the
    copy's ETag. One whose answers were lost is read back
    (:func:`.readback.copied_unheard`). Raises ``StorageError``."""
    try:
        return bucket.copy(source, target, client_mtime, pinned)
    except StorageError as exc:
        found = copied_unheard(bucket, source, target, exc, client_mtime)
        if found is None:
            raise
        _log_unheard(source, target, exc, completion=False)
        return found.etag


def _log_unheard(source: ObjectInfo, target: str, error: StorageError,
                 completion: bool) -> None:
    """Log a copy (a multipart copy's ``completion``, or a single one) read back as made
    though its answer was lost (``error``)."""
    if target == source.key:
        log.warning("%s: COS set its time though the answer to the %s was lost (%s): the "
                    "time read back", target, "completion" if completion else "copy", error)
    else:
        log.warning("%s: COS %s to %s though the answer was lost (%s): the copy holds its %d "
                    "bytes, CRC64 read back", source.key,
                    "completed its copy" if completion else "copied it", target, error,
                    source.size)


def _copy_parts(bucket: Bucket, source: ObjectInfo, target: str, upload_id: str,
                transfer: TransferConfig, executor: Executor,
                client_mtime: Optional[float]) -> str:
    """Copy ``source`` into the multipart upload ``upload_id`` in parallel and complete it
    (with ``client_mtime`` as the MFMT time it was started with), dropping its live marker;
    return the new object's ETag. A completion whose answers were lost is read back
    (:func:`_completed_unheard`). Raises ``StorageError`` (``OutcomeUnknown`` if the
    read-back cannot tell) once the upload is aborted (if the abort fails too, the upload
    and its live marker stay for the janitor)."""
    part = max(part_size_for(transfer.min_part_size, source.size), -(-source.size // MAX_PARTS))
    ranges = [(number, first, min(source.size, first + part) - 1)
              for number, first in enumerate(range(0, source.size, part), start=1)]
    futures = [executor.submit(bucket.upload_part_copy, target, upload_id, number, source,
                               first, last) for number, first, last in ranges]
    try:
        etags = [(number, future.result()) for (number, _, _), future in zip(ranges, futures)]
        try:
            etag = bucket.complete_multipart(target, upload_id, etags).etag
        except StorageError as exc:
            found = _completed_unheard(bucket, source, target, upload_id, exc, client_mtime)
            if found is None:
                raise
            etag, ended = found
            if not ended:
                return etag  # the upload and its live marker stay for the janitor
    except StorageError:
        wait(futures)
        # A completion carried out unanswered ended it: the error raised says what is known.
        with suppress(NotFound):
            bucket.abort_multipart(target, upload_id)
        if transfer.resume_ttl > 0:
            unmark_live(bucket, target, upload_id)
        raise
    if transfer.resume_ttl > 0:
        unmark_live(bucket, target, upload_id)
    return etag


def _completed_unheard(bucket: Bucket, source: ObjectInfo, target: str, upload_id: str,
                       error: StorageError, client_mtime: Optional[float]
                       ) -> Optional[tuple[str, bool]]:
    """The ETag of ``target`` if the completion of its multipart copy ``upload_id`` that
    failed with ``error`` was carried out all the same, with whether the upload is gone;
    None if ``error`` says it was not. Raises ``OutcomeUnknown`` if that cannot be read
    back, ``StorageError`` if it was not carried out (:func:`.readback.copied_unheard`).

    As for an upload (``uploads._completed_unheard``): an answer lost on the way
    (``ClientError``) leaves the outcome open, and a retry of a completion COS did carry
    out finds the upload gone (``NotFound``: NoSuchUpload). Only ``target`` holding the
    size and CRC64 of ``source`` (and ``client_mtime``, an MFMT's) counts as the copy made.
    Those may have been there before: an upload that a lost request did not complete still
    holds its parts and is aborted; an abort COS refuses is logged, the upload left to the
    janitor (False)."""
    found = copied_unheard(bucket, source, target, error, client_mtime, completion=True)
    if found is None:
        return None
    _log_unheard(source, target, error, completion=True)
    if isinstance(error, NotFound):
        return found.etag, True
    try:
        bucket.abort_multipart(target, upload_id)
    except NotFound:
        pass
    except StorageError as exc:
        log.error("%s: could not abort multipart copy %s: %s; left to the janitor", target,
                  upload_id, exc)
        return found.etag, False
    return found.etag, True


def _copy_as_stored(bucket: Bucket, listed: ObjectInfo, target: str) -> str:
    """One CopyObject of ``listed`` keeping its encryption, which only a HEAD tells (a
    listing does not); return the copy's ETag (read back if its answers were lost)."""
    return _copy_once(bucket, bucket.head(listed.key), target)


def rename_directory(bucket: Bucket, src_prefix: str, dst_prefix: str,
                     transfer: TransferConfig, executor: Executor,
                     reserve: Optional[Reserve] = None) -> list[Moved]:
    """Move every key under ``src_prefix`` to ``dst_prefix``; return what moved.

    ``reserve`` is given (key, new key, size) of every object before the first copy; it may
    refuse the move by raising (``QuotaExceeded``: nothing copied) and returns what to call
    with whether the move was done.

    Raises ``StorageError`` (the first failure) with the source untouched if a copy fails,
    ``Conflict`` if a key went away meanwhile (another session moved or deleted it),
    ``NotFound`` if nothing is left to move, and ``InvalidPath``, before copying anything,
    if a new key would be over the COS limit or the directory holds a ``.cosftp``: another
    account is rooted in it (``cos_prefix``), and its parked uploads and MFMT times are its
    own, not this account's to move. Run it announced (``intents.announced``).
    """
    objects = all_objects(bucket, src_prefix)
    if not objects:
        raise NotFound(f"No such file or directory: {ftp_path_for_key(src_prefix)} was renamed "
                       "or deleted meanwhile", code="NoSuchKey")
    if any(is_reserved(obj.key[len(src_prefix):]) for obj in objects):
        raise InvalidPath(f"that directory holds another account's home (its {RESERVED_NAME} "
                          f"data): it cannot be renamed")
    targets = {obj.key: dst_prefix + obj.key[len(src_prefix):] for obj in objects}
    longest = max((key_bytes(target) for target in targets.values()), default=0)
    if longest > bucket.key_room:
        raise InvalidPath(f"a name in that directory would be {longest} bytes long there, "
                          f"over the {bucket.key_room} bytes COS allows")
    settle = (reserve or _nothing_reserved)(
        [(obj.key, targets[obj.key], obj.size) for obj in objects])
    try:
        copied = _copy_all(bucket, objects, targets, transfer, executor, src_prefix)
    except BaseException:
        settle(False)
        raise
    settle(True)  # the copies are there; the sources go next (a failure: a scan fixes it)
    delete_keys(bucket, [obj.key for obj in objects])
    log.info("renamed %s to %s (%d keys)", src_prefix, dst_prefix, len(objects))
    return copied


def _nothing_reserved(objects: list[tuple[str, str, int]]) -> Callable[[bool], None]:
    """``reserve`` when no quota counts the move: nothing to settle either way."""
    return lambda done: None


def _copy_all(bucket: Bucket, objects: list[ObjectInfo], targets: dict[str, str],
              transfer: TransferConfig, executor: Executor, src_prefix: str) -> list[Moved]:
    """Copy each of ``objects`` to its target; on a failure delete the copies made and
    raise (``Conflict`` if a source went away meanwhile)."""
    small = [obj for obj in objects if obj.size <= transfer.multipart_copy_threshold]
    futures: dict[str, Future] = {obj.key: executor.submit(_copy_as_stored, bucket, obj,
                                                           targets[obj.key]) for obj in small}
    failures: list[BaseException] = []
    copied: list[Moved] = []
    for obj in objects:
        if obj.key in futures:
            continue
        try:  # large objects from this thread: their parts need the executor's threads
            etag = copy_object(bucket, bucket.head(obj.key), targets[obj.key], transfer,
                               executor)
            copied.append(Moved(obj, targets[obj.key], etag))
        except StorageError as exc:
            failures.append(exc)
            break
    wait(futures.values())
    for obj in small:
        future = futures[obj.key]
        if future.exception() is None:
            copied.append(Moved(obj, targets[obj.key], future.result()))
        else:
            failures.append(future.exception())
    if failures:
        log.error("renaming %s failed after %d of %d copies; removing the copies: %s",
                  src_prefix, len(copied), len(objects), failures[0])
        delete_keys(bucket, [moved.target for moved in copied])
        if isinstance(failures[0], NotFound):
            raise Conflict(f"{ftp_path_for_key(src_prefix)} changed while it was being renamed "
                           "(another session moved or deleted a file in it); nothing was "
                           "moved, try again") from failures[0]
        raise failures[0]
    return copied


def delete_keys(bucket: Bucket, keys: list[str]) -> None:
    """Delete ``keys`` in batches of ``DELETE_BATCH``; raises ``StorageError``."""
    for start in range(0, len(keys), DELETE_BATCH):
        bucket.delete_many(keys[start:start + DELETE_BATCH])
