"""Bans and unbans across a cluster's nodes in Redis's order, not their clocks' (a ban made in
the second after an unban, one made while ``unban --all`` runs), and a node's ban table
filled by the cluster's bans. Two nodes on a real ``redis-server`` through
``tests/redis6.py`` (the helpers are test_cluster_redis.py's)."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from typing import Optional

from cosftp_prefork.config.model import ClusterConfig
from cosftp_prefork.server.cluster import ClusterState
from cosftp_prefork.server.cluster.scripts import LIBRARY, UNBAN
from cosftp_prefork.server.scoreboard.layout import BAN_ROWS

from .admin_client import AdminClient, admin_url
from .server_proc import wait_until
from .test_cluster import ACCOUNT
from .test_cluster_redis import (
    BANS,
    RedisUnderTest,
    earn_ban,
    logs_in,
    nothing_crashed,
    pair,  # noqa: F401 (the fixture)
    redis6,  # noqa: F401 (the fixture)
    refused_as_banned,
)
from .test_cluster_redis_outages import beats_after, two_nodes


def held_by_node(proc, address: str) -> bool:
    """Whether the node's own table holds a ban of ``address`` (``cosftpctl bans`` says
    ``node`` where it lists it)."""
    return bool(re.search(rf"^{re.escape(address)} .*\bnode$", proc.ctl("bans").stdout, re.M))


def every_node_beat(server: RedisUnderTest, *procs) -> None:
    """Return once each node's workers beat twice more: what they bring is applied."""
    now = time.time()
    for proc in procs:
        beats_after(server, f"node-{proc.name}", now)


def unban_then_ban(server: RedisUnderTest, unbanning: AdminClient, banning: AdminClient,
                   client: str) -> bool:
    """Unban ``client`` through ``unbanning``'s node and ban it again through ``banning``'s
    once Redis noted the unban, while the first node still waits for its master to save
    the bans file; True if both came in one second, as their whole-second times had
    them (a loaded machine may take longer: then the ban again holds all the same)."""
    unbans = int(server.direct.get("cosftp:unban-count") or 0)
    wait_until(lambda: time.time() % 1 < 0.5, what="the first half of a second")
    second = int(time.time())
    lifted: dict = {}
    lifting = threading.Thread(target=lambda: lifted.update(
        answer=unbanning.call("DELETE", f"/bans/{client}")))
    lifting.start()
    wait_until(lambda: int(server.direct.get("cosftp:unban-count") or 0) > unbans,
               what="Redis to note the unban")
    one_second = int(time.time()) == second
    assert banning.call("POST", "/bans", json={"address": client}).status_code == 201
    lifting.join()
    assert lifted["answer"].status_code == 200, lifted["answer"].text
    return one_second


def test_a_ban_made_in_the_second_after_an_unban_holds_on_every_node(
        pair, redis6):  # noqa: F811
    """Banned through node a's admin API, unbanned through node b's, banned again (through
    a's API for one address, b's for another) in the same second. Found: each node judged
    the unban by whole seconds, took the new ban for older, forgot it at its next heartbeat
    before publishing it, and neither Redis nor any node held it: the address got in."""
    a, b = pair["a"], pair["b"]
    api = {"a": AdminClient(admin_url(a)), "b": AdminClient(admin_url(b))}
    again_through = {"127.0.0.101": "a", "127.0.0.102": "b"}
    for client in again_through:
        assert api["a"].call("POST", "/bans", json={"address": client}).status_code == 201
        wait_until(lambda client=client: held_by_node(b, client), timeout=10,
                   what=f"node b to hold the ban of {client}")
    made: dict[str, float] = {}  # when the last ban again of each began (time.time())
    for client, node in again_through.items():
        # (up to five times, until once in one second: else the test proves nothing)
        for _ in range(5):
            made[client] = time.time()
            if unban_then_ban(redis6, api["b"], api[node], client):
                break
        else:
            raise AssertionError(f"no unban and ban again of {client} in one second")
    every_node_beat(redis6, a, b)
    for client in again_through:
        # The ban again, whole: ban_time (600 s) from its making, however long since.
        ttl, since = redis6.direct.ttl(f"cosftp:ban:{client}"), time.time() - made[client]
        assert 600 - since - 1 <= ttl <= 600, (client, ttl, since)
        for proc in (a, b):
            assert held_by_node(proc, client), (proc.name, client)
            assert refused_as_banned(proc, client), (proc.name, client)
    for proc in (a, b):
        nothing_crashed(proc)


