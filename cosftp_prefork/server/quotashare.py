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
  ``NODE_TTL``;
* ``quota-node:<node>`` — the node's index: the ``quota-held:`` keys where it may hold
  something (added by each reservation, taken out when a rewrite finds nothing held there).

Every call is one script (atomic: a reservation checks every node's usage and reservations
and adds its own in one step). The node's own table (``server.usage``) keeps its reservations
and scans as without a cluster, and is the truth Redis's fields of the node are rewritten
from (``UsageTable.publish``, under the table's lock):

* worker 1, every second (:meth:`SharedUsage.tick`): the file's homes and those the index
  names (the homes the node reserved in, an auth hook's included; never a look through
  the table's 16,384 rows);
* every worker, every second and before it serves (:meth:`SharedUsage.catch_up`), once
  Redis answers, when the table says the rewrite is wanted: a change that did not reach
  Redis (unreachable, an error answered, or no connection free: a release lost in an
  outage would otherwise stay counted until the home's key expires, a day after its last
  reservation), a dead worker's holdings dropped by the master (which does not talk to
  Redis: the surviving workers rewrite within a second of the reap, not its replacement
  once it starts), a new table (a previous master's reservations). That rewrite looks
  through the whole table, and drops the node's fields in the homes the index names that
  the table holds nothing in.

Redis counts what the node holds, never less (a quota passed) nor more (a refusal too
early). A change of the node's reservations (a reserve; a settle or release that gives some
back) is two steps, the table and Redis, and a rewrite reading the table between them would
write it back (found: a rewrite between a settle's Redis call and its table step put the
settled reservation back beside the usage it had become, one between a reserve's table step
and its call counted it twice, until worker 1's next second: a user near the quota got
552). So each change holds the table's gate, shared, across both steps
(``UsageTable.changing``: the changes of every worker go on side by side), and a rewrite
holds it exclusive, then the table's lock, until Redis took what it read: it waits for the
changes under way and holds off those that start meanwhile (``server.usagegate``; it used to
take the gate without waiting and skip its turn, which under a steady crowd of uploads came
4 times in 12 s, so a reservation a dead worker lost stayed counted until the crowd paused).
An increase still goes into the table before Redis and a decrease into Redis before the
table: a worker killed between the two steps leaves an over-count until the rewrite after
its reap, never an under-count. A change of the usage alone (a delete, a rename's source)
takes no gate: no rewrite writes the usage. The price is a change's wait for a rewrite once
a second: the changes under way when it came and its Redis call (up to ``redis_timeout`` if
Redis hangs, before the outage is known).

An upload's reservation asks for its first slice ahead in the same script, granted when
every home has room for it too, and answers for a home whose usage Redis does not know (not
scanned yet, or lost with a Redis restarted) rather than have it read beforehand: a small
upload makes two calls, its reservation and its settlement (it made four: the read, the
reservation, the first slice's, the settlement). Such a home is then scanned
(``cos.quota.Quotas.ready``): a read that finds Redis without the usage of a home the
node's table says it scanned (Redis restarted empty or flushed, or the key expired) asks
the table for a scan again (:meth:`SharedUsage.read`; found: nobody was due to scan it, and
the upload waited ``SCAN_PATIENCE`` for a scan, then failed).

While Redis is unreachable or refuses writes (``cluster.link.refuses_writes``) the node
reserves against its own table (``redis_down = open``) or refuses uploads that a quota
counts (``closed``); its reservations reach Redis with the rewrite once it answers again,
and the bytes and files each worker wrote or deleted meanwhile are added to the usage then
(a worker that dies before that loses them: the home's next scan counts them).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Optional

from ..config.quotas import Home, Reservation, Reserving, Usage
from ..errors import StorageError
from .cluster import NODE_TTL, PREFIX
from .usage import UsageTable

if TYPE_CHECKING:  # redis-py comes with them: only a cluster makes them (workerstats, ctl)
    from .cluster import ClusterAdmin, ClusterState

log = logging.getLogger(__name__)

USAGE_SECONDS = 30 * 86400
HELD_SECONDS = 86400

# A node's index of the homes it holds something in: the class of key repaired (a key of
# another type there is deleted), if any.
_INDEX = """
local function index_of(key)
  local found = kind(key)
  if found == 'none' or found == 'set' then return {} end
  redis.call('DEL', key)
  return {'quota-node:*'}
end
"""

# A node's reservations in one home (KEYS: the node set, then each home's hash of holdings),
# counting the live nodes only.
_HELD = _INDEX + """
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

# KEYS: nodes, the node's index, then (usage, holdings) per home. ARGV: node, alive since,
# bytes, files, bytes ahead, '1' if only homes whose usage is known (scanned) may reserve,
# then (size limit, files limit) per home, the lifetime. Answers {0, the bytes ahead
# reserved (all or none)}, {the number of the home without room for the bytes and files
# needed, 0}, or {minus the number of a home whose usage is not known, 0}.
_RESERVE = _HELD + """
local node, since = ARGV[1], tonumber(ARGV[2])
local nbytes, nfiles, ahead = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local homes = (#KEYS - 2) / 2
local taken = {}
for i = 0, homes - 1 do
  local usage = KEYS[3 + 2 * i]
  if ARGV[6] == '1' and redis.call('HEXISTS', usage, 'scanned') == 0 then
    return {{-(i + 1), 0}, {}}
  end
  local bytes, held_files = held(KEYS[4 + 2 * i], node, since)
  taken[i] = {count(redis.call('HGET', usage, 'used')) + bytes,
              count(redis.call('HGET', usage, 'files')) + held_files}
end
local function short(extra)
  for i = 0, homes - 1 do
    local size, files = tonumber(ARGV[7 + 2 * i]), tonumber(ARGV[8 + 2 * i])
    if (size > 0 and taken[i][1] + nbytes + extra > size) or
       (files > 0 and nfiles > 0 and taken[i][2] + nfiles > files) then
      return i + 1
    end
  end
  return 0
end
if ahead == 0 or short(ahead) > 0 then
  ahead = 0
  local refused = short(0)
  if refused > 0 then return {{refused, 0}, {}} end
end
local repaired = index_of(KEYS[2])
for i = 0, homes - 1 do
  local holdings = KEYS[4 + 2 * i]
  add(holdings, node .. '#b', nbytes + ahead)
  add(holdings, node .. '#f', nfiles)
  redis.call('EXPIRE', holdings, ARGV[#ARGV])
  redis.call('SADD', KEYS[2], holdings)
end
redis.call('EXPIRE', KEYS[2], ARGV[#ARGV])
return {{0, ahead}, repaired}
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

# KEYS: the node's index. Answers the holdings it names.
_INDEXED = _INDEX + """
local repaired = index_of(KEYS[1])
return {redis.call('SMEMBERS', KEYS[1]), repaired}
"""

# KEYS: the node's index. ARGV: node, lifetime, '1' if every holding of the node not named
# is to go, then (holdings, bytes, files) per home: the node's fields there become those.
_HOLDING = _INDEX + """
local node, listed = ARGV[1], {}
local repaired = index_of(KEYS[1])
for i = 4, #ARGV, 3 do
  local holdings, bytes, files = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  listed[holdings] = true
  if bytes == '0' and files == '0' then
    redis.call('HDEL', holdings, node .. '#b', node .. '#f')
    redis.call('SREM', KEYS[1], holdings)
  else
    redis.call('HSET', holdings, node .. '#b', bytes, node .. '#f', files)
    redis.call('EXPIRE', holdings, ARGV[2])
    redis.call('SADD', KEYS[1], holdings)
  end
end
if ARGV[3] == '1' then
  for _, holdings in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if not listed[holdings] then
      redis.call('HDEL', holdings, node .. '#b', node .. '#f')
      redis.call('SREM', KEYS[1], holdings)
    end
  end
end
if redis.call('SCARD', KEYS[1]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return {0, repaired}
"""

# The scripts by the names ``ClusterState.run`` knows them by.
SCRIPTS = {"quota-reserve": _RESERVE, "quota-settle": _SETTLE, "quota-read": _READ,
           "quota-scanned": _SCANNED, "quota-indexed": _INDEXED, "quota-holding": _HOLDING}

HOLDINGS = PREFIX + "quota-held:"


def _keys(home: Home) -> list[str]:
    return [f"{PREFIX}quota:{home.ident.hex()}", HOLDINGS + home.ident.hex()]


def _ident(holdings: str) -> Optional[bytes]:
    """The home id of a holdings key an index names (None: not one of ours)."""
    if not holdings.startswith(HOLDINGS):
        return None
    try:
        ident = bytes.fromhex(holdings[len(HOLDINGS):])
    except ValueError:
        return None
    return ident if len(ident) == 16 else None


def _unlimited(homes: Sequence[Home]) -> list[Home]:
    """``homes`` without limits: what this node's table then only counts."""
    return [dataclasses.replace(home, size=0, files=0) for home in homes]


class SharedUsage(Reserving):
    """A ``config.quotas.Ledger`` over Redis, this node's ``UsageTable`` beside it."""

    def __init__(self, table: UsageTable, cluster: ClusterState) -> None:
        self._table, self._cluster = table, cluster
        self._index = f"{PREFIX}quota-node:{cluster.node}"
        # Bytes and files this worker wrote or deleted in a home while Redis could not be
        # told, sent by :meth:`catch_up` once it answers (at most one entry per home).
        self._unsent: dict[Home, tuple[int, int]] = {}
        self._unsent_lock = threading.Lock()
        cluster.add_scripts(SCRIPTS)

    def _homes_keys(self, homes: Sequence[Home]) -> list[str]:
        return [PREFIX + "nodes", *(key for home in homes for key in _keys(home))]

    def _reserve(self, homes: Sequence[Home], nbytes: int, files: int, ahead: int,
                 scanned_only: bool) -> Reservation:
        if not homes:
            return Reservation()
        # Into the table, then Redis, inside the gate: no rewrite reads the table between
        # the two (see the module doc).
        with self._table.changing():
            return self._reserve_now(homes, nbytes, files, ahead, scanned_only)

    def _reserve_now(self, homes: Sequence[Home], nbytes: int, files: int, ahead: int,
                     scanned_only: bool) -> Reservation:
        # The bytes ahead too: what Redis may grant is in the table before it does.
        self._table.reserve(_unlimited(homes), nbytes + ahead, files)
        limits = [limit for home in homes for limit in (home.size, home.files)]
        keys = self._homes_keys(homes)
        answer = self._cluster.run(
            "quota reservation", "quota-reserve", [keys[0], self._index, *keys[1:]],
            [self._cluster.node, time.time() - NODE_TTL, nbytes, files, ahead,
             int(scanned_only), *limits, HELD_SECONDS])
        if answer is not None:
            code, granted = int(answer[0]), int(answer[1])
            if code:  # nothing reserved
                self._table.release(homes, nbytes + ahead, files)
                return Reservation(refused=homes[code - 1]) if code > 0 else \
                    Reservation(unscanned=homes[-code - 1])
            if granted < ahead:  # Redis holds less than the table: a decrease, after it
                self._table.release(homes, ahead - granted, 0)
            return Reservation(ahead=granted)
        self._table.release(homes, nbytes + ahead, files)
        # Unreachable, or it answered with an error: what Redis holds of this node may
        # differ from its table now (the reservation may have landed after all).
        self._table.want_publish()
        if self._cluster.fail_closed:
            raise StorageError("the quotas' usage shared by the cluster cannot be read "
                               "now (redis_down = closed); try again later",
                               code="QuotaUnavailable")
        if scanned_only:
            return self._table.reserve_ahead(homes, nbytes, files, ahead)
        return Reservation(refused=self._table.reserve(homes, nbytes, files))  # none ahead

    def release(self, homes: Sequence[Home], nbytes: int, files: int) -> None:
        self.settle(homes, nbytes, files, 0, 0)

    def settle(self, homes: Sequence[Home], reserved: int, reserved_files: int,
               nbytes: int, files: int) -> None:
        if not homes:
            return
        if not (reserved or reserved_files):  # the usage only, which no rewrite writes
            self._settle_now(homes, reserved, reserved_files, nbytes, files)
            return
        with self._table.changing():  # as in reserve
            self._settle_now(homes, reserved, reserved_files, nbytes, files)

    def _settle_now(self, homes: Sequence[Home], reserved: int, reserved_files: int,
                    nbytes: int, files: int) -> None:
        # Out of Redis, then the table (see the module doc).
        if not self._settle(homes, reserved, reserved_files, nbytes, files):
            if reserved or reserved_files:
                self._table.want_publish()
            if nbytes or files:
                self._keep_unsent(homes, nbytes, files)
        self._table.settle(homes, reserved, reserved_files, nbytes, files)

    def _settle(self, homes: Sequence[Home], reserved: int, reserved_files: int,
                nbytes: int, files: int) -> bool:
        """Give back a reservation and count the usage in Redis; whether it was sent."""
        return self._cluster.run(
            "quota usage", "quota-settle", self._homes_keys(homes),
            [self._cluster.node, reserved, reserved_files, nbytes, files, USAGE_SECONDS,
             HELD_SECONDS]) is not None

    def _keep_unsent(self, homes: Sequence[Home], nbytes: int, files: int) -> None:
        with self._unsent_lock:
            for home in homes:
                kept = self._unsent.get(home, (0, 0))
                self._unsent[home] = (kept[0] + nbytes, kept[1] + files)

    def _send_unsent(self) -> None:
        """Count in Redis's usage what this worker wrote while it could not (a call that
        timed out may have landed after all: then it counts twice until the home's next
        scan, an over-count rather than a quota passed); what fails again is kept."""
        with self._unsent_lock:
            unsent, self._unsent = self._unsent, {}
        for home, (nbytes, files) in unsent.items():
            if not self._settle([home], 0, 0, nbytes, files):
                self._keep_unsent([home], nbytes, files)

    def read(self, home: Home) -> Optional[Usage]:
        found = self._cluster.run("quota read", "quota-read", self._homes_keys([home]),
                                  [self._cluster.node, time.time() - NODE_TTL])
        if found is None:
            return self._table.read(home)
        used, files, reserved, reserved_files, scanned = found
        mine = self._table.read(home)
        if not scanned and mine is not None and mine.scanned_at and \
                self._table.forgotten(home, time.time()):
            log.warning("quota: the cluster's Redis no longer knows the usage of %s of bucket "
                        "%s (restarted or flushed, or unused for %d days): scanning it again",
                        home.prefix or "/", home.bucket, USAGE_SECONDS // 86400)
        return Usage(int(used), int(files), int(reserved), int(reserved_files),
                     float(scanned or 0), mine.requested_at if mine else 0.0)

    def claim_scan(self, home: Home, interval: float, now: float, known_only: bool) -> bool:
        return self._table.claim_scan(home, interval, now, known_only)

    def end_scan(self, home: Home, found: Optional[tuple[int, int]], now: float) -> None:
        # Redis first: a worker of this node reading the usage in between would find the
        # table scanned and Redis not, and ask for another scan (:meth:`read`).
        if found is not None:
            self._cluster.run("quota scan", "quota-scanned", _keys(home)[:1],
                              [found[0], found[1], now, USAGE_SECONDS])
        self._table.end_scan(home, found, now)

    def request_scan(self, home: Home, now: float) -> None:
        self._table.request_scan(home, now)

    def adopt(self, home: Home, answered_at: float, most: int, stale_before: float) -> Home:
        """The answers' limits are this node's: each node holds the latest answer it got."""
        return self._table.adopt(home, answered_at, most, stale_before)

    def leave(self, home: Home) -> None:
        self._table.leave(home)

    def limits(self, home: Home) -> Home:
        return self._table.limits(home)

    def tick(self, homes: Iterable[Home]) -> None:
        """Worker 1, every second: rewrite this node's reservations in Redis from its table
        in ``homes`` (the file's) and in every home Redis says it holds some (its index):
        whatever Redis holds of the node there that its table does not say is set right
        (after the changes under way end). All of them instead when that is wanted
        (:meth:`catch_up`)."""
        if self.catch_up():
            return
        indexed = self._cluster.run("quota reservations", "quota-indexed", [self._index], [])
        if indexed is None:
            return
        named = (_ident(holdings) for holdings in indexed)
        idents = {*(home.ident for home in homes), *(ident for ident in named if ident)}
        self._table.publish(idents, False, self._write)

    def want_publish(self) -> None:
        """Redis lost what this node published (its reservations, and its index of the
        homes they are in, an auth hook's homes among them): rewrite all of them."""
        self._table.want_publish()

    def catch_up(self) -> bool:
        """Every worker, every second, and before it serves: send the usage this worker
        could not; if a change of this node did not reach Redis, or a dead worker's
        holdings were dropped from the table (or the table is new: a previous master's),
        rewrite all of the node's reservations in Redis (a look through the table's rows)
        and drop those it no longer holds. True if it did."""
        if self._unsent and self._cluster.usable():
            self._send_unsent()
        if not self._table.publish_wanted() or not self._cluster.usable():
            return False
        return self._table.publish((), True, self._write)

    def _write(self, held: list[tuple[bytes, int, int]], everything: bool) -> bool:
        """The node's reservations in Redis become ``held`` (and nothing else, with
        ``everything``); True if Redis took it."""
        figures = [value for ident, nbytes, files in held
                   for value in (HOLDINGS + ident.hex(), nbytes, files)]
        return self._cluster.run("quota reservations", "quota-holding", [self._index],
                                 [self._cluster.node, HELD_SECONDS, int(everything),
                                  *figures]) is not None


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
