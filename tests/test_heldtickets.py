"""``HeldTicketsConnection`` (``ftp/heldtickets.py``) on a real socket with a real TLS
client: what a download's writes cost it in Python exceptions."""

from __future__ import annotations

import os
import select
import socket
import sys
import threading

from OpenSSL import SSL

from cosftp_prefork.config.tls import load_server_tls
from cosftp_prefork.ftp.heldtickets import HeldTicketsConnection
from cosftp_prefork.ftp.tls import server_contexts

from .tls_clients import client_context, write_certificate

CHUNK = 64 * 1024  # what pyftpdlib's data channel hands send() at a time
CHUNKS = 16


def served(tls: HeldTicketsConnection, sock: socket.socket,
           data: bytes) -> tuple[int, int]:
    """Finish the handshake, send ``data`` as pyftpdlib does (``CHUNK`` at most at a time,
    then what ``send`` did not take: a record's worth, OpenSSL's partial writes) and close,
    waiting on the socket whenever the connection asks; return how many
    ``SSL.WantReadError`` reached ``HeldTicketsConnection._take`` (a memory buffer read
    empty) during the writes, and the number of writes."""
    while True:
        try:
            tls.do_handshake()
            break
        except SSL.WantReadError:
            select.select([sock], [], [])
        except SSL.WantWriteError:
            select.select([], [sock], [])
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
    while True:
        try:
            tls.shutdown()
            break
        except SSL.WantWriteError:
            select.select([], [sock], [])
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
