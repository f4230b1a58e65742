"""Bans and unbans in Redis's order across what a node forgets: its own restart (a ban made
while Redis could not be asked, restored from its bans file), more unbans than one
heartbeat brings, and whose ban a restored row is (own or a copy). Nodes on a real
``redis-server`` through ``tests/redis6.py`` (the helpers are test_cluster_redis.py's)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from cosftp_prefork.config.model import ClusterConfig
from cosftp_prefork.server.cluster import ClusterAdmin
from cosftp_prefork.server.cluster.keys import UNBANS_PER_TICK

from .server_proc import closed_port, wait_until
from .test_cluster import ACCOUNT
from .test_cluster_ban_order import every_node_beat, held_by_node
from .test_cluster_redis import (
    BANS,
    RedisUnderTest,
    earn_ban,
    logs_in,
    refused_as_banned,
    status,
)
from .test_cluster_redis_outages import two_nodes


@contextmanager
def admin_of(server: RedisUnderTest) -> Iterator[ClusterAdmin]:
    """What ``cosftpctl ban``/``unban`` on another node does, straight to Redis."""
    admin = ClusterAdmin(ClusterConfig(f"redis://127.0.0.1:{server.port}/0"))
    try:
        yield admin
    finally:
        admin.close()


@contextmanager
def redis_unreachable(server: RedisUnderTest) -> Iterator[None]:
    """Redis unreachable through the nodes' proxy while the block runs (the test's own
    client still reaches it)."""
    upstream = server.proxy.upstream
    server.proxy.upstream = closed_port()
    server.proxy.drop_connections()
    try:
        yield
    finally:
        server.proxy.upstream = upstream


def bans_file(proc) -> dict:
    """What the node's bans file holds (``<pid file>.bans``)."""
    with open(os.path.join(proc.log_dir, "cosftp.pid.bans"), encoding="ascii") as handle:
        return json.load(handle)


def test_a_ban_made_in_an_outage_survives_a_restart_over_older_unbans_only(emulator,
                                                                           tmp_path):
    """Node a earns bans of two addresses while Redis cannot be asked, and stops: its bans
    file keeps them. One address was unbanned (and an ``unban --all`` made) before the
    ban, the other is unbanned while a is stopped, after the ban. At a's start the older
    unbans must not lift the ban (it is published, and refused on every node); the later
    one must. Found: a starting worker read the last 1,000 unbans again, and forgot every
    ban restored that one of them named (or all of them, for the ``--all``)."""
    with two_nodes(emulator, tmp_path, ACCOUNT, "restore", **BANS) as (server, a, b):
        before, after = "127.0.0.151", "127.0.0.152"
        with admin_of(server) as admin:
            admin.unban(before, int(time.time()))
            admin.unban(None, int(time.time()))
            every_node_beat(server, a, b)  # a's workers brought both unbans
            with redis_unreachable(server):
                for client in (before, after):
                    earn_ban(a, client)
                    assert refused_as_banned(a, client)
                assert "unreachable" in a.log_text()
                a.stop()
            admin.unban(after, int(time.time()))
        a.start()
        wait_until(lambda: "Redis reachable" in status(a), timeout=30, what="a to find Redis")
        every_node_beat(server, a)
        assert held_by_node(a, before)
        assert server.direct.exists(f"cosftp:ban:{before}")
        assert refused_as_banned(a, before) and refused_as_banned(b, before)
        assert not held_by_node(a, after)
        assert not server.direct.exists(f"cosftp:ban:{after}")
        assert logs_in(a, after).startswith("230")


def test_a_ban_made_after_the_unbans_one_heartbeat_brings_holds_on_the_node(emulator,
                                                                            tmp_path):
    """More unbans than one heartbeat brings (100) between two of node a's heartbeats (it
    could not reach Redis meanwhile): the 101st unbans an address a holds, and a ban of
    it is made after that unban. The first heartbeat brings the new ban, the second the
    unban. Found: the second made a forget the ban, which Redis still held."""
    with two_nodes(emulator, tmp_path, ACCOUNT, "hundred", **BANS) as (server, a, b):
        client = "127.0.0.161"
        with admin_of(server) as admin:
            admin.ban(client, int(time.time()) + 600, 600)
            wait_until(lambda: held_by_node(a, client), timeout=10, what="a to hold it")
            with redis_unreachable(server):
                for n in range(UNBANS_PER_TICK):
                    admin.unban(f"10.8.0.{n + 1}", int(time.time()))
                admin.unban(client, int(time.time()))
                admin.ban(client, int(time.time()) + 600, 600)
        for proc in (a, b):
            wait_until(lambda proc=proc: "UNREACHABLE" not in status(proc), timeout=30,
                       what=f"every worker of {proc.name} to find Redis again")
        every_node_beat(server, a, b)
        assert server.direct.exists(f"cosftp:ban:{client}")
        for proc in (a, b):
            assert held_by_node(proc, client), proc.name


def test_the_bans_file_says_whose_each_ban_is(emulator, tmp_path):
    """Node a holds a ban of its own (earned there) and a copy of one made elsewhere; its
    bans file must say which is which, through a stop and a start, so that a copy restored
    is still a copy (it gives way first in a full table). A file of the version before,
    which does not say, is read as before: every ban the node's own."""
    with two_nodes(emulator, tmp_path, ACCOUNT, "whose", **BANS) as (server, a, _b):
        own, copy = "127.0.0.171", "127.0.0.172"
        earn_ban(a, own)
        with admin_of(server) as admin:
            admin.ban(copy, int(time.time()) + 600, 600)
        wait_until(lambda: held_by_node(a, copy), timeout=10, what="a to hold the copy")
        for _ in range(2):  # saved, restored, saved again: still a copy
            a.stop()
            saved = {entry["address"]: entry for entry in bans_file(a)["bans"]}
            assert saved[copy].get("copy") is True
            assert "copy" not in saved[own]
            a.start()
        a.stop()
        old = {"bans": [{"address": entry["address"], "until": entry["until"]}
                        for entry in bans_file(a)["bans"]]}
        with open(os.path.join(a.log_dir, "cosftp.pid.bans"), "w", encoding="ascii") as handle:
            json.dump(old, handle)
        a.start()
        a.stop()
        assert all("copy" not in entry for entry in bans_file(a)["bans"])
        a.start()
        assert refused_as_banned(a, own) and refused_as_banned(a, copy)
