"""A cluster for real: two nodes on their own loopback addresses behind HAProxy (TCP mode,
``send-proxy-v2``, the layout of ``conf/haproxy.cfg.example``) sharing bans and connection
counts in a real ``redis-server``; the client comes from its own address (127.0.0.21...)."""

from __future__ import annotations

import ftplib
import io
import os
import random
import re
import signal
import socket
import subprocess
from typing import Callable, Optional

import psutil
import pytest
import redis

from .conftest import ALPHA, TWO_WORKERS
from .server_proc import (
    ROOT,
    Account,
    ServerProcess,
    closed_port,
    start_listening,
    wait_until,
)
from .test_clients import require
from .test_master import one_session_per_worker, serving, state_file_locked, state_of
from .test_proxy import BALANCER, RequiredProxyServer, proxied_ftp, v2_header
from .test_resume import MIB, break_upload, get, rest_stor

NODES = {"a": "127.0.0.11", "b": "127.0.0.12"}
FRONT = "127.0.0.10"
ACCOUNT = Account("alice", "alice-pw", ALPHA)


class Daemon:
    """A foreground program (redis-server, haproxy) listening on a port of its own, its
    output in a file: ``command(port)`` is how it is run on ``port``."""

    def __init__(self, command: Callable[[int], list[str]], log_path: str, what: str,
                 port: int = 0) -> None:
        self.command, self.log_path, self.what, self.port = command, log_path, what, port
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> Daemon:
        """Run it and wait until it listens on ``port`` (0: a free one, chosen again if
        another test file's process binds it first: ``start_listening``). Returns self;
        raises AssertionError, with its output, if it does not listen."""
        def launch(port: int) -> subprocess.Popen:
            with open(self.log_path, "ab") as out:
                return subprocess.Popen(self.command(port), stdout=out,
                                        stderr=subprocess.STDOUT)
        try:
            self.proc, (self.port,) = start_listening(launch, self.what, (self.port,))
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.output()[-3000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()


def start_redis(tmp_path, port: int = 0, *options: str) -> Daemon:
    """A redis-server listening on loopback ``port`` (0: a free one; see ``Daemon.start``),
    keeping nothing on disk, with ``options`` after those (a later one wins). Returns it
    started."""
    redis = require("redis-server")
    return Daemon(lambda port: [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path), *options],
                  str(tmp_path / "redis.log"), "redis-server", port).start()


PASSIVE_BASE = 20000 + 100 * random.randrange(90)  # 100 ports per node, unlikely taken


def passive_range(name: str) -> tuple[int, int]:
    low = PASSIVE_BASE + 100 * list(NODES).index(name)
    return low, low + 99


def haproxy_config(front_port: int, ports: dict[str, int]) -> str:
    """conf/haproxy.cfg.example with the test's loopback addresses and ports."""
    with open(os.path.join(ROOT, "conf", "haproxy.cfg.example"), encoding="utf-8") as handle:
        text = handle.read()
    for name, example_range in (("a", "60000-60999"), ("b", "61000-61999")):
        text = text.replace(f"192.0.2.10:{example_range}",
                            f"{FRONT}:{'-'.join(map(str, passive_range(name)))}")
    return (text.replace("192.0.2.10:21", f"{FRONT}:{front_port}")
            .replace("10.0.0.11:2121", f"{NODES['a']}:{ports['a']}")
            .replace("10.0.0.12:2121", f"{NODES['b']}:{ports['b']}")
            .replace("10.0.0.11 ", f"{NODES['a']} ").replace("10.0.0.12 ", f"{NODES['b']} ")
            .replace("source 10.0.0.5", f"source {BALANCER}"))


