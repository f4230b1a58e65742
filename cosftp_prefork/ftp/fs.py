"""pyftpdlib ``AbstractedFS`` over one COS bucket.

FTP paths are virtual: ``/`` is the bucket root (or, for an account with a ``cos_prefix``, the
root of the ``cos.area.Area`` it works on) and the "real" path pyftpdlib hands back to us is the
normalised FTP path itself, so ``ftpnorm`` (which resolves ``..`` against ``/``) is the jail.
Every method raises ``Refusal`` (a pyftpdlib ``FilesystemError`` with a message for the client)
or ``OSError`` (storage errors, with the COS code and request id), which pyftpdlib turns into
550 replies.

Nothing COS said is kept from one command to the next: another session, another worker or
another tool may have changed the bucket since, and COS itself is strongly consistent. What
one command learned (a look-up, or the listing that LIST and MLSD then format entry by entry)
serves that command only; :meth:`CosFS.begin_command` forgets it. The one exception is what
COS answered to this session's own last STOR (key, size, ETag): MFMT right after it copies
exactly that version (the copy is pinned to its ETag) without asking COS first. The next
upload the session starts, its next MFMT, and its DELE or RNFR/RNTO of that path forget it.

Names behave as on a disk: a file cannot be created where a directory is or under a file,
MKD needs its parent, and a directory that exists only through its files gets a marker when
DELE, RNFR or RMD takes its last entry away. STOR into a missing directory is accepted (the
old server did, and devices depend on it) unless the account sets ``require_existing_dir``.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import hashlib
import itertools
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Callable, Optional, TypeVar

from pyftpdlib.filesystems import AbstractedFS, FilesystemError

from ..config.model import AccountConfig, TransferConfig
from ..cos.bucket import Bucket, ForeignObject, ObjectInfo
from ..cos.copies import Moved, copy_object, delete_keys, rename_directory
from ..cos.digests import digest
from ..cos.downloads import RangedReader, open_download
from ..cos.engine import Engine, Kept
from ..cos.intents import announced
from ..cos.listing import (
    DIRECTORY,
    FILE,
    Entry,
    directory_exists,
    directory_is_empty,
    first_key_from,
    iter_directory,
    name_kind,
    pages,
)
from ..cos.mtimes import (
    ListedMtimes,
    carry_markers,
    copy_beside_marker,
    marker_key,
    markers_of,
    set_client_mtime,
)
from ..cos.naming import may_speculate, rename_checks, start_checks
from ..cos.quota import AccountQuota
from ..cos.resume import ResumeStore
from ..cos.uploads import AbortRetrier, SessionUploads, UploadSession
from ..errors import (
    AlreadyExists,
    InvalidPath,
    NotFound,
    NotStorable,
    PermissionDenied,
    QuotaExceeded,
    StorageError,
    StorageUnavailable,
)
from ..paths import (
    RESERVED_NAME,
    dir_prefix,
    fits_as_directory,
    object_key,
    parent_dir,
)
from .background import ONE_NAME, AfterReply
from .hooks import SessionHooks

log = logging.getLogger(__name__)
T = TypeVar("T")

_DIR_MODE = stat.S_IFDIR | 0o755
_FILE_MODE = stat.S_IFREG | 0o644
_MLSX_PERMS = "adeflmrw"  # pyftpdlib's permission letters that mean the same in RFC 3659


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


class StreamedListing:
    """The names of one directory, fetched from COS while the data connection sends them
    (pyftpdlib iterates them lazily). Each name's entry is in ``scope`` while that name is
    formatted, and only then: memory stays flat in the size of the directory."""

    def __init__(self, path: str, entries: Iterator[Entry], mtimes: ListedMtimes,
                 scope: dict[str, Optional[Entry]]) -> None:
        self._path = path
        self._entries = entries
        self._mtimes = mtimes
        self.scope = scope

    def sort(self) -> None:
        """Already sorted: COS lists in key order (pyftpdlib sorts LIST's names)."""

    def __iter__(self) -> Iterator[str]:
        previous = None
        for entry in self._entries:
            self.scope.pop(previous, None)
            previous = os.path.join(self._path, entry.name)
            self.scope[previous] = self._mtimes.apply(entry)
            yield entry.name


def _plain_octal_mode(line: bytes) -> bytes:
    """An MLSx line with ``unix.mode=0o644`` written ``unix.mode=0644`` (facts come before
    the first space, the name after it)."""
    found, space, name = line.partition(b" ")
    return found.replace(b"unix.mode=0o", b"unix.mode=0") + space + name


def _inode(path: str) -> int:
    """A stable number per path: MLSD's ``unique`` fact is built from it."""
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogateescape"),
                                          digest_size=8).digest(), "big")


def _file_entry(path: str, info: ObjectInfo) -> Entry:
    """The entry of the file ``path`` as COS described it in ``info``."""
    return Entry(os.path.basename(path), False, info.size, info.mtime, info.etag,
                 info.client_mtime)


@dataclass(frozen=True)
class OwnUpload:
    """What COS answered to this session's last STOR of ``path`` (and to its MFMT since):
    the one fact a session goes by from one command to the next (see the module doc), with
    the bytes of a single PUT where the worker keeps them (``cos.engine.KeptBodies``),
    which a rename right after it stores again under the new name
    (:meth:`CosFS._rename_by_put`)."""

    path: str
    info: ObjectInfo
    kept: Optional[Kept] = None


class Unstorable(Exception):
    """A name COS cannot store, found out only while a command runs (the keys a directory
    rename would make): the handler answers 553, as for names refused up front."""


