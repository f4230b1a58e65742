"""HEAD Object, GET Object, ListObjects, PUT Object, PUT Object - Copy, DELETE Object and
DELETE Multiple Objects answered by the shim itself, as moto answers them, without moto's
request dispatch.

Why (fairness of the bench, not fidelity): the emulator shares the machine's cores with the
gateway and the clients in every bench row, and the gateway sends more requests per file
than its baselines (a new file's look-ups are two small listings; MLST, MDTM and renames
HEAD). moto spends most of each such request in its Flask routing, its request parsing and
its response serializer (the timestamps of a listing are parsed by dateutil and formatted
again): 1.3 ms of emulator CPU per small listing against 0.3 ms for the answer made here
(docs/performance.md, "Issue 21: CPU per small file"), and a copy (lftp's MFMT is a copy of
the file onto itself) as much. That cost is not COS's, and it counted against the gateway.

The answers are moto's own as the shim passes them on (it drops the headers moto's app adds
to every answer: its AWS request id, server name, status header and CORS grant; see
``translate.translate_headers``), byte for byte but the random request ids: the keys, versions,
delete markers and the listing's truncation come from moto's backend (its
``list_objects``, indexed by ``listing.py``, and ``head_object``), the headers from its
key's ``metadata`` and ``response_dict``, and the shim treats them as it treats moto's (URL
encoding of a listing, CRC64, region, request id). Everything the shim checks first
(faults, latency, rendezvous, accounts, signatures) still applies. A request with anything
these answers do not cover (another query parameter, a condition, a range, a version, a
bucket with a policy or logging, anonymous or presigned requests, a missing bucket or key,
a delete marker, a GET of a version or of an archived object; a copy of a version, into or
out of a versioned, encrypted or locked bucket, with a condition moto checks or ignores, an
ACL, encryption or an unknown directive)
goes to moto, as does a PUT Object with a query, a condition, ACL, tagging, encryption or
checksum headers, or into such a bucket, and a delete in a versioned or locked bucket, of a
version, with a condition or an ETag (``_delete_object``, ``_delete_objects``).
``tests/test_emulator_fast.py`` compares both answers over random buckets, requests, copies,
PUTs and deletes (and the objects the copies, PUTs and deletes made or left), and fails if
they differ.

Both ways of naming the bucket are answered, read as moto reads them: the SDK's virtual-host
``<bucket>.cos.<region>.myqcloud.com``, and the path-style ``/<bucket>/<key>`` that S3
clients such as ``rclone serve ftp`` (the bench's baseline) send to ``127.0.0.1:<port>``,
with the AWS SDKs' signing headers (``x-amz-date``, ``x-amz-content-sha256``) and their
``x-id`` query. Why: a fast path one side of a bench row takes and the other does not tilts
the row (docs/performance.md, "The emulator as an instrument").
"""

from __future__ import annotations

import functools
import io
import math
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any, NamedTuple, Optional
from xml.parsers.expat import ExpatError
from xml.sax.saxutils import escape

import moto.s3.models
import xmltodict
from moto import settings
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.utils import extract_region_from_aws_authorization
from moto.s3.exceptions import HeadOnDeleteMarker, MissingBucket
from moto.s3.models import FakeBucket, FakeKey, S3Backend
from moto.s3.responses import S3Response
from moto.s3.utils import (
    ARCHIVE_STORAGE_CLASSES,
    STORAGE_CLASS,
    metadata_from_headers,
    user_settable_fields,
)
from moto.utilities.utils import get_partition

from .listing import IndexedKeyStore

Headers = list[tuple[str, str]]
# (status line, moto's headers, body), as the shim's ``_forward`` takes them from moto.
Answer = tuple[str, Headers, bytes]

