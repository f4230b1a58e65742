"""Bans as an operator handles them, end to end: ``cosftpctl bans`` lists them, ``unban``
lifts one (or ``--all``) at once on every worker and for good (not back after stop/start),
``ban_allowlist`` keeps an address from ever being banned, ``status`` counts bans and
connections waiting to log in. The cluster's side is in test_cluster_redis.

Clients come from their own loopback addresses (127.0.0.0/8 is all loopback on Linux)."""

from __future__ import annotations

import ftplib
import json
import os
import re
import threading
from contextlib import suppress

import pytest

from cosftp_prefork.server.scoreboard import SharedState, state_path

from .server_proc import ServerProcess
from .test_governance import OPS, close_all, connect, log_in, server


def fail_logins(proc: ServerProcess, source: str, count: int, host: str = "127.0.0.1") -> None:
    """``count`` wrong passwords from ``source`` at once (each 530 comes after 3 s); every
    failure is counted when this returns."""
    def once() -> None:
        ftp = ftplib.FTP(encoding="utf-8")
        with suppress(ftplib.Error, OSError, EOFError):
            ftp.connect(host, proc.port, timeout=20, source_address=(source, 0))
            ftp.login("ops", "wrong")
        ftp.close()
    threads = [threading.Thread(target=once) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def refused_as_banned(proc: ServerProcess, source: str) -> bool:
    try:
        connect(proc, source).close()
    except ftplib.error_temp as exc:
        return "421 Too many failed logins" in str(exc)
    return False


def session_pids(proc: ServerProcess) -> set[int]:
    """The workers holding the server's live sessions (from its shared state file)."""
    state = SharedState.open(state_path(os.path.join(proc.log_dir, "cosftp.pid")))
    assert state is not None
    try:
        return {detail.pid for detail in state.session_details()}
    finally:
        state.close()


def logged_in_on_every_worker(proc: ServerProcess, source: str) -> list[ftplib.FTP]:
    """Sessions from ``source``, held open until both workers have one (a worker ahead of
    the other by two sessions stops accepting); each must log in at its first try."""
    sessions = []
    while len(session_pids(proc)) < 2:
        assert len(sessions) < 8, "the sessions did not spread over both workers"
        sessions.append(log_in(proc, source))
    return sessions


def bans_listed(proc: ServerProcess) -> dict[str, list[str]]:
    """``cosftpctl bans``: the columns of each address's line."""
    out = proc.ctl("bans").stdout
    return {line.split()[0]: line.split() for line in out.splitlines()[1:-1]}


def test_unban_lets_the_address_in_at_once_on_every_worker(emulator, tmp_path):
    with server(emulator, tmp_path, max_login_failures="2", ban_time="600",
                worker_processes="2") as proc:
        fail_logins(proc, "127.0.0.2", 2)
        fail_logins(proc, "127.0.0.3", 1)
        listed = bans_listed(proc)
        assert listed["127.0.0.2"][1] == "2" and listed["127.0.0.2"][-1] == "node"
        assert listed["127.0.0.3"][1:3] == ["1", "-"]  # failures, not banned yet
        assert "1 banned, 1 with failed logins in the last 60s" in proc.ctl("bans").stdout
        # Each worker accepts after the ban, so each has the ban in its copy of the table.
        close_all(logged_in_on_every_worker(proc, "127.0.0.1"))
        assert refused_as_banned(proc, "127.0.0.2")
        result = proc.ctl("unban", "127.0.0.2")
        assert result.returncode == 0, result.stderr
        assert result.stdout == ("cosftpctl: 127.0.0.2: ban lifted on this node; 2 failed "
                                 "login(s) forgotten\n")
        close_all(logged_in_on_every_worker(proc, "127.0.0.2"))
        assert "127.0.0.2" not in bans_listed(proc)
        again = proc.ctl("unban", "::ffff:127.0.0.2")  # as fail2ban-client's unbanip: 0
        assert (again.returncode, again.stdout) == (0, "cosftpctl: 127.0.0.2: was not "
                                                       "banned\n")
        audit = [line for line in proc.log_text().splitlines() if "unban 127.0.0.2 by" in line]
    assert len(audit) == 2
    assert re.search(r" INFO \[\d+ cosftpctl\] \S+: unban 127.0.0.2 by uid \d+ \(\w+\): ban "
                     r"lifted on this node; 2 failed login\(s\) forgotten$", audit[0]), audit


def test_unban_all_and_the_counts_in_status(emulator, tmp_path):
    # Two workers: status counts the connections waiting to log in per worker.
    with server(emulator, tmp_path, max_login_failures="1", ban_time="600",
                worker_processes="2") as proc:
        fail_logins(proc, "127.0.0.2", 1)
        fail_logins(proc, "127.0.0.3", 1)
        waiting = [connect(proc, "127.0.0.4") for _ in range(3)]
        user = log_in(proc)
        logins = re.search(r"logins: 1 logged in, 3 waiting to log in \(worker 1: (\d), worker "
                           r"2: (\d)\); 2 address\(es\) banned on this node",
                           proc.ctl("status").stdout)
        assert logins and sum(map(int, logins.groups())) == 3
        result = proc.ctl("unban", "--all")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "cosftpctl: every address: lifted 2 ban(s) on this node; 2 " \
                                "failed login(s) forgotten\n"
        for source in ("127.0.0.2", "127.0.0.3"):
            log_in(proc, source).quit()
        assert "; 0 address(es) banned on this node" in proc.ctl("status").stdout
        close_all([*waiting, user])


def test_unban_refuses_what_is_not_one_address_and_logs_none_of_it(emulator, tmp_path):
    with server(emulator, tmp_path) as proc:
        forged = "127.0.0.2\x1b[2J\nFORGED"
        result = proc.ctl("unban", forged)
        assert result.returncode == 2
        assert result.stderr == ("cosftpctl: unban: '127.0.0.2\\x1b[2J\\nFORGED' is not an IP "
                                 "address (like 192.0.2.7 or 2001:db8::7)\n")
        network = proc.ctl("unban", "10.0.0.0/24")
        assert network.returncode == 2 and "is a network; unban takes one address (or " \
                                           "--all)" in network.stderr
        assert proc.ctl("unban").returncode == 2  # an address or --all
        log = proc.log_text()
    assert "FORGED" not in log and "\x1b" not in log and "unban" not in log


def test_an_unbanned_address_does_not_come_back_after_stop_and_start(emulator, tmp_path):
    proc = server(emulator, tmp_path, max_login_failures="1", ban_time="600")
    assert proc.start_daemon().returncode == 0
    master = proc.daemon_pid()
    try:
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            fail_logins(proc, source, 1)
        assert proc.ctl("unban", "127.0.0.2").returncode == 0
        assert proc.ctl("stop").returncode == 0
        with open(os.path.join(proc.log_dir, "cosftp.pid.bans"), encoding="ascii") as handle:
            saved = [ban["address"] for ban in json.load(handle)["bans"]]
        assert sorted(saved) == ["127.0.0.3", "127.0.0.4"]
        bans_file = os.path.join(proc.log_dir, "cosftp.pid.bans")
        os.chown(bans_file, 65534, 65534)  # a server that runs as nobody wrote it
        stopped = proc.ctl("unban", "127.0.0.3")  # the bans file of the stopped server
        assert (stopped.returncode, stopped.stdout) == (0, "cosftpctl: 127.0.0.3: ban lifted "
                                                           "from the saved bans\n")
        assert (os.stat(bans_file).st_uid, os.stat(bans_file).st_mode & 0o777) == (65534, 0o600)
        listing = proc.ctl("bans")
        assert listing.returncode == 3 and "not running" in listing.stdout
        assert re.search(r"^127\.0\.0\.4 +0 .* saved$", listing.stdout, re.M), listing.stdout
        assert "127.0.0.3" not in listing.stdout
        assert proc.start_daemon().returncode == 0
        master = proc.daemon_pid()
        for source in ("127.0.0.2", "127.0.0.3"):
            log_in(proc, source).quit()
        assert refused_as_banned(proc, "127.0.0.4")
    finally:
        proc.ensure_stopped(master)


def v6_connect(proc: ServerProcess) -> ftplib.FTP:
    ftp = ftplib.FTP(encoding="utf-8")
    ftp.connect("::1", proc.port, timeout=20, source_address=("::1", 0))
    return ftp


def test_an_allowlisted_address_is_never_banned_and_still_limited(emulator, tmp_path):
    proc = ServerProcess(str(tmp_path), emulator.port, OPS,
                         network={"listen_address": "::"},  # IPv4 clients as ::ffff:a.b.c.d
                         optional={"log_level": "INFO", "max_login_failures": "2",
                                   "ban_time": "600", "max_prelogin_connections_per_ip": "3",
                                   "ban_allowlist": "127.0.0.64/30, ::1"})
    with proc:
        fail_logins(proc, "127.0.0.65", 4)
        fail_logins(proc, "127.0.0.70", 2)
        fail_logins(proc, "::1", 3, host="::1")
        log_in(proc, "127.0.0.65").quit()
        ftp = v6_connect(proc)
        ftp.login("ops", "ops-pw")
        ftp.quit()
        assert refused_as_banned(proc, "127.0.0.70")
        assert list(bans_listed(proc)) == ["127.0.0.70"]
        held = [connect(proc, "127.0.0.65") for _ in range(3)]
        with pytest.raises(ftplib.error_temp, match="421 Too many connections from your "
                                                    "address waiting to log in"):
            connect(proc, "127.0.0.65")
        close_all(held)
        log = proc.log_text()
    assert "127.0.0.65: failed login not counted: the address is in ban_allowlist" in log
    assert "::1: failed login not counted" in log


def test_check_names_a_bad_ban_allowlist(emulator, tmp_path):
    proc = server(emulator, tmp_path, ban_allowlist="10.0.0.0/8, office")
    proc.write_config()
    result = proc.ctl("check")
    assert result.returncode == 2
    assert f"{proc.config_path} [OPTIONAL] ban_allowlist: must be a comma-separated list of " \
           f"addresses or CIDR blocks (like 10.0.0.0/8), got 'office'" in result.stderr
    proc.optional["ban_allowlist"] = "192.0.2.0/24, 0.0.0.0/0"
    proc.write_config()
    result = proc.ctl("check")
    assert result.returncode == 0
    assert "[OPTIONAL] ban_allowlist: 0.0.0.0/0 is every IPv4 address: no such client is " \
           "ever banned" in result.stderr


def test_unban_needs_to_write_the_audit_line_first(emulator, tmp_path):
    """A cosftpctl that cannot write its line to the server's log changes nothing."""
    with server(emulator, tmp_path, max_login_failures="1", ban_time="600") as proc:
        fail_logins(proc, "127.0.0.2", 1)
        log_file = os.path.join(proc.log_dir, "cosftp.log")
        os.rename(log_file, log_file + ".1")
        # A planted link: never written through. Put in place by a rename, since the server
        # may have made a new log file meanwhile (it reopens a moved one).
        os.symlink(log_file + ".1", log_file + ".link")
        os.replace(log_file + ".link", log_file)
        try:
            result = proc.ctl("unban", "127.0.0.2")
        finally:
            os.unlink(log_file)
            os.rename(log_file + ".1", log_file)
        assert result.returncode == 1
        assert "cannot write the audit line to" in result.stderr and "nothing changed" in \
            result.stderr
        assert refused_as_banned(proc, "127.0.0.2")