def _transient_escapes(method: Callable) -> Callable:
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


class CosFS(VirtualTree):
    """The FTP view of one bucket for one logged-in session."""

    def __init__(self, root: str, cmd_channel, context: Optional[FsContext] = None) -> None:
        super().__init__("/", cmd_channel)
        # A virtual folder's (ftp.mounts) is given; the session's home asks the session.
        self._ctx: FsContext = context or cmd_channel.fs_context()
        self._bucket = self._ctx.bucket
        # What the current command learned, by path (None: nothing there); see begin_command.
        self._scope: dict[str, Optional[Entry]] = {}
        # What the current command's HEADs said, by path: MFMT's copy keeps those attributes.
        self._heads: dict[str, ObjectInfo] = {}
        ctx = self._ctx
        self._uploads = SessionUploads(
            self._bucket, ctx.transfer, ctx.engine,
            ResumeStore(self._bucket, ctx.transfer.resume_ttl, ctx.account.user), ctx.retrier,
            ctx.quota)
        self.quota = ctx.quota
        self._announced = None
        # This session's last STOR (and its MFMT), for an MFMT or a rename right after it.
        self._own: Optional[OwnUpload] = None
        self._after_reply = AfterReply(functools.partial(ctx.engine.lookups.submit, self))
        # MFMT's listing of a file's markers, started before pyftpdlib's look-up of it.
        self._markers_listed: tuple[str, Optional[Future]] = ("", None)
        # The directory of the path the previous command named, and of this command's: a
        # guess of what MLST names next (see look_up_for_mlst), never an answer.
        self._previous_directory = self._named_directory = ""

    @property
    def key_room(self) -> int:
        """The bytes a key of this account may have (less than COS's limit under a
        ``cos_prefix``)."""
        return self._bucket.key_room

    @property
    def _own_upload(self) -> Optional[OwnUpload]:
        return self._own

    @_own_upload.setter
    def _own_upload(self, own: Optional[OwnUpload]) -> None:
        """The bytes the last one kept go back to the worker as soon as this session lets
        go of them (a frame that an exception keeps alive may still refer to them)."""
        last, self._own = self._own, own
        if last is not None and last.kept is not None and \
                (own is None or own.kept is not last.kept):
            last.kept.release()

    def place_of(self, path: str) -> tuple[AccountConfig, str]:
        return self._ctx.account, path

    def path_of(self, transfer) -> str:
        return transfer.name

    def room_for(self, path: str) -> tuple[str, int]:
        """``path`` as this filesystem stores it, and the bytes its key may have (what the
        handler checks a new name against; ``ftp.mounts`` answers for its folders)."""
        return path, self.key_room

    # --- lookups

    def begin_command(self, command: str = "", arg: str = "") -> None:
        """Forget what earlier commands learned: from now on, only what COS answers. First
        wait for what an earlier command still does after its reply, if ``command`` (with
        ``arg``) could see it (see :mod:`.background`)."""
        self._scope = {}
        self._heads = {}
        self._markers_listed = ("", None)
        named = functools.partial(self.ftpnorm, arg.partition(" ")[2] if command == "MFMT"
                                  else arg)
        self._after_reply.before(command, named)
        if command:
            self._previous_directory = self._named_directory
            self._named_directory = parent_dir(named()) if command in ONE_NAME else ""

    @_transient_escapes
    def lookup(self, path: str) -> Optional[Entry]:
        """Return what ``path`` is (file or directory) or None; raises ``StorageError``.
        One ``LIST prefix=<key> max-keys=1`` in the common cases."""
        if path == "/":
            return Entry("/", True)
        if path in self._scope:
            return self._scope[path]
        entry = self._fetch_entry(path)
        self._scope[path] = entry
        return entry

    @_transient_escapes
    def lookup_file(self, path: str) -> Optional[Entry]:
        """Like :meth:`lookup`, for commands that expect a file (SIZE, MDTM, RETR): one HEAD
        answers for a file, with the time MFMT set; a directory or nothing costs a LIST
        more."""
        if path in self._scope or path == "/":
            return self.lookup(path)
        try:
            info = self._bucket.head(object_key(path))
        except (NotFound, InvalidPath):
            return self.lookup(path)
        self._learn_file(path, info)
        return self._scope[path]

    @_transient_escapes
    def look_up_for_mlst(self, path: str) -> None:
        """MLST: find what ``path`` is for :meth:`stat`, with the time MFMT set for a file.

        A file needs a HEAD (its time is in its metadata), a directory one LIST (a HEAD
        finds no object there). Which to ask first is guessed from the session's previous
        command: rclone asks MLST of a file's directory before each upload and each move,
        right after a command on a file in it; that name is listed first (one request, was a
        HEAD and then the LIST), any other gets a HEAD first. Only the order is guessed:
        the answer is what COS says now."""
        if path == self._previous_directory:
            entry = self.lookup(path)
            if entry is None or entry.is_dir:
                return
            del self._scope[path]  # a file after all: its HEAD carries the MFMT time
        self.lookup_file(path)

    def _learn_file(self, path: str, info: ObjectInfo) -> None:
        """Keep what a HEAD (or a copy that made ``info``) said, for this command only."""
        self._heads[path] = info
        self._scope[path] = _file_entry(path, info)

    def _head(self, path: str) -> ObjectInfo:
        """What a HEAD of the file ``path`` says, asked once per command."""
        info = self._heads.get(path)
        if info is None:
            info = self._bucket.head(object_key(path))
            self._learn_file(path, info)
        return info

    def _fetch_entry(self, path: str) -> Optional[Entry]:
        name = os.path.basename(path)
        try:
            key = object_key(path)
        except InvalidPath:
            return None
        first = first_key_from(self._bucket, key)
        if first is None:
            return None
        # Whatever was found lies under the parent: it is a directory.
        self._scope.setdefault(parent_dir(path), Entry(os.path.basename(parent_dir(path)),
                                                       True))
        if first.key == key:
            return Entry(name, False, first.size, first.mtime, first.etag)
        if not fits_as_directory(path):
            return None  # "key/" would be longer than COS allows: never a directory
        prefix = dir_prefix(path)
        if first.key.startswith(prefix) or directory_exists(self._bucket, prefix):
            # A sibling such as "name-2" sorts before "name/": then ask about the prefix.
            return Entry(name, True)
        return None

    def _forget(self, *paths: str) -> None:
        """Forget what is known of ``paths``, which this session is about to write."""
        for path in paths:
            self._scope.pop(path, None)
            self._heads.pop(path, None)
        if self._own_upload is not None and self._own_upload.path in paths:
            self._own_upload = None

    def _check_parents(self, path: str) -> None:
        """Walk up from ``path`` to the first directory that exists; none of the missing
        ones on the way may be a file."""
        parent = parent_dir(path)
        while parent != "/":
            entry = self.lookup(parent)
            if entry is not None and not entry.is_dir:
                raise Refusal(errno.ENOTDIR, "Not a directory: a file has the name of a "
                                             "directory in that path")
            if entry is not None:
                return
            if self._ctx.account.require_existing_dir:
                raise Refusal(errno.ENOENT, "No such directory")
            parent = parent_dir(parent)

    def _keep_directory(self, directory: str) -> None:
        """Write the marker of ``directory`` if nothing is left in it, so that it stays
        after DELE, RNFR or RMD took its last entry away, as on a disk. Done after the
        removal, so two sessions removing the last two entries at once keep it too; a
        failure is only logged."""
        if directory == "/":
            return
        prefix = dir_prefix(directory)
        try:
            if not directory_exists(self._bucket, prefix):
                self._bucket.put(prefix, b"")
        except StorageError as exc:
            log.warning("path=%s: its last entry is gone, and its marker could not be written "
                        "(%s): it no longer lists", directory, exc)

    def _require_file(self, path: str) -> Entry:
        """The file at ``path``, found with one HEAD; raises ``Refusal`` for anything else."""
        entry = self.lookup_file(path)
        if entry is None:
            raise Refusal(errno.ENOENT, "No such file or directory")
        if entry.is_dir:
            raise Refusal(errno.EISDIR, "Is a directory")
        return entry

    def _require(self, path: str, want_dir: Optional[bool] = None) -> Entry:
        entry = self.lookup(path)
        if entry is None:
            raise Refusal(errno.ENOENT, "No such file or directory")
        if want_dir is True and not entry.is_dir:
            raise Refusal(errno.ENOTDIR, "Not a directory")
        if want_dir is False and entry.is_dir:
            raise Refusal(errno.EISDIR, "Is a directory")
        return entry

    def stat(self, path: str) -> os.stat_result:
        """Return an ``os.stat_result`` built from COS metadata; raises ``Refusal`` (ENOENT)."""
        entry = self._require(path)
        mode = _DIR_MODE if entry.is_dir else _FILE_MODE
        # Prefixes have no time of their own; "now" reads better than 1970 in listings.
        mtime = int(entry.shown_mtime or time.time())
        return os.stat_result((mode, _inode(path), 0, 1, 0, 0, entry.size, mtime, mtime,
                               mtime))

    lstat = stat

    @_transient_escapes
    def getsize(self, path: str) -> int:
        """Return the size of the file at ``path`` (what RETR after REST checks against);
        raises ``Refusal`` or ``OSError``."""
        return self._require_file(path).size

    @_transient_escapes
    def resumable_size(self, path: str) -> int:
        """Return the size of the file at ``path`` or, when an upload to it was interrupted
        and parked after the file was last written, the bytes REST + STOR or APPE continue
        from (what ``lftp put -c`` and ``curl -C -`` ask with SIZE). Raises ``Refusal`` or
        ``OSError``."""
        source = self._uploads.source(path, object_key(path), self._upload_target(path))
        if source is None:
            raise Refusal(errno.ENOENT, "No such file or directory")
        self._uploads.offer(path, source)
        return source.size

    def _upload_target(self, path: str) -> Optional[Entry]:
        """The file an upload to ``path`` replaces or continues, or None; raises
        ``Refusal`` (EISDIR) for a directory."""
        entry = self.lookup(path)
        if entry is not None and entry.is_dir:
            raise Refusal(errno.EISDIR, "Is a directory")
        return entry

    @_transient_escapes
    def checksum(self, path: str, algorithm: str) -> tuple[int, str]:
        """Return the size and lowercase hex ``algorithm`` digest (one of
        ``digests.ALGORITHMS``) of the file at ``path``; raises ``Refusal`` or ``OSError``."""
        self._require(path, want_dir=False)
        info = self._bucket.head(object_key(path))
        return info.size, digest(self._bucket, info, algorithm)

    @_transient_escapes
    def getmtime(self, path: str) -> float:
        """Return the modification time of ``path``: the one MFMT set, else COS's
        LastModified (one HEAD for a file); raises ``Refusal`` or ``OSError``."""
        entry = self.lookup_file(path)
        if entry is None:
            raise Refusal(errno.ENOENT, "No such file or directory")
        # What stat() answers next in this command (MLST) shows the same time.
        return entry.shown_mtime

    def get_user_by_uid(self, uid: int) -> str:
        return "owner"

    def get_group_by_gid(self, gid: int) -> str:
        return "group"

    # --- directories

    def chdir(self, path: str) -> None:
        """Make ``path`` the working directory; raises ``Refusal`` unless it is a directory."""
        self._require(path, want_dir=True)
        self.cwd = path

    @_transient_escapes
    def listdir(self, path: str) -> StreamedListing:
        """Return the names in directory ``path`` as they arrive from COS, page by page;
        raises ``Refusal`` if ``path`` is no directory."""
        listing = self.listdir_if_dir(path)
        if listing is None:
            self._require(path, want_dir=True)
            raise Refusal(errno.ENOTDIR, "Not a directory")  # it went away meanwhile
        return listing

    @_transient_escapes
    def listdir_if_dir(self, path: str) -> Optional[StreamedListing]:
        """:meth:`listdir`, or None if ``path`` is no directory: the listing's first page
        is the directory's look-up (a directory has a marker or keys under it)."""
        prefix = dir_prefix(path)
        listed = pages(self._bucket, prefix)
        first = next(listed)
        if path != "/" and not (first.objects or first.prefixes):
            return None
        mtimes = ListedMtimes(self._bucket, prefix)
        self._scope.setdefault(path, Entry(os.path.basename(path), True))
        return StreamedListing(path, iter_directory(prefix, itertools.chain([first], listed),
                                                    self._ctx.max_list_file),
                               mtimes, self._scope)

    @_transient_escapes
    def listdir_matching(self, path: str, pattern: str) -> StreamedListing:
        """The names in directory ``path`` that the wildcard ``pattern`` matches (as on a
        Unix disk: case-sensitive), as they arrive from COS, at most ``max_list_file`` of
        them; raises ``Refusal`` if ``path`` is no directory or nothing matches. Reads the
        directory's pages until enough names match (all of them if fewer do)."""
        prefix = dir_prefix(path)
        entries = iter_directory(prefix, pages(self._bucket, prefix), self._ctx.max_list_file,
                                 lambda name: fnmatch.fnmatchcase(name, pattern))
        first = next(entries, None)
        if first is None:
            self._require(path, want_dir=True)
            raise Refusal(errno.ENOENT, f"No files match {pattern}")
        return StreamedListing(path, itertools.chain([first], entries),
                               ListedMtimes(self._bucket, prefix), self._scope)

    def format_list(self, basedir: str, listing: Iterable[str], ignore_err: bool = True):
        return self._with_this_listing(listing, super().format_list(basedir, listing,
                                                                    ignore_err))

    def format_mlsx(self, basedir: str, listing: Iterable[str], perms: str, facts: str,
                    ignore_err: bool = True):
        """pyftpdlib's MLSD/MLST lines, with ``unix.mode`` in plain octal (``0644``, as
        vsftpd and proftpd write it: its ``0o644`` reads as mode 0 to lftp) and a ``perm``
        fact of RFC 3659's letters only (pyftpdlib's ``T`` and ``M`` are not among them)."""
        perms = "".join(letter for letter in perms if letter in _MLSX_PERMS)
        lines = super().format_mlsx(basedir, listing, perms, facts, ignore_err)
        return self._with_this_listing(listing, (_plain_octal_mode(line) for line in lines))

    def _with_this_listing(self, listing: Iterable[str],
                           lines: Iterable[bytes]) -> Iterator[bytes]:
        """Format the lines of a listing with what the listing itself found.

        pyftpdlib formats a listing lazily, while the data connection sends it, and stats
        every entry; by then the client may have sent another command. Each line is made
        with the entries of the command that listed them, never with later ones, and never
        with a request per entry. A COS failure on a later page leaves as ``StorageError``,
        which the data channel answers with 451.
        """
        found = listing.scope if isinstance(listing, StreamedListing) else self._scope
        iterator = iter(lines)
        while True:
            current, self._scope = self._scope, found
            try:
                line = next(iterator)
            except StopIteration:
                return
            finally:
                self._scope = current
            yield line

    @_transient_escapes
    def mkdir(self, path: str) -> None:
        """Create the zero-byte marker ``path/``; raises ``Refusal`` if the name is taken
        (EEXIST) or its parent is no directory (ENOENT, ENOTDIR), as mkdir(2) does."""
        if self.lookup(path) is not None:
            raise Refusal(errno.EEXIST, "File exists")
        parent = self.lookup(parent_dir(path))
        if parent is None:
            raise Refusal(errno.ENOENT, "No such directory: create the parent first")
        if not parent.is_dir:
            raise Refusal(errno.ENOTDIR, "Not a directory")
        self._bucket.put(dir_prefix(path), b"")
        self._scope[path] = Entry(os.path.basename(path), True)
        self._ctx.hooks.changed("mkdir", path, directory=True)

    @_transient_escapes
    def rmdir(self, path: str) -> None:
        """Remove an empty directory (its marker); raises ENOTEMPTY if anything is under it."""
        self._require(path, want_dir=True)
        prefix = dir_prefix(path)
        if not directory_is_empty(self._bucket, prefix):
            raise Refusal(errno.ENOTEMPTY, "Directory not empty")
        self._bucket.delete(prefix)
        self._forget(path)
        self._keep_directory(parent_dir(path))
        self._ctx.hooks.changed("rmdir", path, directory=True)

    # --- files

    @_transient_escapes
    def remove(self, path: str) -> None:
        """Delete the object at ``path``; raises ENOENT / EISDIR."""
        entry = self._require(path, want_dir=False)
        self._bucket.delete(object_key(path))
        if self.quota is not None:
            self.quota.removed(object_key(path), entry.size)
        self._forget(path)
        self._keep_directory(parent_dir(path))
        self._ctx.hooks.changed("delete", path)

    @_transient_escapes
    def rename(self, src: str, dst: str) -> None:
        """Server-side copy then delete of one object (see :meth:`_rename_file`), or of
        every object of a directory.

        Overwriting an existing file needs ``delete_enable``, and so does renaming a
        directory (its old keys are deleted). Raises ``Refusal`` or ``OSError``.
        """
        directory = self._rename(src, dst)
        self._ctx.hooks.changed("rename", dst, source=src, directory=directory)

    def _rename(self, src: str, dst: str) -> bool:
        """Rename ``src`` to ``dst``; return True if it was a directory."""
        own = self._own_upload
        if own is not None and own.path == src and self._rename_file(src, dst, own.info, own):
            return False
        side = self._ctx.engine.lookups.for_owner(self)
        src_key, dst_key = object_key(src), object_key(dst)
        looked_up = (side.submit(name_kind, self._bucket, dst_key, src_key),
                     side.submit(self._reserved, [], markers_of, self._bucket, src_key))
        try:  # a file, and what its copy keeps (storage class, MFMT time)
            source = self._bucket.head(src_key)
        except NotFound:
            if not self._require(src).is_dir:
                raise Refusal(errno.ENOENT, "No such file or directory") from None
            if src_key != dst_key:
                self._rename_directory(src, dst)
            return True
        self._rename_file(src, dst, source, looked_up=looked_up)
        return False

    def _rename_file(self, src: str, dst: str, source: ObjectInfo,
                     own: Optional[OwnUpload] = None,
                     looked_up: Optional[tuple[Future, Future]] = None) -> bool:
        """Rename the file ``source`` (as a HEAD, or this session's own STOR, found it): the
        new name is looked up (blind to the source's key: ``x.partial`` lists right after
        ``x``) while the source's MFMT markers are listed, then the copy is made, pinned to
        the source's ETag, with the new name's markers written beside it; the reply goes
        out, and the source and its markers are deleted after it (:mod:`.background`).

        With ``own`` (``source`` is what this session's last STOR stored: rclone's and
        WinSCP's temporary uploads), nothing asks about the source first; if anyone replaced
        or deleted it since, the pinned copy fails and False sends the rename the general
        way. One stored in one PUT, renamed within its directory, goes in one round trip
        (:meth:`_rename_by_put`) unless a file has the new name. Otherwise a source replaced
        between the HEAD and the copy fails it (451)."""
        dst_key = object_key(dst)
        if dst_key == source.key:
            return True  # as rename(2) does; a copy onto itself, then a delete, would lose it
        side = self._ctx.engine.lookups.for_owner(self)
        listed = looked_up[1] if looked_up else \
            side.submit(self._reserved, [], markers_of, self._bucket, source.key)
        moving = parent_dir(dst) != parent_dir(src)
        if own is not None and not moving and self._may_put_renamed(own):
            try:
                return self._rename_by_put(src, dst, own, listed)
            except AlreadyExists:  # a file has the new name: a copy replaces it, as below
                kind: Optional[str] = FILE
        else:
            kind = (looked_up[0] if looked_up else
                    side.submit(name_kind, self._bucket, dst_key, source.key)).result()
        self._check_rename_target(dst, kind, moving)
        replaced = self._replaced_size(dst_key, kind)
        markers = listed.result()
        return self._renamed(src, dst, source, lambda: self._copy_pinned(
            source, dst_key, [stamp for stamp, etag, _ in markers if etag == source.etag]),
            lambda: markers, moving, own is not None, replaced)

    def _renamed(self, src: str, dst: str, source: ObjectInfo, write: Callable[[], object],
                 markers: Callable[[], list[tuple[float, str, str]]], moving: bool,
                 own: bool, replaced: Optional[int] = None) -> bool:
        """Make the new name's object with ``write()``; then forget both names, and delete
        the source and its ``markers()`` after the reply. With ``own``, a source replaced or
        deleted since this session's STOR makes it False (the rename goes the general
        way); other failures raise. A quota over a home the file enters or leaves counts it
        once the write is done (``QuotaExceeded`` first if one has no room), and the file of
        ``replaced`` bytes it wrote over stops counting."""
        counted = None if self.quota is None else self.quota.moving(source.key,
                                                                     object_key(dst),
                                                                     source.size)
        try:
            write()
        except BaseException as exc:
            if counted is not None:
                counted(False)
            changed = isinstance(exc, NotFound) or (
                isinstance(exc, StorageError) and not isinstance(exc, AlreadyExists) and
                exc.code == "ObjectChanged")
            if not own or not changed:
                raise
            log.info("path=%s: changed since this session stored it (%s); renaming what is "
                     "there now", src, exc.code)
            self._forget(src)
            return False
        if counted is not None:
            counted(True)
        self._replaced(dst, replaced)
        self._forget(src, dst)
        self._after_reply.start(src, self._remove_renamed, src,
                                [source.key, *(key for _, _, key in markers())], moving)
        return True

    def _replaced_size(self, key: str, kind: Optional[str]) -> Optional[int]:
        """The size of the file ``key`` a rename is about to write over (``kind``: what the
        name is now), if a quota counts it; else None. A HEAD, only then."""
        if kind != FILE or self.quota is None or not self.quota.counts(key):
            return None
        try:
            return self._bucket.head(key).size
        except NotFound:
            return None  # gone meanwhile: nothing to stop counting

    def _replaced(self, path: str, size: Optional[int]) -> None:
        """A rename wrote over the file ``path`` of ``size`` bytes (None: over nothing a
        quota counts): the quotas stop counting it."""
        if size is not None and self.quota is not None:
            self.quota.removed(object_key(path), size)

    def _copy_pinned(self, source: ObjectInfo, dst_key: str, stamps: list[float]) -> None:
        """A rename's copy of ``source`` to ``dst_key``, pinned to its ETag, with the markers
        of the MFMT times ``stamps`` beside it."""
        copy_beside_marker(self._bucket, source, dst_key, stamps,
                           lambda: copy_object(self._bucket, source, dst_key,
                                               self._ctx.transfer,
                                               self._ctx.engine.copier(), pinned=True))

    def _may_put_renamed(self, own: OwnUpload) -> bool:
        """Whether :meth:`_rename_by_put` may store before its look-ups answered: it has the
        bytes, COS honours ``x-cos-forbid-overwrite`` in this bucket, and the account does
        not need existing directories (see ``cos.naming``)."""
        return own.kept is not None and not self._ctx.account.require_existing_dir and \
            may_speculate(self._bucket)

    def _rename_by_put(self, src: str, dst: str, own: OwnUpload, listed: Future) -> bool:
        """Rename this session's own small upload onto a new name in its directory in one
        round trip (rclone's ``x.partial``, WinSCP's ``.filepart``): its bytes, kept since
        the STOR (``own.kept``), are stored under the new name with
        ``x-cos-forbid-overwrite`` (and its MFMT marker, if any) beside the look-ups
        (``cos.naming.rename_checks``: is the new name a directory; is the source still
        what the session stored), where a copy would have to wait for them. The same bytes
        (Content-MD5, and the CRC64 COS reports is the STOR's) and the same MFMT time make
        the same object.

        ``AlreadyExists`` (nothing stored) when a file has the new name. The new object is
        undone when the look-ups refuse the name (550) or fail (451), and when the source is
        not what the session stored any more: False then sends the rename the general way
        (what COS undoes is only what that PUT created, as for a STOR's: ``cos.naming``).
        Attributes another tool gave the source since the STOR without writing other bytes
        or another MFMT time are not carried, as a copy would."""
        source, body = own.info, own.kept.body if own.kept is not None else b""
        dst_key = object_key(dst)
        checks = rename_checks(self._ctx.engine, self, self._bucket, source, dst_key)

        def store() -> str:
            created = checks.put_first(self._bucket, dst_key, body, source)
            if None not in (created.crc64, source.crc64) and created.crc64 != source.crc64:
                self._bucket.delete(dst_key)
                raise StorageError(f"integrity check failed for {dst}: CRC64 differs from "
                                   f"{src}'s", code="CRC64Mismatch")
            return created.etag
        stamps = [source.client_mtime] if source.client_mtime is not None else []
        try:
            return self._renamed(src, dst, source, lambda: copy_beside_marker(
                self._bucket, source, dst_key, stamps, store), listed.result, False, True)
        except NotStorable:
            raise Refusal(errno.EISDIR, "Target is a directory") from None

    def _check_rename_target(self, dst: str, kind: Optional[str], moving: bool) -> None:
        """Refuse a file rename onto a directory, or onto a file without ``delete_enable``;
        look up the new name's parents if nothing has it and it is in another directory (in
        the same one, the source proves them)."""
        if kind == DIRECTORY:
            raise Refusal(errno.EISDIR, "Target is a directory")
        if kind == FILE and not self._ctx.account.delete_enable:
            raise Refusal(errno.EACCES, "Overwriting by rename needs delete permission")
        if kind is None and moving:
            self._check_parents(dst)

    def _remove_renamed(self, src: str, keys: list[str], moving: bool) -> None:
        """After a rename's reply: delete its source and the source's MFMT markers, and keep
        the directory it left if it moved to another."""
        if len(keys) == 1:
            self._bucket.delete(keys[0])
        else:
            delete_keys(self._bucket, keys)
        if moving:
            self._keep_directory(parent_dir(src))

    def _rename_directory(self, src: str, dst: str) -> None:
        if not self._ctx.account.delete_enable:
            raise Refusal(errno.EACCES, "Renaming a directory deletes its old name: needs "
                                       "delete permission")
        if dst.startswith(src.rstrip("/") + "/"):
            raise Refusal(errno.EINVAL, "Cannot move a directory into itself")
        source, target = dir_prefix(src), dir_prefix(dst)
        with announced(self._bucket, "rename", source, target):  # or Conflict
            if self.lookup(dst) is not None:
                raise Refusal(errno.EEXIST, "Target exists")
            self._check_parents(dst)
            try:
                moved = rename_directory(
                    self._bucket, source, target, self._ctx.transfer, self._ctx.engine.copier(),
                    None if self.quota is None else self.quota.moving_directory)
            except InvalidPath as exc:
                raise Unstorable(exc.strerror) from exc
        self._scope.clear()
        self._heads.clear()
        self._own_upload = None
        if moved:
            self._carry_mtimes(src, moved, source)
        self._keep_directory(parent_dir(src))

    def _carry_mtimes(self, path: str, moved: list[Moved], directory: str = "") -> None:
        """Move the MFMT times' listing markers along with a rename. The rename is done by
        then: a failure is only logged (LIST then shows COS's time, MDTM still the MFMT
        one)."""
        try:
            carry_markers(self._bucket, moved, directory)
        except StorageError as exc:
            log.warning("path=%s: renamed, but its MFMT times stay behind: %s", path, exc)

    @_transient_escapes
    def open(self, filename: str, mode: str):
        """Return a ``RangedReader`` for ``"rb"``, an ``UploadSession`` for ``"wb"`` and, for
        ``"ab"`` (APPE), one that continues what SIZE reports: the parked upload or the
        existing object's bytes (see :class:`.uploads.SessionUploads`)."""
        if mode == "rb":
            return self.open_download(filename)
        self._own_upload = None  # only the last upload counts, and only once it committed
        if mode == "wb":
            return self._new_upload(filename)
        if mode == "ab":
            existing = self._upload_target(filename)
            if existing is None:
                self._check_parents(filename)
            self._forget(filename)
            return self._uploads.append(filename, object_key(filename), existing,
                                        self._take_announced())
        raise Refusal(errno.EOPNOTSUPP, f"Opening a file in mode {mode!r} is not supported")

    @_transient_escapes
    def open_download(self, path: str, offset: int = 0) -> RangedReader:
        """RETR (after ``REST offset``): one GET from ``offset``, whose answer gives the size
        sent and the ETag every later GET of this download is pinned to (an overwrite
        meanwhile fails the download rather than mixing versions). Raises ``Refusal`` for a
        directory or nothing there (a LIST tells which, after the GET found no object) and
        ``ResumeRefused`` for an offset past the end."""
        try:
            return open_download(self._bucket, object_key(path), name=path, offset=offset)
        except (NotFound, InvalidPath):
            self._require(path, want_dir=False)
            raise Refusal(errno.ENOENT, "No such file or directory") from None

    def _new_upload(self, path: str) -> UploadSession:
        """STOR: the name's look-ups start now and run while the client sends the bytes;
        the upload asks for their verdict when it would make the object visible (see
        ``cos.naming``: the 550 of a refused name comes then)."""
        key = object_key(path)
        checks = start_checks(self._ctx.engine, self, self._bucket, key,
                              self._ctx.account.require_existing_dir)
        self._forget(path)
        try:
            return self._uploads.new(path, key, announced=self._take_announced(),
                                     checks=checks)
        except QuotaExceeded:
            if checks is not None:
                checks.cancel()
            raise

    @_transient_escapes
    def open_resume(self, filename: str, offset: int) -> UploadSession:
        """REST ``offset`` + STOR: an upload that continues the parked upload or the file
        ending at ``offset`` (see :meth:`resumable_size`); raises ``ResumeRefused``
        otherwise."""
        self._own_upload = None
        entry = self._upload_target(filename)
        self._forget(filename)
        return self._uploads.at_offset(filename, object_key(filename), entry, offset,
                                       self._take_announced())

    def _take_announced(self) -> Optional[int]:
        announced, self._announced = self._announced, None
        return announced

    def upload_finished(self, upload: UploadSession) -> None:
        """Drop cached facts about the file of ``upload`` after it ended (either way); keep
        what COS answered if it was a STOR that committed, and take its kept bytes (the
        upload object may outlive this session's interest in them)."""
        self._forget(upload.name)
        kept, upload.stored_body = upload.stored_body, None
        if upload.stored is not None:
            self._own_upload = OwnUpload(upload.name, upload.stored, kept)
        elif kept is not None:
            kept.release()

    def mkstemp(self, suffix="", prefix="", dir=None, mode="wb"):
        raise Refusal(errno.EOPNOTSUPP, "STOU is not supported")

    def chmod(self, path: str, mode: int) -> None:
        """SITE CHMOD: accepted and ignored, as object storage keeps no modes (``lftp
        mirror -R`` sends one per file and fails the run on an error); ENOENT if missing."""
        self._require(path)

    def end(self) -> None:
        """The session ends, or logs in anew: its last upload's bytes, kept for a rename
        right after it, go back to the worker now (``cos.engine.KeptBodies``)."""
        self._own_upload = None

    def expect_own_upload(self, path: str) -> None:
        """MFMT or RNFR of ``path``: if this session's last STOR made it, take what COS
        answered to that STOR as this command's look-up (pyftpdlib's ``isfile`` or
        ``lexists`` then asks nothing); :meth:`utime` and :meth:`rename` pin their copy to
        it and ask COS anew if the file changed."""
        if self._own_upload is not None and self._own_upload.path == path:
            self._scope[path] = _file_entry(path, self._own_upload.info)

    def begin_mfmt(self, path: str) -> None:
        """MFMT of ``path``: the session's own upload (see :meth:`expect_own_upload`), or
        else the listing of the file's older markers, started now, while pyftpdlib's
        ``isfile`` asks the HEAD that :meth:`utime` needs too."""
        self.expect_own_upload(path)
        if path not in self._scope:
            with contextlib.suppress(InvalidPath):
                self._markers_listed = (path, self._ctx.engine.lookups.submit(
                    self, self._reserved, [], markers_of, self._bucket, object_key(path)))

    @_transient_escapes
    def utime(self, path: str, timeval: float) -> None:
        """MFMT: record ``timeval`` as the file's modification time (see :mod:`.mtimes`);
        raises ``Refusal`` or ``OSError``.

        Right after this session's own STOR of ``path``, the copy is pinned to what that
        STOR stored (two requests). If someone replaced or deleted the file since, the time
        goes the general way (HEAD first) to the file that is there now, as utime(2) sets
        the time of whatever file has the name, or the answer is 550 if there is none.
        """
        info = self._utime_own_upload(path, timeval)
        if info is None:
            side = self._ctx.engine.lookups.for_owner(self)
            listed = self._markers_listed[1] if self._markers_listed[0] == path else \
                side.submit(self._reserved, [], markers_of, self._bucket, object_key(path))
            self._require_file(path)
            info = set_client_mtime(self._bucket, self._head(path), timeval,
                                    self._ctx.transfer, self._ctx.engine.copier())
            new = marker_key(info.key, timeval, info.etag)
            stale = [key for _, _, key in listed.result() if key != new]
            if stale:  # the new marker, written last, wins until they are gone
                self._after_reply.start(path, delete_keys, self._bucket, stale)
        # MFMT's 213 reports the time from what the copy made, without another HEAD.
        self._learn_file(path, info)

    def _utime_own_upload(self, path: str, timeval: float) -> Optional[ObjectInfo]:
        """What MFMT made of the file this session's last STOR stored at ``path``, or None
        if that STOR was of another path, was given a time already (a second marker of the
        same bytes would compete with the first: the general path lists and deletes it),
        or the file changed since (the general path then)."""
        own = self._own_upload
        if own is None or own.path != path or own.info.client_mtime is not None:
            self._own_upload = None
            return None
        try:
            info = set_client_mtime(self._bucket, own.info, timeval, self._ctx.transfer,
                                    self._ctx.engine.copier(), own_upload=True)
        except StorageError as exc:
            self._own_upload = None
            if not isinstance(exc, NotFound) and exc.code != "ObjectChanged":
                raise
            log.info("path=%s: changed since this session stored it (%s); MFMT asks COS "
                     "what is there now", path, exc.code)
            self._forget(path)
            return None
        # What the copy made (the same bytes): a rename may follow.
        self._own_upload = replace(own, info=info)
        return info

    # --- renames between virtual folders (``ftp.mounts``): a copy from one filesystem's
    # bucket into another's, then the delete of the source

    def assume_directory(self, path: str) -> None:
        """Take ``path`` for a directory in this command, whatever the bucket holds: it is
        on the way to a virtual folder (``ftp.mounts``), so MKD and STOR under it find their
        parent."""
        self._scope[path] = Entry(os.path.basename(path), True)

    @_transient_escapes
    def rename_source(self, path: str) -> tuple[Bucket, ObjectInfo, list[tuple[float, str, str]]]:
        """The file ``path`` that a rename takes into another folder: this filesystem's
        bucket, what a HEAD says of it, and its MFMT markers. Raises ``Refusal`` (ENOENT,
        EISDIR)."""
        self._require_file(path)
        info = self._head(path)
        return self._bucket, info, self._reserved([], markers_of, self._bucket, info.key)

    @_transient_escapes
    def copy_in(self, dst: str, source: ForeignObject, stamps: list[float]) -> tuple[bool, bool]:
        """Make the file ``dst`` a copy of ``source`` (an object of another folder's
        bucket), pinned to its ETag, with the markers of its MFMT times ``stamps`` beside
        it; the target is checked as a rename's, and the quotas it enters as a rename's
        (``QuotaExceeded``). Returns whether it copied (not if ``dst`` is ``source`` itself,
        two folders over the same keys: as rename(2) onto itself) and whether this home's
        quotas counted the source leaving its homes too (the source's side then does not).
        Raises ``Refusal`` or ``StorageError`` (``PermissionDenied`` when these credentials
        may not read the source)."""
        dst_key = object_key(dst)
        bucket, key = self._bucket.located(dst_key)
        if source.home is None or (bucket.name, key) == (source.home.name, source.key):
            return False, False
        kind = name_kind(self._bucket, dst_key)
        self._check_rename_target(dst, kind, moving=True)
        replaced = self._replaced_size(dst_key, kind)
        counted = None if self.quota is None else self.quota.arriving(
            source.home.name, source.key, dst_key, source.size)
        try:
            self._copy_pinned(source, dst_key, stamps)
        except BaseException:
            if counted is not None:
                counted(False)
            raise
        if counted is not None:
            counted(True)
        self._replaced(dst, replaced)
        self._forget(dst)
        return True, counted is not None

    @_transient_escapes
    def remove_renamed(self, path: str, source: ObjectInfo, keys: list[str],
                       counted: bool) -> None:
        """Delete the file ``path`` (``source``) renamed into another folder and its
        markers (``keys``), keeping the directory it left; the quotas it leaves are told,
        unless the target's ``counted`` it (see :meth:`copy_in`)."""
        self._forget(path)
        self._remove_renamed(path, [source.key, *keys], moving=True)
        if self.quota is not None and not counted:
            self.quota.removed(source.key, source.size)

    def _reserved(self, default: T, read: Callable[..., T], *args) -> T:
        """What ``read(*args)`` finds under ``.cosftp/``, or ``default`` when the credentials
        may not read there (keys limited to some prefixes): the files themselves still list,
        only parked uploads and MFMT times are not shown."""
        try:
            return read(*args)
        except PermissionDenied as exc:
            log.info("cannot read %s (%s); going on without it", RESERVED_NAME, exc)
            return default