class ClusterNode(RequiredProxyServer):
    """A node: its own loopback address, masquerade_address and passive range, PROXY
    headers required from the balancer, and ``[CLUSTER]`` pointing at the test's Redis."""

    redis_port: int = 0
    name: str = ""

    def write_config(self) -> None:
        super().write_config()
        with open(self.config_path, "a", encoding="utf-8") as handle:
            handle.write(f"\n[CLUSTER]\nredis_url = redis://127.0.0.1:{self.redis_port}/0\n"
                         f"node_id = node-{self.name}\n")


def cluster_node(emulator, tmp, name: str, redis_port: int) -> ClusterNode:
    proc = ClusterNode(
        str(tmp / f"node-{name}"), emulator.port, [ACCOUNT],
        network={"listen_address": NODES[name], "masquerade_address": FRONT,
                 "passive_port": ",".join(map(str, passive_range(name))),
                 "proxy_protocol": "required",
                 "proxy_allowed": BALANCER},
        optional={"max_connections_per_ip": "2", "max_login_failures": "2", "ban_time": "600"})
    proc.redis_port, proc.name = redis_port, name
    return proc


@pytest.fixture(scope="module")
def cluster(emulator, tmp_path_factory):
    require("haproxy")
    tmp = tmp_path_factory.mktemp("cluster")
    redis = start_redis(tmp)
    nodes = {}
    haproxy = None
    try:
        for name in NODES:
            nodes[name] = cluster_node(emulator, tmp, name, redis.port).start()
        ports = {name: node.port for name, node in nodes.items()}

        def balancer(front: int) -> list[str]:
            (tmp / "haproxy.cfg").write_text(haproxy_config(front, ports))
            return [require("haproxy"), "-db", "-f", str(tmp / "haproxy.cfg")]
        haproxy = Daemon(balancer, str(tmp / "haproxy.log"), "haproxy").start()
        front = haproxy.port
        wait_until(lambda: _front_answers(front), what=f"haproxy ({haproxy.output()})")
        yield {"nodes": nodes, "front": front, "redis": redis, "haproxy": haproxy}
    finally:
        if haproxy is not None:
            haproxy.stop()
        for proc in nodes.values():
            proc.stop()
        redis.stop()


def _front_answers(port: int) -> bool:
    try:
        with ftplib.FTP() as ftp:
            ftp.connect(FRONT, port, timeout=2)
        return True
    except (OSError, EOFError, ftplib.Error):
        return False


def via_balancer(cluster, client: str) -> ftplib.FTP:
    """A session through HAProxy from ``client``; a refusal (421) is in ``welcome``."""
    ftp = ftplib.FTP(encoding="utf-8", source_address=(client, 0))
    ftp.host, ftp.port, ftp.timeout = FRONT, cluster["front"], 30
    ftp.sock = socket.create_connection((FRONT, cluster["front"]), timeout=30,
                                                      source_address=(client, 0))
    ftp.af = ftp.sock.family
    ftp.file = ftp.sock.makefile("r", encoding="utf-8")
    ftp.welcome = ftp.getmultiline()
    return ftp


def node_of(ftp: ftplib.FTP) -> str:
    """Which node serves the session (STAT names the server's end of the connection)."""
    status = ftp.sendcmd("STAT")
    return next(name for name, ip in NODES.items() if f"{ip}:" in status)


def one_session_per_node(cluster, client: str) -> dict[str, ftplib.FTP]:
    """Log in through HAProxy until each node serves one session of ``client``."""
    sessions: dict[str, ftplib.FTP] = {}
    for _ in range(6):
        ftp = via_balancer(cluster, client)
        ftp.login(ACCOUNT.user, ACCOUNT.password)
        name = node_of(ftp)
        if name in sessions:
            ftp.quit()
        else:
            sessions[name] = ftp
        if len(sessions) == len(NODES):
            return sessions
    raise AssertionError(f"HAProxy did not spread sessions over both nodes: {sessions}")


def quit_all(sessions) -> None:
    for ftp in sessions:
        try:
            ftp.quit()
        except (OSError, EOFError, ftplib.Error):
            ftp.close()


