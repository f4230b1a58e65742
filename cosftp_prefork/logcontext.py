"""The FTP session a log line belongs to, carried by a context variable instead of a string
handed down through every call.

The FTP handler binds its session (``session=… user=… ip=…``) in the thread that runs the
session; work it hands to pool threads carries it along (:func:`carried`). The
:class:`SessionFilter` of every log handler stamps each record with it, so a call site in
any layer just logs what it knows (``log.info("path=%s: stored", path)``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Iterator
from typing import Any, Callable

from .logfiles import escape_controls

# Anything whose str() names the session: the handler binds itself, so a line written after
# USER or PASS names the user it has by then.
_session: contextvars.ContextVar[object] = contextvars.ContextVar("cosftp_session",
                                                                  default=None)


def bind(session: object) -> None:
    """Make ``session`` the one the lines of this thread (and of the work it hands on)
    belong to, for good: call it in a thread that serves only ``session``."""
    _session.set(session)


@contextlib.contextmanager
def bound(session: object) -> Iterator[None]:
    """Bind ``session`` for the ``with`` block only (in a thread shared by sessions)."""
    token = _session.set(session)
    try:
        yield
    finally:
        _session.reset(token)


def current() -> str:
    """``session=… user=… ip=…`` of the bound session, or ``""`` outside any session."""
    session = _session.get()
    return "" if session is None else str(session)


def carried(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` wrapped to run, on whatever thread calls it, in the session bound here."""
    return functools.partial(contextvars.copy_context().run, fn)


class SessionFilter(logging.Filter):
    """Stamp each record with ``session`` (`` session=… user=… ip=…``, escaped: the user
    name is what the client sent; empty outside a session), once: a record that another
    handler's filter stamped already keeps its stamp (both run in the thread that logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "session" not in record.__dict__:
            context = current()
            record.session = " " + escape_controls(context) if context else ""
        return True
