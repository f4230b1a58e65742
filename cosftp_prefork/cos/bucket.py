"""Typed access to one COS bucket; with ``signed.py``, the only modules that import
``qcloud_cos``.

Every SDK exception is translated here, once, into :mod:`cosftp_prefork.errors` so the layers
above see ``OSError`` subclasses with a real errno, the COS error code and the request id.

Clients are created lazily by the process that uses them (a worker, after fork) and each
registry (``cos.registry``) owns its own ``requests`` session: the SDK otherwise shares one
session at class level between every client of the process.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import email.utils
import io
import itertools
import logging
import random
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Generic, Optional, TypeVar, Union

import requests
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_auth import CosS3Auth
from qcloud_cos.cos_comm import (
    check_object_content_length,
    gen_copy_source_url,
    get_content_md5,
    mapped,
    path_simplify_check,
)
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from urllib3 import HTTPHeaderDict

from .. import metrics
from ..config.model import AccountConfig
from ..errors import AlreadyExists, NotFound, PermissionDenied, StorageError
from ..paths import MAX_KEY_BYTES
from .checksum import crc64_of
from .pagination import marker_after, paginate
from .signed import Answer, Sender, Sent, SocketBody, body_into, copy_etag, socket_body

log = logging.getLogger(__name__)
T = TypeVar("T")

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchResource", "NoSuchUpload", "NoSuchBucket"}
_DENIED_CODES = {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"}
# What COS answers (409) to a write with ``x-cos-forbid-overwrite: true`` onto an object.
_EXISTS_CODES = {"FileAlreadyExists"}
FORBID_OVERWRITE = "x-cos-forbid-overwrite"
LIST_PAGE_MAX = 1000
# Where GetService lists an account's buckets (with a cos_ip, sent there with this Host).
SERVICE_HOST = "service.cos.myqcloud.com"
# The modification time a client set with MFMT, in seconds since the epoch; the name rclone
# uses too, so both tools see the same time.
MTIME_HEADER = "x-cos-meta-mtime"
_USER_METADATA = "x-cos-meta-"
# The headers an object keeps across a copy that replaces its metadata, by SDK argument.
_CONTENT_HEADERS = {"content-type": "ContentType", "cache-control": "CacheControl",
                    "content-disposition": "ContentDisposition",
                    "content-encoding": "ContentEncoding",
                    "content-language": "ContentLanguage", "expires": "Expires"}
# A copy is stored unencrypted unless it asks again, whatever its metadata directive.
_ENCRYPTION_HEADERS = {"x-cos-server-side-encryption": "ServerSideEncryption",
                       "x-cos-server-side-encryption-cos-kms-key-id": "SSEKMSKeyId"}
_KEPT_HEADERS = {**_ENCRYPTION_HEADERS, **_CONTENT_HEADERS}


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD or a listing says about one object."""

    key: str
    size: int
    mtime: float
    etag: str = ""
    crc64: Optional[int] = None
    client_mtime: Optional[float] = None  # what MFMT stored in x-cos-meta-mtime (HEAD only)
    # Content headers, encryption and user metadata, as (lower-case name, value), and the
    # storage class ("" when COS does not say: STANDARD); HEAD only.
    attributes: tuple[tuple[str, str], ...] = ()
    storage_class: str = ""

    def for_new_bytes(self) -> ObjectInfo:
        """What a new version of this object's bytes (APPE) keeps: all but the MFMT time."""
        return dataclasses.replace(self, client_mtime=None, attributes=tuple(
            item for item in self.attributes if item[0] != MTIME_HEADER))


@dataclass(frozen=True)
class ForeignObject(ObjectInfo):
    """An object of another bucket (or of another prefix: a virtual folder's) to copy into
    this one: ``key`` is its whole key in ``home``, the bucket holding it. COS reads the
    source of a copy with the credentials of the request, the destination's."""

    home: Optional[Bucket] = field(default=None, compare=False, repr=False)


def foreign(home: Bucket, info: ObjectInfo) -> ForeignObject:
    """``info``, an object of ``home`` (a bucket or an area), as another bucket's copy
    names it."""
    bucket, key = home.located(info.key)
    values = {item.name: getattr(info, item.name) for item in dataclasses.fields(info)}
    return ForeignObject(**{**values, "key": key, "home": bucket})