# The SDK's virtual-host form, the one answered here where moto reads the bucket from the
# host (moto's bucket is its first label).
_COS_HOST = re.compile(r"([a-z0-9][a-z0-9-]*)\.cos\.[a-z0-9-]+\.myqcloud\.com(:\d+)?")
# A path-style path: the bucket (a name werkzeug's URL leaves as it is, so moto reads the same)
# and what follows it (moto: "/<bucket>" and "/<bucket>/" are the bucket, the rest a key).
_PATH_STYLE = re.compile(r"/([a-z0-9][a-z0-9.-]*)(/.*)?", re.DOTALL)
# The AWS SDKs' signing headers, which moto ignores unauthenticated (but keeps
# x-amz-content-sha256 as an object's metadata, as the answers here do); a streaming payload
# moto decodes goes to it.
_SIGNING_HEADERS = frozenset({"HTTP_X_AMZ_DATE", "HTTP_X_AMZ_CONTENT_SHA256"})
# The query parameter the AWS SDKs add to name the operation (x-id=PutObject); moto ignores it.
_OPERATION_QUERY = frozenset({"x-id"})
_ANSWERED_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})
LIST_PARAMETERS = frozenset({"prefix", "delimiter", "marker", "max-keys", "encoding-type"})
# Request headers that change a HEAD's answer in moto: conditions, ranges, checksums, SSE-C.
_HEAD_CHANGERS = re.compile(r"HTTP_(IF_|RANGE$|X_AMZ_CHECKSUM|X_AMZ_SERVER_SIDE_ENCRYPTION_"
                            r"CUSTOMER|X_COS_CHECKSUM|X_COS_SERVER_SIDE_ENCRYPTION_CUSTOMER)")
# The request headers a copy answered here may carry (the shim has renamed x-cos-* to x-amz-*),
# besides x-amz-meta-* and plain content headers: anything else (encryption, ACLs, tagging,
# object lock, checksums, the copy conditions moto checks or ignores) goes to moto.
_COPY_HEADERS = frozenset({"HTTP_X_AMZ_COPY_SOURCE", "HTTP_X_AMZ_METADATA_DIRECTIVE",
                           "HTTP_X_AMZ_STORAGE_CLASS", "HTTP_X_AMZ_COPY_SOURCE_IF_MATCH",
                           *_SIGNING_HEADERS})
# The x-amz-* request headers a PUT Object answered here may carry besides x-amz-meta-*
# (x-cos-forbid-overwrite is the shim's: moto ignores it).
_PUT_HEADERS = frozenset({"HTTP_X_AMZ_STORAGE_CLASS", "HTTP_X_AMZ_FORBID_OVERWRITE",
                          *_SIGNING_HEADERS})
# Bodies werkzeug parses as a form, whose fields moto then stores instead of the body.
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
# moto's fixed owner of every listed key.
_OWNER = ("<Owner><DisplayName>webfile</DisplayName><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7"
          "faeebf76c078efc7c6caea54ba06a</ID></Owner>")
_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"


def _backend() -> S3Backend:
    return moto.s3.models.s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


class _HostOnly:
    """What moto's ``subdomain_based_buckets`` reads of a request: its Host."""

    def __init__(self, host: str) -> None:
        self.headers = {"host": host}
        self.url = ""


@functools.lru_cache(maxsize=256)  # (a handful of hosts; moto's test is 15 µs a request)
def _bucket_in_host(host: str) -> bool:
    """Whether moto reads the bucket from ``host`` (else from the path)."""
    return S3Response.subdomain_based_buckets(_HostOnly(host))


class Place(NamedTuple):
    """The bucket a request names and the path within it, read as moto reads them: from the
    virtual-host name (its first label), or from the path where moto takes the host for a
    path-style one (an IP address, localhost). ``path`` is "/" for the bucket itself and
    "/<key>" for a key, UTF-8 decoded (bytes that are no UTF-8 as surrogate escapes);
    ``bucket`` is "" where the request names none (GetService)."""

    bucket: str
    path: str

    @property
    def key(self) -> str:
        """The object key ("" for the bucket itself)."""
        return self.path[1:]

    @property
    def is_object(self) -> bool:
        return self.path != "/"


