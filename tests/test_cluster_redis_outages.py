"""The cluster's shared state through what else Redis does to it (the nodes, the Redis 6.0
stand-in and the helpers are test_cluster_redis.py's): a Redis that loses its keys, is
slow, hung, older than supported, answers errors or refuses writes
(test_cluster_redis_counts.py: the counts and quota reservations a node keeps there)."""

from __future__ import annotations

import ftplib
import re
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from cosftp_prefork.config.model import ClusterConfig
from cosftp_prefork.config.quotas import home_id
from cosftp_prefork.server.cluster import ClusterAdmin, ClusterState

from .conftest import ALPHA
from .redis6 import Redis6Proxy
from .server_proc import Account, closed_port, wait_until
from .test_cluster import ACCOUNT, OUTAGE_CHECKS, LoneNode, start_redis
from .test_cluster_redis import (
    BANS,
    RedisUnderTest,
    earn_ban,
    logs_in,
    node,
    nothing_crashed,
    redis6,  # noqa: F401 (the fixture)
    refused_as_banned,
    status,
    two_checks_later,
)
from .test_commands import put
from .test_quotas import ROOT, quota_account


def ban_end(server: RedisUnderTest, key: str) -> int:
    """When the ban Redis holds under ``key`` ends (its value: ``<end>:<unban counter>``)."""
    return int(server.direct.get(key).partition(":")[0])


def test_bans_outlive_redis_losing_its_keys(emulator, tmp_path):
    """Redis flushed (restarted empty, failed over to an empty replica): the bans it held
    are gone. Found: a ban made by the cluster's count of failures spread over two nodes
    was then lifted on both (neither node's own count had reached max_login_failures), and
    one made by a node's own count on every other node. Now the node at whose failed login
    the cluster's count earned a ban, and every node that refused an address for a ban the
    cluster holds, hold it in their own table until it ends, and a node whose heartbeat
    finds that Redis no longer knows it publishes the bans it holds again: both nodes
    refuse both addresses again, the bans end when they did; and with the node that earned
    one gone, the other still holds it and publishes it."""
    with two_nodes(emulator, tmp_path, ACCOUNT, "bans-lost", **BANS) as (server, a, b):
        earn_ban(a, "127.0.0.121")  # a's own count
        earn_ban(a, "127.0.0.122", failures=1)
        earn_ban(b, "127.0.0.122", failures=1)  # the cluster's count, at b's failed login
        for proc in (a, b):
            for client in ("127.0.0.121", "127.0.0.122"):
                assert refused_as_banned(proc, client)
        bans = [f"cosftp:ban:127.0.0.12{i}" for i in (1, 2)]
        ends = [ban_end(server, ban) for ban in bans]

        def published_again() -> None:
            wait_until(lambda: server.direct.exists(*bans) == 2, timeout=30,
                       what="the bans published again")
            # (a node holds the end it knew to the second: 1 s later at most)
            assert all(0 <= ban_end(server, ban) - end <= 1
                       for ban, end in zip(bans, ends))
            # ban_time, and the second the end may have been rounded up by (gate's
            # math.ceil): read within a second of the ban, as when failed logins are
            # answered at once, the PTTL is up to 600_999.
            assert 0 < server.direct.pttl(bans[1]) <= 601_000
        server.direct.flushall()
        published_again()
        for proc in (a, b):
            for client in ("127.0.0.121", "127.0.0.122"):
                assert refused_as_banned(proc, client)
        wait_until(lambda: "published again the" in a.log_text() + b.log_text(),
                   what="the nodes' logs")
        assert logs_in(a, "127.0.0.123").startswith("230")
        line = "published again the 2 ban(s) this node holds"
        before = a.log_text().count(line)
        b.stop()  # where the cluster's count earned 122
        server.direct.flushall()
        published_again()
        wait_until(lambda: a.log_text().count(line) == before + 1, what="node a's log")
        for client in ("127.0.0.121", "127.0.0.122"):
            assert refused_as_banned(a, client)


