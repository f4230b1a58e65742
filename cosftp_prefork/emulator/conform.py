"""What COS refuses that moto lets through, answers otherwise, or fails on with 500.

Checked by the shim before a request reaches moto or the answers of ``fast.py``, so both
give COS's answer. Each rule names the COS document it follows:

* PUT Object - Copy and Upload Part - Copy (cloud.tencent.com/document/product/436/10881,
  436/8287): ``x-cos-copy-source-If-Match``, ``-If-None-Match``, ``-If-Modified-Since`` and
  ``-If-Unmodified-Since`` answer 412 PreconditionFailed when they fail (moto checks none
  of them on part copies, and neither date on copies); ``x-cos-metadata-directive`` is
  ``Copy`` or ``Replaced`` (any other value: 400 InvalidArgument; moto took it as Copy);
  ``x-cos-copy-source`` names ``<bucket>.<endpoint>/<key>`` (an empty or keyless one: 400
  InvalidCopySource, "不合法的复制源" in the error codes, 436/7730; moto failed with 500);
  ``x-cos-copy-source-range`` is ``bytes=first-last`` inside the source (else 400
  InvalidArgument; moto copied what there was);
* a part copied into, or a completion of, an upload that does not exist: 404 NoSuchUpload
  (436/7730; moto failed with 500); a completion listing its parts out of ascending order:
  400 InvalidPartOrder (436/7730; moto joined them in the order given);
* GET Bucket (436/7734): ``max-keys`` is at most 1000 (a larger one lists 1000; moto listed
  them all), a number (else 400 InvalidArgument; moto failed with 500), and
  ``encoding-type`` can only be ``url`` (else 400 InvalidArgument);
* DELETE Multiple Objects (436/8289) deletes at most 1,000 objects a request (more: 400
  MalformedXML, as is a body that is no XML or names no object: moto failed with 500),
  must carry its body's
  Content-MD5 (none: 400 MissingContentMD5, S3's code:
  COS's list names none for it; else InvalidDigest or BadDigest as for a PUT; moto took any
  or none), and answers only the failures in Quiet mode (:func:`quiet_deletes`; moto listed
  every object);
* Complete Multipart Upload (436/7742) names the object at COS's endpoint and gives no
  version id where the bucket never had versions (:func:`completed_upload`);
* List Multipart Uploads (436/7736) is paged (:func:`page_uploads`; ``max-uploads`` that is
  no number from 1: 400 InvalidArgument), each upload initiated by its Owner (moto named an
  AWS IAM user);
* an object PUT (or part) whose Content-MD5 is not its body's: 400 BadDigest, one that is no
  MD5 at all 400 InvalidDigest (436/7730; moto stored the body): :func:`digest_refusal`,
  checked once the shim has read the body;
* an object key is at most 850 bytes of UTF-8 (Object Overview, 436/13324): a longer one
  gets 400 KeyTooLong (436/7730) from PUT Object, a copy or Initiate Multipart Upload
  (moto took up to 1,024); one holding CAN, EM, SUB or ESC (0x18-0x1B, "not supported" in
  the same page, which names no error code), or starting with ``\\`` (the same page),
  gets 400 InvalidArgument from the same requests (moto stored it). So does one starting
  with ``/``, refused by the same page: the path ``//a/b`` names the key ``/a/b`` (the SDK
  sends a Key ``//a/b`` so), and ``%2F`` in a path is a ``/`` of the key (moto stored
  ``/a/b``; ``serving.py`` had read the path as host ``a``, path ``/b``, and the emulator
  stored ``b``). Every other character is "any UTF-8 character" there: NUL, CR, LF and the
  other controls are stored.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import io
import re
import urllib.parse
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Callable, Optional
from xml.sax.saxutils import escape, unescape

import moto.s3.models
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.exceptions import MissingBucket

from .accounts import Refusal
from .fast import LIST_PARAMETERS, Place, copy_source, cos_header, place
from .fast import query as parsed_query

MAX_KEY_BYTES = 850  # the longest object key, in UTF-8 bytes (Object Overview, 436/13324)
LIST_MAX_KEYS = 1000  # GET Bucket's most keys a page, whatever max-keys asks
DELETE_MAX_OBJECTS = 1000  # DELETE Multiple Objects' most objects a request
_DIRECTIVES = ("Copy", "Replaced")
_COPY_RANGE = re.compile(r"bytes=(\d+)-(\d+)")
_DELETED_OBJECT = re.compile(rb"<Object>")
_QUIET = re.compile(rb"<Quiet>\s*true\s*</Quiet>", re.I)
_DELETED = re.compile(rb"<Deleted>.*?</Deleted>", re.S)
_S3_LOCATION = re.compile(rb"<Location>https?://[^/<]*/")
_PART_NUMBER = re.compile(rb"<PartNumber>\s*(\d+)\s*</PartNumber>")
PRECONDITION_FAILED = Refusal("412 Precondition Failed", "PreconditionFailed",
                              "The precondition given in the copy source headers failed.")


def _invalid(message: str, code: str = "InvalidArgument") -> Refusal:
    return Refusal("400 Bad Request", code, message)


@dataclass(frozen=True)
class SourceState:
    """What a copy's conditions and range are checked against: the source's ETag (no
    quotes), its last modification (seconds since the epoch) and size."""

    etag: str
    modified: float
    size: int


def refusal(environ: dict) -> Optional[Refusal]:
    """COS's refusal of this request as sent (COS-form ``x-cos-*`` headers), before any
    object is looked at; None if COS takes it."""
    method = environ["REQUEST_METHOD"]
    if method == "HEAD" or (method == "GET" and not environ.get("QUERY_STRING")):
        return None  # (most requests: nothing here to check, and the emulator's CPU counts)
    query = parsed_query(environ)
    where = place(environ)
    if _names_a_new_object(method, where, query) and \
            len(where.key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        return _invalid(f"object keys are at most {MAX_KEY_BYTES} bytes long", "KeyTooLong")
    if _names_a_new_object(method, where, query) and _REFUSED_IN_KEYS.search(where.key):
        return _invalid("object keys may not hold CAN, EM, SUB or ESC (0x18-0x1B)")
    if _names_a_new_object(method, where, query) and where.key.startswith(("\\", "/")):
        return _invalid(f"object keys may not start with {where.key[0]}")
    if method == "PUT" and copy_source(environ) is not None:
        return _copy_refusal(environ, query)
    if method == "GET" and not where.is_object and query and set(query) <= LIST_PARAMETERS:
        return _list_refusal(environ, query)
    if method == "POST" and "delete" in query:
        return _delete_refusal(environ)
    if method == "GET" and "uploads" in query and "max-uploads" in query:
        wanted = query["max-uploads"][-1]
        if not wanted.isdigit() or int(wanted) < 1:
            return _invalid("max-uploads must be a whole number from 1 to 1000")
    if "uploadId" in query and (method == "POST" or "partNumber" in query):
        return _upload_refusal(environ, query["uploadId"][0]) or (
            _completion_refusal(environ) if method == "POST" else None)
    return None


# What COS does not take in an object key (Object Overview, 436/13324).
_REFUSED_IN_KEYS = re.compile("[\x18-\x1b]")


def _names_a_new_object(method: str, where: Place, query: dict[str, list[str]]) -> bool:
    """Whether the request makes an object (PUT Object, a copy, Initiate Multipart
    Upload) under the key it names."""
    if not where.is_object:
        return False
    return (method == "PUT" and "partNumber" not in query) or \
        (method == "POST" and "uploads" in query)


def _copy_refusal(environ: dict, query: dict[str, list[str]]) -> Optional[Refusal]:
    """What COS refuses in a copy's (or a part copy's) headers alone, or its upload."""
    part = "partNumber" in query
    if copy_source_parts(copy_source(environ) or "") is None:
        return _invalid("x-cos-copy-source must name <bucket>.<endpoint>/<key>",
                        "InvalidCopySource")
    directive = environ.get("HTTP_X_COS_METADATA_DIRECTIVE")
    if not part and directive is not None and directive not in _DIRECTIVES:
        return _invalid("x-cos-metadata-directive must be Copy or Replaced")
    wanted = cos_header(environ, "COPY_SOURCE_RANGE")
    if part and wanted:  # (the SDK sends it empty for a whole object)
        found = _COPY_RANGE.fullmatch(wanted)
        if found is None or int(found.group(1)) > int(found.group(2)):
            return _invalid("x-cos-copy-source-range must be bytes=first-last")
    if part and "uploadId" in query:
        return _upload_refusal(environ, query["uploadId"][0])
    return None


def copy_source_parts(value: str) -> Optional[tuple[str, str]]:
    """The host (or S3-form bucket) and URL-encoded key, without ``?versionId=…``, that a
    copy source names; None if it names no object."""
    host, slash, path = value.lstrip("/").partition("/")
    key = path.partition("?")[0]
    return (host, key) if host and slash and key else None


def _list_refusal(environ: dict, query: dict[str, list[str]]) -> Optional[Refusal]:
    max_keys = query.get("max-keys", [str(LIST_MAX_KEYS)])[-1]
    if not max_keys.isdigit():
        return _invalid("max-keys must be a whole number from 0 to 1000")
    if query.get("encoding-type", ["url"])[-1] != "url":
        return _invalid("encoding-type can only be url")
    if int(max_keys) > LIST_MAX_KEYS:  # COS lists a page of 1000 at most
        environ["QUERY_STRING"] = urllib.parse.urlencode(
            {**query, "max-keys": [str(LIST_MAX_KEYS)]}, doseq=True,
            quote_via=urllib.parse.quote)
    return None


def buffered_body(environ: dict) -> bytes:
    """The request's body, read whole (without a Content-Length, a chunked one the server
    marks terminated: to its end) and put back for moto."""
    length = environ.get("CONTENT_LENGTH")
    body = environ["wsgi.input"].read(int(length) if length else -1)
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _delete_refusal(environ: dict) -> Optional[Refusal]:
    """DELETE Multiple Objects' Content-MD5 (which it must carry: 436/8289) and limit."""
    body = buffered_body(environ)
    named = environ.get("HTTP_CONTENT_MD5")
    if not named:
        return _invalid("Missing required header for this request: Content-MD5.",
                        "MissingContentMD5")
    refused = _digest_refusal(named, body)
    if refused is not None:
        return refused
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:  # (moto's parser raised, a 500)
        root = None
    if root is None or root.tag.rpartition("}")[2] != "Delete" or \
            not any(child.tag.rpartition("}")[2] == "Object" for child in root):
        return _invalid("The XML you provided was not well-formed or named no object.",
                        "MalformedXML")
    if len(_DELETED_OBJECT.findall(body)) > DELETE_MAX_OBJECTS:
        return _invalid(f"one request deletes at most {DELETE_MAX_OBJECTS} objects",
                        "MalformedXML")
    return None