def test_real_client_address_in_both_nodes_logs_and_data_through_the_balancer(cluster,
                                                                               area):
    """PASV and EPSV data connections go through HAProxy to the node that announced the
    port, with a PROXY header of their own."""
    sessions = one_session_per_node(cluster, "127.0.0.21")
    for name, ftp in sessions.items():
        ftp.storbinary(f"STOR {area}-{name}.txt", io.BytesIO(name.encode()))  # PASV
        assert get(ftp, f"{area}-{name}.txt") == name.encode()
        ftp.af = socket.AF_INET6  # ftplib sends EPSV on IPv6 only: make it
        assert get(ftp, f"{area}-{name}.txt") == name.encode()
        ftp.af = socket.AF_INET
    quit_all(sessions.values())
    for proc in cluster["nodes"].values():
        assert "user=alice ip=127.0.0.21" in proc.log_text()


def test_per_ip_limit_counts_across_nodes(cluster):
    """max_connections_per_ip = 2 on each node: one session on each, the third is refused
    by whichever node gets it; another client is not affected."""
    sessions = one_session_per_node(cluster, "127.0.0.22")
    third = via_balancer(cluster, "127.0.0.22")
    assert third.welcome.startswith("421") and "same IP" in third.welcome
    third.close()
    other = via_balancer(cluster, "127.0.0.23")
    assert other.welcome.startswith("220")
    quit_all([*sessions.values(), other])


def direct(proc: ServerProcess, client: str) -> ftplib.FTP:
    """Straight to one node, as HAProxy would connect (from its address, with a header)."""
    return proxied_ftp(proc, v2_header(client), client)


def test_ban_on_one_node_refuses_on_the_other_and_survives_a_restart(cluster):
    a, b = cluster["nodes"]["a"], cluster["nodes"]["b"]
    waiting = direct(b, "127.0.0.31")  # connected to b before the ban, not logged in
    for _ in range(2):
        ftp = direct(a, "127.0.0.31")
        # The failure that earns the ban may see the session kicked (421, or a reset)
        # before its delayed 530, as on a single server.
        with pytest.raises((ftplib.error_perm, ftplib.error_temp, ConnectionResetError,
                            EOFError)):
            ftp.login(ACCOUNT.user, "wrong")
        ftp.close()
    # b asks Redis: the ban is there from the failure that earned it, or, earned by a's own
    # count (a failure a counted alone), once a published it, within a heartbeat
    # (b0404a8). The 3 s before a 530, gone from the tests' servers, used to cover that.
    with redis.Redis(port=cluster["redis"].port) as shared:
        wait_until(lambda: shared.exists("cosftp:ban:127.0.0.31"), what="the ban in Redis")
    refused = direct(b, "127.0.0.31")
    assert refused.welcome.startswith("421") and "failed logins" in refused.welcome
    refused.close()
    assert waiting.getline().startswith("421")  # b's tick closed it: no more guessing
    waiting.close()
    b.stop()
    b.start()
    again = via_balancer(cluster, "127.0.0.31")
    assert again.welcome.startswith("421")
    again.close()
    again = direct(b, "127.0.0.31")
    assert again.welcome.startswith("421")
    again.close()


def test_counts_of_a_killed_node_expire(cluster):
    """A node that dies (SIGKILL, no goodbye) leaves no connection counted in Redis."""
    a, b = cluster["nodes"]["a"], cluster["nodes"]["b"]
    held = [direct(a, "127.0.0.24"), direct(a, "127.0.0.24")]
    refused = direct(b, "127.0.0.24")
    assert refused.welcome.startswith("421")
    refused.close()
    master = psutil.Process(a.proc.pid)
    for proc in [*master.children(recursive=True), master]:
        proc.send_signal(signal.SIGKILL)
    a.proc.wait(30)
    for ftp in held:
        ftp.close()

    def admitted() -> bool:
        ftp = direct(b, "127.0.0.24")
        ftp.close()
        return ftp.welcome.startswith("220")
    wait_until(admitted, timeout=40, interval=1, what="node a's counts to expire")
    a.start()


