"""Directory listings: one paginated, delimited listing per directory, no per-entry requests."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional

from ..paths import RESERVED_NAME, child_name
from .bucket import Bucket, StartedPage
from .objects import ListPage, ObjectInfo
from .pagination import paginate

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


def iter_directory(prefix: str, listed: Iterator[ListPage], limit: int,
                   wanted: Callable[[str], bool] = lambda _name: True) -> Iterator[Entry]:
    """Yield the entries directly under ``prefix`` (``""`` = bucket root) from the pages
    of its listing (:func:`pages`) whose names are ``wanted``, at most ``limit``, in key
    order, each page as soon as COS answers it.

    Sub-directories come from common prefixes; the directory's own marker object
    (``prefix`` itself) is not an entry. A directory is left out where a file has its name.
    Memory stays flat in the size of the directory. Raises ``StorageError``.
    """
    files: set[str] = set()  # names of files whose "name/" may still come
    held: list[tuple[str, Entry]] = []  # see _in_order
    last, count = "", 0
    for page in listed:
        ready, held = _in_order(page, _page_entries(prefix, page) + held)
        for key, entry in ready:
            if key <= last or (entry.is_dir and entry.name in files):
                continue  # a repeat, or a directory where a file has its name
            if not entry.is_dir:
                files.add(entry.name)
            last = key
            if not wanted(entry.name):
                continue
            if count == limit:
                log.warning("listing of %r truncated to max_list_file=%d entries",
                            prefix or "/", limit)
                return
            count += 1
            yield entry
        # Once the listing has passed "name/", no directory of that name can come.
        files = {name for name in files if prefix + name + "/" > last}


def pages(bucket: Bucket, prefix: str) -> Iterator[ListPage]:
    """The pages of the delimited listing of ``prefix``, each requested as soon as the one
    before it arrived, while the caller works on that one (two pages in memory at most)."""
    return paginate(lambda marker: bucket.list_page(prefix, marker=marker),
                    _next_marker, "", ahead=True)


def _next_marker(page: ListPage) -> Optional[str]:
    return page.next_marker


def _in_order(page: ListPage, found: list[tuple[str, Entry]]
              ) -> tuple[list[tuple[str, Entry]], list[tuple[str, Entry]]]:
    """Split ``found`` (this page's entries and those held from earlier pages) into those
    that can go out now, in key order, and the directories to hold for the next page.

    COS returns the common prefixes within a page's range of keys; moto returns every
    common prefix on every page. A prefix past the last file of a truncated page is held
    until the listing reaches it, and a repeat is then dropped.
    """
    found.sort(key=lambda item: item[0])
    if page.next_marker is None or not page.objects:
        return found, []
    end = max(obj.key for obj in page.objects)
    return ([item for item in found if item[0] <= end],
            [item for item in found if item[0] > end])


def _page_entries(prefix: str, page: ListPage) -> list[tuple[str, Entry]]:
    """The nameable entries of one page, files and directories. ``.cosftp`` is left out at
    any depth: the server's data of this account, or of another rooted in a directory here
    (``paths.RESERVED_NAME``)."""
    found = [(obj.key, Entry(child_name(prefix, obj.key), False, obj.size, obj.mtime,
                             obj.etag)) for obj in page.objects if not obj.key.endswith("/")]
    found += [(sub, Entry(child_name(prefix, sub), True)) for sub in page.prefixes]
    return [item for item in found if item[1].name not in ("", RESERVED_NAME) and
            _nameable(prefix, item[1].name)]


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
    listed = paginate(lambda marker: bucket.list_page(prefix, marker=marker, delimiter=""),
                      _next_marker, "")
    return [obj for page in listed for obj in page.objects]


def first_key_from(bucket: Bucket, key: str) -> Optional[ObjectInfo]:
    """Return the first object whose key starts with ``key`` (``key`` itself sorts first).

    One request tells a file (``key``), a directory (``key/...``) and nothing apart in the
    common cases, where HEAD then LIST would take two.
    """
    page = bucket.list_page(key, max_keys=1, delimiter="")
    return page.objects[0] if page.objects else None


FILE = "file"
DIRECTORY = "directory"


def start_name_kind(bucket: Bucket, key: str) -> StartedPage:
    """The first request of :func:`name_kind`, sent now; its page is read later."""
    return bucket.start_list_page(key, max_keys=2, delimiter="")


def name_kind(bucket: Bucket, key: str, ignore: str = "",
              started: Optional[StartedPage] = None) -> Optional[str]:
    """What ``key`` names now: ``FILE`` (the object ``key``, which wins over keys under it, as
    in listings), ``DIRECTORY`` (keys under ``key/``) or None; the object ``ignore`` (an
    upload's own, which may be stored already) counts for nothing. One LIST in the common
    cases (``started`` by :func:`start_name_kind`, if given); a second when siblings such
    as ``key-2`` (which sort before ``key/``) fill the first."""
    page = (started or start_name_kind(bucket, key)).result()
    found = [obj.key for obj in page.objects if obj.key != ignore]
    prefix = key + "/"
    if key in found:
        return FILE
    if any(found_key.startswith(prefix) for found_key in found):
        return DIRECTORY
    last = page.objects[-1].key if page.objects else ""
    if page.next_marker is None or not (last < prefix or last.startswith(prefix)):
        return None  # the listing is complete, or went past every key under key/
    return DIRECTORY if directory_exists(bucket, prefix, ignore) else None


def start_directory_exists(bucket: Bucket, prefix: str, ignore: str = "") -> StartedPage:
    """The request of :func:`directory_exists`, sent now; its page is read later."""
    return bucket.start_list_page(prefix, max_keys=2 if ignore else 1, delimiter="")


def directory_exists(bucket: Bucket, prefix: str, ignore: str = "",
                     started: Optional[StartedPage] = None) -> bool:
    """Return True if any key (a marker or a file) but ``ignore`` lives under ``prefix``
    (the listing ``started`` by :func:`start_directory_exists`, if given)."""
    page = (started or start_directory_exists(bucket, prefix, ignore)).result()
    return any(obj.key != ignore for obj in page.objects)


def start_marker_check(bucket: Bucket, prefix: str) -> StartedPage:
    """The request of :func:`lacks_marker`, sent now; its page is read later."""
    return bucket.start_list_page(prefix, max_keys=1, delimiter="")


def lacks_marker(bucket: Bucket, prefix: str, started: Optional[StartedPage] = None) -> bool:
    """Return True if the directory ``prefix`` exists (a key lives under it) without a
    marker of its own (the object ``prefix``); False if it has one, or if nothing is under
    it any more. One LIST of one key (``started`` by :func:`start_marker_check`, if given):
    a directory's marker sorts before every other key under it."""
    page = (started or start_marker_check(bucket, prefix)).result()
    return bool(page.objects) and page.objects[0].key != prefix


def directory_is_empty(bucket: Bucket, prefix: str) -> bool:
    """Return True if nothing but the directory's own marker lives under ``prefix``."""
    page = bucket.list_page(prefix, max_keys=2, delimiter="")
    return all(obj.key == prefix for obj in page.objects)