_PLACE = "cosftp.emulator.place"  # where ``place`` keeps its answer in a request's environ


def place(environ: dict) -> Place:
    """The :class:`Place` a request names, worked out once per request (the shim's checks,
    its log and the answers here all read it)."""
    known = environ.get(_PLACE)
    if known is None:
        known = environ[_PLACE] = _parse_place(environ)
    return known


_QUERY = "cosftp.emulator.query"  # where ``query`` keeps the query it parsed, and its text


def query(environ: dict, blanks: bool = True) -> dict[str, list[str]]:
    """The request's query as ``urllib.parse.parse_qs`` reads it (``blanks``: with
    ``keep_blank_values``), parsed once per request: the shim's checks, its log and the
    answers here each read it, and parsing it again in each was a fifth of the emulator's
    CPU per small request (docs/performance.md). Not to be changed by the caller."""
    text = environ.get("QUERY_STRING", "")
    known = environ.get(_QUERY)
    if known is None or known[0] != text:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True)
        parsed: dict[str, list[str]] = {}
        for name, value in pairs:
            parsed.setdefault(name, []).append(value)
        known = environ[_QUERY] = (text, pairs, parsed, {
            name: kept for name, kept in ((name, [value for value in values if value])
                                          for name, values in parsed.items()) if kept})
    return known[2] if blanks else known[3]


def _parse_place(environ: dict) -> Place:
    path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "surrogateescape")
    host = environ.get("HTTP_HOST", "")
    if _bucket_in_host(host):
        return Place(host.split(".", 1)[0], path or "/")
    found = _PATH_STYLE.fullmatch(path)
    return Place(found.group(1), found.group(2) or "/") if found else Place("", "/")


def copy_source(environ: dict) -> Optional[str]:
    """A copy's source as sent (``x-cos-copy-source`` or S3's ``x-amz-copy-source``); None
    for a request that copies nothing."""
    return cos_header(environ, "COPY_SOURCE")


def cos_header(environ: dict, name: str) -> Optional[str]:
    """The request header ``x-cos-<name>``, or the ``x-amz-<name>`` S3 clients send for it
    (COS takes both; ``name`` as WSGI spells it: ``COPY_SOURCE_IF_MATCH``)."""
    return environ.get("HTTP_X_COS_" + name, environ.get("HTTP_X_AMZ_" + name))


def _answerable(environ: dict) -> bool:
    """Whether a request may be answered here at all: not one moto authenticates, nor a
    presigned one, nor one whose region is of another partition (moto keeps another
    backend for it)."""
    authorization = environ.get("HTTP_AUTHORIZATION", "")
    # (moto's regular expression backtracks over a COS signature: 43 µs where it finds none)
    region = (extract_region_from_aws_authorization(authorization)
              if "Credential=" in authorization else None) or "us-east-1"
    return bool(authorization) and not math.isfinite(settings.INITIAL_NO_AUTH_ACTION_COUNT) \
        and "Signature=" not in environ.get("QUERY_STRING", "") and \
        get_partition(region) == "aws"


def _target(environ: dict) -> Optional[tuple[FakeBucket, str]]:
    """The bucket a signed request names and the path within it (:func:`place`), for a
    request answered here: from the COS virtual-host name or a path-style path; None for a
    bucket left to moto (``_indexed_bucket``), a path that is no UTF-8, an empty one, or a
    request not ``_answerable``."""
    where = place(environ)
    if not _answerable(environ) or not where.bucket or \
            not environ.get("PATH_INFO", "").startswith("/") or _utf8_path(environ) is None:
        return None
    host = environ.get("HTTP_HOST", "")
    if _bucket_in_host(host) and _COS_HOST.fullmatch(host) is None:
        return None
    bucket = _indexed_bucket(where.bucket)
    return None if bucket is None else (bucket, where.path)