@dataclass(frozen=True)
class Completed:
    """What COS answers when it stored an object (a PUT or a completed multipart upload);
    ``version_id`` only where the bucket keeps versions."""

    etag: str
    crc64: Optional[int]
    version_id: str = ""


@dataclass(frozen=True)
class UploadedPart:
    """A part COS stored: its ETag and the CRC64 of its bytes (checked against COS's)."""

    etag: str
    crc64: int


@dataclass(frozen=True)
class UploadInfo:
    """One multipart upload in progress (or parked) in a bucket."""

    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True)
class PartInfo:
    """One uploaded part of a multipart upload."""

    number: int
    etag: str
    size: int
    mtime: float


@dataclass(frozen=True)
class ListPage:
    """One page of a delimited listing."""

    objects: tuple[ObjectInfo, ...]
    prefixes: tuple[str, ...]
    next_marker: Optional[str]


class ObjectStream:
    """The body of a GET, read in chunks, or moved into a pipe by :meth:`splice_into`;
    ``close()`` releases the connection. ``size`` is the whole object's (a ranged GET says
    it in Content-Range), ``length`` this body's."""

    def __init__(self, raw: Any, length: int, etag: str = "", size: Optional[int] = None) -> None:
        self._raw = raw
        self.length = length
        self.etag = etag
        self.size = length if size is None else size
        self._body: Union[SocketBody, bool, None] = False  # False: not asked yet

    def read(self, size: int) -> bytes:
        """Return up to ``size`` bytes, ``b""`` at the end; raises ``StorageError`` on a reset."""
        try:
            return self._raw.read(size)
        except Exception as exc:  # urllib3 raises several unrelated types on a broken stream
            raise _stream_broke(exc) from exc

    def readinto(self, buffer: memoryview) -> int:
        """Read up to ``len(buffer)`` bytes into ``buffer``; how many, 0 at the end."""
        try:
            return body_into(self._raw, buffer)
        except Exception as exc:  # http.client, socket and TLS errors alike
            raise _stream_broke(exc) from exc

    def splice_into(self, pipe: int, size: int) -> Optional[int]:
        """Move up to ``size`` bytes into the pipe ``pipe`` in the kernel, never through
        this process's memory; return how many (0 at the end), or None if this stream
        cannot (see :func:`signed.socket_body`): then read it. Asked before any ``read``;
        once it answered a number, the stream is read by this method only."""
        try:
            if self._body is False:
                self._body = socket_body(self._raw)
            if self._body is None:
                return None
            return self._body.splice_into(pipe, size)
        except OSError as exc:
            raise _stream_broke(exc) from exc

    def close(self) -> None:
        if self._body:
            self._body.close()
        else:
            self._raw.close()


def _read_exactly(stream: ObjectStream, key: str, size: int) -> bytes:
    """The first ``size`` bytes of ``stream`` (of ``key``); ``ShortRead`` if it has fewer,
    ``StreamError`` if it breaks."""
    chunks, got = [], 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            raise StorageError(f"COS GET {key} ended after {got} of {size} bytes",
                               code="ShortRead")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _stream_broke(exc: Exception) -> StorageError:
    return StorageError(f"COS download stream broke: {exc}", code="StreamError")


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


