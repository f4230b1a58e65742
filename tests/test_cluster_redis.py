"""The cluster's shared state on every Redis it supports (6.0 and newer): two nodes
sharing bans and counts on a real ``redis-server`` (7.x here) seen through
``tests/redis6.py``, which answers as Redis 6.0.16 does (Debian 11, Ubuntu 22.04), through
a Redis that is down, restarted or holds garbage in our keys. Clients connect straight to
the nodes, each from an address of its own (127.0.0.x). test_cluster_redis_outages.py:
what else Redis does to the shared state; test_cluster_redis_counts.py: the counts and
quota reservations kept there."""

from __future__ import annotations

import ftplib
import re
import threading

import pytest
import redis

from .admin_client import RW_TOKEN, AdminClient, admin_url, hash_token
from .redis6 import Redis6Proxy
from .server_proc import FREE_PORT, Account, wait_until
from .test_cluster import ACCOUNT, OUTAGE_CHECKS, Daemon, LoneNode, start_redis

BANS = {"max_login_failures": "2", "ban_time": "600"}
LOGIN_ERRORS = (ftplib.error_perm, ftplib.error_temp, ConnectionResetError, EOFError)


class RedisUnderTest:
    """A real redis-server, the Redis 6 proxy in front of it, and the test's own client
    straight to the server (to see and plant what the nodes find)."""

    def __init__(self, tmp_path, version: str = "6.0.16") -> None:
        self.tmp_path, self.port, self.runs = tmp_path, 0, 0
        self.server = self._start()
        self.port = self.server.port
        self.proxy = Redis6Proxy(self.port, version)
        self.direct = redis.Redis(port=self.port, decode_responses=True)

    @property
    def run_dir(self):
        """The directory of the running server: its log, and its dump if it saved one."""
        return self.tmp_path / f"run-{self.runs}"

    def _start(self, *options: str) -> Daemon:
        self.runs += 1  # each run logs to a file of its own: readiness is read from it
        self.run_dir.mkdir()
        return start_redis(self.run_dir, self.port, *options)

    def restart(self, *options: str) -> None:
        """Stop and start again on the same port, with ``options`` (redis-server's): every
        key and script is gone, unless ``options`` load a dump."""
        self.server.stop()
        self.server = self._start(*options)

    def stop(self) -> None:
        self.proxy.stop()
        self.direct.close()
        self.server.stop()


def as_redis_6(proxy: Redis6Proxy) -> None:
    """The fake refuses what Redis 6.0 refuses (else the tests below prove nothing)."""
    client = redis.Redis(port=proxy.port, decode_responses=True)
    try:
        assert client.info("server")["redis_version"] == proxy.version
        with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'expire'"):
            client.expire("cosftp:probe", 10, nx=True)
        pipe = client.pipeline()
        pipe.incr("cosftp:probe")
        pipe.expire("cosftp:probe", 10, nx=True)
        with pytest.raises(redis.ResponseError):
            pipe.execute()
        with pytest.raises(redis.ResponseError, match="syntax error"):
            client.set("cosftp:probe", "1", nx=True, get=True)
        with pytest.raises(redis.ResponseError, match="Wrong number of args"):
            client.eval("return redis.call('EXPIRE', KEYS[1], 10, 'NX')", 1, "cosftp:probe")
        client.set("cosftp:probe-text", "text")
        with pytest.raises(redis.ResponseError,
                           match=r"^Error running script .*: @user_script: 1: -WRONGTYPE"):
            client.eval("return redis.call('LPUSH', KEYS[1], 'x')", 1, "cosftp:probe-text")
        client.delete("cosftp:probe-text")
    finally:
        client.close()


@pytest.fixture(scope="module")
def redis6(tmp_path_factory):
    server = RedisUnderTest(tmp_path_factory.mktemp("redis6"))
    try:
        as_redis_6(server.proxy)
        yield server
    finally:
        server.stop()


def node(emulator, tmp, name: str, redis_port: int, redis_down: str = "open",
         redis_timeout: int = LoneNode.redis_timeout,
         redis_check_interval: int = OUTAGE_CHECKS, **optional: str) -> LoneNode:
    proc = LoneNode(str(tmp / name), emulator.port, [ACCOUNT], optional=optional)
    proc.redis_port, proc.name = redis_port, name
    proc.redis_down, proc.redis_timeout = redis_down, redis_timeout
    proc.redis_check_interval = redis_check_interval
    return proc


