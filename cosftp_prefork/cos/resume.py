"""Parked uploads: interrupted multipart uploads kept in COS so that REST + STOR continues them.

A parked upload is an ordinary multipart upload plus a small JSON *record*,
``.cosftp/parked/<key>/<upload id>``, naming the user, the FTP path, the bytes stored in parts
1..k (the run without a gap) and their CRC64, so the resumed object is checked end to end like
any other, and, for an upload that began with the bytes of the stored file (APPE), the ETag
of the version it continues and the sizes of its parts copied from it (COS may not hold
those yet: a stop can cut a copy short, and a resume makes it again), or, for one that began
from nothing (STOR), the ETag of the file it replaces (or that there was none). The state
lives in COS only: a parked upload survives worker restarts, reloads and a move to another worker.

Every multipart upload this server starts (uploads, and copies in parts) while parking is on
has a *live marker*, ``.cosftp/live/<key>/<upload id>``, from its start until it completes, is
aborted or is parked.
A session that resumes an upload swaps its record for a live marker first (a *claim*), so
other sessions no longer find it; if it breaks again, it is parked again with a new record.

The :class:`Janitor` aborts parked uploads whose record is older than ``resume_ttl`` and
uploads whose live marker shows no activity for longer than ``max(resume_ttl, 1 h)`` (a crash
left them behind), so nothing keeps costing storage. Multipart uploads with neither record nor
marker belong to another tool sharing the bucket and are never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Optional

from ..config.model import MIN_PART_SIZE
from ..errors import NotFound, PermissionDenied, StorageError
from ..paths import RESERVED_NAME
from .bucket import Bucket
from .listing import all_objects
from .objects import ObjectInfo, PartInfo, UploadInfo
from .periodic import Periodic

log = logging.getLogger(__name__)

RECORD_ROOT = f"{RESERVED_NAME}/parked/"
LIVE_ROOT = f"{RESERVED_NAME}/live/"
# A live upload may be slow (a client can take long over one part), so it is only taken for
# abandoned after this long without a new part, whatever resume_ttl says.
ORPHAN_IDLE_SECONDS = 3600.0
# A record or marker whose upload is gone is deleted after this long: its owner deletes it
# itself right after the upload ends, unless COS failed it then.
STALE_MARK_SECONDS = 60.0
# The park record format this version writes and reads (see ParkRecord.version).
RECORD_VERSION = 1


@dataclass(frozen=True)
class ParkRecord:
    """What is known of a parked upload: who, where, what part of the file COS holds, and
    the ETag of the stored version whose bytes it begins with ("" for an upload that began
    from nothing, and in records written before it was kept) with the sizes of the parts
    copied from that version; or, for an upload that began from nothing, the ETag of the
    file it replaces (``replaces``: "" where the name held none; None where that is not
    known: its HEAD failed, an APPE's, and records written before it was kept)."""

    user: str
    path: str
    key: str
    upload_id: str
    size: int
    parts: int
    crc64: Optional[int]
    continues: str = ""
    # The sizes of parts 1..c, copies of that version, which COS may not hold (a stop cut
    # their copy short): a resume copies those again.
    copies: tuple[int, ...] = ()
    replaces: Optional[str] = None
    # Workers of two versions share the records while a cluster is upgraded one node at a
    # time, so a reader ignores fields it does not know: a field a version adds must be one
    # the versions before it can do without (they resume as they did before it, and a park
    # they make again, of a resume broken again, lacks it). A change they must not ignore,
    # one that would make them resume wrongly, raises ``version``, and a reader leaves
    # records of a version above its own to the workers that read them (nothing offered,
    # nothing discarded). Version 1 is not written: the versions before this field refuse
    # any field they do not know.
    version: int = RECORD_VERSION

    def to_json(self) -> bytes:
        stored = asdict(self)
        if self.version == 1:
            del stored["version"]
        return json.dumps(stored, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ParkRecord:
        """The record ``data`` holds, without the fields this version does not know.
        Raises ``ValueError`` for anything but a record of a version this one reads."""
        try:
            stored = json.loads(data)
            known = {field.name for field in fields(cls)}
            given = {name: value for name, value in stored.items() if name in known}
            record = cls(**{**given, "copies": tuple(given.get("copies", ()))})
            if record.version > RECORD_VERSION:
                raise ValueError(f"written by a later version of the server (record version "
                                 f"{record.version}; this one reads up to {RECORD_VERSION})")
            return record
        except (TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a park record: {exc}") from exc


def record_key(key: str, upload_id: str) -> str:
    """Where the record of ``upload_id`` of ``key`` lives."""
    return f"{RECORD_ROOT}{key}/{upload_id}"


def live_key(key: str, upload_id: str) -> str:
    """Where the live marker of ``upload_id`` of ``key`` lives."""
    return f"{LIVE_ROOT}{key}/{upload_id}"


def mark_live(bucket: Bucket, key: str, upload_id: str, user: str, path: str) -> None:
    """Record that this server is writing ``upload_id`` (for ``user``'s ``path``), so the
    janitor may abort it if it is left behind. A failure (say, credentials that may not
    write ``.cosftp/``) is only logged: the upload matters more than its bookkeeping."""
    try:
        _write_live_marker(bucket, key, upload_id, user, path)
    except StorageError as exc:
        log.warning("key=%s: cannot mark upload %s as live (%s): the janitor will not clean "
                    "it up if this server loses it", key, upload_id, exc)


def _write_live_marker(bucket: Bucket, key: str, upload_id: str, user: str, path: str) -> None:
    body = json.dumps({"user": user, "path": path}, ensure_ascii=False).encode()
    bucket.put(live_key(key, upload_id), body)


def unmark_live(bucket: Bucket, key: str, upload_id: str) -> None:
    """Delete the live marker of an upload that ended; a failure is only logged (the
    janitor deletes markers whose upload is gone)."""
    try:
        bucket.delete(live_key(key, upload_id))
    except StorageError as exc:
        log.warning("key=%s: cannot delete the live marker of upload %s: %s", key, upload_id,
                    exc)


@dataclass(frozen=True)
class ParkedUpload:
    """A parked upload as found in COS: its record, data parts 1..k, and when it was parked
    (the record's LastModified, on COS's clock like the objects it is compared with)."""

    record: ParkRecord
    parts: tuple[PartInfo, ...]
    parked_at: float

    @property
    def size(self) -> int:
        """Bytes that a resumed upload does not need to send again."""
        return self.record.size


def leading_parts(parts: Iterable[PartInfo]) -> list[PartInfo]:
    """Return parts 1..k of ``parts`` (in any order): up to the first missing number, and
    without a part under 1 MiB (COS accepts one only as the last part of an object)."""
    by_number = {part.number: part for part in parts}
    run: list[PartInfo] = []
    while len(run) + 1 in by_number and by_number[len(run) + 1].size >= MIN_PART_SIZE:
        run.append(by_number[len(run) + 1])
    return run


def park(bucket: Bucket, record: ParkRecord) -> None:
    """Write ``record``, which makes its upload resumable, in place of its live marker;
    raises ``StorageError`` if the record cannot be written."""
    bucket.put(record_key(record.key, record.upload_id), record.to_json())
    unmark_live(bucket, record.key, record.upload_id)


def claim(bucket: Bucket, parked: ParkedUpload) -> None:
    """Take ``parked`` for this session: a live marker replaces its record, so no other
    session finds it and the janitor counts its idle time from now; raises ``StorageError``.

    Two sessions claiming the same upload at the same moment both succeed (COS has no
    conditional delete); completing with the parts' ETags then fails for one of them. If
    the marker cannot be written, the upload stays parked: without record or marker, a
    crash would leave it where the janitor never looks.
    """
    record = parked.record
    _write_live_marker(bucket, record.key, record.upload_id, record.user, record.path)
    bucket.delete(record_key(record.key, record.upload_id))


def discard(bucket: Bucket, parked: ParkedUpload) -> None:
    """Abort ``parked``, which the file written since has made obsolete; a failure is only
    logged (the janitor aborts it when it expires)."""
    record = parked.record
    try:
        with contextlib.suppress(NotFound):
            bucket.abort_multipart(record.key, record.upload_id)
        bucket.delete(record_key(record.key, record.upload_id))
    except StorageError as exc:
        log.warning("key=%s: cannot discard parked upload %s: %s", record.key, record.upload_id,
                    exc)
        return
    log.info("key=%s: discarded parked upload %s of %s: the file was written since",
             record.key, record.upload_id, record.user)


def find_parked(bucket: Bucket, key: str, ttl: float, user: str) -> Optional[ParkedUpload]:
    """Return the most recently parked upload of exactly ``key`` by ``user``, parked less
    than ``ttl`` seconds ago and still holding the parts its record names, or None; raises
    ``StorageError``."""
    now = time.time()
    records = sorted(all_objects(bucket, f"{RECORD_ROOT}{key}/"), key=lambda o: -o.mtime)
    for stored in records:
        if now - stored.mtime > ttl or "/" in stored.key[len(RECORD_ROOT) + len(key) + 1:]:
            continue
        found = _check(bucket, stored)
        if found is not None and found.record.user == user:
            return found
    return None


def _check(bucket: Bucket, stored: ObjectInfo) -> Optional[ParkedUpload]:
    """The parked upload ``stored`` records, if its record reads and its parts are there."""
    try:
        record = ParkRecord.from_json(bucket.read_small(stored.key, stored.size))
        listed = bucket.list_parts(record.key, record.upload_id)
        parts = leading_parts([*listed, *copies_to_make(record, listed)])[:record.parts]
    except (ValueError, NotFound) as exc:
        log.info("ignoring park record %s: %s", stored.key, exc)
        return None
    if len(parts) != record.parts or sum(part.size for part in parts) != record.size:
        log.warning("ignoring park record %s: COS holds other parts than it names",
                    stored.key)
        return None
    return ParkedUpload(record, tuple(parts), stored.mtime)


def copies_to_make(record: ParkRecord, listed: Iterable[PartInfo]) -> list[PartInfo]:
    """The copied parts of ``record`` that COS does not hold (of the parts ``listed``), with
    no ETag: a resume makes them again."""
    held = {part.number for part in listed}
    return [PartInfo(number, "", size, 0.0)
            for number, size in enumerate(record.copies, start=1) if number not in held]


def last_activity(upload: UploadInfo, parts: Iterable[PartInfo]) -> float:
    """When anything last happened to ``upload``: its newest part, or its initiation."""
    return max([upload.initiated, *(part.mtime for part in parts)])


def _keeps_uploads(bucket: Bucket) -> bool:
    """Whether ``bucket`` has records or live markers: one delimited listing of
    ``.cosftp/``, whose sub-directories tell."""
    kinds = bucket.list_page(f"{RESERVED_NAME}/").prefixes
    return RECORD_ROOT in kinds or LIVE_ROOT in kinds


def _marks_by_upload(bucket: Bucket, root: str) -> dict[str, ObjectInfo]:
    """The records or live markers under ``root``, by the upload id that ends their key."""
    return {mark.key.rsplit("/", 1)[-1]: mark for mark in all_objects(bucket, root)}


class Janitor:
    """Aborts, in ``buckets``, parked uploads parked more than ``ttl`` seconds ago and live
    uploads idle for more than ``max(ttl, orphan_idle)``; deletes records and markers whose
    upload is gone. Uploads with neither are another tool's and left alone.

    Each of ``buckets`` is a home (a bucket, or the ``Area`` of a ``cos_prefix``) with its own
    records and markers; uploads under a home that another home's records name (an account
    rooted in a directory of another) are that one's. ``buckets`` is gone through anew at
    each sweep, so it may make each home when it gets to it (``BucketRegistry.homes``).

    One runs per server (in worker 1); a second one during a reload only repeats aborts that
    COS then answers with NoSuchUpload.
    """

    def __init__(self, buckets: Iterable[Bucket], ttl: float,
                 orphan_idle: float = ORPHAN_IDLE_SECONDS) -> None:
        self._buckets = buckets
        self._ttl = ttl
        self._orphan_idle = max(ttl, orphan_idle)
        self._periodic = Periodic("janitor", max(1.0, min(600.0, ttl / 4)), self._sweep_all)

    def start(self) -> None:
        self._periodic.start()

    def stop(self, deadline: Optional[float] = None) -> None:
        """Stop sweeping (see ``Periodic.stop``)."""
        self._periodic.stop(deadline)

    def _sweep_all(self) -> None:
        for bucket in self._buckets:
            try:
                self.sweep(bucket)
            except StorageError as exc:
                log.warning("janitor: cannot sweep bucket %s: %s", bucket.name, exc)

    def sweep(self, bucket: Bucket) -> int:
        """Abort what has expired in ``bucket`` and delete records and markers whose upload
        is gone; return how many uploads were aborted. A home without records or markers
        costs one request (a configuration may have thousands)."""
        if not _keeps_uploads(bucket):
            return 0
        now = time.time()
        records = _marks_by_upload(bucket, RECORD_ROOT)
        markers = _marks_by_upload(bucket, LIVE_ROOT)
        aborted = 0
        for upload in bucket.list_uploads():
            marks = [mark for mark in (records.pop(upload.upload_id, None),
                                       markers.pop(upload.upload_id, None)) if mark]
            if marks and self._abort_if_idle(bucket, upload, now, marks):
                aborted += 1
                # At once, so that no client is offered an upload that is gone.
                for mark in marks:
                    bucket.delete(mark.key)
        for mark in [*records.values(), *markers.values()]:
            if now - mark.mtime > STALE_MARK_SECONDS:
                bucket.delete(mark.key)
        return aborted

    def _abort_if_idle(self, bucket: Bucket, upload: UploadInfo, now: float,
                       marks: list[ObjectInfo]) -> bool:
        """Abort ``upload`` if idle past its limit; return whether it was aborted.

        The newer of its record and live marker says what it is: parking writes the record
        after the marker, a claim the marker after the record.
        """
        newest = max(marks, key=lambda mark: mark.mtime)
        try:
            if newest.key.startswith(RECORD_ROOT):
                idle, limit = now - newest.mtime, self._ttl
            else:
                parts = bucket.list_parts(upload.key, upload.upload_id)
                idle = now - max(last_activity(upload, parts), newest.mtime)
                limit = self._orphan_idle
            if idle <= limit:
                return False
            bucket.abort_multipart(upload.key, upload.upload_id)
        except NotFound:
            return False
        log.info("janitor: aborted multipart upload %s of %r in %s, idle for %ds",
                 upload.upload_id, upload.key, bucket.name, idle)
        return True


class ResumeStore:
    """The park records and live markers of one user's uploads in one bucket: what the
    upload lifecycle asks about them. With ``ttl`` 0 nothing is parked or marked."""

    def __init__(self, bucket: Bucket, ttl: float, user: str) -> None:
        self.bucket, self.ttl, self.user = bucket, ttl, user

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def started(self, key: str, upload_id: str, path: str) -> None:
        """A multipart upload of ``key`` began: mark it live (raises ``StorageError``)."""
        if self.enabled:
            mark_live(self.bucket, key, upload_id, self.user, path)

    def ended(self, key: str, upload_id: str) -> None:
        """The multipart upload completed or was aborted: drop its live marker."""
        if self.enabled:
            unmark_live(self.bucket, key, upload_id)

    def park(self, record: ParkRecord) -> None:
        park(self.bucket, record)

    def find(self, key: str) -> Optional[ParkedUpload]:
        """This user's newest resumable parked upload of ``key``, or None; also None when
        the credentials may not read ``.cosftp/`` (keys limited to some prefixes)."""
        if not self.enabled:
            return None
        try:
            return find_parked(self.bucket, key, self.ttl, self.user)
        except PermissionDenied as exc:
            log.info("key=%s: cannot read %s (%s); going on without parked uploads", key,
                     RECORD_ROOT, exc)
            return None

    def claim(self, parked: ParkedUpload) -> None:
        claim(self.bucket, parked)

    def discard(self, parked: ParkedUpload) -> None:
        discard(self.bucket, parked)
