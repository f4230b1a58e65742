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
MKD needs its parent, and a directory that exists only through its files gets a marker before
DELE, RNFR or RMD takes an entry of it away, so that it stays once empty. STOR into a missing
directory is accepted (the old server did, and devices depend on it) unless the account sets
``require_existing_dir``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from typing import Callable, Optional, TypeVar

from ..config.model import AccountConfig
from ..cos.bucket import ObjectInfo, StartedPage
from ..cos.copies import delete_keys
from ..cos.digests import digest
from ..cos.downloads import RangedReader, open_download
from ..cos.listing import (
    Entry,
    directory_exists,
    directory_is_empty,
    first_key_from,
    iter_directory,
    lacks_marker,
    pages,
    start_marker_check,
)
from ..cos.mtimes import (
    ListedMtimes,
    marker_key,
    markers_of,
    set_client_mtime,
)
from ..cos.naming import start_checks
from ..cos.resume import ResumeStore
from ..cos.uploads import SessionUploads, UploadSession
from ..errors import (
    InvalidPath,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    StorageError,
)
from ..paths import (
    RESERVED_NAME,
    NameRoom,
    dir_prefix,
    fits_as_directory,
    object_key,
    parent_dir,
    wildcard_matcher,
)
from .background import ONE_NAME, AfterReply
from .renames import Renames
from .tree import FsContext, OwnUpload, Refusal, VirtualTree, transient_escapes

log = logging.getLogger(__name__)
T = TypeVar("T")

_DIR_MODE = stat.S_IFDIR | 0o755
_FILE_MODE = stat.S_IFREG | 0o644
_MLSX_PERMS = "adeflmrw"  # pyftpdlib's permission letters that mean the same in RFC 3659


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


