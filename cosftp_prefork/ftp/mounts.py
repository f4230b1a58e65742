"""Virtual folders: other buckets or prefixes mounted into an account's tree.

An account's ``virtual_folders = /in=incoming`` shows the ``[FOLDER_incoming]`` section's
bucket and prefix at ``/in``. A session of such an account works on a :class:`MountedFS`: one
``CosFS`` for the account's home and one per folder, each made on the folder's first use and
each unaware of the others, given paths as its own tree names them (``/in/a.txt`` is
``/a.txt`` of the folder). A folder's filesystem works on the folder's ``Area``, so no path
reaches outside the folder's prefix, and its bookkeeping (parked uploads, MFMT markers) is in
the folder's own ``.cosftp/``.

What belongs to no filesystem is answered here:

* the mount points and the directories on the way to them (``/shared`` for ``/shared/docs``)
  are directories, listed in their parent whatever the home's bucket holds under that name;
  neither can be deleted, renamed or written over (550, 553);
* a rename between two filesystems is a server-side copy then a delete, for a file, when COS
  can copy between them (the destination's credentials read the source); else 553 naming why.
  A directory is refused (553): COS cannot move a tree between buckets all at once.

Permissions: ``perms_for`` maps an account (or an account as it is inside a folder:
``AccountConfig.mounted``) onto pyftpdlib's letters; the authorizer asks :class:`MountTable`
which one governs a path.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import posixpath
import re
import stat
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Optional

from .. import logcontext
from ..config.model import AccountConfig
from ..cos.bucket import foreign
from ..cos.listing import Entry
from ..cos.quota import AccountQuota
from ..errors import NotFound, PermissionDenied
from ..paths import NameRoom, parent_dir, wildcard_matcher
from .fs import CosFS, StreamedListing
from .tree import Refusal, Unstorable, VirtualTree

log = logging.getLogger(__name__)

# M: SITE CHMOD, accepted as a no-op (object storage keeps no modes) so that
# `lftp mirror -R` exits 0.
WRITE_PERMS = "amwfTM"
DELETE_PERMS = "d"
_DIR_STAT = (stat.S_IFDIR | 0o755, 0, 0, 1, 0, 0, 0)


def perms_for(account: AccountConfig) -> str:
    """Map ``authority`` and ``delete_enable`` onto pyftpdlib permission letters.

    Everyone may ``cd`` and list (``e``, ``l``) so upload-only clients can find their way;
    ``r`` (download) needs R, ``a m w f T M`` (upload, mkdir, rename, MFMT, SITE CHMOD) need
    W, ``d`` needs W and ``delete_enable``.
    """
    perms = "el"
    if account.can_read:
        perms += "r"
    if account.can_write:
        perms += WRITE_PERMS
        if account.delete_enable:
            perms += DELETE_PERMS
    return perms


def fixed_dir_perm(account: AccountConfig) -> str:
    """The RFC 3659 ``perm`` fact of a mount point of ``account`` (as it is in the folder),
    or of a directory of its home leading to one: enter and list (``el``) always, create
    files and directories in it (``cm``) with W, delete what is in it (``p``) with W and
    ``delete_enable``; never delete or rename it (``d``, ``f``), which is refused."""
    letters = "el"
    if account.can_write:
        letters += "cm"
        if account.delete_enable:
            letters += "p"
    return letters


_PERM_FACT = re.compile(rb"(?:^|(?<=;))perm=[a-z]*;")


def _with_perm_fact(line: bytes, perms: dict[bytes, bytes]) -> bytes:
    """An MLSx line whose entry is named in ``perms`` with its ``perm`` fact from there
    (facts come before the first space, the name after it)."""
    facts, space, name = line.partition(b" ")
    letters = perms.get(name.removesuffix(b"\r\n"))
    if letters is None:
        return line
    return _PERM_FACT.sub(lambda _: b"perm=" + letters + b";", facts) + space + name


@dataclass(frozen=True)
class Mount:
    """A folder at ``path`` of an account's tree, and the account as it is in there."""

    path: str
    account: AccountConfig

    def inner(self, path: str) -> Optional[str]:
        """``path`` as the folder names it, or None if it is not in the folder."""
        if path == self.path:
            return "/"
        if path.startswith(self.path + "/"):
            return path[len(self.path):]
        return None