def _utf8_path(environ: dict) -> Optional[str]:
    """The path a request names (PATH_INFO carries its UTF-8 bytes as latin-1, WSGI)."""
    try:
        return environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None


def _indexed_bucket(name: str) -> Optional[FakeBucket]:
    """moto's bucket ``name`` if it has nothing that would change an answer made here."""
    try:
        bucket = _backend().get_bucket(name)
    except MissingBucket:
        return None
    if type(bucket) is not FakeBucket or not isinstance(bucket.keys, IndexedKeyStore) or \
            bucket.policy or bucket.logging:
        return None
    return bucket


def answer(environ: dict) -> Optional[Answer]:
    """moto's answer to this request if it is one answered here; else None."""
    method = environ["REQUEST_METHOD"]
    target = _target(environ) if method in _ANSWERED_METHODS else None
    if target is None:
        return None
    bucket, path = target
    if path == "/":  # the bucket itself
        if method == "POST":
            return _delete_objects(environ, bucket)
        return _list_objects(environ, bucket) if method == "GET" else None
    if method == "DELETE":
        return _delete_object(environ, bucket, path[1:])
    if method == "HEAD" and not environ.get("QUERY_STRING"):
        return _head_object(environ, bucket, path[1:])
    if method == "GET":
        return _get_object(environ, bucket, path[1:])
    if method == "PUT":
        if "HTTP_X_AMZ_COPY_SOURCE" in environ:
            return _copy_object(environ, bucket, path[1:])
        return _put_object(environ, bucket, path[1:])
    return None


def _delete_object(environ: dict, bucket: FakeBucket, name: str) -> Optional[Answer]:
    """DELETE Object as moto's ``delete_object`` answers it in a bucket without versions
    or object lock (204, whether the key was there or not). A query (a version), a
    condition, any x-amz-* header or a body goes to moto.

    Why: rclone deletes each file it moves or removes with this request, where the
    gateway sends DELETE Multiple Objects (``_delete_objects``): both sides of a bench row
    are answered here (docs/performance.md, "The emulator as an instrument")."""
    if not _no_query(environ) or _locked(bucket) or not _only(environ, _SIGNING_HEADERS) or \
            any(header.startswith("HTTP_IF_") for header in environ) or \
            environ.get("CONTENT_LENGTH", "0") not in ("", "0"):
        return None
    _backend().delete_object(bucket.name, name)
    return "204 NO CONTENT", [("Content-Type", "text/html; charset=utf-8")], b""


def _delete_objects(environ: dict, bucket: FakeBucket) -> Optional[Answer]:
    """DELETE Multiple Objects (POST ?delete) as moto's ``_bucket_response_delete_keys``
    answers it, in a bucket without versions or object lock, for a body moto reads the same
    (xmltodict, as moto parses it) that names each object by a key alone; the shim has
    checked its Content-MD5 and its 1,000 objects, and answers Quiet mode
    (``conform.quiet_deletes``). A version or ETag of an object, an empty key, no object,
    XML moto refuses, any x-amz-* header (governance bypass, checksums), another query or a
    body without a Content-Length goes to moto.

    Why: the gateway's renames and recursive deletes end with this request, 2.8 ms of
    emulator CPU each through moto's dispatch."""
    values = _single_values(environ)
    stream = environ.get("wsgi.input")
    body = stream.getvalue() if isinstance(stream, io.BytesIO) else None
    mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if values is None or values.get("delete") != "" or \
            not set(values) <= {"delete", *_OPERATION_QUERY} or body is None or \
            not environ.get("CONTENT_LENGTH") or not _read_whole_by_moto(environ, body) or \
            not _only(environ, _SIGNING_HEADERS) or mimetype in _FORM_TYPES or _locked(bucket):
        return None
    keys = _keys_to_delete(body)
    if not keys:
        return None
    deleted, _ = _backend().delete_objects(bucket.name, [{"Key": key} for key in keys])
    body = (f'<?xml version="1.0" encoding="utf-8"?>\n<DeleteResult xmlns="{_XMLNS}">'
            + "".join(f"<Deleted>{_element('Key', key)}</Deleted>" for key, _, _ in deleted)
            + "</DeleteResult>").encode()
    return "200 OK", [("Content-Type", "application/xml")], body


