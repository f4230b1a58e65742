"""Rename intents: a directory rename says in COS what it moves, so that no other rename
of an overlapping directory, on any worker or node, runs at the same time.

A directory rename copies every key, then deletes the originals. Two renames of one
directory at once would each copy all of it (every key left in both new places); a rename
inside or around a running one would copy its half-moved keys; two into one new name would
mix them. COS has no locks and no conditional delete, so before copying, a rename writes an
*intent* ``.cosftp/renames/<random id>`` naming its source and target, then lists the
intents: if another one overlaps (the same directory, or one inside the other, on either
side), it deletes its own and, after two more tries, the rename is refused (``Conflict``).
Each writes before it lists, so of two overlapping renames the later lister sees the other:
both never go ahead (both may step back). This relies on COS listing an object as soon as
it was written.

An intent is written again every ``REFRESH_SECONDS`` while its rename runs; one not
rewritten for ``STALE_SECONDS`` (its worker died) no longer counts and is deleted by the
next rename that finds it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Optional

from ..errors import Conflict, NotFound, PermissionDenied, StorageError
from ..paths import RESERVED_NAME, ftp_path_for_key
from .bucket import Bucket, ObjectInfo
from .listing import all_objects
from .periodic import Periodic

log = logging.getLogger(__name__)

INTENT_ROOT = f"{RESERVED_NAME}/renames/"
REFRESH_SECONDS = 30.0
STALE_SECONDS = 300.0
ATTEMPTS = 3
_RANDOM = random.SystemRandom()


@dataclass(frozen=True)
class Intent:
    """A directory rename under way: its source and target key prefixes (``a/b/``)."""

    source: str
    target: str

    def overlaps(self, other: Intent) -> bool:
        """Whether a directory of one is, or is inside, a directory of the other."""
        return any(mine.startswith(theirs) or theirs.startswith(mine)
                   for mine in (self.source, self.target)
                   for theirs in (other.source, other.target))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Intent:
        """Raises ``ValueError`` for anything but an intent this module wrote."""
        try:
            found = json.loads(data)
            return cls(str(found["source"]), str(found["target"]))
        except (TypeError, KeyError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a rename intent: {exc}") from exc


@contextlib.contextmanager
def announced(bucket: Bucket, source: str, target: str) -> Iterator[None]:
    """Run the rename of the directory ``source`` to ``target`` (key prefixes) announced
    by its intent; raises ``Conflict`` if an overlapping rename is under way.

    Two renames that start in the same moment both see the other and both step back; each
    then tries again after a random pause, so that one of them usually goes ahead.
    If the intent cannot be written (credentials that may not write ``.cosftp/``), the
    rename goes ahead unguarded, with a warning: the rename matters more than the guard.
    """
    intent = Intent(source, target)
    key = f"{INTENT_ROOT}{uuid.uuid4().hex}"
    try:
        _claim(bucket, key, intent)
    except PermissionDenied as exc:
        log.warning("cannot write the rename intent %s (%s): renaming %s unguarded against "
                    "other renames", key, exc, ftp_path_for_key(source))
        yield
        return
    refresher = Periodic("rename-intent", REFRESH_SECONDS, lambda: _refresh(bucket, key, intent))
    refresher.start()
    try:
        yield
    finally:
        refresher.stop()
        _delete(bucket, key)


def _claim(bucket: Bucket, key: str, intent: Intent) -> None:
    """Write ``intent`` as ``key`` once no overlapping one is found beside it; raises
    ``Conflict`` (its own intent deleted again) after ``ATTEMPTS`` tries."""
    for attempt in range(ATTEMPTS):
        bucket.put(key, intent.to_json())
        rival = _overlapping(bucket, key, intent)
        if rival is None:
            return
        _delete(bucket, key)
        if attempt + 1 < ATTEMPTS:
            time.sleep(_RANDOM.uniform(0.05, 1.0))  # a back-off, as on a shared bus
    log.warning("renaming %s to %s refused: %s is being renamed to %s", ftp_path_for_key(
        intent.source), ftp_path_for_key(intent.target), ftp_path_for_key(rival.source),
        ftp_path_for_key(rival.target))
    raise Conflict(f"{ftp_path_for_key(rival.source)} is being renamed by another session, "
                   "and that overlaps this rename; try again when it is done")


def _overlapping(bucket: Bucket, own: str, intent: Intent) -> Optional[Intent]:
    """Another live intent that overlaps ``intent`` (whose key is ``own``), or None;
    stale ones are deleted on the way."""
    now = time.time()
    for stored in all_objects(bucket, INTENT_ROOT):
        if stored.key == own:
            continue
        if now - stored.mtime > STALE_SECONDS:
            log.info("deleting the stale rename intent %s", stored.key)
            _delete(bucket, stored.key)
            continue
        other = _read(bucket, stored)
        if other is not None and other.overlaps(intent):
            return other
    return None


def _read(bucket: Bucket, stored: ObjectInfo) -> Optional[Intent]:
    """The intent ``stored`` holds; None if its rename ended meanwhile or it is not one."""
    try:
        return Intent.from_json(bucket.read_small(stored.key, stored.size))
    except NotFound:
        return None
    except ValueError as exc:
        log.warning("ignoring %s: %s", stored.key, exc)
        return None


def _refresh(bucket: Bucket, key: str, intent: Intent) -> None:
    try:
        bucket.put(key, intent.to_json())
    except StorageError as exc:
        log.warning("cannot rewrite the rename intent %s: %s", key, exc)


def _delete(bucket: Bucket, key: str) -> None:
    """Delete an intent; a failure is only logged (it goes stale)."""
    try:
        bucket.delete(key)
    except StorageError as exc:
        log.warning("cannot delete the rename intent %s (%s); it stops counting after %ds",
                    key, exc, STALE_SECONDS)