def test_a_ban_outlives_redis_losing_its_keys_with_every_node_that_met_the_address_gone(
        emulator, tmp_path):
    """A ban earned through node a, whose address never tried node b; then a stopped and
    Redis flushed (a node taken out for maintenance or scaled in, Redis restarted without
    persistence). Found: b did not hold the ban (a node held only the bans made or refused
    there), so it let the address in to guess again with ban_time far from over. Now
    every node holds every ban the cluster makes (its heartbeat brings them), so b
    publishes it again, with the end it had, and refuses the address."""
    with two_nodes(emulator, tmp_path, ACCOUNT, "bans-held", **BANS) as (server, a, b):
        earn_ban(a, "127.0.0.131")
        ban = "cosftp:ban:127.0.0.131"
        end = ban_end(server, ban)
        wait_until(lambda: re.search(r"^127\.0\.0\.131 .* cluster,node$",
                                     b.ctl("bans").stdout, re.M),
                   timeout=10, what="node b to hold the ban node a earned")
        a.stop()
        server.direct.flushall()
        wait_until(lambda: server.direct.exists(ban), timeout=30,
                   what="the ban published again")
        assert 0 <= ban_end(server, ban) - end <= 1  # (to the second, as b knew it)
        assert refused_as_banned(b, "127.0.0.131")
        assert "published again the 1 ban(s) this node holds" in b.log_text()


def test_a_ban_earned_in_a_short_outage_reaches_the_other_nodes_when_redis_answers_again(
        emulator, tmp_path):
    """Redis unreachable for less than NODE_TTL (10 s: a restart that keeps its data, a
    network blip; a node asks again redis_check_interval after a failed call): node a bans
    an address by its own count meanwhile. Found: Redis still knew a when it answered again
    (a beat within 10 s; the test's own ZADD of the nodes' beats stands for that, whatever
    the machine's pace), so nothing published the ban, and node b let the address guess on
    for all of ban_time. Now a worker whose Redis answers again publishes the bans its node
    holds."""
    with two_nodes(emulator, tmp_path, ACCOUNT, "blip", **BANS) as (server, a, b):
        upstream = server.proxy.upstream
        server.proxy.upstream = closed_port()  # Redis unreachable through the proxy
        server.proxy.drop_connections()
        earn_ban(a, "127.0.0.141")
        assert refused_as_banned(a, "127.0.0.141")
        assert "unreachable" in a.log_text()
        beats = server.direct.zrange("cosftp:nodes", 0, -1)
        assert sorted(beats) == ["node-blip-a", "node-blip-b"]
        server.direct.zadd("cosftp:nodes", {node: time.time() for node in beats})
        server.proxy.upstream = upstream
        for proc in (a, b):
            wait_until(lambda proc=proc: "reachable again" in proc.log_text(), timeout=30,
                       what=f"node {proc.name} to find Redis again")
        wait_until(lambda: server.direct.exists("cosftp:ban:127.0.0.141"), timeout=30,
                   what="the ban node a earned in the outage published")
        # Every worker of b, not only the first: one that has not asked Redis again yet
        # (redis_check_interval after its last failed call) admits the address on b's own
        # table (found: the connection landed there now and then, and the test failed,
        # before and after the bans a node's table gains were published at once).
        wait_until(lambda: "UNREACHABLE" not in status(b), timeout=30,
                   what="every worker of node b to find Redis again")
        assert refused_as_banned(b, "127.0.0.141")
        # Published by the worker that met the outage once Redis answers it again, or by
        # one that never asked Redis meanwhile, as its node's ban table changed (b0404a8)
        assert re.search(r"cluster: (Redis answers again and did not hold|published) 1 "
                         r"ban\(s\) this node holds", a.log_text())


