"""The master process: binds the listening sockets, forks workers and supervises them.

Modelled on gunicorn's arbiter: signal handlers only queue the signal and wake the loop
through a pipe; the loop dispatches to ``handle_<signal>`` methods, reaps and respawns
workers, finishes reloads and runs health checks. The master never serves FTP and never
talks to COS; with ``metrics_port`` set it also forks and supervises the metrics exporter
(:mod:`cosftp_prefork.server.exporter`), with ``admin_port`` the admin API
(:mod:`cosftp_prefork.admin`, imported in its forked child only), and runs the reloads the
admin API asks for through the shared state as it runs a HUP.

Reload (HUP) is nginx-like: the new file is validated first and an invalid one leaves
everything as it was. A valid one starts a new generation of workers on the same sockets
(new ones for an address that changed); the old generation is told to drain only once every
new worker serves, and if the new generation cannot start the master rolls back to the
old configuration, whose workers never stopped serving.

A worker that hangs (no heartbeat for worker_timeout, or not serving worker_boot_timeout
after its fork) is aborted as gunicorn does: SIGABRT, on which its faulthandler dumps every
thread's stack into a memfd the master made for it, then SIGKILL if it is still alive after
a grace period. The master logs the dump when it reaps the worker.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import select
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Optional

import psutil
from setproctitle import setproctitle

from .. import metrics
from ..config.hooks import HooksConfig
from ..config.model import Config, NetworkConfig
from ..config.settings import load_config
from ..errors import ConfigError
from ..safefiles import replace_file
from .adminproc import AdminProcess
from .children import SupervisedChild
from .eventsproc import EventsProcess, prepare_spool, spool_holds_events
from .exporter import ExporterProcess
from .files import check_files, hand_over_files, worker_files
from .logs import log_block, reopen_logging, setup_logging
from .metrics_dir import hand_over_own_files, metrics_dir
from .pidfile import master_title
from .privileges import Identity, describe_workers, drop_privileges, probe
from .scoreboard import (
    ABORTING,
    EXIT_BOOT_FAILURE,
    LISTEN_BACKLOG,
    RELOAD_FAILED,
    RELOAD_OK,
    RELOAD_RUNNING,
    STARTING,
    MasterStatus,
    SharedState,
    bans_path,
    load_bans,
    save_bans,
    state_path,
)
from .signals import fork_holding_signals
from .usage import usage_path

log = logging.getLogger(__name__)

FAST_STOP_TIMEOUT = 30.0
LOOP_SECONDS = 1.0
FAST_FAILURE_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 30.0
MAX_FAST_FAILURES = 5
RELOAD_READY_TIMEOUT = 30.0
FD_WARNING_RATIO = 0.8
ABORT_GRACE_SECONDS = 5.0  # from SIGABRT (faulthandler dumps the stacks) to SIGKILL
STACK_DUMP_LIMIT = 2**20
EXIT_CRASH_LOOP = 1
EXIT_CANNOT_START = 1
MAX_LOGGED_REJECTS = 10  # bad entries of a bans file logged one by one; then a count


def bind_listener(address: str, port: int, backlog: int = LISTEN_BACKLOG,
                  v6only: bool = False) -> socket.socket:
    """Return a listening TCP socket on ``address:port`` (IPv4 or IPv6; an IPv6 one also
    takes IPv4 connections unless ``v6only``, whatever the system default)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    try:
        sock.bind((address, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Listeners:
    """The listening sockets of one configuration, one per ``listen_address``: the FTP
    port (plain, and AUTH TLS when TLS is configured) and the implicit FTPS port."""

    ftp: tuple[socket.socket, ...]
    implicit_tls: tuple[socket.socket, ...] = ()

    def sockets(self) -> list[socket.socket]:
        return [*self.ftp, *self.implicit_tls]

    def close(self, keep: Optional[Listeners] = None) -> None:
        """Close every socket that ``keep`` does not also use."""
        kept = keep.sockets() if keep is not None else []
        for sock in self.sockets():
            if not any(sock is other for other in kept):
                sock.close()

    def ports(self) -> tuple[int, int]:
        """Return the FTP port and the implicit FTPS port (0: none)."""
        implicit = self.implicit_tls[0].getsockname()[1] if self.implicit_tls else 0
        return self.ftp[0].getsockname()[1], implicit

    def describe(self) -> str:
        """``address:port`` of each listener, the implicit FTPS ones marked."""
        parts = [_address(sock) for sock in self.ftp]
        parts += [f"{_address(sock)} (implicit FTPS)" for sock in self.implicit_tls]
        return ", ".join(parts)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_listeners(network: NetworkConfig, current: Optional[Listeners] = None) -> Listeners:
    """Return the listeners ``network`` asks for, reusing those of ``current`` that already
    listen where wanted. Raises ``OSError`` (having closed what it bound) if one cannot bind."""
    # "::" listed with IPv4 addresses must leave IPv4 to them.
    v6only = any(":" not in address for address in network.listen_addresses)
    kept = current.sockets() if current else []
    bound: list[socket.socket] = []
    try:
        ftp = _bind_all(network.listen_addresses, network.listen_port,
                        current.ftp if current else (), v6only, bound)
        implicit = _bind_all(network.listen_addresses, network.implicit_tls_port,
                             current.implicit_tls if current else (), v6only, bound) \
            if network.implicit_tls_port else ()
    except OSError:
        for sock in bound:
            if not any(sock is other for other in kept):
                sock.close()
        raise
    return Listeners(ftp, implicit)


def _bind_all(addresses: tuple[str, ...], port: int, current: tuple[socket.socket, ...],
              v6only: bool, bound: list[socket.socket]) -> tuple[socket.socket, ...]:
    """One listener per address on ``port`` (0: the port the first one gets), appended to
    ``bound`` as they are made."""
    for address in addresses:
        sock = _reuse_or_bind(address, port, current, v6only)
        bound.append(sock)
        port = port or sock.getsockname()[1]
    return tuple(bound[-len(addresses):])


def _reuse_or_bind(address: str, port: int, current: tuple[socket.socket, ...],
                   v6only: bool) -> socket.socket:
    """Return the socket of ``current`` that listens on ``address:port`` (port 0: any),
    else a new listener."""
    for sock in current:
        host, actual = sock.getsockname()[:2]
        if host == address and port in (0, actual):
            return sock
    return bind_listener(address, port, v6only=v6only)


def write_pid_file(path: str, pid: int) -> None:
    """Write ``pid`` to ``path`` atomically (a new file renamed over it: a link there is
    replaced, not followed)."""
    replace_file(path, f"{pid}\n".encode("ascii"), 0o644)


@dataclass
class Abort:
    """A worker being aborted: sent SIGABRT (its faulthandler dumps every thread's stack),
    to be sent SIGKILL at ``kill_at`` if still alive."""

    why: str
    boot: bool  # it never served: a failure to start, not a crash
    kill_at: float
    killed: bool = False


@dataclass
class WorkerProc:
    """What the master knows about one forked worker."""

    pid: int
    index: int
    generation: int
    slot: int
    started: float
    stack_fd: int  # a memfd the worker's faulthandler writes to; read back when it exits
    draining: bool = False
    abort: Optional[Abort] = None


@dataclass
class Backoff:
    """Fast-failure book-keeping for one worker position."""

    fast_failures: int = 0
    next_start: float = 0.0

    def record_exit(self, lived: float, now: float) -> float:
        """Note an unexpected exit after ``lived`` seconds; return the delay before restart."""
        self.fast_failures = self.fast_failures + 1 if lived < FAST_FAILURE_SECONDS else 0
        delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** self.fast_failures) if self.fast_failures \
            else 0.0
        self.next_start = now + delay
        return delay


@dataclass
class PendingReload:
    """A new generation that must prove itself before the old one drains."""

    old_config: Config
    old_generation: int
    old_listeners: Optional[Listeners]  # set if the new generation listens elsewhere
    deadline: float
    draining: Optional[list[int]] = None  # old pids told to drain, once the new ones serve


class Master:
    """Supervises the workers serving one config on its listening sockets."""

    SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGTTIN", "SIGTTOU",
               "SIGCHLD")

    def __init__(self, config: Config, foreground: bool = True,
                 identity: Optional[Identity] = None) -> None:
        self.config = config
        self.foreground = foreground
        # Who the workers and the exporter become (None: the master's user); set at start,
        # kept across reloads (the files and the metrics directory are that user's).
        self.identity = identity
        self.owner = identity.uid if identity is not None else None
        self.pid = os.getpid()
        self.started = time.time()
        self.generation = 1
        self.num_workers = config.server.worker_processes
        self.workers: dict[int, WorkerProc] = {}
        self.backoff: dict[int, Backoff] = {}
        self.reload: Optional[PendingReload] = None
        self.reloads = 0
        self.reload_result = 0
        self.stopping = False
        self.served = False  # a worker has served since the master started
        self.exit_status = 0
        self.listeners: Optional[Listeners] = None
        self.state: Optional[SharedState] = None
        self.exporter: Optional[ExporterProcess] = None
        self.admin: Optional[AdminProcess] = None
        self._reload_taken = 0  # the last reload request of the admin API run
        self.events: Optional[EventsProcess] = None
        self._stop_deadline = 0.0
        self._graceful = False  # stopping on QUIT: a TERM may still cut it short
        self._next_health_check = 0.0
        self._saved_ban_epoch = 0
        self._queue: deque[int] = deque()
        self._wake_r, self._wake_w = os.pipe()

    # --- life cycle

    def run(self) -> int:
        """Serve until told to stop; return the process exit status."""
        self._setup_logging()
        for warning in self.config.warnings:
            log.warning("config: %s", warning)
        workers_root = self.identity is None and os.geteuid() == 0  # run_as_root
        log.log(logging.WARNING if workers_root else logging.INFO, "%s",
                describe_workers(self.identity))
        problem = self._probe_workers(self.config)
        if problem:
            log.critical("cannot start: %s", problem)
            return EXIT_CANNOT_START
        try:
            self.listeners = bind_listeners(self.config.network)
        except OSError as exc:
            network = self.config.network
            log.critical("cannot listen on %s port %d%s: %s", ", ".join(network.listen_addresses),
                         network.listen_port, f" or {network.implicit_tls_port}"
                         if network.implicit_tls_port else "", exc)
            return EXIT_CANNOT_START
        if not (self._bind_helpers() and self._write_own_files() and self._prepare_events()):
            self._close_listeners()
            return EXIT_CANNOT_START
        self._install_signals()
        log.info("master %d listening on %s with %d workers", self.pid,
                 self.listeners.describe(), self.num_workers)
        log.info("%s", tls_summary(self.config))
        try:
            self._loop()
        finally:
            self._cleanup()
        return self.exit_status

    def _loop(self) -> None:
        while not (self.stopping and not self.workers):
            self._spawn_missing()
            self._spawn_children()
            signum = self._wait_for_signal()
            if signum is not None:
                name = signal.Signals(signum).name[3:].lower()
                getattr(self, f"handle_{name}")()
            self._take_reload_request()
            self._note_serving()
            self._reap()
            self._advance_reload()
            self._health_check()
            self._save_bans()
            if self.stopping and time.monotonic() > self._stop_deadline:
                for worker in list(self.workers.values()):
                    if worker.abort is None:
                        self._abort(worker, "did not stop in time")
            self._kill_overdue()

    def _bind_helpers(self) -> bool:
        """Bind the ports of the metrics exporter and the admin API, those configured;
        False (logged, nothing left bound) if one cannot."""
        operator, admin = self.config.operator, self.config.admin
        bound: dict[str, socket.socket] = {}
        for what, address, port in (("metrics", operator.metrics_address,
                                     operator.metrics_port),
                                    ("the admin API", admin.address, admin.port)):
            if not port:
                continue
            try:
                bound[what] = bind_listener(address, port)
            except OSError as exc:
                log.critical("cannot listen for %s on %s port %d: %s", what, address, port, exc)
                for sock in bound.values():
                    sock.close()
                return False
        if "metrics" in bound:
            self.exporter = ExporterProcess(bound["metrics"],
                                            metrics_dir(self.config.server.pid_file))
            hand_over_own_files(self.exporter.path, self.identity)
        if "the admin API" in bound:
            self.admin = AdminProcess(bound["the admin API"], lambda: self.state)
        return True

    def _probe_workers(self, config: Config) -> Optional[str]:
        """What keeps the workers of ``config`` from running as their user, if anything
        (``privileges.probe``: run once before the first worker and at each reload)."""
        if self.identity is None:
            return None
        server = self.config.server  # metrics settings and pid file: those of the start
        directories = [metrics_dir(server.pid_file)] if self.config.operator.metrics_port \
            else []
        return probe(self.identity, worker_files(config), directories, load_worker)

    def _write_own_files(self) -> bool:
        """Create the state file, put the saved bans back, write the pid file; False (logged)
        if one cannot be written (``cosftpctl run`` checked them, but that was before)."""
        pid_file = self.config.server.pid_file
        try:
            self.state = SharedState.create(state_path(pid_file))
            self._restore_bans()
            self._publish()  # cosftpctl knows its master by the title: set before the pid file
            write_pid_file(pid_file, self.pid)
        except OSError as exc:
            log.critical("cannot start: %s", exc)
            return False
        return True

    def _prepare_events(self, config: Optional[Config] = None) -> bool:
        """Run an events process if ``config`` (default: the running one) sends events or
        the spool still holds some, with its spool prepared (``eventsproc``); False
        (logged) if the spool is unusable."""
        config = config or self.config
        if self.events is not None or not (config.events_enabled or
                                           spool_holds_events(config.hooks.spool_dir)):
            return True
        try:
            prepare_spool(config.hooks, self.identity)
        except OSError as exc:
            log.critical("cannot use the event spool %s: %s", config.hooks.spool_dir, exc)
            return False
        self.events = EventsProcess(self._reopen_child_logging)
        return True

    def _children(self) -> list[SupervisedChild]:
        return [child for child in (self.exporter, self.admin, self.events)
                if child is not None]

    def _spawn_children(self) -> None:
        """Fork the metrics exporter, the admin API and the events process when one is due
        (not running)."""
        for child in self._children():
            if self.stopping or not child.due():
                continue
            pid = fork_holding_signals()
            if pid == 0:
                os._exit(self._run_child(child))
            child.started(pid)

    def _run_child(self, child: SupervisedChild) -> int:
        """In the forked child: become the workers' user, log as the child, serve."""
        self._leave_master(keep=child)
        self._close_listeners()  # no helper serves FTP
        try:
            drop_privileges(self.identity)  # before it reads a request or runs a command
        except OSError as exc:
            log.critical("%s cannot drop privileges: %s", child.name, exc)
            return 1
        setup_logging(self.config.server.log_level, self.config.server.log_dir, child.log_name,
                      self.foreground)
        setproctitle(f"{child.title} [{self.config.path}]")
        try:
            return child.serve(self.config, self.pid)
        except BaseException:
            log.exception("%s crashed", child.name)
            return 1

    def _reopen_child_logging(self) -> None:
        """In the events process, on USR1: reopen its log file (after logrotate)."""
        server = self.config.server
        reopen_logging(server.log_level, server.log_dir, "events", self.foreground)

    def _leave_master(self, keep: Optional[SupervisedChild] = None) -> None:
        """In a child just forked: drop the master's signal wake-up pipe, the workers'
        stack dump files and the sockets of the helper processes but ``keep``'s."""
        signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for worker in self.workers.values():
            os.close(worker.stack_fd)
        for child in self._children():
            if child is not keep:
                child.close()

    def _setup_logging(self) -> None:
        server = self.config.server
        setup_logging(server.log_level, server.log_dir, "master", self.foreground, self.owner)

    def _publish(self) -> None:
        """Refresh the shared header and the process title."""
        assert self.state is not None
        ftp_port, implicit_port = self.listeners.ports() if self.listeners else (0, 0)
        self.state.write_header(MasterStatus(
            self.pid, self.generation, self.started, self.num_workers, self.config.path,
            self.reloads, self.reload_result, ftp_port, implicit_port,
            self.config.network.tls is not None))
        setproctitle(f"{master_title(self.config.path)} gen={self.generation} "
                     f"workers={len(self._current())}")

    # --- signals

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w)
        for name in self.SIGNALS:
            signal.signal(getattr(signal, name), self._queue_signal)

    def _queue_signal(self, signum: int, frame) -> None:
        self._queue.append(signum)

    def _wait_for_signal(self) -> Optional[int]:
        if not self._queue:
            with contextlib.suppress(InterruptedError):
                select.select([self._wake_r], [], [], LOOP_SECONDS)
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        return self._queue.popleft() if self._queue else None

    def handle_term(self) -> None:
        """Fast stop: workers end their transfers (426; uploads are parked, no partial
        objects), tell every client 421 and exit."""
        self._begin_stop(signal.SIGTERM, FAST_STOP_TIMEOUT)

    handle_int = handle_term

    def handle_quit(self) -> None:
        """Graceful stop: stop accepting, let transfers in flight finish (each worker stops
        once it has none, at most graceful_timeout), tell idle sessions 421."""
        self._begin_stop(signal.SIGQUIT, self.config.server.graceful_timeout + 10.0,
                         graceful=True)

    def handle_hup(self) -> None:
        """Reload the configuration file; keep the old one if the new one is unusable."""
        assert self.state is not None
        self.reloads += 1
        try:
            self._start_reload()
            self.state.write_reload_error("")
        except (ConfigError, OSError) as exc:
            log.error("reload failed, still serving the previous configuration: %s", exc)
            self.reload_result = RELOAD_FAILED
            self.state.write_reload_error(str(exc))
            metrics.RELOADS.labels("failed").inc()
        self._publish()

    def _take_reload_request(self) -> None:
        """Run the reload the admin API asked for, if any, as a HUP; then say it was taken
        (after ``_publish``: the API reads the outcome once it sees that)."""
        asked = self.state.reload_asked() if self.state is not None else 0
        if asked == self._reload_taken or self.stopping:
            return
        log.info("reload asked for by the admin API")
        self._reload_taken = asked
        self.handle_hup()
        self.state.note_reload_taken(asked)

    def handle_usr1(self) -> None:
        """Reopen log files (after logrotate) here and in every worker."""
        server = self.config.server
        reopen_logging(server.log_level, server.log_dir, "master", self.foreground, self.owner)
        try:
            hand_over_files(self.config, self.owner)  # made again, the workers' own
        except OSError as exc:
            log.error("could not prepare the log files for the workers: %s", exc)
        self._signal_workers(signal.SIGUSR1, self.workers.values())
        if self.events is not None:
            self.events.signal(signal.SIGUSR1)

    def handle_ttin(self) -> None:
        self.num_workers += 1
        log.info("SIGTTIN: %d workers", self.num_workers)
        self._publish()

    def handle_ttou(self) -> None:
        if self.num_workers <= 1:
            return
        self.num_workers -= 1
        log.info("SIGTTOU: %d workers", self.num_workers)
        self._drain([w for w in self._current() if w.index > self.num_workers])
        self._publish()

    def handle_chld(self) -> None:
        """Reaping happens on every loop turn; the signal only wakes the loop."""

    # --- stopping

    def _begin_stop(self, signum: int, timeout: float, graceful: bool = False) -> None:
        """Stop on ``signum``: close the listeners and tell every worker (USR2 for a graceful
        stop: finish the transfers in flight). A fast stop also cuts a graceful one short."""
        if self.stopping and (graceful or not self._graceful):
            return
        log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self.workers))
        self.stopping, self._graceful = True, graceful
        now = time.monotonic()
        self._stop_deadline = min(self._stop_deadline or now + timeout, now + timeout)
        self._close_listeners()
        self._signal_workers(signal.SIGUSR2 if graceful else signum, self.workers.values())

    def _close_listeners(self) -> None:
        for listeners in (self.listeners, self.reload.old_listeners if self.reload else None):
            if listeners is not None:
                listeners.close()
        self.listeners = None

    def _cleanup(self) -> None:
        self._close_listeners()
        self._save_bans(force=True)
        for child in self._children():
            child.stop()
            child.close()
        server = self.config.server
        try:
            with open(server.pid_file, encoding="ascii") as handle:
                if handle.read().strip() == str(self.pid):
                    os.unlink(server.pid_file)
                    os.unlink(state_path(server.pid_file))
                    os.unlink(usage_path(state_path(server.pid_file)))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not remove pid file: %s", exc)
        log.info("master %d stopped", self.pid)

    # --- bans: kept across stop/start in <pid file>.bans

    def _restore_bans(self) -> None:
        """Put back the bans saved at the last stop: every valid entry, each bad one logged
        (a file that is no bans file at all is kept aside as ``.invalid``, for a look)."""
        assert self.state is not None
        path = bans_path(self.config.server.pid_file)
        try:
            saved = load_bans(path)
        except ValueError as exc:
            try:
                os.replace(path, f"{path}.invalid")
                kept = f"moved it to {path}.invalid"
            except OSError as move:
                kept = f"could not move it aside: {move}"
            log.error("ignoring the saved bans in %s: %s; %s", path, exc, kept)
            return
        for problem in saved.rejected[:MAX_LOGGED_REJECTS]:
            log.error("bans file %s: ignored %s", path, problem)
        if len(saved.rejected) > MAX_LOGGED_REJECTS:
            log.error("bans file %s: ignored %d more bad entries", path,
                      len(saved.rejected) - MAX_LOGGED_REJECTS)
        restored = self.state.restore_bans(saved.bans, time.time())
        self._saved_ban_epoch = self.state.ban_epoch()
        self.state.note_bans_saved(self._saved_ban_epoch)
        if restored:
            log.info("restored %d bans from %s", restored, path)

    def _save_bans(self, force: bool = False) -> None:
        """Save the running bans when the table changed (a worker started a ban, ``cosftpctl
        unban`` lifted one) or at exit, and say which change is saved: ``unban`` waits for
        it, so that a stop right after cannot bring a lifted ban back."""
        if self.state is None:
            return
        epoch = self.state.ban_epoch()  # read before the table: a change after it saves again
        if not force and epoch == self._saved_ban_epoch:
            return
        self._saved_ban_epoch = epoch
        path = bans_path(self.config.server.pid_file)
        try:
            save_bans(path, self.state.bans(time.time()))
        except OSError as exc:
            log.error("could not save the bans to %s: %s", path, exc)
            return
        self.state.note_bans_saved(epoch)

    # --- workers

    def _current(self) -> list[WorkerProc]:
        return [w for w in self.workers.values()
                if w.generation == self.generation and not w.draining]

    def _spawn_missing(self) -> None:
        if self.stopping:
            return
        running = {w.index for w in self._current()}
        now = time.monotonic()
        for index in range(1, self.num_workers + 1):
            backoff = self.backoff.setdefault(index, Backoff())
            if index not in running and now >= backoff.next_start:
                self._spawn(index)

    def _spawn(self, index: int) -> None:
        assert self.listeners is not None and self.state is not None
        slot = self.state.free_slot()
        stack_fd = os.memfd_create(f"cosftp-worker-{index}-stacks")
        try:
            pid = fork_holding_signals()
        except OSError:
            os.close(stack_fd)
            raise
        if pid == 0:
            os._exit(self._run_worker(index, slot, stack_fd))
        now = time.monotonic()
        self.workers[pid] = WorkerProc(pid, index, self.generation, slot, now, stack_fd)
        self.state.write_slot(slot, pid, index, self.generation, STARTING, time.time(), 0.0,
                              (0, 0, 0, 0, 0))
        log.info("started worker %d gen %d (pid %d)", index, self.generation, pid)
        self._publish()

    def _run_worker(self, index: int, slot: int, stack_fd: int) -> int:
        self._leave_master()
        assert self.listeners is not None and self.state is not None
        if self.reload is not None and self.reload.old_listeners is not None:
            # A new worker must not keep the old ports open.
            self.reload.old_listeners.close(keep=self.listeners)
        try:
            # First: nothing a client sends is read with the master's privileges.
            drop_privileges(self.identity)
        except OSError as exc:
            log.critical("worker %d cannot drop privileges: %s", index, exc)
            return EXIT_BOOT_FAILURE
        metrics.forked()
        try:
            worker = load_worker()(index, self.generation, slot, self.config,
                                   self.listeners.ftp, self.state, self.pid, self.foreground,
                                   self.listeners.implicit_tls, stack_fd)
        except ImportError as exc:
            log.critical("worker %d cannot import the server's code: %r", index, exc)
            return EXIT_BOOT_FAILURE
        try:
            return worker.run()
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 0
        except BaseException:
            log.exception("worker %d crashed", index)
            return 1

    def _note_serving(self) -> None:
        if not self.served:
            assert self.state is not None
            self.served = any(w.state == "serving" for w in self.state.workers())
            if self.served:
                log.info("master %d: workers serving", self.pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._worker_exited(worker, status)
                continue
            for child in self._children():
                if child.reaped(pid, _describe_status(status)):
                    if self.exporter is not None and child is not self.exporter:
                        self.exporter.worker_exited(pid)
                    break

    def _worker_exited(self, worker: WorkerProc, status: int) -> None:
        assert self.state is not None
        self.state.clear_slot(worker.slot)
        self.state.release_all(worker.pid)
        if self.exporter is not None:
            self.exporter.worker_exited(worker.pid)
        self._publish()
        how = _describe_status(status)
        self._report_stacks(worker, how)
        if self.stopping or worker.draining or worker.generation != self.generation:
            log.info("worker %d gen %d (pid %d) exited (%s)", worker.index, worker.generation,
                     worker.pid, how)
            return
        boot_failure = os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_BOOT_FAILURE
        boot_hang = worker.abort is not None and worker.abort.boot
        if (boot_failure or boot_hang) and self.reload is not None:
            self._roll_back("a worker of the new generation could not start")
            return
        if boot_failure and not self.served:
            # Nothing serves yet and retrying will not help: fail now, with the worker's
            # reason just above in the log, rather than after a crash loop.
            log.critical("worker %d cannot start with this configuration; stopping the server",
                         worker.index)
            self.exit_status = EXIT_CANNOT_START
            self.handle_term()
            return
        backoff = self.backoff.setdefault(worker.index, Backoff())
        # A worker that hung before serving failed to start, however long it hung.
        lived = 0.0 if boot_hang else time.monotonic() - worker.started
        delay = backoff.record_exit(lived, time.monotonic())
        log.error("worker %d (pid %d) exited unexpectedly (%s); restarting in %.1fs",
                  worker.index, worker.pid, how, delay)
        metrics.WORKER_RESTARTS.labels("exited").inc()
        if backoff.fast_failures >= MAX_FAST_FAILURES:
            log.critical("worker %d failed %d times in a row right after starting; stopping "
                         "the server (see the worker errors above)", worker.index,
                         backoff.fast_failures)
            self.exit_status = EXIT_CRASH_LOOP
            self.handle_term()

    def _report_stacks(self, worker: WorkerProc, how: str) -> None:
        """Log the stack dump the worker's faulthandler left (on SIGABRT, or a crash such as
        SIGSEGV), or that an aborted worker left none."""
        try:
            size = os.fstat(worker.stack_fd).st_size
            dump = os.pread(worker.stack_fd, min(size, STACK_DUMP_LIMIT), 0)
        finally:
            os.close(worker.stack_fd)
        text = dump.decode("utf-8", "replace").strip()
        if text:
            log_block(log, logging.ERROR, text,
                      "worker %d (pid %d) %s; the stacks of its threads when it died:",
                      worker.index, worker.pid, how)
        elif worker.abort is not None:
            log.error("worker %d (pid %d) %s without a stack dump: it could not run its "
                      "SIGABRT handler (stopped, or stuck in the kernel)", worker.index,
                      worker.pid, how)

    def _abort(self, worker: WorkerProc, why: str, boot: bool = False) -> None:
        """SIGABRT a hung worker (its faulthandler dumps its stacks), SIGKILL it later."""
        assert self.state is not None
        self._signal_workers(signal.SIGABRT, [worker])
        worker.abort = Abort(why, boot, time.monotonic() + ABORT_GRACE_SECONDS)
        self.state.set_state(worker.slot, ABORTING)
        log.error("worker %d (pid %d) %s; sent SIGABRT: the stacks of its threads follow in "
                  "this log once it exits (SIGKILL in %.0fs)", worker.index, worker.pid, why,
                  ABORT_GRACE_SECONDS)

    def _kill_overdue(self) -> None:
        """SIGKILL aborted workers that outlived their grace period."""
        now = time.monotonic()
        for worker in list(self.workers.values()):
            abort = worker.abort
            if abort is not None and not abort.killed and now > abort.kill_at:
                abort.killed = True
                log.error("worker %d (pid %d) still running %.0fs after SIGABRT; sending "
                          "SIGKILL", worker.index, worker.pid, ABORT_GRACE_SECONDS)
                self._signal_workers(signal.SIGKILL, [worker])

    def _drain(self, workers: list[WorkerProc]) -> None:
        """Replace ``workers`` (if still wanted) first, then tell them to drain and exit."""
        for worker in workers:
            worker.draining = True
        self._spawn_missing()
        self._signal_workers(signal.SIGQUIT, workers)

    def _signal_workers(self, signum: int, workers) -> None:
        for worker in list(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)

    # --- reload

    def _start_reload(self) -> None:
        if self.reload is not None:
            raise ConfigError("a reload is already in progress", self.config.path)
        new = self._load_new_config()
        assert self.listeners is not None
        old_listeners = None
        listeners = bind_listeners(new.network, self.listeners)
        if listeners != self.listeners:
            old_listeners, self.listeners = self.listeners, listeners
            log.info("reload: now listening on %s", listeners.describe())
        for warning in new.warnings:
            log.warning("config: %s", warning)
        if (new.operator.metrics_address, new.operator.metrics_port) != \
                (self.config.operator.metrics_address, self.config.operator.metrics_port):
            log.warning("reload: metrics_address and metrics_port take effect at the next "
                        "start; the metrics endpoint stays as it was")
        if (new.admin.address, new.admin.port) != (self.config.admin.address,
                                                   self.config.admin.port):
            log.warning("reload: admin_address and admin_port take effect at the next start; "
                        "the admin API stays where it was")
        log.info("reload: %s", tls_summary(new))
        self.reload = PendingReload(self.config, self.generation, old_listeners,
                                    time.monotonic() + RELOAD_READY_TIMEOUT)
        self._follow_hooks(new.hooks)
        self.config = new
        self.generation += 1
        self.num_workers = new.server.worker_processes
        self.backoff = {}
        self.reload_result = RELOAD_RUNNING
        log.info("reload: starting generation %d with %d workers", self.generation,
                 self.num_workers)

    def _load_new_config(self) -> Config:
        """The configuration file as a reload uses it, its files ready for the workers;
        raises ``ConfigError`` or ``OSError`` (nothing changed) if it cannot be used."""
        new = load_config(self.config.path)
        if new.run_as != self.config.run_as:
            log.warning("reload: run_as_user, run_as_group and run_as_root take effect at the "
                        "next start; still: %s", describe_workers(self.identity))
        spool = self.config.hooks.spool_dir
        if new.hooks.spool_dir != spool:
            log.warning("reload: event_spool_dir takes effect at the next start; events still "
                        "go to %s", spool)
        # The pid and state files stay where cosftpctl found them at start, the workers'
        # user stays the one their files and metrics directory were given to, and the spool
        # stays where the events process reads it.
        new = replace(new, server=replace(new.server, pid_file=self.config.server.pid_file),
                      run_as=self.config.run_as, hooks=replace(new.hooks, spool_dir=spool))
        check_files(new, self.identity.gid if self.identity else None)  # a planted link:
        hand_over_files(new, self.owner)  # refused, nothing changed
        problem = self._probe_workers(new)
        if problem:
            raise ConfigError(problem, new.path)
        if not self._prepare_events(new):
            raise OSError(f"the event spool {spool} cannot be used")
        return new

    def _follow_hooks(self, hooks: HooksConfig) -> None:
        """Replace the events process if what it does changes with ``hooks`` (retry age,
        spool bound, what a full spool does); routes are in the events themselves."""
        if self.events is not None and replace(hooks, server=self.config.hooks.server) != \
                self.config.hooks:
            log.info("reload: [HOOKS] changed; replacing the events process")
            self.events.replace()

    def _advance_reload(self) -> None:
        """Drain the old generation once every new worker serves, and call the reload done
        once the old workers stopped accepting; roll back if the new ones never serve."""
        pending = self.reload
        if pending is None or self.stopping:
            return
        assert self.state is not None
        states = {s.pid: s.state for s in self.state.workers() if s.heartbeat}
        if pending.draining is not None:
            if all(states.get(pid, "draining") == "draining" for pid in pending.draining):
                self.reload = None
                self.reload_result = RELOAD_OK
                log.info("reload: generation %d done", self.generation)
                metrics.RELOADS.labels("ok").inc()
                self._publish()
                if self.admin is not None:
                    self.admin.retire()  # a new one, with the new tokens and accounts
            return
        current = self._current()
        if len(current) >= self.num_workers and all(states.get(w.pid) == "serving"
                                                     for w in current):
            old = [w for w in self.workers.values()
                   if w.generation != self.generation and not w.draining]
            log.info("reload: generation %d serving; draining %d old workers", self.generation,
                     len(old))
            self._drain(old)
            pending.draining = [w.pid for w in old]
            if pending.old_listeners is not None:
                pending.old_listeners.close(keep=self.listeners)
                pending.old_listeners = None
        elif time.monotonic() > pending.deadline:
            self._roll_back(f"generation {self.generation} not serving after "
                            f"{RELOAD_READY_TIMEOUT:.0f}s")

    def _roll_back(self, why: str) -> None:
        pending = self.reload
        assert pending is not None
        log.error("reload failed (%s); rolling back to generation %d", why,
                  pending.old_generation)
        failed = [w for w in self.workers.values() if w.generation == self.generation]
        self._signal_workers(signal.SIGTERM, failed)
        if pending.old_listeners is not None:
            assert self.listeners is not None
            self.listeners.close(keep=pending.old_listeners)
            self.listeners = pending.old_listeners
        self._follow_hooks(pending.old_config.hooks)
        self.config, self.generation = pending.old_config, pending.old_generation
        self.num_workers = self.config.server.worker_processes
        self.reload = None
        self.reload_result = RELOAD_FAILED
        self.state.write_reload_error(f"rolled back: {why}")
        metrics.RELOADS.labels("failed").inc()
        self._publish()

    # --- health

    def _health_check(self) -> None:
        now = time.monotonic()
        if now < self._next_health_check or self.stopping:
            return
        self._next_health_check = now + self.config.server.health_check_interval
        assert self.state is not None
        slots = {s.pid: s for s in self.state.workers()}
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        for worker in list(self.workers.values()):
            status = slots.get(worker.pid)
            if status is None or worker.abort is not None:
                continue
            if status.state == "starting":
                self._check_boot(worker)
            elif self._check_heartbeat(worker, status.heartbeat):
                self._check_resources(worker, fd_limit)

    def _check_boot(self, worker: WorkerProc) -> None:
        """Abort a worker not serving within worker_boot_timeout of its start (it may hang
        before it ever writes a heartbeat)."""
        timeout = self.config.server.worker_boot_timeout
        booting = time.monotonic() - worker.started
        if timeout and booting > timeout:
            self._abort(worker, f"not serving {booting:.0f}s after its start "
                        f"(worker_boot_timeout={timeout})", boot=True)

    def _check_heartbeat(self, worker: WorkerProc, heartbeat: float) -> bool:
        """Abort a worker whose heartbeat is older than worker_timeout; return whether it
        is alive."""
        timeout = self.config.server.worker_timeout
        age = time.time() - heartbeat if heartbeat else 0.0
        if timeout and age > timeout:
            self._abort(worker, f"sent no heartbeat for {age:.0f}s (worker_timeout={timeout})")
            return False
        return True

    def _check_resources(self, worker: WorkerProc, fd_limit: int) -> None:
        server = self.config.server
        try:
            proc = psutil.Process(worker.pid)
            rss_mib = proc.memory_info().rss / 2**20
            fds = proc.num_fds()
        except psutil.Error:
            return
        if server.worker_max_rss and rss_mib > server.worker_max_rss and not worker.draining:
            log.warning("worker %d (pid %d) uses %.0f MiB RSS (worker_max_rss=%d); recycling "
                        "it gracefully", worker.index, worker.pid, rss_mib, server.worker_max_rss)
            metrics.WORKER_RESTARTS.labels("recycled").inc()
            self._drain([worker])
        if fds > FD_WARNING_RATIO * fd_limit:
            log.warning("worker %d (pid %d) has %d open files of a limit of %d", worker.index,
                        worker.pid, fds, fd_limit)


def load_worker() -> type:
    """Import the worker's stack, in a forked child only (a worker, or the probe of
    ``privileges``): the master never loads pyftpdlib or the COS SDK, so the workers of a
    reload run the code installed at that time."""
    from .worker import Worker

    return Worker


def tls_summary(config: Config) -> str:
    """One line on FTPS for the log: off, or the certificate and who must use TLS."""
    network = config.network
    if network.tls is None:
        return "TLS: off (no [NETWORK] tls_certfile)"
    implicit = (f"implicit FTPS on port {network.implicit_tls_port}"
                if network.implicit_tls_port else "no implicit FTPS port")
    required = [a.user for a in config.accounts if a.tls_required]
    return (f"TLS: AUTH TLS on port {network.listen_port}, {implicit}; certificate "
            f"{network.tls.certfile} ({network.tls.subject}); TLS required for: "
            f"{', '.join(required) or 'nobody'}")


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"

