"""A write whose answer was lost, read back: what COS holds under its name tells whether it
was carried out.

A connection reset or cut in mid-answer (``ClientError``) leaves the gateway unable to tell
from the error whether COS stored the object; a retry of a write COS did carry out may then
fail for that very reason (NoSuchUpload for a completion, FileAlreadyExists for a PUT with
``x-cos-forbid-overwrite``). Only the name holding exactly the bytes sent (their size, and
the CRC64 COS reports equal to theirs) counts as stored; where that cannot be read (the HEAD
fails, or COS reports no CRC64), the outcome is unknown and the client is told so, never
"nothing stored" (docs/reliability.md, "Lost answers").
"""

from __future__ import annotations

from typing import Optional

from ..errors import NotFound, OutcomeUnknown, StorageError
from .bucket import Bucket
from .objects import ObjectInfo


def unheard(error: StorageError) -> bool:
    """Whether the request that failed with ``error`` may have been carried out: its own
    answer was lost, or an earlier try's."""
    return error.code == "ClientError" or error.unheard


def holding(bucket: Bucket, key: str, size: int, crc64: Optional[int],
            error: StorageError) -> Optional[ObjectInfo]:
    """The object ``key`` if it holds ``size`` bytes whose CRC64 is ``crc64`` (the write
    that failed with ``error`` stored them, or the name held them already); None if the name
    holds nothing or other bytes. Raises ``OutcomeUnknown``, naming ``error``, if the HEAD
    fails or no CRC64 can be compared."""
    try:
        found = bucket.head(key)
    except NotFound:
        return None
    except StorageError as exc:
        raise OutcomeUnknown(f"{error.strerror}; reading back what COS holds failed too "
                             f"({exc})", code=error.code,
                             request_id=error.request_id) from error
    if found.size != size:
        return None
    if crc64 is None or found.crc64 is None:
        raise OutcomeUnknown(f"{error.strerror}; COS holds {size} bytes there, without a "
                             "CRC64 to tell whether they are the ones sent", code=error.code,
                             request_id=error.request_id) from error
    return found if found.crc64 == crc64 else None