def test_a_slow_redis_is_an_outage_past_redis_timeout_and_not_before(emulator, redis6,  # noqa: F811
                                                                     tmp_path):
    """Redis answering each command after 1 s: with redis_timeout = 500 ms every call gives
    up once (found: redis-py's default retried each ten times, with back-off) and the node
    serves on its own (redis_down = open), saying so; with 5000 ms it is slow, not down:
    failures are counted and bans shared, and status says reachable."""
    strict_proxy, patient_proxy = Redis6Proxy(redis6.port), Redis6Proxy(redis6.port)
    # The strict node checks Redis at the server's default interval: the commands it sends
    # are counted below before its next check.
    # Two workers on the strict node: each gives up on Redis by itself.
    strict = node(emulator, tmp_path, "strict", strict_proxy.port, redis_timeout=500,
                  redis_check_interval=LoneNode.redis_check_interval, worker_processes="2")
    patient = node(emulator, tmp_path, "patient", patient_proxy.port, redis_timeout=5000,
                   worker_processes="1", **BANS)
    try:
        strict.start()  # Redis fast: each worker connects, then it turns slow
        wait_until(lambda: "Redis reachable" in status(strict), timeout=30, what="status")
        strict_proxy.delay, strict_proxy.commands = 1.0, 0
        assert logs_in(strict, "127.0.0.71").startswith("230")  # served on its own
        wait_until(lambda: strict.log_text().count("unreachable") >= 2,
                   what="both workers to give up on Redis")
        # One command per call (two calls of a worker at most at once), then none for 5 s:
        # no retry after a timeout (redis-py's Redis() of 6.x+ retries ten times, 5.6 s).
        assert strict_proxy.commands <= 2 * 2
        assert "Timeout" in strict.log_text()
        wait_until(lambda: "Redis UNREACHABLE" in status(strict), what="status")
        strict_proxy.delay = 0.0
        wait_until(lambda: "Redis reachable" in status(strict), timeout=30,
                   what="the strict node to find Redis back")
        patient.start()  # then Redis turns slow: 1 s a command, under its 5 s
        patient_proxy.delay = 1.0
        assert logs_in(patient, "127.0.0.72").startswith("230")
        earn_ban(patient, "127.0.0.73")
        assert redis6.direct.pttl("cosftp:ban:127.0.0.73") > 0
        assert refused_as_banned(strict, "127.0.0.73")
        assert "Redis reachable" in status(patient)
        assert "unreachable" not in patient.log_text()
        for proc in (strict, patient):
            nothing_crashed(proc)
    finally:
        strict.stop()
        patient.stop()
        strict_proxy.stop()
        patient_proxy.stop()


def test_a_redis_older_than_6_is_refused_by_check_and_start(
        emulator, redis6, tmp_path):  # noqa: F811
    old = Redis6Proxy(redis6.port, version="5.0.14")
    try:
        proc = node(emulator, tmp_path, "old", old.port)
        proc.write_config()
        checked = proc.ctl("check")
        assert checked.returncode == 2
        assert "is version 5.0.14; this server needs Redis 6.0 or newer" in checked.stderr
        started = proc.ctl("start")
        assert started.returncode == 1
        assert "is version 5.0.14; this server needs Redis 6.0 or newer" in started.stderr
        assert proc.ctl("status").returncode != 0  # nothing left running
        current = Redis6Proxy(redis6.port, version="7.0.15")
        try:
            fine = node(emulator, tmp_path, "fine", current.port)
            fine.write_config()
            checked = fine.ctl("check")
            assert checked.returncode == 0, checked.stderr
            assert "cluster: Redis 7.0.15 at" in checked.stdout
        finally:
            current.stop()
    finally:
        proc.ensure_stopped(proc.daemon_pid())
        old.stop()


