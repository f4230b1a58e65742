"""A cluster node on a real ``redis-server`` that answers, but cannot write now: a failed
save (MISCONF), a replica whose master is gone (MASTERDOWN), out of memory (OOM), a script
that never ends (BUSY), a restart loading its data (LOADING). Each is an outage
(``redis_down``), said once in the log, and ends by itself when Redis writes again; an
error that is not one of these (an ACL's refusal) is not."""

from __future__ import annotations

import ftplib
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cosftp_prefork.server.cluster.scripts import LIBRARY, UNBAN

from .redis_troubles import Trouble, refused, troubles
from .server_proc import wait_until
from .test_cluster import OUTAGE_CHECKS, LoneNode
from .test_cluster_redis import (
    BANS,
    RedisUnderTest,
    earn_ban,
    logs_in,
    nothing_crashed,
    refused_as_banned,
    status,
    two_checks_later,
)
from .test_commands import put
from .test_quotas import quota_account

# How a node's log says an outage began, by what status says of it.
OUTAGE_LINE = {"REFUSING WRITES": "refuses writes (", "BUSY": "unreachable (",
               "LOADING": "unreachable ("}


def troubled_node(emulator, tmp_path, trouble: Trouble, redis_down: str,
                  server: RedisUnderTest) -> tuple[LoneNode, str]:
    """A node of one worker on ``server`` (bans after two failures), its account's home
    under a quota; returns it (not started) and the account's user name."""
    user = f"q{trouble.name}{redis_down}"
    proc = LoneNode(str(tmp_path / "node"), emulator.port, [quota_account(user, "64M")],
                    optional={"worker_processes": "1", **BANS})
    proc.redis_port, proc.name, proc.redis_down = server.proxy.port, user, redis_down
    proc.redis_check_interval = OUTAGE_CHECKS
    return proc, user


@contextmanager
def in_trouble(emulator, tmp_path, trouble: Trouble, redis_down: str
               ) -> Iterator[tuple[LoneNode, RedisUnderTest, ftplib.FTP, str]]:
    """A node on a Redis of its own (``troubled_node``), started, its account logged in with
    one upload stored; then Redis put in ``trouble`` (``make``, until it answers its
    code). Yields the node, Redis, the session and the user; both stopped at the end."""
    server = RedisUnderTest(tmp_path)
    proc, user = troubled_node(emulator, tmp_path, trouble, redis_down, server)
    try:
        ftp = proc.start().login(user, f"{user}-pw")
        assert put(ftp, "one.bin", b"1" * 1000).startswith("226")
        trouble.make(server)
        wait_until(lambda: refused(server.direct, trouble.code), timeout=30,
                   what=f"Redis to answer {trouble.code}")
        yield proc, server, ftp, user
    finally:
        proc.stop()
        server.stop()


@pytest.mark.parametrize("trouble", troubles(), ids=repr)
def test_a_redis_that_cannot_write_now_is_down_and_an_open_node_serves_on_its_own(
        emulator, tmp_path, trouble):
    """redis_down = open: an upload into a home with a quota goes on against the node's own
    table (226, nothing lost), the node's own ban holds, logins are served; the log says
    it once (not per command, nor at each check while it lasts: redis_check_interval),
    status says it; when Redis writes again the node says so and shares its bans again."""
    with in_trouble(emulator, tmp_path, trouble, "open") as (proc, server, ftp, user):
        try:
            assert put(ftp, "two.bin", b"2" * 2000).startswith("226")
            wait_until(lambda: f"Redis {trouble.link}" in status(proc), timeout=30,
                       what="status")
            assert "serving on the local scoreboard" in status(proc)
            earn_ban(proc, "127.0.0.95")
            assert refused_as_banned(proc, "127.0.0.95")  # this node's own ban
            two_checks_later(server)
            assert logs_in(proc, "127.0.0.96", quota_account(user)).startswith("230")
            log = proc.log_text()
            line = OUTAGE_LINE[trouble.link]
            assert log.count(line) == 1, log
            assert "ANSWERED" not in status(proc) and "answered the" not in log
        finally:
            trouble.undo(server)
        wait_until(lambda: "Redis reachable" in status(proc), timeout=30,
                   what="the node to find Redis writing again")
        assert ("takes writes again" if trouble.link == "REFUSING WRITES" else
                "reachable again") in proc.log_text()
        earn_ban(proc, "127.0.0.97")
        assert server.direct.pttl("cosftp:ban:127.0.0.97") > 0
        assert put(ftp, "three.bin", b"3" * 3000).startswith("226")
        ftp.quit()
        nothing_crashed(proc)


