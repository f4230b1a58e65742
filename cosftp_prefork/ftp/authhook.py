"""External authentication: the auth hook (``auth_hook_url`` or ``auth_hook_command``).

The hook is asked with the user, the password, the client's address and whether the control
connection is encrypted, as one JSON object (a ``POST`` body, or a program's stdin), and
answers ``{"allow": false}`` or ``{"allow": true, "account": {...}}`` with the options of a
``[COS_ACCOUNT_N]`` section, read by the config's own table (``hookanswer.hook_account``).

Calls run on ``auth_hook_parallel`` threads per worker (the client addresses in turn), never
one thread per login; a login waits for its answer until its deadline (``auth_hook_timeout``
after PASS) and is then told to try later. A yes is kept for ``auth_cache_ttl`` seconds,
keyed by user, address and TLS, with a keyed hash of the password compared in constant time:
another password never hits it, and no password is kept. A no is never kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import subprocess
import threading
import time
from collections import OrderedDict
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Optional

import urllib3

from .. import metrics
from ..config.hookanswer import hook_account
from ..config.model import AccountConfig, Config
from ..cos.engine import FairPool
from ..errors import ConfigError
from ..events.http import describe
from . import hookcommand

log = logging.getLogger(__name__)

ALLOW, DENY, INVALID, UNAVAILABLE, CACHED = "allow", "deny", "invalid", "unavailable", "cached"
MAX_ANSWER_BYTES = 64 * 1024
MAX_CACHED = 10000  # yeses kept per worker; the oldest go first


@dataclass(frozen=True)
class HookRequest:
    """What the hook is asked (the password never reaches a log)."""

    user: str
    password: str
    client_address: str
    tls: bool

    def body(self) -> bytes:
        return json.dumps({"user": self.user, "password": self.password,
                           "client_address": self.client_address, "tls": self.tls}).encode()


@dataclass(frozen=True)
class Verdict:
    """The hook's decision: ``outcome`` is ALLOW (with ``account``), DENY, INVALID (the
    answer or its account is unusable) or UNAVAILABLE (down, slow, busy, failed);
    ``reason`` says why, for the log."""

    outcome: str
    account: Optional[AccountConfig] = None
    reason: str = ""


class AnswerCache:
    """The hook's recent yeses, bounded, each for ``ttl`` seconds."""

    def __init__(self, ttl: float, size: int = MAX_CACHED) -> None:
        self._ttl, self._size = ttl, size
        self._key = os.urandom(32)  # per process: the digests mean nothing elsewhere
        self._entries: OrderedDict[tuple, tuple[bytes, AccountConfig, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).digest()

    @staticmethod
    def _slot(request: HookRequest) -> tuple:
        return request.user, request.client_address, request.tls

    def get(self, request: HookRequest) -> Optional[AccountConfig]:
        """The account of a yes still valid for exactly this request, else None."""
        digest = self._digest(request.password)
        with self._lock:
            entry = self._entries.get(self._slot(request))
            if entry is not None and entry[2] <= time.monotonic():
                del self._entries[self._slot(request)]
                entry = None
        if entry is None or not hmac.compare_digest(entry[0], digest):
            return None
        return entry[1]

    def put(self, request: HookRequest, account: AccountConfig) -> None:
        if self._ttl <= 0:
            return
        entry = (self._digest(request.password), account, time.monotonic() + self._ttl)
        with self._lock:
            self._entries[self._slot(request)] = entry
            self._entries.move_to_end(self._slot(request))
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


class AuthHook:
    """Asks one worker's auth hook, on a few threads of its own."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._settings = config.auth_hook
        self._cache = AnswerCache(self._settings.cache_ttl)
        self._pool = FairPool(self._settings.parallel, "auth-hook")
        self._http = urllib3.PoolManager(maxsize=self._settings.parallel, retries=False)

    def ask(self, request: HookRequest, deadline: float) -> Verdict:
        """The hook's verdict on ``request``, by ``deadline`` (``time.monotonic()``) at
        the latest: UNAVAILABLE if it has no answer by then."""
        account = self._cache.get(request)
        if account is not None:
            metrics.AUTH_HOOK.labels(CACHED).inc()
            return Verdict(ALLOW, account)
        future = self._pool.submit(request.client_address, self._decide, request, deadline)
        try:
            verdict = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()
            verdict = Verdict(UNAVAILABLE, reason="no answer within auth_hook_timeout")
        if verdict.outcome == ALLOW:
            self._cache.put(request, verdict.account)
        metrics.AUTH_HOOK.labels(verdict.outcome).inc()
        return verdict

    def _decide(self, request: HookRequest, deadline: float) -> Verdict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Verdict(UNAVAILABLE, reason="no turn to ask the hook within "
                                               "auth_hook_timeout")
        try:
            raw = self._post(request, remaining) if self._settings.url else \
                self._run(request, remaining)
        except HookUnavailable as exc:
            return Verdict(UNAVAILABLE, reason=str(exc))
        if raw is None:
            return Verdict(DENY, reason="the hook said no")
        return self._read(raw, request.user)

    def _post(self, request: HookRequest, timeout: float) -> Optional[bytes]:
        """The answer's body; None for 401/403 (a no); ``HookUnavailable`` otherwise."""
        try:
            response = self._http.request(
                "POST", self._settings.url, body=request.body(),
                headers={"Content-Type": "application/json"},
                timeout=urllib3.Timeout(total=timeout), preload_content=False, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            # The error's own words: an operator must tell a refused certificate from a
            # refused connection (the hook's URL is the operator's, not a client's).
            raise HookUnavailable(f"the hook cannot be reached: {describe(exc)}") from None
        try:
            body = response.read(MAX_ANSWER_BYTES + 1)
        except urllib3.exceptions.HTTPError as exc:
            raise HookUnavailable(f"the hook's answer broke off: {describe(exc)}") from None
        finally:
            response.release_conn()
        if response.status in (401, 403):
            return None
        if response.status != 200:
            raise HookUnavailable(f"the hook answered HTTP {response.status}")
        return body

    def _run(self, request: HookRequest, timeout: float) -> bytes:
        """The program's stdout, or its first ``MAX_ANSWER_BYTES`` and one more if it
        wrote more (it was stopped there: ``_read`` refuses that answer);
        ``HookUnavailable`` if it fails or takes too long."""
        try:
            answer = hookcommand.ask(self._settings.command, request.body(),
                                     MAX_ANSWER_BYTES, timeout)
        except subprocess.TimeoutExpired:
            raise HookUnavailable("the hook command took longer than auth_hook_timeout") \
                from None
        except OSError as exc:
            raise HookUnavailable(f"the hook command cannot run: {exc.strerror}") from None
        if answer.too_long:
            log.warning("the auth hook command wrote more than %d bytes: stopped there, "
                        "its answer refused", MAX_ANSWER_BYTES)
        elif answer.status != 0:
            raise HookUnavailable(f"the hook command exited with status {answer.status}")
        return answer.output

    def _read(self, raw: bytes, user: str) -> Verdict:
        """Parse and check an answer: a no, or a yes with an account the config accepts."""
        if len(raw) > MAX_ANSWER_BYTES:
            return Verdict(INVALID, reason=f"the answer is over {MAX_ANSWER_BYTES} bytes")
        try:
            answer: Any = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            return Verdict(INVALID, reason="the answer is not JSON")
        if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
            return Verdict(INVALID, reason='the answer is not an object with "allow": '
                                           'true or false')
        if not answer["allow"]:
            return Verdict(DENY, reason="the hook said no")
        if not isinstance(answer.get("account"), dict):
            return Verdict(INVALID, reason='a yes needs "account": {...}, the options of '
                                           'a [COS_ACCOUNT_N] section')
        try:
            return Verdict(ALLOW, hook_account(answer["account"], user, self._config))
        except ConfigError as exc:
            return Verdict(INVALID, reason=str(exc))

    def close(self) -> None:
        self._pool.shutdown()
        self._http.clear()


class HookUnavailable(Exception):
    """The hook gave no usable answer in time: the login should be tried again later."""
