"""Connection governance of one worker: who may connect, how long they may take to log in,
and who is thrown out when their address gets banned.

Every connection gets a ``Ticket`` when it is admitted; its life is one state machine
(``PENDING`` → ``LOGGED_IN`` or ``KICKED``, then ``CLOSED``), changed under the ticket's lock,
so a session cannot be thrown out in the very moment it logs in. The limits and the bans live
in the shared state and hold across every worker; the worker's main thread calls
``Gate.police`` once a second, which closes the connections not logged in within
``login_timeout`` and those of an address banned meanwhile (by any worker), through the
``kick`` callback the FTP layer gave with the connection.

Refusals come in bursts (one address opening a thousand sockets): ``BurstLog`` writes the
first of a burst at once and then one line per address and interval with the count.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Optional

from .config import ServerConfig
from .shared import Limits, SharedState, address_key

log = logging.getLogger(__name__)

BURST_SECONDS = 10.0
BURST_KEYS = 1024  # addresses tracked by one BurstLog; more are counted together
BANNED = "Too many failed logins from your address; try again later."
LOGIN_TIMED_OUT = "Login timed out."


class SessionState(Enum):
    PENDING = "pending"  # connected, not logged in: counts against the pre-login limits
    LOGGED_IN = "logged in"
    KICKED = "kicked"  # told to go (login timeout, ban); its session thread replies 421
    CLOSED = "closed"


_MOVES = {
    SessionState.PENDING: {SessionState.LOGGED_IN, SessionState.KICKED, SessionState.CLOSED},
    SessionState.LOGGED_IN: {SessionState.CLOSED},
    SessionState.KICKED: {SessionState.CLOSED},
    SessionState.CLOSED: set(),
}


@dataclass(eq=False)
class Ticket:
    """One admitted connection: its row in the shared session table and its state."""

    ip: str
    row: int
    deadline: float  # time.monotonic() by which it must have logged in
    kick: Callable[[str], None]  # asks the session to reply 421 and close (any thread)
    state: SessionState = SessionState.PENDING
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def move(self, to: SessionState) -> bool:
        """Go to state ``to`` if allowed from here (caller holds ``lock``)."""
        if to not in _MOVES[self.state]:
            return False
        self.state = to
        return True


class BurstLog:
    """Logs like events of one address at most twice per ``interval``: the first at once,
    then how many more came. Thread-safe; ``flush`` runs from the worker's tick."""

    def __init__(self, interval: float = BURST_SECONDS, max_keys: int = BURST_KEYS) -> None:
        self.interval, self.max_keys = interval, max_keys
        self._lock = threading.Lock()
        self._bursts: dict[tuple[str, str], list[float]] = {}  # -> [first seen, count after]

    def note(self, ip: str, what: str, now: Optional[float] = None) -> None:
        """Record that ``what`` happened to a connection from ``ip``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            key = (ip, what)
            if key not in self._bursts and len(self._bursts) >= self.max_keys:
                key = ("other addresses", what)
            burst = self._bursts.get(key)
            if burst is not None:
                burst[1] += 1
                return
            self._bursts[key] = [now, 0]
        log.warning("%s: %s", key[0], what)

    def flush(self, now: Optional[float] = None) -> None:
        """Log the counts of bursts older than the interval, and forget them."""
        now = time.monotonic() if now is None else now
        with self._lock:
            ended = [(key, burst) for key, burst in self._bursts.items()
                     if now - burst[0] >= self.interval]
            for key, _ in ended:
                del self._bursts[key]
        for (ip, what), (first, count) in ended:
            if count:
                log.warning("%s: %s (%d more times in %.0fs)", ip, what, count, now - first)


class Gate:
    """Admission, login and pre-login policing for the sessions of one worker."""

    def __init__(self, state: SharedState, server: ServerConfig, pid: int) -> None:
        self.state, self.pid = state, pid
        self.limits = Limits(server.max_connection_num, server.max_connections_per_ip,
                             server.max_prelogin_connections,
                             server.max_prelogin_connections_per_ip)
        self.login_timeout = server.login_timeout
        self._bans_on = bool(server.max_login_failures)
        self._failures = (server.max_login_failures, server.login_failure_window,
                          server.ban_time)
        self.refusals = BurstLog()
        self._lock = threading.Lock()
        self._pending: set[Ticket] = set()
        self._ban_epoch = state.ban_epoch()
        self._bans: dict = {}  # address key -> banned until, as of epoch _bans_read
        self._bans_read = -1
        self._bans_lock = threading.Lock()

    def admit(self, ip: str, kick: Callable[[str], None]) -> tuple[Optional[Ticket],
                                                                   Optional[str]]:
        """Admit a new connection from ``ip``: return its ticket, or why it is refused (the
        refusal is logged here, once per burst)."""
        reason = BANNED if self._banned_at_accept(ip) else None
        row = None
        if reason is None:
            row, reason = self.state.admit(self.pid, ip, self.limits)
        if row is None:
            self.refusals.note(ip, f"connection refused: {reason}")
            return None, reason
        ticket = Ticket(ip, row, time.monotonic() + self.login_timeout, kick)
        with self._lock:
            self._pending.add(ticket)
        return ticket, None

    def log_in(self, ticket: Ticket) -> Optional[str]:
        """Called on a correct password: return None if the session may go on, else why not
        (it was banned or timed out meanwhile, or the server is full of logged-in users).
        A session logging in again (USER after login, REIN) keeps its place."""
        with ticket.lock:
            if ticket.state is SessionState.LOGGED_IN:
                return None
            if ticket.state is not SessionState.PENDING:
                return BANNED if self.is_banned(ticket.ip) else LOGIN_TIMED_OUT
            reason = self.state.log_in(ticket.row, self.pid, self.limits.logged_in)
            if reason is None:
                ticket.move(SessionState.LOGGED_IN)
        with self._lock:
            self._pending.discard(ticket)
        return reason

    def close(self, ticket: Ticket) -> None:
        """The connection ends: free its place. After this, ``kick`` is never called."""
        with ticket.lock:
            ticket.move(SessionState.CLOSED)
        with self._lock:
            self._pending.discard(ticket)
        self.state.release(ticket.row, self.pid)

    def is_banned(self, ip: str) -> bool:
        return self._bans_on and self.state.is_banned(ip, time.time())

    def _banned_at_accept(self, ip: str) -> bool:
        """:meth:`is_banned` from this worker's copy of the ban table, read again only when
        a ban started (the epoch moved) or one the copy holds ran out (it may have been
        extended): an accept costs no scan of the table. USER and PASS still read it."""
        if not self._bans_on:
            return False
        now, key = time.time(), address_key(ip)
        with self._bans_lock:
            epoch = self.state.ban_epoch()
            until = self._bans.get(key, 0) if epoch == self._bans_read else None
            if until is None or 0 < until <= now:
                self._bans = dict(self.state.banned(now))
                self._bans_read = epoch
                until = self._bans.get(key, 0)
        return until > now

    def login_failed(self, ip: str) -> bool:
        """Record a failed login from ``ip``; return True if the address is now banned."""
        if not self._bans_on:
            return False
        return self.state.record_failure(ip, time.time(), *self._failures)

    def police(self) -> None:
        """Close pending connections past their login deadline or of a banned address, and
        write the counts of refusal bursts. Runs in the worker's main thread, once a second."""
        now = time.monotonic()
        with self._lock:
            pending = list(self._pending)
        epoch = self.state.ban_epoch()
        banned = set()
        if epoch != self._ban_epoch:
            self._ban_epoch = epoch
            banned = self.state.banned_keys(time.time())
        for ticket in pending:
            if banned and address_key(ticket.ip) in banned:
                self._kick(ticket, BANNED, "closed: its address was banned")
            elif now >= ticket.deadline:
                self._kick(ticket, LOGIN_TIMED_OUT,
                           f"closed: no login within login_timeout={self.login_timeout}s")
        self.refusals.flush(now)

    def _kick(self, ticket: Ticket, reason: str, what: str) -> None:
        with ticket.lock:
            if not ticket.move(SessionState.KICKED):
                return
            ticket.kick(reason)
        with self._lock:
            self._pending.discard(ticket)
        self.refusals.note(ticket.ip, what)
