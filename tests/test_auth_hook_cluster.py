"""Quotas an auth hook's answers give, on a node of a cluster ([CLUSTER], Redis): the
node's reservations in a hook home leave Redis when a worker dies, Redis is hung or loses
its keys, or the node crashes and starts again."""

from __future__ import annotations

import contextlib
import ftplib
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from typing import Optional

import psutil
import pytest

from cosftp_prefork.config.quotas import home_id

from .conftest import ALPHA
from .crowds import workers_of
from .hooked import MIB, hooked_server, quoted
from .server_proc import ServerProcess, wait_until
from .test_cluster import Daemon, LoneNode, start_redis
from .test_cluster_redis import RedisUnderTest
from .test_commands import put
from .test_master import sessions_by_pid
from .test_quotas import kill_while_holding, reserved, used


@contextlib.contextmanager
def hook_node(emulator, tmp_path, service, name: str, user: str, redis_port: int = 0,
              workers: int = 1) -> Iterator[tuple[LoneNode, Optional[Daemon], str]]:
    """A node of a cluster with ``workers``, started on its own Redis (or ``redis_port``'s),
    an auth hook's answer giving ``user`` (password ``<user>-pw``) a home with a 3 MiB
    quota; the node, its Redis (None with ``redis_port``) and the home's prefix."""
    home = f"{name}-{uuid.uuid4().hex[:8]}/"
    service.users[user] = (f"{user}-pw", quoted(emulator, home, quota_size="3M"))
    redis = None if redis_port else start_redis(tmp_path)
    node = hooked_server(emulator, tmp_path / "node", service.url, LoneNode,
                         auth_cache_ttl="0", quota_scan_interval="0",
                         worker_processes=str(workers))
    node.redis_port, node.name = redis_port or redis.port, name
    try:
        yield node.start(), redis, home
    finally:
        node.stop()
        if redis is not None:
            redis.stop()


def test_a_killed_workers_reservation_in_a_hook_home_is_given_back_on_a_cluster_node(
        emulator, tmp_path, service, cos):
    """A node of a cluster ([CLUSTER]), an auth hook's answer giving the home its 3 MiB
    quota: the worker is SIGKILLed while an upload holds 2 MiB there. The node's
    reservations in Redis lose them with the master's reap, as for a file account's home
    (test_quotas), though worker 1's second-by-second rewrite covers the file's homes only."""
    with hook_node(emulator, tmp_path, service, "hookkilled", "hk") as (node, _, home):
        kill_while_holding(node, "hk", cos, home, hook_home=f"{ALPHA}/{home}")


@contextlib.contextmanager
def hung(redis_server) -> Iterator[None]:
    """Redis hung (SIGSTOP: its data kept, every call times out), resumed on leaving."""
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


def holding(server: ServerProcess, user: str) -> tuple[ftplib.FTP, socket.socket]:
    """A session of ``user`` (password ``<user>-pw``) whose upload holds 2 MiB of its home's
    quota (ALLO), its data connection open; and that data connection."""
    ftp = server.login(user, f"{user}-pw")
    ftp.sendcmd(f"ALLO {2 * MIB}")
    ftp.voidcmd("TYPE I")
    held = ftp.transfercmd("STOR held.bin")  # its 2 MiB are reserved before the 150
    held.sendall(b"h" * 1000)
    return ftp, held


