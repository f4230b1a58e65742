"""Multipart-upload aborts that failed, retried until COS takes them, so an interrupted
upload never stays behind costing storage."""

from __future__ import annotations

import logging
import threading
from typing import Optional

from ..errors import NotFound, StorageError
from .bucket import Bucket
from .periodic import Periodic

log = logging.getLogger(__name__)


class AbortRetrier:
    """Retries multipart-upload aborts that failed (COS unreachable) until they succeed, so
    an interrupted upload never stays behind costing storage. One thread per worker."""

    # Each pending abort is retried every interval for as long as COS refuses it (a key
    # without AbortMultipartUpload refuses it for ever), and a client can make one per
    # APPE + ABOR without sending a byte: past this many, the janitor is left to abort them
    # (their live markers stay), so the worker's memory and the retry passes stay bounded.
    MAX_PENDING = 256

    def __init__(self, interval: float = 5.0) -> None:
        self._pending: dict[tuple[str, str], Bucket] = {}
        self._lock = threading.Lock()
        self._periodic = Periodic("abort-retrier", interval, self._retry_all)

    def start(self) -> None:
        self._periodic.start()

    def add(self, bucket: Bucket, key: str, upload_id: str) -> bool:
        """Retry the abort of ``upload_id`` of ``key``; return False if ``MAX_PENDING``
        aborts are pending already (then it is not kept)."""
        with self._lock:
            if len(self._pending) >= self.MAX_PENDING and (key, upload_id) not in self._pending:
                return False
            self._pending[(key, upload_id)] = bucket
            return True

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
