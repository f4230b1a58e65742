"""State shared by the nodes of a cluster (``[CLUSTER] redis_url``): bans, failed-login
counts and connection counts in Redis (or Valkey), so a ban made on one node refuses the
client on every node and the per-address and logged-in limits hold for the whole cluster.

Keys (all under ``cosftp:``), each with an expiry so nothing outlives its use:

* ``ban:<ip>`` — the ban (a string, the time it ends), expiring with it; ``fail:<ip>`` —
  failed logins in the window (a count, expiring at the end of the window);
* ``conn:<node>`` — a hash of this node's connections per client address, ``@in`` its
  logged-in sessions, and ``@u:<digest>`` those of each account logged in there. Every
  worker rewrites it once a second from the node's own session table (``shared``) with a
  short expiry, so the counts of a node that dies vanish, and those of a dead worker are
  gone at the next rewrite; ``@seq`` counts the changes workers add between rewrites
  (HINCRBY), so that a rewrite from a table read before one of them does not erase it;
* ``nodes`` — node names scored by their last rewrite; admission sums the live ones;
* ``unbans`` — the last ``UNBANS_KEPT`` unbans (``cosftpctl unban`` on any node), each
  ``<number>:<time>:<address or *>`` scored by its number from the counter ``unban-count``;
  both expire ``UNBANS_SECONDS`` after the last unban. Every worker's heartbeat brings the
  ones it has not seen, and its node forgets those addresses in its own table too: a ban a
  node made by itself (its own failed-login count) is lifted on every node, within a second.

Every call of a worker is one Lua script run with ``EVALSHA`` (redis-py loads it again when Redis
answers ``NOSCRIPT``, after a restart or ``SCRIPT FLUSH``): one round trip, atomic, and
only commands and arguments that every Redis since 2.6 accepts (no ``EXPIRE ... NX``, which
Redis 6 refuses). The minimum is ``REDIS_MINIMUM`` (6.0, what Debian 11 and Ubuntu 22.04
ship and the oldest the tests run as), checked with ``INFO server`` when a worker starts
(below it, or ``INFO`` refused, the worker does not start: ``cosftpctl start`` fails and
says why, a reload keeps the old workers) and whenever Redis answers again after an
outage (below it: treated as unreachable, and said so). ``cosftpctl bans`` and ``unban
--all`` (``ClusterAdmin``) find the ban and failure keys with ``SCAN`` (a page at a time,
so Redis is never held by the walk), then read or delete each page with one script.

A worker asks Redis from its session threads and its cluster thread (``Gate.share``), never
from its accept loop, over at most ``REDIS_CONNECTIONS`` connections: a call that finds them
all busy waits for one up to ``redis_timeout`` (the log says so), then goes on with this
node's own figures, as for an error Redis answered (Redis is slow, not gone: a burst of calls
must not make an outage, which ``redis_down = closed`` turns into refusals for 5 s).

Three kinds of trouble, kept apart:

* Redis unreachable (refused, closed, no answer within ``redis_timeout``): the call gives
  up (one retry on a fresh connection if the one it had was broken, never on a timeout)
  and the node stops asking for ``RETRY_SECONDS``; meanwhile it serves on its own
  scoreboard (``redis_down = open``) or refuses new connections (``closed``). Logged once
  per outage and shown by ``cosftpctl status``.
* Redis answers with an error (out of memory, a read-only replica, an ACL refusal, a
  script error): not an outage, whatever ``redis_down`` says. That call is answered from
  this node's own figures, the next one asks again; logged (the first at once, then a
  count a minute) and shown by ``status`` for a minute after the last one.
* A key under ``cosftp:`` holding what this server does not write there (another type, a
  count that is not a number, a ban without expiry): the scripts delete it, carry on, and
  say which key class they repaired (``cosftp:fail:*``), never the key or its content.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..config.model import REDIS_MINIMUM, ClusterConfig
from ..errors import ConfigError
from .burst import BurstLog
from .scoreboard import (
    CLUSTER_DOWN_CLOSED,
    CLUSTER_DOWN_OPEN,
    CLUSTER_ERRORS,
    CLUSTER_NONE,
    CLUSTER_UNSUPPORTED_CLOSED,
    CLUSTER_UNSUPPORTED_OPEN,
    CLUSTER_UP,
    AccountKey,
    account_text,
    address_key,
    address_text,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# A node's session table as a heartbeat sends it: connections per address, logged-in
# sessions, logged-in sessions per account.
NodeCounts = tuple[Counter, int, dict[AccountKey, int]]

PREFIX = "cosftp:"
NODE_TTL = 10  # seconds a node's counts live without a rewrite
RETRY_SECONDS = 5.0  # after a failed call, Redis is not asked again for this long
ERROR_SECONDS = 60.0  # a reply error shows in status this long; repeats are logged this often
LOGGED_IN_FIELD = "@in"
ACCOUNT_FIELD = "@u:"  # then the account's digest (scoreboard.account_text)
SEQUENCE_FIELD = "@seq"  # counted changes to the node's hash so far (see _HEARTBEAT)
# Heartbeats of one worker that may skip their rewrite in a row (a counted change landed
# during each) before one rewrites anyway: a busy node's hash would otherwise never drop the
# counts of a worker that died; that rewrite may miss a change for a second.
SKIPS_BEFORE_REWRITE = 5
KEEP_HASH = "-"  # a sequence the hash never holds: the heartbeat keeps the hash
UNBANS_KEPT = 1000  # the last unbans kept for the workers to read
UNBANS_SECONDS = 7 * 86400  # and for how long after the last one
UNBANS_PER_TICK = 100  # the most one heartbeat brings (the script's LIMIT)
SCAN_PAGE = 500  # keys per SCAN page, each page read or deleted by one script
UNAVAILABLE = "Service temporarily unavailable (shared state unreachable); try again later."
# Connections one process keeps to Redis at most. A call takes one for a round trip (well
# under a millisecond on a healthy Redis), so a few serve thousands of calls a second; more
# would only pile more waiting calls on a slow Redis, and hundreds of sessions each holding
# one (redis-py's pool grows with the threads that call at once) multiplied by workers and
# nodes would run into Redis's maxclients. A call that finds them all busy waits up to
# redis_timeout for one, then goes on without Redis (``NoConnectionFree``).
REDIS_CONNECTIONS = 8

# Helpers every script starts with. A count is an integer of at most 15 digits (what
# INCR/HINCRBY accept without overflow); a ban is a string with an expiry: anything else
# under a ban's name is not ours and is deleted.
_LIBRARY = """
local function kind(key) return redis.call('TYPE', key)['ok'] end
local function integer(value)
  if value and #value < 16 and string.match(value, '^%-?%d+$') then
    return tonumber(value)
  end
