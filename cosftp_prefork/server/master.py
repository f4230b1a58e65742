"""The master process: binds the listening sockets, forks workers and supervises them.

Modelled on gunicorn's arbiter: signal handlers only queue the signal and wake the loop
through a pipe (``signals.SignalQueue``); the loop dispatches to ``handle_<signal>``
methods (the signal table: ``Master.SIGNALS``), reaps and respawns
workers, moves reloads on and runs health checks. The master never serves FTP and never
talks to COS. Its parts, module by module:

- ``listeners``: the listening sockets, kept across reloads where they stay the same;
- ``workers``: what it knows of each worker, their back-off, SIGABRT and SIGKILL, the
  stacks a hung worker dumped; ``health``: the checks that find a hung or bloated worker;
- ``reload``: reading the file for a reload (HUP, or the admin API's request through the
  shared state), the reload in progress, and the steps that start it, move it on and
  roll it back (``ReloadSequence``, which this class inherits);
- ``helpers``: the metrics exporter (``metrics_port``), the admin API (``admin_port``, the
  API imported in its forked child only) and the events process;
- ``bansfile``: the bans kept across a stop and a start.
"""

from __future__ import annotations

import errno
import faulthandler
import logging
import os
import signal
import time
from enum import Enum
from typing import Optional

from setproctitle import setproctitle

from .. import metrics
from ..config.model import Config
from .bansfile import BansFile
from .children import SupervisedChild
from .files import hand_over_files, worker_files
from .health import check_workers
from .helpers import Helpers
from .listeners import Listeners, bind_listeners, tls_summary
from .logs import reopen_logging, setup_logging
from .metrics_dir import metrics_dir
from .pidfile import master_title, write_pid_file
from .privileges import Identity, describe_workers, drop_privileges, probe
from .reload import PendingReload, ReloadSequence
from .scoreboard import (
    EXIT_BOOT_FAILURE,
    KEEP_LOST_SECONDS,
    RUNNING,
    STARTING,
    MasterStatus,
    SharedState,
    state_path,
)
from .signals import SignalQueue, fork_holding_signals
from .usage import usage_path
from .workers import (
    Backoff,
    WorkerProc,
    abort_worker,
    describe_status,
    give_back_holdings,
    kill_overdue,
    load_worker,
    report_stacks,
    signal_workers,
)

log = logging.getLogger(__name__)

LOOP_SECONDS = 1.0
MAX_FAST_FAILURES = 5
SPAWN_RETRY_SECONDS = 5.0  # after a fork (or its stack file) failed: no process or fd left
EXIT_CRASH_LOOP = 1
EXIT_CANNOT_START = 1


class Phase(Enum):
    """Where the master is in its life: it moves along ``MOVES`` only, never back. The
    values are what the shared state shows (``scoreboard.MASTER_STATES``), but SERVING's,
    which shows as "running"."""

    STARTING = "starting"  # no worker served yet: one that cannot start stops the server
    SERVING = "serving"  # a worker has served since the start
    STOPPING_GRACEFULLY = "stopping gracefully"  # QUIT: transfers in flight finish
    STOPPING = "stopping"  # TERM or INT, also cutting a graceful stop short


MOVES = {
    Phase.STARTING: {Phase.SERVING, Phase.STOPPING_GRACEFULLY, Phase.STOPPING},
    Phase.SERVING: {Phase.STOPPING_GRACEFULLY, Phase.STOPPING},
    Phase.STOPPING_GRACEFULLY: {Phase.STOPPING},
    Phase.STOPPING: set(),
}


