"""Password storage for the config file: plain text (as the old server) or scrypt hashes.

``cosftpctl hash-password`` prints ``scrypt$N$r$p$<salt>$<hash>`` (base64), which can replace
the plain value of ``ftp_login_user_password``. scrypt comes with Python's hashlib, so no
extra dependency is needed; comparisons are constant-time either way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

PREFIX = "scrypt$"
_N, _R, _P = 2 ** 14, 8, 1
_MAXMEM = 64 * 1024 * 1024


def hash_password(plain: str) -> str:
    """Return the scrypt form of ``plain`` with a fresh random salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(plain.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    return f"{PREFIX}{_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def check_stored_form(stored: str) -> None:
    """Raise ``ValueError`` if ``stored`` looks like a hash but cannot be one."""
    if stored.startswith(PREFIX):
        _parse(stored)


def verify_password(stored: str, given: str) -> bool:
    """Return True if ``given`` matches ``stored`` (plain text or scrypt form)."""
    if not stored.startswith(PREFIX):
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                   stored.encode("utf-8", "surrogateescape"))
    n, r, p, salt, digest = _parse(stored)
    candidate = hashlib.scrypt(given.encode("utf-8", "surrogateescape"), salt=salt, n=n, r=r,
                               p=p, maxmem=_MAXMEM, dklen=len(digest))
    return hmac.compare_digest(candidate, digest)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    try:
        n, r, p, salt, digest = stored[len(PREFIX):].split("$")
        return int(n), int(r), int(p), base64.b64decode(salt, validate=True), \
            base64.b64decode(digest, validate=True)
    except (ValueError, TypeError):
        raise ValueError("is not a valid scrypt$N$r$p$salt$hash value (use cosftpctl "
                         "hash-password)") from None
