"""``cosftpctl sessions`` (like ftpwho): one line per live session across workers, from the
shared state, with what clients sent escaped."""

from __future__ import annotations

import contextlib
import ftplib
import os

import psutil
import pytest

from .conftest import ALPHA, TWO_WORKERS
from .ftps import tls_login
from .server_proc import Account, ServerProcess, tls_network, wait_until
from .slow_client import SlowReader
from .test_commands import put
from .test_master import serving
from .test_proxy import BALANCER, proxied_ftp, raw_connect, v2_header
from .tls_clients import write_certificate

MIB = 1024 * 1024
EVIL = "x\x1b[2J\u202ey"  # clears the terminal, then reverses the text after it


@pytest.fixture
def watched(emulator, tmp_path):
    with ServerProcess(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                       network={"proxy_protocol": "optional", "proxy_allowed": BALANCER},
                       optional={"max_login_failures": "0", **TWO_WORKERS}) as srv:
        yield srv


def session_lines(server: ServerProcess) -> list[str]:
    result = server.ctl("sessions")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def rows_of(server: ServerProcess, command: str, least: int = 0) -> list[list[str]]:
    """The fields of the sessions whose last command is ``command`` (as far as the column
    shows it) and whose BYTES are at least ``least``."""
    rows = [line.split() for line in session_lines(server) if command[:40] in line]
    return [row for row in rows if int(row[5]) >= least]


def test_sessions_lists_every_live_session_across_workers(watched, area):
    # The server answers once one worker serves; sessions opened before the other serves
    # would all stay on the first.
    wait_until(lambda: serving(watched, 1, 2), what="both workers serving")
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

    def described() -> list[str]:
        """The listing once it shows the upload's bytes, the CWD and the USER: each worker
        writes its sessions' rows once a second (the CWD may come after the bytes)."""
        lines = session_lines(watched)
        rows = lines[1:-1]
        upload = [row for row in rows if f"STOR {area}"[:40] in row]
        if upload and int(upload[0].split()[5]) >= 2 * MIB and \
                any("CWD" in row for row in rows) and any(row.endswith("USER") for row in rows):
            return lines
        return []

    wait_until(described, what="the three sessions described in cosftpctl sessions")
    lines = described()
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


def session_row(server: ServerProcess, command: str) -> tuple[int, float]:
    """BYTES and RATE/S of the session whose last command is ``command``."""
    fields = rows_of(server, command)[0]
    return int(fields[5]), float(fields[6])


SLOW_RATE = 128 * 1024  # bytes/s, once the client read its first BURST
BURST = 2 * MIB
RATE_WINDOW = 5  # seconds: ``cosftpctl sessions`` gives the rate over the last ones


@pytest.fixture(params=["plain", "TLS"])
def downloads(request, emulator, tmp_path):
    """A server, and how to log in to it: in the clear (the download is sent by a pump
    thread) or with TLS (sent by the IO loop, through OpenSSL)."""
    alice = Account("alice", "alice-pw", ALPHA)
    tls = request.param == "TLS"
    network = tls_network(*write_certificate(tmp_path)) if tls else {}
    with ServerProcess(str(tmp_path / "server"), emulator.port, [alice],
                       network=network) as srv:
        yield srv, (lambda: tls_login(srv, alice)) if tls else (
            lambda: srv.login("alice", "alice-pw"))


def test_sessions_count_what_a_slow_client_read_at_the_rate_it_reads(downloads, area):
    """A download to a slow client: BYTES is what the client had read when ``sessions``
    answered (not what the server handed to its socket buffers, megabytes ahead), RATE/S is
    how fast it reads now (not 0 once the whole file sits in buffers, nor an average since
    the start). The figure is from the worker's last tick, at most a second old: the client
    reads slowly enough that a second is a few percent of what it read."""
    watched, login = downloads
    ftp = login()
    data = os.urandom(BURST + 3 * MIB)  # all of it fits in the server's socket buffers
    assert put(ftp, f"{area}.bin", data).startswith("226")
    wrap = getattr(ftp, "context", None) and (lambda sock: ftp.context.wrap_socket(
        sock, server_hostname=ftp.host, session=ftp.sock.session))
    reader = SlowReader(ftp, f"{area}.bin", SLOW_RATE, burst=BURST, wrap=wrap)
    # The whole rate window within the slow phase, and a tick more: a count, not a time.
    wait_until(lambda: reader.count >= BURST + (RATE_WINDOW + 2) * SLOW_RATE, timeout=60,
               what="the slow client to read past its burst and a rate window")
    before = reader.count
    nbytes, rate = session_row(watched, f"RETR {area}.bin")
    after = reader.count
    assert 0.9 * before <= nbytes <= 1.1 * after, (before, nbytes, after)
    measured = reader.rate(RATE_WINDOW)
    assert 0.75 * measured <= rate <= 1.25 * measured, (rate, measured)
    assert reader.finish() == len(data)
    assert ftp.voidresp().startswith("226")
    wait_until(lambda: session_row(watched, f"RETR {area}.bin") == (len(data), 0.0),
               what="the whole download and no rate once it ended")
    ftp.quit()


def test_sessions_when_not_running(emulator, tmp_path):
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("alice", "pw", ALPHA)])
    proc.write_config()
    result = proc.ctl("sessions")
    assert result.returncode == 3 and "not running" in result.stdout
