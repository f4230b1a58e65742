"""A background job of a worker, run every few seconds on a thread of its own."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional


class Periodic:
    """Calls ``job`` every ``interval`` seconds on a daemon thread named ``name``, from
    :meth:`start` until :meth:`stop`."""

    def __init__(self, name: str, interval: float, job: Callable[[], None]) -> None:
        self._interval = interval
        self._job = job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, deadline: Optional[float] = None) -> None:
        """Stop, waiting for a run under way to end; until ``deadline``
        (``time.monotonic()``) at most, if given: a stopping worker exits then, and this
        daemon thread with it, whatever COS still holds."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(None if deadline is None else
                              max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._job()
