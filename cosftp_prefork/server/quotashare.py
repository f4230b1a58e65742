"""The quotas' usage shared by the nodes of a cluster (``[CLUSTER] redis_url``), so that a
quota holds across nodes and two sessions on two nodes racing for its last bytes cannot both
win.

Keys (under ``cosftp:``, beside ``server.cluster``'s):

* ``quota:<home>`` — a hash of the home's ``used`` bytes, ``files`` and the time it was
  last ``scanned`` (``<home>``: the hex of ``config.quotas.home_id``); expires
  ``USAGE_SECONDS`` after its last change (a home nobody wrote to for that long is
  scanned again at its next use);
* ``quota-held:<home>`` — a hash of each node's reservations, ``<node>#b`` bytes and
  ``<node>#f`` files. A reservation counts while its node is alive (``cosftp:nodes``, which
  every worker's heartbeat scores): those of a node that died stop counting within
  ``NODE_TTL``. Worker 1 of each node rewrites its node's fields in the file's homes every
  second from the node's own table, so a release lost in an outage does not hold bytes for
  ever; every worker rewrites them before it serves, in the homes an auth hook's answers
  gave too, so what the master gave back of a dead worker's holdings leaves Redis then.

Every call is one script (atomic: a reservation checks every node's usage and reservations
and adds its own in one step). The node's own table (``server.usage``) keeps its reservations
and scans as without a cluster; while Redis is unreachable, the node reserves against its
own figures (``redis_down = open``) or refuses uploads that a quota counts (``closed``), and
what it settles meanwhile reaches Redis only with the next scan.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Optional

from ..config.quotas import Home, Usage
from ..errors import StorageError
from .cluster import NODE_TTL, PREFIX, ClusterAdmin, ClusterState
from .usage import UsageTable

USAGE_SECONDS = 30 * 86400
HELD_SECONDS = 86400

# A node's reservations in one home (KEYS: the node set, then each home's hash of holdings),
# counting the live nodes only.
_HELD = """
local function count(value) return integer(value) or 0 end
local function held(key, node, since)
  local bytes, files = 0, 0
  local fields = redis.call('HGETALL', key)
  for j = 1, #fields, 2 do
    local owner, kind = string.match(fields[j], '^(.*)#([bf])$')
    if owner then
      local score = redis.call('ZSCORE', KEYS[1], owner)
      if owner == node or (score and tonumber(score) >= since) then
        if kind == 'b' then bytes = bytes + count(fields[j + 1])
        else files = files + count(fields[j + 1]) end
      end
    end
  end
  return bytes, files
end
local function add(key, field, by, floor)
  local value = count(redis.call('HGET', key, field)) + by
  if floor and value < 0 then value = 0 end
  redis.call('HSET', key, field, value)
