"""The counts and quota reservations a node keeps in the cluster's Redis (split from
test_cluster_redis_outages.py, whose helpers it shares, so that the two run on two xdist
workers): a node rewriting its counts and reservations while its workers change them; the
usage of homes with a quota that Redis lost; sessions counted again after Redis lost
them."""

from __future__ import annotations

import ftplib
import hashlib
import re
import socket
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from cosftp_prefork.config.model import ClusterConfig
from cosftp_prefork.config.quotas import home_id
from cosftp_prefork.server.cluster import SKIPS_BEFORE_REWRITE, ClusterState
from cosftp_prefork.server.cluster.scripts import HEARTBEAT, LIBRARY
from cosftp_prefork.server.quotashare import SCRIPTS

from .conftest import ALPHA
from .redis6 import Held, Redis6Proxy
from .server_proc import Account, wait_until
from .test_cluster import LoneNode
from .test_cluster_redis import (
    RedisUnderTest,
    nothing_crashed,
    redis6,  # noqa: F401 (the fixture)
)
from .test_cluster_redis_outages import two_nodes
from .test_commands import put
from .test_quotas import MIB, ROOT, quota_account


def test_a_connection_counted_while_another_worker_rewrites_the_node_is_not_lost(
        redis6):  # noqa: F811
    """Worker A reads the node's session table for its heartbeat; worker B admits a
    connection (its table row, then its count in Redis) before A's rewrite reaches Redis.
    A's rewrite from the older table must not erase B's count: the other nodes would
    admit one connection past the per-address cap until the next heartbeat."""
    config = ClusterConfig(f"redis://127.0.0.1:{redis6.port}/0", node_id="race")
    publisher, admitter = ClusterState(config), ClusterState(config)
    ip, key = "127.0.0.31", "cosftp:conn:race"
    def table(counts: int) -> Callable[[], tuple]:
        return lambda: (Counter({ip: counts}), 0, {})

    def read_then_admitted() -> tuple:
        read = table(1)()  # A's read: B's row is not in it yet
        admitter.counted(ip, 1)  # B's row, then its count
        return read
    try:
        publisher.publish(table(1))  # one connection, counted and published
        publisher.publish(read_then_admitted)
        assert redis6.direct.hget(key, ip) == "2"
        publisher.publish(table(2))  # the next read has B's row
        assert redis6.direct.hget(key, ip) == "2"
        admitter.counted(ip, -1)
        publisher.publish(table(1))
        assert redis6.direct.hget(key, ip) == "1"
    finally:
        redis6.direct.delete(key)
        publisher.close()
        admitter.close()


def test_a_busy_node_still_drops_the_counts_of_a_dead_worker(redis6):  # noqa: F811
    """Every heartbeat of worker A sees a change counted meanwhile (a busy node) and keeps
    the hash; after SKIPS_BEFORE_REWRITE of them it rewrites anyway, so the connections of
    a worker that died (counted, never uncounted) do not stay counted for ever."""
    config = ClusterConfig(f"redis://127.0.0.1:{redis6.port}/0", node_id="busy")
    publisher, admitter = ClusterState(config), ClusterState(config)
    ip, key = "127.0.0.32", "cosftp:conn:busy"

    def churned() -> tuple:
        admitter.counted(ip, 1)  # a connection that comes and goes during the read
        admitter.counted(ip, -1)
        return Counter({ip: 1}), 0, {}
    try:
        admitter.counted(ip, 3)  # one live connection, two of a worker since killed
        rewrites = []
        for _ in range(SKIPS_BEFORE_REWRITE + 1):
            publisher.publish(churned)
            rewrites.append(redis6.direct.hget(key, ip))
        assert rewrites == ["3"] * SKIPS_BEFORE_REWRITE + ["1"]
    finally:
        redis6.direct.delete(key)
        publisher.close()
        admitter.close()


def script_sha(body: str) -> str:
    """The SHA1 a node runs one of its scripts by (``EVALSHA``)."""
    return hashlib.sha1((LIBRARY + body).encode()).hexdigest()


