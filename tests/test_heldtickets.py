"""``HeldTicketsConnection`` (``ftp/heldtickets.py``) on a real socket with a real TLS
client: what a download's writes cost it in Python exceptions."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import sys
import threading

from OpenSSL import SSL

from cosftp_prefork.config.tls import load_server_tls
from cosftp_prefork.ftp.heldtickets import HeldTicketsConnection
from cosftp_prefork.ftp.tls import server_contexts

from .tls_clients import client_context, handshake_over, write_certificate

CHUNK = 64 * 1024  # what pyftpdlib's data channel hands send() at a time
CHUNKS = 16
MIB = 1024 * 1024


def handshake(tls: HeldTicketsConnection, sock: socket.socket) -> None:
    """Finish the server's handshake, waiting on ``sock`` whenever the connection asks."""
    while True:
        try:
            tls.do_handshake()
            break
        except SSL.WantReadError:
            select.select([sock], [], [])
        except SSL.WantWriteError:
            select.select([], [sock], [])


def close(tls: HeldTicketsConnection, sock: socket.socket) -> None:
    """Send the server's closing alert, waiting on ``sock`` while the socket is full."""
    while True:
        try:
            tls.shutdown()
            break
        except SSL.WantWriteError:
            select.select([], [sock], [])


def served(tls: HeldTicketsConnection, sock: socket.socket,
           data: bytes) -> tuple[int, int]:
    """Finish the handshake, send ``data`` as pyftpdlib does (``CHUNK`` at most at a time,
    then what ``send`` did not take: a record's worth, OpenSSL's partial writes) and close,
    waiting on the socket whenever the connection asks; return how many
    ``SSL.WantReadError`` reached ``HeldTicketsConnection._take`` (a memory buffer read
    empty) during the writes, and the number of writes."""
    handshake(tls, sock)
    caught = 0

    def trace(frame, event, arg):
        if frame.f_code is HeldTicketsConnection._take.__code__:
            return count
        return None

    def count(frame, event, arg):
        nonlocal caught
        if event == "exception" and arg[0] is SSL.WantReadError:
            caught += 1
        return count

    writes = 0
    sys.settrace(trace)
    try:
        start = 0
        while start < len(data):
            try:
                start += tls.send(data[start:start + CHUNK])
                writes += 1
            except SSL.WantWriteError:
                select.select([], [sock], [])
    finally:
        sys.settrace(None)
    close(tls, sock)
    return caught, writes


def download(tmp_path) -> tuple[int, int]:
    """Serve ``CHUNKS`` of ``CHUNK`` random bytes to a Python TLS 1.3 client over a
    socketpair, through a data connection's ``HeldTicketsConnection``; check the client
    got every byte, and return ``served``'s counts (exceptions in ``_take``, writes)."""
    _, data_context = server_contexts(load_server_tls(*write_certificate(tmp_path)))
    server_sock, client_sock = socket.socketpair()
    server_sock.setblocking(False)
    data = os.urandom(CHUNK * CHUNKS)
    received: list[bytes] = []
    versions: list[str] = []

    def client() -> None:
        with client_context().wrap_socket(client_sock, server_hostname="127.0.0.1") as conn:
            versions.append(conn.version())
            while chunk := conn.recv(CHUNK):
                received.append(chunk)

    reader = threading.Thread(target=client)
    reader.start()
    try:
        counts = served(HeldTicketsConnection(data_context, server_sock), server_sock, data)
    finally:
        server_sock.close()
        reader.join()
    assert versions == ["TLSv1.3"]
    assert b"".join(received) == data
    return counts


def test_a_download_raises_no_exception_per_write(tmp_path):
    """Each write of a download took what OpenSSL wrote until reading the empty memory
    buffer raised ``WantReadError``, and looked for leftovers the same way before writing:
    two exceptions raised and caught per write, part of the tenth more CPU per GiB that
    TLS data connections cost (docs/performance.md). Now none, and the client still gets
    every byte, in TLS 1.3 with its tickets."""
    caught, writes = download(tmp_path)
    assert caught == 0, f"{caught} exceptions in {writes} writes"


def test_a_write_takes_the_whole_buffer(tmp_path):
    """pyOpenSSL's contexts allow partial writes, so each ``send`` took one TLS record (16
    KiB) of pyftpdlib's 64 KiB buffer: four rounds of Python calls, flushes and socket
    sends per buffer. Now one: each write takes all it is given."""
    _, writes = download(tmp_path)
    assert writes == CHUNKS


