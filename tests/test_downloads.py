"""RETR through the download pump (one thread reads COS and writes the data socket, off the
session's IO loop): the session stays responsive, every way a download ends frees the pump's
thread and descriptors, and what the pump does not serve (ASCII) still converts."""

from __future__ import annotations

import fcntl
import ftplib
import os
import select
import socket
import struct
import termios

import psutil
import pytest

from .conftest import ALPHA
from .server_proc import wait_until
from .test_reliability import faults  # noqa: F401  (the fixture)
from .test_transfers import abort_transfer

MIB = 1024 * 1024


def _workers(server) -> list[psutil.Process]:
    return psutil.Process(server.proc.pid).children()


def _threads(server) -> int:
    return sum(worker.num_threads() for worker in _workers(server))


def _fds(server) -> int:
    return sum(worker.num_fds() for worker in _workers(server))


def _unread(conn: socket.socket) -> int:
    """Bytes the kernel holds for ``conn`` that the client has not read."""
    return struct.unpack("i", fcntl.ioctl(conn, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_the_session_answers_while_the_download_waits_for_cos(alice, area, cos,
                                                              faults):  # noqa: F811
    """Before: the first GET ran in the session's IO loop, so a NOOP sent during it was
    answered only after the GET and the first chunk: its reply came after data."""
    data = os.urandom(2 * MIB)
    cos.put_object(Bucket=ALPHA, Key=area, Body=data)
    alice.voidcmd("TYPE I")
    faults(latency_ms=3000)
    conn = alice.transfercmd(f"RETR {area}")  # the HEAD before the 150 waits 3 s too
    alice.sock.sendall(b"NOOP\r\n")
    assert alice.getline().startswith("200")
    assert select.select([conn], [], [], 0)[0] == []  # nothing yet: the GET is waiting
    faults(latency_ms=0)
    received = bytearray()
    while chunk := conn.recv(MIB):
        received += chunk
    conn.close()
    assert alice.voidresp().startswith("226") and bytes(received) == data


@pytest.mark.parametrize("end", ["ABOR", "reset", "ABOR while the client reads nothing"])
def test_a_download_cut_short_frees_its_thread_and_sockets(server, alice, area, cos, end):
    """ABOR, a reset, and ABOR while the pump waits in a send (the client reads nothing and
    the socket buffers are full): the session goes on, and nothing stays behind."""
    cos.put_object(Bucket=ALPHA, Key=area, Body=os.urandom(64 * MIB))
    alice.voidcmd("TYPE I")
    threads, fds = _threads(server), _fds(server)
    for _ in range(3):
        conn = alice.transfercmd(f"RETR {area}")
        if end == "ABOR while the client reads nothing":
            wait_until(lambda conn=conn: _unread(conn) >= 64 * 1024, what="data to pile up")
        else:
            assert conn.recv(MIB)
        if end == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            with pytest.raises(ftplib.error_temp, match="426"):
                alice.voidresp()
        else:
            replies = abort_transfer(alice, conn)
            assert replies[0].startswith("426") and replies[-1].startswith("226"), replies
        assert alice.voidcmd("NOOP").startswith("200")
    wait_until(lambda: _threads(server) <= threads, what=f"threads back to {threads}")
    # The COS connection of a download cut short is dropped, not pooled: at most the one
    # the next request opens is new.
    wait_until(lambda: _fds(server) <= fds + 1, what=f"descriptors back to {fds}")


def test_ascii_download_converts_line_ends(alice, area, cos):
    """TYPE A is not pumped: the producer converts LF to CRLF."""
    cos.put_object(Bucket=ALPHA, Key=area, Body=b"one\ntwo\r\nthree\n" * 100_000)
    alice.voidcmd("TYPE A")
    received = bytearray()
    with alice.transfercmd(f"RETR {area}") as conn:  # retrbinary would send TYPE I
        while chunk := conn.recv(MIB):
            received += chunk
    assert alice.voidresp().startswith("226")
    assert bytes(received) == b"one\r\ntwo\r\nthree\r\n" * 100_000