end
local function counter_of(key)
  local found = kind(key)
  if found == 'none' then return 0, false end
  local value = found == 'string' and integer(redis.call('GET', key))
  if value and value >= 0 then return value, false end
  redis.call('DEL', key)
  return 0, true
end
local function ban_of(key)
  local found = kind(key)
  if found == 'none' then return 0, false end
  if found == 'string' and redis.call('PTTL', key) > 0 then return 1, false end
  redis.call('DEL', key)
  return 0, true
end
"""

# Admission: is the address banned, and how many connections of it, logged-in sessions
# and sessions of the account do the other live nodes hold. KEYS: nodes, the ban; ARGV: live
# since, this node, the address, the prefix of the nodes' hashes, the logged-in field, the
# account's field (or the logged-in field again when there is no account yet).
_ADMIT = """
local banned, repaired = ban_of(KEYS[2])
local per_ip, logged_in, account = 0, 0, 0
if kind(KEYS[1]) == 'zset' then
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
    local key = ARGV[4] .. node
    if node ~= ARGV[2] and kind(key) == 'hash' then
      local counts = redis.call('HMGET', key, ARGV[3], ARGV[5], ARGV[6])
      per_ip = per_ip + math.max(0, integer(counts[1]) or 0)
      logged_in = logged_in + math.max(0, integer(counts[2]) or 0)
      account = account + math.max(0, integer(counts[3]) or 0)
    end
  end
