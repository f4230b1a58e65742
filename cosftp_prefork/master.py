"""The master process: binds the listening socket, forks workers and supervises them.

Modelled on gunicorn's arbiter: signal handlers only queue the signal and wake the loop through
a pipe; the loop dispatches to ``handle_<signal>`` methods. The master never serves FTP and
never talks to COS.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import time
from collections import deque
from typing import Optional

from setproctitle import setproctitle

from .config import Config
from .log import setup_logging
from .worker import Worker

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
LOOP_SECONDS = 1.0
FAST_FAILURE_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 30.0


def bind_listener(address: str, port: int, backlog: int = 128) -> socket.socket:
    """Return a listening TCP socket on ``address:port`` (IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def write_pid_file(path: str, pid: int) -> None:
    """Write ``pid`` to ``path`` atomically (temp file + rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{pid}.tmp"
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(f"{pid}\n")
    os.replace(tmp, path)


class WorkerSlot:
    """Book-keeping for one worker position: who runs it and how it has been failing."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid: Optional[int] = None
        self.started = 0.0
        self.fast_failures = 0
        self.next_start = 0.0

    def record_exit(self, now: float) -> float:
        """Note that the worker exited; return the back-off delay before the next start."""
        self.pid = None
        if now - self.started < FAST_FAILURE_SECONDS:
            self.fast_failures += 1
        else:
            self.fast_failures = 0
        delay = 0.0
        if self.fast_failures:
            delay = min(MAX_BACKOFF_SECONDS, 0.5 * (2 ** self.fast_failures))
        self.next_start = now + delay
        return delay


class Master:
    """Supervises ``worker_processes`` workers serving one config on one socket."""

    SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGCHLD", "SIGHUP")

    def __init__(self, config: Config, foreground: bool = True) -> None:
        self.config = config
        self.foreground = foreground
        self.pid = os.getpid()
        self.slots = [WorkerSlot(i) for i in range(1, config.server.worker_processes + 1)]
        self.stopping = False
        self._queue: deque[int] = deque()
        self._wake_r, self._wake_w = os.pipe()
        self.sock: Optional[socket.socket] = None
        self._stop_deadline = 0.0

    def run(self) -> int:
        """Serve until told to stop; return the process exit status."""
        server = self.config.server
        setup_logging(server.log_level, server.log_dir, "master", self.foreground)
        for warning in self.config.warnings:
            log.warning("config: %s", warning)
        network = self.config.network
        self.sock = bind_listener(network.listen_address, network.listen_port)
        write_pid_file(server.pid_file, self.pid)
        setproctitle(f"cosftp: master [{self.config.path}]")
        self._install_signals()
        log.info("master %d listening on %s:%d with %d workers", self.pid,
                 *self.sock.getsockname()[:2], len(self.slots))
        try:
            self._loop()
        finally:
            self._cleanup()
        return 0

    def _loop(self) -> None:
        while not (self.stopping and not self._running()):
            self._spawn_missing()
            signum = self._wait_for_signal()
            if signum is not None:
                handler = getattr(self, f"handle_{signal.Signals(signum).name[3:].lower()}")
                handler()
            if self.stopping and time.monotonic() > self._stop_deadline:
                self._kill_workers(signal.SIGKILL)

    # --- signals

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        for name in self.SIGNALS:
            signal.signal(getattr(signal, name), self._queue_signal)

    def _queue_signal(self, signum: int, frame) -> None:
        self._queue.append(signum)

    def _wait_for_signal(self) -> Optional[int]:
        if not self._queue:
            with contextlib.suppress(InterruptedError):
                select.select([self._wake_r], [], [], LOOP_SECONDS)
            self._drain_wakeup_pipe()
        return self._queue.popleft() if self._queue else None

    def _drain_wakeup_pipe(self) -> None:
        os.set_blocking(self._wake_r, False)
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def handle_term(self) -> None:
        """Fast stop: workers abort their transfers (no partial objects) and exit."""
        self._begin_stop("SIGTERM")

    handle_int = handle_term

    def handle_quit(self) -> None:
        self._begin_stop("SIGQUIT")

    def handle_hup(self) -> None:
        log.warning("SIGHUP: configuration reload is not implemented yet; ignoring")

    def handle_chld(self) -> None:
        self._reap()

    # --- workers

    def _begin_stop(self, why: str) -> None:
        if self.stopping:
            return
        log.info("%s: stopping %d workers", why, self._running())
        self.stopping = True
        self._stop_deadline = time.monotonic() + STOP_TIMEOUT
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._kill_workers(signal.SIGTERM)

    def _running(self) -> int:
        return sum(1 for slot in self.slots if slot.pid is not None)

    def _spawn_missing(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid is None and now >= slot.next_start:
                self._spawn(slot)

    def _spawn(self, slot: WorkerSlot) -> None:
        assert self.sock is not None
        pid = os.fork()
        if pid:
            slot.pid, slot.started = pid, time.monotonic()
            log.info("started worker %d (pid %d)", slot.index, pid)
            return
        os._exit(self._run_worker(slot.index))

    def _run_worker(self, index: int) -> int:
        signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)
        try:
            return Worker(index, self.config, self.sock, self.pid, self.foreground).run()
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 0
        except BaseException:
            log.exception("worker %d crashed", index)
            return 1

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            self._worker_exited(pid, status)

    def _worker_exited(self, pid: int, status: int) -> None:
        slot = next((s for s in self.slots if s.pid == pid), None)
        if slot is None:
            return
        delay = slot.record_exit(time.monotonic())
        if self.stopping:
            log.info("worker %d (pid %d) stopped", slot.index, pid)
            return
        log.error("worker %d (pid %d) exited unexpectedly (%s); restarting in %.1fs",
                  slot.index, pid, _describe_status(status), delay)

    def _kill_workers(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    def _cleanup(self) -> None:
        try:
            with open(self.config.server.pid_file, encoding="ascii") as handle:
                if handle.read().strip() == str(self.pid):
                    os.unlink(self.config.server.pid_file)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not remove pid file: %s", exc)
        log.info("master %d stopped", self.pid)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