@pytest.fixture(scope="module")
def pair(emulator, redis6, tmp_path_factory):
    """Two nodes sharing the Redis 6, two failed logins earning a ban; each with the admin
    API (token ``RW_TOKEN``)."""
    tmp = tmp_path_factory.mktemp("pair")
    tokens = f"\n[ADMIN]\ntokens = ops:{hash_token(RW_TOKEN)}:rw\n"
    nodes = {}
    try:
        for name in ("a", "b"):
            proc = node(emulator, tmp, name, redis6.proxy.port, **BANS)
            proc.network["admin_port"], proc.sections = FREE_PORT, tokens
            nodes[name] = proc.start()
        yield nodes
    finally:
        for proc in nodes.values():
            proc.stop()


def connect(proc: LoneNode, client: str) -> ftplib.FTP:
    """A session from ``client``; a refusal at connect raises ``error_temp`` (421)."""
    ftp = ftplib.FTP(encoding="utf-8", source_address=(client, 0), timeout=30)
    ftp.connect(proc.host, proc.port)
    return ftp


def logs_in(proc: LoneNode, client: str, account: Account = ACCOUNT) -> str:
    """Log in from ``client`` and out; the reply to PASS (or the refusal)."""
    try:
        ftp = connect(proc, client)
        reply = ftp.login(account.user, account.password)
        ftp.quit()
        return reply
    except ftplib.Error as exc:
        return str(exc)


def earn_ban(proc: LoneNode, client: str, failures: int = 2) -> None:
    for _ in range(failures):
        ftp = connect(proc, client)
        # The failure that earns the ban may see the session closed (421, or a reset)
        # before its delayed 530.
        with pytest.raises(LOGIN_ERRORS):
            ftp.login(ACCOUNT.user, "wrong")
        ftp.close()


def refused_as_banned(proc: LoneNode, client: str) -> bool:
    try:
        connect(proc, client).close()
    except ftplib.error_temp as exc:
        return "failed logins" in str(exc)
    return False


def status(proc: LoneNode) -> str:
    return proc.ctl("status").stdout


def two_checks_later(server: RedisUnderTest) -> None:
    """Return once the node has checked twice more whether Redis writes again (each check
    asks its version through the proxy): an outage is logged once, not at each check."""
    checks = server.proxy.names["info"]
    wait_until(lambda: server.proxy.names["info"] >= checks + 2, timeout=30,
               what="two checks whether Redis writes again")


def nothing_crashed(proc: LoneNode) -> None:
    log = proc.log_text()
    assert "Traceback" not in log and "exited unexpectedly" not in log


def test_a_ban_earned_through_one_node_is_enforced_by_the_other_on_redis_6(pair):
    """Found: the failed login's EXPIRE ... NX failed the whole MULTI on Redis 6, the worker
    took it for an outage, and no cluster ban was ever made."""
    a, b = pair["a"], pair["b"]
    waiting = connect(b, "127.0.0.61")  # connected to b before the ban, not logged in
    earn_ban(a, "127.0.0.61")
    assert refused_as_banned(b, "127.0.0.61")
    assert waiting.getline().startswith("421")  # b's tick closed it: no more guessing
    waiting.close()
    assert logs_in(b, "127.0.0.62").startswith("230")
    for proc in (a, b):
        assert "Redis reachable" in status(proc)
        assert "unreachable" not in proc.log_text()
        nothing_crashed(proc)


