"""One COS call: SDK errors translated into :mod:`cosftp_prefork.errors`, transient ones
retried with back-off, each attempt counted and timed; a request sent now, read later."""

from __future__ import annotations

import logging
import random
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from typing import Any, Callable, Generic, Optional, TypeVar, Union

import requests
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from .. import metrics
from ..errors import AlreadyExists, NotFound, PermissionDenied, StorageError
from .signed import Sent
from .wire import Answer

log = logging.getLogger(__name__)
T = TypeVar("T")

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchResource", "NoSuchUpload", "NoSuchBucket"}
_DENIED_CODES = {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"}
# What COS answers (409) to a write with ``x-cos-forbid-overwrite: true`` onto an object.
_EXISTS_CODES = {"FileAlreadyExists"}


def _translate(exc: Exception, action: str) -> StorageError:
    if isinstance(exc, CosServiceError):
        digest = exc.get_digest_msg()
        # An error without a body (a HEAD's) leaves the SDK the response headers only.
        info = digest if isinstance(digest, Mapping) else {}
        code = str(info.get("code") or f"HTTP{exc.get_status_code()}")
        request_id = str(info.get("requestid") or info.get("x-cos-request-id") or "")
        message = str(info.get("message") or "")
        status = exc.get_status_code()
        cls = StorageError
        if code in _NOT_FOUND_CODES or status == 404:
            cls = NotFound
        elif code in _EXISTS_CODES:
            cls = AlreadyExists
        elif code in _DENIED_CODES or status == 403:
            cls = PermissionDenied
        text = f"COS {action} failed: {message}" if message else f"COS {action} failed"
        return cls(text, code=code, request_id=request_id, status=status)
    return StorageError(f"COS {action} failed: {exc}", code="ClientError")


RETRY_ATTEMPTS = 4
RETRY_BASE_SECONDS = 0.2
RETRY_CAP_SECONDS = 3.0


def _retryable(error: StorageError) -> bool:
    """Server errors, throttling and broken connections; never a 4xx answer. A copy COS
    answers 200 with an error body failed once begun (PUT Object - Copy): as a 5xx."""
    return error.status >= 500 or error.status == 200 or \
        error.code in ("SlowDown", "ClientError")


def call(action: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one SDK call, translating its errors; retry transient ones with exponential
    back-off and full jitter (the SDK's own retries, linear and without jitter, are off).

    Request bodies here are ``bytes`` or made anew by ``method``, so sending one again is
    safe. An answer the SDK cannot parse (XML holding raw control bytes) is an error like
    any other, never an exception that ends the session. Each attempt is counted and timed
    by operation: the first word of ``action``, always a literal here.
    """
    return call_since(None, action, method, *args, **kwargs)


def call_since(sent_at: Optional[float], action: str, method: Callable[..., Any], *args: Any,
               **kwargs: Any) -> Any:
    """:func:`call`, its first attempt timed from ``sent_at`` if given (``time.monotonic()``
    when its request went out, before ``method`` reads the answer)."""
    operation = action.split(" ", 1)[0]
    unheard = False  # a try went unanswered: COS may have carried it out
    for attempt in range(RETRY_ATTEMPTS):
        started = sent_at if sent_at is not None and not attempt else time.monotonic()
        try:
            result = method(*args, **kwargs)
        except ElementTree.ParseError as exc:
            metrics.cos_request(operation, "error", time.monotonic() - started)
            raise StorageError(f"COS {action} failed: unreadable answer ({exc})",
                               code="MalformedXML") from exc
        except (CosServiceError, CosClientError, requests.RequestException) as exc:
            error = _translate(exc, action)
            metrics.cos_request(operation, str(error.status or "error"),
                                time.monotonic() - started)
            error.unheard = unheard
            if attempt == RETRY_ATTEMPTS - 1 or not _retryable(error):
                raise error from exc
            unheard = unheard or error.code == "ClientError"
            back_off(action, error, attempt)
        else:
            metrics.cos_request(operation, "ok", time.monotonic() - started)
            return result
    raise AssertionError("unreachable")


def back_off(action: str, error: StorageError, attempt: int) -> None:
    """Wait before attempt ``attempt`` + 1 of ``action`` after ``error``: exponential
    back-off with full jitter; logged and counted as a retry of its operation."""
    delay = random.uniform(0, min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** attempt))
    log.info("%s: %s; retry %d in %.2fs", action, error, attempt + 1, delay)
    metrics.COS_RETRIES.labels(action.split(" ", 1)[0]).inc()
    time.sleep(delay)


class Started(Generic[T]):
    """A request of :meth:`Bucket.start_list_page` or :meth:`Bucket.start_put`, sent when it
    was made: :meth:`result` reads the answer with the errors, retries and counts of any COS
    call (an attempt that failed is sent again by ``again``); :meth:`drop` gives it up. One
    thread has several requests in flight at once that way, without handing them to other
    threads (issue 21). One thread at a time."""

    def __init__(self, action: str, sent: Union[Sent, CosClientError], sent_at: float,
                 read: Callable[[Answer], T], again: Callable[[], T]) -> None:
        self._action, self._sent, self._read, self._again = action, sent, read, again
        self._sent_at = sent_at  # the first attempt is timed from its request

    def arrived(self) -> bool:
        """Whether :meth:`result` would not wait for COS (for the first attempt's answer)."""
        return not isinstance(self._sent, Sent) or self._sent.arrived()

    def result(self) -> T:
        first, self._sent = self._sent, None

        def attempt() -> T:
            nonlocal first
            sent, first = first, None
            if sent is None:
                return self._again()
            if isinstance(sent, CosClientError):
                raise sent
            return self._read(sent.answer())
        return call_since(self._sent_at, self._action, attempt)

    def drop(self) -> None:
        if isinstance(self._sent, Sent):
            self._sent.drop()
        self._sent = None
