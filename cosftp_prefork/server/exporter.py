"""The metrics exporter: a child of the master that answers ``GET /metrics`` for Prometheus.

Why a process of its own: a scrape reads and adds up the files of every process, and an
HTTP client may be slow or hostile; the master must stay a small single-threaded select loop
that supervises, and a worker serving the endpoint would take it down whenever it is
recycled and put HTTP on the FTP IOLoop. The master binds the socket (a port in use is
refused at start, and the port outlives an exporter restart), forks this process like a
worker and starts it again if it dies.

It also keeps the multiprocess directory small. prometheus_client leaves the counter and
histogram files of every process that ever ran (a Counter must never go down), so each
worker restart would add files and make every scrape slower. Before each scrape, the
values of processes that are gone are added into one archive file per type and their files
deleted; the scrape lock makes that atomic for the only reader, this process.

Clients that connect and send nothing, or drip their request a byte at a time, must not take
every place from the scraper: the whole request head has a deadline from the accept (not per
``recv``), and the connections served at once are capped in total and per source.
"""

from __future__ import annotations

import contextlib
import glob
import io
import ipaddress
import logging
import os
import re
import signal
import socket
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .burst import BurstLog
from .signals import release_signals

log = logging.getLogger(__name__)

# Seconds from taking a connection until its request head (line and headers) is in, the
# whole of it (Go's ReadHeaderTimeout); then the connection is closed. Prometheus sends its
# request at once.
REQUEST_DEADLINE = 5.0
MAX_HEAD_BYTES = 8192  # Prometheus sends a few hundred
RESPONSE_TIMEOUT = 10.0  # seconds to send the whole answer (a sendall's timeout is total)
MAX_CONNECTIONS = 64  # connections served at once, a thread each; more are closed at once
MAX_PER_SOURCE = 4  # of them from one address (IPv6: one /64)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
POLL_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
STOP_TIMEOUT = 5.0
_PROCESS_FILE = re.compile(r"^(counter|histogram|gauge_[a-z]+)_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fold_dead(path: str) -> None:
    """Add the counters and histograms of processes that are gone into ``<type>_archive.db``
    and delete their files (and their gauges, as ``mark_process_dead`` does)."""
    dead: dict[str, list[str]] = defaultdict(list)
    for name in os.listdir(path):
        match = _PROCESS_FILE.match(name)
        if match and not _alive(int(match.group(2))):
            dead[match.group(1)].append(os.path.join(path, name))
    for kind in ("counter", "histogram"):
        if dead[kind]:
            _archive(path, kind, dead[kind])
    for files in dead.values():
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def _archive(path: str, kind: str, files: list[str]) -> None:
    """Replace the archive of ``kind`` with itself plus ``files``, in one rename.

    Bucket and sum values are stored per key, not cumulated, so adding them key by key is
    right for histograms as for counters.
    """
    archive = os.path.join(path, f"{kind}_archive.db")
    totals: dict[str, float] = defaultdict(float)
    for name in ([archive] if os.path.exists(archive) else []) + files:
        for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(name):
            totals[key] += value
    scratch = os.path.join(path, f"{kind}_archive.tmp")  # not *.db: never read by a scrape
    with contextlib.suppress(FileNotFoundError):
        os.unlink(scratch)
    merged = MmapedDict(scratch)
    try:
        for key, value in totals.items():
            merged.write_value(key, value, 0.0)
    finally:
        merged.close()
    os.replace(scratch, archive)


class FoldingCollector:
    """Folds away the files of dead processes, then adds up what is left."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def collect(self):
        with self._lock:
            fold_dead(self._path)
            files = glob.glob(os.path.join(self._path, "*.db"))
            return list(MultiProcessCollector.merge(files, accumulate=True))


class _Refused(Exception):
    """Why a connection is closed without an answer."""


def _read_head(sock: socket.socket, deadline: float) -> bytes:
    """The request head (line and headers) from ``sock``, whole by ``deadline``
    (``time.monotonic()``) and at most ``MAX_HEAD_BYTES``, else ``_Refused``.

    A socket timeout alone is per ``recv``: a client sending a byte every few seconds would
    hold its thread for ever. This is Go's ``ReadHeaderTimeout``: one deadline for it all.
    """
    head = b""
    while not _HEAD_END.search(head):
        if len(head) > MAX_HEAD_BYTES:
            raise _Refused(f"request head over {MAX_HEAD_BYTES} bytes")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Refused(f"request head not complete within {REQUEST_DEADLINE:.0f}s")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            continue  # the deadline check above says so
        if not chunk:
            raise _Refused("")  # gone before the end of its request: nothing to log
        head += chunk
    return head


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def handle(self) -> None:
        """One request (HTTP/1.0: no keep-alive) whose head must arrive by
        ``REQUEST_DEADLINE`` after the connection was taken; the answer is sent within
        ``RESPONSE_TIMEOUT``."""
        try:
            head = _read_head(self.connection, time.monotonic() + REQUEST_DEADLINE)
        except _Refused as exc:
            if str(exc):
                self.server.refusals.note(self.client_address[0],
                                          f"metrics connection closed: {exc}")
            return
        except OSError as exc:
            log.debug("metrics: %s: %s", self.client_address[0], exc)
            return
        self.rfile.close()
        self.rfile = io.BytesIO(head)
        self.connection.settimeout(RESPONSE_TIMEOUT)
        self.handle_one_request()

    def do_GET(self) -> None:
        if urlsplit(self.path).path != "/metrics":
            self.send_error(404, "Not Found: metrics are at /metrics")
            return
        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        # The request line comes from the client: %r keeps control bytes out of the log.
        log.debug("metrics: %s %r", self.address_string(), format % args)


def source_of(ip: str) -> str:
    """What the per-source cap counts: the address, or an IPv6 address's /64 (one client
    usually holds a whole /64)."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        address = address.ipv4_mapped
    return str(address)


