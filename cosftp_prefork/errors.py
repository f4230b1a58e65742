"""Exceptions shared by every layer.

Storage errors subclass ``OSError`` with a real errno so that pyftpdlib, which turns
``OSError`` into FTP replies, tells the client what actually happened (ENOENT -> "No such
file or directory", EACCES -> "Permission denied").
"""

from __future__ import annotations

import errno
from typing import Optional


class ConfigError(Exception):
    """The configuration file is unusable; the message names file, section and option."""

    def __init__(
        self,
        problem: str,
        path: Optional[str] = None,
        section: Optional[str] = None,
        option: Optional[str] = None,
    ) -> None:
        self.problem = problem
        self.path = path
        self.section = section
        self.option = option
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.path:
            where.append(str(self.path))
        if self.section:
            where.append(f"[{self.section}]")
        if self.option:
            where.append(self.option)
        prefix = " ".join(where)
        return f"{prefix}: {self.problem}" if prefix else self.problem


class StorageError(OSError):
    """A COS request failed.

    ``code`` is the COS error code (e.g. ``SlowDown``) or a short local reason, and
    ``request_id`` the ``x-cos-request-id`` to quote to Tencent Cloud support. ``unheard``:
    an earlier try of the same request went unanswered (a connection reset or cut in
    mid-answer), so COS may have carried out that one (a write refused now as the name
    is taken, ``AlreadyExists``, may have been refused by this very request's own object).
    """

    default_errno = errno.EIO

    def __init__(
        self,
        message: str,
        code: str = "",
        request_id: str = "",
        status: int = 0,
    ) -> None:
        super().__init__(self.default_errno, message)
        self.code = code
        self.request_id = request_id
        self.status = status
        self.unheard = False

    def __str__(self) -> str:
        details = [part for part in (self.code, self.request_id and f"request id {self.request_id}")
                   if part]
        suffix = f" ({', '.join(details)})" if details else ""
        return f"{self.strerror}{suffix}"


class NotFound(StorageError):
    """The object or directory does not exist."""

    default_errno = errno.ENOENT


class OutcomeUnknown(StorageError):
    """A write went unanswered and what COS holds could not be read back: the object may
    or may not be stored. Its message says both failures."""


class AlreadyExists(StorageError):
    """A write that may not replace an object found one (``x-cos-forbid-overwrite``: 409)."""

    default_errno = errno.EEXIST


class PermissionDenied(StorageError):
    """COS refused the credentials or the operation (AccessDenied, SignatureDoesNotMatch)."""

    default_errno = errno.EACCES


class FileTooLarge(StorageError):
    """An upload exceeded single_file_max_size or the COS part-count limit."""

    default_errno = errno.EFBIG


class StorageUnavailable(Exception):
    """A transient COS failure on the way out of the filesystem layer.

    Deliberately not an ``OSError``: pyftpdlib answers every ``OSError`` from a filesystem
    call with a permanent ``550``, while a COS outage deserves ``451`` (try again). ``cause``
    is the original :class:`StorageError`.
    """

    def __init__(self, cause: StorageError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class NotStorable(OSError):
    """A name the namespace's rules refuse to give a file (a directory has it, a file is in
    its path, its directory does not exist), found while the upload was under way: the
    data channel answers 550 with ``strerror`` and nothing stays stored."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)


class ParkOutdated(NotStorable):
    """A resumed upload whose name another session wrote since it was interrupted, found
    before it would complete: it never completes (that session's file stays) and its parked
    bytes are discarded. 550, as for ``NotStorable``, not 451: a retry of the resume can
    never succeed, and ``lftp put -c`` retries a 451 at once as it continues any upload
    (SIZE, REST at the end of the file it finds, STOR), which appends the rest of its file
    to the other session's."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ESTALE, message)


class Conflict(Exception):
    """Another session is changing the same files right now (a rename of an overlapping
    directory, a file replaced under a rename); the message is for the client, who may try
    again (450). Not an ``OSError``, for the reason given at ``StorageUnavailable``."""


class ResumeRefused(OSError):
    """REST + STOR at an offset where no stored part of the file ends, or REST + RETR past
    the end of the file."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ESPIPE, message)


class InvalidPath(OSError):
    """A client-supplied path cannot be mapped to a COS key (too long, NUL byte, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)


class QuotaExceeded(Exception):
    """An upload or rename would pass a home's ``quota_size`` or ``quota_files``: refused
    before its bytes (``552``, nothing stored), or stopped and undone once they pass it. Not
    an ``OSError``, for the reason given at ``StorageUnavailable``: the reply is ``552``,
    not pyftpdlib's ``550``."""
