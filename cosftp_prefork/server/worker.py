"""One worker process: serves FTP sessions on the listening socket it inherited.

Everything per-process is built here, after fork: logging, COS clients (with their own HTTP
session), the transfer engine (part-buffer budget, part and copy pools) and pyftpdlib's
IOLoop. Each session runs in its own thread (``ThreadedFTPServer``) so a slow COS call
stalls only that session.

Signals only set flags; the worker's loop acts on them within a second:
TERM/INT stop now, QUIT drains (stop accepting, let sessions finish, at most
``graceful_timeout``), USR2 (the master's graceful stop) drains until no transfer is in
flight rather than no session, USR1 reopens the log file. Sessions still open when the worker stops
get ``426`` for a transfer in flight (an upload is parked, never half-written) and ``421``.
The master SIGABRTs a worker that hangs: ``faulthandler``, enabled by the master's fork
before this module is even imported, then writes every thread's stack to the file the master
gave the worker, and the master logs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import ThreadedFTPServer
from setproctitle import setproctitle

from .. import logcontext, metrics
from ..config.masquerade import resolve_masquerade
from ..config.model import AccountConfig, Config, mounted_folders
from ..config.quotas import Home, QuotaRules
from ..cos.aborts import AbortRetrier
from ..cos.engine import Engine
from ..cos.periodic import Periodic
from ..cos.quota import Quotas
from ..cos.registry import BucketRegistry
from ..cos.resume import Janitor
from ..errors import ConfigError
from ..ftp import compat
from ..ftp.admission import Arrival
from ..ftp.authhook import AuthHook
from ..ftp.handler import configure_handler
from ..ftp.hooks import WorkerHooks
from ..ftp.logins import PasswordChecks
from ..ftp.progress import TransferMeter
from ..ftp.tls import configure_tls_handlers
from .cluster import ClusterState
from .gate import BANNED, KICKED, Gate, Ticket
from .inflight import UploadWatch
from .logs import reopen_logging, setup_logging
from .quotashare import SharedUsage
from .scoreboard import (
    DRAINING,
    EXIT_BOOT_FAILURE,
    LISTEN_BACKLOG,
    SERVING,
    STARTING,
    SharedState,
    TransferFigures,
    account_key,
)
from .signals import release_signals

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
TICK_SECONDS = 1.0
BALANCE_SECONDS = 0.1
# How long after a peer's start (its fork, then the start of its set-up) the workers leave it
# its share of new connections: a worker's set-up takes 1-2 s on a loaded machine; one that
# hangs in it must not hold new connections in the backlog for long (worker_boot_timeout
# kills it only after a minute by default).
STARTING_PEER_WAIT = 10.0
# A stopping worker closes its sessions by CLOSE_MARGIN_SECONDS before the master's deadline
# (stop_timeout; it notices the signal within a tick); their uploads' parks are written in
# the last PARK_RECORD_SECONDS of that, with the parts COS stored before (MIN_STOP_TIMEOUT
# leaves room for both).
CLOSE_MARGIN_SECONDS = 5
PARK_RECORD_SECONDS = 5.0
# What the master's signals ask of a serving worker: the flag its serve loop reads.
STOP_SIGNALS = {signal.SIGTERM: "_stop", signal.SIGINT: "_stop", signal.SIGQUIT: "_drain",
                signal.SIGUSR2: "_finish"}


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the master dies; the ppid check covers the rest.

    Called after the privilege drop (``Master._run_worker``): changing the process's user
    or group clears this setting."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


_M_ARENA_MAX = -8  # mallopt(3)
MALLOC_ARENAS = 2


def _malloc_call(name: str, *args: int) -> None:
    """Call glibc's ``name`` if the C library has it (musl has neither function)."""
    with contextlib.suppress(OSError, AttributeError):
        getattr(_c_library(), name)(*args)