def test_upload_parked_on_one_node_resumes_on_the_other_and_a_stop_loses_nothing(
        cluster, cos, area):
    """Node a stops mid-upload (426, parked in COS); the client resumes through node b;
    b's own session, open meanwhile, never notices."""
    a, b = cluster["nodes"]["a"], cluster["nodes"]["b"]
    data = os.urandom(5 * MIB + 7)
    bystander = direct(b, "127.0.0.25")
    bystander.login(ACCOUNT.user, ACCOUNT.password)
    assert a.ctl("reload").returncode == 0  # node a drains its workers: b is not involved
    uploader = direct(a, "127.0.0.25")
    uploader.login(ACCOUNT.user, ACCOUNT.password)
    break_upload(uploader, cos, area, data[:3 * MIB], 2)
    a.stop()
    ftp = via_balancer(cluster, "127.0.0.25")  # HAProxy sends it to b: a is down
    ftp.login(ACCOUNT.user, ACCOUNT.password)
    assert node_of(ftp) == "b"
    offset = ftp.size(area)
    assert offset >= 2 * MIB
    assert rest_stor(ftp, area, offset, data[offset:]).startswith("226")
    assert get(bystander, area) == data
    assert "resuming parked upload" in b.log_text()
    quit_all([ftp, bystander])
    a.start()


