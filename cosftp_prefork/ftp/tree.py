"""What every filesystem of a session shares: its context (``FsContext``), the refusals
it answers with (``Refusal``, ``Unstorable``), the session's own last upload (``OwnUpload``),
``transient_escapes``, and ``VirtualTree``, the base of ``ftp.fs.CosFS`` (one bucket or
prefix) and ``ftp.mounts.MountedFS`` (a home with virtual folders mounted in it)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable, Optional

from pyftpdlib.filesystems import AbstractedFS, FilesystemError

from ..config.model import AccountConfig, TransferConfig
from ..cos.aborts import AbortRetrier
from ..cos.bucket import Bucket, ObjectInfo
from ..cos.engine import Engine, Kept, OwnerExecutor
from ..cos.listing import (
    Entry,
)
from ..cos.quota import AccountQuota
from ..errors import (
    NotFound,
    PermissionDenied,
    StorageError,
    StorageUnavailable,
)
from .hooks import SessionHooks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FsContext:
    """What a session's filesystem needs from its worker."""

    account: AccountConfig
    bucket: Bucket
    transfer: TransferConfig
    engine: Engine
    max_list_file: int
    hooks: SessionHooks  # told of every change before its reply (events)
    retrier: Optional[AbortRetrier] = None
    quota: Optional[AccountQuota] = None  # the quotas this account's writes count against

    def copier(self) -> OwnerExecutor:
        """An executor for the copies of one job of this session, in its user's turns."""
        return self.engine.copier(account=self.account.user)


class Refusal(FilesystemError):
    """A request this filesystem refuses, with a message for the client.

    Not an ``OSError`` on purpose: pyftpdlib replies to an ``OSError`` with the errno's
    generic text ("Permission denied"), to a ``FilesystemError`` with its message ("Renaming
    a directory deletes its old name: needs delete permission").
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code
        self.strerror = message


@dataclass(frozen=True)
class OwnUpload:
    """What COS answered to this session's last STOR of ``path`` (and to its MFMT since):
    the one fact a session goes by from one command to the next (see the module doc), with
    the bytes of a single PUT where the worker keeps them (``cos.engine.KeptBodies``),
    which a rename right after it stores again under the new name
    (:meth:`ftp.renames.Renames._rename_by_put`)."""

    path: str
    info: ObjectInfo
    kept: Optional[Kept] = None


class Unstorable(Exception):
    """A name COS cannot store, found out only while a command runs (the keys a directory
    rename would make): the handler answers 553, as for names refused up front."""


def transient_escapes(method: Callable) -> Callable:
    """Let transient COS failures out as ``StorageUnavailable`` (451), not ``OSError`` (550).

    Missing objects and refused permissions stay ``OSError``: those are permanent answers.
    """
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (NotFound, PermissionDenied):
            raise
        except StorageError as exc:
            raise StorageUnavailable(exc) from exc
    return wrapper


class VirtualTree(AbstractedFS):
    """What every filesystem of a session shares: the FTP path is the "real" path, and
    what a path is comes from ``lookup`` and ``lookup_file``."""

    quota: Optional[AccountQuota] = None  # the quotas this session's home writes count in
    _announced: Optional[int] = None  # ALLO: the size of the next upload

    def lookup(self, path: str) -> Optional[Entry]:
        raise NotImplementedError

    def lookup_file(self, path: str) -> Optional[Entry]:
        raise NotImplementedError

    def announce(self, size: int) -> None:
        """ALLO: the next upload of this session is ``size`` bytes (its part sizes follow);
        raises ``QuotaExceeded`` if the quota of the working directory's home or folder has
        no room for them now (the STOR reserves them, in the quotas of wherever it goes)."""
        if self.quota is not None:
            self.quota.check_room(size)
        self._announced = size

    def quotas(self) -> list[AccountQuota]:
        """What ``SITE QUOTA`` shows: the quotas of the home, then of each virtual folder."""
        return [] if self.quota is None else [self.quota]

    @property
    def announced(self) -> Optional[int]:
        """The size ALLO announced for the next upload, if any."""
        return self._announced

    def place_of(self, path: str) -> tuple[AccountConfig, str]:
        """Where ``path`` is: the account as it is there (a virtual folder's bucket and
        prefix) and the path as that place names it."""
        raise NotImplementedError

    def path_of(self, transfer) -> str:
        """The FTP path of a file this tree opened (its ``name`` is its place's)."""
        raise NotImplementedError

    def ftp2fs(self, ftppath: str) -> str:
        return self.ftpnorm(ftppath)

    def fs2ftp(self, fspath: str) -> str:
        return fspath

    def validpath(self, path: str) -> bool:
        return path.startswith("/")

    def realpath(self, path: str) -> str:
        return path

    def isfile(self, path: str) -> bool:
        entry = self.lookup_file(path)
        return entry is not None and not entry.is_dir

    def isdir(self, path: str) -> bool:
        entry = self.lookup(path)
        return entry is not None and entry.is_dir

    def islink(self, path: str) -> bool:
        return False

    def lexists(self, path: str) -> bool:
        return self.lookup(path) is not None
