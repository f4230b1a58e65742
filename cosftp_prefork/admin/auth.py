"""Bearer tokens of the admin API: each configured as ``name:hash:rw|ro``, the hash an scrypt
one (``cosftpctl hash-password``), so the config file never holds a usable token.

A token is checked against every configured hash (a bearer token carries no name), one
scrypt each (~40 ms and 16 MiB with ``hash-password``'s parameters): at most ``MAX_CHECKS``
checks run at once, the others wait their turn up to ``CHECK_WAIT`` (then 503), as the
workers' password checks are bounded (``ftp.logins``). A source whose last check failed
less than ``FAILURE_INTERVAL`` ago is answered 429 without one, and every failure counts
towards its address's ban (``app``).

Requests that bring the same token while it is being checked wait for that check's answer
instead of running scrypt again: thirty console tabs opened at once
after a reload cost one check, not thirty queued two at a time into 503s.

A token that matched is remembered for ``CACHE_SECONDS``, keyed by an HMAC-SHA256 of it under
a key this process drew at random, so that a console polling every second costs one HMAC
per call, not one scrypt. The trade-off: for that minute, what stands between a copy of this
process's memory and the token is one HMAC, not scrypt (a token of 128 random bits or more,
as ``docs/operations.md`` asks for, is out of reach either way; a short, guessable one is
not), and a token removed from the file stays good in this process until the reload that
removed it replaces the process (the master starts a new admin API after each reload, with
an empty cache). Failed tokens are never cached: each costs its checks.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

from ..config.model import AdminToken
from ..config.passwords import parse_hash
from ..server.httpserve import source_of

CACHE_SECONDS = 60.0
MAX_CHECKS = 2  # scrypt checks at once; they leave the interpreter lock
CHECK_WAIT = 5.0  # seconds a check may wait for its turn
FAILURE_INTERVAL = 1.0  # seconds after a failed check before its source may try again
MAX_SOURCES = 4096  # sources whose last failure is remembered; the oldest are forgotten
MAX_TOKEN_LENGTH = 256
BUSY = "too many token checks at once; try again"


@dataclass(frozen=True)
class Caller:
    """Who a valid token belongs to: its name and whether it may change anything."""

    name: str
    writable: bool

    def describe(self) -> str:
        return f"{self.name} ({'rw' if self.writable else 'ro'})"


class TokenRefused(Exception):
    """A token that does not let the request in: ``status`` (401, 429, 503) and why."""

    def __init__(self, status: int, message: str, checked: bool = True) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.checked = checked  # a failed check: counts towards the address's ban


class _Check:
    """One token's check in progress: what it found once ``done`` is set (a ``Caller``, or
    None: no hash matched), or ``unchecked`` if it got no turn."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.caller: Optional[Caller] = None
        self.unchecked = False


class TokenVerifier:
    """Checks bearer tokens against the configured hashes (thread-safe)."""

    def __init__(self, tokens: tuple[AdminToken, ...]) -> None:
        self._tokens = [(Caller(t.name, t.writable), parse_hash(t.hash)) for t in tokens]
        self._key = os.urandom(32)
        self._lock = threading.Lock()
        self._cache: dict[bytes, tuple[Caller, float]] = {}  # at most one per token
        self._failed: OrderedDict[str, float] = OrderedDict()  # source -> last failure
        self._checks = threading.BoundedSemaphore(MAX_CHECKS)
        self._running: dict[bytes, _Check] = {}  # the checks under way, by token key

    def verify(self, token: str, client: str) -> Caller:
        """Who ``token`` (from ``client``'s address) belongs to; ``TokenRefused`` if
        nobody, or if it cannot be checked now."""
        now = time.monotonic()
        key = hmac.new(self._key, token.encode("utf-8", "surrogateescape"),
                       hashlib.sha256).digest()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[1] > now:
                return cached[0]
            source = source_of(client)
            last = self._failed.get(source)
            if last is not None and now - last < FAILURE_INTERVAL:
                raise TokenRefused(429, "too many failed tokens from this address; wait a "
                                   "second", checked=False)
            check = self._running.get(key)
            mine = check is None
            if mine:
                check = self._running[key] = _Check()
        caller = self._run(check, key, token) if mine else self._wait(check)
        with self._lock:
            if caller is None:
                self._failed[source] = time.monotonic()
                self._failed.move_to_end(source)
                while len(self._failed) > MAX_SOURCES:
                    self._failed.popitem(last=False)
                raise TokenRefused(401, "invalid token")
            self._failed.pop(source, None)
        return caller

    def _run(self, check: _Check, key: bytes, token: str) -> Optional[Caller]:
        """Check ``token`` for every request that brings it meanwhile; raises
        ``TokenRefused`` (503) if no turn came."""
        try:
            check.caller = self._check(token) if len(token) <= MAX_TOKEN_LENGTH else None
        except TokenRefused:
            check.unchecked = True
            raise
        finally:
            with self._lock:  # remembered before it is no longer running: no second check
                if check.caller is not None:
                    self._cache[key] = (check.caller, time.monotonic() + CACHE_SECONDS)
                del self._running[key]
            check.done.set()
        return check.caller

    @staticmethod
    def _wait(check: _Check) -> Optional[Caller]:
        """The answer of the same token's check another request runs (which ends within
        ``CHECK_WAIT`` and its scrypts)."""
        check.done.wait()
        if check.unchecked:
            raise TokenRefused(503, BUSY, checked=False)
        return check.caller

    def _check(self, token: str) -> Optional[Caller]:
        """The caller whose hash ``token`` matches, one scrypt per token tried, on one of
        ``MAX_CHECKS`` turns."""
        if not self._checks.acquire(timeout=CHECK_WAIT):
            raise TokenRefused(503, BUSY, checked=False)
        try:
            for caller, stored in self._tokens:
                if stored.matches(token):
                    return caller
            return None
        finally:
            self._checks.release()
