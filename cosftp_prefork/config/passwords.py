"""Password storage for the config file: plain text (as the old server) or scrypt hashes.

``cosftpctl hash-password`` prints ``scrypt$N$r$p$<salt>$<hash>`` (base64), which can replace
the plain value of ``ftp_login_user_password``. scrypt comes with Python's hashlib, so no
extra dependency is needed; comparisons are constant-time either way.

A hash is accepted only inside the bounds below, so that no stored value can make a login
fail inside OpenSSL (memory limit) or take seconds of CPU. ``PasswordChecker`` makes every
failed login cost one scrypt of the same parameters, so timing tells no one whether a user
exists or has a plain-text password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

PREFIX = "scrypt$"
_N, _R, _P = 2 ** 14, 8, 1
_MAXMEM = 64 * 1024 * 1024
_SALT_BYTES = 16
MIN_N, MAX_N = 2 ** 10, 2 ** 20
MAX_R, MAX_P = 32, 16
MAX_COST = 2 ** 22  # N*r*p: 32 times the default, about a second of one core
MIN_SALT, MAX_SALT = 8, 64
MIN_DIGEST, MAX_DIGEST = 16, 64
BOUNDS = (f"N a power of two from 2^10 to 2^20, r 1-{MAX_R}, p 1-{MAX_P}, N*r*p at most 2^22, "
          f"128*r*N bytes at most 64 MiB, a salt of {MIN_SALT}-{MAX_SALT} bytes and a hash of "
          f"{MIN_DIGEST}-{MAX_DIGEST} bytes")


class HashFormatError(ValueError):
    """A stored ``scrypt$`` value that cannot be used; the message never quotes it."""


@dataclass(frozen=True)
class ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @property
    def cost(self) -> tuple[int, int, int, int]:
        """What the verification of this hash costs, to compare hashes by it."""
        return self.n * self.r * self.p, self.n, self.r, len(self.digest)

    def matches(self, given: str) -> bool:
        candidate = hashlib.scrypt(given.encode("utf-8", "surrogateescape"), salt=self.salt,
                                   n=self.n, r=self.r, p=self.p, maxmem=_MAXMEM,
                                   dklen=len(self.digest))
        return hmac.compare_digest(candidate, self.digest)


def hash_password(plain: str) -> str:
    """Return the scrypt form of ``plain`` with a fresh random salt."""
    salt = os.urandom(_SALT_BYTES)
    digest = hashlib.scrypt(plain.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    return f"{PREFIX}{_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def check_stored_form(stored: str) -> None:
    """Raise ``HashFormatError`` if ``stored`` looks like a hash but cannot be one."""
    if stored.startswith(PREFIX):
        parse_hash(stored)


def parse_hash(stored: str) -> ScryptHash:
    """Return the parts of a ``scrypt$`` value; raise ``HashFormatError`` outside ``BOUNDS``."""
    try:
        n, r, p, salt, digest = stored[len(PREFIX):].split("$")
        parsed = ScryptHash(int(n), int(r), int(p), base64.b64decode(salt, validate=True),
                            base64.b64decode(digest, validate=True))
    except (ValueError, TypeError):
        raise HashFormatError("is not a valid scrypt$N$r$p$salt$hash value (use cosftpctl "
                              "hash-password)") from None
    problem = _out_of_bounds(parsed)
    if problem:
        raise HashFormatError(f"is not a usable scrypt hash: {problem} (accepted: {BOUNDS})")
    return parsed


def _out_of_bounds(h: ScryptHash) -> Optional[str]:
    if h.n & (h.n - 1) or not MIN_N <= h.n <= MAX_N:
        return f"N={h.n} is not a power of two from 2^10 to 2^20"
    if not 1 <= h.r <= MAX_R or not 1 <= h.p <= MAX_P:
        return f"r={h.r}, p={h.p} out of range"
    if h.n * h.r * h.p > MAX_COST:
        return f"N*r*p={h.n * h.r * h.p} is over 2^22"
    if 128 * h.r * (h.n + 2 + h.p) > _MAXMEM:
        return f"N={h.n}, r={h.r} need more than 64 MiB"
    if not MIN_SALT <= len(h.salt) <= MAX_SALT:
        return f"the salt has {len(h.salt)} bytes"
    if not MIN_DIGEST <= len(h.digest) <= MAX_DIGEST:
        return f"the hash has {len(h.digest)} bytes"
    return None


class PasswordChecker:
    """Verifies passwords of one configuration in the same time whatever the outcome.

    A wrong password for an unknown user or a plain-text account is checked against a dummy
    hash with the parameters of the costliest configured hash (the default ones if there
    are none), so it costs what a wrong password on a hashed account costs.
    """

    def __init__(self, stored_forms: Iterable[str]) -> None:
        hashes = [parse_hash(s) for s in stored_forms if s.startswith(PREFIX)]
        model = max(hashes, key=lambda h: h.cost, default=None)
        if model is None:
            model = ScryptHash(_N, _R, _P, b"", bytes(64))
        # Random salt and digest: nothing can match it, and it is never written anywhere.
        self._dummy = ScryptHash(model.n, model.r, model.p, os.urandom(_SALT_BYTES),
                                 os.urandom(len(model.digest)))

    def verify(self, stored: Optional[str], given: str) -> bool:
        """True if ``given`` matches ``stored`` (None: no such user, never matches).

        Raises ``ValueError`` or ``MemoryError`` if scrypt itself fails.
        """
        if stored is not None and stored.startswith(PREFIX):
            return parse_hash(stored).matches(given)
        self._dummy.matches(given)
        if stored is None:
            return False
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                   stored.encode("utf-8", "surrogateescape"))


def scrypt_parameters(stored: str) -> Optional[tuple[int, int, int]]:
    """``(N, r, p)`` of a valid ``scrypt$`` value, None for plain text."""
    if not stored.startswith(PREFIX):
        return None
    h = parse_hash(stored)
    return h.n, h.r, h.p


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