end
return {{banned, per_ip, logged_in, account}, repaired and {'ban:*'} or {}}
"""

# Which of the bans KEYS exist.
_BANS = """
local found, repaired = {}, {}
for i, key in ipairs(KEYS) do
  local banned, bad = ban_of(key)
  found[i] = banned
  if bad then repaired = {'ban:*'} end
end
return {found, repaired}
"""

# A failed login: count it in the window that began with the first (INCR, then EXPIRE
# only if the count has none: what EXPIRE ... NX does on Redis 7); at the limit, ban.
# KEYS: the failures, the ban; ARGV: limit, window, ban seconds, when the ban ends.
_FAIL = """
local repaired = {}
local found = kind(KEYS[1])
if found ~= 'none' then
  local failures = found == 'string' and integer(redis.call('GET', KEYS[1]))
  if not failures or failures < 0 then
    redis.call('DEL', KEYS[1])
    repaired = {'fail:*'}
  end
end
local failures = redis.call('INCR', KEYS[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if failures < tonumber(ARGV[1]) then return {0, repaired} end
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[3])
redis.call('DEL', KEYS[1])
return {1, repaired}
"""

# This node gained or lost connections. KEYS: its hash; ARGV: expiry, then field, change.
_COUNTED = """
local repaired = {}
local found = kind(KEYS[1])
if found ~= 'none' and found ~= 'hash' then
  redis.call('DEL', KEYS[1])
  repaired = {'conn:*'}
end
for i = 2, #ARGV, 2 do
  local count = redis.call('HGET', KEYS[1], ARGV[i])
  if count and not integer(count) then
    redis.call('HDEL', KEYS[1], ARGV[i])
    repaired = {'conn:*'}
  end
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {0, repaired}
"""

# The sequence of this node's counted changes (empty if none yet), read by a heartbeat
# before it reads the session table. KEYS: the node's hash; ARGV: the sequence field.
_SEQUENCE = """
if kind(KEYS[1]) ~= 'hash' then return {'', {}} end
return {redis.call('HGET', KEYS[1], ARGV[1]) or '', {}}
"""

# The heartbeat: rewrite this node's hash whole, unless a counted change landed since the
# heartbeat read the sequence (its table may predate that change: the rewrite would lose it;
# the hash keeps the counts HINCRBY made and the next heartbeat rewrites), and mark the node
# alive; bring the unbans after the last one this worker saw (all of them if the counter
# started again: Redis restarted, or the keys expired), and the number of the last one
# brought. KEYS: its hash, nodes, unbans, the unban counter; ARGV: node, now, expiry, forget
# nodes silent since, the last unban seen, the sequence field, the sequence read ('*':
# rewrite anyway), then field, count pairs. Answers whether it rewrote.
_HEARTBEAT = """
local repaired = {}
local counter, bad = counter_of(KEYS[4])
if bad then table.insert(repaired, 'unban-count') end
local seen = tonumber(ARGV[5])
if counter < seen then seen = 0 end
local unbans = {}
local found = kind(KEYS[3])
if found == 'zset' then
  unbans = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. seen, '+inf', 'LIMIT', 0, 100)
  if #unbans > 0 then seen = tonumber(redis.call('ZSCORE', KEYS[3], unbans[#unbans])) end
elseif found ~= 'none' then
  redis.call('DEL', KEYS[3])
  table.insert(repaired, 'unbans')
end
found = kind(KEYS[1])
if found ~= 'none' and found ~= 'hash' then table.insert(repaired, 'conn:*') end
local sequence = found == 'hash' and redis.call('HGET', KEYS[1], ARGV[6]) or ''
local rewrite = ARGV[7] == '*' or sequence == ARGV[7]
if rewrite then
  redis.call('DEL', KEYS[1])
  for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  if sequence ~= '' then redis.call('HSET', KEYS[1], ARGV[6], sequence) end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
