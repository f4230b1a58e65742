"""Connection governance before login, end to end: limits on connections that have not logged
in, the login timeout, bans checked at USER/PASS and closing what a banned address holds open,
exact address keys, bans that outlive a restart.

Attackers connect from other loopback addresses (127.0.0.0/8 is all loopback on Linux), so
the per-address limits tell them apart from the 127.0.0.1 the legitimate clients use.
"""

from __future__ import annotations

import ftplib
import json
import logging
import mmap
import os
import re
import resource
import selectors
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import suppress

import psutil
import pytest

from cosftp_prefork.server.bansfile import BansFile
from cosftp_prefork.server.burst import BURST_SECONDS
from cosftp_prefork.server.gate import BurstLog
from cosftp_prefork.server.scoreboard import (
    FILE_SIZE,
    SharedState,
    address_key,
    address_text,
    load_bans,
    save_bans,
)
from cosftp_prefork.server.scoreboard.layout import BAN_ROWS, BANS_AT

from .conftest import ALPHA
from .crowds import peak_rss, reset_peak_rss, unread_session, workers_of
from .server_proc import Account, ServerProcess, tls_network, wait_until
from .test_master import no_sessions_left
from .test_proxy import closed_by_server
from .tls_clients import write_certificate

OPS = [Account("ops", "ops-pw", ALPHA)]


def connect(proc: ServerProcess, source: str = "127.0.0.1", timeout: float = 20) -> ftplib.FTP:
    """A control connection from ``source`` that read the greeting; raises ``error_temp``
    on a 421 instead of the greeting."""
    ftp = ftplib.FTP(encoding="utf-8")
    ftp.connect("127.0.0.1", proc.port, timeout=timeout, source_address=(source, 0))
    return ftp


def try_connect(proc: ServerProcess, source: str) -> tuple[ftplib.FTP | None, str]:
    """``(connection, greeting)``, or ``(None, the refusal)``."""
    try:
        ftp = connect(proc, source)
    except ftplib.error_temp as exc:
        return None, str(exc)
    return ftp, ftp.welcome


def log_in(proc: ServerProcess, source: str = "127.0.0.1", password: str = "ops-pw"):
    ftp = connect(proc, source)
    ftp.login("ops", password)
    return ftp


def next_reply(ftp: ftplib.FTP) -> str:
    """The next reply the server sends unasked (a 421 ends the session), or '' at EOF."""
    try:
        return ftp.getresp()
    except ftplib.Error as exc:
        return str(exc)
    except (EOFError, OSError):
        return ""


def close_all(connections) -> None:
    for ftp in connections:
        if ftp is not None:
            with suppress(OSError, EOFError):
                ftp.close()


def server(emulator, tmp_path, **optional: str) -> ServerProcess:
    settings = {"log_level": "INFO", **optional}
    return ServerProcess(str(tmp_path), emulator.port, OPS, optional=settings)


def test_idle_connections_of_one_address_cannot_lock_users_out(emulator, tmp_path):
    """Before: every connection counted against max_connection_num from connect, and one
    address holding that many idle sockets made everyone else's login answer 421."""
    # Two workers: the caps are the server's, counted across its workers.
    with server(emulator, tmp_path, max_connection_num="4", worker_processes="2") as proc:
        attempts = [try_connect(proc, "127.0.0.2") for _ in range(30)]
        held = [ftp for ftp, _ in attempts if ftp is not None]
        refusals = [reply for ftp, reply in attempts if ftp is None]
        try:
            # the default per-address cap on connections not logged in yet, on both workers
            assert len(held) == 16
            assert all(re.match(r"421 Too many connections from your address waiting to log"
                                r" in", reply) for reply in refusals), refusals
            users = [log_in(proc) for _ in range(4)]  # every logged-in place is still free
            with pytest.raises(ftplib.error_temp, match="421 Too many"):
                log_in(proc)
            close_all(users)
        finally:
            close_all(held)
        assert len(refusals) == 14
        lines = [line for line in proc.log_text().splitlines()
                 if "127.0.0.2: connection refused" in line]
        # once per burst and worker (then a count), not once per socket
        assert 1 <= len(lines) <= 4, lines


