"""The test harness's own promises: a test talks to the server it started."""

from __future__ import annotations

import socket
import threading

import pytest

from .conftest import ALPHA
from .server_proc import Account, ServerProcess


@pytest.fixture
def foreign_listener():
    """A port held by someone else's FTP server: it greets every connection with 220."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopping = threading.Event()

    def greet() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.sendall(b"220 someone else's server\r\n")

    thread = threading.Thread(target=greet, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stopping.set()
    thread.join()
    listener.close()


def test_a_server_that_could_not_bind_is_not_taken_for_the_one_on_its_port(
        emulator, tmp_path, foreign_listener):
    """Files run in parallel: the port free_port() chose can be taken by another file's
    server before this one binds it. Its 220 must not pass for this server's (a bench login
    once met that other server's 530), start() must see this server fail to bind."""
    server = ServerProcess(str(tmp_path), emulator.port, [Account("u", "p", ALPHA)],
                           port=foreign_listener)
    with pytest.raises(AssertionError, match="Address already in use"):
        server.start()
    assert server.proc.poll() is not None