found = kind(KEYS[2])
if found ~= 'none' and found ~= 'zset' then
  redis.call('DEL', KEYS[2])
  table.insert(repaired, 'nodes')
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
return {{seen, unbans, rewrite and 1 or 0}, repaired}
"""

# cosftpctl unban: delete KEYS[3..] (bans and failure counts; return how many bans ran and
# the failed logins counted) and, unless ARGV[2] is empty, note the unban of ARGV[2] (an
# address, or * for every one) made at ARGV[1] for the nodes' workers. KEYS: unbans, the
# unban counter, then the keys; ARGV: when, what, unbans kept, their expiry, the bans' prefix.
_UNBAN = """
local repaired, bans, failures = {}, 0, 0
for i = 3, #KEYS do
  local key = KEYS[i]
  if string.sub(key, 1, #ARGV[5]) == ARGV[5] then
    local banned, bad = ban_of(key)
    bans = bans + banned
    if bad then repaired = {'ban:*'} end
  elseif kind(key) == 'string' then
    failures = failures + math.max(0, integer(redis.call('GET', key)) or 0)
  end
  redis.call('DEL', key)
end
if ARGV[2] ~= '' then
  local found = kind(KEYS[1])
  if found ~= 'none' and found ~= 'zset' then
    redis.call('DEL', KEYS[1])
    table.insert(repaired, 'unbans')
  end
  local _, bad = counter_of(KEYS[2])
  if bad then table.insert(repaired, 'unban-count') end
  local number = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], number, number .. ':' .. ARGV[1] .. ':' .. ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1 - tonumber(ARGV[3]))
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return {{bans, failures}, repaired}
"""

# cosftpctl bans: the value and milliseconds left of each of KEYS that holds a string.
_READ = """
local found = {}
for i, key in ipairs(KEYS) do
  if kind(key) == 'string' then
    found[i] = {redis.call('GET', key), redis.call('PTTL', key)}
  else
    found[i] = false
  end