class MountTable:
    """The folders of one account: which one a path is in, and the directories that lead
    to them."""

    def __init__(self, account: AccountConfig) -> None:
        self.account = account
        self.mounts = tuple(Mount(path, account.mounted(folder))
                            for path, folder in account.folders)
        # Directory -> the names in it that lead to a mount point (or are one).
        self._leading: dict[str, set[str]] = {}
        for mount in self.mounts:
            path = mount.path
            while path != "/":
                self._leading.setdefault(parent_dir(path), set()).add(posixpath.basename(path))
                path = parent_dir(path)

    def find(self, path: str) -> tuple[Optional[Mount], str]:
        """The folder ``path`` is in (None: the account's home) and the path there."""
        for mount in self.mounts:
            inner = mount.inner(path)
            if inner is not None:
                return mount, inner
        return None, path

    def account_at(self, path: str) -> AccountConfig:
        """Whose permissions hold at ``path``: the folder's inside a folder; the account's
        elsewhere and at a mount point, an entry of its parent (deleting or renaming it is
        refused whatever they say)."""
        mount, inner = self.find(path)
        return self.account if mount is None or inner == "/" else mount.account

    def folder_account(self, path: str) -> AccountConfig:
        """The account as it is in the folder of ``path`` (its home's outside folders)."""
        mount, _ = self.find(path)
        return self.account if mount is None else mount.account

    def leading(self, directory: str) -> list[str]:
        """The names in ``directory`` of mount points and of directories leading to them."""
        return sorted(self._leading.get(directory, ()))

    def virtual_paths(self) -> list[str]:
        """The mount points and the directories of the home leading to them (``/``
        aside)."""
        return [*(path for path in self._leading if path != "/"),
                *(mount.path for mount in self.mounts)]

    def is_virtual(self, path: str) -> bool:
        """A directory leading to a mount point (not ``/``), or a mount point."""
        return path != "/" and (path in self._leading or
                                any(mount.path == path for mount in self.mounts))


@functools.lru_cache(maxsize=4096)
def mount_table(account: AccountConfig) -> MountTable:
    """The table of ``account`` (made once per account and configuration)."""
    return MountTable(account)


def session_fs(root: str, cmd_channel) -> VirtualTree:
    """The filesystem of a session that logged in: a ``CosFS`` of the account's home, or a
    :class:`MountedFS` if the account has virtual folders."""
    account = cmd_channel.authorizer.account(cmd_channel.username)
    if account.folders:
        return MountedFS(root, cmd_channel)
    return CosFS(root, cmd_channel)


class FolderLabel:
    """What a session's log lines are stamped with while a command works in a folder: the
    session's label and the mount point (the paths the lines name are the folder's own)."""

    __slots__ = ("_folder", "_session")

    def __init__(self, session: object, folder: str) -> None:
        self._session, self._folder = session, folder

    def __str__(self) -> str:
        return f"{self._session} folder={self._folder}"


class MountedListing(StreamedListing):
    """A directory's listing with the names ``leading`` (mount points, directories leading
    to them) merged in, as directories; a name of the home's bucket that one of them has is
    hidden by it. ``listed`` is the home's listing of the directory, if it has one."""

    def __init__(self, path: str, listed: Optional[StreamedListing], leading: list[str]) -> None:
        self._path, self._listed, self._leading = path, listed, leading
        self.scope = listed.scope if listed is not None else {}

    def __iter__(self) -> Iterator[str]:
        pending = list(self._leading)
        for name in self._listed if self._listed is not None else ():
            while pending and pending[0] < name:
                yield self._virtual(pending.pop(0))
            if name in self._leading:
                continue
            yield name
        for name in pending:
            yield self._virtual(name)

    def _virtual(self, name: str) -> str:
        self.scope[posixpath.join(self._path, name)] = Entry(name, True)
        return name


