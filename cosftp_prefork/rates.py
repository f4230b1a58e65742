"""Token buckets for the transfer rate limits (``max_upload_rate``, ``max_download_rate``,
``local_max_rate``): the arithmetic, shared by the buckets every worker of a node reads in
the scoreboard (``server.scoreboard``) and a session's own (``Bucket``).

A bucket holds at most one second's worth of bytes (the burst) and starts full. Taking
bytes may run it into debt: the taker then waits until the debt would be paid back at the
rate, so that every session asking is served in turn and the bytes of all of them together
keep to the rate however many ask at once. Levels are whole bytes and times nanoseconds of
``CLOCK_MONOTONIC``, which every process of the machine reads alike.
"""

from __future__ import annotations

import threading
import time

NS = 1_000_000_000
EMPTY = -(2 ** 62)  # the level of a bucket never used: it starts full


def take(level: int, stamp: int, now: int, rate: int, nbytes: int) -> tuple[int, float]:
    """Refill a bucket at ``level`` last changed at ``stamp`` up to ``now`` (nanoseconds),
    then take ``nbytes`` (negative: give back). Return the new level, and the seconds to wait
    before the bytes may go (0 when the bucket held them)."""
    level = rate if level == EMPTY else min(rate, level + (now - stamp) * rate // NS)
    level = min(rate, level - nbytes)
    return level, max(0.0, -level / rate)


class Bucket:
    """A bucket of this process alone (``local_max_rate``: one session's), thread-safe."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._level, self._stamp = EMPTY, 0
        self._lock = threading.Lock()

    def __call__(self, nbytes: int) -> float:
        """Take ``nbytes``; return the seconds to wait before they may go."""
        with self._lock:
            now = time.monotonic_ns()
            self._level, wait = take(self._level, self._stamp, now, self.rate, nbytes)
            self._stamp = now
            return wait
