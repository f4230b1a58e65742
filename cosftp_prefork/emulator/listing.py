"""ListObjects from a sorted index of each bucket's key names: no scan of the bucket.

Why this exists (fidelity): moto 5's ``S3Backend.list_objects`` copies the bucket's whole key
dict, tests every key and sorts what matches on every request, so even ``prefix=K
max-keys=1`` costs O(keys in the bucket): 50 ms at 100,000 keys, 0.3 s when they all match
the prefix (measured: docs/performance.md). COS answers a prefix listing from an
index, at a cost that does not grow with the bucket. The bench measures the gateway, which
looks keys up by listing, against this emulator, while its baselines never list: with moto's
scan the rows partly measured moto.

:func:`install` makes new buckets keep their names sorted (:class:`IndexedKeyStore`, which
follows every change moto makes to a bucket's keys) and replaces ``list_objects`` with
:func:`list_objects`: O(log n) per key and common prefix it answers. The answer is moto's,
quirks included: common prefixes are neither paged by the marker nor counted against
max-keys, NextMarker is a token moto resolves, keys whose latest version is a delete marker
are not listed but still make their common prefix. ``list_objects_v2`` asks
``list_objects`` for every key under its prefix, so its cost now grows with the prefix, not
the bucket. Multi-character delimiters and negative max-keys are left to moto's method.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from typing import Any, Callable, Optional

import moto.s3.models
from moto.s3.models import FakeBucket, FakeDeleteMarker, FakeKey, FakeTableStorageBucket, S3Backend
from moto.s3.utils import _VersionedKeyStore

MOTO_LIST_OBJECTS = S3Backend.list_objects


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


class _Folders:
    """Every ``name[:i + 1]`` where ``name[i]`` is the delimiter, over all names, sorted and
    counted, so the common prefixes under a prefix are found without visiting its keys."""

    def __init__(self, delimiter: str, names: list[str]) -> None:
        self.delimiter = delimiter
        self._counts: Counter[str] = Counter()
        self.sorted: list[str] = []
        for name in names:
            self.add(name)

    def _of(self, name: str) -> list[str]:
        cut, found = name.find(self.delimiter), []
        while cut >= 0:
            found.append(name[:cut + 1])
            cut = name.find(self.delimiter, cut + 1)
        return found

    def add(self, name: str) -> None:
        for folder in self._of(name):
            self._counts[folder] += 1
            if self._counts[folder] == 1:
                bisect.insort(self.sorted, folder)

    def remove(self, name: str) -> None:
        for folder in self._of(name):
            self._counts[folder] -= 1
            if not self._counts[folder]:
                del self._counts[folder]
                del self.sorted[bisect.bisect_left(self.sorted, folder)]

    def under(self, prefix: str) -> list[str]:
        """The common prefixes moto gives for ``prefix``: ``prefix``, then up to and with
        the first delimiter after it."""
        found, at = [], bisect.bisect_left(self.sorted, prefix)
        while at < len(self.sorted) and self.sorted[at].startswith(prefix):
            folder = self.sorted[at]
            if len(folder) == len(prefix):  # ends at the prefix: not below it
                at += 1
                continue
            found.append(folder)  # the shortest first: deeper ones start with it
            at = _skip_past(self.sorted, folder, at + 1)
        return found


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
        self._folders: dict[str, _Folders] = {}

    def _added(self, name: str) -> None:
        bisect.insort(self._names, name)
        for folders in self._folders.values():
            folders.add(name)

    def _removed(self, name: str) -> None:
        del self._names[bisect.bisect_left(self._names, name)]
        for folders in self._folders.values():
            folders.remove(name)

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

    def listing(self, prefix: str, delimiter: str, after: Optional[str],
                wanted: Optional[int]) -> tuple[list[FakeKey], list[str]]:
        """Up to ``wanted`` (all if None) keys under ``prefix`` named after ``after`` and
        not under a common prefix, without delete markers; and every common prefix under
        ``prefix`` (``delimiter`` is "" or one character)."""
        with self._lock:
            folders = self._folders_of(delimiter).under(prefix) if delimiter else []
            return self._keys(prefix, delimiter, after, wanted), folders

    def _folders_of(self, delimiter: str) -> _Folders:
        if delimiter not in self._folders:
            self._folders[delimiter] = _Folders(delimiter, self._names)
        return self._folders[delimiter]

    def _keys(self, prefix: str, delimiter: str, after: Optional[str],
              wanted: Optional[int]) -> list[FakeKey]:
        names, found = self._names, []
        at = bisect.bisect_left(names, prefix)
        if after is not None:
            at = max(at, bisect.bisect_right(names, after))
        while at < len(names) and names[at].startswith(prefix) \
                and (wanted is None or len(found) < wanted):
            name = names[at]
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:  # under a common prefix: skip all of it
                at = _skip_past(names, name[:cut + 1], at + 1)
                continue
            key = self[name]
            if not isinstance(key, FakeDeleteMarker):
                found.append(key)
            at += 1
        return found


def list_objects(backend: S3Backend, bucket: FakeBucket, prefix: Optional[str],
                 delimiter: Optional[str], marker: Optional[str],
                 max_keys: Optional[int]) -> tuple[list[FakeKey], list[str], bool, Optional[str]]:
    """``S3Backend.list_objects`` answered from the bucket's :class:`IndexedKeyStore`."""
    store = bucket.keys
    if not isinstance(store, IndexedKeyStore) or isinstance(bucket, FakeTableStorageBucket) \
            or len(delimiter or "") > 1 or (max_keys is not None and max_keys < 0):
        return MOTO_LIST_OBJECTS(backend, bucket, prefix, delimiter, marker, max_keys)
    after = (backend._pagination_tokens.get(marker) or marker) if marker else None
    wanted = None if max_keys is None else max_keys + 1
    keys, folders = store.listing(prefix or "", delimiter or "", after, wanted)
    if max_keys is None:
        return keys, folders, False, None
    keys, truncated, next_marker = backend._truncate_result(keys, max_keys)
    return keys, folders, truncated, next_marker


def install() -> None:
    """Give buckets created from now on an :class:`IndexedKeyStore` and answer their
    listings with :func:`list_objects`."""
    moto.s3.models._VersionedKeyStore = IndexedKeyStore
    S3Backend.list_objects = list_objects