def fits_again(ftp: ftplib.FTP) -> None:
    """Nothing is held in the session's 3 MiB home any more (SITE QUOTA, the figures every
    node reserves against): 2.5 MiB fit."""
    wait_until(lambda: reserved(ftp) == 0, what="the reservation gone from the cluster's "
               "figures")
    ftp.sendcmd(f"ALLO {5 * MIB // 2}")
    assert put(ftp, "fits.bin", b"f" * (5 * MIB // 2)).startswith("226")


def test_a_hook_homes_reservation_released_during_a_redis_outage_leaves_redis_after_it(
        emulator, tmp_path, service):
    """A node of a cluster, an auth hook's answer giving the home a 3 MiB quota: an upload
    holding 2 MiB there ends while the node finds Redis unreachable, so its release does not
    reach Redis. Once Redis answers again, the node's reservations in Redis are rewritten
    from its own table: nothing is reserved and the 1 MiB left fits; the file's 2 MiB, which
    the usage in Redis could not count then, are counted now. Found: Redis kept the 2 MiB
    for good (a day after the home's last reservation; worker 1's rewrite covers the
    file's homes only), and every upload needing that room got 552; the file was not
    counted until the home's next scan (never, with quota_scan_interval = 0)."""
    with hook_node(emulator, tmp_path, service, "hookoutage", "ho") as (node, redis, _):
        ftp, held = holding(node, "ho")
        assert reserved(node.login("ho", "ho-pw")) == 2 * MIB
        with hung(redis):
            # The heartbeat finds it out (the node then does not ask Redis for 5 s: the
            # release is not even sent, where a timed-out call would land at the resume).
            wait_until(lambda: "unreachable" in node.log_text(), what="the outage seen")
            held.sendall(b"h" * (2 * MIB - 1000))  # the rest of the size ALLO announced
            held.close()  # the end of the file: committed, its reservation given back
            ftp.voidresp()
        wait_until(lambda: "reachable again" in node.log_text(), what="Redis back")
        again = node.login("ho", "ho-pw")
        wait_until(lambda: used(again) == (2 * MIB, 1), what="the file written meanwhile "
                   "counted")
        wait_until(lambda: reserved(again) == 0, what="the reservation gone from the "
                   "cluster's figures")
        again.sendcmd(f"ALLO {MIB}")
        assert put(again, "fits.bin", b"f" * MIB).startswith("226")
        ftp.quit()


def test_a_hook_homes_reservation_is_written_back_soon_after_redis_lost_its_keys(
        emulator, tmp_path, service):
    """A node of a cluster, an auth hook's answer giving the home a 3 MiB quota, an upload
    holding 2 MiB there; Redis flushed (restarted empty, failed over to an empty replica):
    the node's reservations and its index of the homes it holds some in are gone. Found:
    worker 1's rewrite covers the file's homes and those the index names, so the other
    nodes did not count the 2 MiB until the upload ended. Now the node's heartbeat finds
    that Redis no longer knows the node, and the node rewrites all its reservations."""
    redis = RedisUnderTest(tmp_path)
    try:
        with hook_node(emulator, tmp_path, service, "hooklost", "hl", redis.proxy.port) as \
                (node, _, home):
            ftp, held = holding(node, "hl")
            holdings = f"cosftp:quota-held:{home_id(ALPHA, home).hex()}"
            field = f"node-{node.name}#b"
            assert redis.direct.hget(holdings, field) == str(2 * MIB)
            redis.direct.flushall()
            wait_until(lambda: redis.direct.hget(holdings, field) == str(2 * MIB),
                       timeout=30, what="the node's reservation written back")
            held.sendall(b"h" * (2 * MIB - 1000))  # the rest of the size ALLO announced
            held.close()
            ftp.voidresp()
            wait_until(lambda: redis.direct.hget(holdings, field) in (None, "0"),
                       what="the reservation given back")
            ftp.quit()
    finally:
        redis.stop()


def test_a_dead_workers_reservation_in_a_hook_home_leaves_redis_before_its_replacement(
        emulator, tmp_path, service):
    """Two workers on a node of a cluster, an auth hook's answer giving the home a 3 MiB
    quota: the worker whose upload holds 2 MiB there is SIGKILLed, and its replacement
    cannot start (Redis now says it is too old: the worker refuses to start, the master
    tries again later). The master gives the dead worker's holdings back in the node's
    table at the reap; the surviving worker rewrites the node's reservations in Redis from
    it, so a session there sees nothing reserved and 2.5 MiB fit. Found: Redis kept them
    until a replacement started (the master does not talk to Redis)."""
    redis = RedisUnderTest(tmp_path)
    try:
        with hook_node(emulator, tmp_path, service, "hookdead", "hd", redis.proxy.port,
                       workers=2) as (node, _, _):
            wait_until(lambda: len(workers_of(node.proc.pid)) == 2, what="both workers")
            ftp, held = holding(node, "hd")
            [holder] = sessions_by_pid(node)
            for _ in range(50):  # a session on the other worker
                observer = node.login("hd", "hd-pw")
                if sessions_by_pid(node)[holder] == 1:
                    break
                observer.close()
                wait_until(lambda: sessions_by_pid(node)[holder] == 1, what="closed")
            else:
                pytest.fail("50 logins in a row went to the worker holding the upload")
            assert reserved(observer) == 2 * MIB
            redis.proxy.version = "5.0.14"
            os.kill(holder, signal.SIGKILL)
            wait_until(lambda: "given back" in node.log_text(), what="the master's reap")
            wait_until(lambda: "cannot start" in node.log_text(),
                       what="the replacement refused")
            fits_again(observer)
            redis.proxy.version = "6.0.16"
            for session in (ftp, observer):
                session.close()
            held.close()
    finally:
        redis.stop()


def test_a_node_restarted_after_a_crash_drops_its_old_reservations_in_a_hook_home(
        emulator, tmp_path, service):
    """A node of a cluster killed whole (SIGKILL to its master and its workers) while
    an upload holds 2 MiB of a 3 MiB quota an auth hook's answer gave, then started again
    under its node_id before the other nodes stopped counting it (NODE_TTL): its new usage
    table holds nothing, and the first worker rewrites the node's reservations in Redis from
    it before it serves, so nothing is reserved and 2.5 MiB fit. Found: the 2 MiB stayed
    counted for good (the rewrite at start covered the homes the new table knew: none)."""
    with hook_node(emulator, tmp_path, service, "hookcrash", "hc") as (node, _, _):
        ftp, held = holding(node, "hc")
        workers = workers_of(node.proc.pid)
        node.proc.send_signal(signal.SIGSTOP)  # no reap, no drop: all die at once
        for worker in workers:
            worker.kill()
        psutil.wait_procs(workers, timeout=10)
        node.proc.kill()
        node.proc.wait()
        held.close()
        ftp.close()
        node.start()
        fits_again(node.login("hc", "hc-pw"))
