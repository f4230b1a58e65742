"""Parked uploads: interrupted multipart uploads kept in COS so that REST + STOR continues them.

A parked upload is an ordinary multipart upload plus a small JSON *record*,
``.cosftp/parked/<key>/<upload id>``, naming the user, the FTP path, the bytes stored in parts
1..k (the run without a gap) and their CRC64, so the resumed object is checked end to end like
any other. The state lives in COS only: a parked upload survives worker restarts, reloads and
a move to another worker. An upload without a record is one some session is still writing (or
one a crash left behind) and is never adopted. A session that resumes an upload deletes its
record first, so two sessions do not continue the same one; if it breaks again, it is parked
again with a new record.

The :class:`Janitor` aborts multipart uploads idle for more than ``resume_ttl`` seconds (parked
or left behind by a crash) and deletes records as old, so nothing keeps costing storage.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Optional

from .config import MIN_PART_SIZE
from .errors import NotFound, StorageError
from .listing import all_objects
from .paths import RESERVED_NAME
from .storage import Bucket, ObjectInfo, PartInfo, UploadInfo

log = logging.getLogger(__name__)

RECORD_ROOT = f"{RESERVED_NAME}/parked/"
# An upload without a record may still be in flight (a slow client can take long over one
# part), so it is only taken for abandoned after this long without a new part, whatever
# resume_ttl says.
ORPHAN_IDLE_SECONDS = 3600.0


@dataclass(frozen=True)
class ParkRecord:
    """What is known of a parked upload: who, where, and what part of the file COS holds."""

    user: str
    path: str
    key: str
    upload_id: str
    size: int
    parts: int
    crc64: Optional[int]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ParkRecord:
        """Raises ``ValueError`` for anything but a record this module wrote."""
        try:
            return cls(**json.loads(data))
        except (TypeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a park record: {exc}") from exc


def record_key(key: str, upload_id: str) -> str:
    """Where the record of ``upload_id`` of ``key`` lives."""
    return f"{RECORD_ROOT}{key}/{upload_id}"


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
    """Write ``record``, which makes its upload resumable; raises ``StorageError``."""
    bucket.put(record_key(record.key, record.upload_id), record.to_json())


def claim(bucket: Bucket, parked: ParkedUpload) -> None:
    """Take ``parked`` for this session: no other session will find it; raises
    ``StorageError``."""
    bucket.delete(record_key(parked.record.key, parked.record.upload_id))


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
        parts = leading_parts(bucket.list_parts(record.key, record.upload_id))[:record.parts]
    except (ValueError, NotFound) as exc:
        log.info("ignoring park record %s: %s", stored.key, exc)
        return None
    if len(parts) != record.parts or sum(part.size for part in parts) != record.size:
        log.warning("ignoring park record %s: COS holds other parts than it names",
                    stored.key)
        return None
    return ParkedUpload(record, tuple(parts), stored.mtime)


def last_activity(upload: UploadInfo, parts: Iterable[PartInfo]) -> float:
    """When anything last happened to ``upload``: its newest part, or its initiation."""
    return max([upload.initiated, *(part.mtime for part in parts)])


class Janitor:
    """Aborts, in ``buckets``, parked uploads parked more than ``ttl`` seconds ago and other
    multipart uploads idle for more than ``max(ttl, orphan_idle)``; deletes expired records.

    One runs per server (in worker 1); a second one during a reload only repeats aborts that
    COS then answers with NoSuchUpload.
    """

    def __init__(self, buckets: list[Bucket], ttl: float,
                 orphan_idle: float = ORPHAN_IDLE_SECONDS) -> None:
        self._buckets = buckets
        self._ttl = ttl
        self._orphan_idle = max(ttl, orphan_idle)
        self._interval = max(1.0, min(600.0, ttl / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="janitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for bucket in self._buckets:
                try:
                    self.sweep(bucket)
                except StorageError as exc:
                    log.warning("janitor: cannot sweep bucket %s: %s", bucket.name, exc)

    def sweep(self, bucket: Bucket) -> int:
        """Abort what has expired in ``bucket`` and delete expired records; return how many
        uploads were aborted."""
        now = time.time()
        records = {record.key.rsplit("/", 1)[-1]: record for record in
                   all_objects(bucket, RECORD_ROOT)}
        aborted = 0
        for upload in bucket.list_uploads():
            record = records.get(upload.upload_id)
            if self._abort_if_idle(bucket, upload, now, record is not None):
                aborted += 1
                if record is not None:
                    # At once, so that no client is offered an upload that is gone.
                    bucket.delete(records.pop(upload.upload_id).key)
        for record in records.values():
            if now - record.mtime > self._ttl:
                bucket.delete(record.key)
        return aborted

    def _abort_if_idle(self, bucket: Bucket, upload: UploadInfo, now: float,
                       parked: bool) -> bool:
        """Abort ``upload`` if idle past its limit; return whether it was aborted."""
        limit = self._ttl if parked else self._orphan_idle
        try:
            idle = now - last_activity(upload, bucket.list_parts(upload.key, upload.upload_id))
            if idle <= limit:
                return False
            bucket.abort_multipart(upload.key, upload.upload_id)
        except NotFound:
            return False
        log.info("janitor: aborted multipart upload %s of %r in %s, idle for %ds",
                 upload.upload_id, upload.key, bucket.name, idle)
        return True
