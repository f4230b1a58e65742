"""Reload (``cosftpctl reload``, SIGHUP) with real processes: sessions kept, broken files and
workers that cannot start refused with the master's own verdict, warnings, ports and
listen addresses changed (split from test_master.py, whose helpers it shares, so that the
two run on two xdist workers)."""

from __future__ import annotations

import ftplib
import os
import re
import signal
import socket

import pytest

from .conftest import ALPHA, _close, two_worker_daemon
from .server_proc import (
    Account,
    ServerProcess,
    closed_port,
    connection_refused,
    release_port,
    unreachable_receiver,
    wait_until,
)
from .test_auth import BAD_HASHES
from .test_commands import get, put
from .test_master import (
    MIB,
    add_unresolvable_masquerade,
    login,
    master_of,
    rewrite_config,
    serving,
    state_of,
)


@two_worker_daemon
def test_sighup_password_change_keeps_sessions(daemon, area):
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    old = login(daemon)
    rewrite_config(daemon, ftp_login_user_password="new-pw")
    done = daemon.ctl("reload")
    assert done.returncode == 0, done.stderr
    assert "generation 2" in done.stdout
    put(old, area, b"still works")
    assert get(old, area) == b"still works"
    with pytest.raises(ftplib.error_perm, match="530"):
        login(daemon, "ops-pw")
    fresh = login(daemon, "new-pw")
    assert get(fresh, area) == b"still works"
    wait_until(lambda: [w.generation for w in state_of(daemon).workers()
                        if w.state != "draining"] == [2, 2], what="generation 2 serving")
    _close(old)
    _close(fresh)
    wait_until(lambda: all(w.generation == 2 for w in state_of(daemon).workers()),
               what="old generation gone once its session ended")


def test_reload_with_broken_config_keeps_serving(daemon):
    wait_until(lambda: serving(daemon, 1, 1), what="workers serving")
    rewrite_config(daemon, authority="XYZ")
    done = daemon.ctl("reload")
    assert done.returncode != 0
    assert "authority" in done.stderr and "[COS_ACCOUNT_0]" in done.stderr
    os.kill(master_of(daemon).pid, signal.SIGHUP)  # straight to the master, too
    wait_until(lambda: "reload failed" in daemon.log_text(), what="reload failure logged")
    assert state_of(daemon).master().generation == 1
    _close(login(daemon))


def test_reload_prints_the_masters_own_verdict_on_a_broken_file(daemon):
    """``cosftpctl reload`` leaves the file to the master, which reads and refuses it: the
    command prints the master's message (file, section, option, problem), the one its log
    has, and exits 2, as for any invalid file."""
    wait_until(lambda: serving(daemon, 1, 1), what="workers serving")
    before = state_of(daemon).master().reloads
    rewrite_config(daemon, authority="XYZ")
    done = daemon.ctl("reload")
    assert done.returncode == 2, done
    logged = re.search(r"reload failed, still serving the previous configuration: (.*)",
                       daemon.log_text())
    assert logged, done
    assert "[COS_ACCOUNT_0] authority: must be one of" in logged.group(1)
    assert f"cosftpctl: configuration error: {logged.group(1)}; the server still serves " \
        "the previous configuration" in done.stderr, done
    master = state_of(daemon).master()
    assert (master.reloads, master.generation) == (before + 1, 1)


def test_reload_waits_for_the_verdict_as_long_as_told(daemon):
    """``reload --timeout``: a master that cannot answer (stopped) gives no verdict within
    it, exit 1, saying it may still run; the HUP it finds when it goes on still reloads."""
    wait_until(lambda: serving(daemon, 1, 1), what="workers serving")
    master = master_of(daemon)
    master.suspend()
    try:
        done = daemon.ctl("reload", "--timeout", "0.5")
    finally:
        master.resume()
    assert done.returncode == 1, done
    assert "no reload verdict within 0.5s; it may still be running" in done.stderr, done
    wait_until(lambda: serving(daemon, 2, 1), what="the reload the HUP asked for")