class MountedFS(VirtualTree):
    """The tree of an account with virtual folders: routes each path to the filesystem of
    the home or of a folder (see the module's doc)."""

    def __init__(self, root: str, cmd_channel) -> None:
        super().__init__("/", cmd_channel)
        self._channel = cmd_channel
        self._table = mount_table(cmd_channel.authorizer.account(cmd_channel.username))
        self._home = CosFS(root, cmd_channel)
        self._folders: dict[str, CosFS] = {}  # by mount path, made on first use
        # Which filesystem opened a transfer, and at which mount point ("": the home): an
        # upload's is told when it ended, and events name the transfer's path in the tree.
        self._opened: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # --- routing

    def _folder(self, mount: Mount) -> CosFS:
        fs = self._folders.get(mount.path)
        if fs is None:
            fs = CosFS("/", self._channel, self._channel.fs_context(mount.account, mount.path))
            self._folders[mount.path] = fs
        return fs

    def _route(self, path: str) -> tuple[CosFS, str]:
        mount, inner = self._table.find(path)
        return (self._home, path) if mount is None else (self._folder(mount), inner)

    def _virtual(self, path: str) -> bool:
        """A directory on the way to a mount point (not the mount point: its folder
        answers for it)."""
        return path != "/" and bool(self._table.leading(path)) and \
            self._table.find(path)[0] is None

    def _fixed(self, path: str, what: str) -> None:
        """Refuse to ``what`` a mount point or a directory leading to one (553)."""
        if self._table.is_virtual(path):
            raise Unstorable(self._fixed_reason(path, what))

    def _fixed_reason(self, path: str, what: str) -> str:
        kind = "a virtual folder's mount point" if self._table.find(path)[1] == "/" \
            else "a directory holding virtual folders"
        return f"{path} is {kind}: it cannot be {what}"

    def place_of(self, path: str) -> tuple[AccountConfig, str]:
        """A folder's path is of the folder's bucket and prefix (events name its key
        there); any other, a mount point's parents' included, of the home's."""
        mount, inner = self._table.find(path)
        return (self._table.account, path) if mount is None else (mount.account, inner)

    def path_of(self, transfer) -> str:
        _, mount = self._opened.get(transfer, (None, ""))
        return mount + transfer.name

    def _filesystems(self) -> list[CosFS]:
        return [self._home, *self._folders.values()]

    @property
    def quota(self) -> Optional[AccountQuota]:
        """The quotas over the working directory's place (``ALLO``): the folder's (its own,
        and those of homes its prefix is in) inside a folder, the home's elsewhere."""
        mount, _ = self._table.find(self.cwd)
        return self._home.quota if mount is None else self._folder(mount).quota

    def quotas(self) -> list[AccountQuota]:
        """``SITE QUOTA``: the home's quotas, then each folder's, wherever the session is
        (a folder's quota is asked for without making its filesystem)."""
        found = [] if self._home.quota is None else [self._home.quota]
        for mount in self._table.mounts:
            fs = self._folders.get(mount.path)
            quota = fs.quota if fs is not None else \
                self._channel.quota_for(mount.account, mount.path)
            if quota is not None:
                found.append(quota)
        return found

    def room_for(self, path: str) -> NameRoom:
        """A mount point is a name of the home's tree (what may be done to it is answered
        later: nothing)."""
        if self._table.is_virtual(path):
            return self._home.room_for(path)
        fs, inner = self._route(path)
        return fs.room_for(inner)

    # --- commands

    def begin_command(self, command: str = "", arg: str = "") -> None:
        """Each filesystem forgets what earlier commands learned; the one the command's
        path is in waits for its own work after a reply (``CosFS.begin_command``), and the
        command's log lines name the folder it works in."""
        when, _, named = arg.partition(" ") if command == "MFMT" else ("", "", arg)
        path = self.ftpnorm(named)
        mount, _ = self._table.find(path)
        # The session's thread is its own (server.worker): the label holds until the next
        # command, for the work this one hands on too (logcontext.carried).
        label = self._channel.log_label
        logcontext.bind(label if mount is None else FolderLabel(label, mount.path))
        fs, inner = self._route(path)
        for each in self._filesystems():
            if each is not fs:
                each.begin_command("NOOP")
        fs.begin_command(command, f"{when} {inner}" if command == "MFMT" else inner)
        # The home's filesystem lists, stats (MLST, LIST of one name) and creates in them.
        for virtual in self._table.virtual_paths():
            self._home.assume_directory(virtual)

    def lookup(self, path: str) -> Optional[Entry]:
        if self._virtual(path):
            return Entry(posixpath.basename(path), True)
        fs, inner = self._route(path)
        return fs.lookup(inner)

    def lookup_file(self, path: str) -> Optional[Entry]:
        if self._virtual(path):
            return self.lookup(path)
        fs, inner = self._route(path)
        return fs.lookup_file(inner)

    def look_up_for_mlst(self, path: str) -> None:
        if not self._virtual(path):
            fs, inner = self._route(path)
            fs.look_up_for_mlst(inner)

    def end(self) -> None:
        """The session ends or logs in anew: every filesystem of the tree lets go of what
        it keeps (``CosFS.end``)."""
        for fs in self._filesystems():
            fs.end()

    def stat(self, path: str) -> os.stat_result:
        if self._virtual(path):
            now = int(time.time())
            return os.stat_result((*_DIR_STAT, now, now, now))
        fs, inner = self._route(path)
        return fs.stat(inner)

    lstat = stat

    def _on_a_file(self, method: str, path: str, *args):
        """``method`` of the filesystem ``path`` is in, which expects a file."""
        if self._virtual(path):
            raise Refusal(errno.EISDIR, "Is a directory")
        fs, inner = self._route(path)
        return getattr(fs, method)(inner, *args)

    def getsize(self, path: str) -> int:
        return self._on_a_file("getsize", path)

    def resumable_size(self, path: str) -> int:
        return self._on_a_file("resumable_size", path)

    def checksum(self, path: str, algorithm: str) -> tuple[int, str]:
        return self._on_a_file("checksum", path, algorithm)

    def open_download(self, path: str, offset: int = 0):
        return self._opened_by(path, self._on_a_file("open_download", path, offset))

    def utime(self, path: str, timeval: float) -> None:
        self._on_a_file("utime", path, timeval)

    def getmtime(self, path: str) -> float:
        if self._virtual(path):
            return time.time()
        fs, inner = self._route(path)
        return fs.getmtime(inner)

    def chmod(self, path: str, mode: int) -> None:
        if not self._virtual(path):
            fs, inner = self._route(path)
            fs.chmod(inner, mode)

    def get_user_by_uid(self, uid: int) -> str:
        return self._home.get_user_by_uid(uid)

    def get_group_by_gid(self, gid: int) -> str:
        return self._home.get_group_by_gid(gid)

    def expect_own_upload(self, path: str) -> None:
        fs, inner = self._route(path)
        fs.expect_own_upload(inner)

    def begin_mfmt(self, path: str) -> None:
        fs, inner = self._route(path)
        fs.begin_mfmt(inner)

    # --- directories

    def chdir(self, path: str) -> None:
        if not self._virtual(path):
            fs, inner = self._route(path)
            fs.chdir(inner)
        self.cwd = path

    def listdir(self, path: str) -> StreamedListing:
        listing = self.listdir_if_dir(path)
        if listing is None:
            fs, inner = self._route(path)
            return fs.listdir(inner)  # raises: no directory
        return listing

    def listdir_if_dir(self, path: str, likely: bool = True) -> Optional[StreamedListing]:
        fs, inner = self._route(path)
        leading = self._table.leading(path) if fs is self._home else []
        listed = fs.listdir_if_dir(inner, likely)
        if not leading:
            return listed
        return MountedListing(path, listed, leading)

    def listdir_matching(self, path: str, pattern: str) -> StreamedListing:
        fs, inner = self._route(path)
        leading = list(filter(wildcard_matcher(pattern), self._table.leading(path))) \
            if fs is self._home else []
        if not leading:
            return fs.listdir_matching(inner, pattern)
        try:
            listed = fs.listdir_matching(inner, pattern)
        except Refusal:
            listed = None  # nothing of the home matches; the folders do
        return MountedListing(path, listed, leading)

    def format_list(self, basedir: str, listing: Iterable[str], ignore_err: bool = True):
        fs, inner = self._route(basedir)
        return fs.format_list(inner, listing, ignore_err)

    def format_mlsx(self, basedir: str, listing: Iterable[str], perms: str, facts: str,
                    ignore_err: bool = True):
        """MLSD's and MLST's lines, with the ``perm`` fact of where each entry is (the
        handler passes the home's letters): a folder's inside it, and at a mount point and
        a directory leading to one, ``fixed_dir_perm`` of the folder it is or leads to."""
        fs, inner = self._route(basedir)
        if fs is not self._home:
            return fs.format_mlsx(inner, listing, perms_for(self._table.folder_account(basedir)),
                                  facts, ignore_err)
        lines = fs.format_mlsx(inner, listing, perms, facts, ignore_err)
        fixed = {self._encoded(name): fixed_dir_perm(self._table.folder_account(
            posixpath.join(basedir, name))).encode("ascii")
            for name in self._table.leading(basedir)}
        return (_with_perm_fact(line, fixed) for line in lines) if fixed else lines

    def _encoded(self, name: str) -> bytes:
        """``name`` as this session's lines write it (pyftpdlib's ``format_mlsx``)."""
        return name.encode(self._channel.encoding, self._channel.unicode_errors)

    def mkdir(self, path: str) -> None:
        if self._virtual(path):
            raise Refusal(errno.EEXIST, "File exists")
        fs, inner = self._route(path)
        fs.mkdir(inner)

    def rmdir(self, path: str) -> None:
        self._not_removable(path)
        fs, inner = self._route(path)
        fs.rmdir(inner)

    def remove(self, path: str) -> None:
        self._not_removable(path)
        fs, inner = self._route(path)
        fs.remove(inner)

    def _not_removable(self, path: str) -> None:
        """550 for DELE or RMD of a mount point or of a directory leading to one."""
        if self._table.is_virtual(path):
            raise Refusal(errno.EPERM, self._fixed_reason(path, "deleted"))

    # --- files

    def open(self, filename: str, mode: str):
        if mode == "rb":
            return self.open_download(filename)
        self._fixed(filename, "written over")
        fs, inner = self._to_upload(filename)
        return self._opened_by(filename, fs.open(inner, mode))

    def open_resume(self, filename: str, offset: int):
        self._fixed(filename, "written over")
        fs, inner = self._to_upload(filename)
        return self._opened_by(filename, fs.open_resume(inner, offset))

    def _to_upload(self, path: str) -> tuple[CosFS, str]:
        """The filesystem an upload to ``path`` goes to, given ALLO's size first."""
        fs, inner = self._route(path)
        # Taken even when the folder refuses it: ALLO announces the next upload only.
        announced, self._announced = self._announced, None
        if announced is not None:
            fs.announce(announced)
        return fs, inner

    def _opened_by(self, path: str, transfer):
        """``transfer``, of ``path``, noted with the filesystem and mount point of it."""
        mount, _ = self._table.find(path)
        self._opened[transfer] = (self._route(path)[0], mount.path if mount else "")
        return transfer

    def upload_finished(self, upload) -> None:
        fs, _ = self._opened.get(upload, (None, ""))
        if fs is not None:
            fs.upload_finished(upload)

    def mkstemp(self, suffix="", prefix="", dir=None, mode="wb"):
        raise Refusal(errno.EOPNOTSUPP, "STOU is not supported")

    # --- renames

    def rename(self, src: str, dst: str) -> None:
        """Within one filesystem: its rename. Between two: a file is copied, then deleted
        (see the module's doc); a directory is refused. Raises ``Refusal``, ``Unstorable``
        (553) or ``OSError``."""
        self._fixed(src, "renamed")
        self._fixed(dst, "written over")
        (src_fs, src_in), (dst_fs, dst_in) = self._route(src), self._route(dst)
        if src_fs is dst_fs:
            src_fs.rename(src_in, dst_in)
            return
        entry = src_fs.lookup(src_in)
        if entry is None:
            raise Refusal(errno.ENOENT, "No such file or directory")
        if entry.is_dir:
            raise Unstorable(f"{src} is a directory in another virtual folder than {dst}: "
                             "COS cannot move a directory between folders all at once; move "
                             "its files one by one")
        self._check_service(src, dst)
        self._copy_across(src_fs, src_in, dst_fs, dst_in, src, dst)
        # Neither filesystem renamed: the event is the tree's (a key in each bucket).
        self._channel.hooks.changed("rename", dst, source=src)

    def _check_service(self, src: str, dst: str) -> None:
        """553 unless both folders are on one COS service (one copy request can name the
        source only there)."""
        here, there = self._table.folder_account(src), self._table.folder_account(dst)
        if (here.cos_ip, here.cos_port) != (there.cos_ip, there.cos_port):
            raise Unstorable(f"{src} and {dst} are in folders on different COS services: COS "
                             "cannot copy between them; download and upload the file")

    def _copy_across(self, src_fs: CosFS, src_in: str, dst_fs: CosFS, dst_in: str,
                     src: str, dst: str) -> None:
        bucket, info, markers = src_fs.rename_source(src_in)
        stamps = [stamp for stamp, etag, _ in markers if etag == info.etag]
        try:
            copied, counted = dst_fs.copy_in(dst_in, foreign(bucket, info), stamps)
        except PermissionDenied as exc:
            log.warning("path=%s: copy to %s refused: %s", src, dst, exc)
            raise Unstorable(f"COS refused to copy {src} to {dst} ({exc.code or 'AccessDenied'})"
                             f": the credentials of the folder of {dst} may not read {src} or "
                             "write there") from None
        except NotFound:
            raise Refusal(errno.ENOENT, "No such file or directory") from None
        if copied:  # else the same object, through two folders
            src_fs.remove_renamed(src_in, info, [key for _, _, key in markers], counted)