class CosFS(Renames, VirtualTree):
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
            ctx.quota, ctx.account.user)
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

    def room_for(self, path: str) -> NameRoom:
        """``path`` as this filesystem stores it, the bytes its key may have, and whether
        that key is the bucket's whole key (what the handler checks a new name against;
        ``ftp.mounts`` answers for its folders)."""
        return NameRoom(path, self.key_room, self._bucket.located("")[1] == "")

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

    @transient_escapes
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

    @transient_escapes
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

    @transient_escapes
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

    def _start_keep(self, path: str) -> Optional[StartedPage]:
        """Send now the listing that tells whether the directory of ``path``, about to be
        removed, needs its marker (see :meth:`_keep_directory`), so that it travels beside
        the command's look-ups; None at the root, which needs no marker."""
        directory = parent_dir(path)
        if directory == "/":
            return None
        return start_marker_check(self._bucket, dir_prefix(directory))

    def _keep_directory(self, path: str, started: Optional[StartedPage] = None) -> bool:
        """Before the file or directory ``path`` is removed: write the marker of its
        directory if it has none, so that the directory stays after DELE, RNFR or RMD took
        its last entry away, as on a disk; return True if the directory is kept so (it has
        its marker, or is the root, or nothing is under it any more), False if the removal
        must be followed by :meth:`_keep_if_emptied` (the listing or the marker failed).
        ``started`` is :meth:`_start_keep`'s listing, None: listed now.

        Before the removal: after it, another session listing the parent meanwhile saw the
        directory gone, a state that is neither before nor after the command. And whenever
        the directory has no marker, not only when ``path`` is all it holds: sessions
        removing its last entries at once each see the others' beside their own, and the
        one that found it empty after its removal wrote the marker only once every entry
        was gone (``tests/test_names.py``
        ``test_a_directory_two_sessions_empty_at_once_lists_for_a_third_meanwhile``). The
        marker stays, so a directory costs that PUT once, not once per removal. A failure
        is only logged: the removal goes on."""
        directory = parent_dir(path)
        if directory == "/":
            return True
        try:
            unmarked = lacks_marker(self._bucket, dir_prefix(directory), started)
        except StorageError as exc:
            log.warning("path=%s: could not tell whether it has its marker (%s)",
                        directory, exc)
            return False
        return not unmarked or self._write_marker(directory)

    def _keep_if_emptied(self, directory: str) -> None:
        """After an entry of ``directory`` was removed whose directory could not be kept
        first (:meth:`_keep_directory` failed): write its marker if nothing is left; a
        failure is only logged."""
        if directory == "/":
            return
        try:
            if directory_exists(self._bucket, dir_prefix(directory)):
                return
        except StorageError as exc:
            log.warning("path=%s: could not tell whether its last entry is gone (%s): no "
                        "marker written", directory, exc)
            return
        self._write_marker(directory)

    def _write_marker(self, directory: str) -> bool:
        """Write the marker of ``directory``, an entry of which goes; return False (logged)
        if it could not be written."""
        try:
            self._bucket.put(dir_prefix(directory), b"")
        except StorageError as exc:
            log.warning("path=%s: an entry of it goes, and its marker could not be written "
                        "(%s): it no longer lists once empty", directory, exc)
            return False
        return True

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

    @transient_escapes
    def getsize(self, path: str) -> int:
        """Return the size of the file at ``path`` (what RETR after REST checks against);
        raises ``Refusal`` or ``OSError``."""
        return self._require_file(path).size

    @transient_escapes
    def resumable_size(self, path: str) -> int:
        """Return the size of the file at ``path`` or, when an upload to it was interrupted
        and parked and the file was not written since it began (``uploads.outdated``), the
        bytes REST + STOR or APPE continue from (what ``lftp put -c`` and ``curl -C -`` ask
        with SIZE). Raises ``Refusal`` or ``OSError``."""
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

    @transient_escapes
    def checksum(self, path: str, algorithm: str) -> tuple[int, str]:
        """Return the size and lowercase hex ``algorithm`` digest (one of
        ``digests.ALGORITHMS``) of the file at ``path``; raises ``Refusal`` or ``OSError``."""
        self._require(path, want_dir=False)
        info = self._bucket.head(object_key(path))
        return info.size, digest(self._bucket, info, algorithm)

    @transient_escapes
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

    @transient_escapes
    def listdir(self, path: str) -> StreamedListing:
        """Return the names in directory ``path`` as they arrive from COS, page by page;
        raises ``Refusal`` if ``path`` is no directory."""
        listing = self.listdir_if_dir(path)
        if listing is None:
            self._require(path, want_dir=True)
            raise Refusal(errno.ENOTDIR, "Not a directory")  # it went away meanwhile
        return listing

    @transient_escapes
    def listdir_if_dir(self, path: str, likely: bool = True) -> Optional[StreamedListing]:
        """:meth:`listdir`, or None if ``path`` is no directory: the listing's first page
        is the directory's look-up (a directory has a marker or keys under it).

        When ``path`` is ``likely`` a directory, its markers' first page is asked for beside
        the directory's: one round trip (no directory: a request for nothing, not a wait);
        else (a wildcard's name as written) only once the directory's page found one."""
        prefix = dir_prefix(path)
        listed = pages(self._bucket, prefix)
        ahead = ListedMtimes(self._bucket, prefix) if likely else None
        try:
            first = next(listed)
        except BaseException:
            if ahead is not None:
                ahead.settle()  # no request of the command left in flight after its reply
            raise
        if path != "/" and not (first.objects or first.prefixes):
            if ahead is not None:
                ahead.settle()
            return None
        mtimes = ahead or ListedMtimes(self._bucket, prefix)
        self._scope.setdefault(path, Entry(os.path.basename(path), True))
        return StreamedListing(path, iter_directory(prefix, itertools.chain([first], listed),
                                                    self._ctx.max_list_file),
                               mtimes, self._scope)

    @transient_escapes
    def listdir_matching(self, path: str, pattern: str) -> StreamedListing:
        """The names in directory ``path`` that the wildcard ``pattern`` matches (as on a
        Unix disk: case-sensitive), as they arrive from COS, at most ``max_list_file`` of
        them; raises ``Refusal`` if ``path`` is no directory or nothing matches. Reads the
        directory's pages until enough names match (all of them if fewer do)."""
        prefix = dir_prefix(path)
        entries = iter_directory(prefix, pages(self._bucket, prefix), self._ctx.max_list_file,
                                 wildcard_matcher(pattern))
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

    @transient_escapes
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

    @transient_escapes
    def rmdir(self, path: str) -> None:
        """Remove an empty directory (its marker); raises ENOTEMPTY if anything is under it."""
        started = self._start_keep(path)
        try:
            self._require(path, want_dir=True)
            prefix = dir_prefix(path)
            if not directory_is_empty(self._bucket, prefix):
                raise Refusal(errno.ENOTEMPTY, "Directory not empty")
        except BaseException:
            if started is not None:
                started.drop()
            raise
        kept = self._keep_directory(path, started)
        self._bucket.delete(prefix)
        self._forget(path)
        if not kept:
            self._keep_if_emptied(parent_dir(path))
        self._ctx.hooks.changed("rmdir", path, directory=True)

    # --- files

    @transient_escapes
    def remove(self, path: str) -> None:
        """Delete the object at ``path``; raises ENOENT / EISDIR."""
        started = self._start_keep(path)  # beside the look-up
        try:
            entry = self._require(path, want_dir=False)
        except BaseException:
            if started is not None:
                started.drop()
            raise
        key = object_key(path)
        kept = self._keep_directory(path, started)
        self._bucket.delete(key)
        if not kept:
            self._keep_if_emptied(parent_dir(path))
        if self.quota is not None:
            self.quota.removed(key, entry.size)
        self._forget(path)
        self._ctx.hooks.changed("delete", path)

    @transient_escapes
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

    @transient_escapes
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

    @transient_escapes
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

    @transient_escapes
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
                                    self._ctx.transfer, self._ctx.copier())
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
                                    self._ctx.copier(), own_upload=True)
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

    def _reserved(self, default: T, read: Callable[..., T], *args) -> T:
        """What ``read(*args)`` finds under ``.cosftp/``, or ``default`` when the credentials
        may not read there (keys limited to some prefixes): the files themselves still list,
        only parked uploads and MFMT times are not shown."""
        try:
            return read(*args)
        except PermissionDenied as exc:
            log.info("cannot read %s (%s); going on without it", RESERVED_NAME, exc)
            return default
