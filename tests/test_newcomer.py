"""The newcomer's path, as the READMEs write it: the commands of their "newcomer-path" block,
run line by line as written (``/opt/cosftp-prefork`` is a copy of the checkout's layout in a
temporary directory), against the COS emulator. The demo line is left to tests/test_demo.py,
and editing the copied example is what the test does between the lines."""

from __future__ import annotations

import ftplib
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import _close
from .docs_text import block_after, read
from .emulator_proc import EmulatorProcess
from .server_proc import (
    ROOT,
    closed_port,
    listens,
    passive_ports,
    release_port,
    wait_until,
)
from .test_config import set_option

PREFIX = "/opt/cosftp-prefork"
MARKER = "<!-- newcomer-path:"
BUCKET = "examplebucket-1250000000"  # the example's: the emulator serves it
LEFT_TO_OTHER_TESTS = {"./scripts/demo": "tests/test_demo.py"}
BANNED_IN_README = "203.0.113.9"  # unban's example address; here the test's own client


def newcomer_commands(readme: str = "README.zh-CN.md") -> list[str]:
    """The block's command lines, comments left out."""
    block = block_after(read(readme), MARKER)
    lines = [line.split("  #")[0].strip() for line in block.text.splitlines()]
    return [line for line in lines if line]


def install_like_a_clone(prefix: str) -> None:
    """``prefix`` laid out as a clone whose ``.venv`` was set up: the example config, and
    links to this checkout's scripts, package and installed ``cosftpctl``."""
    os.makedirs(os.path.join(prefix, "conf"))
    shutil.copy(os.path.join(ROOT, "conf", "vsftpd.conf.example"), os.path.join(prefix, "conf"))
    for name in ("scripts", "cosftp_prefork"):
        os.symlink(os.path.join(ROOT, name), os.path.join(prefix, name))
    installed = os.path.join(os.path.dirname(sys.executable), "cosftpctl")
    if not os.path.exists(installed):
        pytest.fail(f"no {installed}: install the package in this venv (scripts/bootstrap)")
    os.makedirs(os.path.join(prefix, ".venv", "bin"))
    os.symlink(installed, os.path.join(prefix, ".venv", "bin", "cosftpctl"))


def edit_example(path: str, cos_port: int, ftp_port: int) -> None:
    """What the reader does to the copied example; here: point it at the emulator."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    for section in ("COS_ACCOUNT_0", "COS_ACCOUNT_1"):
        for option, value in (("cos_secretid", "AKIDnewcomer"), ("cos_secretkey", "newcomer"),
                              ("cos_protocol", "http"), ("cos_ip", "127.0.0.1"),
                              ("cos_port", str(cos_port))):
            text = set_option(text, section, option, value)
    for option, value in (("listen_address", "127.0.0.1"), ("listen_port", str(ftp_port)),
                          ("passive_port", "{},{}".format(*passive_ports()))):
        text = set_option(text, "NETWORK", option, value)
    text = set_option(text, "OPTIONAL", "worker_processes", "2")
    if os.geteuid() == 0:
        # The tests' interpreter is root's (pyenv under /root, 0700): workers that dropped to
        # nobody could not import it (an installation under /opt can, docs/security.md).
        text = set_option(text, "OPTIONAL", "run_as_root", "true")
    text = set_option(text, "OPTIONAL", "max_login_failures", "1")  # one wrong password bans
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


class Uploading:
    """An upload by the example's user0, held open while ``sessions`` looks at it."""

    def __init__(self, port: int) -> None:
        self.ftp = login(port)
        self.ftp.voidcmd("TYPE I")
        self.data = self.ftp.transfercmd("STOR newcomer.bin")
        self.data.sendall(b"x" * 65536)

    def finish(self) -> str:
        self.data.close()
        reply = self.ftp.voidresp()
        _close(self.ftp)
        return reply


def login(port: int, password: str = "pass0") -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=30)
    ftp.login("user0", password)
    return ftp


