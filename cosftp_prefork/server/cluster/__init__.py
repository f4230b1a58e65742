"""State shared by the nodes of a cluster (``[CLUSTER] redis_url``): bans, failed-login
counts and connection counts in Redis (or Valkey), so a ban made on one node refuses the
client on every node and the per-address and logged-in limits hold for the whole cluster.

Keys (all under ``cosftp:``), each with an expiry so nothing outlives its use:

* ``ban:<ip>`` — the ban (a string, ``<the time it ends>:<the unban counter's epoch>:<the
  unban counter when it was written>``), expiring with it; ``fail:<ip>`` — failed logins
  in the window (a count, expiring at the end of the window);
* ``conn:<node>`` — a hash of this node's connections per client address, ``@in`` its
  logged-in sessions, and ``@u:<digest>`` those of each account logged in there. Every
  worker rewrites it once a second from the node's own session table (``shared``) with a
  short expiry, so the counts of a node that dies vanish, and those of a dead worker are
  gone at the next rewrite; ``@seq`` counts the changes workers add between rewrites
  (HINCRBY), so that a rewrite from a table read before one of them does not erase it;
* ``nodes`` — node names scored by their last rewrite; admission sums the live ones. Only
  heartbeats write it: one that finds its node missing there or silent for ``NODE_TTL``
  (Redis lost its keys, an outage, the node's start) says so, and the node publishes
  again what it holds (its bans, ``Gate.share``; its quota reservations,
  ``server.quotashare``);
* ``unbans`` — the last ``UNBANS_KEPT`` unbans (``cosftpctl unban`` on any node), each
  ``<number>:<time>:<address or *>`` scored by its number from the counter ``unban-count``;
  both expire ``UNBANS_SECONDS`` after the last unban. Every worker's heartbeat brings the
  ones it has not seen, and its node forgets those addresses in its own table too (a ban a
  node made by itself, by its own failed-login count, is lifted on every node within a
  second), unless Redis holds a ban of the address made after the unban: Redis's order of
  scripts orders bans and unbans, never the nodes' clocks. ``unbanning`` — set while an
  ``unban --all`` runs (its number, taken first: it deletes only the bans written before
  it), so that no node publishes its bans again meanwhile;
* ``bans-made`` — the last ``BANS_KEPT`` bans made or published again, scored by the
  counter ``ban-count``, which every worker's heartbeat brings to its node.

Every call of a worker is one Lua script (``scripts``) run with ``EVALSHA`` (redis-py loads
it again when Redis answers ``NOSCRIPT``, after a restart or ``SCRIPT FLUSH``): one round
trip, atomic, and only commands and arguments that every Redis since 2.6 accepts (no
``EXPIRE ... NX``, which Redis 6 refuses). The minimum is ``REDIS_MINIMUM`` (6.0, what
Debian 11 and Ubuntu 22.04 ship and the oldest the tests run as), checked with ``INFO
server`` when a worker starts (below it, or ``INFO`` refused, the worker does not start:
``cosftpctl start`` fails and says why, a reload keeps the old workers) and whenever Redis
answers again after an outage (below it: treated as unreachable, and said so). ``cosftpctl
bans`` and ``unban --all`` (``ClusterAdmin``) find the ban and failure keys with ``SCAN`` (a
page at a time, so Redis is never held by the walk), then read or delete each page with one
script.

A worker asks Redis from its session threads and its cluster thread (``Gate.share``), never
from its accept loop, over at most ``REDIS_CONNECTIONS`` connections: a call that finds them
all busy waits for one up to ``redis_timeout`` (the log says so), then goes on with this
node's own figures, as for an error Redis answered (Redis is slow, not gone: a burst of calls
must not make an outage, which ``redis_down = closed`` turns into refusals until the next
check, ``redis_check_interval``).

Three kinds of trouble, kept apart:

* Redis unreachable (refused, closed, no answer within ``redis_timeout``, serving no
  command now: ``link.busy``, loading its data), or refusing every write (a read-only
  replica, too few replicas for ``min-replicas-to-write``, a failed save, out of memory:
  ``link.refuses_writes``; nothing the node writes would land): the call
  gives up (one retry on a fresh connection if the one it had was broken, never on a
  timeout) and the node stops asking for ``redis_check_interval``, then checks again (its
  version, and a write that changes nothing); meanwhile it serves on its own scoreboard
  (``redis_down = open``) or refuses new connections (``closed``). Logged once per outage
  and shown by ``cosftpctl status``.
* Redis answers with another error (an ACL refusal, a script error): not
  an outage, whatever ``redis_down`` says. That call is answered from
  this node's own figures, the next one asks again; logged (the first at once, then a
  count a minute) and shown by ``status`` for a minute after the last one.
* A key under ``cosftp:`` holding what this server does not write there (another type, a
  count that is not a number, a ban without expiry): the scripts delete it, carry on, and
  say which key class they repaired (``cosftp:fail:*``), never the key or its content.

Modules: ``keys`` (what is kept where), ``scripts`` (the Lua), ``link`` (the client, its
bounds, the version check), ``state`` (a worker's view: ``ClusterState``), ``admin``
(``cosftpctl``'s: ``ClusterAdmin``, ``check_config``).
"""

import importlib
from typing import TYPE_CHECKING, Any

from .keys import NODE_TTL, PREFIX, SKIPS_BEFORE_REWRITE

if TYPE_CHECKING:
    from .admin import ClusterAdmin, ClusterEntry, ClusterTrouble, check_config
    from .link import REDIS_CONNECTIONS
    from .state import UNAVAILABLE, Beat, ClusterState, Elsewhere, NodeCounts, Unban

# The names of the modules that import redis-py, by the module that has each.
_WITH_REDIS = {
    **dict.fromkeys(("ClusterAdmin", "ClusterEntry", "ClusterTrouble", "check_config"),
                    "admin"),
    "REDIS_CONNECTIONS": "link",
    **dict.fromkeys(("UNAVAILABLE", "Beat", "ClusterState", "Elsewhere", "NodeCounts",
                     "Unban"), "state"),
}

__all__ = [
    "NODE_TTL", "PREFIX", "REDIS_CONNECTIONS", "SKIPS_BEFORE_REWRITE", "UNAVAILABLE",
    "Beat", "ClusterAdmin", "ClusterEntry", "ClusterState", "ClusterTrouble", "Elsewhere",
    "NodeCounts", "Unban", "check_config",
]


def __getattr__(name: str) -> Any:
    """The names of ``admin``, ``link`` and ``state``, imported at their first use: they
    import redis-py (~70 ms of CPU), which a server without ``[CLUSTER]`` never uses, and
    every worker imports this package (the gate, its quota ledger). A worker makes its
    ``ClusterState`` (``workerstats``), and ``cosftpctl`` its ``ClusterAdmin``, only when
    ``redis_url`` is set. Raises AttributeError for a name none of them has."""
    if name not in _WITH_REDIS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WITH_REDIS[name]}"), name)
    globals()[name] = value
    return value