def _flood(port: int, source: str, count: int, timeout: float) -> list[bytes]:
    """Open ``count`` sockets from ``source`` at once; return each one's first line (b"" if
    none came within ``timeout``)."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.setblocking(False)
        with suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        socks.append(sock)
    firsts = dict.fromkeys(socks, b"")
    deadline = time.monotonic() + timeout
    # A selector, not select.select: the test process may already hold enough descriptors
    # that these land above FD_SETSIZE (1024), which select() cannot watch.
    with selectors.DefaultSelector() as waiting:
        for sock in socks:
            waiting.register(sock, selectors.EVENT_READ)
        while waiting.get_map() and time.monotonic() < deadline:
            for key, _ in waiting.select(0.5):
                with suppress(OSError):
                    firsts[key.fileobj] = key.fileobj.recv(200).split(b"\r\n", 1)[0]
                waiting.unregister(key.fileobj)
    close_all(socks)
    return list(firsts.values())


def test_a_burst_of_connects_is_answered_not_dropped(emulator, tmp_path):
    """Before: pyftpdlib listened again with a backlog of 100; of a burst of connects the
    kernel dropped many (syncookies), and an idle client never heard anything."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4096:
        pytest.skip("needs 4096 open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    # login_timeout past the flood: a loaded machine took over the default 30 s to accept
    # the 800, and the first 16, cut by it, made room for 15 more (31 answered 220).
    with server(emulator, tmp_path, login_timeout="3600") as proc:
        firsts = _flood(proc.port, "127.0.0.5", 800, timeout=60)
        assert firsts.count(b"220 cosftp-prefork ready.") == 16
        refused = b"421 Too many connections from your address waiting to log in."
        assert firsts.count(refused) == 800 - 16, sorted(set(firsts))


def test_connections_not_logged_in_are_capped_server_wide(emulator, tmp_path):
    with server(emulator, tmp_path, max_prelogin_connections="5",
                max_prelogin_connections_per_ip="3", worker_processes="2") as proc:
        no_sessions_left(proc)  # the start-up probe's connection is not counted any more
        user = log_in(proc)
        first = [try_connect(proc, "127.0.0.2") for _ in range(4)]
        second = [try_connect(proc, "127.0.0.3") for _ in range(3)]
        try:
            assert [ftp is not None for ftp, _ in first] == [True, True, True, False]
            assert "from your address" in first[3][1]
            assert [ftp is not None for ftp, _ in second] == [True, True, False]
            assert "421 Too many connections waiting to log in" in second[2][1]
            assert user.voidcmd("NOOP").startswith("200")  # logged-in sessions go on
            with pytest.raises(ftplib.error_temp, match="waiting to log in"):
                connect(proc)
        finally:
            close_all(ftp for ftp, _ in first + second)
        wait_until(lambda: _greeted_and_closed(proc, "127.0.0.3"),
                   what="a place freed once the idle connections closed")
        user.quit()


def _greeted_and_closed(proc: ServerProcess, source: str) -> bool:
    ftp, _ = try_connect(proc, source)
    close_all([ftp])
    return ftp is not None


def test_login_timeout_is_not_reset_by_commands_before_login(emulator, tmp_path):
    """Before: the idle timeout was 300 s and every NOOP/USER/FEAT before login reset it."""
    with server(emulator, tmp_path, login_timeout="3") as proc:
        user = log_in(proc)
        ftp = connect(proc)
        started = time.monotonic()
        reply = ""
        while not reply.startswith("421") and time.monotonic() - started < 30:
            for command in ("NOOP", "USER ops", "FEAT"):
                try:
                    ftp.sendcmd(command)
                except ftplib.error_temp as exc:
                    reply = str(exc)
                    break
                except ftplib.Error:
                    pass
                except (OSError, EOFError):
                    reply = reply or "connection closed without 421"
                    break
        assert reply == "421 Login timed out.", reply
        assert time.monotonic() - started > 2
        assert user.voidcmd("NOOP").startswith("200")  # a logged-in session is left alone
        assert user.login("ops", "ops-pw").startswith("230")  # and may log in again
        wait_until(lambda: "no login within login_timeout=3s" in proc.log_text(),
                   what="the timeout logged")
        user.quit()
        ftp.close()


def _send_unread(sock: socket.socket, line: bytes) -> None:
    """Send ``line`` over and over, as much as the server takes at once (8 MiB at most),
    reading nothing."""
    sock.setblocking(False)
    block, sent = line * (65536 // len(line)), 0
    with suppress(BlockingIOError):
        while sent < 8 * 1024 * 1024:
            sent += sock.send(block)


def _connected_from(worker: psutil.Process, sock: socket.socket) -> bool:
    port = sock.getsockname()[1]
    return any(conn.raddr and conn.raddr.port == port
               for conn in worker.net_connections("tcp"))


def test_a_client_that_reads_no_replies_is_not_read_and_is_closed_in_time(emulator,
                                                                          tmp_path):
    """Before: pyftpdlib read every command and queued in the worker every reply the client
    left unread. A client pipelining HELP (437 bytes answered to 6 sent) and reading nothing
    grew the worker by ~5 MiB a second: until its login_timeout (30 s by default, 128 such
    connections allowed at once) before login, for good after it. And once logged in it was
    never closed: the idle timeout's 421 waited behind the unread replies."""
    with server(emulator, tmp_path, login_timeout="8", idle_session_timeout="3",
                worker_processes="1") as proc:
        [worker] = workers_of(proc.proc.pid)
        # logins and the worker's COS client cost what they cost before the peak is reset
        log_in(proc).quit()
        logged_in = unread_session(proc.port, "127.0.0.2", login=True)
        not_logged_in = unread_session(proc.port, "127.0.0.3")
        reset_peak_rss(worker.pid)
        before = peak_rss(worker.pid)
        _send_unread(logged_in, b"HELP\r\n")
        _send_unread(not_logged_in, b"HELP\r\n")
        try:
            wait_until(lambda: _stopped_reading(proc.log_text()) or
                       peak_rss(worker.pid) - before > 16 * 1024 * 1024, timeout=90,
                       what="the worker to stop reading both clients, or grow")
            # the replies the kernel's buffers did not take: about 64 each, not every one
            assert peak_rss(worker.pid) - before < 8 * 1024 * 1024
            polite = log_in(proc)
            polite.nlst()  # the bucket is shared with other tests: what it holds varies
            polite.quit()
            # not reading them, the worker still hears its login_timeout (a kick) and ends
            # the idle session, whose 421 the client does not read either
            wait_until(lambda: not _connected_from(worker, not_logged_in), timeout=60,
                       what="the session not logged in closed at login_timeout")
            wait_until(lambda: not _connected_from(worker, logged_in), timeout=60,
                       what="the logged-in session closed after idle_session_timeout")
            assert "closed with" in proc.log_text()
        finally:
            logged_in.close()
            not_logged_in.close()


def _stopped_reading(log: str) -> bool:
    """Whether the worker stopped reading the logged-in client (127.0.0.2) and the other
    (127.0.0.3), or closed the other at its login_timeout first: under load (37) its 8 s
    ran out before the worker had answered the HELPs that fill the kernel's buffers."""
    paused = set(re.findall(r"ip=([\d.]+)\] \S+: the client reads no replies", log))
    return "127.0.0.2" in paused and (
        "127.0.0.3" in paused or "127.0.0.3: closed: no login within login_timeout" in log)


def test_idle_session_timeout_closes_a_session_that_sends_no_command(emulator, tmp_path):
    """Before: pyftpdlib's fixed 300 s, no option."""
    with server(emulator, tmp_path, idle_session_timeout="2") as proc:
        idle = log_in(proc)
        assert next_reply(idle) == "421 Control connection timed out."
        assert next_reply(idle) == ""  # closed


# The start of a ClientHello (a record of 512 bytes announced), then nothing more.
STALLED_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def stall_handshakes(port: int, source: str, count: int, auth_tls: bool) -> list[socket.socket]:
    """Open ``count`` connections from ``source`` that each begin a TLS handshake and stall
    it: on the implicit FTPS port at once; with ``auth_tls``, on the FTP port after AUTH TLS
    (a connection refused with 421 before that is left as it is)."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=20,
                                        source_address=(source, 0))
        socks.append(sock)
        if auth_tls:
            reader = sock.makefile("rb")
            if not reader.readline().startswith(b"220"):
                continue
            sock.sendall(b"AUTH TLS\r\n")
            assert reader.readline().startswith(b"234")
        sock.sendall(STALLED_HELLO)
    return socks


# Long enough for a loaded machine to accept 200 connections and close the 184 over the cap
# before it cuts the 16 others: with 10 s, one under load 20 had not closed them all in 8 s.
STALL_LOGIN_TIMEOUT = 30


@pytest.fixture(scope="module")
def stall_server(emulator, tmp_path_factory) -> Iterator[ServerProcess]:
    """FTPS with an implicit port, one worker, login_timeout ``STALL_LOGIN_TIMEOUT``: the
    server of both stalled-handshake tests, each from an address of its own."""
    workdir = tmp_path_factory.mktemp("stall")
    cert, key = write_certificate(workdir)
    with ServerProcess(str(workdir / "srv"), emulator.port, OPS,
                       network=tls_network(cert, key, implicit=True),
                       optional={"log_level": "INFO", "worker_processes": "1",
                                 "login_timeout": str(STALL_LOGIN_TIMEOUT)}) as proc:
        yield proc


@pytest.mark.parametrize("auth_tls, source", [(False, "127.0.0.9"), (True, "127.0.0.10")],
                         ids=["implicit port", "AUTH TLS"])
def test_stalled_tls_handshakes_are_capped_and_cut_at_login_timeout(stall_server, auth_tls,
                                                                    source):
    """Before, on the implicit FTPS port: a connection over the pre-login caps waited for its
    handshake to be told 421, and a stalled one waited for the 300 s idle timeout (400 of
    them: 384 open, 788 descriptors and 413 threads in the worker). Now every connection is
    counted at accept: over the cap it is closed at once (nothing can be said in clear
    text), within the cap its handshake is cut at login_timeout. After AUTH TLS on the FTP
    port the same holds (the over-cap ones get their 421 in clear text)."""
    proc = stall_server
    no_sessions_left(proc)
    logged_before = len(proc.log_text())
    worker = psutil.Process(proc.proc.pid).children()[0]
    threads, fds = worker.num_threads(), worker.num_fds()
    port = proc.port if auth_tls else int(proc.network["implicit_tls_port"])
    started = time.monotonic()
    socks = stall_handshakes(port, source, 200, auth_tls)
    try:
        # the default max_prelogin_connections_per_ip (16) stay, the others are closed
        # before login_timeout cuts the 16
        wait_until(lambda: sum(map(closed_by_server, socks)) >= 200 - 16,
                   timeout=STALL_LOGIN_TIMEOUT - 5, what="the connections over the cap closed")
        refused_by = time.monotonic()  # every refusal was made by now
        assert sum(map(closed_by_server, socks)) == 200 - 16  # not cut by the deadline yet
        wait_until(lambda: all(map(closed_by_server, socks)), timeout=60,
                   what="the stalled handshakes cut at login_timeout")
    finally:
        close_all(socks)
    wait_until(lambda: worker.num_threads() <= threads, what=f"threads back to {threads}")
    wait_until(lambda: worker.num_fds() <= fds, what=f"descriptors back to {fds}")
    no_sessions_left(proc)
    text = proc.log_text()[logged_before:]
    assert f"{source}: closed: no login within login_timeout={STALL_LOGIN_TIMEOUT}s" in text
    refusals = [line for line in text.splitlines()
                if f"{source}: connection refused: Too many connections from your "
                   "address waiting to log in" in line]
    # Once per burst (then a count), not 184. A burst lasts BURST_SECONDS (the worker's
    # clock is the same CLOCK_MONOTONIC): a loaded machine may take longer than one to
    # make the 200 connections (4 lines, two bursts, at load 37).
    bursts = 1 + int((refused_by - started) // BURST_SECONDS)
    assert 1 <= len(refusals) <= 2 * bursts, refusals
    assert log_in(proc).voidcmd("NOOP").startswith("200")


def test_a_ban_closes_every_open_connection_of_the_address(emulator, tmp_path):
    """Before: only accept checked the ban; connections opened earlier went on guessing,
    and one of them logged in with 230 while banned."""
    with server(emulator, tmp_path, max_login_failures="3", ban_time="300",
                worker_processes="2") as proc:
        idle = [connect(proc, "127.0.0.2") for _ in range(6)]
        waiting = connect(proc, "127.0.0.2")
        waiting.sendcmd("USER ops")
        guessers = [connect(proc, "127.0.0.2") for _ in range(3)]
        replies: list[str] = []

        def guess(ftp: ftplib.FTP) -> None:
            ftp.sendcmd("USER ops")
            try:
                ftp.sendcmd("PASS wrong")
            except ftplib.Error as exc:
                replies.append(str(exc))

        threads = [threading.Thread(target=guess, args=(ftp,)) for ftp in guessers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(r[:3] for r in replies) == ["530"] * 3, replies
        waiting.putcmd("PASS ops-pw")
        answer = next_reply(waiting)
        assert answer.startswith("421") or answer == "", answer  # never 230
        for ftp in idle:  # on both workers
            assert next_reply(ftp) == ("421 Too many failed logins from your address; try "
                                       "again later.")
        with pytest.raises(ftplib.error_temp, match="421 Too many failed logins"):
            connect(proc, "127.0.0.2")
        log_in(proc).quit()  # other addresses are not affected
        close_all([*idle, waiting, *guessers])
        assert "127.0.0.2: closed: its address was banned" in proc.log_text()


def _ban_quietly(proc: ServerProcess, ip: str) -> None:
    """Put a ban into the server's shared state without the change of the ban counter that
    makes the workers close that address's connections: a ban they have not acted on yet,
    as in the second after another worker placed it."""
    path = os.path.join(proc.log_dir, "cosftp.pid.state")
    fd = os.open(path, os.O_RDWR)
    state = SharedState(path, fd, mmap.mmap(fd, FILE_SIZE, mmap.MAP_SHARED))
    epoch = state.ban_epoch()
    state.restore_bans([(ip, int(time.time()) + 300)], time.time())
    struct.pack_into("<I", state._map, BANS_AT, epoch)
    state.close()


def test_the_ban_is_checked_at_user_and_at_pass(emulator, tmp_path):
    """Before: a connection opened before the ban could go on to log in with 230."""
    with server(emulator, tmp_path, worker_processes="1") as proc:
        before_user = connect(proc, "127.0.0.2")
        before_pass = connect(proc, "127.0.0.2")
        assert before_pass.sendcmd("USER ops").startswith("331")
        _ban_quietly(proc, "127.0.0.2")
        with pytest.raises(ftplib.error_temp, match="421 Too many failed logins"):
            before_user.sendcmd("USER ops")
        with pytest.raises(ftplib.error_temp, match="421 Too many failed logins"):
            before_pass.sendcmd("PASS ops-pw")
        close_all([before_user, before_pass])


# Two loopback addresses with the same crc32(ip) | 1, the key bans and per-IP counts had.
COLLIDING = [("127.5.212.6", "127.20.88.150"), ("127.5.212.7", "127.20.88.151")]


def test_bans_and_per_address_counts_are_keyed_by_the_exact_address(emulator, tmp_path):
    for first, second in COLLIDING:
        assert zlib.crc32(first.encode()) | 1 == zlib.crc32(second.encode()) | 1
    with server(emulator, tmp_path, max_login_failures="1", max_connections_per_ip="1") as proc:
        banned, neighbour = COLLIDING[0]
        with pytest.raises(ftplib.error_perm, match="530"):
            log_in(proc, banned, "wrong")
        with pytest.raises(ftplib.error_temp, match="421 Too many failed logins"):
            connect(proc, banned)
        log_in(proc, neighbour).quit()
        holder, other = COLLIDING[1]
        held = log_in(proc, holder)
        log_in(proc, other).quit()
        with pytest.raises(ftplib.error_temp, match="same IP"):
            connect(proc, holder)
        held.quit()


def test_bans_survive_stop_and_start(emulator, tmp_path):
    proc = server(emulator, tmp_path, max_login_failures="1", ban_time="600")
    assert proc.start_daemon().returncode == 0
    master = proc.daemon_pid()
    try:
        with pytest.raises(ftplib.error_perm, match="530"):
            log_in(proc, "127.0.0.2", "wrong")
        assert proc.ctl("stop").returncode == 0
        bans_file = os.path.join(proc.log_dir, "cosftp.pid.bans")
        assert os.stat(bans_file).st_mode & 0o777 == 0o600
        with open(bans_file, encoding="ascii") as handle:
            saved = json.load(handle)["bans"]
        assert [ban["address"] for ban in saved] == ["127.0.0.2"]
        assert 500 < saved[0]["until"] - time.time() <= 600
        saved.append({"address": "127.0.0.3", "until": int(time.time()) - 1})  # expired
        with open(bans_file, "w", encoding="ascii") as handle:
            json.dump({"bans": saved}, handle)
        assert proc.start_daemon().returncode == 0
        master = proc.daemon_pid()
        with pytest.raises(ftplib.error_temp, match="421 Too many failed logins"):
            connect(proc, "127.0.0.2")
        log_in(proc, "127.0.0.3").quit()
        assert "restored 1 bans" in proc.log_text()
    finally:
        proc.ensure_stopped(master)


def test_a_bad_entry_in_the_bans_file_costs_only_itself(emulator, tmp_path):
    """Before: one malformed entry made the server drop every saved ban ("not a bans
    file"). Now the valid bans hold after the restart, and each bad entry is logged, quoted
    with its control characters escaped."""
    proc = server(emulator, tmp_path, max_login_failures="3", ban_time="600")
    os.makedirs(proc.log_dir)
    until = int(time.time()) + 600
    entries = [
        {"address": "127.0.0.2", "until": until},
        {"address": "127.0.0.9\x1b[2J\nFORGED", "until": until},
        {"address": "127.0.0.4"},
        "127.0.0.5",
        {"address": "127.0.0.6", "until": "tomorrow"},
        {"address": "::ffff:127.0.0.7", "until": until},
    ]
    with open(os.path.join(proc.log_dir, "cosftp.pid.bans"), "w", encoding="ascii") as handle:
        json.dump({"bans": entries}, handle)
    with proc:
        for banned in ("127.0.0.2", "127.0.0.7"):
            with pytest.raises(ftplib.error_temp, match="421 Too many failed logins"):
                connect(proc, banned)
        log_in(proc, "127.0.0.4").quit()  # its entry had no expiry: not banned
        log = proc.log_text()
    assert "restored 2 bans" in log
    ignored = re.findall(r"bans file \S+: ignored entry (\d) (.*)", log)
    assert [number for number, _ in ignored] == ["2", "3", "4", "5"], ignored
    assert "the address is not an IP address" in ignored[0][1]
    assert "\\u001b[2J\\nFORGED" in ignored[0][1]  # escaped, as JSON writes it
    assert "\x1b" not in log and "\nFORGED" not in log
    assert "the expiry ('until') is not a whole number" in ignored[1][1]
    assert ignored[2][1].startswith('"127.0.0.5": not an object')
    bans_file = os.path.join(proc.log_dir, "cosftp.pid.bans")
    with open(bans_file, "w", encoding="ascii") as handle:
        handle.write('{"bans": [{"address": "127.0.0.2", "until": ')  # cut short
    with proc:  # a file that is no bans file at all: kept aside for a look, not overwritten
        assert f"ignoring the saved bans in {bans_file}: not a bans file (JSONDecodeError); " \
               f"moved it to {bans_file}.invalid" in proc.log_text()
    with open(bans_file + ".invalid", encoding="ascii") as handle:
        assert handle.read().startswith('{"bans": [{"address": "127.0.0.2"')


# --- pure logic


def test_address_keys_are_whole_addresses():
    assert address_key("::ffff:192.0.2.7") == address_key("192.0.2.7")
    assert address_key("fe80::1%eth0") == address_key("fe80::1")
    assert address_key("2001:db8::1") != address_key("2001:db8::1:0")
    assert address_text(address_key("192.0.2.7")) == "192.0.2.7"
    assert address_text(address_key("2001:db8::1")) == "2001:db8::1"


def test_ipv6_bans_are_per_address_and_saved_with_their_expiry(tmp_path):
    state = SharedState.create(str(tmp_path / "state"))
    now = time.time()
    assert state.record_failure("2001:db8::1", now, 1, 60, 300)
    assert state.is_banned("2001:db8::1", now) and not state.is_banned("2001:db8::2", now)
    assert not state.is_banned("2001:db8::1", now + 301)
    save_bans(str(tmp_path / "bans"), state.bans(now))
    fresh = SharedState.create(str(tmp_path / "state2"))
    expired = ("2001:db8::3", int(now) - 1)
    assert fresh.restore_bans([*load_bans(str(tmp_path / "bans")).bans, expired], now) == 1
    assert fresh.bans(now) == [("2001:db8::1", int(now) + 300)]
    (tmp_path / "bad").write_text("{not json")
    with pytest.raises(ValueError, match="not a bans file"):
        load_bans(str(tmp_path / "bad"))


def test_saved_copies_are_restored_as_copies_after_the_nodes_own_bans(tmp_path):
    """A bans file says which bans were copies of other nodes' (``"copy": true``): they come
    back as copies, after the node's own, so that a full table restores every own ban and
    drops a copy, never the other way round. An entry whose ``copy`` is not true or false
    costs only itself."""
    now = int(time.time())
    copies = [f"10.1.{number // 250}.{number % 250 + 1}" for number in range(BAN_ROWS)]
    own = "192.0.2.1"
    path = str(tmp_path / "bans")
    # (the copies first in the file, ending later: neither may put them before the own ban)
    save_bans(path, [*((ip, now + 900) for ip in copies), (own, now + 600)], copies, 42)
    saved = load_bans(path)
    assert saved.copies == set(copies) and saved.unbans_applied == 42
    state = SharedState.create(str(tmp_path / "state"))
    assert state.restore_bans(saved.bans, now, saved.copies) == BAN_ROWS
    assert state.is_banned(own, now)
    bans, restored_copies = state.saved_bans(now)
    assert len(bans) == BAN_ROWS and restored_copies == set(copies) - {
        ip for ip in copies if not state.is_banned(ip, now)}
    assert own not in restored_copies and len(restored_copies) == BAN_ROWS - 1
    (tmp_path / "odd").write_text(json.dumps({"bans": [
        {"address": "192.0.2.2", "until": now + 60, "copy": "yes"},
        {"address": "192.0.2.3", "until": now + 60}]}))
    odd = load_bans(str(tmp_path / "odd"))
    assert odd.bans == [("192.0.2.3", now + 60)] and odd.copies == set()
    assert odd.unbans_applied == 0
    assert "'copy' is neither true nor false" in odd.rejected[0]


def test_the_unban_counters_epoch_is_kept_beside_its_number(tmp_path):
    """The number of the last of the cluster's unbans a node applied means something only
    with the epoch of the counter that gave it (Redis's counter made anew after it lost its
    keys has another): the state keeps the highest number of one epoch (workers lagging
    behind), takes another epoch's number as it is, and the bans file keeps both; one
    whose epoch is not 16 hex digits keeps the number alone, as a file of the version
    before does."""
    state = SharedState.create(str(tmp_path / "state"))
    first, second = "0123456789abcdef", "fedcba9876543210"
    state.note_unbans_applied(7, first)
    state.note_unbans_applied(5, first)  # a worker behind the others
    assert state.unbans_applied() == (7, first)
    state.note_unbans_applied(2, second)  # the counter made anew: lower, and newer
    assert state.unbans_applied() == (2, second)
    path = str(tmp_path / "bans")
    save_bans(path, [], unbans_applied=2, unbans_epoch=second)
    assert json.loads((tmp_path / "bans").read_text("ascii"))["unbans_epoch"] == second
    saved = load_bans(path)
    assert (saved.unbans_applied, saved.unbans_epoch) == (2, second)
    for odd in ("not hex at all!", "0123", 17, "0123456789ABCDEF\n"):
        (tmp_path / "odd").write_text(json.dumps({"bans": [], "unbans_applied": 3,
                                                  "unbans_epoch": odd}))
        assert (load_bans(str(tmp_path / "odd")).unbans_applied,
                load_bans(str(tmp_path / "odd")).unbans_epoch) == (3, ""), odd


def test_a_crowd_that_fills_the_ban_table_drops_the_bans_ending_soonest_and_says_so(tmp_path,
                                                                                   caplog):
    """The node's ban table holds BAN_ROWS addresses, the bans it keeps for the cluster
    among them. A crowd of banned addresses (1,124 here, each banned at its first failure)
    takes no row more: each new ban past that takes the row of the ban ending soonest,
    never one ending later (the operator's day-long ban stays), and the master's log says
    how many were dropped (it said nothing: on a node without a cluster a dropped ban lets
    its address in again). Its bans file, saved then, holds what the table holds."""
    state = SharedState.create(str(tmp_path / "state"))
    bans = BansFile(state, str(tmp_path / "cosftp.pid"), 64)
    now = int(time.time())
    state.ban("192.0.2.1", now + 86400)
    crowd = [f"10.0.{number // 250}.{number % 250 + 1}" for number in range(BAN_ROWS + 100)]
    for number, ip in enumerate(crowd):
        assert state.record_failure(ip, now, 1, 60, 600 + number)  # ending one after another
    assert len(state.ban_rows()) == BAN_ROWS
    assert state.is_banned("192.0.2.1", now)
    dropped = len(crowd) + 1 - BAN_ROWS
    assert [ip for ip in crowd if not state.is_banned(ip, now)] == crowd[:dropped]
    with caplog.at_level(logging.WARNING, logger="cosftp_prefork.server.bansfile"):
        bans.save()
    assert f"the ban table ({BAN_ROWS} rows) was full of running bans: {dropped} of them " \
           f"were dropped for new ones (a crowd of banned addresses?), those ending soonest " \
           f"among the copies of other nodes' bans first, this node's own only when every " \
           f"row held one" in caplog.text
    assert len(load_bans(bans.path).bans) == BAN_ROWS


def test_burst_log_writes_the_first_event_then_a_count(caplog):
    burst = BurstLog(interval=10.0, max_keys=2)
    with caplog.at_level("WARNING", logger="cosftp_prefork.server.gate"):
        for _ in range(500):
            burst.note("192.0.2.1", "connection refused: full", now=100.0)
        burst.note("192.0.2.2", "connection refused: full", now=100.0)
        burst.note("192.0.2.3", "connection refused: full", now=100.0)  # over max_keys
        burst.flush(now=105.0)
        assert len(caplog.records) == 3
        burst.flush(now=111.0)
    lines = [record.getMessage() for record in caplog.records]
    assert lines[:3] == ["192.0.2.1: connection refused: full",
                         "192.0.2.2: connection refused: full",
                         "other addresses: connection refused: full"]
    assert lines[3:] == ["192.0.2.1: connection refused: full (499 more times in 11s)"]