class Master(ReloadSequence):
    """Supervises the workers serving one config on its listening sockets."""

    # The signal table: each is queued (``signals.SignalQueue``) and handled by its
    # ``handle_<name>`` from the loop.
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
               signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)

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
        self._holders: list[WorkerProc] = []  # reaped, what they held in quotas not given back
        self.backoff: dict[int, Backoff] = {}
        self.reload: Optional[PendingReload] = None
        self.reloads = 0
        self.reload_result = 0
        self.phase = Phase.STARTING
        self.exit_status = 0
        self.listeners: Optional[Listeners] = None
        self.state: Optional[SharedState] = None
        self.helpers = Helpers(identity)
        self._bans: Optional[BansFile] = None
        self._reload_taken = 0  # the last reload request of the admin API run
        self._stop_deadline = 0.0
        self._next_health_check = 0.0
        self._signals = SignalQueue()

    # --- life cycle

    @property
    def stopping(self) -> bool:
        return self.phase in (Phase.STOPPING_GRACEFULLY, Phase.STOPPING)

    def _move(self, phase: Phase) -> bool:
        """Move on to ``phase`` if ``MOVES`` allows it from here; return whether it did."""
        if phase not in MOVES[self.phase]:
            return False
        self.phase = phase
        return True

    def run(self) -> int:
        """Serve until told to stop; return the process exit status."""
        self._setup_logging()
        if not self._start():
            return EXIT_CANNOT_START
        self._signals.install(self.SIGNALS)
        assert self.listeners is not None
        log.info("master %d listening on %s with %d workers", self.pid,
                 self.listeners.describe(), self.num_workers)
        log.info("%s", tls_summary(self.config))
        try:
            self._loop()
        finally:
            self._cleanup()
        return self.exit_status

    def _start(self) -> bool:
        """Check that the workers can run, bind the sockets, write the master's files;
        False (logged, nothing left bound) if one of them cannot be done."""
        for warning in self.config.warnings:
            log.warning("config: %s", warning)
        workers_root = self.identity is None and os.geteuid() == 0  # run_as_root
        log.log(logging.WARNING if workers_root else logging.INFO, "%s",
                describe_workers(self.identity))
        problem = self._probe_workers(self.config)
        if problem:
            log.critical("cannot start: %s", problem)
            return False
        try:
            self.listeners = bind_listeners(self.config.network)
        except OSError as exc:  # it says where
            log.critical("%s", exc)
            return False
        if not (self.helpers.bind(self.config, lambda: self.state) and self._write_own_files()
                and self._prepare_events()):
            self._close_listeners()
            return False
        return True

    def _loop(self) -> None:
        while not (self.stopping and not self.workers):
            self._spawn_missing()
            self._spawn_children()
            signum = self._signals.wait(LOOP_SECONDS)
            if signum is not None:
                name = signal.Signals(signum).name[3:].lower()
                getattr(self, f"handle_{name}")()
            self._take_reload_request()
            self._note_serving()
            self._reap()
            if self.state is not None:
                self.state.expire_kept(time.monotonic())
            self._holders = give_back_holdings(
                self._holders, self.state.usage if self.state is not None else None)
            self._advance_reload()
            self._health_check()
            self._save_bans()
            if self.stopping and time.monotonic() > self._stop_deadline:
                for worker in list(self.workers.values()):
                    if worker.abort is None:
                        self._abort(worker, "did not stop in time")
            kill_overdue(self.workers.values())

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
            self._bans = BansFile(self.state, pid_file, self.config.server.ipv6_prefix_length)
            self._bans.restore()
            self._publish()  # cosftpctl knows its master by the title: set before the pid file
            write_pid_file(pid_file, self.pid)
        except OSError as exc:
            log.critical("cannot start: %s", exc)
            return False
        return True

    def _prepare_events(self, config: Optional[Config] = None) -> bool:
        """Run an events process if ``config`` (default: the running one) sends events or
        the spool still holds some (``Helpers.prepare_events``)."""
        return self.helpers.prepare_events(config or self.config, self._reopen_child_logging)

    def _save_bans(self, force: bool = False) -> None:
        if self._bans is not None:
            self._bans.save(force)

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
            self.config.network.tls is not None,
            RUNNING if self.phase is Phase.SERVING else self.phase.value,
            self.config.server.ipv6_prefix_length))
        setproctitle(f"{master_title(self.config.path)} gen={self.generation} "
                     f"workers={len(self._current())}")

    # --- helper processes

    def _spawn_children(self) -> None:
        """Fork the metrics exporter, the admin API and the events process when one is due
        (not running); one that cannot be forked is tried again later, as a worker is."""
        for child in self.helpers.all():
            if self.stopping or not child.due():
                continue
            try:
                pid = fork_holding_signals()
            except OSError as exc:  # no process left (EAGAIN) or memory: the workers serve on
                child.not_started(exc, SPAWN_RETRY_SECONDS)
                continue
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
        self._signals.close()
        for worker in self.workers.values():
            os.close(worker.stack_fd)
        for child in self.helpers.all():
            if child is not keep:
                child.close()

    # --- signals

    def handle_term(self) -> None:
        """Fast stop: workers end their transfers (426; uploads are parked, no partial
        objects), tell every client 421 and exit, within stop_timeout (then SIGABRT)."""
        self._begin_stop(signal.SIGTERM, self.config.server.stop_timeout)

    handle_int = handle_term

    def handle_quit(self) -> None:
        """Graceful stop: stop accepting, let transfers in flight finish (each worker stops
        once it has none, at most graceful_timeout), tell idle sessions 421. What is left
        after graceful_timeout ends as in a fast stop, with the fast stop's time."""
        server = self.config.server
        self._begin_stop(signal.SIGQUIT, server.graceful_timeout + server.stop_timeout,
                         graceful=True)

    def handle_usr1(self) -> None:
        """Reopen log files (after logrotate) here and in every worker."""
        server = self.config.server
        reopen_logging(server.log_level, server.log_dir, "master", self.foreground, self.owner)
        try:
            hand_over_files(self.config, self.owner)  # made again, the workers' own
        except OSError as exc:
            log.error("could not prepare the log files for the workers: %s", exc)
        signal_workers(signal.SIGUSR1, self.workers.values())
        if self.helpers.events is not None:
            self.helpers.events.signal(signal.SIGUSR1)

    def handle_ttin(self) -> None:
        """One worker more, up to ``max_worker_processes`` (a reload starts
        ``worker_processes`` again)."""
        most = self.config.server.max_worker_processes
        if self.num_workers >= most:
            log.warning("SIGTTIN: already %d workers, the most max_worker_processes (%d) "
                        "allows; none added", self.num_workers, most)
            return
        self.num_workers += 1
        log.info("SIGTTIN: %d workers", self.num_workers)
        self._publish()

    def handle_ttou(self) -> None:
        """One worker fewer (the last one drains first), never none."""
        if self.num_workers <= 1:
            log.warning("SIGTTOU: already 1 worker, the fewest there can be; none removed")
            return
        self.num_workers -= 1
        log.info("SIGTTOU: %d workers", self.num_workers)
        self._drain([w for w in self._current() if w.index > self.num_workers])
        self._publish()

    def handle_chld(self) -> None:
        """Reaping happens on every loop turn; the signal only wakes the loop."""

    # --- stopping

    def _begin_stop(self, signum: int, timeout: int, graceful: bool = False) -> None:
        """Stop on ``signum``: close the listeners and tell every worker (USR2 for a graceful
        stop: finish the transfers in flight). A fast stop also cuts a graceful one short."""
        if not self._move(Phase.STOPPING_GRACEFULLY if graceful else Phase.STOPPING):
            return
        log.info("%s: stopping %d workers; those still running in %ds are aborted",
                 signal.Signals(signum).name, len(self.workers), timeout)
        now = time.monotonic()
        self._stop_deadline = min(self._stop_deadline or now + timeout, now + timeout)
        self._close_listeners()
        self._publish()  # the admin API refuses a reload from now on
        signal_workers(signal.SIGUSR2 if graceful else signum, self.workers.values())

    def _close_listeners(self) -> None:
        for listeners in (self.listeners, self.reload.old_listeners if self.reload else None):
            if listeners is not None:
                listeners.close()
        self.listeners = None

    def _cleanup(self) -> None:
        self._close_listeners()
        self._save_bans(force=True)
        for child in self.helpers.all():
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
                try:
                    self._spawn(index)
                except OSError as exc:  # the workers it has serve on meanwhile
                    backoff.next_start = now + SPAWN_RETRY_SECONDS
                    log.error("cannot start worker %d: %s; trying again in %.0fs", index, exc,
                              SPAWN_RETRY_SECONDS)

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
        """In the forked child: leave the master, become the workers' user, serve."""
        # First, so that a worker hung anywhere in its set-up (the privilege drop, the
        # import of its stack, its log file) leaves its stacks: the master SIGABRTs a hung
        # worker and logs what this writes (a crash's SIGSEGV too).
        faulthandler.enable(file=stack_fd, all_threads=True)
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
                                   self.listeners.implicit_tls)
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
        if self.phase is Phase.STARTING:
            assert self.state is not None
            if any(w.state == "serving" for w in self.state.workers()):
                self._move(Phase.SERVING)
                self._publish()  # status and the admin API stop saying "starting"
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
            else:
                self.helpers.reaped(pid, describe_status(status))

    def _worker_exited(self, worker: WorkerProc, status: int) -> None:
        """Free the worker's slot, log its end, and decide what its exit means: nothing
        (it was told to go), a failed reload, a server that cannot start, or a worker to
        start again after its back-off."""
        assert self.state is not None
        self._keep_uploads(worker)
        self.state.clear_slot(worker.slot)
        self.state.release_all(worker.pid)
        self._holders.append(worker)
        self.helpers.process_exited(worker.pid)
        self._publish()
        how = describe_status(status)
        report_stacks(worker, how)
        if self.stopping or worker.draining or worker.generation != self.generation:
            log.info("worker %d gen %d (pid %d) exited (%s)", worker.index, worker.generation,
                     worker.pid, how)
            return
        boot_failure = os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_BOOT_FAILURE
        boot_hang = worker.abort is not None and worker.abort.boot
        if (boot_failure or boot_hang) and self.reload is not None:
            self._roll_back("a worker of the new generation could not start")
        elif boot_failure and self.phase is Phase.STARTING:
            # Nothing serves yet and retrying will not help: fail now, with the worker's
            # reason just above in the log, rather than after a crash loop.
            log.critical("worker %d cannot start with this configuration; stopping the server",
                         worker.index)
            self.exit_status = EXIT_CANNOT_START
            self.handle_term()
        else:
            self._restart_later(worker, how, boot_hang)

    def _keep_uploads(self, worker: WorkerProc) -> None:
        """Keep the uploads ``worker`` had in flight (it died before their final reply):
        a client's retry of one, cut short, is refused for a while (``scoreboard.uploads``).
        Before its session rows are freed."""
        assert self.state is not None
        for upload in self.state.keep_uploads(worker.pid, time.monotonic()):
            log.warning("worker %d (pid %d) ended with an upload from byte 0 in flight "
                        "(user=%s, %d bytes received); a retry of it cut short is refused "
                        "for %d s", worker.index, worker.pid, upload.user or "-",
                        upload.nbytes, KEEP_LOST_SECONDS)

    def _restart_later(self, worker: WorkerProc, how: str, boot_hang: bool) -> None:
        """Start the worker's position again after its back-off; stop the server if its
        workers keep dying right after their start."""
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

    def _abort(self, worker: WorkerProc, why: str) -> None:
        assert self.state is not None
        abort_worker(worker, why, self.state)

    def _drain(self, workers: list[WorkerProc]) -> None:
        """Replace ``workers`` (if still wanted) first, then tell them to drain and exit."""
        for worker in workers:
            worker.draining = True
        self._spawn_missing()
        signal_workers(signal.SIGQUIT, workers)

    def _health_check(self) -> None:
        """Every health_check_interval: abort the hung workers, recycle the bloated ones
        (``health``)."""
        now = time.monotonic()
        if now < self._next_health_check or self.stopping:
            return
        self._next_health_check = now + self.config.server.health_check_interval
        assert self.state is not None
        for worker in check_workers(self.workers.values(), self.state, self.config.server):
            self._drain([worker])
