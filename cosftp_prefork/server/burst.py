"""Refusals come in bursts (one address opening a thousand sockets): ``BurstLog`` writes the
first of a burst at once and then one line per address and interval with the count, so an
attacker cannot fill the log. Used by the workers' gate, by their cluster state (errors Redis
answers, keys it repairs) and by the metrics exporter.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

log = logging.getLogger(__name__)

BURST_SECONDS = 10.0
BURST_KEYS = 1024  # addresses tracked by one BurstLog; more are counted together


class BurstLog:
    """Logs like events of one address at most twice per ``interval``: the first at once,
    then how many more came. Thread-safe; ``flush`` runs from the owner's loop (the worker's
    tick, the exporter's accept loop)."""

    def __init__(self, logger: logging.Logger = log, interval: float = BURST_SECONDS,
                 max_keys: int = BURST_KEYS, level: int = logging.WARNING) -> None:
        self.interval, self.max_keys, self._log, self._level = interval, max_keys, logger, level
        self._lock = threading.Lock()
        self._bursts: dict[tuple[str, str], list[float]] = {}  # -> [first seen, count after]

    def note(self, ip: str, what: str, detail: str = "", now: Optional[float] = None) -> None:
        """Record that ``what`` happened to a connection from ``ip``; ``detail`` (what
        exactly, which may differ each time) goes into the burst's first line only."""
        now = time.monotonic() if now is None else now
        with self._lock:
            key = (ip, what)
            if key not in self._bursts and len(self._bursts) >= self.max_keys:
                key = ("other addresses", what)
            burst = self._bursts.get(key)
            if burst is not None:
                burst[1] += 1
                return
            self._bursts[key] = [now, 0]
        self._log.log(self._level, "%s: %s%s", key[0], what, f" ({detail})" if detail else "")

    def flush(self, now: Optional[float] = None) -> None:
        """Log the counts of bursts older than the interval, and forget them."""
        now = time.monotonic() if now is None else now
        with self._lock:
            ended = [(key, burst) for key, burst in self._bursts.items()
                     if now - burst[0] >= self.interval]
            for key, _ in ended:
                del self._bursts[key]
        for (ip, what), (first, count) in ended:
            if count:
                self._log.log(self._level, "%s: %s (%d more times in %.0fs)", ip, what, count,
                              now - first)
