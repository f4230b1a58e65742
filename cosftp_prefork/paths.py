"""Pure mapping between FTP paths and COS object keys.

The FTP view of a bucket: the bucket root is ``/``; ``/a/b.txt`` is the key ``a/b.txt``; a
directory ``/a`` is the key prefix ``a/`` and may be backed by a zero-byte marker object named
exactly ``a/``. FTP paths reaching these functions are already normalised by
``AbstractedFS.ftpnorm`` (absolute, no ``.``/``..``, no ``//``), which is what keeps a user inside
the bucket.
"""

from __future__ import annotations

import posixpath
import re

from .errors import InvalidPath

# COS rejects object keys longer than 850 bytes (UTF-8).
MAX_KEY_BYTES = 850
# What no new name may hold: C0 controls and DEL. Existing keys with them (written by other
# tools) stay reachable, except with NUL, CR or LF, which no FTP command line can carry.
_CONTROL = re.compile("[\x00-\x1f\x7f]")
# The server keeps its own data (MFMT times) under this top-level name; FTP cannot reach it.
RESERVED_NAME = ".cosftp"


def object_key(ftp_path: str) -> str:
    """Return the object key for a normalised FTP file path.

    Raises ``InvalidPath`` for the root, NUL or CR/LF characters, keys over the COS limit and
    anything under ``/.cosftp``.
    """
    key = ftp_path.lstrip("/")
    if not key:
        raise InvalidPath("the root directory is not a file")
    _check_key(key)
    return key


def dir_prefix(ftp_path: str) -> str:
    """Return the key prefix (``a/b/``) for a directory path; ``""`` for the root."""
    stripped = ftp_path.strip("/")
    if not stripped:
        return ""
    prefix = stripped + "/"
    _check_key(prefix)
    return prefix


def new_name_key(ftp_path: str, directory: bool = False) -> str:
    """Return the key a new file (or, with ``directory``, the marker a new directory) at
    ``ftp_path`` gets; raises ``InvalidPath`` for what ``object_key`` refuses, for control
    characters, and for keys over the COS limit."""
    key = dir_prefix(ftp_path) if directory else object_key(ftp_path)
    if _CONTROL.search(key):
        raise InvalidPath("file names may not contain control characters")
    return key


def fits_as_directory(ftp_path: str) -> bool:
    """Whether ``ftp_path`` can name a directory: its marker ``key/`` must fit in COS."""
    return fits_as_key(ftp_path.strip("/") + "/")


def fits_as_key(key: str) -> bool:
    """Whether ``key`` is within the COS limit on key length."""
    return key_bytes(key) <= MAX_KEY_BYTES


def ftp_path_for_key(key: str) -> str:
    """Return the FTP path of an object key or prefix (``a/b/`` -> ``/a/b``)."""
    return "/" + key.rstrip("/")


def child_name(prefix: str, key: str) -> str:
    """Return the name of ``key`` (or common prefix) relative to the listed ``prefix``."""
    return key[len(prefix):].rstrip("/")


def parent_dir(ftp_path: str) -> str:
    """Return the FTP path of the directory holding ``ftp_path``."""
    return posixpath.dirname(ftp_path.rstrip("/")) or "/"


def _check_key(key: str) -> None:
    if key.split("/", 1)[0] == RESERVED_NAME:
        raise InvalidPath(f"the name {RESERVED_NAME} is reserved for the server's own data")
    if "\x00" in key or "\r" in key or "\n" in key:
        raise InvalidPath("file names may not contain NUL, CR or LF characters")
    if key_bytes(key) > MAX_KEY_BYTES:
        raise InvalidPath(f"path is longer than the COS limit of {MAX_KEY_BYTES} bytes")
    if any(part in ("", ".", "..") for part in key.rstrip("/").split("/")):
        # ftpnorm removes these; refusing here keeps a key like "a//b" from ever being written.
        raise InvalidPath("empty, '.' or '..' path components are not allowed")


def key_bytes(key: str) -> int:
    """The length of ``key`` as COS counts it (UTF-8 bytes)."""
    return len(key.encode("utf-8", "surrogateescape"))