@functools.cache
def _c_library() -> ctypes.CDLL:
    """The C library, loaded once: ``_trim_malloc`` runs at every tick."""
    return ctypes.CDLL(None)


def _share_malloc_arenas() -> None:
    """Let all threads allocate from ``MALLOC_ARENAS`` glibc arenas.

    Part buffers and data-channel reads are megabytes, allocated by one session's thread and
    freed by a part thread. With glibc's default of one arena per thread (up to 8 per CPU),
    each arena keeps the peak its sessions reached, and the worker's RSS grows well past
    what it holds (16 uploads: 75 MiB for 16 MiB of budget). A fixed mmap threshold instead
    (every buffer its own mapping) kept RSS at 34-42 MiB but cost 30 % more CPU per GiB in
    page faults; two shared arenas and a trim every tick keep it at ~40 MiB for the CPU of
    before (docs/performance.md).
    """
    _malloc_call("mallopt", _M_ARENA_MAX, MALLOC_ARENAS)


def _trim_malloc() -> None:
    """Give the memory glibc holds free back to the kernel (after bursts of uploads)."""
    _malloc_call("malloc_trim", 0)


@dataclass(frozen=True)
class Described:
    """A session whose details the worker writes to the shared state: its handler, its
    place in the limits, and when it connected."""

    session: Any
    ticket: Ticket
    connected: float


