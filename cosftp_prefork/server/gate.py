"""Connection governance of one worker: who may connect, how long they may take to log in,
and who is thrown out when their address gets banned.

Every connection gets a ``Ticket`` when it is admitted; its life is one state machine
(``PENDING`` → ``LOGGED_IN`` or ``KICKED``, then ``CLOSED``; a logged-in session that starts a
new login with ``USER`` or ``REIN`` goes back to ``PENDING``, as a new connection would come,
and one the admin API closes is ``KICKED`` too),
changed under the ticket's lock, so a session cannot be thrown out in the very moment it logs
in. The limits and the bans live in the shared state and hold across every worker; the
worker's main thread calls ``Gate.police`` once a second, which closes the connections not
logged in within ``login_timeout`` and those of an address banned meanwhile (by any worker),
through the ``kick`` callback the FTP layer gave with the connection; a ban made through the
admin API wakes it to do so at once (``police_bans``, ``server.wakeup``), and until then
each such connection is closed before it runs another command (``kick_if_banned``).

A login also takes a seat of its account (``max_sessions``, counted in the scoreboard with
the rate buckets of the account).

With ``[CLUSTER] redis_url`` the bans, failed logins, per-address, logged-in and per-account
counts are also those of the other nodes (``cluster``). Nothing in the worker's main thread
(its accept loop) asks Redis, which may take up to ``redis_timeout`` a call: a connection is
admitted at accept by this node's bans and limits, then counted again (``recount``) in its
session's thread, before its greeting, with what the other nodes hold taken off the limits.
This node's counts are published on every change and, with the bans of other nodes for the
pending connections, once a second by ``share`` on a thread of its own, which also brings
the unbans made on any node (``cosftpctl unban``); this node's own table then forgets those
addresses too, unless Redis holds a ban of the address made after the unban (Redis orders
bans and unbans: ``_forget_unbanned``). A ban earned at a failed login here,
by this node's count or the cluster's, and one the cluster holds that this node enforced
(refused a connection or a login for it), is in this node's table until it ends; when
Redis did not know the node (it lost its keys, or an outage), or the table changed (a ban
made through the admin API), ``share`` publishes those bans where Redis holds none.

Addresses in ``ban_allowlist`` are never banned, here or by the cluster: their failed logins
are not counted, and a ban they hold (made before they were listed, or by a node without the
list) is not enforced. Every connection limit and ``login_timeout`` still hold for them.

Refusals come in bursts (one address opening a thousand sockets): ``BurstLog`` writes the
first of a burst at once and then one line per address and interval with the count.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Callable, Optional

from ..config.model import ServerConfig
from .burst import BurstLog
from .cluster import NODE_TTL
from .scoreboard import (
    CLUSTER_NONE,
    TOO_MANY,
    TOO_MANY_LOGGED_IN,
    TOO_MANY_PER_IP,
    TOO_MANY_SESSIONS,
    AccountKey,
    BanRow,
    Limits,
    Seat,
    SharedState,
    address_group,
    address_key,
    address_text,
)

if TYPE_CHECKING:  # redis-py comes with them: only a cluster makes one (workerstats)
    from .cluster import Beat, ClusterState, NodeCounts

log = logging.getLogger(__name__)

BANNED = "Too many failed logins from your address; try again later."
LOGIN_TIMED_OUT = "Login timed out."
KICKED = "Session closed by the server's administrator."


class SessionState(Enum):
    PENDING = "pending"  # connected, not logged in: counts against the pre-login limits
    LOGGED_IN = "logged in"
    KICKED = "kicked"  # told to go (login timeout, ban, admin API); its thread replies 421
    CLOSED = "closed"


_MOVES = {
    SessionState.PENDING: {SessionState.LOGGED_IN, SessionState.KICKED, SessionState.CLOSED},
    SessionState.LOGGED_IN: {SessionState.PENDING, SessionState.KICKED, SessionState.CLOSED},
    SessionState.KICKED: {SessionState.CLOSED},
    SessionState.CLOSED: set(),
}


@dataclass(frozen=True)
class Client:
    """Who a connection comes from, as the gate counts it; made once per connection
    (``Gate.client``), not again at each check of a limit or a ban."""

    ip: str  # its own address: the logs, ban_allowlist
    group: str  # what it is counted and banned as (``ipv6_prefix_length``'s network)
    key: tuple  # ``group`` as the ban table's keys are written (``address_key``)
    bannable: bool  # bans are on and ``ip`` is not in ban_allowlist


@dataclass(eq=False)
class Ticket:
    """One admitted connection: its row in the shared session table and its state."""

    client: Client
    row: int
    deadline: float  # time.monotonic() by which it must have logged in (again)
    kick: Callable[[str], None]  # asks the session to reply 421 and close (any thread)
    state: SessionState = SessionState.PENDING
    account: Optional[AccountKey] = None  # logged in as (the scoreboard's key)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    kicked_logged_in: bool = False  # KICKED from LOGGED_IN: it still counts as logged in
    shared: bool = False  # counted in the cluster's Redis (by ``recount``)

    def move(self, to: SessionState) -> bool:
        """Go to state ``to`` if allowed from here (caller holds ``lock``)."""
        if to not in _MOVES[self.state]:
            return False
        self.kicked_logged_in = to is SessionState.KICKED and \
            self.state is SessionState.LOGGED_IN
        self.state = to
        return True


class Gate:
    """Admission, login and pre-login policing for the sessions of one worker."""

    BANNED = BANNED  # for the FTP handler, which knows the gate only as the one it is given

    def __init__(self, state: SharedState, server: ServerConfig, pid: int,
                 cluster: Optional[ClusterState] = None) -> None:
        self.state, self.pid, self.cluster = state, pid, cluster
        self.limits = Limits(server.max_connection_num, server.max_connections_per_ip,
                             server.max_prelogin_connections,
                             server.max_prelogin_connections_per_ip)
        self.login_timeout = server.login_timeout
        self._bans_on = bool(server.max_login_failures)
        self._allowlist = server.ban_allowlist
        self._prefix = server.ipv6_prefix_length
        self._failures = (server.max_login_failures, server.login_failure_window,
                          server.ban_time)
        self.refusals = BurstLog(log)
        self._lock = threading.Lock()
        self._pending: set[Ticket] = set()
        self._ban_epoch = state.ban_epoch()
        # The ban epoch whose bans this worker's cluster thread published (None: due).
        self._published_epoch: Optional[int] = None
        self._bans: dict = {}  # address key -> banned until, as of epoch _bans_read
        self._bans_read = -1
        self._bans_lock = threading.Lock()
        # the last unban judged by and its counter's epoch, as noted
        self._unbans_noted = state.unbans_applied()
        if cluster is not None:
            cluster.resume_unbans(*self._unbans_noted)

    @property
    def shared(self) -> bool:
        """True if the limits and bans are the cluster's: each connection is then counted
        again by ``recount`` before it is greeted."""
        return self.cluster is not None

    def admit(self, ip: str, kick: Callable[[str], None],
              per_address: bool = True) -> tuple[Optional[Ticket], Optional[str]]:
        """Admit a new connection from ``ip`` by this node's bans and limits: return its
        ticket, or why it is refused (the refusal is logged here, once per burst). Its login
        deadline starts now. Runs in the accept loop, so nothing here asks Redis, which may
        take up to redis_timeout to answer: each new connection would wait behind the one
        before. With a cluster, ``recount`` then asks it, in the session's thread.

        ``per_address`` False admits a balancer's connection before its PROXY header said
        whose it is, against the server-wide limits only: no bans or per-address caps (the
        balancer's address is every client's); ``recount`` then applies them to the
        client's address.
        """
        row, client = None, self.client(ip)
        if per_address:
            limits, reason = self.limits, BANNED if self._banned_at_accept(client) else None
        else:
            limits, reason = replace(self.limits, per_ip=0, prelogin_per_ip=0), None
        if reason is None:
            row, reason = self.state.admit(self.pid, client.group, limits, ip)
        if row is None:
            self.refusals.note(ip, f"connection refused: {reason}")
            return None, reason
        ticket = Ticket(client, row, time.monotonic() + self.login_timeout, kick)
        with self._lock:
            self._pending.add(ticket)
        return ticket, None

    def recount(self, ticket: Ticket, ip: str) -> Optional[str]:
        """Count the connection of ``ticket`` under the client address ``ip`` (the one its
        PROXY header named, or its own) against the bans and per-address limits, and those
        of the whole cluster (asking Redis: runs in the session's thread, before the
        greeting); it keeps its place server-wide and its login deadline. Return why it may
        not stay (a refusal is logged here, once per burst)."""
        client = self.client(ip)
        limits, reason = self._address_limits(client)
        with ticket.lock:
            if ticket.state is not SessionState.PENDING:  # kicked meanwhile: logged then
                return BANNED if self.is_banned(ticket.client) else LOGIN_TIMED_OUT
            if reason is None:
                reason = self.state.move(ticket.row, self.pid, client.group, limits, ip)
            if reason is None:
                ticket.client, ticket.shared = client, self.shared
        if reason is not None:
            self.refusals.note(ip, f"connection refused: {reason}")
            return reason
        if self.cluster is not None:
            self.cluster.counted(client.group, 1)
        return None

    def _address_limits(self, client: Client) -> tuple[Limits, Optional[str]]:
        """The limits for a connection from ``client``, or why it is refused (banned here
        or, with a cluster, anywhere)."""
        if self._banned_at_accept(client):
            return self.limits, BANNED
        if self.cluster is not None:
            return self._cluster_limits(client)
        return self.limits, None

    def _cluster_limits(self, client: Client) -> tuple[Limits, Optional[str]]:
        """The limits left for this node once the other nodes' connections are counted,
        or why ``client`` is refused cluster-wide."""
        found = self.cluster.elsewhere(client.group)
        if found is None:
            return self.limits, self.cluster.refusal()
        if found.banned_until and client.bannable:
            self._adopt(client.group, found.banned_until)
            return self.limits, BANNED
        per_ip, logged_in = (_left(self.limits.per_ip, found.per_ip),
                             _left(self.limits.logged_in, found.logged_in))
        if per_ip is None:
            return self.limits, TOO_MANY_PER_IP
        if logged_in is None:
            return self.limits, TOO_MANY
        return replace(self.limits, per_ip=per_ip, logged_in=logged_in), None

    def cluster_status(self) -> int:
        """``shared.CLUSTER_*``: how this worker reaches the cluster's Redis now."""
        return CLUSTER_NONE if self.cluster is None else self.cluster.view()

    def log_in(self, ticket: Ticket, account: Optional[AccountKey] = None,
               max_sessions: int = 0) -> Optional[str]:
        """Called on a correct password for ``account``: return None if the session may go
        on, else why not (it was banned or timed out meanwhile, or the server is full of
        logged-in users, or the account has ``max_sessions`` here and on the other nodes)."""
        limit, seats = self.limits.logged_in, max_sessions
        if (limit or seats) and self.cluster is not None:
            # not under the lock the tick takes
            found = self.cluster.elsewhere(ticket.client.group, account if seats else None)
            limit = _left(limit, found.logged_in if found else 0)
            seats = _left(seats, found.account if found else 0)
        with ticket.lock:
            if ticket.state is not SessionState.PENDING:
                return BANNED if self.is_banned(ticket.client) else LOGIN_TIMED_OUT
            if limit is None or seats is None:
                reason = TOO_MANY_LOGGED_IN if limit is None else TOO_MANY_SESSIONS
            else:
                seat = None if account is None else Seat(account, seats)
                reason = self.state.log_in(ticket.row, self.pid, limit, seat)
            if reason is None:
                ticket.move(SessionState.LOGGED_IN)
                ticket.account = account
                if self.cluster is not None:
                    self.cluster.counted(ticket.client.group, 0, 1, account)
        with self._lock:
            self._pending.discard(ticket)
        return reason

    def log_out(self, ticket: Ticket) -> Optional[str]:
        """A logged-in session starts a new login (``USER``, ``REIN``): it is a connection
        not logged in again, under the pre-login limits, with a new ``login_timeout``, and
        refused if its address is banned, as a new connection from there would be. Return
        why it is refused (logged here; the caller closes it), else None.

        Without this, a logged-in session could send passwords for ever, none of them
        counted against the pre-login limits or timed: 256 of them re-sending USER and PASS
        at once ran 256 password checks at once (docs/reliability.md, "Login cost")."""
        reason = BANNED if self.is_banned(ticket.client) else None
        with ticket.lock:
            if ticket.state is not SessionState.LOGGED_IN:
                return None
            if reason is None:
                reason = self.state.log_out(ticket.row, self.pid, self.limits)
            if reason is None:
                ticket.move(SessionState.PENDING)
                ticket.deadline = time.monotonic() + self.login_timeout
                account, ticket.account = ticket.account, None
        if reason is not None:
            self.refusals.note(ticket.client.ip, f"new login refused: {reason}")
            return reason
        with self._lock:
            self._pending.add(ticket)
        if self.cluster is not None:
            self.cluster.counted(ticket.client.group, 0, -1, account)
        return None

    def expire(self, ticket: Ticket) -> None:
        """The session's login deadline passed while it waited for its password to be
        checked: close it as :meth:`police` would (421, logged)."""
        self.kick(ticket, LOGIN_TIMED_OUT, f"closed: no login within login_timeout="
                   f"{self.login_timeout}s (its password waited for its turn to be checked)")

    def close(self, ticket: Ticket) -> None:
        """The connection ends: free its place. After this, ``kick`` is never called."""
        with ticket.lock:
            was_logged_in = ticket.state is SessionState.LOGGED_IN or ticket.kicked_logged_in
            ticket.move(SessionState.CLOSED)
        with self._lock:
            self._pending.discard(ticket)
        self.state.release(ticket.row, self.pid)
        if ticket.shared:
            self.cluster.counted(ticket.client.group, -1, -1 if was_logged_in else 0,
                                 ticket.account)

    def client(self, ip: str) -> Client:
        """Who ``ip`` is for the limits and bans: its group (``scoreboard.address_group``
        by ``ipv6_prefix_length``), and whether it may be banned (``ban_allowlist``)."""
        group = address_group(ip, self._prefix)
        return Client(ip, group, address_key(group), self._may_ban(ip))

    def _may_ban(self, ip: str) -> bool:
        """False if bans are off or ``ip`` is in ``ban_allowlist``."""
        if not self._bans_on:
            return False
        if not self._allowlist:
            return True
        address = ipaddress.ip_address(address_text(address_key(ip)))  # IPv4-mapped as IPv4
        return not any(address in network for network in self._allowlist)

    def is_banned(self, client: Client) -> bool:
        """True while ``client`` serves a ban made by this node or (cluster) any other."""
        if not client.bannable:
            return False
        if self.state.is_banned(client.group, time.time()):
            return True
        until = self.cluster.ban_end(client.group) if self.cluster is not None else 0.0
        if until:
            self._adopt(client.group, until)
        return bool(until)

    def _adopt(self, group: str, until: float, again: bool = False) -> None:
        """The cluster bans ``group`` until ``until`` (found at a refusal, or brought by
        the heartbeat): hold it in this node's own table too (unless that holds a ban of it
        already), so that it stays applied here until it ends whatever becomes of Redis
        (its keys lost, an outage), and is published again from here (``share``).
        ``again``: the address was unbanned in this heartbeat and Redis holds a ban of it
        made since: that ban's end replaces what the row held. Held as a copy: it never
        takes the place of a ban this node made (``BanTable.ban``)."""
        if again or not self.state.is_banned(group, time.time()):
            self.state.ban(group, int(until), copy=True)

    def _banned_at_accept(self, client: Client) -> bool:
        """:meth:`is_banned` by this node's table, from this worker's copy of it, read again
        only when the table changed (the epoch moved: a ban started, or ``cosftpctl unban``
        lifted one) or a ban the copy holds ran out (it may have been extended): an accept
        costs no scan of the table. USER and PASS still read it."""
        if not client.bannable:
            return False
        now, key = time.time(), client.key
        with self._bans_lock:
            epoch = self.state.ban_epoch()
            until = self._bans.get(key, 0) if epoch == self._bans_read else None
            if until is None or 0 < until <= now:
                self._bans = dict(self.state.banned(now))
                self._bans_read = epoch
                until = self._bans.get(key, 0)
        return until > now

    def login_failed(self, client: Client) -> bool:
        """Record a failed login from ``client`` (here and cluster-wide); return True if
        its group is now banned. One of ``ban_allowlist`` is not counted."""
        if not client.bannable:
            if self._bans_on:
                self.refusals.note(client.ip, "failed login not counted: the address is in "
                                   "ban_allowlist")
            return False
        banned = self.state.record_failure(client.group, time.time(), *self._failures)
        if self.cluster is not None and \
                self.cluster.record_failure(client.group, *self._failures,
                                            earned_here=banned) and not banned:
            # The cluster's count earned it (failures spread over nodes): this node holds
            # it too, so that it stays applied here until it ends, and is published again
            # if Redis loses it (``share``).
            self.state.ban(client.group, int(time.time()) + self._failures[2])
            banned = True
        return banned

    def _node_counts(self) -> Optional[NodeCounts]:
        """The node's counts for the heartbeat; None while another thread or process holds
        the session table (the tick must not wait for it: see ``sweep_accounts``)."""
        try:
            accounts = self.state.account_counts(wait=False)
        except BlockingIOError:
            return None
        return (*self.state.node_counts(), accounts)

    def police(self) -> None:
        """Close pending connections past their login deadline or of an address banned on
        this node, and write the counts of refusal bursts, forget the rate buckets of
        accounts logged out long enough. Runs in the worker's main thread (its accept
        loop), once a second; what the cluster says is ``share``'s, on a thread of its
        own."""
        self.state.sweep_accounts()
        now = time.monotonic()
        for ticket in self.police_bans():
            if now >= ticket.deadline:
                self.kick(ticket, LOGIN_TIMED_OUT,
                           f"closed: no login within login_timeout={self.login_timeout}s")
        self.refusals.flush(now)

    def police_bans(self) -> list[Ticket]:
        """Close the pending connections of an address banned on this node since this last
        looked (the ban epoch moved); return the pending connections left. Runs in the
        worker's main thread: its tick, and at once when the admin API's ban wakes it
        (``server.wakeup``)."""
        pending = self._pending_now()
        epoch = self.state.ban_epoch()
        banned = set()
        if epoch != self._ban_epoch:
            self._ban_epoch = epoch
            banned = self.state.banned_keys(time.time())
        return self._kick_banned(pending, banned)

    def kick_if_banned(self, ticket: Ticket) -> None:
        """Close the connection of ``ticket`` if it is not logged in and its address is
        banned on this node (from this worker's copy of the ban table: no scan)."""
        if ticket.state is SessionState.PENDING and self._banned_at_accept(ticket.client):
            self._kick_for_ban(ticket)

    def share(self) -> bool:
        """Publish this node's counts to the cluster, forget what was unbanned on any node,
        hold the bans made on any node, publish the bans this node holds where Redis has
        none if Redis did not know the node or the node's ban table changed, and close the
        pending connections of an address banned by another node (one Redis round trip
        each). Return whether Redis did not know the
        node (what else it holds is to be published again too). Runs once a second on the
        worker's cluster thread: Redis may take up to redis_timeout a call, which must not
        hold the accept loop."""
        beat = self.cluster.publish(self._node_counts)
        unbanned = self._forget_unbanned(beat)
        # Every node holds every ban (after the unbans: those the heartbeat brings are
        # still in Redis, so none of them was lifted since), so that a ban outlives Redis
        # losing its keys while any node runs, not only one the address met. One of an
        # address unbanned now is the ban made after that unban: held as Redis has it.
        for group, until in beat.bans:
            if self._may_ban(group):
                self._adopt(group, until, again=group in unbanned)
        if beat.seen is not None and (beat.seen, beat.epoch) != self._unbans_noted:
            # a worker starting next (a reload, the node's start) brings only those after it
            self.state.note_unbans_applied(beat.seen, beat.epoch, beat.restarted)
            self._unbans_noted = (beat.seen, beat.epoch)
        if self._bans_on:
            self._publish_bans(beat)
        pending = self._pending_now()
        if self._bans_on and pending:
            ends = self.cluster.ban_ends({t.client.group for t in pending})
            for group, until in ends.items():
                if self._may_ban(group):
                    self._adopt(group, until)
            self._kick_banned(pending, {address_key(group) for group in ends})
        return beat.unknown

    def _publish_bans(self, beat: Beat) -> None:
        """Publish the bans this node holds, each where Redis holds none, when Redis did
        not know this node (``beat.unknown``): it lost its keys (restarted without
        persistence, flushed, failed over to an empty replica), or no worker of the node
        reached it for ``NODE_TTL`` (an outage, the node's start); when this worker found
        it again after an outage, however short (``beat.rejoined``; found: one shorter than
        ``NODE_TTL`` left the bans made meanwhile on this node only); and when the node's
        ban table changed since this worker last published it (its epoch moved: a ban
        made through the admin API, or by this node's own count of failed logins, is
        written in Redis when it is made: this catches one Redis did not take then;
        found: an API ban stayed on its node, and the others let the address in). Runs
        after the unbans this heartbeat brought; a Redis that noted another unban since,
        or runs an ``unban --all``, writes nothing (``ClusterState.republish``), and this
        worker tries again at its next
        tick, after its heartbeat brought that unban: a ban lifted on another node is not
        made again from here. Each ban published holds on every node until it ends.
        Failed logins are not: each node's own count goes on."""
        epoch = self.state.ban_epoch()  # before the table: a change after it comes next tick
        if not (beat.unknown or beat.rejoined or epoch != self._published_epoch):
            return
        bans = [(group, until) for group, until in self.state.bans(time.time())
                if self._may_ban(group)]
        written = self.cluster.republish(bans)
        self._published_epoch = None if written is None else epoch
        if written and beat.unknown:
            log.warning("cluster: Redis did not know this node (restarted empty or flushed, "
                        "or not reached for %d s): published again the %d ban(s) this node "
                        "holds", NODE_TTL, written)
        elif written and beat.rejoined:
            log.warning("cluster: Redis answers again and did not hold %d ban(s) this node "
                        "holds (made or brought while it could not be asked): published "
                        "them", written)
        elif written:
            log.info("cluster: published %d ban(s) this node holds that Redis did not "
                     "(made here when Redis did not take them): every node holds them now",
                     written)

    def _pending_now(self) -> list[Ticket]:
        with self._lock:
            return list(self._pending)

    def _kick_for_ban(self, ticket: Ticket) -> None:
        self.kick(ticket, BANNED, "closed: its address was banned")

    def _kick_banned(self, pending: list[Ticket], banned: set) -> list[Ticket]:
        """Close those of ``pending`` whose address (key) is in ``banned``; return the
        others."""
        left = []
        for ticket in pending:
            if banned and ticket.client.key in banned and ticket.client.bannable:
                self._kick_for_ban(ticket)
            else:
                left.append(ticket)
        return left

    def _forget_unbanned(self, beat: Beat) -> set[str]:
        """Forget in this node's table the addresses unbanned on any node of the cluster
        (all of them for an ``unban --all``), their bans and failed logins, unless Redis
        holds a ban of the address now (brought by this heartbeat, ``beat.bans``): that
        ban was made after the unban, which deleted what Redis held before it, so it is
        kept. Redis's order of bans and unbans decides, not their times (found: judged by
        whole seconds, a ban made through the admin API or earned in the second after an
        unban was taken for older, dropped by its node and never published). A ban is in
        that order once its node wrote it there (at once when it is made, if Redis can be
        asked). Return the addresses forgotten or kept so."""
        if not beat.unbans:
            return set()
        everyone = any(unban.address is None for unban in beat.unbans)
        named = {unban.address for unban in beat.unbans}
        held = {group for group, _ in beat.bans}

        def older(row: BanRow) -> bool:
            return (everyone or row.address in named) and row.address not in held
        for row in self.state.lift(older):
            log.info("cluster: %s unbanned (cosftpctl unban on a node): this node forgot its "
                     "%s", row.address, "ban" if row.until > time.time() else "failed logins")
        return {group for group in held if everyone or group in named}

    def kick(self, ticket: Ticket, reason: str, what: str) -> None:
        """Tell the session of ``ticket`` to go (421 ``reason``) unless it is closing
        already; ``what`` is logged (once per burst)."""
        with ticket.lock:
            if not ticket.move(SessionState.KICKED):
                return
            ticket.kick(reason)
        with self._lock:
            self._pending.discard(ticket)
        self.refusals.note(ticket.client.ip, what)


def _left(limit: int, used_elsewhere: int) -> Optional[int]:
    """What remains of ``limit`` (0: none) for this node; None if nothing does."""
    if not limit:
        return 0
    return limit - used_elsewhere if used_elsewhere < limit else None