def through_a_rewrite(proxy: Redis6Proxy, held: Held) -> None:
    """Wait until ``held`` (a change of the node's quota reservations) waits in the proxy
    and worker 1's tick came round to its rewrite of the node's reservations meanwhile: it
    ran, or the node's cluster thread beat twice (the tick's rewrite, once a second, then
    waits for the change; the node's ``redis_timeout`` must be well above that)."""
    assert held.arrived.wait(60), "the change never reached Redis"
    rewrite, heartbeat = script_sha(SCRIPTS["quota-holding"]), script_sha(HEARTBEAT)
    rewrites, beats = proxy.runs[rewrite], proxy.runs[heartbeat]
    wait_until(lambda: proxy.runs[rewrite] > rewrites or proxy.runs[heartbeat] >= beats + 2,
               timeout=60, what="worker 1's tick to come round to the rewrite")


@pytest.mark.parametrize("change", ["settle", "reserve"])
def test_a_rewrite_of_the_nodes_reservations_never_counts_a_change_twice(emulator, tmp_path,
                                                                          redis6,  # noqa: F811
                                                                          change):
    """Worker 1 rewrites the node's reservations in Redis from its usage table every second.
    A rewrite that read the table while an upload's change was between its table step and
    its Redis step wrote the change back (found in CI: a 1.5 MiB upload's settled
    reservation counted again beside its usage, and the ALLO after it refused, 552, "holds
    3145728 bytes of its 2 MiB", until the next second). The proxy holds the change there
    (the settle's answer: Redis gave the bytes back, the table not yet; or the reserve
    before Redis runs it: the table counts it already) across worker 1's rewrite: Redis
    then holds the upload's reservation once, or nothing once it settled."""
    user, size = f"qrewrite{change}", 3 * MIB // 2
    proc = LoneNode(str(tmp_path / "node"), emulator.port,
                    [quota_account(user, "2M", prefix=f"rewrite-{change}")],
                    optional={"worker_processes": "1"})
    proc.redis_port, proc.name = redis6.proxy.port, f"rewrite-{change}"
    proc.redis_timeout = 10000  # the change's call waits in the proxy, never that long
    proxy, direct, field = redis6.proxy, redis6.direct, f"node-{proc.name}#b"
    try:
        ftp = proc.start().login(user, f"{user}-pw")
        put(ftp, "warm.bin", b"w" * 1000)  # the quota scripts are loaded: no hold meets a NOSCRIPT
        ident = home_id(ALPHA, f"{ROOT}rewrite-{change}/").hex()
        usage, holdings = f"cosftp:quota:{ident}", f"cosftp:quota-held:{ident}"
        ftp.sendcmd(f"ALLO {size}")  # the upload's first reservation
        ftp.voidcmd("TYPE I")
        with ThreadPoolExecutor(1) as pool:
            if change == "reserve":
                held = proxy.hold(script_sha(SCRIPTS["quota-reserve"]))
                opening = pool.submit(ftp.transfercmd, "STOR big.bin")
                through_a_rewrite(proxy, held)
                held.release()
                data = opening.result(timeout=60)
                reserved = int(direct.hget(holdings, field))
                data.sendall(b"b" * size)
                data.close()
                ftp.voidresp()
                assert reserved == size
            else:
                held = proxy.hold(script_sha(SCRIPTS["quota-settle"]), reply=True)
                upload = pool.submit(put, ftp, "big.bin", b"b" * size)
                through_a_rewrite(proxy, held)
                counted = (int(direct.hget(usage, "used")), int(direct.hget(holdings, field)))
                held.release()
                assert upload.result(timeout=60).startswith("226")
                assert counted == (1000 + size, 0)
        ftp.quit()
    finally:
        proxy.release_holds()
        proc.stop()


