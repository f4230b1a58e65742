"""One worker process: serves FTP sessions on the listening socket it inherited.

Everything per-process is built after fork: logging, COS clients (with their own HTTP
session), the transfer engine (part-buffer budget, part and copy pools) and the other
services (``server.services``), the counters (``server.workerstats``) and pyftpdlib's IOLoop
with its servers (``server.balanced``). Each session runs in its own thread
(``ThreadedFTPServer``) so a slow COS call stalls only that session.

Signals only set flags; the worker's loop acts on them at once (each wakes its ``poll``
through ``server.wakeup``'s pipe), or at its next tick, within a second:
TERM/INT stop now, QUIT drains (stop accepting, let sessions finish, at most
``graceful_timeout``), USR2 (the master's graceful stop) drains until no transfer is in
flight rather than no session, USR1 reopens the log file, URG (``wakeup.KICK_SIGNAL``,
from the admin API) carries out the kicks and bans waiting in the shared state. Sessions
still open when the worker stops get ``426`` for a transfer in flight (an upload is parked,
never half-written) and ``421``.
The master SIGABRTs a worker that hangs: ``faulthandler``, enabled by the master's fork
before this module is even imported, then writes every thread's stack to the file the master
gave the worker, and the master logs it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Optional

from pyftpdlib.ioloop import IOLoop
from setproctitle import setproctitle

from ..config.masquerade import resolve_masquerade
from ..config.model import Config
from ..cos.engine import Engine
from ..errors import ConfigError
from ..ftp import compat
from ..ftp.handler import configure_handler
from ..ftp.tls import configure_tls_handlers
from .balanced import BalancedFTPServer
from .libc import die_with_parent, share_malloc_arenas, trim_malloc
from .logs import reopen_logging, setup_logging
from .scoreboard import DRAINING, EXIT_BOOT_FAILURE, LISTEN_BACKLOG, SERVING, SharedState
from .services import WorkerServices
from .signals import release_signals
from .wakeup import KICK_SIGNAL, WakeUp
from .workerstats import WorkerStats

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
BALANCE_SECONDS = 0.1
# A stopping worker closes its sessions by CLOSE_MARGIN_SECONDS before the master's deadline
# (stop_timeout; it notices the signal within a tick); their uploads' parks are written in
# the last PARK_RECORD_SECONDS of that, with the parts COS stored before (MIN_STOP_TIMEOUT
# leaves room for both).
CLOSE_MARGIN_SECONDS = 5
PARK_RECORD_SECONDS = 5.0
# What the master's signals ask of a serving worker: the flag its serve loop reads.
STOP_SIGNALS = {signal.SIGTERM: "_stop", signal.SIGINT: "_stop", signal.SIGQUIT: "_drain",
                signal.SIGUSR2: "_finish"}


class Worker:
    """A worker's life: boot, serve, drain or stop."""

    def __init__(self, index: int, generation: int, slot: int, config: Config,
                 socks: tuple[socket.socket, ...], state: SharedState, master_pid: int,
                 foreground: bool, implicit_tls_socks: tuple[socket.socket, ...] = ()) -> None:
        self.index, self.generation, self.slot = index, generation, slot
        self.config, self.socks, self.state = config, socks, state
        self.implicit_tls_socks = implicit_tls_socks
        self.master_pid, self.foreground = master_pid, foreground
        self._stop = self._drain = self._finish = self._reopen = False
        self._title = ""

    def run(self) -> int:
        """Serve until told to stop or drained; return the exit status."""
        self._prepare_process()
        stats = WorkerStats(self.state, self.slot, self.index, self.generation, self.config)
        self._set_title(stats.publish())
        try:
            masquerade = self._verified_settings(stats)
        except ConfigError as exc:
            log.error("worker %d cannot start: %s", self.index, exc)
            return EXIT_BOOT_FAILURE
        services = WorkerServices.start(self.config, self.index, self.slot, self.state, stats)
        deadline: Optional[float] = None  # the stop's, once the sessions are being closed
        try:
            servers = self._servers(services, stats, masquerade)
            self._serving_signals()
            wakeup = WakeUp(servers[0].ioloop)
            stats.status = SERVING
            log.info("worker %d gen %d serving on %s", self.index, self.generation,
                     ", ".join(server.describe() for server in servers))
            self._serve(servers, stats, wakeup)
            wakeup.close()
            deadline = self._close_sessions(servers, stats, services.engine)
        finally:
            services.stop(deadline)
            log.info("worker %d gen %d stopped", self.index, self.generation)
        return 0

    def _prepare_process(self) -> None:
        """What the process needs before anything else: its signals, its death with the
        master, its heap's arenas, its log."""
        self._install_signals()
        die_with_parent()
        share_malloc_arenas()
        server_cfg = self.config.server
        setup_logging(server_cfg.log_level, server_cfg.log_dir, f"worker {self.index}",
                      self.foreground)
        compat.debug_only_when_logged()

    def _verified_settings(self, stats: WorkerStats) -> Optional[str]:
        """Return the resolved ``masquerade_address`` (None without one), once the cluster's
        Redis is found fit to share state with; ``ConfigError`` if either is not."""
        masquerade = resolve_masquerade(self.config)
        if stats.gate.cluster is not None:
            stats.gate.cluster.verify()  # a Redis too old to share state with: no start
        return masquerade

    def _install_signals(self) -> None:
        """Until it serves, a worker told to stop (or drain, or finish: the master's stop,
        a reload rolled back, the master's death) exits at once: it holds no session, and a
        set-up blocked for good (a log file on a hung mount) would otherwise never see the
        flag. ``_serving_signals`` then makes those requests flags the serve loop reads."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda _s, _f: os._exit(0))
        signal.signal(signal.SIGUSR1, lambda _s, _f: setattr(self, "_reopen", True))
        for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        release_signals()

    def _serving_signals(self) -> None:
        for signum, flag in STOP_SIGNALS.items():
            signal.signal(signum, lambda _s, _f, flag=flag: setattr(self, flag, True))

    def _servers(self, services: WorkerServices, stats: WorkerStats,
                 masquerade: Optional[str]) -> list[BalancedFTPServer]:
        """Return one server per listening socket, all on one IOLoop: the FTP port (also
        taking AUTH TLS when TLS is configured) and the implicit FTPS port, if any, on each
        listen address."""
        args = (self.config, services.buckets, services.engine, services.retrier, stats,
                masquerade, services.hooks)
        if self.config.network.tls is None:
            listeners = [(sock, configure_handler(*args), "FTP") for sock in self.socks]
        else:
            explicit, implicit = configure_tls_handlers(*args)
            listeners = [(sock, explicit, "FTP, AUTH TLS") for sock in self.socks]
            listeners += [(sock, implicit, "implicit FTPS") for sock in self.implicit_tls_socks]
        ioloop = IOLoop.instance()
        servers = []
        for sock, handler, kind in listeners:
            server = BalancedFTPServer(sock, handler, ioloop=ioloop, backlog=LISTEN_BACKLOG)
            server.state, server.kind = self.state, kind
            server.max_cons = server.max_cons_per_ip = 0  # enforced server-wide by stats
            servers.append(server)
        return servers

    def _serve(self, servers: list[BalancedFTPServer], stats: WorkerStats,
               wakeup: WakeUp) -> None:
        ioloop = servers[0].ioloop
        drain_deadline: Optional[float] = None
        next_tick = 0.0
        while not self._stop:
            now = time.monotonic()
            if (self._drain or self._finish) and drain_deadline is None:
                drain_deadline = now + self.config.server.graceful_timeout
                self._start_draining(servers, stats)
            if drain_deadline is not None and (self._drained(stats) or now > drain_deadline):
                break
            if now >= next_tick:
                next_tick = now + TICK_SECONDS
                self._tick(stats)
            if drain_deadline is None:
                for server in servers:
                    server.rebalance()
            # The wake-up pipe is always in the loop: a signal ends the wait at once.
            paused = any(server.paused for server in servers)
            ioloop.poll(BALANCE_SECONDS if paused or drain_deadline is not None
                        else TICK_SECONDS)
            if wakeup.take(KICK_SIGNAL):  # the admin API's kick or ban: now, not at the tick
                stats.gate.police_bans()
                stats.apply_kicks()
            ioloop.sched.poll()

    def _close_sessions(self, servers: list[BalancedFTPServer], stats: WorkerStats,
                        engine: Engine) -> float:
        """End the sessions still open (426 for a transfer, 421; uploads parked) within the
        master's allowance, and return the deadline the worker exits by. An upload's park
        waits for the parts COS is receiving until ``PARK_RECORD_SECONDS`` before it, then
        records those stored; the session threads are joined until the deadline."""
        allowed = self.config.server.stop_timeout - CLOSE_MARGIN_SECONDS
        deadline = time.monotonic() + allowed
        if stats.sessions > 0:
            log.warning("worker %d closing %d sessions, for %ds at most", self.index,
                        stats.sessions, allowed)
        engine.hurry(deadline - PARK_RECORD_SECONDS)
        stats.stopping.set()
        for server in servers:
            server.stop_deadline = deadline
            server.close_all()  # each joins its own session threads
        if stats.sessions > 0:
            log.error("worker %d exits with %d sessions still closing at the stop's deadline",
                      self.index, stats.sessions)
        return deadline

    def _drained(self, stats: WorkerStats) -> bool:
        """Draining for a reload ends with the last session (it keeps its old config to the
        end); a graceful stop ends with the last transfer in flight, one answered 150 and
        waiting for its data connection included (the 226 is sent before the count drops),
        and the idle sessions then get 421."""
        if self._finish:
            return stats.transfers_in_flight <= 0
        return stats.sessions <= 0

    def _start_draining(self, servers: list[BalancedFTPServer], stats: WorkerStats) -> None:
        log.info("worker %d gen %d draining: %d sessions left, up to %ds", self.index,
                 self.generation, stats.sessions, self.config.server.graceful_timeout)
        for server in servers:
            server.close()  # stop accepting; the listening socket stays open in the others
        stats.status = DRAINING
        self._set_title(stats.publish())  # the master waits for this before reporting a reload

    def _tick(self, stats: WorkerStats) -> None:
        trim_malloc()
        if os.getppid() != self.master_pid:
            log.warning("worker %d: master %d is gone, exiting", self.index, self.master_pid)
            self._stop = True
        stats.gate.police()
        stats.apply_kicks()
        stats.describe_sessions()
        if self._reopen:
            self._reopen = False
            server_cfg = self.config.server
            reopen_logging(server_cfg.log_level, server_cfg.log_dir, f"worker {self.index}",
                           self.foreground)
        self._set_title(stats.publish())

    def _set_title(self, title: str) -> None:
        if title != self._title:
            setproctitle(title)
            self._title = title