def test_a_redis_found_too_old_after_start_is_not_used_and_status_says_so(emulator,
                                                                          tmp_path):
    """Redis down when the node starts (redis_down = closed: it refuses), then up but
    5.0: still refused, with status and log saying why; 6.0 then: served."""
    port = closed_port()  # nothing listens there until start_redis
    proxy = Redis6Proxy(port, version="5.0.14")
    server = None
    try:
        with node(emulator, tmp_path, "late", proxy.port, "closed") as proc:
            wait_until(lambda: "Redis UNREACHABLE" in status(proc), what="the outage")
            server = start_redis(tmp_path, port)
            wait_until(lambda: "Redis NOT SUPPORTED" in status(proc), timeout=30,
                       what="the old version in status")
            assert "refusing new connections" in status(proc)
            assert "is version 5.0.14; this server needs Redis 6.0 or newer" in \
                proc.log_text()
            assert "shared state unreachable" in logs_in(proc, "127.0.0.74")
            proxy.version = "6.0.16"
            wait_until(lambda: "Redis reachable" in status(proc), timeout=30,
                       what="both workers to use Redis 6.0")
            assert logs_in(proc, "127.0.0.74").startswith("230")
            nothing_crashed(proc)
    finally:
        proxy.stop()
        if server is not None:
            server.stop()


def test_an_error_answered_by_redis_is_not_an_outage(emulator, redis6, tmp_path):  # noqa: F811
    """Redis refusing the node's writes by ACL (NOPERM: what the ACL allows still works; the
    operator's choice, not a state that passes by itself): not an outage, even with
    redis_down = closed. Logins are served on the node's own figures (its own ban still
    holds), log and status say Redis answers errors; with writes allowed again, bans are
    shared again. (A Redis out of memory is an outage: tests/test_redis_refusals.py.)"""
    with node(emulator, tmp_path, "acl", redis6.proxy.port, "closed", **BANS) as proc:
        redis6.direct.execute_command("ACL", "SETUSER", "default", "-@write")
        try:
            assert logs_in(proc, "127.0.0.75").startswith("230")  # its count was refused
            wait_until(lambda: "Redis ANSWERING ERRORS" in status(proc), what="status")
            earn_ban(proc, "127.0.0.76")
            assert refused_as_banned(proc, "127.0.0.76")  # this node's own ban
            assert not redis6.direct.exists("cosftp:ban:127.0.0.76")
        finally:
            redis6.direct.execute_command("ACL", "SETUSER", "default", "+@all")
        log = proc.log_text()
        assert "answered the failed-login count with an error; this node went on with its " \
            "own figures for it (ResponseError: Error running script" in log
        # (Redis 7.0 words a script's ACL refusal so, where a command gets NOPERM; the log
        # keeps 160 characters)
        assert ": -ERR The user executing the script" in log
        assert "unreachable" not in log and "refuses writes" not in log
        earn_ban(proc, "127.0.0.77")  # (status says ERRORS for a minute after the last)
        assert redis6.direct.pttl("cosftp:ban:127.0.0.77") > 0
        nothing_crashed(proc)


def test_a_ban_is_not_published_over_an_unban_its_worker_has_not_brought(
        redis6):  # noqa: F811
    """A worker's heartbeat brought the unbans so far; then an unban on another node lifts
    an address in Redis before this worker's next heartbeat, while this node still holds
    the ban. Publishing the node's bans then (its ban table changed: a ban made through the
    admin API) must not write that ban again: noted among the bans made, every node would
    hold it again, the unban undone. Nothing is written until the heartbeat brought it."""
    config = ClusterConfig(f"redis://127.0.0.1:{redis6.port}/0", node_id="unban-race")
    worker, other_node = ClusterState(config), ClusterAdmin(config)
    until = int(time.time()) + 600
    try:
        worker.publish(lambda: (Counter(), 0, {}))
        other_node.unban("127.0.0.33", int(time.time()))
        assert worker.republish([("127.0.0.33", until), ("127.0.0.34", until)]) is None
        assert not redis6.direct.exists("cosftp:ban:127.0.0.33", "cosftp:ban:127.0.0.34")
        beat = worker.publish(lambda: (Counter(), 0, {}))
        assert [unban.address for unban in beat.unbans] == ["127.0.0.33"]
        assert worker.republish([("127.0.0.34", until)]) == 1  # its node forgot .33
        assert 590 <= redis6.direct.ttl("cosftp:ban:127.0.0.34") <= 600
    finally:
        redis6.direct.delete("cosftp:conn:unban-race", "cosftp:ban:127.0.0.34")
        worker.close()
        other_node.close()


