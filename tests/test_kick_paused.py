"""A session paused because its client reads no replies (``ftp.backpressure``) obeys a kick
at once: the kick wakes its thread (``kick_arrived``), which closes the connection before it
sends another byte, and ends.

No clock is read. The client starts reading only once the server logged the kick: a session
that saw the kick at once was closed by then (a reset, its unsent replies dropped), and the
client gets what its own receive buffer held at the kick, nothing more. A session that had
not seen it yet goes on sending its queued replies as the client takes them.
"""

from __future__ import annotations

import fcntl
import os
import socket
import ssl
import struct
import termios
import threading
from collections.abc import Iterator
from contextlib import suppress

import pytest

from .admin_client import AdminClient, admin_server, admin_url
from .crowds import tcp_queues, unread_session, workers_of
from .server_proc import ServerProcess, tls_network, wait_until
from .tls_clients import client_context, write_certificate

SOURCE = "127.0.0.5"
# What may follow the kick: the rest of the HELP reply being sent (437 bytes) and the 421
# (in TLS records over TLS).
AFTER_KICK = 437 + 256


def flooding_session(port: int, tls: bool) -> socket.socket:
    """A control connection from ``SOURCE``, with a small receive buffer, greeted (and
    encrypted by AUTH TLS if ``tls``), that then sent HELP over and over (as much as the
    server took at once, 8 MiB at most) and read no reply. Returned: its socket, in clear
    (what the kernel holds, TLS records or not)."""
    sock = unread_session(port, SOURCE)
    replies = sock.makefile("rb")
    sender = sock
    if tls:
        sock.sendall(b"AUTH TLS\r\n")
        assert replies.readline().startswith(b"234")
        sender = client_context().wrap_socket(sock, server_hostname="127.0.0.1")
    sender.setblocking(False)
    block, sent = b"HELP\r\n" * (65536 // 6), 0
    with suppress(BlockingIOError, ssl.SSLWantWriteError):
        while sent < 8 * 1024 * 1024:
            sent += sender.send(block)
    raw = socket.socket(fileno=os.dup(sender.fileno()))
    sender.close()
    raw.settimeout(60)
    return raw


def received_unread(sock: socket.socket) -> int:
    """Bytes in the socket's receive buffer, not read yet."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0]


def read_to_the_end(sock: socket.socket) -> int:
    """Read until the end of file or a reset; return the bytes read."""
    got = 0
    with suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            got += len(chunk)
    return got


@pytest.fixture(scope="module")
def kicking(emulator, tmp_path_factory) -> Iterator[tuple[ServerProcess, str]]:
    """The file's server, with FTPS (a session may stay in clear) and the admin API (then
    HTTPS only), one worker; and its certificate. Each test's session is from ``SOURCE``,
    and gone when it ends."""
    workdir = tmp_path_factory.mktemp("kicking")
    cert, key = write_certificate(workdir)
    with admin_server(str(workdir / "srv"), emulator.port, network=tls_network(cert, key),
                      worker_processes="1", log_level="INFO") as proc:
        yield proc, cert


@pytest.mark.parametrize("tls", [False, True], ids=["clear", "tls"])
def test_a_kicked_session_that_reads_no_replies_sends_only_the_reply_begun_then_421(kicking, tls):
    """Before: a paused session looked for a kick once a second (``KICK_CHECK_INTERVAL``);
    until then, and as its client took replies, it sent them: 1,777,637 to 2,203,621 bytes
    after the kick, where its client's buffer held 4,069."""
    proc, cert = kicking
    logged_before = len(proc.log_text())

    def logged(text: str) -> bool:
        return text in proc.log_text()[logged_before:]

    with flooding_session(proc.port, tls) as sock:
        [worker] = workers_of(proc.proc.pid)
        wait_until(lambda: logged(f"ip={SOURCE}] cosftp_prefork.ftp.backpressure: the client "
                                  "reads no replies"), what="the session to stop reading")
        threads = worker.num_threads()
        # with a certificate the admin API is HTTPS only
        api = AdminClient(admin_url(proc, "https"), verify=cert)
        [session] = api.get("/sessions")["sessions"]
        answers = []
        # the API answers once the session is gone (or 5 s passed): the client must be
        # free to read meanwhile
        kicker = threading.Thread(target=lambda: answers.append(
            api.call("DELETE", f"/sessions/{session['id']}")))
        kicker.start()
        try:
            wait_until(lambda: logged(f"{SOURCE}: closed: the admin API asked to close "
                                      "session"), what="the kick")
            # What the server wrote before the kick: its kernel's send queue (which drains
            # into the client as it reads, whenever the session's thread closes), then what
            # the client's buffer holds; after them at most the rest of the reply it was
            # sending and the 421 (the kick's reason, in TLS records over TLS) before the end.
            written = tcp_queues(proc.port, sock.getsockname()[1])[0] + received_unread(sock)
            assert read_to_the_end(sock) - written <= AFTER_KICK, \
                "the kicked session sent more replies"
        finally:
            kicker.join()
        assert answers[0].status_code == 200, answers[0].text
        wait_until(lambda: worker.num_threads() < threads, what="the session's thread to end")
