"""The test harness's own promises: a test talks to the server it started."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

from . import server_proc
from .conftest import ALPHA
from .hook_receiver import Receiver
from .server_proc import (
    FREE_PORT,
    Account,
    ServerProcess,
    closed_port,
    connection_refused,
    listens,
    release_port,
    start_listening,
)


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


@pytest.fixture
def taken_first(monkeypatch, foreign_listener):
    """free_port's first answer is the foreign listener's port (bound by someone else the
    moment after it was seen free, as a parallel test file's server may), later ones are
    free. Yields that taken port."""
    answers = iter([foreign_listener])
    real = server_proc.free_port
    monkeypatch.setattr(server_proc, "free_port", lambda: next(answers, None) or real())
    yield foreign_listener


def _http_server(port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_process_that_lost_its_port_is_started_again_on_another(taken_first):
    proc, (port,) = start_listening(_http_server, "http.server")
    try:
        assert port != taken_first and listens(proc.pid, port)
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_lost_the_port_it_was_given_is_an_error(foreign_listener):
    with pytest.raises(AssertionError, match=r"http.server exited with 1 before it listened"):
        start_listening(_http_server, "http.server", (foreign_listener,))


def test_a_servers_metrics_port_taken_before_it_bound_it_is_chosen_again(
        emulator, tmp_path, monkeypatch, foreign_listener):
    """The master stops when a helper's port is in use: with FREE_PORT the start takes
    another, and what answers there is this server's exporter."""
    real = server_proc.free_port
    answers = iter([real(), foreign_listener])  # the FTP port, then the metrics port
    monkeypatch.setattr(server_proc, "free_port", lambda: next(answers, None) or real())
    server = ServerProcess(str(tmp_path), emulator.port, [Account("u", "p", ALPHA)],
                           network={"metrics_port": FREE_PORT})
    with server:
        assert server.metrics_port != foreign_listener
        assert listens(server.proc.pid, server.metrics_port)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                    timeout=30) as answer:
            assert b"cosftp_" in answer.read()


def test_a_closed_port_refuses_connections_and_nobody_can_listen_there():
    port = closed_port()
    try:
        assert connection_refused(port)
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError, match="Address already in use"):
                other.bind(("127.0.0.1", port))
    finally:
        release_port(port)


def test_a_hook_receiver_keeps_its_port_closed_until_it_runs(tmp_path):
    """A server's config names the receiver's URL before it runs: no other test file's
    receiver may take the events meanwhile."""
    receiver = Receiver(str(tmp_path / "received.jsonl"), "secret")
    assert connection_refused(receiver.port)
    with socket.socket() as other, pytest.raises(OSError, match="Address already in use"):
        other.bind(("127.0.0.1", receiver.port))
    receiver.start()
    try:
        assert listens(receiver.proc.pid, receiver.port)
    finally:
        receiver.kill()
