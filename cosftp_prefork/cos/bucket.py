"""Typed access to one COS bucket: its operations, and the client they run on; with
``calls.py``, ``signed.py`` and ``signing.py``, the only modules that import ``qcloud_cos``.

Every call goes through :func:`.calls.call`, which translates each SDK exception, once, into
:mod:`cosftp_prefork.errors` so the layers above see ``OSError`` subclasses with a real errno,
the COS error code and the request id.

Clients are created lazily by the process that uses them (a worker, after fork) and each
registry (``cos.registry``) owns its own ``requests`` session: the SDK otherwise shares one
session at class level between every client of the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar, Union

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

from ..config.model import AccountConfig
from ..errors import StorageError
from ..paths import MAX_KEY_BYTES
from .bodies import ChunkedBody, ObjectStream, read_exactly
from .calls import RETRY_ATTEMPTS, Started, back_off, call
from .checksum import crc64_of
from .headers import (
    FORBID_OVERWRITE,
    completed,
    float_or_none,
    header,
    kept_attributes,
    object_headers,
    parse_http_date,
    parse_iso_date,
    reported_crc64,
    whole_size,
)
from .objects import (
    MTIME_HEADER,
    Completed,
    ListPage,
    NewUpload,
    ObjectInfo,
    PartInfo,
    UploadedPart,
    UploadInfo,
)
from .pagination import marker_after, paginate
from .signed import Sender, Sent, copy_etag
from .wire import Answer

T = TypeVar("T")

LIST_PAGE_MAX = 1000
# Where GetService lists an account's buckets (with a cos_ip, sent there with this Host).
SERVICE_HOST = "service.cos.myqcloud.com"


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
                mtime=parse_iso_date(item.get("LastModified", "")),
                etag=item.get("ETag", "").strip('"')))
        elif tag == "CommonPrefixes":
            prefixes.extend(_decoded(child.text or "") for child in element)
        else:
            fields[tag] = element.text or ""
    last = max([o.key for o in objects] + prefixes, default=None)
    next_marker = marker_after(fields.get("IsTruncated"), _decoded(fields.get("NextMarker", "")),
                               last)
    return ListPage(objects=tuple(objects), prefixes=tuple(prefixes), next_marker=next_marker)


def _following(page: tuple[list[Any], Optional[Any]]) -> Optional[Any]:
    """The next marker of a page as the ``fetch`` of :meth:`Bucket.list_uploads` and
    :meth:`Bucket.list_parts` return it."""
    return page[1]


def _list_params(prefix: str, marker: str, max_keys: int, delimiter: str) -> dict[str, str]:
    return {"prefix": prefix, "delimiter": delimiter, "marker": marker,
            "max-keys": str(max_keys), "encoding-type": "url"}


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
        answer = call(f"HEAD {key}", self._sender.send, "HEAD", self.name, key)
        headers = {name.lower(): value for name, value in answer.headers.items()}
        return ObjectInfo(
            key=key,
            size=int(headers.get("content-length", 0)),
            mtime=parse_http_date(headers.get("last-modified", "")),
            etag=headers.get("etag", "").strip('"'),
            crc64=reported_crc64(headers),
            client_mtime=float_or_none(headers.get(MTIME_HEADER, "")),
            attributes=kept_attributes(headers),
            storage_class=headers.get("x-cos-storage-class", ""),
        )

    def head_bucket(self) -> None:
        """Check that the bucket answers these credentials at this endpoint: raises
        ``NotFound`` (no such bucket here), ``PermissionDenied`` or ``StorageError``. COS
        answers a HEAD without a body, so without an error code."""
        call("HeadBucket", self._client.head_bucket, Bucket=self.name)

    def listed_region(self) -> Optional[str]:
        """The region GetService (the list of the account's buckets, at
        ``service.cos.myqcloud.com``) gives for this bucket; None if it is not listed."""
        return call("GetService", self._list_buckets).get(self.name)

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
        return call(f"LIST {prefix or '/'}", self._list,
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
        answer = call(f"GET {key}", self._sender.send, "GET", self.name, key,
                      headers=mapped(extra), stream=True)
        length = int(answer.headers.get("Content-Length", 0))
        return ObjectStream(answer.raw, length, str(answer.headers.get("ETag", "")).strip('"'),
                            whole_size(header(answer.headers, "content-range"),
                                       offset + length))

    def read_small(self, key: str, size: int) -> bytes:
        """Return the first ``size`` bytes of ``key`` (meant for small objects); raises
        ``StorageError`` if fewer arrive. A body cut short on the way (a reset: a
        ``StreamError``) is asked for again, as :func:`call` retries a failed request: a
        resume or an append must not fail on what a second GET delivers."""
        for attempt in range(RETRY_ATTEMPTS):
            stream = self.open_read(key)
            try:
                return read_exactly(stream, key, size)
            except StorageError as error:
                if error.code != "StreamError" or attempt == RETRY_ATTEMPTS - 1:
                    raise
                back_off(f"GET {key}", error, attempt)
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
        return completed(call(f"PUT {key}", self._sender.send, "PUT", self.name, key,
                              headers=headers, body=data))

    def start_put(self, key: str, data: bytes) -> Started[Completed]:
        """:meth:`put` of ``data`` (no attributes), its request sent now and its answer read
        by :meth:`Started.result`: an MFMT marker written beside a copy by the thread that
        sends the copy (issue 21)."""
        headers = self._put_headers(data, None, False)
        return self._start(f"PUT {key}", completed, lambda: completed(
            self._sender.send("PUT", self.name, key, headers=headers, body=data)),
            "PUT", key, headers=headers, body=data)

    @staticmethod
    def _put_headers(data: bytes, like: Optional[ObjectInfo], if_absent: bool) -> dict:
        check_object_content_length(data)
        headers = mapped(object_headers(like, None))
        if if_absent:
            headers[FORBID_OVERWRITE] = "true"
        headers["Content-MD5"] = get_content_md5(data)
        return headers

    def versioning(self) -> str:
        """The bucket's versioning status: "Enabled", "Suspended", or "" if never enabled."""
        result = call("GET versioning", self._client.get_bucket_versioning, Bucket=self.name)
        return str((result or {}).get("Status") or "")

    def create_multipart(self, key: str, like: Optional[ObjectInfo] = None,
                         client_mtime: Optional[float] = None) -> NewUpload:
        """Start a multipart upload of an object with the storage class, content headers and
        metadata of ``like`` and ``client_mtime`` as its MFMT time, where given; return its
        upload id, and whether a try went unanswered before (see ``readback``)."""
        unheard = False

        def initiate(**kwargs: Any) -> Any:
            nonlocal unheard
            try:
                return self._client.create_multipart_upload(**kwargs)
            except CosServiceError:  # COS answered: it started nothing
                raise
            except Exception:  # no answer (call's ClientError): it may have started one
                unheard = True
                raise
        result = call(f"InitiateMultipartUpload {key}", initiate,
                      Bucket=self.name, Key=key, **object_headers(like, client_mtime))
        return NewUpload(str(result["UploadId"]), unheard)

    def upload_part(self, key: str, upload_id: str, number: int,
                    chunks: Sequence[bytes]) -> UploadedPart:
        """Upload part ``number`` (1-based), the bytes of ``chunks`` one after the other;
        return its ETag and CRC64. The chunks are sent as they are: no copy of the part is
        made. Instead of Content-MD5 (a second hash of every byte), the CRC64 COS reports
        for the part is checked: a mismatch raises ``StorageError`` (``CRC64Mismatch``)."""
        sent = crc64_of(chunks)

        def send(**kwargs: Any) -> Any:  # a retry sends the body from its start again
            return self._client.upload_part(Body=ChunkedBody(chunks), **kwargs)

        result = call(f"UploadPart {key} #{number}", send, Bucket=self.name, Key=key,
                      PartNumber=number, UploadId=upload_id)
        reported = reported_crc64(result)
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
            result = call(f"UploadPartCopy {source.key} -> {key} #{number}",
                  self._client.upload_part_copy, Bucket=self.name, Key=key, PartNumber=number,
                  UploadId=upload_id, CopySource=copy_source,
                  CopySourceRange=f"bytes={first}-{last}", **_pin(source))
        return str(result["ETag"])

    def complete_multipart(self, key: str, upload_id: str,
                           etags: list[tuple[int, str]]) -> Completed:
        """Commit the parts, given as ``(number, etag)`` in ascending order; return the new
        object's ETag and the CRC64 COS reports for it, if any."""
        parts = [{"PartNumber": number, "ETag": etag} for number, etag in etags]
        result = call(f"CompleteMultipartUpload {key}", self._client.complete_multipart_upload,
              Bucket=self.name, Key=key, UploadId=upload_id, MultipartUpload={"Part": parts})
        return Completed(str(result.get("ETag", "")).strip('"'), reported_crc64(result))

    def list_uploads(self, prefix: str = "") -> list[UploadInfo]:
        """Return every multipart upload not yet completed or aborted under ``prefix``."""
        def fetch(markers: tuple[str, str]) -> tuple[list[UploadInfo], Optional[tuple[str, str]]]:
            result = call(f"ListMultipartUploads {prefix or '/'}",
                          self._client.list_multipart_uploads, Bucket=self.name, Prefix=prefix,
                          KeyMarker=markers[0], UploadIdMarker=markers[1])
            uploads = [UploadInfo(str(item["Key"]), str(item["UploadId"]),
                                  parse_iso_date(str(item.get("Initiated", ""))))
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
            result = call(f"ListParts {key}", self._client.list_parts, Bucket=self.name,
                          Key=key, UploadId=upload_id, PartNumberMarker=marker)
            parts = [PartInfo(int(item["PartNumber"]), str(item.get("ETag", "")),
                              int(item.get("Size", 0)),
                              parse_iso_date(str(item.get("LastModified", ""))))
                     for item in result.get("Part", [])]
            return parts, marker_after(result.get("IsTruncated"),
                                       int(result.get("NextPartNumberMarker") or 0),
                                       parts[-1].number if parts else None)
        return [part for parts, _ in paginate(fetch, _following, 0) for part in parts]

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload, freeing its parts."""
        call(f"AbortMultipartUpload {key}", self._client.abort_multipart_upload,
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
            extra, directive = object_headers(source, None, metadata=False), "Copy"
        else:
            extra, directive = object_headers(source, client_mtime), "Replaced"
        if pinned:
            extra.update(_pin(source))
        headers = mapped(extra)
        headers["x-cos-copy-source"] = gen_copy_source_url(
            self._source_of(source), conf._enable_old_domain, conf._enable_internal_domain)
        headers["x-cos-metadata-directive"] = directive
        def send() -> str:  # COS may answer 200 with an error body: read it in the call
            return copy_etag(self._sender.send("PUT", self.name, dst_key, headers=headers))

        with _source_unchanged(source):
            return str(call(f"COPY {source.key} -> {dst_key}", send))

    def delete_many(self, keys: list[str]) -> None:
        """Delete up to 1,000 keys in one request; raises ``StorageError`` naming a failure."""
        objects = [{"Key": key} for key in keys]
        result = call(f"DELETE {len(keys)} keys", self._client.delete_objects,
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
        call(f"DELETE {key}", self._sender.send, "DELETE", self.name, key, params=params)


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
