"""Objects as COS keeps them, over moto's: their CRC64 computed once per version, writes
of one object one at a time, and object buffers that live as long as a reader needs them."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Callable, Optional

import moto.s3.models

from ..cos.checksum import crc64
from . import fast


class ObjectCrcs:
    """The CRC64 of each object version, by place (host, path) and ETag: computed from the
    bytes once, like COS keeps it with the object. Bounded: the oldest places go first."""

    LIMIT = 65_536

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: OrderedDict[tuple[str, str], tuple[str, int]] = OrderedDict()

    def get(self, place: tuple[str, str], etag: str,
            compute: Callable[[], Optional[int]]) -> Optional[int]:
        """The CRC64 of ``place`` while its ETag is ``etag``; ``compute()`` if not known."""
        with self._lock:
            known = self._known.get(place)
        if known is not None and known[0] == etag:
            return known[1]
        value = compute()
        with self._lock:
            self._known[place] = (etag, value)
            self._known.move_to_end(place)
            while len(self._known) > self.LIMIT:
                self._known.popitem(last=False)
        return value


class KeyLocks:
    """One lock per object (striped): a write with a condition on the object (PUT with
    ``x-cos-forbid-overwrite``) is checked and done as one step against every other write
    of that object, as COS does."""

    STRIPES = 64

    def __init__(self) -> None:
        self._locks = [threading.Lock() for _ in range(self.STRIPES)]

    @contextlib.contextmanager
    def holding(self, environ: dict) -> Iterator[None]:
        where = fast.place(environ)
        if environ["REQUEST_METHOD"] not in ("PUT", "POST", "DELETE") or not where.is_object:
            yield
            return
        with self._locks[hash(where) % self.STRIPES]:
            yield


_served = threading.local()  # .key: the object moto made or found for this thread's request


def _remembering(method: Callable) -> Callable:
    """Wrap a moto backend method that returns an object: keep it in ``_served``."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        found = method(*args, **kwargs)
        _served.key = found
        return found
    wrapper.remembers = True  # type: ignore[attr-defined]
    return wrapper


def forget_served() -> None:
    """Forget the object this thread's previous request made or found, before moto serves
    the next one (which may find none)."""
    _served.key = None


def served_crc() -> Optional[int]:
    """The CRC64 of the object this thread's request made or found (see ``_remembering``);
    None if it found none (a path-style HEAD of the bucket itself)."""
    key, _served.key = _served.key, None
    return None if key is None else crc64(key.value)


def install_object_lifetimes() -> None:
    """Objects live as long as something reads them, as in COS.

    moto closes an object's buffer as soon as another object replaces it or it is deleted,
    so a GET or a part copy reading it at that moment fails with 500; here the buffer is
    closed once nothing refers to the object any more. Parts are still freed when their
    upload completes or is aborted. The object a CompleteMultipartUpload made and the one a
    HEAD found are remembered, so that the CRC64 reported is theirs.
    """
    models = moto.s3.models
    if getattr(models.S3Backend.head_object, "remembers", False):
        return
    close = models.FakeKey.dispose

    def dispose(key: Any, garbage: bool = False) -> None:
        if garbage:  # from __del__: nothing refers to it any more
            close(key)

    def dispose_parts(multipart: Any) -> None:
        for part in multipart.parts.values():
            close(part)

    models.FakeKey.dispose = dispose
    models.FakeMultipart.dispose = dispose_parts
    models.S3Backend.complete_multipart_upload = _remembering(
        models.S3Backend.complete_multipart_upload)
    models.S3Backend.head_object = _remembering(models.S3Backend.head_object)