end
"""

# KEYS: nodes, then (usage, holdings) per home. ARGV: node, alive since, bytes, files, then
# (size limit, files limit) per home. Answers 0, or the number of the home without room.
_RESERVE = _HELD + """
local node, since = ARGV[1], tonumber(ARGV[2])
local nbytes, nfiles = tonumber(ARGV[3]), tonumber(ARGV[4])
local homes = (#KEYS - 1) / 2
for i = 0, homes - 1 do
  local usage = KEYS[2 + 2 * i]
  local size, files = tonumber(ARGV[5 + 2 * i]), tonumber(ARGV[6 + 2 * i])
  local bytes, held_files = held(KEYS[3 + 2 * i], node, since)
  local used = count(redis.call('HGET', usage, 'used'))
  local stored = count(redis.call('HGET', usage, 'files'))
  if (size > 0 and used + bytes + nbytes > size) or
     (files > 0 and nfiles > 0 and stored + held_files + nfiles > files) then
    return {i + 1, {}}
  end
end
for i = 0, homes - 1 do
  local holdings = KEYS[3 + 2 * i]
  add(holdings, node .. '#b', nbytes)
  add(holdings, node .. '#f', nfiles)
  redis.call('EXPIRE', holdings, ARGV[#ARGV])
end
return {0, {}}
"""

# KEYS: nodes, then (usage, holdings) per home. ARGV: node, reserved bytes and files to give
# back, bytes and files to add to the usage, the usage's and the holdings' lifetimes.
_SETTLE = _HELD + """
local node = ARGV[1]
for i = 2, #KEYS, 2 do
  add(KEYS[i + 1], node .. '#b', -tonumber(ARGV[2]), true)
  add(KEYS[i + 1], node .. '#f', -tonumber(ARGV[3]), true)
  redis.call('EXPIRE', KEYS[i + 1], ARGV[7])
  if redis.call('HEXISTS', KEYS[i], 'scanned') == 1 then
    add(KEYS[i], 'used', tonumber(ARGV[4]), true)
    add(KEYS[i], 'files', tonumber(ARGV[5]), true)
    redis.call('EXPIRE', KEYS[i], ARGV[6])
  end
end
return {0, {}}
"""

# KEYS: nodes, usage, holdings. ARGV: node, alive since. Answers used, files, reserved
# bytes and files, the time of the last scan ('' if never).
_READ = _HELD + """
local bytes, files = held(KEYS[3], ARGV[1], tonumber(ARGV[2]))
local usage = redis.call('HMGET', KEYS[2], 'used', 'files', 'scanned')
return {{count(usage[1]), count(usage[2]), bytes, files, usage[3] or ''}, {}}
"""

# KEYS: usage. ARGV: used, files, scanned, lifetime.
_SCANNED = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'used', ARGV[1], 'files', ARGV[2], 'scanned', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {0, {}}
"""

# KEYS: holdings per home. ARGV: node, lifetime, then (bytes, files) per home.
_HOLDING = """
for i = 1, #KEYS do
  local bytes, files = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  if bytes == '0' and files == '0' then
    redis.call('HDEL', KEYS[i], ARGV[1] .. '#b', ARGV[1] .. '#f')
  else
    redis.call('HSET', KEYS[i], ARGV[1] .. '#b', bytes, ARGV[1] .. '#f', files)
    redis.call('EXPIRE', KEYS[i], ARGV[2])
  end
end
return {0, {}}
"""


def _keys(home: Home) -> list[str]:
    return [f"{PREFIX}quota:{home.ident.hex()}", f"{PREFIX}quota-held:{home.ident.hex()}"]


def _unlimited(homes: Sequence[Home]) -> list[Home]:
    """``homes`` without limits: what this node's table then only counts."""
    return [dataclasses.replace(home, size=0, files=0) for home in homes]


class SharedUsage:
    """A ``config.quotas.Ledger`` over Redis, this node's ``UsageTable`` beside it."""

    def __init__(self, table: UsageTable, cluster: ClusterState) -> None:
        self._table, self._cluster = table, cluster
        cluster.add_scripts({"quota-reserve": _RESERVE, "quota-settle": _SETTLE,
                             "quota-read": _READ, "quota-scanned": _SCANNED,
                             "quota-holding": _HOLDING})

    def _homes_keys(self, homes: Sequence[Home]) -> list[str]:
        return [PREFIX + "nodes", *(key for home in homes for key in _keys(home))]

    def reserve(self, homes: Sequence[Home], nbytes: int, files: int) -> Optional[Home]:
        if not homes:
            return None
        limits = [limit for home in homes for limit in (home.size, home.files)]
        answer = self._cluster.run(
            "quota reservation", "quota-reserve", self._homes_keys(homes),
            [self._cluster.node, time.time() - NODE_TTL, nbytes, files, *limits,
             HELD_SECONDS])
        if answer is None:  # unreachable, or it answered with an error
            if self._cluster.fail_closed:
                raise StorageError("the quotas' usage shared by the cluster cannot be read "
                                   "now (redis_down = closed); try again later",
                                   code="QuotaUnavailable")
            return self._table.reserve(homes, nbytes, files)
        if int(answer):
            return homes[int(answer) - 1]
        self._table.reserve(_unlimited(homes), nbytes, files)
        return None

    def release(self, homes: Sequence[Home], nbytes: int, files: int) -> None:
        self.settle(homes, nbytes, files, 0, 0)

    def settle(self, homes: Sequence[Home], reserved: int, reserved_files: int,
               nbytes: int, files: int) -> None:
        self._table.settle(homes, reserved, reserved_files, nbytes, files)
        if homes:
            self._cluster.run("quota usage", "quota-settle", self._homes_keys(homes),
                              [self._cluster.node, reserved, reserved_files, nbytes, files,
                               USAGE_SECONDS, HELD_SECONDS])

    def read(self, home: Home) -> Optional[Usage]:
        found = self._cluster.run("quota read", "quota-read", self._homes_keys([home]),
                                  [self._cluster.node, time.time() - NODE_TTL])
        if found is None:
            return self._table.read(home)
        used, files, reserved, reserved_files, scanned = found
        mine = self._table.read(home)
        return Usage(int(used), int(files), int(reserved), int(reserved_files),
                     float(scanned or 0), mine.requested_at if mine else 0.0)

    def claim_scan(self, home: Home, interval: float, now: float, known_only: bool) -> bool:
        return self._table.claim_scan(home, interval, now, known_only)

    def end_scan(self, home: Home, found: Optional[tuple[int, int]], now: float) -> None:
        self._table.end_scan(home, found, now)
        if found is not None:
            self._cluster.run("quota scan", "quota-scanned", _keys(home)[:1],
                              [found[0], found[1], now, USAGE_SECONDS])

    def request_scan(self, home: Home, now: float) -> None:
        self._table.request_scan(home, now)

    def adopt(self, home: Home, answered_at: float, most: int, stale_before: float) -> Home:
        """The answers' limits are this node's: each node holds the latest answer it got."""
        return self._table.adopt(home, answered_at, most, stale_before)

    def leave(self, home: Home) -> None:
        self._table.leave(home)

    def limits(self, home: Home) -> Home:
        return self._table.limits(home)

    def tick(self, homes: Iterable[Home], answered: bool = False) -> None:
        """Rewrite this node's reservations in Redis from its own table (worker 1, every
        second; with ``answered``, those of the homes an auth hook's answers gave too)."""
        homes = [*homes, *(found.home for found in self._table.answered())] if answered \
            else homes
        held = [(home, self._table.read(home)) for home in homes]
        held = [(home, usage) for home, usage in held if usage is not None]
        if not held:
            return
        self._cluster.run("quota reservations", "quota-holding",
                          [_keys(home)[1] for home, _ in held],
                          [self._cluster.node, HELD_SECONDS,
                           *(n for _, usage in held
                             for n in (usage.reserved, usage.reserved_files))])


def cluster_usage(admin: ClusterAdmin, homes: Sequence[Home]) -> dict[bytes, Usage]:
    """What the cluster's Redis holds of each of ``homes``: its usage and the reservations
    of every live node, the figures each node reserves against (``cosftpctl quota``, the
    admin API), by home id. Raises ``ClusterTrouble``."""
    since = time.time() - NODE_TTL
    answers = admin.evaluate_each("quota read", _READ, [
        ([PREFIX + "nodes", *_keys(home)], ["", since]) for home in homes])  # no node of its own
    found = {}
    for home, (answer, _) in zip(homes, answers):
        used, files, reserved, reserved_files, scanned = answer
        found[home.ident] = Usage(int(used), int(files), int(reserved), int(reserved_files),
                                  float(scanned or 0))
    return found
