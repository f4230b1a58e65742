"""The counters of one worker and the place of its sessions in the shared state: admission
and logins through the gate, transfers and their bytes, what ``cosftpctl sessions`` shows,
and the admin API's kicks; used by the FTP handlers and the worker's tick."""

from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .. import metrics
from ..config.model import AccountConfig, Config
from ..config.quotas import Home
from ..cos.quota import Quotas
from ..ftp.authhook import AuthHook
from ..ftp.logins import PasswordChecks
from ..ftp.progress import TransferMeter
from . import cluster as shared
from .gate import BANNED, KICKED, Gate, Ticket
from .inflight import UploadWatch
from .scoreboard import DRAINING, STARTING, SharedState, TransferFigures, account_key


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
        # ``shared.ClusterState``: redis-py is imported here, with [CLUSTER] only.
        cluster = shared.ClusterState(config.cluster) if config.cluster.redis_url else None
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
        requests only when the kick epoch moved (the worker's tick, and at once when the
        admin API wakes the worker: ``server.wakeup``)."""
        epoch = self.state.kick_epoch()
        if epoch == self._kick_epoch:
            return
        self._kick_epoch = epoch
        with self._lock:
            described = list(self._described.values())
        for entry in described:
            self._kick_if_asked(entry.ticket)

    def kick_due(self, ticket: Ticket) -> None:
        """In the session's own thread, before it runs a command or takes an upload's bytes:
        tell it to go (``Gate.kick``) if the admin API asked to close it, or if it is not
        logged in and its address was banned, though this worker's main thread did not act
        yet. A kick or ban is then in force from the moment the admin API wrote it to the
        shared state, whichever thread comes to it first."""
        if not self._kick_if_asked(ticket):
            self.gate.kick_if_banned(ticket)

    def _kick_if_asked(self, ticket: Ticket) -> bool:
        """Tell the session of ``ticket`` to go (``Gate.kick``) if the admin API asked to
        close it; return True if it did."""
        if not self.state.kick_requested(ticket.row):
            return False
        self.gate.kick(ticket, KICKED, "closed: the admin API asked to close session "
                       f"{self.state.serial_of(ticket.row)}")
        return True

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