def _call(action: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one SDK call, translating its errors; retry transient ones with exponential
    back-off and full jitter (the SDK's own retries, linear and without jitter, are off).

    Request bodies here are ``bytes`` or made anew by ``method``, so sending one again is
    safe. An answer the SDK cannot parse (XML holding raw control bytes) is an error like
    any other, never an exception that ends the session. Each attempt is counted and timed
    by operation: the first word of ``action``, always a literal here.
    """
    return _call_since(None, action, method, *args, **kwargs)


def _call_since(sent_at: Optional[float], action: str, method: Callable[..., Any], *args: Any,
                **kwargs: Any) -> Any:
    """:func:`_call`, its first attempt timed from ``sent_at`` if given (``time.monotonic()``
    when its request went out, before ``method`` reads the answer)."""
    operation = action.split(" ", 1)[0]
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
            if attempt == RETRY_ATTEMPTS - 1 or not _retryable(error):
                raise error from exc
            _back_off(action, error, attempt)
        else:
            metrics.cos_request(operation, "ok", time.monotonic() - started)
            return result
    raise AssertionError("unreachable")


def _back_off(action: str, error: StorageError, attempt: int) -> None:
    """Wait before attempt ``attempt`` + 1 of ``action`` after ``error``: exponential
    back-off with full jitter; logged and counted as a retry of its operation."""
    delay = random.uniform(0, min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** attempt))
    log.info("%s: %s; retry %d in %.2fs", action, error, attempt + 1, delay)
    metrics.COS_RETRIES.labels(action.split(" ", 1)[0]).inc()
    time.sleep(delay)


def _reported_crc64(headers: Mapping[str, Any]) -> Optional[int]:
    """The first ``x-cos-hash-crc64ecma`` of ``headers`` that is a number, None if none."""
    for value in _values(headers, "x-cos-hash-crc64ecma"):
        if str(value).isdigit():
            return int(value)
    return None


def _header(headers: Mapping[str, Any], wanted: str) -> str:
    """The value of the header ``wanted`` (lower case) in ``headers``, "" if absent."""
    values = _values(headers, wanted)
    return str(values[0]) if values else ""


def _values(headers: Mapping[str, Any], wanted: str) -> list[Any]:
    """The values of the header ``wanted`` (lower case) in ``headers``, in order. An
    ``HTTPHeaderDict`` (every answer of ``Sender``) is asked, as it keeps its names in lower
    case: going through its items joined each header's values again, 10-13 us per answer
    read, 20-25 us per PUT's (docs/performance.md); the SDK's plain dicts, whose names come
    in any case, are searched."""
    if isinstance(headers, HTTPHeaderDict):
        return headers.getlist(wanted)
    return [value for name, value in headers.items() if name.lower() == wanted]


def _whole_size(content_range: str, fallback: int) -> int:
    """The object's size from a ranged GET's ``Content-Range: bytes a-b/size``."""
    total = content_range.rpartition("/")[2]
    return int(total) if total.isdigit() else fallback


def _float_or_none(value: str) -> Optional[float]:
    try:
        return float(value)
    except ValueError:
        return None


def _object_headers(source: Optional[ObjectInfo], client_mtime: Optional[float],
                    metadata: bool = True) -> dict[str, Any]:
    """SDK arguments that give a new object the storage class, encryption and (with
    ``metadata``) the content headers and user metadata of ``source`` if given, with
    ``client_mtime`` as its MFMT time if given."""
    attributes = source.attributes if source is not None else ()
    names = _KEPT_HEADERS if metadata else _ENCRYPTION_HEADERS
    headers: dict[str, Any] = {names[name]: value for name, value in attributes
                               if name in names}
    user = {name: value for name, value in attributes if name.startswith(_USER_METADATA)}
    if client_mtime is not None:
        user[MTIME_HEADER] = str(int(client_mtime))
    if metadata and user:
        headers["Metadata"] = user
    if source is not None and source.storage_class:
        headers["StorageClass"] = source.storage_class
    return headers


def _pin(source: ObjectInfo) -> dict[str, str]:
    """SDK arguments that make a copy of ``source`` fail unless it still has its ETag."""
    return {"CopySourceIfMatch": f'"{source.etag}"'} if source.etag else {}


@contextlib.contextmanager
def _source_unchanged(source: ObjectInfo) -> Iterator[None]:
    """Turn COS's answer to a copy pinned with :func:`_pin` whose source has another ETag
    now (412) into ``StorageError`` with code ``ObjectChanged``."""
    try:
        yield
    except StorageError as exc:
        if exc.code != "PreconditionFailed":
            raise
        raise StorageError(f"{source.key} was replaced while it was being copied; "
                           f"nothing was changed, try again", code="ObjectChanged") from exc


def _kept_attributes(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, value) for name, value in headers.items()
                        if name in _KEPT_HEADERS or name.startswith(_USER_METADATA)))


def _parse_http_date(value: str) -> float:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _decoded(value: str) -> str:
    """A key or prefix from a listing asked for with ``EncodingType=url``."""
    return urllib.parse.unquote(str(value), errors="surrogateescape")


def _parse_list_page(content: bytes) -> ListPage:
    """A ``ListBucketResult`` (asked for with ``EncodingType=url``) as a :class:`ListPage`."""
    objects, prefixes, fields = [], [], {}
    for element in ElementTree.fromstring(content):
        tag = element.tag.rpartition("}")[2]
        if tag == "Contents":
            item = {child.tag.rpartition("}")[2]: child.text or "" for child in element}
            objects.append(ObjectInfo(
                key=_decoded(item.get("Key", "")), size=int(item.get("Size") or 0),
                mtime=_parse_iso_date(item.get("LastModified", "")),
                etag=item.get("ETag", "").strip('"')))
        elif tag == "CommonPrefixes":
            prefixes.extend(_decoded(child.text or "") for child in element)
        else:
            fields[tag] = element.text or ""
    last = max([o.key for o in objects] + prefixes, default=None)
    next_marker = marker_after(fields.get("IsTruncated"), _decoded(fields.get("NextMarker", "")),
                               last)
    return ListPage(objects=tuple(objects), prefixes=tuple(prefixes), next_marker=next_marker)


def _completed(answer: Answer) -> Completed:
    """What a PUT's answer says of the object it stored."""
    return Completed(str(answer.headers.get("ETag", "")).strip('"'),
                     _reported_crc64(answer.headers),
                     _header(answer.headers, "x-cos-version-id"))


def _following(page: tuple[list[Any], Optional[Any]]) -> Optional[Any]:
    """The next marker of a page as the ``fetch`` of :meth:`Bucket.list_uploads` and
    :meth:`Bucket.list_parts` return it."""
    return page[1]


def _parse_iso_date(value: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _list_params(prefix: str, marker: str, max_keys: int, delimiter: str) -> dict[str, str]:
    return {"prefix": prefix, "delimiter": delimiter, "marker": marker,
            "max-keys": str(max_keys), "encoding-type": "url"}


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
        return _call_since(self._sent_at, self._action, attempt)

    def drop(self) -> None:
        if isinstance(self._sent, Sent):
            self._sent.drop()
        self._sent = None


# A listing page of :meth:`Bucket.start_list_page`: its ``result()`` is the page.
StartedPage = Started[ListPage]


class Bucket:
    """Operations on one bucket with one account's credentials.

    Methods raise ``NotFound``, ``PermissionDenied`` or ``StorageError``; they are safe to call
    from several threads at once.
    """

    # The bytes a key may have: COS's limit, less the prefix of an area (``cos.area``).
    key_room = MAX_KEY_BYTES

    def __init__(self, client: CosS3Client, name: str, region: Optional[str],
                 endpoint: Optional[str] = None) -> None:
        self._client = client
        self._sender = Sender(client)
        self.name = name
        self.region = region
        self.endpoint = endpoint

    def located(self, key: str) -> tuple[Bucket, str]:
        """The bucket that holds ``key`` and its whole key there (see ``Area``)."""
        return self, key

    def _source_of(self, source: ObjectInfo) -> dict[str, str]:
        """The copy source of ``source``: of this bucket, or of another one's."""
        if isinstance(source, ForeignObject) and source.home is not None:
            return source.home._copy_source(source.key)
        return self._copy_source(source.key)

    def _copy_source(self, key: str) -> dict[str, str]:
        """The SDK's copy source for ``key`` of this bucket: by endpoint when the account
        names one (private deployments configure no region), else by region."""
        if self.endpoint:
            return {"Bucket": self.name, "Key": key, "Endpoint": self.endpoint}
        return {"Bucket": self.name, "Key": key, "Region": self.region or ""}

    def head(self, key: str) -> ObjectInfo:
        """Return size, mtime, ETag, checksum and the attributes a copy keeps of ``key``;
        raises ``NotFound`` if there is no such key."""
        answer = _call(f"HEAD {key}", self._sender.send, "HEAD", self.name, key)
        headers = {name.lower(): value for name, value in answer.headers.items()}
        return ObjectInfo(
            key=key,
            size=int(headers.get("content-length", 0)),
            mtime=_parse_http_date(headers.get("last-modified", "")),
            etag=headers.get("etag", "").strip('"'),
            crc64=_reported_crc64(headers),
            client_mtime=_float_or_none(headers.get(MTIME_HEADER, "")),
            attributes=_kept_attributes(headers),
            storage_class=headers.get("x-cos-storage-class", ""),
        )

    def head_bucket(self) -> None:
        """Check that the bucket answers these credentials at this endpoint: raises
        ``NotFound`` (no such bucket here), ``PermissionDenied`` or ``StorageError``. COS
        answers a HEAD without a body, so without an error code."""
        _call("HeadBucket", self._client.head_bucket, Bucket=self.name)

    def listed_region(self) -> Optional[str]:
        """The region GetService (the list of the account's buckets, at
        ``service.cos.myqcloud.com``) gives for this bucket; None if it is not listed."""
        return _call("GetService", self._list_buckets).get(self.name)

    def _list_buckets(self) -> dict[str, str]:
        conf = self._client._conf
        url = conf.uri() if conf._ip else f"{conf._scheme}://{SERVICE_HOST}/"
        response = self._client.send_request(
            method="GET", url=url, headers={"Host": SERVICE_HOST}, auth=CosS3Auth(conf))
        regions = {}
        for element in ElementTree.fromstring(response.content).iter():
            if element.tag.rpartition("}")[2] == "Bucket":
                fields = {child.tag.rpartition("}")[2]: child.text or "" for child in element}
                regions[fields.get("Name", "")] = fields.get("Location", "")
        return regions

    def list_page(
        self, prefix: str, marker: str = "", max_keys: int = LIST_PAGE_MAX, delimiter: str = "/"
    ) -> ListPage:
        """Return one page of keys and common prefixes under ``prefix`` after ``marker``.

        ``next_marker`` is None when the listing is complete. COS sends NextMarker only when
        truncated, and some implementations omit it, so fall back on the last key or prefix.
        Keys come URL-encoded (``EncodingType=url``) and are decoded here, so a key holding
        control bytes, written by another tool, lists like any other.
        """
        return _call(f"LIST {prefix or '/'}", self._list,
                     _list_params(prefix, marker, max_keys, delimiter))

    def start_list_page(self, prefix: str, max_keys: int, delimiter: str = "/") -> StartedPage:
        """The first page of :meth:`list_page`, its request sent now and its answer read by
        :meth:`StartedPage.result` (issue 21: a new file's look-ups)."""
        params = _list_params(prefix, "", max_keys, delimiter)
        return self._start(f"LIST {prefix or '/'}", lambda answer: _parse_list_page(answer.data),
                           lambda: self._list(params), "GET", params=params)

    def _start(self, action: str, read: Callable[[Answer], T], again: Callable[[], T],
               method: str, key: str = "", **request: Any) -> Started[T]:
        """``method`` on ``key`` sent now, as :class:`Started` reads it (``read`` its answer,
        ``again`` for each further attempt)."""
        sent_at = time.monotonic()
        try:
            sent: Union[Sent, CosClientError] = self._sender.start(method, self.name, key,
                                                                   **request)
        except CosClientError as exc:  # not sent: result() raises it, as a first attempt
            sent = exc
        return Started(action, sent, sent_at, read, again)

    def _list(self, params: dict[str, str]) -> ListPage:
        """One ListObjects request, signed as the SDK's ``list_objects`` signs it; the SDK's
        XML-to-dict conversion, most of a listing's CPU, is replaced by
        :func:`_parse_list_page`."""
        return _parse_list_page(self._sender.send("GET", self.name, params=params).data)

    def open_read(self, key: str, offset: int = 0, etag: str = "") -> ObjectStream:
        """Start a GET of ``key`` from byte ``offset``, of the version with ``etag`` if
        given; raises ``NotFound``, and ``StorageError`` with code ``PreconditionFailed``
        once the object has another ETag."""
        extra: dict[str, str] = {"Range": f"bytes={offset}-"} if offset else {}
        if etag:
            extra["IfMatch"] = f'"{etag}"'
        path_simplify_check(path=key)  # as the SDK's get_object: "a/.." would list the bucket
        answer = _call(f"GET {key}", self._sender.send, "GET", self.name, key,
                       headers=mapped(extra), stream=True)
        length = int(answer.headers.get("Content-Length", 0))
        return ObjectStream(answer.raw, length, str(answer.headers.get("ETag", "")).strip('"'),
                            _whole_size(_header(answer.headers, "content-range"),
                                        offset + length))

    def read_small(self, key: str, size: int) -> bytes:
        """Return the first ``size`` bytes of ``key`` (meant for small objects); raises
        ``StorageError`` if fewer arrive. A body cut short on the way (a reset: a
        ``StreamError``) is asked for again, as :func:`_call` retries a failed request: a
        resume or an append must not fail on what a second GET delivers."""
        for attempt in range(RETRY_ATTEMPTS):
            stream = self.open_read(key)
            try:
                return _read_exactly(stream, key, size)
            except StorageError as error:
                if error.code != "StreamError" or attempt == RETRY_ATTEMPTS - 1:
                    raise
                _back_off(f"GET {key}", error, attempt)
            finally:
                stream.close()
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes, like: Optional[ObjectInfo] = None,
            if_absent: bool = False) -> Completed:
        """Store ``data`` as ``key`` in one request, with the storage class, encryption,
        content headers and metadata of ``like`` if given; return the new object's ETag, the
        CRC64 COS reports, if any, and its version id where the bucket keeps versions.

        With ``if_absent`` (``x-cos-forbid-overwrite``), COS refuses to replace an object
        already there: ``AlreadyExists``. COS honours that header only in a bucket whose
        versioning was never enabled (see :meth:`versioning`)."""
        headers = self._put_headers(data, like, if_absent)
        return _completed(_call(f"PUT {key}", self._sender.send, "PUT", self.name, key,
                                headers=headers, body=data))

    def start_put(self, key: str, data: bytes) -> Started[Completed]:
        """:meth:`put` of ``data`` (no attributes), its request sent now and its answer read
        by :meth:`Started.result`: an MFMT marker written beside a copy by the thread that
        sends the copy (issue 21)."""
        headers = self._put_headers(data, None, False)
        return self._start(f"PUT {key}", _completed, lambda: _completed(
            self._sender.send("PUT", self.name, key, headers=headers, body=data)),
            "PUT", key, headers=headers, body=data)

    @staticmethod
    def _put_headers(data: bytes, like: Optional[ObjectInfo], if_absent: bool) -> dict:
        check_object_content_length(data)
        headers = mapped(_object_headers(like, None))
        if if_absent:
            headers[FORBID_OVERWRITE] = "true"
        headers["Content-MD5"] = get_content_md5(data)
        return headers

    def versioning(self) -> str:
        """The bucket's versioning status: "Enabled", "Suspended", or "" if never enabled."""
        result = _call("GET versioning", self._client.get_bucket_versioning, Bucket=self.name)
        return str((result or {}).get("Status") or "")

    def create_multipart(self, key: str, like: Optional[ObjectInfo] = None,
                         client_mtime: Optional[float] = None) -> str:
        """Start a multipart upload of an object with the storage class, content headers and
        metadata of ``like`` and ``client_mtime`` as its MFMT time, where given; return its
        upload id."""
        result = _call(f"InitiateMultipartUpload {key}", self._client.create_multipart_upload,
              Bucket=self.name, Key=key, **_object_headers(like, client_mtime))
        return str(result["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int,
                    chunks: Sequence[bytes]) -> UploadedPart:
        """Upload part ``number`` (1-based), the bytes of ``chunks`` one after the other;
        return its ETag and CRC64. The chunks are sent as they are: no copy of the part is
        made. Instead of Content-MD5 (a second hash of every byte), the CRC64 COS reports
        for the part is checked: a mismatch raises ``StorageError`` (``CRC64Mismatch``)."""
        sent = crc64_of(chunks)

        def send(**kwargs: Any) -> Any:  # a retry sends the body from its start again
            return self._client.upload_part(Body=ChunkedBody(chunks), **kwargs)

        result = _call(f"UploadPart {key} #{number}", send, Bucket=self.name, Key=key,
                       PartNumber=number, UploadId=upload_id)
        reported = _reported_crc64(result)
        if reported is not None and reported != sent:
            raise StorageError(f"integrity check failed for part {number} of {key}: COS "
                               f"stored other bytes than were sent (CRC64 {reported}, sent "
                               f"{sent})", code="CRC64Mismatch")
        return UploadedPart(str(result["ETag"]), sent)

    def upload_part_copy(self, key: str, upload_id: str, number: int, source: ObjectInfo,
                         first: int, last: int) -> str:
        """Make part ``number`` from bytes ``first..last`` of ``source`` inside COS; return
        its ETag. Raises ``StorageError`` with code ``ObjectChanged`` once ``source`` has
        another ETag than the one given, so that parts of two versions never mix."""
        copy_source = self._source_of(source)
        with _source_unchanged(source):
            result = _call(f"UploadPartCopy {source.key} -> {key} #{number}",
                  self._client.upload_part_copy, Bucket=self.name, Key=key, PartNumber=number,
                  UploadId=upload_id, CopySource=copy_source,
                  CopySourceRange=f"bytes={first}-{last}", **_pin(source))
        return str(result["ETag"])

    def complete_multipart(self, key: str, upload_id: str,
                           etags: list[tuple[int, str]]) -> Completed:
        """Commit the parts, given as ``(number, etag)`` in ascending order; return the new
        object's ETag and the CRC64 COS reports for it, if any."""
        parts = [{"PartNumber": number, "ETag": etag} for number, etag in etags]
        result = _call(f"CompleteMultipartUpload {key}", self._client.complete_multipart_upload,
              Bucket=self.name, Key=key, UploadId=upload_id, MultipartUpload={"Part": parts})
        return Completed(str(result.get("ETag", "")).strip('"'), _reported_crc64(result))

    def list_uploads(self, prefix: str = "") -> list[UploadInfo]:
        """Return every multipart upload not yet completed or aborted under ``prefix``."""
        def fetch(markers: tuple[str, str]) -> tuple[list[UploadInfo], Optional[tuple[str, str]]]:
            result = _call(f"ListMultipartUploads {prefix or '/'}",
                           self._client.list_multipart_uploads, Bucket=self.name, Prefix=prefix,
                           KeyMarker=markers[0], UploadIdMarker=markers[1])
            uploads = [UploadInfo(str(item["Key"]), str(item["UploadId"]),
                                  _parse_iso_date(str(item.get("Initiated", ""))))
                       for item in result.get("Upload", [])]
            given = (str(result.get("NextKeyMarker") or ""),
                     str(result.get("NextUploadIdMarker") or ""))
            last = (uploads[-1].key, uploads[-1].upload_id) if uploads else None
            return uploads, marker_after(result.get("IsTruncated"), given if given[0] else None,
                                         last)
        return [upload for uploads, _ in paginate(fetch, _following, ("", ""))
                for upload in uploads]

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        """Return the parts uploaded so far to ``upload_id``, by ascending number; raises
        ``NotFound`` once the upload is gone."""
        def fetch(marker: int) -> tuple[list[PartInfo], Optional[int]]:
            result = _call(f"ListParts {key}", self._client.list_parts, Bucket=self.name,
                           Key=key, UploadId=upload_id, PartNumberMarker=marker)
            parts = [PartInfo(int(item["PartNumber"]), str(item.get("ETag", "")),
                              int(item.get("Size", 0)),
                              _parse_iso_date(str(item.get("LastModified", ""))))
                     for item in result.get("Part", [])]
            return parts, marker_after(result.get("IsTruncated"),
                                       int(result.get("NextPartNumberMarker") or 0),
                                       parts[-1].number if parts else None)
        return [part for parts, _ in paginate(fetch, _following, 0) for part in parts]

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload, freeing its parts."""
        _call(f"AbortMultipartUpload {key}", self._client.abort_multipart_upload,
              Bucket=self.name, Key=key, UploadId=upload_id)

    def copy(self, source: ObjectInfo, dst_key: str,
             client_mtime: Optional[float] = None, pinned: bool = False) -> str:
        """Server-side copy of ``source`` to ``dst_key`` within this bucket (≤ 5 GB) in its
        storage class, with its metadata; with ``client_mtime`` as the MFMT time if given,
        when ``source`` must come from a HEAD or tell all its attributes otherwise (its
        metadata is then sent anew). With ``pinned``, only while ``source`` still has its
        ETag: ``StorageError`` with code ``ObjectChanged`` otherwise. Return the copy's
        ETag."""
        conf = self._client._conf
        if client_mtime is None:
            extra, directive = _object_headers(source, None, metadata=False), "Copy"
        else:
            extra, directive = _object_headers(source, client_mtime), "Replaced"
        if pinned:
            extra.update(_pin(source))
        headers = mapped(extra)
        headers["x-cos-copy-source"] = gen_copy_source_url(
            self._source_of(source), conf._enable_old_domain, conf._enable_internal_domain)
        headers["x-cos-metadata-directive"] = directive
        def send() -> str:  # COS may answer 200 with an error body: read it in the call
            return copy_etag(self._sender.send("PUT", self.name, dst_key, headers=headers))

        with _source_unchanged(source):
            return str(_call(f"COPY {source.key} -> {dst_key}", send))

    def delete_many(self, keys: list[str]) -> None:
        """Delete up to 1,000 keys in one request; raises ``StorageError`` naming a failure."""
        objects = [{"Key": key} for key in keys]
        result = _call(f"DELETE {len(keys)} keys", self._client.delete_objects,
              Bucket=self.name, Delete={"Object": objects, "Quiet": "true"})
        errors = result.get("Error") or []
        if errors:
            first = errors[0]
            raise StorageError(f"COS could not delete {first.get('Key')}: "
                               f"{first.get('Message', '')}", code=str(first.get("Code", "")))

    def delete(self, key: str, version_id: str = "") -> None:
        """Delete ``key`` (only its version ``version_id`` if given); deleting a missing key
        succeeds, as in COS."""
        params = {"versionId": version_id} if version_id else None
        _call(f"DELETE {key}", self._sender.send, "DELETE", self.name, key, params=params)


class ChunkedBody:
    """A read-only file over a list of byte strings, for a request body: the SDK and
    ``requests`` take the length, read it in blocks and may rewind it."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = list(chunks)
        self._starts = list(itertools.accumulate((len(c) for c in self._chunks), initial=0))
        self._position = 0

    def __len__(self) -> int:
        return self._starts[-1]

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self)}[whence]
        self._position = max(0, min(len(self), base + offset))
        return self._position

    def read(self, size: int = -1) -> bytes:
        end = len(self) if size is None or size < 0 else min(len(self), self._position + size)
        pieces = []
        while self._position < end:
            index = bisect.bisect_right(self._starts, self._position) - 1
            start = self._position - self._starts[index]
            piece = self._chunks[index][start:start + end - self._position]
            pieces.append(piece)
            self._position += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class WorkerSession(requests.Session):
    """A ``requests`` session that reads the environment once per COS host, not per request.

    For every request, ``requests`` looks up the proxy variables (``HTTP(S)_PROXY``,
    ``NO_PROXY``: all of ``os.environ`` scanned twice) and the CA bundle variables: a
    tenth of the worker's CPU for a small STOR's three requests (``docs/performance.md``).
    A worker's environment and this session's settings do not change once it serves, so
    the answer for a host (and the request's own ``stream``/``verify``/``cert``) is kept;
    requests that name their own proxies are merged as ``requests`` does.
    """

    def __init__(self) -> None:
        super().__init__()
        self._settings: dict[tuple, dict[str, Any]] = {}

    def merge_environment_settings(self, url: str, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> dict[str, Any]:
        if proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        origin = urllib.parse.urlsplit(url)[:2]
        key = (origin, stream, verify, cert)
        settings = self._settings.get(key)
        if settings is None:
            settings = super().merge_environment_settings(url, {}, stream, verify, cert)
            self._settings[key] = settings
        return {**settings, "proxies": dict(settings["proxies"])}


def new_session(pool_size: int) -> requests.Session:
    """A :class:`WorkerSession` keeping up to ``pool_size`` connections per COS host: the
    clients of one registry (``cos.registry``) share it, and no one else's."""
    session = WorkerSession()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def make_bucket(account: AccountConfig, session: requests.Session, timeout: float) -> Bucket:
    """The bucket of ``account`` with its credentials and endpoint, its client on
    ``session``."""
    options: dict[str, Any] = {
        "SecretId": account.secret_id,
        "SecretKey": account.secret_key,
        "Scheme": account.protocol,
        "Timeout": timeout,
    }
    if account.endpoint:
        options["Endpoint"] = account.endpoint
    else:
        options["Region"] = account.region
    if account.cos_ip:
        options["IP"] = account.cos_ip
        options["Port"] = account.cos_port
    client = CosS3Client(CosConfig(**options), retry=0, session=session)
    return Bucket(client, account.bucket, account.region, account.endpoint)
