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
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Optional

from ..config.settings import TransferConfig
from ..errors import PermissionDenied
from ..paths import MAX_KEY_BYTES, RESERVED_NAME, child_name
from .bucket import MTIME_HEADER, Bucket, ListPage, ObjectInfo
from .copies import Moved, copy_object, delete_keys
from .listing import Entry, all_objects, pages

log = logging.getLogger(__name__)

MTIME_ROOT = f"{RESERVED_NAME}/mtime/"
_SEPARATOR = "#"


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

    Three requests: the self-copy, the listing of this file's older markers and the new
    marker; a fourth deletes older markers if there are any. The copy's answer names its
    ETag: no HEAD afterwards.

    With ``own_upload``, ``info`` is what this session's own STOR just committed
    (``UploadSession.stored``: its ETag, and no attributes but COS's defaults, which a copy
    that names none gets again) and two requests do: the self-copy, pinned to that ETag, so
    that no other bytes ever get this time or lose their attributes (``StorageError`` with
    code ``ObjectChanged`` when someone replaced them meanwhile: then take the general path,
    HEAD first), and the new marker. The older markers are not listed, because none of them
    can win over the new one in :class:`ListedMtimes`, which takes a marker only if it
    names the object's ETag and was written no earlier than the object (the self-copy's
    LastModified), and of several the one written last:

    - markers of other versions name other ETags;
    - markers of the same bytes (same ETag: an earlier upload of them, or another
      session's MFMT since this upload) were written before the self-copy;
    - COS's LastModified has whole seconds, and there lies the one case left: a marker of
      the same bytes written *in the same second* as the self-copy ties with the new one,
      and of tied markers the one listed last counts (key order: ``name#<seconds>#<etag>``
      sorts by the digits of the time). So the old time shows only if the same file, with
      the same bytes, was given a time, stored again and given a time whose digits sort
      first, all within one second (by this session, or by another at the same moment);
      LIST and MLSD then show the old time and MDTM (the object's own
      ``x-cos-meta-mtime``) the new one, until the file is next written or given a time.

    The pin tells bytes, not attributes: identical bytes stored again by another tool with
    other headers between the STOR and the MFMT lose those headers, as they would between
    the general path's HEAD and its copy.
    """
    etag = copy_object(bucket, info, info.key, transfer, executor, client_mtime=mtime,
                       pinned=own_upload)
    stamp = int(mtime)
    attributes = [item for item in info.attributes if item[0] != MTIME_HEADER]
    attributes.append((MTIME_HEADER, str(stamp)))
    now = dataclasses.replace(info, etag=etag, client_mtime=float(stamp),
                              attributes=tuple(sorted(attributes)))
    marker = marker_key(info.key, mtime, etag)
    if len(marker.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        log.info("%s: name too long for a listing marker; only MDTM will show the time",
                 info.key)
        return now
    stale = [] if own_upload else _older_markers(bucket, info.key, marker)
    bucket.put(marker, b"")
    delete_keys(bucket, stale)
    return now


def _older_markers(bucket: Bucket, key: str, marker: str) -> list[str]:
    """The markers of ``key`` other than ``marker`` (one listing)."""
    directory, _, name = key.rpartition("/")
    prefix = f"{MTIME_ROOT}{directory}/" if directory else MTIME_ROOT
    return [obj.key for obj in all_objects(bucket, f"{MTIME_ROOT}{key}{_SEPARATOR}")
            if obj.key != marker and _parse(child_name(prefix, obj.key))[0] == name]


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

    def apply(self, entry: Entry) -> Entry:
        """``entry`` with its MFMT time if a current marker names it; raises
        ``StorageError`` (but not ``PermissionDenied``, which shows COS's times)."""
        if entry.is_dir:
            return entry
        self._read_past(entry.name)
        stamp, written = self._found.pop((entry.name, entry.etag), (None, 0.0))
        if stamp is None or written < entry.mtime:
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