def get_banned(port: int) -> None:
    """A wrong password from this client's address: banned (max_login_failures = 1)."""
    with pytest.raises(ftplib.error_perm, match="530"):
        login(port, "wrong")

    def refused() -> bool:
        try:
            _close(login(port))
        except ftplib.error_temp as exc:
            return str(exc).startswith("421")
        return False
    wait_until(refused, what="the address to be banned")


def run(line: str, cwd: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def check_output(words: list[str], done: subprocess.CompletedProcess) -> None:
    """What each command must have said (a command the test does not know: exit 0)."""
    assert done.returncode == 0, (words, done.stdout, done.stderr)
    expected = {"check": ": OK, 2 account(s)", "start": "cosftpctl: started, pid ",
                "status": "master pid ", "stop": "cosftpctl: stopped pid "}
    for command, text in expected.items():
        if command in words:
            assert text in done.stdout, (words, done.stdout)
    if "--online" in words:  # one verdict per account, both reach the emulator
        verdicts = [line.split()[:2] for line in done.stdout.splitlines()
                    if "[COS_ACCOUNT_" in line]
        assert verdicts == [["OK", "[COS_ACCOUNT_0]"], ["OK", "[COS_ACCOUNT_1]"]], done.stdout


def test_the_newcomer_path_works_as_the_readme_says(tmp_path):
    commands = newcomer_commands()
    assert [c for c in ("check", "start", "status", "sessions", "stop")
            if not any(c in line.split() for line in commands)] == []
    prefix = str(tmp_path / "opt" / "cosftp-prefork")
    install_like_a_clone(prefix)
    config = os.path.join(prefix, "conf", "vsftpd.conf")
    env = {**os.environ, "PYTHONPATH": ROOT}  # this checkout's code, whatever the venv has
    emulator = EmulatorProcess([BUCKET]).start()
    stop, = (line.replace(PREFIX, prefix) for line in commands if "stop" in line.split())
    # Held closed until the server starts: no other test file's server takes it meanwhile.
    ftp_port, cwd, upload = closed_port(), ROOT, None
    try:
        for line in commands:
            if line in LEFT_TO_OTHER_TESTS:
                continue
            line = line.replace(PREFIX, prefix)
            if line.startswith("cd ") and "&&" not in line:
                cwd = os.path.join(cwd, line[3:].strip())
                continue
            words = line.split()
            if "bans" in words:
                get_banned(ftp_port)
            if "unban" in words:
                line = line.replace(BANNED_IN_README, "127.0.0.1")
            if "sessions" in words:
                upload = Uploading(ftp_port)

                def shown(line: str = line, cwd: str = cwd) -> bool:
                    return "STOR newcomer.bin" in run(line, cwd, env).stdout
                wait_until(shown, what="the upload in cosftpctl sessions (once a second)")
            if "start" in words:
                release_port(ftp_port)
            done = run(line, cwd, env)
            check_output(words, done)
            if "start" in words:  # what answers on the port below is this server
                with open(os.path.join(prefix, "log", "cosftp.pid"), encoding="ascii") as pid:
                    assert listens(int(pid.read()), ftp_port)
            if line.startswith("cp "):
                assert os.path.exists(config)
                edit_example(config, emulator.port, ftp_port)
            if "sessions" in words:
                row, = (r for r in done.stdout.splitlines() if "STOR newcomer.bin" in r)
                assert row.split()[1:3] == ["user0", "127.0.0.1"], row
                assert upload.finish().startswith("226")
                stored = emulator.client().head_object(Bucket=BUCKET, Key="newcomer.bin")
                assert int(stored["Content-Length"]) == 65536
            if "bans" in words:
                assert any(r.split()[:2] == ["127.0.0.1", "1"] for r in done.stdout.splitlines())
            if "unban" in words:
                _close(login(ftp_port))  # gets in again at once
        assert os.path.exists(os.path.join(prefix, "log", "cosftp.log"))  # beside conf/
        status = [line for line in commands if "status" in line.split()][-1]
        after = run(status.replace(PREFIX, prefix), "/", env)
        assert after.returncode == 3, after.stdout  # not running
    finally:
        if upload is not None:
            upload.ftp.close()
        run(stop, "/", env)  # exit 3 if the path stopped it already
        emulator.stop()