def test_a_small_upload_into_a_home_with_a_quota_asks_redis_twice(
        emulator, tmp_path, redis6):  # noqa: F811
    """Each quota call is a round trip to Redis that the upload waits for. A small upload
    made four (found by bench/quota_cluster.py: the home's usage read before it, the
    reservation of its first bytes, that of its first slice on its first write, the
    settlement): its reservation now takes a slice ahead in the same call, and tells a home
    whose usage is not known yet rather than have it read beforehand. Worker 1's rewrites
    (once a second, not per upload) are not counted."""
    user, uploads = "qcalls", 5
    proc = LoneNode(str(tmp_path / "node"), emulator.port, [quota_account(user, "1G")],
                    optional={"worker_processes": "1"})
    proc.redis_port, proc.name = redis6.proxy.port, "calls"
    per_upload = [script_sha(SCRIPTS[name])
                  for name in ("quota-read", "quota-reserve", "quota-settle")]
    try:
        ftp = proc.start().login(user, f"{user}-pw")
        put(ftp, "first.bin", b"f" * 1000)  # the home's scan, the scripts loaded
        before = sum(redis6.proxy.runs[sha] for sha in per_upload)
        for number in range(uploads):
            assert put(ftp, f"small-{number}.bin", b"s" * 1000).startswith("226")
        calls = sum(redis6.proxy.runs[sha] for sha in per_upload) - before
        ftp.quit()
        assert calls == 2 * uploads
    finally:
        proc.stop()


def finish_upload(ftp: ftplib.FTP, data: socket.socket, rest: bytes) -> str:
    data.sendall(rest)
    data.close()
    return ftp.voidresp()


@pytest.mark.parametrize("loss", ["flushall", "restart"])
def test_a_home_whose_usage_redis_lost_is_scanned_again_at_its_next_reservation(emulator,
                                                                               tmp_path, loss):
    """Redis restarted without persistence (or flushed, or failed over to an empty replica)
    loses the homes' usage and the nodes' reservations. Found: the node that had scanned the
    home still had it scanned in its own usage table, so the next reservation, told the
    usage is not known, waited for a scan nobody was due to make (``SCAN_PATIENCE``, 600 s):
    an upload under way got no reply. Now that node scans the home again at once, the
    upload's reservation (written back by worker 1's rewrite) counts once, and the other
    node, which never scanned the home, uses that scan."""
    user = f"qlost{loss}"
    ident = home_id(ALPHA, f"{ROOT}{user}/").hex()
    usage, holdings = f"cosftp:quota:{ident}", f"cosftp:quota-held:{ident}"
    with two_nodes(emulator, tmp_path, quota_account(user, "64M"), f"lost-{loss}",
                   worker_processes="1") as (server, a, b):
        first = a.login(user, f"{user}-pw")
        assert put(first, "one.bin", b"1" * 1000).startswith("226")
        assert server.direct.hmget(usage, "used", "files") == ["1000", "1"]
        scans = a.log_text().count("holds 1000 bytes in 1 files")
        first.voidcmd("TYPE I")
        data = first.transfercmd("STOR two.bin")  # its first slice reserved: 4 MiB, a file
        data.sendall(b"2" * MIB)
        if loss == "flushall":
            server.direct.flushall()
        else:
            server.restart()
        field = f"node-{a.name}"
        wait_until(lambda: server.direct.hmget(holdings, f"{field}#b", f"{field}#f") ==
                   [str(4 * MIB), "1"], what="worker 1 to write the reservation back")
        assert not server.direct.exists(usage)
        with ThreadPoolExecutor(1) as pool:  # its next slice finds the usage unknown
            upload = pool.submit(finish_upload, first, data, b"2" * (4 * MIB))
            wait_until(upload.done, timeout=60, what="the upload after Redis lost its keys")
            assert upload.result().startswith("226")
        assert "quota: the cluster's Redis no longer knows the usage of " in a.log_text()
        assert a.log_text().count("holds 1000 bytes in 1 files") == scans + 1
        assert server.direct.hmget(usage, "used", "files") == [str(1000 + 5 * MIB), "2"]
        assert server.direct.hmget(holdings, f"{field}#b", f"{field}#f") == ["0", "0"]
        # b reaches Redis again: its heartbeat wrote it among the nodes, which Redis lost. A
        # b that met the restart serves on its own figures (and scans the home itself) until
        # its next check of Redis, up to 5 s later
        wait_until(lambda: server.direct.zscore("cosftp:nodes", f"node-{b.name}") is not None,
                   what="node b's first heartbeat after Redis lost its keys")
        second = b.login(user, f"{user}-pw")
        assert put(second, "three.bin", b"3" * 3000).startswith("226")
        assert not re.search(r"quota: .* holds \d+ bytes", b.log_text())  # a's scan served b
        total = 4000 + 5 * MIB
        assert server.direct.hmget(usage, "used", "files") == [str(total), "3"]
        assert f"size: {total} bytes used of" in second.sendcmd("SITE QUOTA")
        for ftp in (first, second):
            ftp.quit()