@pytest.mark.parametrize("trouble", [t for t in troubles() if t.name in ("oom", "busy")],
                         ids=repr)
def test_a_redis_out_of_memory_or_busy_is_down_and_a_closed_node_refuses(emulator, tmp_path,
                                                                        trouble):
    """redis_down = closed: new connections are refused (421) and uploads a quota counts
    (451 QuotaUnavailable), as when Redis is unreachable (found: OOM and BUSY were errors
    answered, and a closed node served on its own figures, its counts gone from Redis:
    the cluster's limits no longer held); once Redis writes again, it serves."""
    with in_trouble(emulator, tmp_path, trouble, "closed") as (proc, server, ftp, user):
        try:
            wait_until(lambda: "shared state unreachable" in logs_in(proc, "127.0.0.94"),
                       timeout=30, what="new connections refused")
            # (a worker's view reaches status at its next tick: a second at most)
            wait_until(lambda: f"Redis {trouble.link}" in status(proc), what="status")
            assert "refusing new connections" in status(proc)
            with pytest.raises(ftplib.error_temp, match=r"^451 .*QuotaUnavailable"):
                put(ftp, "two.bin", b"2" * 2000)
        finally:
            trouble.undo(server)
        wait_until(lambda: logs_in(proc, "127.0.0.94", quota_account(user)).startswith("230"),
                   timeout=30, what="the node to serve again")
        assert put(ftp, "two.bin", b"2" * 2000).startswith("226")
        ftp.quit()
        nothing_crashed(proc)


def test_a_node_starts_on_a_busy_redis_and_check_only_warns(emulator, tmp_path):
    """Redis busy with a script when the node starts: BUSY refuses INFO too. Found: that
    was taken for a Redis that will not tell its version, so `cosftpctl check` failed
    (exit 2) and the worker would not start. Now it is unreachable: check warns (exit 0),
    the node starts and serves on its own (redis_down = open), and shares once the script
    ended."""
    server = RedisUnderTest(tmp_path)
    trouble = next(t for t in troubles() if t.name == "busy")
    proc, user = troubled_node(emulator, tmp_path, trouble, "open", server)
    try:
        trouble.make(server)
        try:
            wait_until(lambda: refused(server.direct, trouble.code), timeout=30,
                       what="Redis to answer BUSY")
            proc.write_config()
            checked = proc.ctl("check")
            assert checked.returncode == 0, checked.stderr
            assert "unreachable (Busy: BUSY Redis is busy running a script" in \
                checked.stdout + checked.stderr
            assert logs_in(proc.start(), "127.0.0.98", quota_account(user)).startswith("230")
            wait_until(lambda: "Redis BUSY" in status(proc), what="status")
        finally:
            trouble.undo(server)
        wait_until(lambda: "Redis reachable" in status(proc), timeout=30,
                   what="the node to find Redis back")
        nothing_crashed(proc)
    finally:
        proc.stop()
        server.stop()


# cosftpctl unban on a stopped node while Redis refuses: the trouble, the arguments, what
# stderr must say (what Redis answered; what was done, and not) and the exit status.
UNBAN_REFUSED = [
    ("misconf", ("unban", "127.0.0.5"),
     ["was not banned on this node; the cluster's ban(s) NOT lifted: Redis at ",
      "refuses writes (MISCONF "], 1),
    ("busy", ("unban", "127.0.0.5"),
     ["was not banned on this node; the cluster's ban(s) NOT lifted: Redis at ",
      "is BUSY running a script"], 1),
    # (--all takes its number first, a write Redis refuses out of memory: nothing deleted;
    # a refusal after its deletes is test_an_unban_refused_after_its_deletes_...'s)
    ("oom", ("unban", "--all"),
     ["lifted no ban; the cluster's ban(s) NOT lifted: Redis at ", "refuses writes (OOM ",
      "the other nodes still hold them until they expire or unban is run again"], 1),
]


