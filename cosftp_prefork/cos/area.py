"""The keys of one bucket under one prefix, seen as a bucket of their own.

An account with ``cos_prefix = tenants/alice/`` works on an :class:`Area`: every key the layers
above name (``a.txt``, ``.cosftp/parked/...``) is ``tenants/alice/`` + that key in COS, and
every key COS answers is given back without the prefix. Nothing else in the server knows of
the prefix, so nothing else can reach past it: a path outside the home cannot even be spelled,
since every key this sends COS starts with the prefix. The server's own bookkeeping
(``.cosftp/``: parked uploads, MFMT markers) is the area's too, so two accounts rooted at two
prefixes of one bucket never see each other's, whatever their user names.

The error messages COS calls make name their keys (``COS HEAD tenants/alice/a.txt failed``):
an area rewrites the prefix in them as ``/``, so a reply quoting one tells the client only
the path it knows (``COS HEAD /a.txt failed``). A key that the prefix makes longer than COS
allows cannot exist: looking it up finds nothing (as for a key that is not there), writing it
fails as COS would (``KeyTooLong``).

This is where an account's tree meets the buckets: a mount table (virtual folders: other
prefixes, other buckets, other credentials at paths of the tree) would hand out one area per
mount, each made by the registry (``cos.registry``) in the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import typing
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional, TypeVar

from ..errors import NotFound, StorageError
from ..paths import key_bytes
from .bodies import ObjectStream
from .bucket import LIST_PAGE_MAX, Bucket, ForeignObject, StartedPage
from .calls import Started
from .objects import (
    Completed,
    ListPage,
    NewUpload,
    ObjectInfo,
    PartInfo,
    UploadedPart,
    UploadInfo,
)

T = TypeVar("T")


class Area(Bucket):
    """The keys of ``bucket`` under ``prefix`` (``a/b/``: not empty, ends with ``/``).

    A :class:`Bucket` for the layers above, and one to them in every respect, but it holds no
    client of its own: a ``Bucket`` method it does not translate fails (``AttributeError``)
    rather than reach keys outside the prefix. Safe to use from several threads at once.
    """

    def __init__(self, bucket: Bucket, prefix: str) -> None:
        # Not Bucket.__init__: no client, see the class's docstring.
        self._bucket = bucket
        self.prefix = prefix
        self.name, self.region, self.endpoint = bucket.name, bucket.region, bucket.endpoint
        self.key_room = bucket.key_room - key_bytes(prefix)
        # The prefix where a message names a key: at its start, after a space or a quote.
        self._named = re.compile(r"(?<![^\s'\"])" + re.escape(prefix))

    def __repr__(self) -> str:
        return f"Area({self.name}, {self.prefix!r})"

    # --- keys in and out

    def _full(self, key: str) -> str:
        return self.prefix + key

    def _fits(self, key: str) -> bool:
        return key_bytes(key) <= self.key_room

    def _own(self, key: str) -> str:
        return key[len(self.prefix):]

    def _ours(self, key: str) -> bool:
        return key.startswith(self.prefix)

    def _writable(self, key: str) -> str:
        """The full key of ``key`` to write; ``StorageError`` (``KeyTooLong``, as COS
        answers) if the prefix makes it too long."""
        if not self._fits(key):
            raise StorageError(f"COS refuses /{key}: too long under this account's prefix",
                               code="KeyTooLong", status=400)
        return self._full(key)

    def _readable(self, key: str) -> str:
        """The full key of ``key`` to read; ``NotFound`` if it is too long to exist."""
        if not self._fits(key):
            raise NotFound(f"COS has no /{key}", code="NoSuchKey", status=404)
        return self._full(key)

    def _info(self, info: ObjectInfo) -> ObjectInfo:
        return dataclasses.replace(info, key=self._own(info.key))

    def _source(self, source: ObjectInfo) -> ObjectInfo:
        """A source named by the layers above, as the bucket names it (one of another
        home is named whole already)."""
        if isinstance(source, ForeignObject):
            return source
        return dataclasses.replace(source, key=self._full(source.key))

    def located(self, key: str) -> tuple[Bucket, str]:
        return self._bucket.located(self._readable(key))

    @contextlib.contextmanager
    def _shown(self) -> Iterator[None]:
        """Errors with the prefix in their message written as ``/`` (see the module doc);
        the original stays the cause, for the log's traceback."""
        try:
            yield
        except StorageError as exc:
            text = self._named.sub("/", exc.strerror or "")
            raise type(exc)(text, code=exc.code, request_id=exc.request_id,
                            status=exc.status) from exc

    # --- the bucket's operations

    def head(self, key: str) -> ObjectInfo:
        with self._shown():
            return self._info(self._bucket.head(self._readable(key)))

    def head_bucket(self) -> None:
        with self._shown():
            self._bucket.head_bucket()

    def listed_region(self) -> Optional[str]:
        with self._shown():
            return self._bucket.listed_region()

    def versioning(self) -> str:
        with self._shown():
            return self._bucket.versioning()

    def list_page(self, prefix: str, marker: str = "", max_keys: int = LIST_PAGE_MAX,
                  delimiter: str = "/") -> ListPage:
        """The page of :meth:`Bucket.list_page`, keys without the prefix. Markers are COS's,
        passed through unread (the layers above only hand them back): the home's own marker
        object, the prefix itself, may end a page."""
        if not self._fits(prefix):
            return ListPage((), (), None)
        with self._shown():
            page = self._bucket.list_page(self._full(prefix), marker, max_keys, delimiter)
        return self._own_page(page)

    def start_list_page(self, prefix: str, max_keys: int, delimiter: str = "/") -> StartedPage:
        """:meth:`Bucket.start_list_page` under the prefix; its page as :meth:`list_page`'s."""
        if not self._fits(prefix):
            return _InArea(self, None, self._own_page, ListPage((), (), None))
        return _InArea(self, self._bucket.start_list_page(self._full(prefix), max_keys,
                                                          delimiter), self._own_page)

    def _own_page(self, page: ListPage) -> ListPage:
        """A bucket's page as the area shows it: its own keys, without the prefix."""
        return ListPage(tuple(self._info(obj) for obj in page.objects if self._ours(obj.key)),
                        tuple(self._own(sub) for sub in page.prefixes if self._ours(sub)),
                        page.next_marker)

    def open_read(self, key: str, offset: int = 0, etag: str = "") -> ObjectStream:
        with self._shown():
            return self._bucket.open_read(self._readable(key), offset, etag)

    def read_small(self, key: str, size: int) -> bytes:
        with self._shown():
            return self._bucket.read_small(self._readable(key), size)

    def put(self, key: str, data: bytes, like: Optional[ObjectInfo] = None,
            if_absent: bool = False) -> Completed:
        with self._shown():
            return self._bucket.put(self._writable(key), data, like, if_absent)

    def start_put(self, key: str, data: bytes) -> Started[Completed]:
        with self._shown():
            return _InArea(self, self._bucket.start_put(self._writable(key), data),
                           lambda completed: completed)

    def create_multipart(self, key: str, like: Optional[ObjectInfo] = None,
                         client_mtime: Optional[float] = None) -> NewUpload:
        with self._shown():
            return self._bucket.create_multipart(self._writable(key), like, client_mtime)

    def upload_part(self, key: str, upload_id: str, number: int,
                    chunks: Sequence[bytes]) -> UploadedPart:
        with self._shown():
            return self._bucket.upload_part(self._full(key), upload_id, number, chunks)

    def upload_part_copy(self, key: str, upload_id: str, number: int, source: ObjectInfo,
                         first: int, last: int) -> str:
        with self._shown():
            return self._bucket.upload_part_copy(self._full(key), upload_id, number,
                                                 self._source(source), first, last)

    def complete_multipart(self, key: str, upload_id: str,
                           etags: list[tuple[int, str]]) -> Completed:
        with self._shown():
            return self._bucket.complete_multipart(self._full(key), upload_id, etags)

    def list_uploads(self, prefix: str = "") -> list[UploadInfo]:
        with self._shown():
            uploads = self._bucket.list_uploads(self._full(prefix))
        return [dataclasses.replace(upload, key=self._own(upload.key)) for upload in uploads
                if self._ours(upload.key)]

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        with self._shown():
            return self._bucket.list_parts(self._full(key), upload_id)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with self._shown():
            self._bucket.abort_multipart(self._full(key), upload_id)

    def copy(self, source: ObjectInfo, dst_key: str, client_mtime: Optional[float] = None,
             pinned: bool = False) -> str:
        with self._shown():
            return self._bucket.copy(self._source(source), self._writable(dst_key),
                                     client_mtime, pinned)

    def delete_many(self, keys: list[str]) -> None:
        with self._shown():
            self._bucket.delete_many([self._full(key) for key in keys])

    def delete(self, key: str, version_id: str = "") -> None:
        with self._shown():
            self._bucket.delete(self._full(key), version_id)


class _InArea(Started[T]):
    """A request of an area's bucket started by :meth:`Area.start_list_page` or
    :meth:`Area.start_put`, read as the area reads its answers: errors with the prefix
    written as ``/``, the result as ``shown`` gives it (``started`` None: nothing to ask,
    ``empty`` is the result)."""

    def __init__(self, area: Area, started: Optional[Started], shown: Callable[[Any], T],
                 empty: Optional[T] = None) -> None:
        # Not Started.__init__: the bucket's request does the work.
        self._area, self._started, self._shown, self._empty = area, started, shown, empty

    def arrived(self) -> bool:
        return self._started is None or self._started.arrived()

    def result(self) -> T:
        if self._started is None:
            return typing.cast(T, self._empty)
        with self._area._shown():
            return self._shown(self._started.result())

    def drop(self) -> None:
        if self._started is not None:
            self._started.drop()
