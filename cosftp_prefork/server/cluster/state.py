"""A worker's view of the state the cluster's nodes share (see the package's doc): admission,
bans, failed logins and the heartbeat, each one script call, answered from this node's own
figures while Redis cannot be asked."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import redis

from ...config.model import ClusterConfig
from ...errors import ConfigError
from ..burst import BurstLog
from ..scoreboard import (
    CLUSTER_BUSY_CLOSED,
    CLUSTER_BUSY_OPEN,
    CLUSTER_DOWN_CLOSED,
    CLUSTER_DOWN_OPEN,
    CLUSTER_ERRORS,
    CLUSTER_LOADING_CLOSED,
    CLUSTER_LOADING_OPEN,
    CLUSTER_NONE,
    CLUSTER_READ_ONLY_CLOSED,
    CLUSTER_READ_ONLY_OPEN,
    CLUSTER_UNSUPPORTED_CLOSED,
    CLUSTER_UNSUPPORTED_OPEN,
    CLUSTER_UP,
    AccountKey,
)
from .keys import (
    BANS_KEPT,
    BANS_MADE,
    BANS_MADE_COUNT,
    BANS_SECONDS,
    KEEP_HASH,
    LOGGED_IN_FIELD,
    NODE_TTL,
    PREFIX,
    SEQUENCE_FIELD,
    SKIPS_BEFORE_REWRITE,
    UNBAN_COUNT,
    UNBAN_EPOCH,
    UNBANNING,
    UNBANS,
    WRITE_PROBE,
    account_field,
    ban_key,
    client_key,
)
from .link import (
    ERROR_SECONDS,
    MOVES,
    REDIS_CONNECTIONS,
    Link,
    NoConnectionFree,
    Silence,
    busy,
    connect,
    describe,
    public_url,
    refuses_writes,
    server_version,
    silence,
)
from .scripts import (
    ADMIT,
    BANS,
    COUNTED,
    FAIL,
    HEARTBEAT,
    LIBRARY,
    REPUBLISH,
    SEQUENCE,
    WRITABLE,
)

log = logging.getLogger(__name__)
# A node's session table as a heartbeat sends it: connections per address, logged-in
# sessions, logged-in sessions per account.
NodeCounts = tuple[Counter, int, dict[AccountKey, int]]
UNAVAILABLE = "Service temporarily unavailable (shared state unreachable); try again later."
# A DOWN link's view for status, by why Redis serves nothing and redis_down (closed?).
_DOWN_VIEWS = {
    (Silence.UNREACHABLE, False): CLUSTER_DOWN_OPEN,
    (Silence.UNREACHABLE, True): CLUSTER_DOWN_CLOSED,
    (Silence.BUSY, False): CLUSTER_BUSY_OPEN,
    (Silence.BUSY, True): CLUSTER_BUSY_CLOSED,
    (Silence.LOADING, False): CLUSTER_LOADING_OPEN,
    (Silence.LOADING, True): CLUSTER_LOADING_CLOSED,
}


@dataclass(frozen=True)
class Unban:
    """An unban made on some node: of ``address`` (None: every address)."""

    address: Optional[str]


def _unbans(members: list) -> list[Unban]:
    """The unbans noted in Redis (``<number>:<time>:<address or *>``; the time is for the
    eye: Redis's order of bans and unbans is what counts); what is not one is skipped
    (nothing of it is logged)."""
    found = []
    for member in members:
        _, _, rest = str(member).partition(":")
        _, _, address = rest.partition(":")
        try:
            found.append(Unban(None if address == "*" else client_key(address)))
        except ValueError:
            continue
    return found


@dataclass(frozen=True)
class Beat:
    """What a heartbeat brought: the unbans made since the last one (on any node), whether
    Redis did not know this node (``scripts.HEARTBEAT``): what the node holds (bans, quota
    reservations) is to be published there again; and the bans made since the last one
    (on any node, or published again; every one noted if an ``unban --all`` came) that
    Redis still holds, with those it holds of the addresses the unbans name (made after
    them), each an address and when it ends (``time.time()``)."""

    unbans: list[Unban]
    unknown: bool = False
    bans: list[tuple[str, float]] = field(default_factory=list)
    # The first beat since this worker found Redis again (unreachable, refusing writes, too
    # old): what the node made meanwhile reached only its own table.
    rejoined: bool = False
    # The number of the last unban brought by now (None: the beat did not land), whether
    # it is lower than the one before or of another epoch (Redis's counter started again),
    # and the counter's epoch ('': none).
    seen: Optional[int] = None
    restarted: bool = False
    epoch: str = ""


def _bans_made(flat: list) -> list[tuple[str, float]]:
    """The bans a heartbeat brought (address, milliseconds left, ...) as (address, when it
    ends); what is not an address is skipped (nothing of it is logged)."""
    found = []
    for address, left in zip(flat[::2], flat[1::2]):
        try:
            found.append((client_key(str(address)), _ends(left)))
        except ValueError:
            continue
    return found


def _epoch(value: Any) -> str:
    """The unban counter's epoch a heartbeat brought: 16 hex digits (the script deletes
    anything else), or '' for none."""
    text = str(value or "")
    return text if len(text) == 16 and all(c in "0123456789abcdef" for c in text) else ""


def _ends(left_ms: Any) -> float:
    """When a ban with ``left_ms`` milliseconds left ends (``time.time()``), 0 if none."""
    return time.time() + int(left_ms) / 1000 if int(left_ms) > 0 else 0.0


@dataclass(frozen=True)
class Elsewhere:
    """What the other nodes hold for one client address: when its ban ends (0: none)."""

    banned_until: float
    per_ip: int
    logged_in: int
    account: int = 0  # logged-in sessions of the account asked about


class ClusterState:
    """This node's view of the shared state. Every public method is safe from any thread;
    while Redis is unreachable (or unsupported) each returns None (or False, or nothing)
    without asking it."""

    def __init__(self, config: ClusterConfig) -> None:
        self.node, self.fail_closed = config.node_id, config.redis_down == "closed"
        self._redis = connect(config)
        self._scripts = {name: self._redis.register_script(LIBRARY + body) for name, body in
                         (("admit", ADMIT), ("bans", BANS), ("fail", FAIL),
                          ("counted", COUNTED), ("sequence", SEQUENCE),
                          ("heartbeat", HEARTBEAT), ("writable", WRITABLE),
                          ("republish", REPUBLISH))}
        self._unbans_seen = 0  # the number of the last unban the heartbeat brought
        self._unbans_epoch = ""  # and the epoch of the counter that gave it ('': none)
        self._bans_seen = 0  # and of the last ban made
        self._rejoined = False  # Redis found again since the last heartbeat that landed
        self._skipped = 0  # heartbeats in a row that did not rewrite the node's hash
        self._url = public_url(config.redis_url)
        self._lock = threading.Lock()
        self._link = Link.UNCHECKED
        self._silence = Silence.UNREACHABLE  # why, while the link is DOWN
        self._retry_at = 0.0  # time.monotonic() from which a DOWN or UNSUPPORTED link is tried
        self._errors_until = 0.0  # status reports reply errors until then
        self._errors = BurstLog(log, ERROR_SECONDS, level=logging.ERROR)
        self._repairs = BurstLog(log, ERROR_SECONDS)
        self._busy = BurstLog(log, ERROR_SECONDS)
        # The pool's connections, counted here to say when they run out (and how often).
        self._free = threading.BoundedSemaphore(REDIS_CONNECTIONS)
        self._timeout = config.redis_timeout
        self._check_interval = config.redis_check_interval

    def verify(self) -> None:
        """At worker start: raise ``ConfigError`` if Redis answers but cannot be used. An
        unreachable Redis is an outage (logged, asked again later), as ``redis_down``
        says."""
        problem = self._check()
        if problem is not None:
            raise problem

    def view(self) -> int:
        """``scoreboard.CLUSTER_*``: this worker's view, for ``cosftpctl status``."""
        with self._lock:
            link, errors = self._link, time.monotonic() < self._errors_until
            why = self._silence
        if link is Link.DOWN:
            return _DOWN_VIEWS[why, self.fail_closed]
        if link is Link.UNSUPPORTED:
            return CLUSTER_UNSUPPORTED_CLOSED if self.fail_closed else CLUSTER_UNSUPPORTED_OPEN
        if link is Link.READ_ONLY:
            return CLUSTER_READ_ONLY_CLOSED if self.fail_closed else CLUSTER_READ_ONLY_OPEN
        if link is Link.UNCHECKED:
            return CLUSTER_NONE
        return CLUSTER_ERRORS if errors else CLUSTER_UP

    def _move(self, to: Link) -> Link:
        """Go to ``to`` (caller holds ``_lock``); return the state left."""
        was = self._link
        if to not in MOVES[was]:
            raise RuntimeError(f"cluster link cannot go from {was.value} to {to.value}")
        self._link = to
        if to is not Link.UP:
            self._retry_at = time.monotonic() + self._check_interval
        return was

    def _check(self) -> Optional[ConfigError]:
        """Ask Redis its version and whether it takes writes; move to UP, UNSUPPORTED
        (returned), READ_ONLY or DOWN. Another error answered to the write is left to the
        calls (logged by them): Redis is usable."""
        try:
            with self._connection():
                version = server_version(self._redis, self._url)
                refusal = self._write_refusal()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._went_down("version check", exc)
            return None
        except ConfigError as exc:
            with self._lock:
                was = self._move(Link.UNSUPPORTED)
            if was not in (Link.UNCHECKED, Link.UNSUPPORTED):  # at start, the worker says it
                log.error("cluster: %s; %s", exc.problem, self._mode())
            return exc
        if refusal is not None:
            self._went_down("write check", refusal, Link.READ_ONLY)
            return None
        with self._lock:
            was = self._move(Link.UP)
            self._rejoined = self._rejoined or was is not Link.UNCHECKED
        if was is Link.UNCHECKED:
            log.info("cluster: Redis %s at %s; bans and connection counts shared", version,
                     self._url)
        else:
            log.warning("cluster: Redis %s at %s %s again; bans and connection counts are "
                        "shared again", version, self._url,
                        "takes writes" if was is Link.READ_ONLY else "reachable")
        return None

    def _write_refusal(self) -> Optional[redis.RedisError]:
        """Write a key and delete it (under a connection held): the error Redis answered
        if it refuses every write now (``link.refuses_writes``), else None (another error
        is left to the calls, which log it). Raises redis-py's ConnectionError or
        TimeoutError if Redis cannot be reached, ``link.Busy`` if it serves nothing now."""
        try:
            self._scripts["writable"]([WRITE_PROBE], [])
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except redis.RedisError as exc:
            if (found := busy(exc)) is not None:
                raise found from exc
            return exc if refuses_writes(exc) else None
        return None

    def _usable(self) -> bool:
        """True if Redis may be asked now: up, or due for another try and found fit (one
        thread tries; the others go on without Redis until it has)."""
        with self._lock:
            if self._link is Link.UP:
                return True
            if time.monotonic() < self._retry_at:
                return False
            self._retry_at = time.monotonic() + self._check_interval
        self._check()
        return self._up()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[None]:
        """Hold one of this worker's ``REDIS_CONNECTIONS`` for a call: at once if one is
        free, else (said in the log, then counted a minute) within ``redis_timeout``, or
        raise ``NoConnectionFree``: a burst of calls queues here, not on Redis."""
        if not self._free.acquire(blocking=False):
            self._busy.note("cluster", f"all {REDIS_CONNECTIONS} connections of this worker "
                            f"to Redis at {self._url} busy (Redis slow?); calls wait up to "
                            f"redis_timeout for one, then go on with this node's own "
                            f"figures")
            if not self._free.acquire(timeout=self._timeout):
                raise NoConnectionFree(f"none of this worker's {REDIS_CONNECTIONS} "
                                       f"connections came free within redis_timeout")
        try:
            yield
        finally:
            self._free.release()

    def _up(self) -> bool:
        """True if the last call found Redis up."""
        with self._lock:
            return self._link is Link.UP

    def _mode(self) -> str:
        return ("refusing new connections (redis_down = closed)" if self.fail_closed else
                "serving on this node's own scoreboard (redis_down = open)")

    def _went_down(self, what: str, exc: Exception, to: Link = Link.DOWN) -> None:
        """Redis could not be reached (``to`` DOWN) or refuses writes (READ_ONLY) in the
        call ``what``: logged once, as it starts, not at each retry while it lasts. Why a
        DOWN Redis serves nothing is kept at each call (a BUSY one may turn unreachable),
        for status."""
        with self._lock:
            was = self._move(to)
            self._silence = silence(exc)
        if was is not to:
            log.error("cluster: Redis at %s %s (%s: %s); %s", self._url,
                      "refuses writes" if to is Link.READ_ONLY else "unreachable", what,
                      describe(exc), self._mode())

    def _run(self, what: str, script: str, keys: list, args: list, failed: Any = None):
        """Run one of the scripts; return its answer, None if Redis is unreachable or
        refuses writes (``link.refuses_writes``), or ``failed`` if Redis answered with
        another error (logged, shown by status) or every
        connection stayed busy with other calls (Redis answers, slowly: not an outage)."""
        if not self._usable():
            return None
        try:
            with self._connection():
                if not self._up():  # found unreachable while this call waited
                    return None
                answer, repaired = self._scripts[script](keys, args)
        except NoConnectionFree:  # (logged when they all turned busy)
            return failed if self._up() else None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._went_down(what, exc)
            return None
        except redis.RedisError as exc:
            if (found := busy(exc)) is not None:  # it serves nothing now: an outage
                self._went_down(what, found)
                return None
            if refuses_writes(exc):  # nothing this node writes lands: an outage
                self._went_down(what, exc, Link.READ_ONLY)
                return None
            with self._lock:
                self._errors_until = time.monotonic() + ERROR_SECONDS
            self._errors.note("cluster", f"Redis at {self._url} answered the {what} with an "
                              f"error; this node went on with its own figures for it",
                              describe(exc))
            return failed
        for key_class in repaired:
            self._repairs.note("cluster", f"{PREFIX}{key_class} held what this server does "
                               f"not write there (another type, a bad count, a ban without "
                               f"expiry); deleted and written anew")
        return answer

    def add_scripts(self, scripts: dict[str, str]) -> None:
        """Scripts of another module keeping state here (``server.quotashare``), each run
        with :meth:`run` as this module's own are: same library, same error handling."""
        for name, body in scripts.items():
            self._scripts[name] = self._redis.register_script(LIBRARY + body)

    def run(self, what: str, script: str, keys: list, args: list, failed: Any = None) -> Any:
        """Run a script added by :meth:`add_scripts`: its answer, None if Redis is
        unreachable, ``failed`` if it answered with an error."""
        return self._run(what, script, keys, args, failed)

    def usable(self) -> bool:
        """Whether Redis may be asked now (see ``_usable``)."""
        return self._usable()

    def refusal(self) -> Optional[str]:
        """What a new connection is told when Redis could not be asked about it:
        ``UNAVAILABLE`` with ``redis_down = closed``, None (it is let in on this node's own
        figures) with ``open``."""
        return UNAVAILABLE if self.fail_closed else None

    def elsewhere(self, ip: str, account: Optional[AccountKey] = None) -> Optional[Elsewhere]:
        """The other live nodes' figures for ``ip`` (and the sessions of ``account``), or
        None if Redis is unreachable."""
        field = LOGGED_IN_FIELD if account is None else account_field(account)
        found = self._run("admission", "admit", [PREFIX + "nodes", ban_key(ip)],
                          [time.time() - NODE_TTL, self.node, client_key(ip),
                           PREFIX + "conn:", LOGGED_IN_FIELD, field], failed=[0, 0, 0, 0])
        if found is None:
            return None
        return Elsewhere(_ends(found[0]), int(found[1]), int(found[2]),
                         int(found[3]) if account is not None else 0)

    def ban_end(self, ip: str) -> float:
        """When the ban of ``ip`` ends (``time.time()``); 0 if it serves none (or Redis
        cannot be asked)."""
        return self.ban_ends({ip}).get(ip, 0.0)

    def ban_ends(self, ips: set[str]) -> dict[str, float]:
        """Those of ``ips`` serving a ban, with when it ends (none while Redis is
        unreachable)."""
        wanted = sorted(ips)
        found = self._run("ban check", "bans", [ban_key(ip) for ip in wanted], [])
        return {ip: _ends(left) for ip, left in zip(wanted, found or ()) if int(left) > 0}

    def record_failure(self, ip: str, limit: int, window: int, ban: int,
                       earned_here: bool = False) -> bool:
        """Count a failed login from ``ip`` cluster-wide; True if that earns it a ban, or
        if ``earned_here`` (this node's own count earned it): the ban is then made in Redis
        by this same call (``scripts.FAIL``), in its place among the unbans."""
        key = client_key(ip)
        return bool(self._run("failed-login count", "fail",
                              [PREFIX + "fail:" + key, ban_key(ip), BANS_MADE, BANS_MADE_COUNT,
                               UNBAN_COUNT, UNBAN_EPOCH],
                              [limit, window, ban, int(time.time()) + ban, key, BANS_KEPT,
                               BANS_SECONDS, int(earned_here)]))

    def republish(self, bans: list[tuple[str, int]]) -> Optional[int]:
        """Publish again ``bans`` (address, when it ends) that this node holds, each where
        Redis holds no ban of that address, and note them among the bans made (every node
        then holds them); how many it wrote (0 too if Redis answered an error). None if
        nothing was done and it is to be tried again: Redis could not be asked, an unban
        was noted since this worker's last heartbeat, or an ``unban --all`` runs
        (``scripts.REPUBLISH``)."""
        now = int(time.time())
        live = [(ip, until) for ip, until in bans if until > now]
        if not live:
            return 0
        written = self._run("bans published again", "republish",
                            [BANS_MADE, BANS_MADE_COUNT, UNBAN_COUNT, UNBANNING,
                             UNBAN_EPOCH, *(ban_key(ip) for ip, _ in live)],
                            [BANS_KEPT, BANS_SECONDS, self._unbans_seen, self._unbans_epoch,
                             *(value for ip, until in live
                               for value in (client_key(ip), until, until - now))],
                            failed=0)
        return None if written is None or int(written) < 0 else int(written)

    def counted(self, ip: str, connections: int, logged_in: int = 0,
                account: Optional[AccountKey] = None) -> None:
        """This node gained (or lost, negative) connections of ``ip`` and logged-in
        sessions (of ``account``): tell the others now rather than at the next rewrite."""
        changes = [client_key(ip), connections, SEQUENCE_FIELD, 1]
        if logged_in:
            changes += [LOGGED_IN_FIELD, logged_in]
        if logged_in and account is not None:
            changes += [account_field(account), logged_in]
        self._run("connection count", "counted", [PREFIX + "conn:" + self.node],
                  [NODE_TTL, *changes])

    def publish(self, table: Callable[[], Optional[NodeCounts]]) -> Beat:
        """Rewrite this node's counts from ``table()`` (its session table: per address,
        logged in, per account; None if it cannot be read now) and mark it alive; log the
        counts of repeated errors; return the unbans and the bans made since the last call
        (on any node), whether Redis did not know the node, and whether this worker found
        Redis again since the last heartbeat that landed. Runs from the worker's tick.

        The table is read after the hash's sequence: a change counted between the two
        (another worker's) may be missing from the table, and the heartbeat then keeps the
        hash as the changes left it rather than lose it; so it does without a table."""
        key = PREFIX + "conn:" + self.node
        sequence = "*" if self._skipped >= SKIPS_BEFORE_REWRITE else \
            self._run("heartbeat", "sequence", [key], [SEQUENCE_FIELD], failed="*")
        if sequence is None:
            return Beat([])
        read = table()
        counts: list = []
        if read is None:
            sequence = KEEP_HASH
        else:
            per_ip, logged_in, accounts = read
            counts = [LOGGED_IN_FIELD, logged_in]
            for ip, n in per_ip.items():
                counts += [client_key(ip), n]
            for account, n in accounts.items():
                counts += [account_field(account), n]
        now = time.time()
        answer = self._run("heartbeat", "heartbeat",
                           [key, PREFIX + "nodes", UNBANS, UNBAN_COUNT, BANS_MADE,
                            BANS_MADE_COUNT, UNBAN_EPOCH],
                           [self.node, now, NODE_TTL, now - 10 * NODE_TTL, self._unbans_seen,
                            SEQUENCE_FIELD, sequence, self._bans_seen, PREFIX + "ban:",
                            BANS_KEPT, self._unbans_epoch, *counts])
        for burst_log in (self._errors, self._repairs, self._busy):
            burst_log.flush()
        if not answer:
            return Beat([])
        before, self._unbans_seen, members = self._unbans_seen, int(answer[0]), answer[1]
        epoch_before, self._unbans_epoch = self._unbans_epoch, _epoch(answer[7])
        self._skipped = 0 if int(answer[2]) else self._skipped + 1
        self._bans_seen = int(answer[4])
        with self._lock:
            rejoined, self._rejoined = self._rejoined, False
        return Beat(_unbans(members), bool(int(answer[3])),
                    _bans_made(answer[5]) + _bans_made(answer[6]), rejoined,
                    self._unbans_seen,
                    self._unbans_seen < before or self._unbans_epoch != epoch_before,
                    self._unbans_epoch)

    def resume_unbans(self, number: int, epoch: str) -> None:
        """Bring only the unbans after ``number`` of the counter of ``epoch`` (its node's
        table was judged by those up to it: ``BanTable.unbans_applied``), at this worker's
        start, before any heartbeat: one made before a ban this node holds must not lift it
        (found: a ban made while Redis could not be asked, restored from the bans file, was
        lifted by an older unban of its address, or any ``unban --all``, among the last
        1,000 read again). A counter that started again since (Redis lost its keys) has
        another epoch: all are brought then (found: with the number alone, as many unbans
        made since as ``number`` were taken for those seen, and skipped). An ``epoch`` of
        '' (a bans file of the version before) trusts the number, as then."""
        self._unbans_seen, self._unbans_epoch = number, epoch

    def close(self) -> None:
        self._redis.close()
