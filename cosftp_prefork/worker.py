"""One worker process: serves FTP sessions on the listening socket it inherited.

Everything per-process is built here, after fork: logging, COS clients (with their own HTTP
session), the part-upload thread pool and pyftpdlib's IOLoop. Each session runs in its own
thread (``ThreadedFTPServer``) so a slow COS call stalls only that session.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

from pyftpdlib.servers import ThreadedFTPServer
from setproctitle import setproctitle

from .config import Config
from .ftp import configure_handler
from .log import setup_logging
from .storage import BucketRegistry

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
PARENT_CHECK_SECONDS = 1.0


def _die_with_parent(master_pid: int) -> None:
    """Ask Linux to SIGTERM us when the master dies; the ppid poll covers other systems."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != master_pid:
        raise SystemExit(0)


def _stop(signum: int, frame) -> None:
    raise SystemExit(0)


class Worker:
    """A worker's state: its index, config and the server it runs."""

    def __init__(self, index: int, config: Config, sock: socket.socket, master_pid: int,
                 foreground: bool) -> None:
        self.index = index
        self.config = config
        self.sock = sock
        self.master_pid = master_pid
        self.foreground = foreground

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT or until the master is gone; return the exit status."""
        setproctitle(f"cosftp: worker {self.index}")
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, _stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _die_with_parent(self.master_pid)
        server_cfg = self.config.server
        setup_logging(server_cfg.log_level, server_cfg.log_dir, f"worker {self.index}",
                      self.foreground)
        threads = self.config.transfer.upload_thread_num
        buckets = BucketRegistry(pool_size=threads + 16)
        executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cos-part")
        try:
            server = self._make_server(buckets, executor)
            log.info("worker %d serving on %s", self.index, self.sock.getsockname())
            server.serve_forever(timeout=1.0)
        finally:
            executor.shutdown(wait=True)
            buckets.close()
            log.info("worker %d stopped", self.index)
        return 0

    def _make_server(self, buckets: BucketRegistry, executor) -> ThreadedFTPServer:
        handler = configure_handler(self.config, buckets, executor)
        server = ThreadedFTPServer(self.sock, handler)
        server.max_cons = self.config.server.max_connection_num
        server.max_cons_per_ip = self.config.server.max_connections_per_ip
        server.ioloop.call_every(PARENT_CHECK_SECONDS, self._check_parent)
        return server

    def _check_parent(self) -> None:
        if os.getppid() != self.master_pid:
            log.warning("worker %d: master %d is gone, exiting", self.index, self.master_pid)
            raise SystemExit(0)
