"""The files the server writes beside its pid file and in log_dir, end to end: never through
a link planted at their names (at start, after logrotate, for the temporary names of files
replaced whole), never in a directory every user may write, and private modes."""

from __future__ import annotations

import ftplib
import io
import json
import os
import signal
import stat

import pytest

from .conftest import ALPHA
from .server_proc import FREE_PORT, Account, ServerProcess, wait_until

VICTIM = b"a file the server must never write\n"


def operated(emulator, workdir: str, **optional: str) -> ServerProcess:
    """A server of one account writing every file it can: cosftp.log, xferlog, vsftpd.log,
    the pid, state and bans files, the metrics directory (all in log_dir)."""
    log_dir = os.path.join(workdir, "log")
    settings = {"log_level": "INFO", "xferlog_enable": "true",
                "vsftpd_log_file": os.path.join(log_dir, "vsftpd.log"), **optional}
    return ServerProcess(workdir, emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         optional=settings, network={"metrics_port": FREE_PORT})


def victim(tmp_path, name: str = "victim") -> str:
    """A file outside log_dir (say, /etc/shadow) that a planted link points at."""
    path = str(tmp_path / name)
    with open(path, "wb") as handle:
        handle.write(VICTIM)
    return path


def read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def untouched(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read() == VICTIM


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("name", ["cosftp.log", "cosftp.out", "xferlog", "vsftpd.log",
                                  "cosftp.pid", "cosftp.pid.state", "cosftp.pid.bans",
                                  "cosftp.pid.metrics"])
def test_start_refuses_a_link_planted_at_a_file_it_writes(emulator, tmp_path, name):
    """Before: the state file was truncated through the link, the logs appended to through
    theirs, and the server started."""
    proc = operated(emulator, str(tmp_path / "server"))
    proc.write_config()
    os.makedirs(proc.log_dir)
    if name.endswith(".metrics"):  # a directory whose *.db files the server would wipe
        os.makedirs(tmp_path / "victims")
        target, kept = str(tmp_path / "victims"), victim(tmp_path / "victims", "counter_1.db")
    else:
        target = kept = victim(tmp_path)
    planted = os.path.join(proc.log_dir, name)
    os.symlink(target, planted)
    started = proc.ctl("start")
    try:
        assert untouched(kept)
        assert started.returncode == 1, started.stdout
        assert f"{planted} is a symbolic link" in started.stderr
        assert "remove it" in started.stderr
        assert os.path.islink(planted)
    finally:
        proc.ensure_stopped(proc.daemon_pid())


def test_start_refuses_a_log_dir_every_user_may_write(emulator, tmp_path):
    """Before: the server wrote its files into a world-writable log_dir, where any user could
    have planted links first (proftpd refuses such a directory too)."""
    proc = operated(emulator, str(tmp_path / "server"))
    proc.write_config()
    os.makedirs(proc.log_dir)
    os.chmod(proc.log_dir, 0o1777)  # like /tmp: the sticky bit does not stop a planted name
    started = proc.ctl("start")
    try:
        assert started.returncode == 1, started.stdout
        assert f"{proc.log_dir} is writable by every user (mode 1777)" in started.stderr
        assert not os.path.exists(os.path.join(proc.log_dir, "cosftp.log"))
    finally:
        proc.ensure_stopped(proc.daemon_pid())


def test_the_state_file_is_private(emulator, tmp_path):
    """Before: the state file (user names, client addresses) was 0644, and one left by an
    earlier run kept its mode; the log holding the same facts is 0640."""
    proc = operated(emulator, str(tmp_path / "server"))
    os.makedirs(proc.log_dir)
    state = os.path.join(proc.log_dir, "cosftp.pid.state")
    with open(state, "wb") as handle:
        handle.write(b"left by a killed master")
    os.chmod(state, 0o644)
    old_umask = os.umask(0o022)
    try:
        proc.start()
    finally:
        os.umask(old_umask)
    try:
        assert mode(state) == 0o640
        assert mode(os.path.join(proc.log_dir, "cosftp.log")) == 0o640
    finally:
        proc.stop()


def test_links_planted_after_logrotate_are_not_followed(emulator, tmp_path, area):
    """Before: once logrotate had moved cosftp.log and xferlog away, whoever planted a link
    at their names got the next lines appended to the file it pointed at. Now the server
    goes on writing to the files it had, says why once, and serves on."""
    proc = operated(emulator, str(tmp_path / "server"))
    victims = {}
    with proc:
        for name in ("cosftp.log", "xferlog"):
            path = os.path.join(proc.log_dir, name)
            victims[name] = victim(tmp_path, f"victim-of-{name}")
            # What logrotate does (moving the file to .1), with the link planted in the same
            # instant: the server logs all the time, and would otherwise make a new file.
            os.link(path, path + ".1")
            os.symlink(victims[name], path + ".link")
            os.rename(path + ".link", path)
        with proc.login("ops", "ops-pw") as ftp:
            ftp.mkd(area)
            ftp.storbinary(f"STOR {area}/rotated.txt", io.BytesIO(b"after the rotation"))
        os.kill(proc.proc.pid, signal.SIGUSR1)  # logrotate's postrotate
        old_log = os.path.join(proc.log_dir, "cosftp.log.1")
        wait_until(lambda: "could not reopen the log file" in read(old_log),
                   what="USR1 refusing the link")
        wait_until(lambda: "rotated.txt" in read(os.path.join(proc.log_dir, "xferlog.1")),
                   what="the transfer logged in the old xferlog")
        for name, target in victims.items():
            assert f"cannot open {os.path.join(proc.log_dir, name)} again" in read(old_log)
            assert untouched(target), name
        with proc.login("ops", "ops-pw") as ftp:  # still serving
            assert ftp.nlst(area) == ["rotated.txt"]


def test_a_link_at_the_temporary_name_of_the_bans_file_is_not_followed(emulator, tmp_path):
    """Before: the bans were written to ``<bans file>.<master pid>.tmp``, opened with O_TRUNC
    through whatever link was there, then renamed: the target of a link planted at that
    predictable name was overwritten."""
    proc = operated(emulator, str(tmp_path / "server"), max_login_failures="1",
                    ban_time="600")
    target = victim(tmp_path)
    with proc:
        bans = os.path.join(proc.log_dir, "cosftp.pid.bans")
        os.symlink(target, f"{bans}.{proc.proc.pid}.tmp")
        guesser = ftplib.FTP()
        guesser.connect("127.0.0.1", proc.port, timeout=30, source_address=("127.0.0.2", 0))
        with pytest.raises(ftplib.error_perm, match="530"):
            guesser.login("ops", "wrong")
        guesser.close()
        wait_until(lambda: os.path.exists(bans) and "127.0.0.2" in read(bans),
                   what="the ban saved")
        assert untouched(target)
        assert not os.path.islink(bans)
        assert [ban["address"] for ban in json.loads(read(bans))["bans"]] == ["127.0.0.2"]