class HungRedis(Redis6Proxy):
    """A Redis that never finishes its first reply (hung mid-answer: a byte a second, so no
    read times out), until ``release``: then it closes its connections and refuses more.
    The proxy's listener and accept loop, with nothing relayed."""

    def __init__(self) -> None:
        self._released, self._asked = threading.Event(), threading.Event()
        super().__init__(upstream=0)

    def _serve(self, client: socket.socket) -> None:
        with client:
            try:
                client.recv(4096)  # the first command, whatever it is
                self._asked.set()
                client.sendall(b"$1048576\r\n")
                while not self._released.wait(1.0):  # a slow server, not a synchronisation
                    client.sendall(b"x")
            except OSError:
                pass

    def asked(self) -> bool:
        return self._asked.is_set()

    def release(self) -> None:
        self._released.set()
        self.stop()


def test_status_says_starting_until_a_worker_serves(emulator, tmp_path):
    """A worker asks Redis its version before it serves: while the master waits for its
    first serving worker, status says the server is starting (it said "running", and the
    admin API and console read the same state), then nothing once a worker serves."""
    hung = HungRedis()
    proc = node(emulator, tmp_path, "hung", hung.port, worker_processes="1")
    try:
        proc.launch()
        wait_until(hung.asked, what="the worker to ask Redis")
        assert "state: starting: no worker serves yet; connections wait in the listen " \
               "queue" in status(proc)
        hung.release()  # down: the worker serves on its own (redis_down = open)
        wait_until(proc._serving, what="the worker to serve")
        wait_until(lambda: "state:" not in status(proc), what="status to drop the state line")
    finally:
        hung.release()
        proc.stop()


@contextmanager
def two_nodes(emulator, tmp_path, account: Account, prefix: str,
              **optional: str) -> Iterator[tuple[RedisUnderTest, LoneNode, LoneNode]]:
    """A Redis of the test's own and two nodes of ``account`` on it (``<prefix>-a``, ``-b``),
    checked for crashes and stopped afterwards."""
    server = RedisUnderTest(tmp_path)
    nodes = []
    try:
        for name in ("a", "b"):
            proc = LoneNode(str(tmp_path / name), emulator.port, [account], optional=optional)
            proc.redis_port, proc.name = server.proxy.port, f"{prefix}-{name}"
            proc.redis_check_interval = OUTAGE_CHECKS
            nodes.append(proc.start())
        yield server, nodes[0], nodes[1]
        for proc in nodes:
            nothing_crashed(proc)
    finally:
        for proc in nodes:
            proc.stop()
        server.stop()


def beats_after(server: RedisUnderTest, node_id: str, since: float, beats: int = 2) -> None:
    """Wait until the node's cluster thread beat ``beats`` times after ``since`` (its score
    in ``cosftp:nodes`` is its last heartbeat's time): what the tick of the first of them
    did after its heartbeat (the quota usage a worker could not send) is done then."""
    seen = [since]

    def beat() -> bool:
        score = server.direct.zscore("cosftp:nodes", node_id) or 0.0
        if score > seen[-1]:
            seen.append(score)
        return len(seen) > beats
    wait_until(beat, timeout=30, what=f"{beats} heartbeats of {node_id}")


