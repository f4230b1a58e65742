"""What ``cosftpctl check`` and ``cosftpctl quota`` print of what the cluster's Redis says of
itself: escaped, never raw on the operator's terminal. The "Redis" here is a program on
``redis_url``'s address answering as Redis does (``tests/redis6.py`` in front of a real
redis-server) with a version holding a terminal's escape sequences: anyone who can answer on
that address (a Redis of someone else, a name that resolves elsewhere) writes that text."""

from __future__ import annotations

import re

from .redis6 import Redis6Proxy
from .server_proc import wait_until
from .test_cluster import LoneNode, start_redis
from .test_quotas import quota_account

# Sets the window title, clears the screen, then a right-to-left override.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\u202e"
RAW = {"\x1b", "\x07", "\u202e"}
SHOWN = "\\x1b]0;owned\\x07\\x1b[2J\\u202e"


def hostile_node(emulator, tmp_path, version: str) -> tuple[LoneNode, Redis6Proxy, object]:
    """A node whose [CLUSTER] Redis says it is ``version``; the node's configuration is
    written, the node not started."""
    server = start_redis(tmp_path)
    proxy = Redis6Proxy(server.port, version)
    proc = LoneNode(str(tmp_path / "node"), emulator.port,
                    [quota_account("qhostile", "1M", prefix="hostile")])
    proc.redis_port, proc.name = proxy.port, "hostile"
    proc.write_config()
    return proc, proxy, server


def printed_raw(done) -> set[str]:
    return RAW & set(done.stdout + done.stderr)


def test_check_prints_the_version_redis_gave_escaped(emulator, tmp_path):
    """A version that passes the check (it starts with 7.0) and one too old: both quoted by
    check (and the second by start), escaped. Found: check wrote them raw, to stdout
    (``cluster: Redis 7.0.15<ESC>]0;...``) and to stderr (``configuration error: ... is
    version 5.0<ESC>]0;...``)."""
    proc, proxy, server = hostile_node(emulator, tmp_path, "7.0.15" + HOSTILE)
    try:
        checked = proc.ctl("check")
        assert checked.returncode == 0, checked.stderr
        assert f"cluster: Redis 7.0.15{SHOWN} at" in checked.stdout, checked.stdout
        assert not printed_raw(checked), checked.stdout
        proxy.version = "5.0" + HOSTILE
        checked = proc.ctl("check")
        assert checked.returncode == 2, checked.stderr
        assert f"is version 5.0{SHOWN}; this server needs" in checked.stderr, checked.stderr
        assert not printed_raw(checked), checked.stderr
        started = proc.ctl("start")
        assert started.returncode == 1, started.stderr
        assert f"is version 5.0{SHOWN}; this server needs" in started.stderr, started.stderr
        assert not printed_raw(started), started.stderr
    finally:
        proc.ensure_stopped(proc.daemon_pid())
        proxy.stop()
        server.stop()


def test_quota_prints_why_the_clusters_usage_cannot_be_read_escaped(emulator, tmp_path):
    """A node serving, then its Redis answers a version too old, quoted by cosftpctl quota
    as the reason it shows the node's own table. Found: written raw to stderr."""
    proc, proxy, server = hostile_node(emulator, tmp_path, "7.0.15")
    try:
        proc.start()
        wait_until(lambda: "Redis reachable" in proc.ctl("status").stdout, timeout=30,
                   what="the node using Redis")
        proxy.version = "5.0" + HOSTILE
        shown = proc.ctl("quota", "qhostile")
        assert shown.returncode == 0, shown.stderr
        assert "the cluster's usage cannot be read" in shown.stderr, shown.stderr
        assert f"is version 5.0{SHOWN}; this server needs" in shown.stderr, shown.stderr
        assert not printed_raw(shown), shown.stderr
        assert re.search(r"^qhostile +", shown.stdout, re.M), shown.stdout
    finally:
        proc.stop()
        proxy.stop()
        server.stop()