class WorkerStats:
    """Counters of one worker, published to its shared slot; used by the FTP handlers.

    Thread-safe: sessions run in their own threads.
    """

    def __init__(self, state: SharedState, slot: int, index: int, generation: int,
                 config: Config) -> None:
        self.state, self.slot, self.index, self.generation = state, slot, index, generation
        self.pid = os.getpid()
        self.started = time.time()
        cluster = ClusterState(config.cluster) if config.cluster.redis_url else None
        self.gate = Gate(state, config.server, self.pid, cluster)
        self.password_checks = PasswordChecks(config.server.max_password_checks)
        self.quotas: Optional[Quotas] = None  # set once the worker has its COS clients
        self.auth_hook = AuthHook(config) if config.auth_hook.enabled else None
        self._lock = threading.Lock()
        # Set when the worker closes its remaining sessions: each then tells its client.
        self.stopping = threading.Event()
        self.sessions = self.uploads = self.downloads = 0
        # Sessions whose file transfer was answered 150 and waits for its data connection:
        # in flight for a graceful stop, though not counted in uploads/downloads yet.
        self._queued: set[object] = set()
        # File transfers' bytes, those in flight included (see ``credit``).
        self.bytes_up = self.bytes_down = 0
        self._described: dict[int, Described] = {}  # by session row
        # The home an auth hook's answer gave a quota, of each logged-in session that has one.
        self._answered: dict[int, Home] = {}
        self._kick_epoch = state.kick_epoch()
        self.status = STARTING

    def admit(self, ip: str, kick: Callable[[str], None], session=None,
              per_address: bool = True) -> tuple[Optional[Ticket], Optional[str]]:
        """Count a new session (see ``Gate.admit``); ``session`` (its handler) is described
        in the shared state for ``cosftpctl sessions``."""
        ticket, reason = self.gate.admit(ip, kick, per_address)
        if reason == BANNED:
            metrics.LOGINS.labels("banned").inc()
        if ticket is not None:
            metrics.session_opened()
            now = time.time()
            self.state.write_detail(ticket.row, "", "", 0, 0.0, now, now)
            # Idle whatever the row's last session left there (one whose data channel never
            # closed): the master keeps only this session's own uploads if this worker dies.
            self.state.in_flight(ticket.row).end()
            with self._lock:
                self.sessions += 1
                self.state.set_sessions(self.slot, self.sessions)
                if session is not None:
                    self._described[ticket.row] = Described(session, ticket, now)
        return ticket, reason

    def upload_watch(self, ticket: Ticket) -> UploadWatch:
        """The in-flight row of ``ticket``'s session, for its uploads from byte 0 (see
        ``inflight``)."""
        return UploadWatch(self.state, ticket.row)

    def log_in(self, ticket: Ticket, account: AccountConfig) -> Optional[str]:
        """A correct password for ``account``: see ``Gate.log_in`` (its ``max_sessions``),
        and ``Quotas.admit`` (the quota an auth hook's answer gives)."""
        home, refusal = self.quotas.admit(account) if self.quotas is not None else (None, None)
        if refusal is not None:
            return refusal
        reason = self.gate.log_in(ticket, account_key(account.user), account.limits.max_sessions)
        if home is not None:
            if reason is None:
                with self._lock:
                    home, self._answered[ticket.row] = self._answered.get(ticket.row), home
            if home is not None:  # refused after all, or a new login of a logged-in session
                self.quotas.leave(home)
        return reason

    def log_out(self, ticket: Ticket) -> Optional[str]:
        """A logged-in session starts a new login: see ``Gate.log_out``; the home an answer
        kept for it is given back (``Quotas.leave``)."""
        reason = self.gate.log_out(ticket)
        if reason is None:
            self._leave(ticket)
        return reason

    def _leave(self, ticket: Ticket) -> None:
        with self._lock:
            home = self._answered.pop(ticket.row, None)
        if home is not None:
            self.quotas.leave(home)

    def account_bucket(self, account: AccountConfig,
                       upload: bool) -> Optional[tuple[Callable[[int], float], int]]:
        """The node's upload or download bucket of ``account`` (shared by every worker)
        and its rate, None if that direction has no limit."""
        limits = account.limits
        rate = limits.max_upload_rate if upload else limits.max_download_rate
        if not rate:
            return None
        return functools.partial(self.state.take, account_key(account.user), upload, rate), rate

    def share(self) -> None:
        """The cluster thread's tick: publish the node's counts (``Gate.share``), and all
        its quota reservations if they may be wrong in Redis (a change lost in an outage, a
        dead worker's dropped by the master, which does not talk to Redis)."""
        unknown = self.gate.share()
        if self.quotas is not None:
            if unknown:  # Redis lost the node's reservations and its index of their homes
                self.quotas.want_publish()
            self.quotas.catch_up()

    def recount(self, ticket: Ticket, ip: str) -> Optional[str]:
        """Count a balancer's session under its client's address (see ``Gate.recount``)."""
        reason = self.gate.recount(ticket, ip)
        if reason == BANNED:
            metrics.LOGINS.labels("banned").inc()
        return reason

    def release(self, ticket: Ticket) -> None:
        self.gate.close(ticket)
        self._leave(ticket)
        metrics.SESSIONS.dec()
        with self._lock:
            self.sessions -= 1
            self.state.set_sessions(self.slot, self.sessions)
            self._described.pop(ticket.row, None)

    def describe_sessions(self) -> None:
        """Write each session's user, command, bytes, rate and idle time to the shared
        state, and add its transfer's progress to the worker's bytes (the worker's tick,
        once a second)."""
        with self._lock:
            described = list(self._described.items())
        now = time.monotonic()
        for row, entry in described:
            user, command, meter, active = entry.session.session_detail()
            nbytes, rate, transfer = 0, 0.0, None
            if meter is not None:
                nbytes, rate = meter.sample(now), meter.rate
                self.credit(meter)
                if meter.counted:
                    transfer = TransferFigures(meter.upload, not meter.finished, meter.name,
                                               meter.expected)
            self.state.write_detail(row, user, command, nbytes, rate, active, entry.connected,
                                    transfer)

    def apply_kicks(self) -> None:
        """Close (421) the sessions of this worker the admin API asked to close: read the
        requests only when the kick epoch moved (the worker's tick)."""
        epoch = self.state.kick_epoch()
        if epoch == self._kick_epoch:
            return
        self._kick_epoch = epoch
        with self._lock:
            described = list(self._described.items())
        for row, entry in described:
            if self.state.kick_requested(row):
                self.gate.kick(entry.ticket, KICKED, "closed: the admin API asked to close "
                               f"session {self.state.serial_of(row)}")

    def credit(self, meter: TransferMeter) -> None:
        """Add to the worker's bytes up or down what a file transfer moved since they last
        did (each tick, and when it ends): ``status`` shows a transfer as it runs, and once
        it ended, its figure in the logs."""
        if not meter.counted:
            return
        with self._lock:
            nbytes = meter.result if meter.result is not None else meter.nbytes
            moved = max(0, nbytes - meter.credited)
            meter.credited += moved
            if meter.upload:
                self.bytes_up += moved
            else:
                self.bytes_down += moved

    def transfer_queued(self, session: object) -> None:
        """``session``'s file transfer waits for its data connection (after its 150)."""
        with self._lock:
            self._queued.add(session)

    def transfer_unqueued(self, session: object) -> None:
        """``session`` has no file transfer waiting any more: it started (and is counted),
        was given up, or the session ended."""
        with self._lock:
            self._queued.discard(session)

    @property
    def transfers_in_flight(self) -> int:
        """File transfers running, and those answered 150 that wait for their connection."""
        with self._lock:
            return self.uploads + self.downloads + len(self._queued)

    def transfer_started(self, upload: bool) -> None:
        with self._lock:
            if upload:
                self.uploads += 1
            else:
                self.downloads += 1

    def transfer_ended(self, meter: TransferMeter) -> None:
        """A file transfer ended; ``meter`` holds its last figure."""
        with self._lock:
            if meter.upload:
                self.uploads -= 1
            else:
                self.downloads -= 1
        self.credit(meter)

    def publish(self) -> str:
        """Write the heartbeat and counters to the shared slot; return the process title."""
        cluster = self.gate.cluster_status()
        with self._lock:  # so that no older session count overwrites one set_sessions wrote
            counters = (self.sessions, self.uploads, self.downloads, self.bytes_up,
                        self.bytes_down)
            self.state.write_slot(self.slot, self.pid, self.index, self.generation,
                                  self.status, self.started, time.time(), counters, cluster)
        title = (f"cosftp: worker {self.index} gen={self.generation} sessions={counters[0]} "
                 f"up={counters[1]} down={counters[2]}")
        return title + " draining" if self.status == DRAINING else title


