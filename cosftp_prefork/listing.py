"""Directory listings: one paginated, delimited listing per directory, no per-entry requests."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional

from .paths import RESERVED_NAME, child_name
from .storage import Bucket, ObjectInfo

log = logging.getLogger(__name__)
UNNAMEABLE = re.compile("[\x00\r\n]")


@dataclass(frozen=True)
class Entry:
    """One name in a directory listing. ``mtime`` is when COS stored the object;
    ``client_mtime`` the time MFMT set, which clients are shown instead."""

    name: str
    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    etag: str = ""
    client_mtime: Optional[float] = None

    @property
    def shown_mtime(self) -> float:
        """The modification time to show a client."""
        return self.client_mtime if self.client_mtime is not None else self.mtime


def list_directory(bucket: Bucket, prefix: str, limit: int) -> list[Entry]:
    """Return the entries directly under ``prefix`` (``""`` = bucket root), at most ``limit``.

    Sub-directories come from common prefixes; the directory's own marker object
    (``prefix`` itself) is not an entry. Raises ``StorageError``.
    """
    entries: dict[str, Entry] = {}
    marker = ""
    while len(entries) < limit:
        page = bucket.list_page(prefix, marker=marker)
        for obj in page.objects:
            name = child_name(prefix, obj.key)
            if name and not obj.key.endswith("/") and _nameable(prefix, name):
                entries.setdefault(name, Entry(name, False, obj.size, obj.mtime, obj.etag))
        for sub in page.prefixes:
            name = child_name(prefix, sub)
            if name and not (prefix == "" and name == RESERVED_NAME) and _nameable(prefix, name):
                # A directory wins over a same-named file only if no file was seen.
                entries.setdefault(name, Entry(name, True))
        if page.next_marker is None:
            break
        marker = page.next_marker
    if len(entries) > limit:
        log.warning("listing of %r truncated to max_list_file=%d entries", prefix or "/", limit)
    return list(entries.values())[:limit]


def _nameable(prefix: str, name: str) -> bool:
    """Whether an FTP command can name ``name``: not with NUL, CR or LF (another tool may
    have written such a key). Those are left out, or every line-based listing would break."""
    if UNNAMEABLE.search(name) is None:
        return True
    log.warning("listing of %r: leaving out %r, which no FTP command can name", prefix or "/",
                name)
    return False


def all_objects(bucket: Bucket, prefix: str) -> list[ObjectInfo]:
    """Every object under ``prefix`` at any depth (markers included), in key order."""
    found: list[ObjectInfo] = []
    marker = ""
    while True:
        page = bucket.list_page(prefix, marker=marker, delimiter="")
        found.extend(page.objects)
        if page.next_marker is None:
            return found
        marker = page.next_marker


def first_key_from(bucket: Bucket, key: str) -> Optional[ObjectInfo]:
    """Return the first object whose key starts with ``key`` (``key`` itself sorts first).

    One request tells a file (``key``), a directory (``key/...``) and nothing apart in the
    common cases, where HEAD then LIST would take two.
    """
    page = bucket.list_page(key, max_keys=1, delimiter="")
    return page.objects[0] if page.objects else None


def directory_exists(bucket: Bucket, prefix: str) -> bool:
    """Return True if any key (a marker or a file) lives under ``prefix``."""
    page = bucket.list_page(prefix, max_keys=1, delimiter="")
    return bool(page.objects)


def directory_is_empty(bucket: Bucket, prefix: str) -> bool:
    """Return True if nothing but the directory's own marker lives under ``prefix``."""
    page = bucket.list_page(prefix, max_keys=2, delimiter="")
    return all(obj.key == prefix for obj in page.objects)
