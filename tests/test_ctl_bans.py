"""``cosftpctl bans`` and ``unban`` as commands: what they read of the configuration file,
and what they print of what Redis answers. What they do to bans is in test_bans (this node)
and test_cluster_redis / test_redis_refusals (the cluster)."""

from __future__ import annotations

import re
import time

import redis

from cosftp_prefork.config.model import ClusterConfig
from cosftp_prefork.server.cluster import ClusterAdmin

from .server_proc import Account, ServerProcess, wait_until
from .test_cluster import ACCOUNT as CLUSTER_ACCOUNT
from .test_cluster import LoneNode, start_redis
from .test_cluster_ban_order import held_by_node
from .test_cluster_redis import BANS, RedisUnderTest, earn_ban

ACCOUNT = Account("alice", "alice-pw", "alpha-1250000000")
# A key under the bans' prefix whose name is no address: anyone who may write to the
# cluster's Redis can plant one. Its name carries a terminal's escape sequences (clear the
# screen, set the window title) and a right-to-left override.
PLANTED = "cosftp:ban:\x1b[2J\x1b]0;owned\x07\u202e"


def stopped_node(tmp_path, redis_port: int, cluster: str = "",
                 name: str = "node") -> ServerProcess:
    """The configuration of a node of the cluster whose Redis listens on ``redis_port``
    (``cluster``: more [CLUSTER] lines), written in ``tmp_path / name``; no server runs:
    ``bans`` and ``unban`` read the bans it saved, and Redis's."""
    proc = ServerProcess(str(tmp_path / name), 1, [ACCOUNT])
    proc.write_config()
    with open(proc.config_path, "a", encoding="utf-8") as handle:
        handle.write(f"\n[CLUSTER]\nredis_url = redis://127.0.0.1:{redis_port}/0\n{cluster}")
    return proc


def test_what_redis_answers_is_printed_escaped(tmp_path):
    """A Redis that answers the scripts' EVALSHA with an error quoting the call (here: the
    command renamed away, which Redis answers ``unknown command 'EVALSHA', with args
    beginning with: ...``, the keys included) writes the name of a key it holds to
    cosftpctl's stderr. Found: written raw, escape sequences and all, to the operator's
    terminal. Now escaped as the log escapes what clients send (``\\x1b``)."""
    server = start_redis(tmp_path, 0, "--rename-command", "EVALSHA", "")
    direct = redis.Redis(port=server.port, decode_responses=True)
    try:
        direct.set(PLANTED, "1", px=300_000)
        proc = stopped_node(tmp_path, server.port)
        # (unban --all's first call takes its number in Redis's order: its arguments hold
        # no key of the bans, so only bans quotes the planted one)
        for args, words, quoted in ((("bans",), "the cluster's bans are not listed", True),
                                    (("unban", "--all"), "the cluster's ban(s) NOT lifted",
                                     False)):
            done = proc.ctl(*args)
            assert words in done.stderr, done.stderr
            assert "unknown command 'EVALSHA'" in done.stderr, done.stderr
            assert not quoted or "cosftp:ban:\\x1b[2J" in done.stderr, done.stderr
            assert not {"\x1b", "\x07", "\u202e"} & set(done.stdout + done.stderr), \
                done.stderr
            assert done.returncode in (1, 3), done.stderr
    finally:
        direct.close()
        server.stop()


def test_bans_and_unban_do_not_need_the_accounts_to_be_valid(tmp_path):
    """bans and unban read where the server is, the options of the bans and [CLUSTER]
    (locate.locate_bans), not the accounts: with 5,000 of them the whole file took
    0.75 s of CPU to validate, and a ban must be liftable while an account is being
    edited. Found: both refused such a file (`configuration error: ... [COS_ACCOUNT_late]
    ...`, exit 2). An option they read that cannot be used is refused as before, in
    load_config's words (the section, the option, the problem)."""
    server = start_redis(tmp_path)
    direct = redis.Redis(port=server.port, decode_responses=True)
    try:
        direct.set("cosftp:ban:192.0.2.7", "1", px=300_000)
        direct.set("cosftp:fail:192.0.2.7", "2", px=300_000)
        proc = stopped_node(tmp_path, server.port)
        with open(proc.config_path, "a", encoding="utf-8") as handle:
            handle.write("\n[COS_ACCOUNT_late]\nauthority = X\n")
        assert "[COS_ACCOUNT_late]" in proc.ctl("check").stderr
        listed = proc.ctl("bans")
        assert re.search(r"^192\.0\.2\.7 +2 .* cluster$", listed.stdout, re.M), listed.stdout
        assert listed.returncode == 3, listed.stderr  # (not running: the saved bans)
        lifted = proc.ctl("unban", "192.0.2.7")
        assert "192.0.2.7: ban lifted in the cluster; 2 failed login(s) forgotten" in \
            lifted.stdout, lifted.stdout + lifted.stderr
        assert lifted.returncode == 0, lifted.stderr
        assert not direct.exists("cosftp:ban:192.0.2.7", "cosftp:fail:192.0.2.7")

        bad = stopped_node(tmp_path, server.port, "redis_timeout = 0\n", name="bad")
        refused = bad.ctl("check").stderr
        assert refused == f"cosftpctl: configuration error: {bad.config_path} [CLUSTER] " \
                          f"redis_timeout: must be between 1 and 10000, got 0\n", refused
        for args in (("bans",), ("unban", "192.0.2.7"), ("unban", "--all")):
            done = bad.ctl(*args)
            assert (done.returncode, done.stdout, done.stderr) == (2, "", refused)
    finally:
        direct.close()
        server.stop()


def test_bans_says_which_bans_are_the_nodes_own_and_which_are_copies(emulator, tmp_path):
    """A node holds the bans it earned or made itself and copies of those made on other
    nodes (they give way first in a full table, and a node's own restored from its bans
    file are the ones it publishes again). Found: ``bans`` said ``node`` for both, running
    or stopped. Now a column says whose: ``own``, ``copy``, or ``-`` where the node holds
    none (the cluster's only)."""
    server = RedisUnderTest(tmp_path)
    proc = LoneNode(str(tmp_path / "node"), emulator.port, [CLUSTER_ACCOUNT],
                    optional={"worker_processes": "1", **BANS})
    proc.redis_port, proc.name = server.proxy.port, "whose"
    own, copy, elsewhere = "127.0.0.201", "127.0.0.202", "192.0.2.9"
    try:
        proc.start()
        earn_ban(proc, own)
        admin = ClusterAdmin(ClusterConfig(f"redis://127.0.0.1:{server.port}/0"))
        try:
            admin.ban(copy, int(time.time()) + 600, 600)
        finally:
            admin.close()
        wait_until(lambda: held_by_node(proc, copy), timeout=10, what="the node to hold it")
        server.direct.set(f"cosftp:fail:{elsewhere}", "1", px=300_000)
        for where in ("running", "stopped"):
            listed = proc.ctl("bans").stdout
            assert re.search(r"^ADDRESS .* WHOSE  WHERE$", listed, re.M), listed
            node = "node" if where == "running" else "saved"
            assert re.search(rf"^{re.escape(own)} .* own +cluster,{node}$", listed, re.M), \
                (where, listed)
            assert re.search(rf"^{re.escape(copy)} .* copy +cluster,{node}$", listed, re.M), \
                (where, listed)
            assert re.search(rf"^{re.escape(elsewhere)} .* - +cluster$", listed, re.M), \
                (where, listed)
            proc.stop()  # (then what its bans file says)
    finally:
        proc.stop()
        server.stop()
