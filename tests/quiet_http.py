"""The HTTP server of the tests' fake services (the auth hook, the admin console tests'
attacking page): quiet about clients that go away, as the emulator is."""

from __future__ import annotations

import logging
import sys
import threading
from http.server import ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


class QuietHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` (daemon threads) whose connection errors are no errors,
    and which counts the connections being handled (``handling``)."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._handling = 0

    @property
    def handling(self) -> int:
        """The connections accepted whose thread has not finished yet."""
        with self._lock:
            return self._handling

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._handling += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._handling -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """What a connection's thread raised: a client that reset or let time out its
        connection (the server under test giving up on a slow hook, a browser leaving a
        page) is no error of the service; the rest goes to this module's log, which pytest
        shows with a failed test. socketserver printed both to stderr (a line of dashes,
        then the traceback), between the run's results."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("connection from %s ended mid-request: %r", client_address, error)
            return
        log.exception("connection from %s failed", client_address)
