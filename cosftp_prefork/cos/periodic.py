"""A background job of a worker, run every few seconds on a thread of its own."""

from __future__ import annotations

import threading
from typing import Callable


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

    def stop(self) -> None:
        """Stop, waiting for a run under way to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._job()
