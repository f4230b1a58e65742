"""Following a COS listing (ListObjects, ListMultipartUploads, ListParts) page by page."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Callable, Optional, TypeVar

from .. import logcontext

Marker = TypeVar("Marker")
Page = TypeVar("Page")


def marker_after(truncated: object, given: Optional[Marker],
                 last: Optional[Marker]) -> Optional[Marker]:
    """The marker of the page after this one, None when this one is the last.

    ``truncated`` is the page's IsTruncated, ``given`` its Next*Marker, ``last`` the last
    key, prefix or number it holds: COS sends a Next*Marker only when truncated, and some
    implementations (moto) never do, so the last item stands in for it.
    """
    if str(truncated).lower() != "true":
        return None
    return given or last


def paginate(fetch: Callable[[Marker], Page], following: Callable[[Page], Optional[Marker]],
             start: Marker, ahead: bool = False) -> Iterator[Page]:
    """The pages ``fetch(marker)`` returns, from ``start`` on, each asked for with the
    marker ``following`` gives of the one before, until that is None.

    With ``ahead``, the first page is requested now, on a thread of its own (so that a
    caller can have two listings on their way at once: a directory's and its markers'),
    and each further one as soon as the one before it arrived, while the caller works on
    that one (two pages in memory at most); the thread is the listing's own, so no other
    session can hold it up. Without, each page is asked for when the caller wants it.
    """
    request = _in_thread if ahead else _when_wanted
    return _pages(request, fetch, following, request(fetch, start))


def _pages(request: Callable[[Callable[[Marker], Page], Marker], Callable[[], Page]],
           fetch: Callable[[Marker], Page], following: Callable[[Page], Optional[Marker]],
           pending: Callable[[], Page]) -> Iterator[Page]:
    while True:
        page = pending()
        marker = following(page)
        if marker is None:
            yield page
            return
        pending = request(fetch, marker)
        yield page


def _when_wanted(fetch: Callable[[Marker], Page], marker: Marker) -> Callable[[], Page]:
    return lambda: fetch(marker)  # asked for only once the caller wants the page


def _in_thread(fetch: Callable[[Marker], Page], marker: Marker) -> Callable[[], Page]:
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fetch(marker))
        except BaseException as exc:
            future.set_exception(exc)
    threading.Thread(target=logcontext.carried(run), name="cos-list-ahead", daemon=True).start()
    return future.result
