"""Modification times set by MFMT, which COS cannot set on an object itself.

The time is stored twice:

- as the object's ``x-cos-meta-mtime`` metadata (a copy of the object onto itself), where
  MDTM reads it with a HEAD and where other tools (rclone) look for it;
- as an empty *marker* object ``.cosftp/mtime/<key>#<seconds>#<etag>``, because a listing
  carries no metadata: one extra listing of ``.cosftp/mtime/<directory>/`` gives LIST and MLSD
  the times of a whole directory, where a HEAD per file would cost a request per entry.

A marker counts only while the object still has the ETag it names: an overwrite with other
bytes makes it stale without anyone having to delete it. (Times cannot tell: COS's have whole
seconds, and a client often overwrites or sets the time within the same second.)

MFMT right after the session's own STOR writes the marker *beside* the self-copy (one round
trip): the marker may then be stored just before the copy, so a marker counts if it was
written no more than ``MARKER_SLACK`` before the object (see :func:`set_client_mtime`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from typing import Callable, Optional

from ..config.model import TransferConfig
from ..errors import PermissionDenied, StorageError, StorageUnavailable
from ..paths import RESERVED_NAME, child_name, fits_as_key
from .bucket import Bucket
from .calls import Started
from .copies import Moved, copy_object, delete_keys
from .listing import Entry, all_objects, pages
from .objects import MTIME_HEADER, ListPage, ObjectInfo

log = logging.getLogger(__name__)

MTIME_ROOT = f"{RESERVED_NAME}/mtime/"
_SEPARATOR = "#"
# Seconds a marker may be older than the object it names and still count: the marker of an
# MFMT right after its STOR is written at the same moment as the self-copy (one of them
# first), and COS's times have whole seconds.
MARKER_SLACK = 1.0
# A self-copy that took longer than this may have been stored more than MARKER_SLACK after
# the marker written beside it: the marker is written again after it.
_SLOW_COPY = 0.5


def marker_key(key: str, mtime: float, etag: str) -> str:
    """The marker recording ``mtime`` for the object ``key`` while its ETag is ``etag``."""
    return f"{MTIME_ROOT}{key}{_SEPARATOR}{int(mtime)}{_SEPARATOR}{etag}"


def _parse(name: str) -> tuple[str, int, str]:
    """Split a marker's name into file name, time and ETag; ("", 0, "") if it is none."""
    parts = name.rsplit(_SEPARATOR, 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return "", 0, ""
    return parts[0], int(parts[1]), parts[2]


def set_client_mtime(bucket: Bucket, info: ObjectInfo, mtime: float,
                     transfer: TransferConfig, executor: Executor,
                     own_upload: bool = False) -> ObjectInfo:
    """Record ``mtime`` for the object ``info`` (as a HEAD found it); return what the object
    is now. Raises ``StorageError``.

    Two requests at the same time: the self-copy, and the new marker, naming
    the ETag the copy is expected to keep (the source's: the same bytes). Should the copy
    answer another ETag (someone replaced the file since the HEAD), or take long enough that
    the marker may be more than ``MARKER_SLACK`` older than the copy, the marker is written
    again after it. The copy's answer names its ETag: no HEAD afterwards. The caller lists
    and deletes this file's older markers (:func:`markers_of`), so that none is left to
    contradict the new one.

    With ``own_upload``, ``info`` is what this session's own STOR just committed
    (``UploadSession.stored``: its ETag, and no attributes but COS's defaults, which a copy
    that names none gets again): the self-copy is pinned to that ETag, so that no other
    bytes ever get this time or lose their attributes (``StorageError`` with code
    ``ObjectChanged`` when someone replaced them meanwhile: then take the general path, HEAD
    first). The older markers need not be listed, because none of them can win over the new
    one in
    :class:`ListedMtimes`, which takes a marker only if it names the object's ETag and was
    written no earlier than ``MARKER_SLACK`` before the object (the self-copy's
    LastModified), and of several the one written last:

    - markers of other versions name other ETags;
    - markers of the same bytes (same ETag: an earlier upload of them, or another
      session's MFMT since this upload) were written before the self-copy;
    - COS's LastModified has whole seconds, and there lies the one case left: a marker of
      the same bytes written *within a second or so* of the self-copy may tie with the new
      one, and of tied markers the one listed last counts (key order:
      ``name#<seconds>#<etag>`` sorts by the digits of the time). So the old time shows
      only if the same file, with the same bytes, was given a time, stored again and given
      a time whose digits sort first, all within about a second (by this session, or by
      another at the same moment); LIST and MLSD then show the old time and MDTM (the
      object's own ``x-cos-meta-mtime``) the new one, until the file is next written or
      given a time. For the same reason the same bytes stored again within a second of an
      MFMT still list with its time (MDTM shows COS's).

    The pin tells bytes, not attributes: identical bytes stored again by another tool with
    other headers between the STOR and the MFMT lose those headers, as they would between
    the general path's HEAD and its copy.
    """
    etag = copy_beside_marker(
        bucket, info, info.key, [mtime],
        lambda: copy_object(bucket, info, info.key, transfer, executor, client_mtime=mtime,
                            pinned=own_upload))
    stamp = int(mtime)
    attributes = [item for item in info.attributes if item[0] != MTIME_HEADER]
    attributes.append((MTIME_HEADER, str(stamp)))
    return dataclasses.replace(info, etag=etag, client_mtime=float(stamp),
                               attributes=tuple(sorted(attributes)))


def _fits(bucket: Bucket, marker: str) -> bool:
    """Whether ``marker`` fits in a COS key; if not, only MDTM shows that time (logged)."""
    if fits_as_key(marker, bucket.key_room):
        return True
    log.info("%s: name too long for a listing marker; only MDTM will show the time", marker)
    return False


def copy_beside_marker(bucket: Bucket, source: ObjectInfo, target: str,
                       stamps: Sequence[float], copy: Callable[[], str]) -> str:
    """Run ``copy()``, a copy of ``source``'s bytes to ``target`` pinned to its ETag, with
    the markers of the times ``stamps`` for ``target`` written at the same time; return the
    copy's ETag (see :func:`set_client_mtime`). The markers are sent first by this thread
    and their answers read after the copy's (a pool's thread to send them cost a sixth of
    the worker's CPU in ``lftp mirror -R``: docs/performance.md). They name the ETag the
    copy is expected to keep, the source's; should the copy answer another one, or take long
    enough that a marker may be more than ``MARKER_SLACK`` older than the copy, they are
    written again after it. Raises what ``copy()`` raises, or ``StorageError`` (markers
    already written for a copy that failed are deleted again)."""
    guessed = [marker for marker in (marker_key(target, stamp, source.etag) for stamp in stamps)
               if _fits(bucket, marker)]
    # A copy keeps the ETag of the bytes it copies in one piece; a multipart ETag ("-N") may
    # not survive CopyObject (the copy's is then its MD5): those markers wait for the copy.
    beside = "-" not in source.etag
    written = [bucket.start_put(marker, b"") for marker in guessed] if beside else []
    started = time.monotonic()
    try:
        etag = copy()
    except BaseException:
        for marker, work in zip(guessed, written):
            if _stored(work):
                _forget_marker(bucket, marker)  # it names bytes that did not get the time
        raise
    for work in written:
        work.result()
    if guessed and (not beside or etag != source.etag or
                    time.monotonic() - started > _SLOW_COPY):
        for stamp in stamps:
            bucket.put(marker_key(target, stamp, etag), b"")
        if beside and etag != source.etag:
            delete_keys(bucket, guessed)
    return etag


def _stored(work: Started) -> bool:
    """Whether the marker PUT ``work`` stored its marker (a failure is the copy's to tell)."""
    try:
        work.result()
    except StorageError:
        return False
    return True


def markers_of(bucket: Bucket, key: str) -> list[tuple[float, str, str]]:
    """Every marker of the object ``key``: its time, the ETag it names and its own key (one
    listing; a rename carries those naming the ETag it copies, and deletes them all)."""
    found = []
    for marker in all_objects(bucket, f"{MTIME_ROOT}{key}{_SEPARATOR}"):
        name, stamp, etag = _parse(marker.key[len(MTIME_ROOT):])
        if name == key:
            found.append((float(stamp), etag, marker.key))
    return found


def _forget_marker(bucket: Bucket, marker: str) -> None:
    """Delete a marker written for a copy that failed; a failure is only logged (it names an
    ETag that got no time: the next MFMT of that file lists it as an older marker)."""
    try:
        bucket.delete(marker)
    except StorageError as exc:
        log.warning("%s: could not delete this marker of a failed MFMT: %s", marker, exc)


def carry_markers(bucket: Bucket, moved: list[Moved], directory: str = "") -> None:
    """After a rename, give every moved file's marker to its new key (naming the copy's
    ETag) and delete the old one; raises ``StorageError``.

    ``directory`` is the prefix of the renamed directory, or "" when ``moved`` is the one
    file renamed.
    """
    by_key = {item.source.key: item for item in moved}
    listed = MTIME_ROOT + (directory or moved[0].source.key + _SEPARATOR)
    old = []
    for marker in all_objects(bucket, listed):
        key, stamp, etag = _parse(marker.key[len(MTIME_ROOT):])
        item = by_key.get(key)
        if item is None:
            continue
        old.append(marker.key)
        if etag == item.source.etag:  # else it was stale already
            bucket.put(marker_key(item.target, stamp, item.etag), b"")
    delete_keys(bucket, old)


class ListedMtimes:
    """The MFMT times of the files directly in the directory ``prefix`` (``""`` = root),
    read from the markers' listing as far as a directory listing in key order needs them:
    the first entries go out after one page of each, and memory stays flat.

    A marker counts for the file with its name and ETag if it was written after the file
    (a copy onto itself, then the marker): an overwrite with the same bytes, later, makes
    it stale too. Of several, the one written last counts.
    """

    def __init__(self, bucket: Bucket, prefix: str) -> None:
        self._root = MTIME_ROOT + prefix
        # Requested now, while the directory's own first page is on its way.
        self._pages: Optional[Iterator[ListPage]] = pages(bucket, self._root)
        self._last = ""  # the last marker read (NextMarker need not be a key)
        self._found: dict[tuple[str, str], tuple[int, float]] = {}

    def settle(self) -> None:
        """Wait for the page on its way, if any, and ask for none more: a command that
        found no directory to list replies once every request it sent was answered."""
        if self._pages is not None:
            with contextlib.suppress(StorageError, StorageUnavailable):
                next(self._pages, None)
            self._pages = None

    def apply(self, entry: Entry) -> Entry:
        """``entry`` with its MFMT time if a current marker names it; raises
        ``StorageError`` (but not ``PermissionDenied``, which shows COS's times)."""
        if entry.is_dir:
            return entry
        self._read_past(entry.name)
        stamp, written = self._found.pop((entry.name, entry.etag), (None, 0.0))
        if stamp is None or written < entry.mtime - MARKER_SLACK:
            return entry
        return dataclasses.replace(entry, client_mtime=float(stamp))

    def _read_past(self, name: str) -> None:
        """Read marker pages until those of ``name`` (``name#...``) are all in."""
        end = self._root + name + chr(ord(_SEPARATOR) + 1)
        while self._pages is not None and self._last < end:
            try:
                page = next(self._pages)
            except StopIteration:
                self._pages = None
                return
            except PermissionDenied as exc:
                log.info("cannot read %s (%s); listing COS's times", MTIME_ROOT, exc)
                self._pages = None
                return
            # Files come in name order: markers of names before this one are stale.
            self._found = {item: value for item, value in self._found.items()
                           if item[0] >= name}
            for obj in page.objects:
                self._last = max(self._last, obj.key)
                marked, stamp, etag = _parse(child_name(self._root, obj.key))
                if marked and obj.mtime >= self._found.get((marked, etag), (0, 0.0))[1]:
                    self._found[(marked, etag)] = (stamp, obj.mtime)
            self._last = max([self._last, *page.prefixes])
