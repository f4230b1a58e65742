"""A small HTTP server for the master's HTTP children (the metrics exporter, the admin API):
bounded in connections and time, on a socket the master bound.

Clients that connect and send nothing, or drip their request a byte at a time, must not take
every place from the legitimate ones: the whole request (TLS handshake, head and body) has one
deadline from the connection's start (not per ``recv``), and the connections served at once
are capped in total and per source. One request per connection (HTTP/1.0): a thread is held
only while a request is read and answered.

``serve`` runs such a server as the child's main loop, until TERM or the master is gone; on
TERM it stops accepting and lets the requests in flight finish (at most ``DRAIN_SECONDS``).
"""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import re
import select
import signal
import socket
import ssl
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from .burst import BurstLog
from .signals import release_signals

log = logging.getLogger(__name__)

# Seconds from taking a connection until its request (TLS handshake, line, headers and body)
# is in, the whole of it (Go's ReadHeaderTimeout); then the connection is closed.
REQUEST_DEADLINE = 5.0
MAX_HEAD_BYTES = 8192
RESPONSE_TIMEOUT = 10.0  # seconds to send the whole answer (a sendall's timeout is total)
POLL_SECONDS = 1.0
DRAIN_SECONDS = 10.0  # on TERM: how long the requests in flight may take to finish
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*([0-9]{1,12})[ \t]*\r?$",
                             re.IGNORECASE | re.MULTILINE)


class Refused(Exception):
    """Why a connection is closed without an answer ("": nothing worth logging)."""


def source_of(ip: str) -> str:
    """What the per-source cap counts: the address, or an IPv6 address's /64 (one client
    usually holds a whole /64)."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        address = address.ipv4_mapped
    return str(address)


def _remaining(deadline: float, what: str) -> float:
    """Seconds left until ``deadline``; ``Refused`` saying ``what`` was late once none are."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Refused(f"{what} not complete within {REQUEST_DEADLINE:.0f}s")
    return remaining


def _receive(sock: socket.socket, deadline: float, what: str) -> bytes:
    """One ``recv`` that ends by ``deadline``; ``Refused`` if the peer left or the time is up."""
    while True:
        sock.settimeout(_remaining(deadline, what))
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            continue  # the deadline check says so
        if not chunk:
            raise Refused("")  # gone before the end of its request: nothing to log
        return chunk


def read_request(sock: socket.socket, deadline: float, max_body: int) -> tuple[bytes, bool]:
    """The request (head, and a body of up to ``max_body`` bytes as its Content-Length
    says) from ``sock``, whole by ``deadline`` (``time.monotonic()``), else ``Refused``.
    Returns it and whether its body was over ``max_body`` (then only the head is read, for
    a 413).

    A socket timeout alone is per ``recv``: a client sending a byte every few seconds would
    hold its thread for ever. This is Go's ``ReadHeaderTimeout``: one deadline for it all.
    """
    data = b""
    while not (end := _HEAD_END.search(data)):
        if len(data) > MAX_HEAD_BYTES:
            raise Refused(f"request head over {MAX_HEAD_BYTES} bytes")
        data += _receive(sock, deadline, "request head")
    length = _CONTENT_LENGTH.search(data, 0, end.end())
    wanted = end.end() + (int(length.group(1)) if length else 0)
    if wanted - end.end() > max_body:
        return data[:end.end()], True
    while len(data) < wanted:
        data += _receive(sock, deadline, "request body")
    return data[:wanted], False


def _handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """Complete the TLS handshake of ``sock`` by ``deadline``: non-blocking, so that a peer
    that stalls in the middle cannot stretch it (a blocking handshake waits per read)."""
    sock.setblocking(False)
    while True:
        try:
            sock.do_handshake()
            break
        except ssl.SSLWantReadError:
            ready = select.select([sock], [], [], _remaining(deadline, "TLS handshake"))
        except ssl.SSLWantWriteError:
            ready = select.select([], [sock], [], _remaining(deadline, "TLS handshake"))
        if not any(ready):
            _remaining(deadline, "TLS handshake")  # raises once the time is up
    sock.setblocking(True)