def test_unban_on_one_node_lets_the_address_into_the_other(pair, redis6):
    """A ban node b made by itself (its own table and Redis): `cosftpctl unban` on node a
    lifts it on a at once and on b within its workers' next heartbeat; `--all` too."""
    a, b = pair["a"], pair["b"]
    earn_ban(b, "127.0.0.81")
    assert refused_as_banned(a, "127.0.0.81") and refused_as_banned(b, "127.0.0.81")
    listed = a.ctl("bans").stdout
    # (Redis drops the failure count when the ban starts; node a, which refused the address
    # for it, holds the ban too.)
    assert re.search(r"^127\.0\.0\.81 +0 .* cluster,node$", listed, re.M), listed
    result = a.ctl("unban", "127.0.0.81")
    assert (result.returncode, result.stdout) == (0, "cosftpctl: 127.0.0.81: ban lifted on "
                                                     "this node and in the cluster\n"), \
        result.stderr
    assert logs_in(a, "127.0.0.81").startswith("230")
    wait_until(lambda: logs_in(b, "127.0.0.81").startswith("230"), timeout=10,
               what="node b to forget its own ban")
    assert "cluster: 127.0.0.81 unbanned (cosftpctl unban on a node): this node forgot its " \
           "ban" in b.log_text()
    assert not redis6.direct.exists("cosftp:ban:127.0.0.81", "cosftp:fail:127.0.0.81")
    earn_ban(a, "127.0.0.82")
    earn_ban(b, "127.0.0.83")
    in_redis = len(redis6.direct.keys("cosftp:ban:*"))  # the module's earlier tests' too
    result = b.ctl("unban", "--all")
    assert result.returncode == 0, result.stderr
    # (on b: its own, and those of the module's earlier tests it refused an address for)
    assert re.search(rf"lifted \d+ ban\(s\) on this node, {in_redis} ban\(s\) in the "
                     rf"cluster", result.stdout), result.stdout
    assert not redis6.direct.keys("cosftp:ban:*")
    for proc in (a, b):
        for client in ("127.0.0.82", "127.0.0.83"):
            wait_until(lambda proc=proc, client=client: logs_in(proc, client).startswith("230"),
                       timeout=10, what=f"{client} let into {proc.name}")
    assert "127.0.0.8" not in a.ctl("bans").stdout
    for proc in (a, b):
        nothing_crashed(proc)


def test_a_ban_made_through_one_nodes_admin_api_refuses_the_address_on_the_other(
        pair, redis6):
    """Found: ``POST /bans`` banned the address in its node's own table only; the other
    nodes let it in (and guess passwords) for all of the ban. Now the node's workers
    publish it within a heartbeat, and the other node refuses it at connect, then holds it
    in its own table too."""
    a, b = pair["a"], pair["b"]
    assert logs_in(b, "127.0.0.91").startswith("230")
    made = AdminClient(admin_url(a)).call("POST", "/bans", json={"address": "127.0.0.91"})
    assert made.status_code == 201, made.text
    wait_until(lambda: redis6.direct.exists("cosftp:ban:127.0.0.91"), timeout=10,
               what="node a to publish the ban")
    assert 590 <= redis6.direct.ttl("cosftp:ban:127.0.0.91") <= 600
    assert refused_as_banned(b, "127.0.0.91")
    wait_until(lambda: re.search(r"^127\.0\.0\.91 .* cluster,node$", b.ctl("bans").stdout,
                                 re.M), timeout=10, what="node b to hold the ban")
    for proc in (a, b):
        nothing_crashed(proc)


def test_a_ban_longer_than_ban_time_made_through_the_admin_api_is_lifted_on_every_node(
        pair, redis6):
    """An hour's ban (ban_time 600 s) made through node a's admin API, held by node b too,
    lifted through a's API. Found: b judged the unban older than the ban by the ban's end
    less ban_time (what a ban earned by failed logins lasts), kept its copy and refused the
    address for the rest of the hour."""
    a, b = pair["a"], pair["b"]
    api = AdminClient(admin_url(a))
    made = api.call("POST", "/bans", json={"address": "127.0.0.92", "seconds": 3600})
    assert made.status_code == 201, made.text
    wait_until(lambda: re.search(r"^127\.0\.0\.92 .* cluster,node$", b.ctl("bans").stdout,
                                 re.M), timeout=10, what="node b to hold the ban")
    lifted = api.call("DELETE", "/bans/127.0.0.92")
    assert lifted.json()["message"] == "ban lifted on this node and in the cluster"
    assert logs_in(a, "127.0.0.92").startswith("230")
    wait_until(lambda: logs_in(b, "127.0.0.92").startswith("230"), timeout=10,
               what="node b to forget its copy of the ban")
    assert not redis6.direct.exists("cosftp:ban:127.0.0.92")
    for proc in (a, b):
        nothing_crashed(proc)


