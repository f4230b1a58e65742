"""``cosftpctl sessions`` (like ftpwho): one line per live session across workers, from the
shared state, with what clients sent escaped."""

from __future__ import annotations

import contextlib
import ftplib
import os

import psutil
import pytest

from .conftest import ALPHA
from .server_proc import Account, ServerProcess, wait_until
from .test_proxy import BALANCER, proxied_ftp, raw_connect, v2_header

MIB = 1024 * 1024
EVIL = "x\x1b[2J\u202ey"  # clears the terminal, then reverses the text after it


@pytest.fixture
def watched(emulator, tmp_path):
    with ServerProcess(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                       network={"proxy_protocol": "optional", "proxy_allowed": BALANCER},
                       optional={"max_login_failures": "0"}) as srv:
        yield srv


def session_lines(server: ServerProcess) -> list[str]:
    result = server.ctl("sessions")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_sessions_lists_every_live_session_across_workers(watched, area):
    uploader = proxied_ftp(watched, v2_header("127.0.0.21"), "127.0.0.21")
    uploader.login("alice", "alice-pw")
    uploader.voidcmd("TYPE I")
    data = uploader.transfercmd(f"STOR {area}.bin")
    data.sendall(os.urandom(2 * MIB))
    browser = watched.login("alice", "alice-pw")
    with contextlib.suppress(ftplib.error_perm):  # 550: no such directory
        browser.cwd(EVIL)
    stranger = raw_connect(watched, "127.0.0.1")
    stranger.recv(100)
    stranger.sendall(f"USER {EVIL}\r\n".encode())
    assert stranger.recv(100).startswith(b"331")

    def uploading() -> list[str]:
        lines = session_lines(watched)
        return [line for line in lines if f"STOR {area}"[:40] in line and
                int(line.split()[5]) >= 2 * MIB]
    wait_until(uploading, what="the upload's bytes in cosftpctl sessions")
    lines = session_lines(watched)
    assert lines[-1] == "3 session(s)"
    rows = lines[1:-1]
    upload = next(row for row in rows if "STOR" in row)
    assert upload.split()[1:3] == ["alice", "127.0.0.21"]  # the proxied client address
    assert "logged in" in upload
    cwd = next(row for row in rows if "CWD" in row)
    assert "CWD x\\x1b[2J\\u202ey" in cwd and "\x1b" not in "\n".join(lines)
    pending = next(row for row in rows if "USER" in row)
    assert pending.split()[1] == "-" and pending.split()[3] == "login"
    assert pending.endswith("USER")  # the name a client tried is not shown
    workers = {child.pid for child in psutil.Process(watched.proc.pid).children()}
    pids = {int(row.split()[0]) for row in rows}
    assert pids <= workers and len(pids) == 2  # both workers' sessions, in one list
    titles = " ".join(" ".join(psutil.Process(pid).cmdline()) for pid in workers)
    assert "alice" not in titles and "\x1b" not in titles
    data.close()
    assert uploader.voidresp().startswith("226")
    for ftp in (uploader, browser):
        ftp.quit()
    stranger.close()
    wait_until(lambda: session_lines(watched)[-1] == "0 session(s)",
               what="closed sessions to leave the list")


def test_sessions_when_not_running(emulator, tmp_path):
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("alice", "pw", ALPHA)])
    proc.write_config()
    result = proc.ctl("sessions")
    assert result.returncode == 3 and "not running" in result.stdout
