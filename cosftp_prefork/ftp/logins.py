"""The password checks of one worker: ``max_password_checks`` threads run them all.

A check is one scrypt (16 MiB and ~40 ms of one core with ``cosftpctl hash-password``'s
parameters; a wrong password for an unknown user costs the same). Run by each session's
thread as it came, 120 wrong passwords sent at once took each of two workers to ~900 MiB of
RSS, and 256 logged-in sessions logging in again to ~2 GiB (docs/reliability.md, "Login
cost"). Here they run on a few threads of their own: a thread reuses the 16 MiB that glibc
kept from its last check, where checks bounded but run by the session threads also left
16 MiB in each malloc arena they passed through (+34 MiB for one check at a time, not +16).

A session waits for its check in its own thread (nothing else is held per waiting login than
a queued task), at most until its login deadline. The checks of different client addresses
take turns (``FairPool``), so that a few addresses sending many passwords delay another
address's login by one check each at most, not by all of theirs.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Callable

from .. import metrics
from ..cos.engine import FairPool


class LoginExpired(Exception):
    """The login's deadline passed while its password waited for its turn to be checked."""


class AddressBanned(Exception):
    """The client's address was banned before its password's turn came or while it was
    checked: the login gets the ban's 421, not the answer."""


class PasswordChecks:
    """Runs password checks on ``threads`` threads, the client addresses in turn."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = FairPool(threads, "password-check")
        self._lock = threading.Lock()
        self._in_flight = 0  # queued or running

    def run(self, address: str, deadline: float, check: Callable[[], bool]) -> bool:
        """Return ``check()``, run on one of the check threads; raise ``LoginExpired`` if
        it has not started by ``deadline`` (``time.monotonic()``). A check that started in
        time is waited for: its result counts."""
        with self._lock:
            turn = metrics.CHECK_AT_ONCE if self._in_flight < self.threads else \
                metrics.CHECK_WAITED
            self._in_flight += 1
        metrics.PASSWORD_CHECKS_WAITING.inc()
        try:
            future = self._pool.submit(address, self._running, check)
            return self._outcome(future, deadline, turn)
        finally:
            with self._lock:
                self._in_flight -= 1

    @staticmethod
    def _running(check: Callable[[], bool]) -> bool:
        metrics.PASSWORD_CHECKS_WAITING.dec()
        with metrics.PASSWORD_CHECKS_RUNNING.track_inprogress():
            return check()

    @staticmethod
    def _outcome(future: Future, deadline: float, turn: str) -> bool:
        try:
            result = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if future.cancel():
                metrics.PASSWORD_CHECKS_WAITING.dec()
                metrics.PASSWORD_CHECKS.labels(metrics.CHECK_TIMED_OUT).inc()
                raise LoginExpired("its password waited for a check until the login "
                                   "deadline") from None
            result = future.result()
        metrics.PASSWORD_CHECKS.labels(turn).inc()
        return result