def quiet_deletes(environ: dict, status: str, body: bytes) -> bytes:
    """A DELETE Multiple Objects answer in the mode asked for: in Quiet mode only the
    objects that failed (436/8289; moto lists every one whatever the mode)."""
    if environ["REQUEST_METHOD"] != "POST" or not status.startswith("200") or \
            "delete" not in parsed_query(environ) or b"<Deleted>" not in body or \
            not _QUIET.search(environ["wsgi.input"].getvalue()):
        return body
    return _DELETED.sub(b"", body)


def completed_upload(environ: dict, status: str, headers: list[tuple[str, str]], body: bytes,
                     region: Callable[[str], str]) -> tuple[list[tuple[str, str]], bytes]:
    """A Complete Multipart Upload answer as COS gives it (436/7742): the object's Location
    at COS's endpoint, ``<bucket>.cos.<region>.myqcloud.com/<key>`` (moto names S3's), and
    ``x-cos-version-id`` only where the bucket's versioning was ever enabled (moto says
    ``null`` in any bucket). ``region`` tells a bucket's region."""
    if environ["REQUEST_METHOD"] != "POST" or not status.startswith("200") or \
            b"<CompleteMultipartUploadResult" not in body:
        return headers, body
    bucket = place(environ).bucket
    body = _S3_LOCATION.sub(
        b"<Location>%s.cos.%s.myqcloud.com/" % (escape(bucket).encode(), region(bucket).encode()),
        body, count=1)
    try:
        versioned = bool(moto.s3.models.s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_bucket(
            bucket).versioning_status)
    except MissingBucket:
        versioned = False
    if not versioned:
        headers = [(name, value) for name, value in headers
                   if name.lower() != "x-cos-version-id"]
    return headers, body


