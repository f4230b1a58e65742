"""Which version laid out a mapped file of ours (the state file, the quota usage table).

Each such file starts with its magic and a *layout word*: the :func:`fingerprint` of the
module that lays it out (its sizes, offsets and record formats). After an upgrade the master
still running keeps writing its files with the offsets of the version before; a
``cosftpctl`` of the new version that read them with its own would show nonsense, and one
that wrote into them (``unban``, ``quota-scan``) would corrupt what the workers rely on.
:func:`check_layout` refuses such a file before it is mapped.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Mapping
from typing import Optional

from ..safefiles import open_fd

# Every version of a file of ours starts with its magic and its layout word; the state file
# then names its master's pid (``scoreboard.layout.HEADER``).
HEADER_START = struct.Struct("<4sIi")
_MAGIC_AND_LAYOUT = struct.Struct("<4sI")


class OtherLayoutError(Exception):
    """A mapped file of ours was laid out by another version of cosftp-prefork (the master
    still running after an upgrade): this one may neither read nor write it."""

    def __init__(self, path: str, pid: int, what: str) -> None:
        self.path, self.pid = path, pid
        super().__init__(
            f"pid {pid} runs another version of cosftp-prefork: its {what} {path} is "
            f"laid out otherwise, so this cosftpctl neither reads nor changes it. "
            f"'cosftpctl stop' then 'cosftpctl start' runs this version (stop works "
            f"across versions); meanwhile 'kill -HUP {pid}' reloads the running one, its "
            f"verdict in its log")


def fingerprint(namespace: Mapping[str, object]) -> int:
    """The layout word of a file laid out by the module whose globals are ``namespace``: a
    CRC32 of every upper-case number, text and record format it defines or imports, with
    the high bit set. Two versions whose files are laid out alike (and whose tables mean
    the same) share it; it is never one of the small numbers (a version, a count) that the
    versions before it wrote there."""
    shape = sorted((name, value.format if isinstance(value, struct.Struct) else value)
                   for name, value in namespace.items()
                   if name.isupper() and
                   isinstance(value, (int, float, bytes, str, tuple, dict, struct.Struct)))
    return zlib.crc32(repr(shape).encode()) | 1 << 31


def check_layout(path: str, magic: bytes, layout: int, what: str,
                 pid: Optional[int] = None) -> None:
    """Raise ``OtherLayoutError`` if the file at ``path`` (through no link) starts with
    ``magic`` and a layout word other than ``layout``; anything else (absent, unreadable,
    not ours, short) is left to the mapping. ``what`` names the file in the message, and
    ``pid`` the master that made it (None: the pid the file names after its layout word,
    as the state file does)."""
    try:
        fd = open_fd(path, os.O_RDONLY)
    except OSError:
        return
    try:
        start = os.pread(fd, HEADER_START.size, 0)
    finally:
        os.close(fd)
    if len(start) < _MAGIC_AND_LAYOUT.size:
        return
    found_magic, found_layout = _MAGIC_AND_LAYOUT.unpack_from(start)
    if found_magic != magic or found_layout == layout:
        return
    if pid is None:
        pid = HEADER_START.unpack(start)[2] if len(start) == HEADER_START.size else 0
    raise OtherLayoutError(path, pid, what)