def test_a_redis_that_refuses_writes_is_down_and_an_open_node_serves_on_its_own(emulator,
                                                                                tmp_path):
    """Redis turned into a read-only replica (REPLICAOF a master that never answers) after
    it lost its keys. Found: every write was an error answered, so the upload's scan of
    its home could not be kept, and the upload failed (451 QuotaScan) after that one scan.
    Now a Redis refusing writes is down (redis_down = open: the node serves on its own
    table), said once in the log (not per request, not at each retry while it lasts) and
    by status; the node's own ban holds; with writes taken again, sharing resumes and the
    home is scanned again."""
    server = RedisUnderTest(tmp_path)
    user, account = "qreadonly", quota_account("qreadonly", "64M")
    proc = LoneNode(str(tmp_path / "node"), emulator.port, [account],
                    optional={"worker_processes": "1", **BANS})
    proc.redis_port, proc.name = server.proxy.port, "read-only"
    proc.redis_check_interval = OUTAGE_CHECKS
    usage = f"cosftp:quota:{home_id(ALPHA, f'{ROOT}{user}/').hex()}"
    refusal = "refuses writes"
    try:
        ftp = proc.start().login(user, f"{user}-pw")
        assert put(ftp, "one.bin", b"1" * 1000).startswith("226")
        server.direct.flushall()
        server.direct.replicaof("127.0.0.1", closed_port())  # a master that never answers
        try:
            assert put(ftp, "two.bin", b"2" * 2000).startswith("226")
            assert put(ftp, "three.bin", b"3" * 3000).startswith("226")
            wait_until(lambda: "Redis REFUSING WRITES" in status(proc), what="status")
            assert "serving on the local scoreboard" in status(proc)
            earn_ban(proc, "127.0.0.91")
            assert refused_as_banned(proc, "127.0.0.91")  # this node's own ban
            two_checks_later(server)
            assert logs_in(proc, "127.0.0.92", account).startswith("230")
            assert proc.log_text().count(refusal) == 1
            assert f"Redis at redis://127.0.0.1:{server.proxy.port}/0 {refusal} (" in \
                proc.log_text()
            assert "ReadOnlyError" not in proc.log_text()  # Redis 6 words it ERR ... -READONLY
            assert not server.direct.exists(usage)
        finally:
            server.direct.replicaof("no", "one")
        wait_until(lambda: "takes writes again" in proc.log_text(), timeout=30,
                   what="the node to find Redis writable")
        beats_after(server, f"node-{proc.name}", server.direct.time()[0] - 1.0)
        assert put(ftp, "four.bin", b"4" * 4000).startswith("226")
        # scanned again (one, two, three), then four counted
        assert server.direct.hmget(usage, "used", "files") == ["10000", "4"]
        wait_until(lambda: "Redis reachable" in status(proc), what="status")
        earn_ban(proc, "127.0.0.93")
        assert server.direct.pttl("cosftp:ban:127.0.0.93") > 0
        ftp.quit()
        nothing_crashed(proc)
    finally:
        proc.stop()
        server.stop()


def test_a_redis_that_refuses_writes_is_down_and_a_closed_node_refuses(emulator, tmp_path):
    """A master short of replicas (min-replicas-to-write 1, none attached: every write is
    refused with NOREPLICAS, reads are served): redis_down = closed refuses new
    connections (421) and uploads a quota counts, as when Redis is unreachable; with
    writes taken again, it serves."""
    server = RedisUnderTest(tmp_path)
    user, account = "qnoreplicas", quota_account("qnoreplicas", "64M")
    proc = LoneNode(str(tmp_path / "node"), emulator.port, [account],
                    optional={"worker_processes": "1"})
    proc.redis_port, proc.name, proc.redis_down = server.proxy.port, "no-replicas", "closed"
    proc.redis_check_interval = OUTAGE_CHECKS
    try:
        ftp = proc.start().login(user, f"{user}-pw")
        assert put(ftp, "one.bin", b"1" * 1000).startswith("226")
        server.direct.config_set("min-replicas-to-write", "1")
        try:
            wait_until(lambda: "shared state unreachable" in logs_in(proc, "127.0.0.94"),
                       timeout=30, what="new connections refused")
            # the worker writes what status shows once a second
            wait_until(lambda: "Redis REFUSING WRITES" in (shown := status(proc)) and
                       "refusing new connections" in shown, what="status to say so")
            with pytest.raises(ftplib.error_temp, match=r"^451 .*QuotaUnavailable"):
                put(ftp, "two.bin", b"2" * 2000)
            assert "NOREPLICAS" in proc.log_text()
        finally:
            server.direct.config_set("min-replicas-to-write", "0")
        wait_until(lambda: logs_in(proc, "127.0.0.94", account).startswith("230"), timeout=30,
                   what="the node to serve again")
        assert put(ftp, "two.bin", b"2" * 2000).startswith("226")
        ftp.quit()
        nothing_crashed(proc)
    finally:
        proc.stop()
        server.stop()