class LoneNode(ClusterNode):
    """One node, direct clients (no PROXY protocol), Redis possibly absent."""

    redis_down = "open"
    # milliseconds; well above what a loaded test machine takes (at 200 ms, heartbeats timed
    # out under load and the node served on its own for 5 s: the shared limits went unseen)
    redis_timeout = 2000
    # seconds; the server's default. A test of an outage sets OUTAGE_CHECKS: it would only
    # wait longer for each check whether Redis serves again.
    redis_check_interval = 5

    def write_config(self) -> None:
        super().write_config()
        with open(self.config_path, "a", encoding="utf-8") as handle:
            handle.write(f"redis_down = {self.redis_down}\n"
                         f"redis_timeout = {self.redis_timeout}\n"
                         f"redis_check_interval = {self.redis_check_interval}\n")

    def _serving(self) -> bool:
        """Answering at all, a refusal (redis_down = closed) too."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"server exited early: {self.output()}")
        if not self.listening():
            return False
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as sock:
                return sock.recv(3) in (b"220", b"421")
        except OSError:
            return False


# redis_check_interval of the nodes whose test makes Redis unreachable or refuse writes.
OUTAGE_CHECKS = 1


def lone_node(emulator, tmp_path, redis_port: int, redis_down: str) -> LoneNode:
    proc = LoneNode(str(tmp_path / redis_down), emulator.port, [ACCOUNT])
    proc.redis_port, proc.name, proc.redis_down = redis_port, "lone", redis_down
    proc.redis_check_interval = OUTAGE_CHECKS
    return proc


def test_redis_unreachable_fail_open_serves_and_says_so(emulator, tmp_path):
    redis_port = closed_port()  # nothing listens there until start_redis
    with lone_node(emulator, tmp_path, redis_port, "open") as proc:
        ftp = proc.login(ACCOUNT.user, ACCOUNT.password)
        outage = f"Redis at redis://127.0.0.1:{redis_port}/0 unreachable"
        wait_until(lambda: outage in proc.log_text(), what="the outage in the log")
        assert "serving on this node's own scoreboard" in proc.log_text()
        wait_until(lambda: "Redis UNREACHABLE" in proc.ctl("status").stdout,
                   what="the outage in status")
        assert "serving on the local scoreboard" in proc.ctl("status").stdout
        redis = start_redis(tmp_path, redis_port)
        try:
            wait_until(lambda: "Redis reachable" in proc.ctl("status").stdout, timeout=30,
                       what="status to see Redis back")
            assert "reachable again" in proc.log_text()
            assert ftp.pwd() == "/"  # the session lived through it
        finally:
            ftp.close()
            redis.stop()


def test_redis_unreachable_fail_closed_refuses_new_connections(emulator, tmp_path):
    with lone_node(emulator, tmp_path, closed_port(), "closed") as proc:
        with pytest.raises(ftplib.error_temp, match="shared state unreachable"):
            proc.login(ACCOUNT.user, ACCOUNT.password)
        assert "refusing new connections (redis_down = closed)" in proc.log_text()
        assert "refusing new connections" in proc.ctl("status").stdout


def test_logged_in_limit_counts_across_nodes(emulator, tmp_path):
    """max_connection_num = 1 on each of two nodes sharing Redis: one user logged in on
    the first leaves no place on the second until they leave."""
    redis = start_redis(tmp_path)
    redis_port = redis.port
    nodes = []
    try:
        for name in ("one", "two"):
            proc = LoneNode(str(tmp_path / name), emulator.port, [ACCOUNT],
                            optional={"max_connection_num": "1"})
            proc.redis_port, proc.name = redis_port, name
            nodes.append(proc.start())
        first = nodes[0].login(ACCOUNT.user, ACCOUNT.password)
        with pytest.raises(ftplib.error_temp, match="421"):
            nodes[1].login(ACCOUNT.user, ACCOUNT.password)
        first.quit()
        wait_until(lambda: _logs_in(nodes[1]), what="the place to be free again")
    finally:
        for proc in nodes:
            proc.stop()
        redis.stop()


def _logs_in(proc: ServerProcess) -> bool:
    try:
        proc.login(ACCOUNT.user, ACCOUNT.password).quit()
        return True
    except ftplib.error_temp:
        return False


def test_a_worker_hung_holding_the_session_table_stops_no_other_heartbeat(emulator, tmp_path):
    """As test_master's hung worker, on a cluster node: the other worker's tick, which
    publishes the node's counts to Redis, must not wait for the held table either, or the
    master would abort the healthy worker and its client with it."""
    redis = start_redis(tmp_path)
    redis_port = redis.port
    proc = LoneNode(str(tmp_path / "node"), emulator.port, [ACCOUNT],
                    optional={"worker_timeout": "2", "health_check_interval": "1",
                              **TWO_WORKERS})
    proc.redis_port, proc.name = redis_port, "held"

    def heartbeat(pid: int) -> float:
        return next((w.heartbeat for w in state_of(proc).workers() if w.pid == pid), 0.0)
    try:
        proc.start()
        wait_until(lambda: serving(proc, 1, 2), what="workers serving")
        sessions = one_session_per_worker(proc, lambda p: p.login(ACCOUNT.user,
                                                                  ACCOUNT.password))
        with state_file_locked(proc):
            # The worker that accepts this connection blocks admitting it, before the 220.
            victim = socket.create_connection((proc.host, proc.port), timeout=30)
            aborted = r"\(pid (\d+)\) sent no heartbeat for \d+s \(worker_timeout=2\); sent "
            wait_until(lambda: re.search(aborted, proc.log_text()), timeout=30,
                       what="hung worker aborted")
            hung = int(re.search(aborted, proc.log_text()).group(1))
            survivor_pid = next(pid for pid in sessions if pid != hung)
            for _ in range(2):  # two beats while the table is still held
                beat = heartbeat(survivor_pid)
                wait_until(lambda since=beat: heartbeat(survivor_pid) > since, timeout=10,
                           what="the other worker's heartbeat")
            assert sessions[survivor_pid].voidcmd("NOOP").startswith("200")
        victim.close()
        assert sessions[survivor_pid].pwd() == "/"
        assert f"(pid {survivor_pid}) sent no heartbeat" not in proc.log_text()
        sessions[survivor_pid].quit()
    finally:
        proc.stop()
        redis.stop()
