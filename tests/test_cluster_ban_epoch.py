"""A ban that outlives the unban counter it was ordered by: the counter and its log expire
``UNBANS_SECONDS`` (7 days) after the last unban, a ban made through the admin API may last
366 days. Two nodes on a real ``redis-server`` through ``tests/redis6.py`` (the helpers are
test_cluster_redis.py's and test_cluster_ban_restore.py's); the test deletes the counter's
keys, as their expiry does."""

from __future__ import annotations

import time

import pytest

from .server_proc import wait_until
from .test_cluster import ACCOUNT
from .test_cluster_ban_order import every_node_beat, held_by_node
from .test_cluster_ban_restore import admin_of
from .test_cluster_redis import BANS, RedisUnderTest, logs_in
from .test_cluster_redis_outages import two_nodes

THIRTY_DAYS = 30 * 86400
COUNTER_KEYS = ("cosftp:unban-count", "cosftp:unban-epoch", "cosftp:unbans")


@pytest.mark.parametrize("unban", ["all", "one"])
def test_a_ban_older_than_the_unban_counter_is_lifted_on_every_node(
        emulator, tmp_path, unban):
    """Three unbans move the counter to 3; a 30-day ban is made through the admin API
    (ordered by that counter), both nodes hold it; the counter, its epoch and its log
    expire (deleted here). Found: the next ``unban --all`` took number 1 of a new counter,
    took the ban (ordered 3) for one made while it ran, and kept it in Redis and on every
    node (it answered (0, 0)). An unban of that address, or of every address, lifts it
    in Redis and on both nodes."""
    client = "127.0.0.211" if unban == "all" else "127.0.0.212"
    with two_nodes(emulator, tmp_path, ACCOUNT, f"epoch-{unban}", **BANS) as (server, a, b):
        with admin_of(server) as admin:
            for n in range(3):
                admin.unban(f"10.9.2.{n + 1}", int(time.time()))
            admin.ban(client, int(time.time()) + THIRTY_DAYS, THIRTY_DAYS)
            for proc in (a, b):
                wait_until(lambda proc=proc: held_by_node(proc, client), timeout=10,
                           what=f"node {proc.name} to hold {client}")
            every_node_beat(server, a, b)
            epoch = server.direct.get("cosftp:unban-epoch")
            assert server.direct.get(f"cosftp:ban:{client}").endswith(f":{epoch}:3")
            assert server.direct.delete(*COUNTER_KEYS) == len(COUNTER_KEYS)
            every_node_beat(server, a, b)  # they saw the counter gone
            lifted = admin.unban(None if unban == "all" else client, int(time.time()))
        assert lifted == (1, 0)
        assert not server.direct.exists(f"cosftp:ban:{client}")
        every_node_beat(server, a, b)
        for proc in (a, b):
            assert not held_by_node(proc, client), proc.name
            assert logs_in(proc, client).startswith("230"), proc.name


def test_a_ban_written_by_the_version_before_of_a_counter_before_is_lifted(tmp_path):
    """A ban the version before wrote (``<end>:<order>``, no epoch), ordered 57 by a counter
    that expired since (deleted here), and one ordered 0: ``unban --all`` (number 1 of a
    new counter) lifts both. Found: it took the first for one made while it ran."""
    server = RedisUnderTest(tmp_path)
    try:
        ends = int(time.time()) + THIRTY_DAYS
        server.direct.set("cosftp:ban:192.0.2.57", f"{ends}:57", ex=THIRTY_DAYS)
        server.direct.set("cosftp:ban:192.0.2.58", f"{ends}:0", ex=THIRTY_DAYS)
        with admin_of(server) as admin:
            assert admin.unban(None, int(time.time())) == (2, 0)
        assert not server.direct.keys("cosftp:ban:*")
    finally:
        server.stop()