def _upload_refusal(environ: dict, upload_id: str) -> Optional[Refusal]:
    """404 NoSuchUpload for an upload the bucket does not have (moto fails with 500 on a
    part copy or a completion of one); None if it has it or the bucket is missing (moto
    says NoSuchBucket)."""
    try:
        bucket = moto.s3.models.s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_bucket(
            place(environ).bucket)
    except MissingBucket:
        return None
    if upload_id in bucket.multiparts:
        return None
    return Refusal("404 Not Found", "NoSuchUpload", "The specified upload does not exist.")


def _completion_refusal(environ: dict) -> Optional[Refusal]:
    """400 InvalidPartOrder for a CompleteMultipartUpload whose part numbers do not
    ascend (moto joined the parts in the order given)."""
    numbers = [int(number) for number in _PART_NUMBER.findall(buffered_body(environ))]
    if any(later <= earlier for earlier, later in zip(numbers, numbers[1:])):
        return _invalid("the parts must be listed by ascending part number",
                        "InvalidPartOrder")
    return None


def digest_refusal(environ: dict) -> Optional[Refusal]:
    """400 BadDigest for a PUT Object or UploadPart whose ``Content-MD5`` is not the MD5 of
    the body received (the shim has buffered it: ``wsgi.input`` is a ``BytesIO``), 400
    InvalidDigest for one that is no base64 MD5 at all (error codes, 436/7730); moto
    ignores the header and stores the body. None for other requests."""
    named = environ.get("HTTP_CONTENT_MD5")
    if not named or environ["REQUEST_METHOD"] != "PUT" or copy_source(environ) is not None:
        return None
    return _digest_refusal(named, environ["wsgi.input"].getvalue())


