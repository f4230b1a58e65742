"""FTPS: TLS streams that end without the client's closing alert (close_notify), on control
and data connections, on both TLS servers (conftest.py's ``ftps_server``)."""

from __future__ import annotations

import ftplib
import os
import socket
import ssl
import struct
from typing import Callable, Optional

import pytest

from .conftest import ALPHA, PLAIN, _close
from .ftps import MIB, reuse_login
from .server_proc import ServerProcess, wait_until
from .test_master import live_children, master_of
from .test_transfers import start_upload

# --- TLS streams that end without the client's closing alert (close_notify)


def worker_cpu(server: ServerProcess) -> float:
    """CPU seconds (user and system) the server's workers used so far."""
    return sum(sum(worker.cpu_times()[:2]) for worker in live_children(master_of(server)))


def end_without_close_notify(tls_sock: ssl.SSLSocket, how: str) -> Optional[socket.socket]:
    """End the TCP connection under ``tls_sock`` without TLS's closing alert: ``fin`` closes
    it, ``rst`` resets it (SO_LINGER 0), ``half`` shuts its sending side only and returns
    the socket, still open (the caller closes it)."""
    raw = socket.socket(fileno=tls_sock.detach())
    if how == "half":
        raw.shutdown(socket.SHUT_WR)
        return raw
    if how == "rst":
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    return None


def session_address(ftp: ftplib.FTP) -> str:
    """The client's address as pyftpdlib's log lines of its session name it."""
    host, port = ftp.sock.getsockname()[:2]
    return f"{host}:{port}"


SHUTDOWN_ATTEMPT = "_do_ssl_shutdown"  # pyftpdlib's DEBUG line at each TLS shutdown attempt
# At most one per connection ended (the control connection's, the data connection's).
ATTEMPTS = 2


def effort_until_quiet(server: ServerProcess, clock: ftplib.FTP, end: Callable[[], None],
                       handled: Optional[str]) -> tuple[float, int]:
    """Run ``end`` (a connection ending without close_notify), wait for the log line
    ``handled`` (the server handled that end), then let ``clock``'s session make 100 NOOP
    round trips; return the CPU seconds the workers spent from ``end`` on and the TLS
    shutdown attempts they logged meanwhile.

    A worker that spins on a refused shutdown logs an attempt at each turn of its IO loop
    and burns a core until something closes the connection (pyftpdlib's data timeout, 300
    s, before the transfer's reply): the wait ends as soon as the attempts exceed
    ``ATTEMPTS``."""
    log_size = len(server.log_text())
    spent = worker_cpu(server)
    end()
    if handled is not None:
        wait_until(lambda: handled in server.log_text()[log_size:] or
                   server.log_text()[log_size:].count(SHUTDOWN_ATTEMPT) > ATTEMPTS,
                   what=f"the log line {handled!r}")
    for _ in range(100):
        clock.voidcmd("NOOP")
    attempts = server.log_text()[log_size:].count(SHUTDOWN_ATTEMPT)
    return worker_cpu(server) - spent, attempts


# Seconds of worker CPU for one connection's end and the 100 round trips after it: about
# 0.1 here. A spin that logs is caught by its attempts first; one that does not holds the
# reply back until the data timeout (300 s), and ``wait_until`` gives up first.
QUIET_CPU = 2.0


# (a reset and the end right after QUIT's 221 were measured quiet too, by hand: the
# session closes its socket whatever the shutdown gave; kept out to spare the suite)
@pytest.mark.parametrize("moment", ["idle", "during upload"])
@pytest.mark.parametrize("how", ["fin", "half"])
def test_control_connection_ended_without_close_notify_goes_quiet(ftps_server, cos, area,
                                                                  moment, how):
    """A control connection the client ends without close_notify (a close, a half-close keeping
    the socket open) in the middle of a session or while an upload runs: the session closes
    after at most one TLS shutdown attempt and the worker goes quiet. When the socket still
    takes writes (the client half-closed it) OpenSSL refuses that shutdown with an empty
    ``SSL.Error``, as on data connections, but pyftpdlib's control channel closes its socket
    after the attempt whatever came of it (``TLS_FTPHandler.close``)."""
    server = ftps_server
    clock = reuse_login(server, PLAIN)
    ftp = reuse_login(server, PLAIN)
    address = session_address(ftp)
    kept: list[socket.socket] = []

    def end() -> None:
        if moment == "during upload":
            kept.append(start_upload(ftp, cos, area, 2 * MIB))
        raw = end_without_close_notify(ftp.sock, how)
        if raw is not None:
            kept.append(raw)

    try:
        cpu, attempts = effort_until_quiet(server, clock, end,
                                           f"{address}-[{PLAIN.user}] FTP session closed")
    finally:
        for sock in kept:
            sock.close()
    assert attempts <= ATTEMPTS, f"{attempts} TLS shutdown attempts ({cpu:.2f} s of CPU)"
    assert cpu < QUIET_CPU
    _close(clock)


DATA_ENDS = [
    # (command, the client reads or sends everything first, how it ends, the reply)
    ("STOR", True, "fin", "226"),  # stream mode: the end of the connection is the file's
    ("STOR", True, "half", "226"),
    ("STOR", False, "rst", "426"),
    ("RETR", False, "fin", "426"),
    ("RETR", False, "rst", "426"),
    ("RETR", False, "half", None),  # the client reads no more: the download waits
    ("LIST", True, "fin", "226"),
    ("LIST", True, "rst", "226"),
]


@pytest.mark.parametrize("command, whole, how, reply", DATA_ENDS)
def test_data_connection_ended_without_close_notify_goes_quiet(ftps_server, cos, area,
                                                               command, whole, how, reply):
    """A PROT P upload, download or listing whose data connection the client ends without
    close_notify: the transfer's reply comes at once and the worker goes quiet, on TLS 1.3
    data connections and on TLS 1.2 ones resuming the control connection's session
    (``require_ssl_reuse``). OpenSSL refuses to shut down a stream that ended so (an empty
    ``SSL.Error`` at each call), and pyftpdlib's data channel tried again at each turn of
    its IO loop until its timeout (30 s of a core and of DEBUG lines, then the 226)."""
    server = ftps_server
    cos.put_object(Bucket=ALPHA, Key=f"{area}_big", Body=os.urandom(8 * MIB))
    clock = reuse_login(server, PLAIN)
    ftp = reuse_login(server, PLAIN)
    ftp.voidcmd("TYPE I")
    address = session_address(ftp)
    kept: list[socket.socket] = []

    def end() -> None:
        target = {"STOR": area, "RETR": f"{area}_big", "LIST": ""}[command]
        conn = ftp.transfercmd(f"{command} {target}".strip())
        if command == "STOR":
            conn.sendall(os.urandom(MIB if whole else 64 * 1024))
        elif whole:
            while conn.recv(65536):
                pass
        else:
            conn.recv(1000)
        raw = end_without_close_notify(conn, how)
        if raw is not None:
            kept.append(raw)

    handled = None if reply is None else f"{address}-[{PLAIN.user}] -> {reply}"
    try:
        cpu, attempts = effort_until_quiet(server, clock, end, handled)
        assert attempts <= ATTEMPTS, f"{attempts} TLS shutdown attempts ({cpu:.2f} s of CPU)"
        assert cpu < QUIET_CPU
        if reply is not None:
            assert ftp.getline().startswith(reply)
    finally:
        # Its session closes its data connection: a spinning one would go on into the
        # next test of the module's server.
        for sock in kept:
            sock.close()
        ftp.close()
    _close(clock)