class CountedSends:
    """A socket whose ``send`` counts the calls the kernel took only part of."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.partial = 0

    def send(self, data) -> int:
        sent = self._sock.send(data)
        self.partial += sent < len(data)
        return sent

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def test_a_download_the_socket_takes_in_parts_arrives_whole_and_in_order(tmp_path):
    """Writes of 1 MiB (the data channel's chunk) to a client whose socket takes a few
    hundred KiB at a time: the socket takes each buffer of records in several sends, and
    what a send leaves is queued as a view of the rest (it was a copy of the rest at each
    send). The client gets every byte, in order."""
    _, data_context = server_contexts(load_server_tls(*write_certificate(tmp_path)))
    server_sock, client_sock = socket.socketpair()
    server_sock.setblocking(False)
    data = os.urandom(4 * MIB)
    received = bytearray()

    def client() -> None:
        with client_context().wrap_socket(client_sock, server_hostname="127.0.0.1") as conn:
            while chunk := conn.recv(CHUNK):
                received.extend(chunk)

    reader = threading.Thread(target=client)
    reader.start()
    counted = CountedSends(server_sock)
    try:
        tls = HeldTicketsConnection(data_context, counted)
        handshake(tls, server_sock)
        start = 0
        while start < len(data):
            try:
                start += tls.send(data[start:start + MIB])
            except SSL.WantWriteError:
                select.select([], [server_sock], [])
        close(tls, server_sock)
    finally:
        server_sock.close()
        reader.join()
    assert counted.partial > 0  # the case at hand: sends the socket took in part
    assert received == data


def upload(tmp_path, data: bytes, bufsiz: int) -> tuple[list[bytes], list[bool], int]:
    """A TLS 1.3 client writes ``data`` and its closing alert, all in the socket before the
    server reads a byte, then waits for the server's alert, as ftplib does after a STOR. The
    server reads as the data channel does: ``recv(bufsiz)`` once the socket is readable, or
    at once while the connection holds input (``input_held``), until the end of the stream.
    Return what each ``recv`` returned, ``input_held`` after each, and how many times the
    server found the socket readable (at most 30 s each)."""
    _, data_context = server_contexts(load_server_tls(*write_certificate(tmp_path)))
    server_sock, client_sock = socket.socketpair()
    server_sock.setblocking(False)
    written = threading.Event()

    def client() -> None:
        tls, incoming, outgoing = handshake_over(client_sock)
        tls.write(data)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.unwrap()  # the alert goes into ``outgoing``; the server's is awaited
        client_sock.sendall(outgoing.read())
        written.set()
        while chunk := client_sock.recv(65536):
            incoming.write(chunk)
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()
                return

    writer = threading.Thread(target=client)
    writer.start()
    returned: list[bytes] = []
    held: list[bool] = []
    readable = 0
    try:
        tls = HeldTicketsConnection(data_context, server_sock)
        handshake(tls, server_sock)
        assert written.wait(30)
        while True:
            if not tls.input_held():
                if not select.select([server_sock], [], [], 30)[0]:
                    break  # nothing came: the input is in memory, unannounced
                readable += 1
            try:
                returned.append(tls.recv(bufsiz))
            except SSL.WantReadError:
                continue
            except SSL.ZeroReturnError:
                break
            finally:
                held.append(tls.input_held())
        close(tls, server_sock)
    finally:
        server_sock.close()
        writer.join()
    return returned, held, readable


UPLOAD = 6 * 16384 + 5  # six records and a byte or five: the client's socket takes it all


def test_one_read_of_an_upload_brings_every_record_in_the_socket(tmp_path):
    """An upload's reads took a record each, in four Python exceptions (OpenSSL asking for
    the record's header, then for its body, and twice a look for what it wrote meanwhile),
    part of what TLS uploads cost more per GiB (docs/performance.md). One ``recv`` now
    returns every record one read of the socket brought; the closing alert that came with
    them is held (``input_held``) and ends the stream at the next call, with nothing more
    from the socket: the client waits for the server's alert before it closes."""
    data = os.urandom(UPLOAD)
    returned, held, readable = upload(tmp_path, data, 1024 * 1024)
    assert returned == [data]
    assert held == [True, False]
    assert readable == 1


def test_an_upload_read_in_small_parts_needs_no_more_of_the_socket(tmp_path):
    """The data channel asks for less than a record when its upload has less room (a part
    buffer nearly full, a rate limit): what one read of the socket brought is returned over
    the next calls, which the connection says it holds, in order, then the end."""
    data = os.urandom(UPLOAD)
    returned, held, readable = upload(tmp_path, data, 1000)
    assert b"".join(returned) == data
    assert [len(piece) for piece in returned[:-1]] == [1000] * (len(returned) - 1)
    assert held == [True] * len(returned) + [False]
    assert readable == 1