DOWN_MEANWHILE = "until it takes writes, the node takes it for down and runs as " \
    "redis_down = open says"


def refused_write(checked, port: int, refusal: str, remedy: str, meanwhile: str) -> None:
    """``check``'s verdict on a Redis that refuses writes: a warning naming the option,
    Redis's own error and what to do; exit 0, as for an unreachable Redis (the node runs
    on as redis_down says, and the unit's ExecStartPre is check)."""
    assert checked.returncode == 0, checked
    assert f"warning: [CLUSTER] redis_url: Redis 7.0.15 at redis://127.0.0.1:{port}/0 refuses " \
        f"writes: a probe key under cosftp: could not be written ({refusal}): {remedy}; " \
        f"{meanwhile}\n" in checked.stderr, checked
    assert "takes writes" not in checked.stdout, checked


def test_check_writes_to_redis_and_says_why_it_cannot(emulator, tmp_path):
    """cosftpctl check asked Redis only its version: a read-only replica, a Redis whose
    last save failed (MISCONF) or one full at maxmemory with noeviction passed, and the
    node then took Redis for down (or had its writes refused). Now check writes a key
    under cosftp: (expiring in 10 s) and deletes it, and says what Redis answered; no key
    is left behind."""
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = start_redis(redis_dir)
    direct = redis.Redis(port=server.port, decode_responses=True)
    proc = node(emulator, tmp_path, "checked", server.port)
    proc.write_config()
    try:
        fine = proc.ctl("check")
        assert fine.returncode == 0, fine
        assert f"cluster: Redis 7.0.15 at redis://127.0.0.1:{server.port}/0, takes writes\n" in \
            fine.stdout, fine

        direct.replicaof("127.0.0.1", closed_port())  # a master that never answers
        try:
            refused_write(proc.ctl("check"), server.port,
                          "READONLY You can't write against a read only replica.",
                          "it is a read-only replica: point redis_url at its master",
                          DOWN_MEANWHILE)
        finally:
            direct.replicaof("no", "one")

        direct.config_set("maxmemory-policy", "noeviction")
        direct.config_set("maxmemory", "1")
        try:
            refused_write(proc.ctl("check"), server.port,
                          "OOM command not allowed when used memory > 'maxmemory'.",
                          "it is at maxmemory and evicts nothing (maxmemory-policy "
                          "noeviction): raise maxmemory, or choose an eviction policy (every "
                          "key this server writes expires: volatile-ttl will do)",
                          DOWN_MEANWHILE)  # an outage, as for the node (link.refuses_writes)
        finally:
            direct.config_set("maxmemory", "0")

        # A save that fails (Redis's dir removed; Redis 7 will not change dir) with a save
        # point set: MISCONF.
        direct.config_set("save", "3600 1")
        shutil.rmtree(redis_dir)
        direct.bgsave()
        wait_until(lambda: direct.info("persistence")["rdb_last_bgsave_status"] == "err",
                   what="the save to fail")
        try:
            checked = proc.ctl("check")
            assert "(MISCONF Redis is configured to save RDB snapshots, but it's currently " \
                "unable to persist to disk." in checked.stderr, checked
            assert "): its last save to disk failed and stop-writes-on-bgsave-error is yes: " \
                f"see Redis's log (its dir, disk space, permissions); {DOWN_MEANWHILE}\n" in \
                checked.stderr, checked
            assert checked.returncode == 0, checked
        finally:
            direct.config_set("save", "")  # no save point: writes taken again
        assert direct.keys("cosftp:*") == []
    finally:
        direct.close()
        server.stop()
