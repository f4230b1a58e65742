"""Parked uploads: interrupted multipart uploads kept in COS so that REST + STOR continues them.

The state lives in COS itself, so a parked upload survives worker restarts, reloads and a move
to another worker. A parked upload is an ordinary multipart upload plus one tiny part numbered
10,000, the *marker*: no completed object ever includes it (at most 9,999 parts carry data), it
tells a parked upload from one that some session is still writing, and its LastModified is the
time it was parked. What can be resumed is the run of parts 1..k without a gap.

The :class:`Janitor` aborts multipart uploads (parked or left behind by a crash) once nothing
has happened to them for ``resume_ttl`` seconds, so that none keeps costing storage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

from .config import MIN_PART_SIZE
from .errors import NotFound, StorageError
from .storage import Bucket, PartInfo, UploadInfo

log = logging.getLogger(__name__)

MARKER_PART = 10000
MARKER_BODY = b"cosftp-prefork: parked upload; continue it with REST + STOR\n"


@dataclass(frozen=True)
class ParkedUpload:
    """A parked multipart upload: its data parts 1..k and when it was parked."""

    key: str
    upload_id: str
    parts: tuple[PartInfo, ...]
    parked_at: float

    @property
    def size(self) -> int:
        """Bytes that a resumed upload does not need to send again."""
        return sum(part.size for part in self.parts)


def leading_parts(parts: Iterable[PartInfo]) -> list[PartInfo]:
    """Return parts 1..k of ``parts`` (in any order): up to the first missing number, and
    without a part under 1 MiB (COS accepts one only as the last part of an object)."""
    by_number = {part.number: part for part in parts}
    run: list[PartInfo] = []
    while len(run) + 1 in by_number and by_number[len(run) + 1].size >= MIN_PART_SIZE:
        run.append(by_number[len(run) + 1])
    return run


def park(bucket: Bucket, key: str, upload_id: str) -> None:
    """Mark ``upload_id`` as parked (uploads the marker part); raises ``StorageError``."""
    bucket.upload_part(key, upload_id, MARKER_PART, MARKER_BODY)


def find_parked(bucket: Bucket, key: str, ttl: float) -> Optional[ParkedUpload]:
    """Return the most recently parked upload of exactly ``key`` parked less than ``ttl``
    seconds ago, or None; raises ``StorageError``."""
    best: Optional[ParkedUpload] = None
    now = time.time()
    for upload in bucket.list_uploads(key):
        if upload.key != key:
            continue
        try:
            parts = bucket.list_parts(key, upload.upload_id)
        except NotFound:  # completed or aborted since the listing
            continue
        marker = next((part for part in parts if part.number == MARKER_PART), None)
        data = leading_parts(parts)
        if marker is None or not data or now - marker.mtime > ttl:
            continue
        if best is None or marker.mtime > best.parked_at:
            best = ParkedUpload(key, upload.upload_id, tuple(data), marker.mtime)
    return best


def last_activity(upload: UploadInfo, parts: Iterable[PartInfo]) -> float:
    """When anything last happened to ``upload``: its newest part, or its initiation."""
    return max([upload.initiated, *(part.mtime for part in parts)])


class Janitor:
    """Aborts multipart uploads idle for more than ``ttl`` seconds in ``buckets``.

    One runs per server (in worker 1); a second one during a reload only repeats aborts that
    COS then answers with NoSuchUpload.
    """

    def __init__(self, buckets: list[Bucket], ttl: float) -> None:
        self._buckets = buckets
        self._ttl = ttl
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
        """Abort every upload of ``bucket`` idle past the TTL; return how many."""
        aborted = 0
        now = time.time()
        for upload in bucket.list_uploads():
            try:
                idle = now - last_activity(upload, bucket.list_parts(upload.key,
                                                                     upload.upload_id))
                if idle <= self._ttl:
                    continue
                bucket.abort_multipart(upload.key, upload.upload_id)
            except NotFound:
                continue
            aborted += 1
            log.info("janitor: aborted multipart upload %s of %r in %s, idle for %ds",
                     upload.upload_id, upload.key, bucket.name, idle)
        return aborted
