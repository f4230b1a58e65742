"""Transfer rates of a session (``max_upload_rate``, ``max_download_rate``: the account's on
this node, in the scoreboard; ``local_max_rate``: the session's own), see ``rates``.

A ``Throttle`` paces one direction of one session's file transfers. It reserves bytes from
its buckets a slice at a time (a sixteenth of the lowest rate, 1 KiB to ``CHUNK_SIZE``)
and lets them go once every bucket has them; until then the data channel neither reads
its socket (an upload: TCP slows the client down and nothing is buffered) nor sends (a
download). An upload over a plain data connection saves up for a whole part (for
``SAVE_UP_SECONDS`` at most) before it claims the part's buffer (``ftp.pacing``), then
reads the part at once: a paced upload holds a buffer only while its bytes come in, not
while it waits for its rate, so slow tenants cannot keep the worker's memory budget from
the others. Listings are not paced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Optional

from ..cos.downloads import CHUNK_SIZE
from ..rates import Bucket

BucketTake = Callable[[int], float]  # take n bytes; seconds to wait before they may go
MIN_SLICE = 1024
# The longest an upload saves up for a part while its client cannot send: FileZilla gives
# up on a connection that moved nothing for 20 s by default. At rates too low to pay for a
# part in this time, the buffer is claimed then and filled at the rate.
SAVE_UP_SECONDS = 10.0


class Throttle:
    """One direction of one session: ``allowance`` for the IO loop, ``wait_for`` for a
    thread (the download pump); ``used`` counts what went, ``close`` gives back the rest."""

    def __init__(self, buckets: Sequence[BucketTake], lowest_rate: int) -> None:
        self._buckets = tuple(buckets)
        self._slice = max(MIN_SLICE, min(CHUNK_SIZE, lowest_rate // 16))
        self._credit = 0  # bytes reserved and not sent yet
        self._ready_at = 0.0  # time.monotonic() from which they may go
        self._saving_since: Optional[float] = None  # saving up for a part since

    def allowance(self, want: int) -> tuple[int, float]:
        """Bytes (at most ``want``) that may go now, and if none, the seconds until some
        may."""
        now = time.monotonic()
        if not self._credit:
            self._reserve(self._slice, now)
        if now < self._ready_at:
            return 0, self._ready_at - now
        return min(want, self._credit), 0.0

    def save_up(self, target: int) -> tuple[bool, float]:
        """Reserve slice after slice, each once the one before may go, until ``target``
        bytes may go at once, or for ``SAVE_UP_SECONDS`` at most: True then, else False and
        the seconds until the next step (an upload pays for a part before it claims the
        part's buffer, and its client, which cannot send meanwhile, is kept waiting no
        longer than a client waits for a stalled connection)."""
        now = time.monotonic()
        if self._saving_since is None:
            self._saving_since = now
        while self._credit < target and now >= self._ready_at:
            self._reserve(min(self._slice, target - self._credit), now)
        if now - self._saving_since < SAVE_UP_SECONDS and \
                (self._credit < target or now < self._ready_at):
            return False, max(0.0, self._ready_at - now)
        self._saving_since = None
        return True, 0.0

    def _reserve(self, nbytes: int, now: float) -> None:
        self._credit += nbytes
        self._ready_at = now + max(take(nbytes) for take in self._buckets)

    def wait_for(self, want: int, stopping: threading.Event) -> int:
        """Block until some bytes (at most ``want``) may go; 0 if ``stopping`` was set."""
        while not stopping.is_set():
            granted, wait = self.allowance(want)
            if granted:
                return granted
            stopping.wait(wait)
        return 0

    def used(self, nbytes: int) -> None:
        self._credit = max(0, self._credit - nbytes)

    def close(self) -> None:
        """The transfer ended: give back what it reserved and did not send."""
        if self._credit:
            for take in self._buckets:
                take(-self._credit)
            self._credit = 0


class SessionRates:
    """The throttles a session's transfers use, made at login from the account's limits:
    ``account_bucket(upload)`` is the node's bucket of the account for that direction (None
    without a limit), ``local_rate`` the session's own cap for both (0: none)."""

    def __init__(self, account_bucket: Callable[[bool], Optional[tuple[BucketTake, int]]],
                 local_rate: int) -> None:
        self._account_bucket = account_bucket
        self._local = Bucket(local_rate) if local_rate else None

    def throttle(self, upload: bool) -> Optional[Throttle]:
        """A throttle for one transfer (None: not limited)."""
        buckets, rates = [], []
        shared = self._account_bucket(upload)
        if shared is not None:
            buckets.append(shared[0])
            rates.append(shared[1])
        if self._local is not None:
            buckets.append(self._local)
            rates.append(self._local.rate)
        return Throttle(buckets, min(rates)) if buckets else None
