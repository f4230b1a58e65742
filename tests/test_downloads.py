"""RETR through the download pump (one thread reads COS and writes the data socket, off the
session's IO loop): the session stays responsive, every way a download ends frees the pump's
thread and descriptors, and what the pump does not serve (ASCII) still converts. Over a clear
data connection from plain-HTTP COS the pump splices (the bytes never enter the worker's
memory); a TLS data channel keeps pyftpdlib's path."""

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

from cosftp_prefork.cos.streams import SPLICEABLE

from .conftest import ALPHA, STANDARD_ACCOUNTS
from .ftps import tls_login
from .server_proc import FREE_PORT, ServerProcess, tls_network, wait_until
from .test_operating import scrape, value
from .test_reliability import faults  # noqa: F401  (the fixture)
from .tls_clients import write_certificate

MIB = 1024 * 1024


def _worker_of(server, ftp: ftplib.FTP) -> psutil.Process:
    """The worker process serving ``ftp``'s session."""
    client = ftp.sock.getsockname()
    for worker in psutil.Process(server.proc.pid).children():
        if any(conn.raddr and tuple(conn.raddr) == client for conn in worker.net_connections()):
            return worker
    raise AssertionError("no worker serves the session")


def _unread(conn: socket.socket) -> int:
    """Bytes the kernel holds for ``conn`` that the client has not read."""
    return struct.unpack("i", fcntl.ioctl(conn, termios.FIONREAD, b"\0\0\0\0"))[0]


def _drained(conn: socket.socket) -> int:
    """Read ``conn`` to its end and close it; the bytes read."""
    total = 0
    while chunk := conn.recv(MIB):
        total += len(chunk)
    conn.close()
    return total


def test_the_session_answers_while_the_download_waits_for_cos(alice, area, cos,
                                                              faults):  # noqa: F811
    """Before: the first GET ran in the session's IO loop, so a NOOP sent during it was
    answered only after the GET and the first chunk: its reply came after data. (RETR's
    first GET now comes before the 150; the one that waits here is the GET again after
    the first stream broke half-way.)"""
    data = os.urandom(2 * MIB)
    cos.put_object(Bucket=ALPHA, Key=area, Body=data)
    alice.voidcmd("TYPE I")
    faults(latency_ms=3000, reset_next=1)
    conn = alice.transfercmd(f"RETR {area}")  # the GET before the 150 waits 3 s too
    alice.sock.sendall(b"NOOP\r\n")
    assert alice.getline().startswith("200")
    received = bytearray()
    while select.select([conn], [], [], 0)[0] and (chunk := conn.recv(MIB)):
        received += chunk
    assert len(received) < len(data)  # the rest is not there yet: the GET again is waiting
    faults(latency_ms=0)
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
    worker = _worker_of(server, alice)
    threads, fds = worker.num_threads(), worker.num_fds()
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
            alice.sock.sendall(b"ABOR\r\n")
            replies = [alice.getline(), alice.getline()]
            assert replies[0].startswith("426") and replies[-1].startswith("226"), replies
            assert _drained(conn) < 64 * MIB  # the server closed its end: no more came
        assert alice.voidcmd("NOOP").startswith("200")
    wait_until(lambda: worker.num_threads() <= threads, what=f"threads back to {threads}")
    # The COS connection of a download cut short is dropped, not pooled: at most the one
    # the next request opens is new.
    wait_until(lambda: worker.num_fds() <= fds + 1, what=f"descriptors back to {fds}")


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


def test_a_client_that_stops_reading_is_cut_off_after_data_connection_timeout(
        emulator, tmp_path, cos, area):
    """The pump waits in a send that the client never lets through: after
    ``data_connection_timeout`` the session gets 421 and ends, and the pump's thread is gone
    (before: no such option; the 300 s of pyftpdlib)."""
    cos.put_object(Bucket=ALPHA, Key=area, Body=os.urandom(64 * MIB))
    with ServerProcess(str(tmp_path), emulator.port, STANDARD_ACCOUNTS,
                       optional={"data_connection_timeout": "2"}) as server:
        ftp = server.login("alice", "alice-pw")
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd(f"RETR {area}")
        wait_until(lambda: _unread(conn) >= 64 * 1024, what="data to pile up")
        worker = _worker_of(server, ftp)
        threads = worker.num_threads()  # the session's and the pump's among them
        assert ftp.getline() == "421 Data connection timed out."
        assert ftp.sock.recv(1) == b""  # the session ended too
        wait_until(lambda: worker.num_threads() <= threads - 2, what="both threads gone")
        conn.close()
        ftp.close()


@pytest.fixture(scope="module")
def relay_server(emulator, tmp_path_factory):
    """A server with FTPS and metrics, for how downloads go (``cosftp_downloads_relayed``)."""
    certs = write_certificate(tmp_path_factory.mktemp("certs"))
    proc = ServerProcess(str(tmp_path_factory.mktemp("relay")), emulator.port,
                         STANDARD_ACCOUNTS,
                         network={**tls_network(*certs), "metrics_port": FREE_PORT})
    with proc:
        yield proc


def _relayed(server) -> dict[str, float]:
    samples = scrape(server)
    return {how: value(samples, "cosftp_downloads_relayed_total", how=how)
            for how in ("splice", "copy")}


def _retr(ftp: ftplib.FTP, path: str, rest: int = 0) -> bytes:
    received = bytearray()
    ftp.retrbinary(f"RETR {path}", received.extend, rest=rest or None)
    return bytes(received)


@pytest.mark.skipif(not SPLICEABLE, reason="splice(2) needs Python 3.10: copied")
def test_a_clear_binary_download_is_spliced_whole_from_its_rest_offset(relay_server, cos,
                                                                        area):
    """Plain-HTTP COS to a clear data connection: the pump splices (the metric says so)
    and the bytes are the object's, whole and from a REST offset (before: every download
    was copied through the worker, and no such metric)."""
    data = os.urandom(5 * MIB + 3)
    cos.put_object(Bucket=ALPHA, Key=area, Body=data)
    before = _relayed(relay_server)
    ftp = relay_server.login("alice", "alice-pw")
    assert _retr(ftp, area) == data
    assert _retr(ftp, area, rest=MIB + 7) == data[MIB + 7:]
    ftp.quit()
    after = _relayed(relay_server)
    assert after["splice"] - before["splice"] == 2 and after["copy"] == before["copy"]


@pytest.mark.parametrize("protected", [True, False])
def test_a_tls_data_channel_is_not_spliced(relay_server, cos, area, protected):
    """FTPS: a protected data channel (PROT P) is sent by pyftpdlib's TLS path, never
    spliced; with a clear data channel (PROT C) under a TLS session the pump splices."""
    data = os.urandom(3 * MIB + 1)
    cos.put_object(Bucket=ALPHA, Key=area, Body=data)
    before = _relayed(relay_server)
    ftp = tls_login(relay_server, STANDARD_ACCOUNTS[0], prot_p=protected)
    assert _retr(ftp, area) == data
    ftp.quit()
    after = _relayed(relay_server)
    clear = not protected  # copied where splice(2) cannot be had (Python 3.9)
    assert after["splice"] - before["splice"] == (1 if clear and SPLICEABLE else 0)
    assert after["copy"] - before["copy"] == (1 if clear and not SPLICEABLE else 0)
