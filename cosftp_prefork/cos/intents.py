"""Intents: a directory rename or an append says in COS what it changes, so that no other
one touching the same files, on any worker or node, runs at the same time.

A directory rename copies every key, then deletes the originals. Two renames of one
directory at once would each copy all of it (every key left in both new places); a rename
inside or around a running one would copy its half-moved keys; two into one new name would
mix them. An APPE copies the file and completes a new object with its bytes after it: of two
at once, the last to complete would drop the other's bytes, though both answered 226.

COS has no locks and no conditional delete, so before it starts, such a command writes an
*intent* ``.cosftp/intents/<random id>`` naming what it does and the places it touches
(directory prefixes ``a/b/``, or a file's key), then lists the intents: if another one
overlaps (the same file or directory, or one inside the other), it deletes its own and,
after two more tries, the command is refused (``Conflict``). Each writes before it lists,
so of two overlapping commands the later lister sees the other: both never go ahead (both
may step back; each tries again after a random pause, so one usually goes ahead). This
relies on COS listing an object as soon as it was written.

An intent is written again every ``REFRESH_SECONDS`` until it is released; one not rewritten
for ``STALE_SECONDS`` (its worker died) no longer counts and is deleted by the next command
that finds it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

from ..errors import Conflict, NotFound, PermissionDenied, StorageError
from ..paths import RESERVED_NAME, ftp_path_for_key
from .bucket import Bucket
from .listing import all_objects
from .objects import ObjectInfo
from .periodic import Periodic

log = logging.getLogger(__name__)

INTENT_ROOT = f"{RESERVED_NAME}/intents/"
REFRESH_SECONDS = 30.0
STALE_SECONDS = 300.0
ATTEMPTS = 3
_RANDOM = random.SystemRandom()
# What each kind of intent is doing to its first place, for the refusal's message.
DOING = {"rename": "being renamed", "append": "being appended to"}


def _overlap(one: str, other: str) -> bool:
    """Whether two places (a directory prefix ``a/`` or a file key) share a key."""
    return one == other or (one.endswith("/") and other.startswith(one)) or \
        (other.endswith("/") and one.startswith(other))


@dataclass(frozen=True)
class Intent:
    """A command under way: what it does (``rename``, ``append``) and the places it
    touches, directory prefixes (``a/b/``) or file keys."""

    what: str
    places: tuple[str, ...]

    def overlaps(self, other: Intent) -> bool:
        return any(_overlap(mine, theirs) for mine in self.places for theirs in other.places)

    def describe(self) -> str:
        return f"{ftp_path_for_key(self.places[0])} is {DOING.get(self.what, 'being changed')}"

    def to_json(self) -> bytes:
        return json.dumps({"what": self.what, "places": self.places},
                          ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Intent:
        """Raises ``ValueError`` for anything but an intent this module wrote."""
        try:
            found = json.loads(data)
            return cls(str(found["what"]), tuple(str(place) for place in found["places"]))
        except (TypeError, KeyError, UnicodeDecodeError) as exc:
            raise ValueError(f"not an intent: {exc}") from exc


class _Refresher:
    """Rewrites every intent this process holds, every ``REFRESH_SECONDS``, on one thread
    started with the first intent (in the worker, after the fork)."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[Bucket, Intent]] = {}
        self._lock = threading.Lock()
        self._periodic: Optional[Periodic] = None

    def add(self, key: str, bucket: Bucket, intent: Intent) -> None:
        with self._lock:
            self._held[key] = (bucket, intent)
            if self._periodic is None:
                self._periodic = Periodic("intents", REFRESH_SECONDS, self._refresh_all)
                self._periodic.start()

    def remove(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)

    def _refresh_all(self) -> None:
        with self._lock:
            held = list(self._held.items())
        for key, (bucket, intent) in held:
            try:
                bucket.put(key, intent.to_json())
            except StorageError as exc:
                log.warning("cannot rewrite the intent %s: %s", key, exc)


_REFRESHER = _Refresher()


class Announcement:
    """An intent held in COS from :func:`announce` until :meth:`release`."""

    def __init__(self, bucket: Bucket, key: Optional[str]) -> None:
        self._bucket, self._key = bucket, key  # key None: not written (no access)

    def release(self) -> None:
        """Delete the intent (a failure is only logged: it goes stale); idempotent."""
        key, self._key = self._key, None
        if key is not None:
            _REFRESHER.remove(key)
            _delete(self._bucket, key)


def announce(bucket: Bucket, what: str, *places: str) -> Announcement:
    """Write the intent of ``what`` on ``places`` once no overlapping one is found beside
    it; raises ``Conflict`` after ``ATTEMPTS`` tries. If the intent cannot be written
    (credentials that may not write ``.cosftp/``), the command goes ahead unguarded, with
    a warning: the command matters more than the guard."""
    intent = Intent(what, places)
    key = f"{INTENT_ROOT}{uuid.uuid4().hex}"
    try:
        _claim(bucket, key, intent)
    except PermissionDenied as exc:
        log.warning("cannot write or list the intent %s (%s): %s goes ahead unguarded", key,
                    exc, intent.describe())
        return Announcement(bucket, None)
    _REFRESHER.add(key, bucket, intent)
    return Announcement(bucket, key)


@contextlib.contextmanager
def announced(bucket: Bucket, what: str, *places: str) -> Iterator[None]:
    """Run a command announced (see :func:`announce`) for the time of the ``with``."""
    held = announce(bucket, what, *places)
    try:
        yield
    finally:
        held.release()


def _claim(bucket: Bucket, key: str, intent: Intent) -> None:
    for attempt in range(ATTEMPTS):
        bucket.put(key, intent.to_json())
        try:
            rival = _overlapping(bucket, key, intent)
        except PermissionDenied:  # may write .cosftp/ but not list it
            _delete(bucket, key)
            raise
        if rival is None:
            return
        _delete(bucket, key)
        if attempt + 1 < ATTEMPTS:
            time.sleep(_RANDOM.uniform(0.05, 1.0))  # a back-off, as on a shared bus
    log.warning("refused the %s of %s: %s", intent.what, ftp_path_for_key(intent.places[0]),
                rival.describe())
    raise Conflict(f"{rival.describe()} by another session; try again when it is done")


def _overlapping(bucket: Bucket, own: str, intent: Intent) -> Optional[Intent]:
    """Another live intent that overlaps ``intent`` (whose key is ``own``), or None;
    stale ones are deleted on the way."""
    now = time.time()
    for stored in all_objects(bucket, INTENT_ROOT):
        if stored.key == own:
            continue
        if now - stored.mtime > STALE_SECONDS:
            log.info("deleting the stale intent %s", stored.key)
            _delete(bucket, stored.key)
            continue
        other = _read(bucket, stored)
        if other is not None and other.overlaps(intent):
            return other
    return None


def _read(bucket: Bucket, stored: ObjectInfo) -> Optional[Intent]:
    """The intent ``stored`` holds; None if its command ended meanwhile or it is not one."""
    try:
        return Intent.from_json(bucket.read_small(stored.key, stored.size))
    except NotFound:
        return None
    except ValueError as exc:
        log.warning("ignoring %s: %s", stored.key, exc)
        return None


def _delete(bucket: Bucket, key: str) -> None:
    """Delete an intent; a failure is only logged (it goes stale)."""
    try:
        bucket.delete(key)
    except StorageError as exc:
        log.warning("cannot delete the intent %s (%s); it stops counting after %ds", key, exc,
                    STALE_SECONDS)