class _Server(ThreadingHTTPServer):
    """HTTP on a socket the master bound, a thread per connection: at most
    ``MAX_CONNECTIONS`` at once, ``MAX_PER_SOURCE`` of them from one source, so that clients
    that send nothing cannot take every place from the scraper."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, registry: CollectorRegistry) -> None:
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.registry = registry
        self.timeout = POLL_SECONDS
        self.refusals = BurstLog(log)
        self._lock = threading.Lock()
        self._serving: Counter[str] = Counter()  # connections being served, per source
        self._total = 0

    def process_request(self, request, client_address) -> None:
        source = source_of(client_address[0])
        with self._lock:
            if self._total >= MAX_CONNECTIONS:
                why = f"{MAX_CONNECTIONS} connections served at once"
            elif self._serving[source] >= MAX_PER_SOURCE:
                why = f"{MAX_PER_SOURCE} connections from {source} served at once"
            else:
                why = ""
                self._serving[source] += 1
                self._total += 1
        if why:
            self.refusals.note(client_address[0], f"metrics connection refused: {why}")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            source = source_of(client_address[0])
            with self._lock:
                self._total -= 1
                self._serving[source] -= 1
                if not self._serving[source]:
                    del self._serving[source]


def serve(sock: socket.socket, path: str, master_pid: int) -> int:
    """Serve ``/metrics`` from the files in ``path`` until TERM or the master is gone."""
    stop: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, lambda number, _frame: stop.append(number))
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    release_signals()
    registry = CollectorRegistry()
    registry.register(FoldingCollector(path))
    server = _Server(sock, registry)
    host, port = sock.getsockname()[:2]
    log.info("metrics exporter %d serving http://%s:%d/metrics", os.getpid(), host, port)
    while not stop and os.getppid() == master_pid:
        server.handle_request()
        server.refusals.flush()
    server.server_close()
    return 0


class ExporterProcess:
    """The master's view of its exporter: the socket, the child's pid and its restarts."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock, self.path = sock, path
        self.pid: Optional[int] = None
        self._failures = 0
        self._started = self._next_start = 0.0

    def due(self) -> bool:
        """True if no exporter runs and the back-off after the last one's death is over."""
        return self.pid is None and time.monotonic() >= self._next_start

    def started(self, pid: int) -> None:
        self.pid = pid
        self._started = time.monotonic()
        log.info("started metrics exporter (pid %d)", pid)

    def reaped(self, pid: int, how: str) -> bool:
        """Note that ``pid`` exited; True if it was the exporter (started again later)."""
        if pid != self.pid:
            return False
        self.pid = None
        lived = time.monotonic() - self._started
        self._failures = self._failures + 1 if lived < 5.0 else 1
        delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** self._failures)
        self._next_start = time.monotonic() + delay
        log.error("metrics exporter (pid %d) exited (%s); restarting in %.1fs", pid, how, delay)
        return True

    def worker_exited(self, pid: int) -> None:
        """Drop the gauges of a dead worker at once, before a new process can take its pid:
        prometheus_client's documented step for each process that exits."""
        mark_process_dead(pid, self.path)

    def stop(self) -> None:
        """TERM the exporter and wait for it (KILL after ``STOP_TIMEOUT``)."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        try:
            while not os.waitpid(pid, os.WNOHANG)[0]:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    return
                time.sleep(0.05)
        except (ChildProcessError, ProcessLookupError):
            pass  # already reaped