def test_reload_from_a_shell_without_the_servers_environment(emulator, tmp_path):
    """A secret the file takes from the server's environment (``${NAME}``, as systemd's
    EnvironmentFile gives it) need not be in the shell of whoever runs ``cosftpctl
    reload``: the master reads the file, with its own environment."""
    proc = ServerProcess(str(tmp_path), emulator.port,
                         [Account("ops", "ops-pw", ALPHA, secret_key="${COSFTP_TEST_SECRET}")],
                         env={**os.environ, "COSFTP_TEST_SECRET": "test-key"})
    with proc:
        rewrite_config(proc, ftp_login_user_password="new-pw")
        proc.env = {k: v for k, v in os.environ.items() if k != "COSFTP_TEST_SECRET"}
        done = proc.ctl("reload")
        assert done.returncode == 0, done
        _close(proc.login("ops", "new-pw"))


def add_to_optional(proc: ServerProcess, lines: str) -> None:
    with open(proc.config_path, encoding="utf-8") as handle:
        text = handle.read()
    with open(proc.config_path, "w", encoding="utf-8") as handle:
        handle.write(text.replace("[OPTIONAL]\n", f"[OPTIONAL]\n{lines}"))


def printed_warnings(done) -> list[str]:
    return [line[len("warning: "):] for line in done.stderr.splitlines()
            if line.startswith("warning: ")]


def test_reload_prints_the_warnings_the_master_logged_for_it(daemon):
    """A reload that changes what takes effect only at the next start (here
    ipv6_prefix_length) is applied, and the master's warning says what is kept: the
    operator running cosftpctl reload reads it there, as the log has it, not only in
    the log."""
    wait_until(lambda: serving(daemon, 1, 1), what="workers serving")
    add_to_optional(daemon, "ipv6_prefix_length = 56\n")
    done = daemon.ctl("reload")
    assert done.returncode == 0, done
    assert "cosftpctl: reloaded, generation 2" in done.stdout, done
    warned = printed_warnings(done)
    assert warned == ["reload: [OPTIONAL] ipv6_prefix_length takes effect at the next start "
                      "(stop, start: the saved bans are regrouped then); IPv6 clients are "
                      "still counted and banned by their /64"], done
    assert f"WARNING [{master_of(daemon).pid} master] cosftp_prefork.server.reload: " \
        f"{warned[0]}\n" in daemon.log_text()
    rewrite_config(daemon, ipv6_prefix_length="64")  # the running length: nothing to say
    again = daemon.ctl("reload")
    assert again.returncode == 0 and printed_warnings(again) == [], again


def test_reload_warnings_reach_the_terminal_escaped_and_bounded(daemon):
    """The warnings quote the file: an unknown option named with an escape sequence
    reaches the terminal escaped, as the log has it; 60 long ones are printed as far as
    the shared state holds them, then counted."""
    wait_until(lambda: serving(daemon, 1, 1), what="workers serving")
    hostile = "red\x1b[31mtext\u202egnp"
    long_names = [f"unknown_{i:02d}_{'x' * 200}" for i in range(60)]
    add_to_optional(daemon, f"{hostile} = 1\n" + "".join(f"{n} = 1\n" for n in long_names))
    done = daemon.ctl("reload")
    assert done.returncode == 0, done
    assert "\x1b" not in done.stderr and "\u202e" not in done.stderr, done
    warned = printed_warnings(done)
    assert warned[0] == f"config: {daemon.config_path} [OPTIONAL] red\\x1b[31mtext" \
        "\\u202egnp: unknown option, ignored", done
    shown = len(warned) - 2  # the hostile one, the count
    assert 10 < shown < 60, done
    assert warned[-1] == f"{60 - shown} more in the server's cosftp.log", done
    for warning, name in zip(warned[1:-1], long_names):
        assert warning == f"config: {daemon.config_path} [OPTIONAL] {name}: unknown " \
            "option, ignored"
        assert warning in daemon.log_text()


def test_reload_of_a_file_it_cannot_read_says_so(tmp_path):
    """cosftpctl reload reads the file to find the pid file: one it cannot read (not
    UTF-8 here; missing, or no permission) is said as load_config says it, exit 2, not
    taken for a file of defaults whose pid file leads nowhere ("not running", 3)."""
    proc = ServerProcess(str(tmp_path), closed_port(), [Account("ops", "ops-pw", ALPHA)])
    proc.write_config()
    with open(proc.config_path, "ab") as handle:
        handle.write(b"ftpd_banner = caf\xe9\n")
    done = proc.ctl("reload")
    assert done.returncode == 2, done
    assert f"cosftpctl: configuration error: {proc.config_path}: cannot read configuration " \
        "file: 'utf-8' codec can't decode byte 0xe9" in done.stderr, done