def test_a_scan_that_redis_refuses_to_keep_is_not_made_again_and_again(emulator, tmp_path):
    """Redis lost the home's usage and refuses the node's writes by ACL (NOPERM: an error
    answered, not an outage): the scan its next upload makes cannot be kept there.
    That upload fails (451) after that one scan and the next one tries again, rather than
    scan the home again and again while the client waits. (A Redis that refuses every
    write, a read-only replica, is an outage instead: see the test below.)"""
    server = RedisUnderTest(tmp_path)
    user = "qlostacl"
    proc = LoneNode(str(tmp_path / "node"), emulator.port, [quota_account(user, "64M")],
                    optional={"worker_processes": "1"})
    proc.redis_port, proc.name = server.proxy.port, "lost-acl"
    try:
        ftp = proc.start().login(user, f"{user}-pw")
        assert put(ftp, "one.bin", b"1" * 1000).startswith("226")
        scans = len(re.findall(f"user={user} .* holds 1000 bytes in 1 files", proc.log_text()))
        server.direct.flushall()
        server.direct.execute_command("ACL", "SETUSER", "default", "-@write")
        try:
            with ThreadPoolExecutor(1) as pool:
                upload = pool.submit(put, ftp, "two.bin", b"2" * 2000)
                wait_until(upload.done, timeout=60, what="the upload's reply")
                with pytest.raises(ftplib.error_temp, match=r"^451 .*QuotaScan"):
                    upload.result()
            log = proc.log_text()
            assert "STOR failed: the usage of a quota was scanned but could not be recorded" \
                in log
            # (worker 1 may scan it again by itself meanwhile: it was asked for)
            assert len(re.findall(f"user={user} .* holds 1000 bytes in 1 files", log)) == \
                scans + 1
        finally:
            server.direct.execute_command("ACL", "SETUSER", "default", "+@all")
        assert put(ftp, "two.bin", b"2" * 2000).startswith("226")
        assert server.direct.hmget(f"cosftp:quota:{home_id(ALPHA, f'{ROOT}{user}/').hex()}",
                                   "used", "files") == ["3000", "2"]
        ftp.quit()
        nothing_crashed(proc)
    finally:
        proc.stop()
        server.stop()


def test_the_sessions_of_an_account_count_again_soon_after_redis_lost_them(emulator, tmp_path):
    """max_sessions = 1 across two nodes; Redis restarted (every node's counts gone). Not a
    bug: each node's counts are its session table, rewritten whole by its heartbeat once a
    second, so within a second the session on node a refuses a second one on node b again
    (in that second b may admit one: as when a's counts expire after a crash)."""
    account = Account("fewlost", "fewlost-pw", ALPHA, extra="max_sessions = 1")
    with two_nodes(emulator, tmp_path, account, "seats") as (server, a, b):
        session = a.login(account.user, account.password)

        def refused_on_b() -> bool:
            try:
                b.login(account.user, account.password).quit()
            except ftplib.error_temp as exc:
                assert "421 Too many sessions of this account" in str(exc)
                return True
            return False
        assert refused_on_b()
        server.restart()
        counts = f"cosftp:conn:node-{a.name}"
        wait_until(lambda: any(field.startswith("@u:") and value == "1"
                               for field, value in server.direct.hgetall(counts).items()),
                   timeout=30, what="node a's heartbeat to write its counts again")
        assert refused_on_b()
        assert session.pwd() == "/"
        session.quit()
        wait_until(lambda: not refused_on_b(), what="the seat freed on node b")
