"""Pure mapping between FTP paths and COS object keys.

The FTP view of a bucket: the bucket root is ``/``; ``/a/b.txt`` is the key ``a/b.txt``; a
directory ``/a`` is the key prefix ``a/`` and may be backed by a zero-byte marker object named
exactly ``a/``. FTP paths reaching these functions are already normalised by
``AbstractedFS.ftpnorm`` (absolute, no ``.``/``..``, no ``//``), which is what keeps a user inside
the bucket. An account with a ``cos_prefix`` sees the keys under it as its bucket
(``cos.area``): the keys here are then relative to that prefix, and ``room`` is what the
prefix leaves of the COS limit.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from typing import Callable, NamedTuple

from .errors import InvalidPath

# COS rejects object keys longer than 850 bytes (UTF-8).
MAX_KEY_BYTES = 850
# What no new name may hold: C0 controls and DEL. Existing keys with them (written by other
# tools) stay reachable, except with NUL, CR or LF, which no FTP command line can carry.
_CONTROL = re.compile("[\x00-\x1f\x7f]")
# The server keeps its own data (parked uploads, MFMT times) under this name at the root of
# each account's home. No FTP path may name it at any depth: a directory of one account may be
# another account's home (cos_prefix), in this server's configuration or in another's.
RESERVED_NAME = ".cosftp"
# What a cos_prefix must leave of the COS limit: a name of 255 bytes, as on a disk.
NAME_ROOM = 255


def object_key(ftp_path: str, room: int = MAX_KEY_BYTES) -> str:
    """Return the object key for a normalised FTP file path.

    Raises ``InvalidPath`` for the root, NUL or CR/LF characters, keys over ``room`` bytes
    and anything under a directory named ``.cosftp``.
    """
    key = ftp_path.lstrip("/")
    if not key:
        raise InvalidPath("the root directory is not a file")
    _check_key(key, room)
    return key


def dir_prefix(ftp_path: str, room: int = MAX_KEY_BYTES) -> str:
    """Return the key prefix (``a/b/``) for a directory path; ``""`` for the root."""
    stripped = ftp_path.strip("/")
    if not stripped:
        return ""
    prefix = stripped + "/"
    _check_key(prefix, room)
    return prefix


class NameRoom(NamedTuple):
    """Where a new name goes: ``path`` as its filesystem stores it, the bytes its key may
    have (``room``), and whether that key is the bucket's whole key (``at_bucket_root``: no
    ``cos_prefix`` before it)."""

    path: str
    room: int
    at_bucket_root: bool


def new_name_key(ftp_path: str, directory: bool = False, room: int = MAX_KEY_BYTES,
                 at_bucket_root: bool = True) -> str:
    """Return the key a new file (or, with ``directory``, the marker a new directory) at
    ``ftp_path`` gets; raises ``InvalidPath`` for what ``object_key`` refuses, for control
    characters, for keys over ``room`` bytes, and, where the key is the bucket's whole key
    (``at_bucket_root``), for one starting with a backslash, which COS refuses (Object
    Overview, cloud.tencent.com/document/product/436/13324)."""
    key = dir_prefix(ftp_path, room) if directory else object_key(ftp_path, room)
    if _CONTROL.search(key):
        raise InvalidPath("file names may not contain control characters")
    if at_bucket_root and key.startswith("\\"):
        raise InvalidPath("names at the top of a bucket may not start with a backslash "
                          "(COS refuses such keys)")
    return key


def fits_as_directory(ftp_path: str) -> bool:
    """Whether ``ftp_path`` can name a directory: its marker ``key/`` must fit in COS."""
    return fits_as_key(ftp_path.strip("/") + "/")


def fits_as_key(key: str, room: int = MAX_KEY_BYTES) -> bool:
    """Whether ``key`` is within ``room`` bytes (the COS limit, less an account's prefix)."""
    return key_bytes(key) <= room


def home_prefix(text: str) -> str:
    """The key prefix a ``cos_prefix`` value names: ``tenants/alice`` and
    ``/tenants/alice/`` both give ``tenants/alice/``, ``/`` gives ``""`` (the bucket root).
    Raises ``ValueError`` for what could not be a directory of its own: empty, ``.`` or
    ``..`` components, a ``.cosftp`` (another home's server data), control characters, or
    too long to leave ``NAME_ROOM`` bytes of the COS limit for the names under it."""
    prefix = text[1:] if text.startswith("/") else text
    if not prefix:
        return ""
    if not prefix.endswith("/"):
        prefix += "/"
    parts = prefix[:-1].split("/")
    if "" in parts:
        raise ValueError(f"has an empty component (//), got {text!r}")
    if "." in parts or ".." in parts:
        raise ValueError(f"may not contain . or .. components, got {text!r}")
    if RESERVED_NAME in parts:
        raise ValueError(f"may not contain {RESERVED_NAME} (the server's own data), "
                         f"got {text!r}")
    if _CONTROL.search(prefix):
        raise ValueError("may not contain control characters")
    if key_bytes(prefix) > MAX_KEY_BYTES - NAME_ROOM:
        raise ValueError(f"is {key_bytes(prefix)} bytes long; at most "
                         f"{MAX_KEY_BYTES - NAME_ROOM} leave room for names of {NAME_ROOM} "
                         f"bytes under it (COS keys have at most {MAX_KEY_BYTES})")
    return prefix


def ftp_path_for_key(key: str) -> str:
    """Return the FTP path of an object key or prefix (``a/b/`` -> ``/a/b``)."""
    return "/" + key.rstrip("/")


def child_name(prefix: str, key: str) -> str:
    """Return the name of ``key`` (or common prefix) relative to the listed ``prefix``."""
    return key[len(prefix):].rstrip("/")


def parent_dir(ftp_path: str) -> str:
    """Return the FTP path of the directory holding ``ftp_path``."""
    return posixpath.dirname(ftp_path.rstrip("/")) or "/"


def wildcard_matcher(pattern: str) -> Callable[[str], bool]:
    """Whether a name matches the shell-style ``pattern`` (case-sensitive, as on a Unix
    disk), compiled for the caller alone: not fnmatch's cache, which keeps 32,768 compiled
    patterns for the process whatever clients send (34 KiB each for 1,900 bytes: 1.1 GiB);
    re's keeps 512 at most."""
    match = re.compile(fnmatch.translate(pattern)).match
    return lambda name: match(name) is not None


def is_reserved(key: str) -> bool:
    """Whether ``key`` (or prefix) lies under, or is, a ``.cosftp`` at any depth."""
    return RESERVED_NAME in key.split("/")


def _check_key(key: str, room: int) -> None:
    if is_reserved(key):
        raise InvalidPath(f"the name {RESERVED_NAME} is reserved for the server's own data")
    if "\x00" in key or "\r" in key or "\n" in key:
        raise InvalidPath("file names may not contain NUL, CR or LF characters")
    if key_bytes(key) > room:
        raise InvalidPath(f"path is longer than the {room} bytes COS allows here"
                          if room < MAX_KEY_BYTES else
                          f"path is longer than the COS limit of {MAX_KEY_BYTES} bytes")
    if any(part in ("", ".", "..") for part in key.rstrip("/").split("/")):
        # ftpnorm removes these; refusing here keeps a key like "a//b" from ever being written.
        raise InvalidPath("empty, '.' or '..' path components are not allowed")


def key_bytes(key: str) -> int:
    """The length of ``key`` as COS counts it (UTF-8 bytes)."""
    return len(key.encode("utf-8", "surrogateescape"))