def _keys_to_delete(body: bytes) -> Optional[list[str]]:
    """The keys a DELETE Multiple Objects body names, read as moto reads them; None if it
    names none, or an object by more than a non-empty key, or is no XML moto reads."""
    try:
        parsed = xmltodict.parse(body, strip_whitespace=False)
    except (ExpatError, ValueError):  # moto answers it
        return None
    delete = parsed.get("Delete") if isinstance(parsed, dict) else None
    objects = delete.get("Object", []) if isinstance(delete, dict) else None
    if not isinstance(objects, list):
        objects = [objects]
    keys = [item.get("Key") for item in objects
            if isinstance(item, dict) and set(item) <= {"Key", "#text"}]
    if len(keys) != len(objects) or not all(isinstance(key, str) and key for key in keys):
        return None
    return keys


def _single_values(environ: dict) -> Optional[dict[str, str]]:
    """The query's parameters as moto reads them ("+" a space, blanks kept); None if one
    is given twice."""
    parsed = query(environ)
    if any(len(values) > 1 for values in parsed.values()):
        return None
    return {name: values[0] for name, values in parsed.items()}


def _list_objects(environ: dict, bucket: FakeBucket) -> Optional[Answer]:
    values = _single_values(environ)
    if values is None or not set(values) <= LIST_PARAMETERS:
        return None
    max_keys = values.get("max-keys", str(settings.get_s3_default_max_keys()))
    delimiter, encoding = values.get("delimiter"), values.get("encoding-type")
    if not max_keys.isdigit() or len(delimiter or "") > 1 or encoding not in (None, "url"):
        return None
    prefix = values.get("prefix")
    keys, folders, truncated, next_marker = _backend().list_objects(
        bucket, prefix, delimiter, values.get("marker"), int(max_keys))
    parts = [f'<?xml version="1.0" encoding="utf-8"?>\n<ListBucketResult xmlns="{_XMLNS}">'
             f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
    if next_marker:
        parts.append(_element("NextMarker", next_marker))
    parts += _contents(keys, encoding)
    parts.append(_element("Name", bucket.name))
    if prefix is not None:
        parts.append(_element("Prefix", prefix))
    if delimiter:
        parts.append(_element("Delimiter", delimiter))
    parts.append(f"<MaxKeys>{int(max_keys)}</MaxKeys>")
    if delimiter:
        parts += [f"<CommonPrefixes>{_element('Prefix', folder)}</CommonPrefixes>"
                  for folder in folders]
    if encoding:
        parts.append(_element("EncodingType", encoding))
    parts.append("</ListBucketResult>")
    headers = [("Content-Type", "application/xml")]
    return "200 OK", headers, "".join(parts).encode("utf-8")


def _element(tag: str, text: str) -> str:
    """An element as moto's serializer writes it (xmltodict: empty ones short)."""
    return f"<{tag}>{escape(text)}</{tag}>" if text else f"<{tag}/>"


def _contents(keys: Iterable[FakeKey], encoding: Optional[str]) -> list[str]:
    return [f"<Contents>{_element('Key', key.safe_name(encoding))}"
            f"<LastModified>{key.last_modified_ISO8601}</LastModified>"
            f"{_element('ETag', key.etag)}<Size>{key.size}</Size>"
            f"{_element('StorageClass', key.storage_class)}{_OWNER}</Contents>"
            for key in keys]


def _head_object(environ: dict, bucket: FakeBucket, name: str) -> Optional[Answer]:
    if any(_HEAD_CHANGERS.match(header) for header in environ):
        return None
    try:  # moto's own look-up (the shim's CRC64 of a HEAD is of the object it found)
        key = _backend().head_object(bucket.name, name)
    except HeadOnDeleteMarker:
        return None
    if key is None:
        return None
    headers = {**key.metadata, **key.response_dict, "Accept-Ranges": "bytes"}
    # werkzeug writes moto's length under its own name
    headers["Content-Length"] = headers.pop("content-length")
    return "200 OK", list(headers.items()), b""


def _get_object(environ: dict, bucket: FakeBucket, name: str) -> Optional[Answer]:
    """GET Object as moto's ``get_object`` answers it: the current object of a bucket
    without versions, whole or the range asked for (``_byte_range``). A query (a version,
    a part, ACL, tagging, response header overrides), a condition, checksum or SSE-C
    headers, an Origin (moto's CORS rules), a range moto refuses, a missing key, a delete
    marker, a version or an archived object goes to moto.

    Why: every download of the bench (the gateway's RETR, the SDK's GETs, and rclone's,
    which ask for a range) is this GET, and moto's dispatch of it cost the emulator 1.2-1.7
    ms of CPU against 0.3-0.6 for the answers made here (docs/performance.md, "The emulator
    as an instrument")."""
    if not _no_query(environ) or "HTTP_ORIGIN" in environ or any(
            header != "HTTP_RANGE" and _HEAD_CHANGERS.match(header) for header in environ):
        return None
    key = _backend().get_object(bucket.name, name)
    if key is None or key.version_id != "null" or \
            key.storage_class in ARCHIVE_STORAGE_CLASSES:
        return None
    headers = {**key.response_dict, **key.metadata, "Accept-Ranges": "bytes"}
    headers.pop("content-length", None)  # the shim writes the body's
    body = key.value
    try:
        wanted = _byte_range(environ.get("HTTP_RANGE", ""), len(body))
    except _LeftToMoto:
        return None
    if wanted is None:
        return "200 OK", list(headers.items()), body
    first, last = wanted
    if first or last < len(body) - 1:  # (moto: a range carries no checksum)
        headers = {name: value for name, value in headers.items()
                   if not name.startswith("x-amz-checksum-")}
    headers["content-range"] = f"bytes {first}-{last}/{len(body)}"
    return "206 PARTIAL CONTENT", list(headers.items()), body[first:last + 1]


class _LeftToMoto(Exception):
    """A request the answers here leave to moto (it refuses it, or fails on it)."""


def _byte_range(value: str, length: int) -> Optional[tuple[int, int]]:
    """The first and last byte a GET's ``Range`` asks of ``length`` bytes, read as moto's
    ``_handle_range_header`` reads it: None for the whole object (no range, several, one
    it cannot read, or one that ends before it starts); ``_LeftToMoto`` where moto answers
    416 InvalidRange or fails (a value without exactly one "=")."""
    if not value:
        return None
    if value.count("=") != 1:
        raise _LeftToMoto
    spec = value.split("=")[1]
    if "," in spec:
        return None
    try:
        first, last = [int(part) if part else None for part in spec.split("-")]
    except ValueError:
        return None
    end = length - 1
    if (first is None and last == 0) or (first is not None and first > end):
        raise _LeftToMoto
    if first is not None:
        last = end if last is None else min(last, end)
    elif last is not None:  # the last ``last`` bytes
        first, last = length - min(last, length), end
    else:
        return None
    return None if first > min(last, end) else (first, last)


def source_key(bucket: str, path: str, environ: dict) -> Optional[FakeKey]:
    """moto's current object for the copy source ``path`` (its URL-encoded key) in
    ``bucket``, named by the copy ``environ``, whose ETag, time and size a copy's conditions
    and range are checked against; None where moto's HEAD alone can tell (a request or a
    bucket left to moto, a version, no such key, a delete marker). The shim asked moto's
    HEAD through its Flask app: two fifths of a pinned copy's emulator CPU
    (docs/performance.md)."""
    found = _indexed_bucket(bucket) if _answerable(environ) else None
    if found is None or "?" in path:
        return None
    try:
        return _backend().head_object(found.name, urllib.parse.unquote(path, errors="strict"))
    except (HeadOnDeleteMarker, UnicodeError):
        return None


def _copy_object(environ: dict, bucket: FakeBucket, name: str) -> Optional[Answer]:
    """PUT Object - Copy as moto's ``copy_object`` answers it, for a copy within or between
    buckets that are neither versioned, encrypted nor locked, of a current object, with a
    metadata directive of Copy or Replaced, a storage class, metadata and content headers.
    The shim has checked ``x-cos-copy-source-If-Match`` already; a missing source, a copy
    onto itself that changes nothing, any other header or a query goes to moto.

    Why: lftp's MFMT is a copy of the file onto itself (``mtimes.py``), and moto's Flask
    dispatch and serializer of it were a quarter of the emulator's CPU per file of ``lftp
    mirror -R`` (docs/performance.md)."""
    if not _no_query(environ) or not _only(environ, _COPY_HEADERS):
        return None
    directive = environ.get("HTTP_X_AMZ_METADATA_DIRECTIVE")
    storage = environ.get("HTTP_X_AMZ_STORAGE_CLASS")
    if directive not in (None, "COPY", "REPLACE") or storage not in (None, *STORAGE_CLASS):
        return None
    source = _copy_source(environ)
    if source is None or _locked(bucket):
        return None
    copied = _backend().get_object(*source)
    if copied is None or copied.storage_class in ARCHIVE_STORAGE_CLASSES or \
            copied.checksum_value or copied.version_id != "null":
        return None
    if source == (bucket.name, name) and (copied.encryption or (
            directive != "REPLACE" and not storage)):
        return None  # moto's CopyObjectMustChangeSomething, or its in-place encryption
    metadata = object_metadata(environ) if directive == "REPLACE" else None
    _backend().copy_object(copied, bucket.name, name, storage=storage, mdirective=directive,
                           metadata=metadata)
    made = _backend().get_object(bucket.name, name)
    if bucket.acl is not None:
        made.set_acl(bucket.acl)
    body = (f'<?xml version="1.0" encoding="utf-8"?>\n<CopyObjectResult xmlns="{_XMLNS}">'
            f"{_element('ETag', made.etag)}"
            f"<LastModified>{made.last_modified_ISO8601}</LastModified>"
            "</CopyObjectResult>").encode()
    headers = {"Content-Type": "application/xml", **made.response_dict}
    headers.pop("content-length", None)
    headers["Content-Length"] = str(len(body))
    return "200 OK", list(headers.items()), body


# The WSGI names of the headers moto's ``metadata_from_headers`` keeps besides x-amz-meta-*
# (werkzeug's EnvironHeaders reads Content-Type and Content-Length without HTTP_).
_SETTABLE_ENVIRON = frozenset(
    name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + name
    for name in (field.upper().replace("-", "_") for field in user_settable_fields))


def object_metadata(environ: dict) -> Any:
    """What moto's ``metadata_from_headers(EnvironHeaders(environ))`` makes of a request's
    headers (an object's metadata and content headers), from the headers it could keep:
    x-amz-meta-* and moto's ``user_settable_fields``, named and in the order werkzeug's
    ``EnvironHeaders`` gives them. Why: going through every header of the environ with
    werkzeug's names and moto's pattern was 47 µs of every PUT and metadata-replacing copy,
    a tenth of a pinned copy's emulator CPU (docs/performance.md); the answer is the same
    dict (``tests/test_emulator_fast.py`` compares the objects made)."""
    kept = {}
    for name, value in environ.items():
        if name.startswith("HTTP_X_AMZ_META_") or name in _SETTABLE_ENVIRON:
            if not name.startswith("HTTP_"):
                if value:  # (EnvironHeaders skips them empty)
                    kept[name.replace("_", "-").title()] = value
            else:
                kept[name[5:].replace("_", "-").title()] = value
    return metadata_from_headers(kept)


def _only(environ: dict, known: frozenset[str]) -> bool:
    """Whether the request carries no x-amz-* header (the shim's renaming of x-cos-*) but
    ``known`` and x-amz-meta-*, no streaming payload and no Origin (moto's CORS rules
    answer that)."""
    return "HTTP_ORIGIN" not in environ and not any(
        name.startswith("HTTP_X_AMZ_") and name not in known
        and not name.startswith("HTTP_X_AMZ_META_") for name in environ) and \
        not environ.get("HTTP_X_AMZ_CONTENT_SHA256", "").startswith("STREAMING")


def _no_query(environ: dict) -> bool:
    """Whether a PUT's query is empty or only the AWS SDKs' ``x-id``, once."""
    values = _single_values(environ)
    return values is not None and set(values) <= _OPERATION_QUERY


def _put_object(environ: dict, bucket: FakeBucket, name: str) -> Optional[Answer]:
    """PUT Object as moto's ``put_object`` answers it, into a bucket that is neither
    versioned, encrypted nor locked, with metadata, content headers and a storage class.
    A query (ACL, tagging, a part), a condition, ACL, tagging, encryption or checksum
    headers, a body werkzeug would read as a form, or one without a Content-Length (the
    shim's ``_crc_of_upload`` has read it whole into a buffer, checked its Content-MD5, and
    checks ``x-cos-forbid-overwrite`` under the object's lock) goes to moto.

    Why: a new small file is this PUT, and moto's Flask dispatch of it was most of the
    emulator's CPU per such PUT (docs/performance.md, "The emulator as an instrument")."""
    stream = environ.get("wsgi.input")
    body = stream.getvalue() if isinstance(stream, io.BytesIO) else None
    storage = environ.get("HTTP_X_AMZ_STORAGE_CLASS", "STANDARD")
    mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if body is None or not _read_whole_by_moto(environ, body) or \
            not _no_query(environ) or not _only(environ, _PUT_HEADERS) or \
            any(name.startswith("HTTP_IF_") for name in environ) or \
            mimetype in _FORM_TYPES or storage not in STORAGE_CLASS:
        return None
    if _locked(bucket):
        return None
    made = _backend().put_object(bucket.name, name, body, storage=storage)
    made.set_metadata(object_metadata(environ))
    made.set_acl(bucket.acl)
    _backend().put_object_tagging(made, {})  # as moto's: an empty tag set for the key
    headers = {**made.response_dict, "Content-Type": "text/html; charset=utf-8"}
    headers.pop("content-length")
    return "200 OK", list(headers.items()), b""


def _read_whole_by_moto(environ: dict, body: bytes) -> bool:
    """Whether moto's werkzeug request would read ``body`` (the shim's buffer) whole: to
    its Content-Length, or, without one, all of a stream the server terminates (chunked)
    and nothing of any other."""
    length = environ.get("CONTENT_LENGTH")
    if length is None:
        return bool(environ.get("wsgi.input_terminated")) or not body
    return length == str(len(body))


def _copy_source(environ: dict) -> Optional[tuple[str, str]]:
    """The (bucket, key) of a copy's source read as moto reads it (the shim has made it
    ``<bucket>/<URL-encoded key>``), if that bucket is one answered here and the source
    names no version."""
    parsed = urllib.parse.urlparse(environ["HTTP_X_AMZ_COPY_SOURCE"])
    if parsed.scheme or parsed.netloc or parsed.params or parsed.query or parsed.fragment:
        return None
    bucket, slash, name = urllib.parse.unquote(parsed.path).lstrip("/").partition("/")
    source = _indexed_bucket(bucket) if slash else None
    return None if source is None or _locked(source) else (bucket, name)


def _locked(bucket: FakeBucket) -> bool:
    """Whether moto's copy into or out of ``bucket`` depends on more than its keys:
    versions, default encryption, object lock."""
    return bool(bucket.versioning_status or bucket.encryption or bucket.object_lock_enabled)