def _digest_refusal(named: str, body: bytes) -> Optional[Refusal]:
    """InvalidDigest if the Content-MD5 ``named`` is no base64 MD5, BadDigest if it is not
    the MD5 of ``body``; else None."""
    try:
        wanted = base64.b64decode(named, validate=True)
    except binascii.Error:
        wanted = b""
    if len(wanted) != hashlib.md5().digest_size:
        return _invalid("The Content-MD5 you specified is not valid.", "InvalidDigest")
    if hashlib.md5(body).digest() != wanted:
        return _invalid("The Content-MD5 you specified did not match what was received.",
                        "BadDigest")
    return None


def copy_precondition(environ: dict, source: SourceState) -> Optional[Refusal]:
    """COS's refusal of a copy of ``source`` for its conditions or range; None if it
    passes. Dates COS cannot read are ignored, as HTTP ignores them."""
    if not _etag_condition(environ, "COPY_SOURCE_IF_MATCH", source, True) or \
            not _etag_condition(environ, "COPY_SOURCE_IF_NONE_MATCH", source, False):
        return PRECONDITION_FAILED
    modified = int(source.modified)  # HTTP dates have whole seconds
    since = _http_date(cos_header(environ, "COPY_SOURCE_IF_MODIFIED_SINCE"))
    if since is not None and modified <= since:
        return PRECONDITION_FAILED
    since = _http_date(cos_header(environ, "COPY_SOURCE_IF_UNMODIFIED_SINCE"))
    if since is not None and modified > since:
        return PRECONDITION_FAILED
    found = _COPY_RANGE.fullmatch(cos_header(environ, "COPY_SOURCE_RANGE") or "")
    if found is not None and int(found.group(2)) >= source.size:
        return _invalid(f"x-cos-copy-source-range is past the source's {source.size} bytes")
    return None


