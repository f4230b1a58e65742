"""What COS says about objects and uploads: frozen records of a HEAD, a listing, a stored
object, a multipart upload and its parts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

# The modification time a client set with MFMT, in seconds since the epoch; the name rclone
# uses too, so both tools see the same time.
MTIME_HEADER = "x-cos-meta-mtime"


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
class NewUpload:
    """A multipart upload InitiateMultipartUpload started: its id, and whether a try before
    the one answered went unanswered (``unheard``: COS may have started an upload then too,
    whose id was never heard of)."""

    upload_id: str
    unheard: bool = False


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
