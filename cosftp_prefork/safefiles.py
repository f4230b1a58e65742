"""Writing the server's own files (logs, state, bans, pid) without being redirected.

The server often runs as root and keeps its files in a directory an operator chose. Whoever
can write that directory could plant a symbolic link (or a hard link) at a name the server
writes, and the server would append to, truncate or overwrite the file it points to. So:

* every file is opened with ``O_NOFOLLOW`` (a link at the name is refused with an error
  naming the path) and ``O_CLOEXEC`` (no descriptor leaks into a child), and a regular file
  with more than one name is refused too;
* a file replaced whole (pid file, bans) is written to a new temporary name created with
  ``O_EXCL`` and renamed over the path: a link at the path is replaced, never followed;
* a directory the server creates files in must not be writable by every user, as proftpd
  refuses to log into one: anyone could plant a file there before the server makes it.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
from typing import Optional

# Files that name users and client addresses: owner and group only.
PRIVATE_MODE = 0o640
DIRECTORY_MODE = 0o750
_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeFileError(OSError):
    """A file or directory the server would write was set up so that it could be
    redirected; the message names it and says what to do."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(errno.EPERM, f"{path} {problem}")
        self.path = path


def _link_refused(path: str) -> UnsafeFileError:
    return UnsafeFileError(path, "is a symbolic link; the server does not write through "
                                 "links (someone may have planted it): remove it")


def refuse_link(path: str) -> None:
    """Raise ``UnsafeFileError`` if ``path`` is a symbolic link or a file with several
    names; an absent path is fine."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise _link_refused(path)
    _refuse_hard_links(path, info)


def _refuse_hard_links(path: str, info: os.stat_result) -> None:
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        raise UnsafeFileError(path, f"has {info.st_nlink} names (hard links); the server "
                                    "writes only files with one name: remove the others")


def open_fd(path: str, flags: int, mode: int = PRIVATE_MODE) -> int:
    """``os.open`` that never follows a link at ``path`` and refuses a hard-linked file.

    Never pass ``O_TRUNC``: it would act before the check; truncate the descriptor instead.
    """
    assert not flags & os.O_TRUNC, "truncate after open_fd, not with O_TRUNC"
    try:
        fd = os.open(path, flags | _NO_FOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise _link_refused(path) from None
        raise
    try:
        _refuse_hard_links(path, os.fstat(fd))
    except UnsafeFileError:
        os.close(fd)
        raise
    return fd


def map_existing(path: str, size: int, magic: bytes,
                 writable: bool = False) -> Optional[tuple[int, mmap.mmap]]:
    """Map the first ``size`` bytes of the file at ``path`` shared (read-only unless
    ``writable``), through no link; its descriptor and mapping, or None if it is absent,
    shorter, or does not start with ``magic``. ``writable`` raises ``PermissionError`` if
    this user may not write it."""
    try:
        fd = open_fd(path, os.O_RDWR if writable else os.O_RDONLY)
    except PermissionError:
        if writable:
            raise
        return None
    except OSError:
        return None
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    try:
        if os.fstat(fd).st_size >= size:
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, prot=prot)
            if mapping[:len(magic)] == magic:
                return fd, mapping
            mapping.close()
    except OSError:
        pass
    os.close(fd)
    return None


def open_append(path: str, mode: int = PRIVATE_MODE, owner: Optional[int] = None) -> int:
    """A descriptor appending to ``path``, created with ``mode`` if absent (an existing file
    keeps its mode: an operator may have chosen another).

    ``owner``: the uid the file must belong to (its group is kept). A master running as root
    gives the files its workers append to to the workers' user, which opens them again by
    name after a rotation.
    """
    fd = open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        if owner is not None and os.fstat(fd).st_uid != owner:
            os.fchown(fd, owner, -1)
    except BaseException:
        os.close(fd)
        raise
    return fd


def replace_file(path: str, data: bytes, mode: int) -> None:
    """Make ``path`` hold ``data`` with ``mode``, atomically: a new file, then a rename."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover, or a link planted at the name: unlink never follows
    fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(fd, mode)  # whatever the umask
            handle.write(data)
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)


def check_directory(path: str, group: Optional[int] = None) -> None:
    """Create ``path`` (owner and group only; with ``group`` as its group, if given, so that
    the workers' group may reach the files in it) if absent; raise ``UnsafeFileError`` if
    every user may write in it (sticky bit or not: another user could create the names
    first). An existing directory keeps its owner, group and mode."""
    if group is not None and not os.path.lexists(path):
        os.makedirs(path, DIRECTORY_MODE)
        os.chown(path, -1, group, follow_symlinks=False)
        os.chmod(path, DIRECTORY_MODE, follow_symlinks=False)  # whatever the umask
    os.makedirs(path, DIRECTORY_MODE, exist_ok=True)
    info = os.stat(path)
    if info.st_mode & stat.S_IWOTH:
        raise UnsafeFileError(path, f"is writable by every user (mode "
                                    f"{stat.S_IMODE(info.st_mode):04o}): anyone could plant a "
                                    "link there that the server would write through; make it "
                                    "writable by the server's user only (chmod o-w) or choose "
                                    "another directory")