def unban_all_held(server: RedisUnderTest, a, b, gone: str, made: str) -> Optional[float]:
    """Ban ``gone`` (earned on node a), then run ``unban --all`` on node b with its first
    page's answer held until a ban of ``made``, earned on a meanwhile (a holds it then), is
    in Redis and node b's workers beat since (b brought it); when that ban was earned
    (``time.time()`` before it), or None if the unban gave up waiting for the held answer
    (``redis_timeout``, 10 s at most: a loaded machine may take longer to earn the ban and
    bring it to Redis and b). The hold waits on Redis only, not on ``cosftpctl bans`` (a
    process each look, seconds apiece at load 30). Found: it waited for both nodes'
    ``cosftpctl bans`` to list the ban; the unban gave up meanwhile, lifted node b's whole
    table as ``unban --all`` does (``made`` too: "lifted 2 ban(s) on this node" in b's log),
    and b, its heartbeat past that ban, never listed it again: the wait timed out (30 s,
    load 17-34) where the retry was meant to come."""
    earn_ban(a, gone)  # what the unban lifts
    wait_until(lambda: held_by_node(b, gone), timeout=10, what=f"b to hold {gone}")
    unban_script = hashlib.sha1((LIBRARY + UNBAN).encode()).hexdigest()
    held = server.proxy.hold(unban_script, reply=True)
    # The run after the page, held in turn: the note (the bans' failed logins went with
    # them, so there is no page of them)
    note = server.proxy.hold(unban_script, reply=True)
    unban: dict = {}
    runner = threading.Thread(target=lambda: unban.update(result=b.ctl("unban", "--all")))
    # (the unban waits for its held page's answer: not past redis_timeout, read by
    # cosftpctl from the file; node b runs on with what it read at its start)
    b.redis_timeout, kept = 10_000, b.redis_timeout  # (the most it takes)
    b.write_config()
    runner.start()
    try:
        assert held.arrived.wait(30), "unban --all deleted no page"
        earned = time.time()
        earn_ban(a, made)
        # (the failed login's own call writes the ban in Redis; one that timed out leaves
        # it on a, unpublished while the unban runs: then only the unban giving up ends it)
        wait_until(lambda: server.direct.exists(f"cosftp:ban:{made}") or
                   not runner.is_alive(), timeout=10, what="Redis to hold the ban made "
                   "during the unban, or the unban to give up")
        if runner.is_alive():
            every_node_beat(server, b)
        held.release()
        # The note's answer held until b's workers brought it (and kept the ban made):
        # then cosftpctl lifts b's table. Found: it did so after the note, and dropped
        # that ban for good on b (Redis and a held it).
        wait_until(lambda: note.arrived.is_set() or not runner.is_alive(), timeout=10,
                   what="the unban's note, or the unban to give up")
        if note.arrived.is_set():
            every_node_beat(server, b)
    finally:
        held.release()
        note.release()
        runner.join()
        b.redis_timeout = kept
        b.write_config()
    result = unban["result"]
    if result.returncode != 0 and "did not come within redis_timeout" in result.stderr:
        return None
    assert result.returncode == 0, result.stderr
    return earned


def test_a_ban_made_while_unban_all_runs_holds_on_every_node(pair, redis6):  # noqa: F811
    """``unban --all`` on node b deletes Redis's bans a page at a time and tells the nodes
    last; a ban earned on node a after its first page, held by both nodes, must hold on:
    it was made after the unban began. Found: Redis kept it (its page was read before), but
    both nodes forgot it when the unban's note came, made in the same second. And: b's
    cosftpctl lifted b's table after the note, dropping the ban b's heartbeat had kept
    (the note's answer is held until b brought it, so that this is met each run). Where the
    unban gave up waiting for its held page (a loaded machine), it is tried again with two
    other addresses, up to five times: only an unban that ran whole proves anything."""
    a, b = pair["a"], pair["b"]
    lifted: list[str] = []
    for attempt in range(5):
        gone, made = f"127.0.0.{111 + 2 * attempt}", f"127.0.0.{112 + 2 * attempt}"
        lifted.append(gone)
        earned = unban_all_held(redis6, a, b, gone, made)
        if earned is not None:
            break
    else:
        raise AssertionError("each of 5 unban --all gave up waiting for its held page")
    every_node_beat(redis6, a, b)
    # The ban earned during the unban, whole: ban_time (600 s) from its making.
    ttl, since = redis6.direct.ttl(f"cosftp:ban:{made}"), time.time() - earned
    assert 600 - since - 1 <= ttl <= 600, (ttl, since)
    for client in lifted:
        assert not redis6.direct.exists(f"cosftp:ban:{client}"), client
    for proc in (a, b):
        assert held_by_node(proc, made), proc.name
        assert refused_as_banned(proc, made), proc.name
        for client in lifted:
            assert logs_in(proc, client).startswith("230"), (proc.name, client)
        nothing_crashed(proc)


def crowd(redis_port: int, first: int, count: int) -> None:
    """Ban ``count`` addresses (10.7.x.y from the ``first``-th) as another node of the
    cluster does: each earned by a failed login there, noted for every node."""
    elsewhere = ClusterState(ClusterConfig(f"redis://127.0.0.1:{redis_port}/0",
                                           node_id="crowd"))
    try:
        for n in range(first, first + count):
            assert elsewhere.record_failure(f"10.7.{n // 250}.{n % 250 + 1}", 1, 60, 600)
    finally:
        elsewhere.close()


def node_bans(proc) -> int:
    """How many bans the node's own table holds."""
    return len(re.findall(r"\bnode$", proc.ctl("bans").stdout, re.M))


def test_a_crowd_of_the_clusters_bans_leaves_a_nodes_own_ban_in_its_table(emulator,
                                                                          tmp_path):
    """Node a earned a ban itself; then 1,100 addresses are banned elsewhere in the cluster,
    more than a's ban table holds (1,024 rows), and every node holds each. Then Redis loses
    its keys: node a publishes again what its table holds. Found: the crowd's copies took
    the place of a's own ban (ending soonest), and after the loss the address got in on
    every node with most of its ban left."""
    with two_nodes(emulator, tmp_path, ACCOUNT, "crowd", **BANS) as (server, a, b):
        earn_ban(a, "127.0.0.121")
        for first in (0, 500, 1000):
            count = 500 if first < 1000 else 100
            crowd(server.proxy.port, first, count)
            wait_until(lambda total=first + count: node_bans(a) >= min(total, BAN_ROWS),
                       timeout=60, interval=1, what=f"node a to hold {first + count} bans")
        assert node_bans(a) == BAN_ROWS
        assert held_by_node(a, "127.0.0.121")
        assert "the ban table (1024 rows) was full of running bans" in a.log_text()
        server.direct.flushall()
        wait_until(lambda: server.direct.exists("cosftp:ban:127.0.0.121"), timeout=30,
                   what="node a to publish its own ban again")
        assert refused_as_banned(b, "127.0.0.121")
        nothing_crashed(a)