class DeadlineHandler(BaseHTTPRequestHandler):
    """One request per connection, whole within ``REQUEST_DEADLINE`` of the connection's
    start (TLS included), answered within ``RESPONSE_TIMEOUT``. ``MAX_BODY``: the largest
    request body read (a larger one is answered 413)."""

    server: BoundedHTTPServer
    MAX_BODY = 0
    body_too_large = False
    _refused: Optional[str] = None

    def setup(self) -> None:
        self.deadline = time.monotonic() + REQUEST_DEADLINE
        context = self.server.tls
        if context is not None:
            try:
                self.request = context.wrap_socket(self.request, server_side=True,
                                                   do_handshake_on_connect=False)
                _handshake(self.request, self.deadline)
            except Refused as exc:
                self._refused = str(exc)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                log.debug("%s: %s: TLS handshake failed: %s", self.server.name,
                          self.client_address[0], exc)
                self._refused = ""
        super().setup()

    def handle(self) -> None:
        if self._refused is None:
            try:
                data, self.body_too_large = read_request(self.connection, self.deadline,
                                                         self.MAX_BODY)
            except Refused as exc:
                self._refused = str(exc)
            except OSError as exc:
                log.debug("%s: %s: %s", self.server.name, self.client_address[0], exc)
                self._refused = ""
        if self._refused is not None:
            if self._refused:
                self.server.refusals.note(self.client_address[0],
                                          f"{self.server.name} connection closed: "
                                          f"{self._refused}")
            return
        self.rfile.close()
        self.rfile = io.BytesIO(data)
        self.connection.settimeout(RESPONSE_TIMEOUT)
        self.handle_one_request()

    def log_message(self, format: str, *args) -> None:
        # The request line comes from the client: %r keeps control bytes out of the log.
        log.debug("%s: %s %r", self.server.name, self.address_string(), format % args)


class BoundedHTTPServer(ThreadingHTTPServer):
    """HTTP on a socket the master bound, a thread per connection: at most
    ``max_connections`` at once, ``max_per_source`` of them from one source, so that
    clients that send nothing cannot take every place. ``tls``: serve HTTPS with it.
    ``name`` begins its log lines ("metrics connection refused: ...")."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, handler: type[DeadlineHandler], name: str,
                 max_connections: int, max_per_source: int,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        super().__init__(sock.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.name, self.tls = name, tls
        self.max_connections, self.max_per_source = max_connections, max_per_source
        self.timeout = POLL_SECONDS
        self.refusals = BurstLog(log)
        self._lock = threading.Lock()
        self._serving: Counter[str] = Counter()  # connections being served, per source
        self.serving = 0

    def process_request(self, request, client_address) -> None:
        source = source_of(client_address[0])
        with self._lock:
            if self.serving >= self.max_connections:
                why = f"{self.max_connections} connections served at once"
            elif self._serving[source] >= self.max_per_source:
                why = f"{self.max_per_source} connections from {source} served at once"
            else:
                why = ""
                self._serving[source] += 1
                self.serving += 1
        if why:
            self.refusals.note(client_address[0], f"{self.name} connection refused: {why}")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            source = source_of(client_address[0])
            with self._lock:
                self.serving -= 1
                self._serving[source] -= 1
                if not self._serving[source]:
                    del self._serving[source]

    def handle_error(self, request, client_address) -> None:
        """A handler's failure: logged, never written to stderr as socketserver does."""
        log.exception("%s: error serving %s", self.name, client_address[0])

    def drain(self, seconds: float = DRAIN_SECONDS) -> None:
        """Wait (at most ``seconds``) until no request is being served."""
        deadline = time.monotonic() + seconds
        while self.serving and time.monotonic() < deadline:
            time.sleep(0.05)


def serve(server: BoundedHTTPServer, master_pid: int) -> int:
    """Run ``server`` as this child's main loop until TERM (or INT, QUIT) or the master is
    gone; then stop accepting and let the requests in flight finish.

    A signal wakes the loop at once (``set_wakeup_fd``): a child being replaced after a
    reload must not accept one more request with the old configuration's tokens while its
    poll runs out."""
    stop: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, lambda number, _frame: stop.append(number))
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    release_signals()
    while not stop and os.getppid() == master_pid:
        ready = select.select([server.socket, wake_r], [], [], POLL_SECONDS)[0]
        if wake_r in ready:
            os.read(wake_r, 4096)
        if server.socket in ready and not stop:
            server._handle_request_noblock()  # socketserver's accept and dispatch
        server.refusals.flush()
    server.socket.close()  # the master and a successor keep the port
    server.drain()
    server.refusals.flush(time.monotonic() + 2 * DRAIN_SECONDS)
    return 0