end
return {found, {}}
"""


class Link(Enum):
    """What this worker knows of Redis."""

    UNCHECKED = "not asked yet"  # until the version check at worker start
    UP = "reachable"
    DOWN = "unreachable"  # not asked again before the retry time
    UNSUPPORTED = "unsupported"  # answers, but too old (or will not say): as DOWN


_MOVES = {
    Link.UNCHECKED: {Link.UP, Link.DOWN, Link.UNSUPPORTED},
    Link.UP: {Link.DOWN},
    Link.DOWN: {Link.UP, Link.DOWN, Link.UNSUPPORTED},
    Link.UNSUPPORTED: {Link.UP, Link.DOWN, Link.UNSUPPORTED},
}


@dataclass(frozen=True)
class Unban:
    """An unban made on some node: ``address`` (None: every address) at ``when``."""

    address: Optional[str]
    when: int


def _unbans(members: list) -> list[Unban]:
    """The unbans noted in Redis (``<number>:<time>:<address or *>``); what is not one is
    skipped (nothing of it is logged)."""
    found = []
    for member in members:
        _, _, rest = str(member).partition(":")
        when, _, address = rest.partition(":")
        try:
            found.append(Unban(None if address == "*" else client_key(address), int(when)))
        except ValueError:
            continue
    return found


@dataclass(frozen=True)
class Elsewhere:
    """What the other nodes hold for one client address."""

    banned: bool
    per_ip: int
    logged_in: int
    account: int = 0  # logged-in sessions of the account asked about


def account_field(account: AccountKey) -> str:
    """An account's field in a node's hash (an address never starts with ``@``)."""
    return ACCOUNT_FIELD + account_text(account)


def client_key(ip: str) -> str:
    """One spelling per address (``::ffff:1.2.3.4`` is ``1.2.3.4``)."""
    return address_text(address_key(ip))


def public_url(url: str) -> str:
    """The URL without its password, for the log."""
    return url.split("@")[-1]


class NoConnectionFree(redis.TimeoutError):
    """Every connection of this process to Redis stayed busy for ``redis_timeout``: to the
    caller, Redis did not answer in time."""


def connect(config: ClusterConfig) -> redis.Redis:
    """A client whose every call gives up after ``redis_timeout``: one retry on a fresh
    connection if the one it had broke (Redis restarted under it), none after a timeout, no
    back-off. Said here rather than left to redis-py, whose defaults differ between its
    versions and constructors (``redis.Redis()`` of 6.x and later retries ten times with
    back-off: a slow Redis would hold each call ~5 s). Its pool holds ``REDIS_CONNECTIONS``
    at most, and a call waits ``redis_timeout`` at most for one of them (redis-py's own
    pool either grows without bound, 5.x, or fails the call at once past 100, 8.x: taken
    for an outage)."""
    pool = redis.BlockingConnectionPool.from_url(
        config.redis_url, max_connections=REDIS_CONNECTIONS, timeout=config.redis_timeout,
        socket_timeout=config.redis_timeout, socket_connect_timeout=config.redis_timeout,
        decode_responses=True,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # close() closes its connections
    return client


def server_version(client: redis.Redis, url: str) -> str:
    """Redis's version (``INFO server``). Raises ``ConfigError`` if it is older than
    ``REDIS_MINIMUM`` or Redis will not say; redis-py's ConnectionError or TimeoutError if
    it cannot be reached."""
    minimum = ".".join(map(str, REDIS_MINIMUM))
    where = f"Redis at {public_url(url)}"
    try:
        version = str(client.info("server").get("redis_version", ""))
    except (redis.ConnectionError, redis.TimeoutError):
        raise
    except redis.RedisError as exc:
        raise ConfigError(f"{where} will not tell its version ({describe(exc)}); this "
                          f"server needs INFO to check it is {minimum} or newer",
                          section="CLUSTER", option="redis_url") from exc
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None or tuple(map(int, found.groups())) < REDIS_MINIMUM:
        raise ConfigError(f"{where} is version {version or 'unknown'}; this server needs "
                          f"Redis {minimum} or newer (bans and connection counts would not "
                          f"be shared)", section="CLUSTER", option="redis_url")
    return version


def describe(exc: Exception) -> str:
    """An error for the log: its class and the start of its message."""
    return f"{type(exc).__name__}: {str(exc)[:160]}"


class ClusterState:
    """This node's view of the shared state. Every public method is safe from any thread;
    while Redis is unreachable (or unsupported) each returns None (or False, or nothing)
    without asking it."""

    def __init__(self, config: ClusterConfig) -> None:
        self.node, self.fail_closed = config.node_id, config.redis_down == "closed"
        self._redis = connect(config)
        self._scripts = {name: self._redis.register_script(_LIBRARY + body) for name, body in
                         (("admit", _ADMIT), ("bans", _BANS), ("fail", _FAIL),
                          ("counted", _COUNTED), ("sequence", _SEQUENCE),
                          ("heartbeat", _HEARTBEAT))}
        self._unbans_seen = 0  # the number of the last unban the heartbeat brought
        self._skipped = 0  # heartbeats in a row that did not rewrite the node's hash
        self._url = public_url(config.redis_url)
        self._lock = threading.Lock()
        self._link = Link.UNCHECKED
        self._retry_at = 0.0  # time.monotonic() from which a DOWN or UNSUPPORTED link is tried
        self._errors_until = 0.0  # status reports reply errors until then
        self._errors = BurstLog(log, ERROR_SECONDS, level=logging.ERROR)
        self._repairs = BurstLog(log, ERROR_SECONDS)
        self._busy = BurstLog(log, ERROR_SECONDS)
        # The pool's connections, counted here to say when they run out (and how often).
        self._free = threading.BoundedSemaphore(REDIS_CONNECTIONS)
        self._timeout = config.redis_timeout

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
        if link is Link.DOWN:
            return CLUSTER_DOWN_CLOSED if self.fail_closed else CLUSTER_DOWN_OPEN
        if link is Link.UNSUPPORTED:
            return CLUSTER_UNSUPPORTED_CLOSED if self.fail_closed else CLUSTER_UNSUPPORTED_OPEN
        if link is Link.UNCHECKED:
            return CLUSTER_NONE
        return CLUSTER_ERRORS if errors else CLUSTER_UP

    def _move(self, to: Link) -> Link:
        """Go to ``to`` (caller holds ``_lock``); return the state left."""
        was = self._link
        if to not in _MOVES[was]:
            raise RuntimeError(f"cluster link cannot go from {was.value} to {to.value}")
        self._link = to
        if to is not Link.UP:
            self._retry_at = time.monotonic() + RETRY_SECONDS
        return was

    def _check(self) -> Optional[ConfigError]:
        """Ask Redis its version and move to UP, UNSUPPORTED (returned) or DOWN."""
        try:
            with self._connection():
                version = server_version(self._redis, self._url)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._went_down("version check", exc)
            return None
        except ConfigError as exc:
            with self._lock:
                was = self._move(Link.UNSUPPORTED)
            if was not in (Link.UNCHECKED, Link.UNSUPPORTED):  # at start, the worker says it
                log.error("cluster: %s; %s", exc.problem, self._mode())
            return exc
        with self._lock:
            was = self._move(Link.UP)
        if was is Link.UNCHECKED:
            log.info("cluster: Redis %s at %s; bans and connection counts shared", version,
                     self._url)
        else:
            log.warning("cluster: Redis %s at %s reachable again; bans and connection "
                        "counts are shared again", version, self._url)
        return None

    def _usable(self) -> bool:
        """True if Redis may be asked now: up, or due for another try and found fit (one
        thread tries; the others go on without Redis until it has)."""
        with self._lock:
            if self._link is Link.UP:
                return True
            if time.monotonic() < self._retry_at:
                return False
            self._retry_at = time.monotonic() + RETRY_SECONDS
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

    def _went_down(self, what: str, exc: Exception) -> None:
        with self._lock:
            was = self._move(Link.DOWN)
        if was is not Link.DOWN:
            log.error("cluster: Redis at %s unreachable (%s: %s); %s", self._url, what,
                      describe(exc), self._mode())

    def _run(self, what: str, script: str, keys: list, args: list, failed: Any = None):
        """Run one of the scripts; return its answer, None if Redis is unreachable, or
        ``failed`` if Redis answered with an error (logged, shown by status) or every
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
            self._scripts[name] = self._redis.register_script(_LIBRARY + body)

    def run(self, what: str, script: str, keys: list, args: list, failed: Any = None) -> Any:
        """Run a script added by :meth:`add_scripts`: its answer, None if Redis is
        unreachable, ``failed`` if it answered with an error."""
        return self._run(what, script, keys, args, failed)

    def usable(self) -> bool:
        """Whether Redis may be asked now (see ``_usable``)."""
        return self._usable()

    def elsewhere(self, ip: str, account: Optional[AccountKey] = None) -> Optional[Elsewhere]:
        """The other live nodes' figures for ``ip`` (and the sessions of ``account``), or
        None if Redis is unreachable."""
        field = LOGGED_IN_FIELD if account is None else account_field(account)
        found = self._run("admission", "admit", [PREFIX + "nodes", _ban(ip)],
                          [time.time() - NODE_TTL, self.node, client_key(ip),
                           PREFIX + "conn:", LOGGED_IN_FIELD, field], failed=[0, 0, 0, 0])
        if found is None:
            return None
        return Elsewhere(bool(found[0]), int(found[1]), int(found[2]),
                         int(found[3]) if account is not None else 0)

    def is_banned(self, ip: str) -> bool:
        return bool(self.banned({ip}))

    def banned(self, ips: set[str]) -> set[str]:
        """Those of ``ips`` serving a ban (none while Redis is unreachable)."""
        wanted = sorted(ips)
        found = self._run("ban check", "bans", [_ban(ip) for ip in wanted], [])
        return {ip for ip, banned in zip(wanted, found or ()) if banned}

    def record_failure(self, ip: str, limit: int, window: int, ban: int) -> bool:
        """Count a failed login from ``ip`` cluster-wide; True if that earns it a ban."""
        key = client_key(ip)
        return bool(self._run("failed-login count", "fail", [PREFIX + "fail:" + key, _ban(ip)],
                              [limit, window, ban, int(time.time()) + ban]))

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

    def publish(self, table: Callable[[], Optional[NodeCounts]]) -> list[Unban]:
        """Rewrite this node's counts from ``table()`` (its session table: per address,
        logged in, per account; None if it cannot be read now) and mark it alive; log the
        counts of repeated errors; return the unbans made since the last call (on any node).
        Runs from the worker's tick.

        The table is read after the hash's sequence: a change counted between the two
        (another worker's) may be missing from the table, and the heartbeat then keeps the
        hash as the changes left it rather than lose it; so it does without a table."""
        key = PREFIX + "conn:" + self.node
        sequence = "*" if self._skipped >= SKIPS_BEFORE_REWRITE else \
            self._run("heartbeat", "sequence", [key], [SEQUENCE_FIELD], failed="*")
        if sequence is None:
            return []
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
                           [key, PREFIX + "nodes", PREFIX + "unbans", PREFIX + "unban-count"],
                           [self.node, now, NODE_TTL, now - 10 * NODE_TTL, self._unbans_seen,
                            SEQUENCE_FIELD, sequence, *counts])
        for burst_log in (self._errors, self._repairs, self._busy):
            burst_log.flush()
        if not answer:
            return []
        self._unbans_seen, members = int(answer[0]), answer[1]
        self._skipped = 0 if int(answer[2]) else self._skipped + 1
        return _unbans(members)

    def close(self) -> None:
        self._redis.close()