class BalancedFTPServer(ThreadedFTPServer):
    """Stops polling the shared listener while this worker is clearly busier than a peer.

    Every worker waits on the same socket and the kernel tends to wake the same one, so
    without this one worker would take every session. A worker holding more than one
    session above its least busy serving peer steps aside until that changes; it looks
    before and after each accept, and at each tick of its loop.
    """

    state: SharedState
    kind = "FTP"  # what the listener serves, for the log
    paused = False  # True while this worker leaves new connections to its peers
    # When (``time.monotonic()``) the worker stops waiting for its session threads; set
    # before ``close_all``.
    stop_deadline = 0.0

    @property
    def join_timeout(self) -> float:
        """How long ``close_all`` waits for the next session thread: what is left until the
        stop's deadline. One deadline for them all: a timeout per thread (pyftpdlib's)
        added up past the master's allowance when several sessions waited on COS, and the
        master aborted the worker with their uploads unparked."""
        return max(0.0, self.stop_deadline - time.monotonic())

    def describe(self) -> str:
        """``address:port (kind)``, for the log."""
        host, port = self.address[:2]
        return f"[{host}]:{port} ({self.kind})" if ":" in host else f"{host}:{port} ({self.kind})"

    def handle_accept(self) -> None:
        """Accept a waiting connection unless a peer is now clearly less busy. Between
        accepts this worker looks only once a second: a peer that started serving, or whose
        sessions ended, since then would otherwise lose this connection for its whole life."""
        self.rebalance()
        if not self.paused:
            super().handle_accept()

    def handle_accepted(self, sock, addr):
        handler = super().handle_accepted(sock, addr)
        self.rebalance()
        return handler

    def _loop(self, handler) -> None:
        """Serve one session in its thread; one refused at accept (closed, after a 421 where
        one can be sent) has nothing left to serve, and pyftpdlib would fail registering its
        closed socket. A connection from a balancer has its PROXY header read here, off the
        accept loop (it was counted at accept: such threads are bounded by the limits).

        The thread is the session's alone, its data channel's events included: every line
        it writes, and those of the pool tasks it submits, names the session."""
        logcontext.bind(handler.log_label)
        if handler.arrival is Arrival.AWAITING_HEADER and not handler.read_proxy_header():
            return
        if not compat.is_closed(handler):
            super()._loop(handler)

    def rebalance(self) -> None:
        """Pause or resume accepting, depending on the load of the other workers.

        A peer still setting up (``starting``, for at most ``STARTING_PEER_WAIT``) counts
        as one holding no session: a burst that comes while it boots (the server's start,
        a reload, the replacement of a dead worker, whose clients all reconnect at once)
        waits in the listen backlog for it past this worker's share, instead of all landing
        here for the sessions' whole life (a 2-worker server's fresh start: 4 sessions at
        once went 4/0 in 2 starts of 5)."""
        if compat.listen_fileno(self) is None:
            return
        me, mine, peers, now = os.getpid(), 0, [], time.time()
        for worker in self.state.workers():
            if worker.pid == me:
                mine = worker.sessions
            elif worker.state == "serving" or (
                    worker.state == "starting" and
                    0 <= now - worker.started < STARTING_PEER_WAIT):
                peers.append(worker.sessions)
        busy = bool(peers) and mine > min(peers) + 1
        if busy and not self.paused:
            self.ioloop.unregister(compat.listen_fileno(self))
        elif self.paused and not busy:
            self.ioloop.register(compat.listen_fileno(self), self, self.ioloop.READ)
        self.paused = busy


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
        self._install_signals()
        _die_with_parent()
        _share_malloc_arenas()
        server_cfg = self.config.server
        setup_logging(server_cfg.log_level, server_cfg.log_dir, f"worker {self.index}",
                      self.foreground)
        compat.debug_only_when_logged()
        stats = WorkerStats(self.state, self.slot, self.index, self.generation, self.config)
        self._set_title(stats.publish())
        try:
            masquerade = resolve_masquerade(self.config)
            if stats.gate.cluster is not None:
                stats.gate.cluster.verify()  # a Redis too old to share state with: no start
        except ConfigError as exc:
            log.error("worker %d cannot start: %s", self.index, exc)
            return EXIT_BOOT_FAILURE
        transfer = self.config.transfer
        engine = Engine(transfer.memory_limit, transfer.upload_thread_num,
                        transfer.copy_thread_num)
        buckets = BucketRegistry(pool_size=transfer.upload_thread_num +
                                 transfer.copy_thread_num + engine.lookup_threads + 16)
        retrier = AbortRetrier()
        retrier.start()
        janitor = self._start_janitor(buckets)
        scans = self._start_quotas(stats, buckets)
        sharing = self._start_sharing(stats)
        hooks = WorkerHooks.start(self.config)
        deadline: Optional[float] = None  # the stop's, once the sessions are being closed
        try:
            servers = self._servers(buckets, engine, retrier, stats, masquerade, hooks)
            self._serving_signals()
            stats.status = SERVING
            log.info("worker %d gen %d serving on %s", self.index, self.generation,
                     ", ".join(server.describe() for server in servers))
            self._serve(servers, stats)
            deadline = self._close_sessions(servers, stats, engine)
        finally:
            hooks.close()
            engine.shutdown(deadline)
            retrier.stop(deadline)
            if janitor is not None:
                janitor.stop(deadline)
            for periodic in (scans, sharing):
                if periodic is not None:
                    periodic.stop(deadline)
            buckets.close()
            log.info("worker %d gen %d stopped", self.index, self.generation)
        return 0

    def _start_janitor(self, buckets: BucketRegistry) -> Optional[Janitor]:
        """Worker 1 sweeps stale multipart uploads out of every home (a bucket, or the keys
        under a cos_prefix), once per home; a home's client is made at the first sweep."""
        ttl = self.config.transfer.resume_ttl
        if self.index != 1 or not ttl:
            return None
        # Each folder too: parked uploads and live markers are in the folder's .cosftp/.
        janitor = Janitor(buckets.homes([*self.config.accounts,
                                         *mounted_folders(self.config.accounts)]), ttl)
        janitor.start()
        return janitor

    def _start_quotas(self, stats: WorkerStats, buckets: BucketRegistry) -> Optional[Periodic]:
        """Keep the quotas (of the file's accounts, and those an auth hook's answers give)
        in the usage table the master shares (and, with ``[CLUSTER]``, in Redis); worker 1
        scans the file's homes again when due (``quota_scan_interval``, ``cosftpctl
        quota-scan``)."""
        rules = QuotaRules(self.config.accounts)
        if (not rules.homes and not self.config.auth_hook.enabled) or self.state.usage is None:
            return None
        left = self.state.usage.attach(self.slot)
        if left.homes:
            log.warning("quota: gave back what the previous worker of slot %d held: %d bytes "
                        "and %d files reserved, %d sessions, in %d homes", self.slot,
                        left.nbytes, left.files, left.sessions, left.homes)
        cluster = stats.gate.cluster
        ledger = self.state.usage if cluster is None else SharedUsage(self.state.usage, cluster)
        stats.quotas = Quotas(rules, ledger, buckets.bucket,
                              self.config.server.quota_scan_interval,
                              self.config.auth_hook.quota_homes,
                              max(self.config.auth_hook.cache_ttl,
                                  self.config.server.quota_scan_interval))
        # Before serving: the master gave back a dead predecessor's holdings in the table
        # when it reaped it, and the node's figures in Redis (what every node reserves
        # against) must not keep them (the other workers' cluster ticks may have done it
        # already; a Redis found unreachable is not asked again here).
        stats.quotas.catch_up()
        if self.index != 1:
            return None
        scans = Periodic("quota-scans", 1.0, stats.quotas.scan_due)
        scans.start()
        return scans

    def _start_sharing(self, stats: WorkerStats) -> Optional[Periodic]:
        """With ``[CLUSTER]``, publish the node's counts and read the cluster's bans and
        unbans once a second on a thread of its own (``Gate.share``): a Redis slow to answer
        must not hold the accept loop, nor the heartbeat the master checks. The first time
        before serving: until then the other nodes do not count this one as alive (and so
        not its connections)."""
        if stats.gate.cluster is None:
            return None
        stats.share()
        sharing = Periodic("cluster", TICK_SECONDS, stats.share)
        sharing.start()
        return sharing

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

    def _servers(self, buckets: BucketRegistry, engine: Engine,
                 retrier: AbortRetrier, stats: WorkerStats, masquerade: Optional[str],
                 hooks: WorkerHooks) -> list[BalancedFTPServer]:
        """Return one server per listening socket, all on one IOLoop: the FTP port (also
        taking AUTH TLS when TLS is configured) and the implicit FTPS port, if any, on each
        listen address."""
        args = (self.config, buckets, engine, retrier, stats, masquerade, hooks)
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

    def _serve(self, servers: list[BalancedFTPServer], stats: WorkerStats) -> None:
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
            if ioloop.socket_map:
                paused = any(server.paused for server in servers)
                ioloop.poll(BALANCE_SECONDS if paused else TICK_SECONDS)
            else:
                time.sleep(BALANCE_SECONDS)
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
        _trim_malloc()
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
