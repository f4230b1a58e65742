"""ListObjects from a sorted index of each bucket's key names: no scan of the bucket, and
COS's paging.

Why this exists (fidelity): moto 5's ``S3Backend.list_objects`` copies the bucket's whole key
dict, tests every key and sorts what matches on every request, so even ``prefix=K
max-keys=1`` costs O(keys in the bucket): 50 ms at 100,000 keys, 0.3 s when they all match
the prefix (measured: docs/performance.md). COS answers a prefix listing from an
index, at a cost that does not grow with the bucket. The bench measures the gateway, which
looks keys up by listing, against this emulator, while its baselines never list: with moto's
scan the rows partly measured moto.

And moto pages only the keys: every common prefix comes on every page, none counts against
max-keys, and NextMarker is a token of its own. COS (GET Bucket, cloud.tencent.com/document/
product/436/7734) returns at most max-keys entries, common prefixes and keys together, in
name order after the marker, and NextMarker is the last of them when the page is truncated.
A client that pages through a directory with many subdirectories, or asks for one or two
entries, sees COS's pages here.

:func:`install` makes new buckets keep their names sorted (:class:`IndexedKeyStore`, which
follows every change moto makes to a bucket's keys) and replaces ``list_objects`` with
:func:`list_objects`: O(log n) per key and common prefix it answers. Keys whose latest
version is a delete marker are not listed but still make their common prefix, as in moto.
``list_objects_v2`` asks ``list_objects`` for every key under its prefix and pages them
itself, so its cost now grows with the prefix, not the bucket. Negative max-keys (which
the shim refuses, as COS does) are left to moto's method.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any, Callable, Optional, Union

import moto.s3.models
from moto.s3.models import FakeBucket, FakeDeleteMarker, FakeKey, FakeTableStorageBucket, S3Backend
from moto.s3.utils import _VersionedKeyStore

MOTO_LIST_OBJECTS = S3Backend.list_objects
# One entry of a listing: a key, or a common prefix.
Entry = Union[FakeKey, str]


def _after_all_starting_with(prefix: str) -> Optional[str]:
    """The least string greater than every string that starts with ``prefix``; None if
    there is none (``prefix`` empty or made of U+10FFFF only)."""
    stripped = prefix.rstrip(chr(0x10FFFF))
    if not stripped:
        return None
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)


def _skip_past(names: list[str], prefix: str, start: int) -> int:
    """The index in sorted ``names`` of the first name, from ``start`` on, that does not
    start with ``prefix``."""
    bound = _after_all_starting_with(prefix)
    return len(names) if bound is None else bisect.bisect_left(names, bound, start)


class IndexedKeyStore(_VersionedKeyStore):
    """moto's key store of a bucket, with its names kept sorted on every change.

    moto changes a bucket's keys with ``setlist`` (PUT, copy, completed multipart upload,
    removing one version), item assignment (delete markers) and ``pop`` (DELETE, also of
    each key of a multi-delete); ``del`` is followed as well. The dict's other mutators
    would bypass the index, so they refuse.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self._names: list[str] = []

    def _added(self, name: str) -> None:
        bisect.insort(self._names, name)

    def _removed(self, name: str) -> None:
        del self._names[bisect.bisect_left(self._names, name)]

    def __setitem__(self, key: str, value: Any) -> None:
        self._set(_VersionedKeyStore.__setitem__, key, value)

    def setlist(self, key: Any, list_: Any) -> None:
        self._set(_VersionedKeyStore.setlist, key, list_)

    def pop(self, key: str) -> None:  # type: ignore[override]
        self._drop(_VersionedKeyStore.pop, key)

    def __delitem__(self, key: str) -> None:
        self._drop(_VersionedKeyStore.__delitem__, key)

    def _set(self, method: Callable[..., None], key: str, value: Any) -> None:
        with self._lock:
            new = not dict.__contains__(self, key)
            method(self, key, value)
            if new:
                self._added(key)

    def _drop(self, method: Callable[..., None], key: str) -> None:
        with self._lock:
            method(self, key)
            self._removed(key)

    def _unindexed(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "moto changed a bucket's keys in a way the emulator's listing index does not "
            "follow: add it to cosftp_prefork/emulator/listing.py")

    clear = popitem = setdefault = update = __ior__ = _unindexed  # type: ignore[assignment]

    def entries(self, prefix: str, delimiter: str, after: Optional[str],
                wanted: Optional[int]) -> list[Entry]:
        """Up to ``wanted`` (all if None) entries under ``prefix`` named after ``after``, in
        name order: the keys that are not delete markers, and each common prefix once (the
        name up to and with the first ``delimiter`` after ``prefix``, if "" is not it)."""
        with self._lock:
            names, found = self._names, []
            at = bisect.bisect_left(names, prefix)
            if after is not None:
                at = max(at, bisect.bisect_right(names, after))
            while at < len(names) and names[at].startswith(prefix) \
                    and (wanted is None or len(found) < wanted):
                name = names[at]
                cut = name.find(delimiter, len(prefix)) if delimiter else -1
                if cut >= 0:  # under a common prefix: it, once, then past all of it
                    folder = name[:cut + len(delimiter)]
                    if after is None or folder > after:
                        found.append(folder)
                    at = _skip_past(names, folder, at + 1)
                    continue
                key = self[name]
                if not isinstance(key, FakeDeleteMarker):
                    found.append(key)
                at += 1
            return found


def list_objects(backend: S3Backend, bucket: FakeBucket, prefix: Optional[str],
                 delimiter: Optional[str], marker: Optional[str],
                 max_keys: Optional[int]) -> tuple[list[FakeKey], list[str], bool, Optional[str]]:
    """``S3Backend.list_objects`` answered from the bucket's :class:`IndexedKeyStore`, paged
    as COS pages: max-keys counts keys and common prefixes together, NextMarker is the last
    of them on a truncated page."""
    store = bucket.keys
    if not isinstance(store, IndexedKeyStore) or isinstance(bucket, FakeTableStorageBucket) \
            or (max_keys is not None and max_keys < 0):
        return MOTO_LIST_OBJECTS(backend, bucket, prefix, delimiter, marker, max_keys)
    if max_keys == 0:
        return [], [], False, None
    after = (backend._pagination_tokens.get(marker) or marker) if marker else None
    found = store.entries(prefix or "", delimiter or "", after,
                          None if max_keys is None else max_keys + 1)
    truncated = max_keys is not None and len(found) > max_keys
    if truncated:
        found = found[:max_keys]
    keys = [entry for entry in found if not isinstance(entry, str)]
    folders = [entry for entry in found if isinstance(entry, str)]
    last = found[-1] if truncated else None
    return keys, folders, truncated, (last if isinstance(last, str) or last is None
                                      else last.name)


def install() -> None:
    """Give buckets created from now on an :class:`IndexedKeyStore` and answer their
    listings with :func:`list_objects`."""
    moto.s3.models._VersionedKeyStore = IndexedKeyStore
    S3Backend.list_objects = list_objects