@pytest.mark.parametrize("case", UNBAN_REFUSED, ids=lambda case: f"{case[0]}-{case[1][1]}")
def test_unban_says_what_redis_answered_and_what_it_did_and_did_not(emulator, tmp_path,
                                                                     case):
    """Found: with the cluster's ban left in Redis (MISCONF, BUSY) unban said the address
    `was not banned on this node or in the cluster`; with OOM, unban --all deleted the
    cluster's ban, then said `lifted no ban`. Now it names Redis's answer and says what
    was lifted where, and what was not."""
    name, args, said, status_expected = case
    trouble = next(t for t in troubles() if t.name == name)
    server = RedisUnderTest(tmp_path)
    proc, _ = troubled_node(emulator, tmp_path, trouble, "open", server)
    try:
        proc.write_config()
        server.direct.set("cosftp:ban:127.0.0.5", "1", px=300_000)
        server.direct.set("cosftp:fail:127.0.0.5", "2", px=300_000)
        trouble.make(server)
        try:
            wait_until(lambda: refused(server.direct, trouble.code), timeout=30,
                       what=f"Redis to answer {trouble.code}")
            done = proc.ctl(*args)
        finally:
            trouble.undo(server)
        for words in said:
            assert words in done.stderr, done.stderr
        assert done.returncode == status_expected, done.stderr
    finally:
        server.stop()


def test_an_unban_refused_after_its_deletes_says_the_ban_went_from_redis_only(emulator,
                                                                             tmp_path):
    """Redis refuses a script part way only by ACL: a refusal of its state (OOM, READONLY,
    MISCONF, NOREPLICAS) comes at its first write or never (redis-server 7.0.15 under
    maxmemory 1 ran a single-address unban whole, with or without a ban to delete: its
    DELs come first). With an ACL that lets DEL through and refuses INCR, the unban
    deleted the ban's key, then was refused its note to the nodes. Found: it said the
    cluster's ban was NOT lifted (`was not banned on this node; the cluster's ban(s) NOT
    lifted: ... answered the unban with an error`) while Redis no longer held it. Now it
    says the ban went from Redis, and that the nodes, each holding a copy, were not told."""
    server = RedisUnderTest(tmp_path)
    proc, _ = troubled_node(emulator, tmp_path, troubles()[0], "open", server)
    try:
        proc.write_config()
        server.direct.set("cosftp:ban:127.0.0.5", "1", px=300_000)
        server.direct.set("cosftp:fail:127.0.0.5", "2", px=300_000)
        server.direct.execute_command("ACL", "SETUSER", "default", "-incr")
        try:
            done = proc.ctl("unban", "127.0.0.5")
        finally:
            server.direct.execute_command("ACL", "SETUSER", "default", "+@all")
        assert not server.direct.exists("cosftp:ban:127.0.0.5", "cosftp:fail:127.0.0.5")
        assert "127.0.0.5: ban lifted in Redis; 2 failed login(s) forgotten; the other " \
               "nodes NOT told to drop their own copies: Redis at " in done.stderr, done.stderr
        assert "The user executing the script can't run this" in done.stderr, done.stderr
        assert "each holds its copy until it ends or unban is run again" in done.stderr, \
            done.stderr
        assert done.returncode == 1, done.stderr
    finally:
        server.stop()


def test_an_unban_answered_too_late_says_it_may_have_run(emulator, tmp_path):
    """Redis ran a single address's unban but its answer came after redis_timeout (held
    by the proxy after Redis answered). Found: unban said `was not banned on this node;
    the cluster's ban(s) NOT lifted: ... unreachable (TimeoutError ...)` while Redis no
    longer held the ban. Now it says the unban was sent and may have run, and how to
    tell."""
    server = RedisUnderTest(tmp_path)
    proc, _ = troubled_node(emulator, tmp_path, troubles()[0], "open", server)
    try:
        proc.write_config()
        server.direct.set("cosftp:ban:127.0.0.5", "1", px=300_000)
        held = server.proxy.hold(hashlib.sha1((LIBRARY + UNBAN).encode()).hexdigest(),
                                 reply=True)
        try:
            done = proc.ctl("unban", "127.0.0.5")
        finally:
            held.release()
        assert held.arrived.is_set()
        assert not server.direct.exists("cosftp:ban:127.0.0.5")
        assert "127.0.0.5: was not banned on this node; the cluster's ban(s) perhaps NOT " \
               "lifted: Redis at " in done.stderr, done.stderr
        assert "unreachable (TimeoutError: " in done.stderr, done.stderr
        assert "the unban was sent, its answer did not come within redis_timeout: " \
               "cosftpctl bans says whether Redis still holds the ban" in done.stderr, \
            done.stderr
        assert done.returncode == 1, done.stderr
    finally:
        server.stop()
