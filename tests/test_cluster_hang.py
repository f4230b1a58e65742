"""A cluster node whose Redis hangs: a real ``redis-server`` stopped with SIGSTOP (the kernel
still accepts connections to it; nothing is answered) until the test resumes it. New
connections must not wait behind each other for Redis, nor the worker's heartbeat; and a
worker keeps a bounded number of connections to Redis however many sessions ask it at once.
"""

from __future__ import annotations

import contextlib
import ftplib
import os
import signal
import socket
from collections.abc import Iterator

import psutil
import pytest
import redis

from cosftp_prefork.server.cluster import REDIS_CONNECTIONS

from .server_proc import wait_until
from .test_cluster import ACCOUNT, Daemon, LoneNode, start_redis
from .test_master import sessions_by_pid, state_of

HUNG_TIMEOUT = 10000  # redis_timeout (ms, the most allowed): calls wait while Redis is stopped


@contextlib.contextmanager
def stopped(server: Daemon) -> Iterator[None]:
    """Redis hung: SIGSTOP, resumed on leaving (whatever happened)."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


@pytest.fixture
def redis_server(tmp_path):
    server = start_redis(tmp_path)
    try:
        yield server, server.port
    finally:
        server.stop()


def hung_node(emulator, tmp_path, redis_port: int, **optional: str) -> LoneNode:
    proc = LoneNode(str(tmp_path / "node"), emulator.port, [ACCOUNT],
                    optional={"worker_processes": "1", **optional})
    proc.redis_port, proc.name, proc.redis_timeout = redis_port, "hung", HUNG_TIMEOUT
    return proc


def the_worker(proc: LoneNode) -> int:
    (worker,) = [w.pid for w in state_of(proc).workers() if w.state == "serving"]
    return worker


def heartbeat(proc: LoneNode, pid: int) -> float:
    return next((w.heartbeat for w in state_of(proc).workers() if w.pid == pid), 0.0)


def nothing_received(sock: socket.socket) -> bool:
    """True if the server has sent nothing on ``sock`` yet (it is left open)."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


def test_a_hung_redis_holds_up_neither_new_connections_nor_the_heartbeat(
        emulator, tmp_path, redis_server):
    """While Redis hangs (up to redis_timeout = 10 s a call), six new connections to one
    worker are all counted at once, each waiting for the cluster's answer in its own
    thread; a logged-in session goes on and the worker's heartbeat too. Redis resumed,
    each is greeted. Found: the admission asked Redis in the worker's accept loop (each
    connection waited behind the one before: N connections, N x redis_timeout) and so did
    the tick, whose heartbeat then stopped: with worker_timeout = 2 the master aborted the
    worker and every session with it."""
    server, port = redis_server
    with hung_node(emulator, tmp_path, port, worker_timeout="2",
                   health_check_interval="1") as proc:
        worker = the_worker(proc)
        session = proc.login(ACCOUNT.user, ACCOUNT.password)
        waiting = []
        try:
            with stopped(server):
                for i in range(6):
                    waiting.append(socket.create_connection(
                        (proc.host, proc.port), timeout=30,
                        source_address=(f"127.0.0.{130 + i}", 0)))
                wait_until(lambda: sessions_by_pid(proc)[worker] == 1 + len(waiting),
                           what="every new connection counted while Redis hangs")
                assert all(nothing_received(sock) for sock in waiting)  # Redis not heard yet
                for _ in range(2):  # the worker's tick goes on
                    beat = heartbeat(proc, worker)
                    wait_until(lambda since=beat: heartbeat(proc, worker) > since,
                               what="the worker's heartbeat while Redis hangs")
                assert session.voidcmd("NOOP").startswith("200")
            for sock in waiting:
                assert sock.makefile("rb").readline().startswith(b"220")
        finally:
            for sock in waiting:
                sock.close()
        assert session.pwd() == "/"
        session.quit()
        log = proc.log_text()
        assert "sent no heartbeat" not in log and "Traceback" not in log


def redis_connections(pid: int, port: int) -> int:
    """TCP connections process ``pid`` holds to Redis on ``port``."""
    return sum(1 for conn in psutil.Process(pid).net_connections(kind="tcp")
               if conn.raddr and conn.raddr.port == port)


def test_a_worker_keeps_its_redis_connections_bounded_under_a_crowd(emulator, tmp_path,
                                                                    redis_server):
    """120 sessions of one worker send USER at once (each asks Redis whether its address is
    banned) while Redis hangs: the worker opens REDIS_CONNECTIONS to it and no more, the
    other calls wait for one (the log says so); Redis resumed, every session gets its 331.
    Found: one connection per session thread calling at once, never closed (redis-py 5.x
    without a bound; 8.x stops at 100 and fails the next call at once, taken for an
    outage), times workers and nodes against Redis's maxclients."""
    server, port = redis_server
    direct = redis.Redis(port=port, decode_responses=True)
    crowd: list[ftplib.FTP] = []
    unlimited = dict.fromkeys(("max_connections_per_ip", "max_prelogin_connections",
                               "max_prelogin_connections_per_ip"), "0")
    try:
        with hung_node(emulator, tmp_path, port, **unlimited) as proc:
            worker = the_worker(proc)
            for i in range(120):
                ftp = ftplib.FTP(encoding="utf-8", source_address=(f"127.0.1.{1 + i}", 0),
                                 timeout=60)
                ftp.connect(proc.host, proc.port)
                crowd.append(ftp)
            with stopped(server):
                for ftp in crowd:
                    ftp.putcmd(f"USER {ACCOUNT.user}")
                wait_until(lambda: redis_connections(worker, port) >= REDIS_CONNECTIONS,
                           what="the worker's connections to Redis all in use")
                assert redis_connections(worker, port) == REDIS_CONNECTIONS
                wait_until(lambda: "connections of this worker to Redis at" in
                           proc.log_text(), what="the log to say they are all busy")
            replies = [ftp.getresp() for ftp in crowd]
            assert all(reply.startswith("331") for reply in replies), replies[:3]
            mine = direct.client_id()
            theirs = [c for c in direct.client_list() if int(c["id"]) != mine]
            assert len(theirs) <= REDIS_CONNECTIONS, len(theirs)
            assert redis_connections(worker, port) <= REDIS_CONNECTIONS
            assert f"all {REDIS_CONNECTIONS} connections of this worker to Redis at " \
                   f"redis://127.0.0.1:{port}/0 busy (Redis slow?)" in proc.log_text()
            assert "Traceback" not in proc.log_text()
    finally:
        for ftp in crowd:
            ftp.close()
        direct.close()