def has_copy_conditions(environ: dict) -> bool:
    """Whether a copy carries a condition or range that :func:`copy_precondition` checks."""
    return any(cos_header(environ, name) is not None for name in (
        "COPY_SOURCE_IF_MATCH", "COPY_SOURCE_IF_NONE_MATCH", "COPY_SOURCE_IF_MODIFIED_SINCE",
        "COPY_SOURCE_IF_UNMODIFIED_SINCE", "COPY_SOURCE_RANGE"))


def _etag_condition(environ: dict, name: str, source: SourceState, match: bool) -> bool:
    wanted = cos_header(environ, name)
    if wanted is None:
        return True
    return (wanted.strip().strip('"') == source.etag) == match


def _http_date(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


_UPLOAD = re.compile(rb"<Upload>.*?</Upload>", re.S)
_OWNER = re.compile(rb"<Owner>(.*?)</Owner>", re.S)
_INITIATOR = re.compile(rb"<Initiator>.*?</Initiator>", re.S)
_UPLOADS_HEAD = re.compile(rb"<KeyMarker\s*/>|<KeyMarker>.*?</KeyMarker>|<UploadIdMarker\s*/>|"
                           rb"<UploadIdMarker>.*?</UploadIdMarker>|<MaxUploads>.*?</MaxUploads>|"
                           rb"<IsTruncated>.*?</IsTruncated>", re.S)


def page_uploads(environ: dict, body: bytes) -> bytes:
    """A ListMultipartUploads answer paged as COS pages it (List Multipart Uploads,
    436/7736): by key, then upload ID; after ``key-marker`` (and, for that key,
    ``upload-id-marker``); ``max-uploads`` (1000 at most) a page, with NextKeyMarker and
    NextUploadIdMarker when truncated. moto gives every upload, in the order made, and
    ignores all three."""
    query = parsed_query(environ)
    if environ["REQUEST_METHOD"] != "GET" or "uploads" not in query or \
            b"</ListMultipartUploadsResult>" not in body:
        return body
    key_marker = query.get("key-marker", [""])[-1]
    id_marker = query.get("upload-id-marker", [""])[-1] if key_marker else ""
    limit = min(int(query.get("max-uploads", ["1000"])[-1]), 1000)
    uploads = sorted((unescape(_text(upload, b"Key")), _text(upload, b"UploadId"),
                      _initiated_by_owner(upload)) for upload in _UPLOAD.findall(body))
    after = [upload for upload in uploads if upload[0] > key_marker or (
        id_marker and upload[0] == key_marker and upload[1] > id_marker)]
    shown, truncated = after[:limit], len(after) > limit
    head = (f"<KeyMarker>{escape(key_marker)}</KeyMarker>"
            f"<UploadIdMarker>{escape(id_marker)}</UploadIdMarker>"
            f"<MaxUploads>{limit}</MaxUploads>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
    if truncated:
        head += (f"<NextKeyMarker>{escape(shown[-1][0])}</NextKeyMarker>"
                 f"<NextUploadIdMarker>{escape(shown[-1][1])}</NextUploadIdMarker>")
    rest = _UPLOAD.sub(b"", _UPLOADS_HEAD.sub(b"", body))
    end = rest.rindex(b"</ListMultipartUploadsResult>")
    return rest[:end] + head.encode() + b"".join(upload[2] for upload in shown) + rest[end:]


def _initiated_by_owner(upload: bytes) -> bytes:
    """An ``<Upload>`` whose Initiator is its Owner, as for any upload the bucket's owner
    started (moto names an AWS IAM user, ``arn:aws:iam::…``, no COS account is)."""
    owner = _OWNER.search(upload)
    if owner is None:
        return upload
    return _INITIATOR.sub(lambda _: b"<Initiator>%s</Initiator>" % owner.group(1), upload,
                          count=1)


def _text(element: bytes, tag: bytes) -> str:
    found = re.search(rb"<%s>(.*?)</%s>" % (tag, tag), element, re.S)
    return found.group(1).decode("utf-8") if found else ""
