"""The number of the last unban a node applied, across what happens while it is stopped or
killed: Redis losing its keys (its unban counter starts again, with a new epoch) and a
``kill -9`` (the bans file keeps the number as it moves, not only when the ban table
changes). Two nodes on a real ``redis-server`` through ``tests/redis6.py`` (the helpers are
test_cluster_redis.py's and test_cluster_ban_restore.py's)."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil

from .server_proc import wait_until
from .test_cluster import ACCOUNT
from .test_cluster_ban_order import every_node_beat, held_by_node
from .test_cluster_ban_restore import admin_of
from .test_cluster_redis import BANS, logs_in, status
from .test_cluster_redis_outages import two_nodes


def saved(proc) -> dict:
    """What the node's bans file holds (``<pid file>.bans``; nothing if it has none)."""
    try:
        with open(os.path.join(proc.log_dir, "cosftp.pid.bans"), encoding="ascii") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {}


def test_unbans_made_after_redis_lost_its_keys_while_a_node_was_stopped_all_reach_it(
        emulator, tmp_path):
    """Node a applied 3 unbans and holds copies of 3 bans; it stops, Redis loses its keys
    (FLUSHALL), node b publishes the bans again, and 4 unbans follow: the 3 bans', then
    another. Redis's counter started again at 1, past a's saved 3 by one. Found: a, started
    again, took the first 3 for those it had applied: it kept the bans, and published them
    again in Redis, where b then refused the addresses too. Now the counter has an epoch,
    made with it: a sees it is not the one it counted against and reads from the start."""
    with two_nodes(emulator, tmp_path, ACCOUNT, "epoch", **BANS) as (server, a, b):
        clients = ["127.0.0.181", "127.0.0.182", "127.0.0.183"]
        with admin_of(server) as admin:
            for n in range(3):
                admin.unban(f"10.9.0.{n + 1}", int(time.time()))
            for client in clients:
                admin.ban(client, int(time.time()) + 600, 600)
            for client in clients:
                wait_until(lambda client=client: held_by_node(a, client), timeout=10,
                           what=f"node a to hold {client}")
            every_node_beat(server, a)  # its workers brought the 3 unbans
            a.stop()
            assert saved(a)["unbans_applied"] == 3
            server.direct.flushall()
            wait_until(lambda: server.direct.exists(*(f"cosftp:ban:{c}" for c in clients))
                       == len(clients), timeout=30, what="node b to publish the bans again")
            for client in clients:
                admin.unban(client, int(time.time()))
            admin.unban("10.9.0.9", int(time.time()))
        assert server.direct.get("cosftp:unban-count") == "4"
        a.start()
        wait_until(lambda: "Redis reachable" in status(a), timeout=30, what="a to find Redis")
        every_node_beat(server, a, b)
        for client in clients:
            assert not held_by_node(a, client), client
            assert not server.direct.exists(f"cosftp:ban:{client}"), client
            for proc in (a, b):
                assert logs_in(proc, client).startswith("230"), (proc.name, client)


def test_the_bans_file_keeps_the_last_unban_applied_through_a_kill(emulator, tmp_path):
    """Unbans that lift nothing on node a (it held no ban of their addresses) change no
    row of its table. Found: only a change of the table saved the bans file, so its
    number of the last unban applied stayed behind, and a node killed (``kill -9``) read
    those unbans again at its start. Now the file is saved when the number moves too: it
    says the last one, and a's start after the kill brings none again."""
    with two_nodes(emulator, tmp_path, ACCOUNT, "killed", **BANS) as (server, a, _b):
        with admin_of(server) as admin:
            for n in range(3):
                admin.unban(f"10.9.1.{n + 1}", int(time.time()))
        every_node_beat(server, a)
        wait_until(lambda: saved(a).get("unbans_applied") == 3, timeout=10,
                   what="node a to save the number of the last unban it applied")
        master = psutil.Process(a.proc.pid)
        for proc in [*master.children(recursive=True), master]:
            proc.send_signal(signal.SIGKILL)
        a.proc.wait(30)
        assert saved(a).get("unbans_applied") == 3
        a.start()
        every_node_beat(server, a)
        assert logs_in(a, "127.0.0.191").startswith("230")