def test_reload_refuses_unusable_hashes_and_keeps_the_old_password(daemon):
    for name in ("n-not-power-of-two", "over-64-mib"):
        with open(daemon.config_path, encoding="utf-8") as handle:
            text = handle.read()
        with open(daemon.config_path, "w", encoding="utf-8") as handle:
            handle.write(text.replace("ftp_login_user_password = ops-pw",
                                      f"ftp_login_user_password = {BAD_HASHES[name]}"))
        done = daemon.ctl("reload")
        assert done.returncode != 0, name
        assert "[COS_ACCOUNT_0] ftp_login_user_password: is not a usable scrypt" in done.stderr
        with open(daemon.config_path, "w", encoding="utf-8") as handle:
            handle.write(text)
    _close(daemon.login("ops", "ops-pw"))


@two_worker_daemon
def test_reload_rolls_back_when_new_workers_cannot_start(daemon):
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    add_unresolvable_masquerade(daemon)
    done = daemon.ctl("reload")
    assert done.returncode == 1 and "reload failed" in done.stderr
    assert state_of(daemon).master().generation == 1
    assert serving(daemon, 1, 2)
    _close(login(daemon))


def test_upload_in_flight_survives_reload(daemon, cos, area):
    wait_until(lambda: serving(daemon, 1, 1), what="workers serving")
    ftp = login(daemon)
    ftp.voidcmd("TYPE I")
    data = os.urandom(6 * MIB + 3)
    conn = ftp.transfercmd(f"STOR {area}")
    conn.sendall(data[: 2 * MIB])
    rewrite_config(daemon, upload_thread_num="2")
    assert daemon.ctl("reload").returncode == 0
    conn.sendall(data[2 * MIB:])
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert get(ftp, area) == data
    _close(ftp)


def test_reload_whose_new_port_is_taken_changes_nothing(daemon):
    """A reload to a port in use that also turns events on: refused, naming the address;
    the old configuration serves on, and no events process starts for the refused one."""
    wait_until(lambda: serving(daemon, 1, 1), what="workers serving")
    master = master_of(daemon)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rewrite_config(daemon, listen_port=str(port))
        with open(daemon.config_path, "a", encoding="utf-8") as handle:
            handle.write("\n[HOOKS]\n" + "".join(f"{k} = {v}\n"
                                                  for k, v in unreachable_receiver().items()))
        done = daemon.ctl("reload")
    assert done.returncode != 0
    assert f"127.0.0.1 port {port}" in done.stderr
    assert re.search(rf"reload failed, still serving the previous configuration: .*"
                     rf"127\.0\.0\.1 port {port}", daemon.log_text())
    # Many turns of the master's loop, where it starts a missing helper, pass while a
    # new worker starts.
    master.send_signal(signal.SIGTTIN)
    wait_until(lambda: serving(daemon, 1, 2), what="2 workers")
    assert "events process" not in daemon.log_text()
    assert state_of(daemon).master().generation == 1
    _close(login(daemon))


def test_reload_rebinds_when_port_changes(daemon):
    wait_until(lambda: serving(daemon, 1, 1), what="workers serving")
    old_port, new_port = daemon.port, closed_port()
    rewrite_config(daemon, listen_port=str(new_port))
    release_port(new_port)  # held until now: no other test file's server takes it
    assert daemon.ctl("reload").returncode == 0
    daemon.port = new_port
    _close(login(daemon))
    wait_until(lambda: connection_refused(old_port), what="old port closed")


def test_reload_adds_and_drops_listen_addresses(daemon):
    """The IPv4 listener is kept (its session too); ::1 is opened, then closed again."""
    wait_until(lambda: serving(daemon, 1, 1), what="workers serving")
    kept = login(daemon)
    rewrite_config(daemon, listen_address="127.0.0.1, ::1")
    assert daemon.ctl("reload").returncode == 0
    _close(daemon.login("ops", "ops-pw", host="::1"))
    assert kept.voidcmd("NOOP").startswith("200")
    rewrite_config(daemon, listen_address="127.0.0.1")
    assert daemon.ctl("reload").returncode == 0
    wait_until(lambda: connection_refused(daemon.port, "::1"), what="::1 closed")
    _close(login(daemon))
    _close(kept)
