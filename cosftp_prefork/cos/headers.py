"""COS headers: what an answer's say (CRC64, version, dates, the attributes a copy keeps)
and the SDK arguments that give a new object its attributes."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Optional

from urllib3 import HTTPHeaderDict

from .objects import MTIME_HEADER, Completed, ObjectInfo
from .wire import Answer

FORBID_OVERWRITE = "x-cos-forbid-overwrite"
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


def reported_crc64(headers: Mapping[str, Any]) -> Optional[int]:
    """The first ``x-cos-hash-crc64ecma`` of ``headers`` that is a number, None if none."""
    for value in _values(headers, "x-cos-hash-crc64ecma"):
        if str(value).isdigit():
            return int(value)
    return None


def header(headers: Mapping[str, Any], wanted: str) -> str:
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


def whole_size(content_range: str, fallback: int) -> int:
    """The object's size from a ranged GET's ``Content-Range: bytes a-b/size``."""
    total = content_range.rpartition("/")[2]
    return int(total) if total.isdigit() else fallback


def float_or_none(value: str) -> Optional[float]:
    """``value`` as a number (an MFMT time), None if it is not one."""
    try:
        return float(value)
    except ValueError:
        return None


def object_headers(source: Optional[ObjectInfo], client_mtime: Optional[float],
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


def kept_attributes(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The headers (lower-case names) a copy keeps, as ``ObjectInfo.attributes``."""
    return tuple(sorted((name, value) for name, value in headers.items()
                        if name in _KEPT_HEADERS or name.startswith(_USER_METADATA)))


def parse_http_date(value: str) -> float:
    """An HTTP date (Last-Modified) in seconds since the epoch; 0 if unreadable."""
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0


def completed(answer: Answer) -> Completed:
    """What a PUT's answer says of the object it stored."""
    return Completed(str(answer.headers.get("ETag", "")).strip('"'),
                     reported_crc64(answer.headers),
                     header(answer.headers, "x-cos-version-id"))


def parse_iso_date(value: str) -> float:
    """An ISO 8601 date (of a listing) in seconds since the epoch; 0 if unreadable."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