def _ban(ip: str) -> str:
    return PREFIX + "ban:" + client_key(ip)


class ClusterTrouble(Exception):
    """Redis could not do what ``cosftpctl`` asked (unreachable, too old, or it answered
    with an error); the message says which."""


@dataclass(frozen=True)
class ClusterEntry:
    """One address the cluster's Redis holds a ban or failed logins for."""

    address: str
    failures: int  # failed logins counted in the window, cluster-wide
    until: float  # when its ban ends; 0: not banned


class ClusterAdmin:
    """What ``cosftpctl bans`` and ``unban`` ask of the cluster's Redis (not a worker's
    view: no link state, no fallback). Every method raises ``ClusterTrouble``."""

    MAX_LISTED = 10000  # addresses listed per kind (bans, failure counts)

    def __init__(self, config: ClusterConfig) -> None:
        self._url = config.redis_url
        self._redis = connect(config)
        self._scripts = {name: self._redis.register_script(_LIBRARY + body)
                         for name, body in (("unban", _UNBAN), ("read", _READ))}
        self._theirs: dict[str, Any] = {}  # another module's scripts, by body
        self._checked = False

    def close(self) -> None:
        self._redis.close()

    def entries(self) -> tuple[list[ClusterEntry], bool]:
        """Every address banned or with failed logins in the cluster, and whether the list
        was cut at ``MAX_LISTED``."""
        def read() -> tuple[list[ClusterEntry], bool]:
            bans, cut_bans = self._values(PREFIX + "ban:")
            failures, cut_failures = self._values(PREFIX + "fail:")
            now = time.time()
            found = []
            for address in sorted(set(bans) | set(failures)):
                left = bans.get(address, (None, 0))[1]
                count = _count(failures.get(address, ("0", 0))[0])
                found.append(ClusterEntry(address, count, now + left / 1000 if left > 0 else 0))
            return found, cut_bans or cut_failures
        return self._call("ban listing", read)

    def unban(self, ip: Optional[str], when: int) -> tuple[int, int]:
        """Delete the ban and failure count of ``ip`` (every address: None) and note the
        unban for the nodes' workers; return how many bans ran and the failed logins that
        were counted."""
        def lift() -> tuple[int, int]:
            if ip is not None:
                return self._unban([_ban(ip), PREFIX + "fail:" + client_key(ip)],
                                   client_key(ip), when)
            bans = failures = 0
            for prefix in (PREFIX + "ban:", PREFIX + "fail:"):
                for page in self._pages(prefix):
                    counted = self._unban(page, "", when)
                    bans, failures = bans + counted[0], failures + counted[1]
            self._unban([], "*", when)
            return bans, failures
        return self._call("unban", lift)

    def evaluate_each(self, what: str, body: str, calls: Sequence[tuple[list, list]]
                      ) -> list[Any]:
        """Run the script ``body`` of another module (``server.quotashare``'s usage read),
        with this module's library, once for each ``(keys, args)`` of ``calls``,
        ``SCAN_PAGE`` calls to a round trip; the answers as Redis gives them."""
        if body not in self._theirs:
            self._theirs[body] = self._redis.register_script(_LIBRARY + body)
        script = self._theirs[body]

        def run() -> list[Any]:
            answers: list[Any] = []
            for start in range(0, len(calls), SCAN_PAGE):
                pipe = self._redis.pipeline(transaction=False)
                for keys, args in calls[start:start + SCAN_PAGE]:
                    script(keys, args, client=pipe)
                answers += pipe.execute()
            return answers
        return self._call(what, run)

    def _unban(self, keys: list[str], what: str, when: int) -> tuple[int, int]:
        answer, _ = self._scripts["unban"](
            [PREFIX + "unbans", PREFIX + "unban-count", *keys],
            [when, what, UNBANS_KEPT, UNBANS_SECONDS, PREFIX + "ban:"])
        return int(answer[0]), int(answer[1])

    def _values(self, prefix: str) -> tuple[dict[str, tuple[str, int]], bool]:
        """``{address: (value, milliseconds left)}`` of the string keys under ``prefix``
        (others, and names that are no address, skipped); True if cut at ``MAX_LISTED``."""
        found: dict[str, tuple[str, int]] = {}
        for page in self._pages(prefix):
            answer, _ = self._scripts["read"](page, [])
            for key, value in zip(page, answer):
                with contextlib.suppress(ValueError):
                    if value:
                        found[client_key(key[len(prefix):])] = (value[0], int(value[1]))
            if len(found) >= self.MAX_LISTED:
                return found, True
        return found, False

    def _pages(self, prefix: str) -> Iterator[list[str]]:
        """The keys under ``prefix``, a ``SCAN`` page at a time."""
        page: list[str] = []
        for key in self._redis.scan_iter(match=prefix + "*", count=SCAN_PAGE):
            page.append(key)
            if len(page) >= SCAN_PAGE:
                yield page
                page = []
        if page:
            yield page

    def _call(self, what: str, call: Callable[[], T]) -> T:
        where = f"Redis at {public_url(self._url)}"
        try:
            if not self._checked:
                server_version(self._redis, self._url)
                self._checked = True
            return call()
        except ConfigError as exc:
            raise ClusterTrouble(exc.problem) from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ClusterTrouble(f"{where} unreachable ({describe(exc)})") from exc
        except redis.RedisError as exc:
            raise ClusterTrouble(f"{where} answered the {what} with an error "
                                 f"({describe(exc)})") from exc


def _count(value: str) -> int:
    """A failure count as Redis holds it; 0 for what is not one."""
    return int(value) if value.isdigit() and len(value) < 16 else 0


def check_config(config: ClusterConfig) -> str:
    """For ``cosftpctl check``: what Redis says of itself. Raises ``ConfigError`` if it
    answers but cannot be used; reports (does not raise) if it is unreachable."""
    client = connect(config)
    try:
        version = server_version(client, config.redis_url)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return (f"warning: [CLUSTER] Redis at {public_url(config.redis_url)} unreachable "
                f"({describe(exc)}): its version is checked when it answers; until then "
                f"the node runs as redis_down = {config.redis_down} says")
    finally:
        client.close()
    return f"cluster: Redis {version} at {public_url(config.redis_url)}"