def test_wrong_passwords_do_not_refuse_legitimate_logins_with_redis_down_closed(
        emulator, redis6, tmp_path):
    """The issue's measurement: one wrong password a second from an attacker with no account
    made 99 of 112 legitimate logins answer 421 (each failure read as an outage, and
    redis_down = closed refused everyone for 5 s). Now: no legitimate login is refused, and
    the failures are counted in Redis."""
    attackers = [f"127.0.0.{100 + i}" for i in range(12)]  # one address per guess: no ban
    attacked = threading.Event()
    with node(emulator, tmp_path, "closed", redis6.proxy.port, "closed") as proc:
        def guess(addresses: list[str]) -> None:
            for address in addresses:
                try:
                    connect(proc, address).login("mallory", "guess")
                except (*LOGIN_ERRORS, OSError):
                    pass

        def attack() -> None:  # three guessers, each waiting for its 530: ~1 guess a second
            guessers = [threading.Thread(target=guess, args=(attackers[i::3],))
                        for i in range(3)]
            for thread in guessers:
                thread.start()
            for thread in guessers:
                thread.join()
            attacked.set()
        attacker = threading.Thread(target=attack)
        attacker.start()
        replies = []
        while not attacked.is_set() or len(replies) < 10:
            replies.append(logs_in(proc, "127.0.0.21"))
        attacker.join()
        refused = [reply for reply in replies if not reply.startswith("230")]
        assert not refused, f"{len(refused)} of {len(replies)} logins refused: {refused[:3]}"
        counted = [ip for ip in attackers if redis6.direct.get(f"cosftp:fail:{ip}") == "1"]
        assert len(counted) == len(attackers)
        assert "Redis reachable" in status(proc)
        nothing_crashed(proc)


def test_garbage_in_our_keys_is_replaced_and_sharing_goes_on(pair, redis6):
    """Keys under cosftp: of another type or holding no count: logins go on, the key is
    deleted and written anew (the log names its class), bans are shared."""
    a, b = pair["a"], pair["b"]
    direct = redis6.direct
    # In one transaction: a heartbeat between the DEL and the RPUSH writes the hash again
    # (found: WRONGTYPE, now and then).
    replaced = direct.pipeline()
    replaced.delete("cosftp:nodes", "cosftp:conn:node-a")
    replaced.set("cosftp:nodes", "not a sorted set")
    replaced.rpush("cosftp:conn:node-a", "not a hash")
    replaced.execute()
    direct.hset("cosftp:fail:127.0.0.63", "not", "a count")
    direct.sadd("cosftp:ban:127.0.0.63", "not a ban")
    direct.set("cosftp:ban:127.0.0.64", "a ban without expiry")
    direct.set("cosftp:fail:127.0.0.65", "many")
    direct.set("cosftp:unbans", "not a sorted set")
    direct.set("cosftp:unban-count", "not a count")
    assert logs_in(b, "127.0.0.64").startswith("230")  # no ban: the key was not ours
    earn_ban(a, "127.0.0.63")
    assert refused_as_banned(b, "127.0.0.63")
    earn_ban(b, "127.0.0.65")
    assert refused_as_banned(a, "127.0.0.65")
    wait_until(lambda: direct.type("cosftp:nodes") == "zset", what="the nodes rewritten")
    for proc in (a, b):
        wait_until(lambda proc=proc: "Redis reachable" in status(proc), what="status")
        assert "unreachable" not in proc.log_text()
        nothing_crashed(proc)
    log = a.log_text() + b.log_text()
    for key_class in ("cosftp:nodes", "cosftp:conn:*", "cosftp:fail:*", "cosftp:ban:*",
                      "cosftp:unbans", "cosftp:unban-count"):
        assert f"{key_class} held what this server does not write there" in log
    assert "cosftp:ban:127.0.0.64" not in log and "not a hash" not in log


def test_redis_restarted_mid_session(pair, redis6):
    """Scripts flushed (NOSCRIPT), then Redis restarted (keys and scripts gone): sessions
    go on, bans are made and shared again, status says reachable."""
    a, b = pair["a"], pair["b"]
    session = connect(a, "127.0.0.66")
    session.login(ACCOUNT.user, ACCOUNT.password)
    redis6.direct.script_flush()
    earn_ban(a, "127.0.0.67")
    assert refused_as_banned(b, "127.0.0.67")
    redis6.restart()  # every key gone (the nodes' heartbeats write theirs again at once)
    assert session.pwd() == "/"
    for proc in (a, b):
        wait_until(lambda proc=proc: logs_in(proc, "127.0.0.68").startswith("230") and
                   "Redis reachable" in status(proc), timeout=30, what="Redis back")
    # Node a made the ban by its own count too: its own table still holds it, and a
    # published it again in Redis (found: b forgot it, and let the attacker in).
    wait_until(lambda: redis6.direct.exists("cosftp:ban:127.0.0.67"),
               what="node a to publish its ban again")
    assert refused_as_banned(a, "127.0.0.67") and refused_as_banned(b, "127.0.0.67")
    earn_ban(b, "127.0.0.69")
    assert refused_as_banned(a, "127.0.0.69")
    assert session.pwd() == "/"
    session.quit()
    for proc in (a, b):
        nothing_crashed(proc)
