"""The metrics exporter: a child of the master that answers ``GET /metrics`` for Prometheus.

Why a process of its own: a scrape reads and adds up the files of every process, and an
HTTP client may be slow or hostile; the master must stay a small single-threaded select loop
that supervises, and a worker serving the endpoint would take it down whenever it is
recycled and put HTTP on the FTP IOLoop. The master binds the socket, forks this process
like a worker and starts it again if it dies (``children``).

It also keeps the multiprocess directory small. prometheus_client leaves the counter and
histogram files of every process that ever ran (a Counter must never go down), so each
worker restart would add files and make every scrape slower. Before each scrape, the
values of processes that are gone are added into one archive file per type and their files
deleted; the scrape lock makes that atomic for the only reader, this process.

Clients that connect and send nothing, or drip their request a byte at a time, must not take
every place from the scraper: ``httpserve`` bounds the time of a whole request and the
connections served at once, in total and per source.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import socket
import threading
from collections import defaultdict
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from ..config.model import Config
from .children import SupervisedChild
from .httpserve import BoundedHTTPServer, DeadlineHandler
from .httpserve import serve as serve_http

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64  # connections served at once, a thread each; more are closed at once
MAX_PER_SOURCE = 4  # of them from one address (IPv6: one /64)
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


class _Handler(DeadlineHandler):
    server: BoundedHTTPServer

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


def serve(sock: socket.socket, path: str, master_pid: int) -> int:
    """Serve ``/metrics`` from the files in ``path`` until TERM or the master is gone."""
    registry = CollectorRegistry()
    registry.register(FoldingCollector(path))
    server = BoundedHTTPServer(sock, _Handler, "metrics", MAX_CONNECTIONS, MAX_PER_SOURCE)
    server.registry = registry
    host, port = sock.getsockname()[:2]
    log.info("metrics exporter %d serving http://%s:%d/metrics", os.getpid(), host, port)
    return serve_http(server, master_pid)


class ExporterProcess(SupervisedChild):
    """The master's view of its exporter: the socket, the metrics directory, the child."""

    name = "metrics exporter"
    title = "cosftp: metrics exporter"
    log_name = "metrics"

    def __init__(self, sock: socket.socket, path: str) -> None:
        super().__init__(sock)
        self.path = path

    def worker_exited(self, pid: int) -> None:
        """Drop the gauges of a dead process (a worker, the events process) at once, before
        a new process can take its pid: prometheus_client's documented step for each
        process that exits."""
        mark_process_dead(pid, self.path)

    def serve(self, config: Config, master_pid: int) -> int:
        return serve(self.sock, self.path, master_pid)
