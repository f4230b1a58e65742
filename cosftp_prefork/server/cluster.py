"""State shared by the nodes of a cluster (``[CLUSTER] redis_url``): bans, failed-login
counts and connection counts in Redis (or Valkey), so a ban made on one node refuses the
client on every node and the per-address and logged-in limits hold for the whole cluster.

Keys (all under ``cosftp:``), each with an expiry so nothing outlives its use:

* ``ban:<ip>`` — the ban, expiring with it; ``fail:<ip>`` — failed logins in the window;
* ``conn:<node>`` — a hash of this node's connections per client address, and ``@in`` its
  logged-in sessions. Every worker rewrites it once a second from the node's own session
  table (``shared``) with a short expiry, so the counts of a node that dies vanish, and
  those of a dead worker are gone at the next rewrite;
* ``nodes`` — node names scored by their last rewrite; admission sums the live ones.

Redis unreachable: each call gives up after ``redis_timeout`` and the node stops asking
for ``RETRY_SECONDS``; meanwhile it serves on its own scoreboard (``redis_down = open``)
or refuses new connections (``closed``). Either is logged once per outage and shown by
``cosftpctl status``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import redis

from ..config.settings import ClusterConfig
from .scoreboard import address_key, address_text

log = logging.getLogger(__name__)

PREFIX = "cosftp:"
NODE_TTL = 10  # seconds a node's counts live without a rewrite
RETRY_SECONDS = 5.0  # after a failed call, Redis is not asked again for this long
LOGGED_IN_FIELD = "@in"
UNAVAILABLE = "Service temporarily unavailable (shared state unreachable); try again later."

# One round trip per admission: is the address banned, and how many connections of it and
# logged-in sessions do the other live nodes hold.
_ELSEWHERE = """
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local per_ip, logged_in = 0, 0
for _, node in ipairs(nodes) do
  if node ~= ARGV[2] then
    local counts = redis.call('HMGET', ARGV[4] .. 'conn:' .. node, ARGV[3], ARGV[5])
    per_ip = per_ip + (tonumber(counts[1]) or 0)
    logged_in = logged_in + (tonumber(counts[2]) or 0)
  end
end
return {redis.call('EXISTS', ARGV[4] .. 'ban:' .. ARGV[3]), per_ip, logged_in}
"""


@dataclass(frozen=True)
class Elsewhere:
    """What the other nodes hold for one client address."""

    banned: bool
    per_ip: int
    logged_in: int


def client_key(ip: str) -> str:
    """One spelling per address (``::ffff:1.2.3.4`` is ``1.2.3.4``)."""
    return address_text(address_key(ip))


class ClusterState:
    """This node's view of the shared state; every method is safe from any thread and
    returns None (or False) while Redis is unreachable."""

    def __init__(self, config: ClusterConfig) -> None:
        self.node, self.fail_closed = config.node_id, config.redis_down == "closed"
        self._redis = redis.Redis.from_url(
            config.redis_url, socket_timeout=config.redis_timeout,
            socket_connect_timeout=config.redis_timeout, decode_responses=True)
        self._elsewhere = self._redis.register_script(_ELSEWHERE)
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down_logged = False
        self._url = config.redis_url.split("@")[-1]  # no password in the log

    @property
    def reachable(self) -> bool:
        """False from a failed call until one succeeds."""
        return not self._down_logged

    def _call(self, what: str, function, *args):
        if time.monotonic() < self._down_until:
            return None
        try:
            result = function(*args)
        except redis.RedisError as exc:
            self._went_down(what, exc)
            return None
        if self._down_logged:
            with self._lock:
                self._down_logged = False
            log.warning("cluster: Redis at %s reachable again; bans and connection counts "
                        "are shared again", self._url)
        return result

    def _went_down(self, what: str, exc: Exception) -> None:
        with self._lock:
            self._down_until = time.monotonic() + RETRY_SECONDS
            first, self._down_logged = not self._down_logged, True
        if first:
            mode = ("refusing new connections (redis_down = closed)" if self.fail_closed else
                    "serving on this node's own scoreboard (redis_down = open)")
            log.error("cluster: Redis at %s unreachable (%s: %s); %s", self._url, what, exc,
                      mode)

    def elsewhere(self, ip: str) -> Optional[Elsewhere]:
        """The other live nodes' figures for ``ip``, or None if Redis is unreachable."""
        since = time.time() - NODE_TTL
        found = self._call("admission", self._elsewhere, [PREFIX + "nodes"],
                           [since, self.node, client_key(ip), PREFIX, LOGGED_IN_FIELD])
        return None if found is None else Elsewhere(bool(found[0]), int(found[1]),
                                                      int(found[2]))

    def is_banned(self, ip: str) -> bool:
        return bool(self._call("ban check", self._redis.exists, PREFIX + "ban:" + client_key(ip)))

    def banned(self, ips: set[str]) -> set[str]:
        """Those of ``ips`` serving a ban (none while Redis is unreachable)."""
        wanted = sorted(ips)
        found = self._call("ban check", self._redis.mget,
                           [PREFIX + "ban:" + client_key(ip) for ip in wanted])
        return {ip for ip, until in zip(wanted, found or ()) if until is not None}

    def record_failure(self, ip: str, limit: int, window: int, ban: int) -> bool:
        """Count a failed login from ``ip`` cluster-wide; True if that earns it a ban."""
        key = client_key(ip)

        def count() -> bool:
            pipe = self._redis.pipeline()
            pipe.incr(PREFIX + "fail:" + key)
            pipe.expire(PREFIX + "fail:" + key, window, nx=True)
            failures = pipe.execute()[0]
            if failures < limit:
                return False
            self._redis.set(PREFIX + "ban:" + key, int(time.time()) + ban, ex=ban)
            self._redis.delete(PREFIX + "fail:" + key)
            return True
        return bool(self._call("failed login", count))

    def counted(self, ip: str, connections: int, logged_in: int = 0) -> None:
        """This node gained (or lost, negative) connections of ``ip`` and logged-in
        sessions: tell the others now rather than at the next rewrite."""
        def add() -> None:
            pipe = self._redis.pipeline(transaction=False)
            hash_key = PREFIX + "conn:" + self.node
            pipe.hincrby(hash_key, client_key(ip), connections)
            if logged_in:
                pipe.hincrby(hash_key, LOGGED_IN_FIELD, logged_in)
            pipe.execute()
        self._call("connection count", add)

    def publish(self, per_ip: Counter, logged_in: int) -> None:
        """Rewrite this node's counts (from its session table) and mark it alive."""
        def rewrite() -> None:
            hash_key = PREFIX + "conn:" + self.node
            pipe = self._redis.pipeline()
            pipe.delete(hash_key)
            pipe.hset(hash_key, mapping={LOGGED_IN_FIELD: logged_in,
                                         **{client_key(ip): n for ip, n in per_ip.items()}})
            pipe.expire(hash_key, NODE_TTL)
            pipe.zadd(PREFIX + "nodes", {self.node: time.time()})
            pipe.zremrangebyscore(PREFIX + "nodes", 0, time.time() - 10 * NODE_TTL)
            pipe.execute()
        self._call("heartbeat", rewrite)

    def close(self) -> None:
        self._redis.close()
