"""The test harness's own promises: a test talks to the server it started."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
import threading
import urllib.request

import pytest

from . import server_proc
from .auth_service import AuthService
from .conftest import ALPHA
from .hook_receiver import Receiver
from .server_proc import (
    FREE_PORT,
    TEST_PASSIVE_PORTS,
    Account,
    ServerProcess,
    closed_port,
    connection_refused,
    listens,
    passive_ports,
    release_port,
    start_listening,
    wait_until,
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


def test_a_daemon_whose_port_was_taken_starts_on_another(taken_first, daemon):
    """The ``daemon`` fixture (``cosftpctl start``): its master found the port its config
    names taken and exited, "Address already in use"; the start chose another."""
    assert daemon.port != taken_first
    assert listens(daemon.daemon_pid(), daemon.port)


def test_a_daemon_started_again_on_another_port_keeps_what_the_test_added_to_its_config(
        taken_first, emulator, tmp_path):
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("u", "p", ALPHA)])
    proc.write_config()
    with open(proc.config_path, "a", encoding="utf-8") as handle:
        handle.write(Account("late", "late-pw", ALPHA).section(1, emulator.port))
    started = proc.start_daemon()
    try:
        assert started.returncode == 0, started.stderr
        assert proc.port != taken_first and listens(proc.daemon_pid(), proc.port)
        proc.login("late", "late-pw").quit()
    finally:
        proc.ensure_stopped(proc.daemon_pid())


def test_a_daemon_whose_given_port_is_taken_fails_to_start(emulator, tmp_path,
                                                            foreign_listener):
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("u", "p", ALPHA)],
                         port=foreign_listener)
    started = proc.start_daemon()
    assert started.returncode == 1 and "Address already in use" in started.stderr
    assert proc.port == foreign_listener


def test_a_port_its_chooser_gave_is_chosen_again_by_it_if_it_was_taken(emulator, tmp_path,
                                                                       foreign_listener):
    """As a test of a privileged port chooses one below 1024 (test_privileges)."""
    answers = iter([foreign_listener])
    server = ServerProcess(str(tmp_path), emulator.port, [Account("u", "p", ALPHA)],
                           choose_port=lambda: next(answers, 0) or server_proc.free_port())
    with server:
        assert server.port != foreign_listener and listens(server.proc.pid, server.port)


def _ephemeral_ports() -> range:
    """The ports the kernel gives to connect() and bind(0) (ip_local_port_range)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
        low, high = map(int, handle.read().split())
    return range(low, high + 1)


def test_passive_ports_are_none_the_kernel_gives_a_client_or_free_port(server):
    """A passive listener in the ephemeral range takes the port free_port() has just chosen
    for another test file's process (which then loses it), and a client's connection the
    passive port a server would pick."""
    with open(server.config_path, encoding="utf-8") as handle:
        low, high = map(int, re.search(r"^passive_port = (\d+),(\d+)$", handle.read(),
                                       re.MULTILINE).groups())
    ephemeral = _ephemeral_ports()
    assert high < ephemeral.start or low > ephemeral.stop - 1, (low, high, ephemeral)
    ftp = server.login("alice", "alice-pw")
    try:
        assert low <= ftp.makepasv()[1] <= high
    finally:
        ftp.quit()


def test_each_xdist_worker_has_passive_ports_of_its_own(monkeypatch):
    """Six workers (3 per core on the 2-core CI machine): test files running at once never
    pick each other's passive ports."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "6")
    shares = []
    for index in range(6):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        low, high = passive_ports()
        shares.append(set(range(low, high + 1)))
    assert all(share <= set(TEST_PASSIVE_PORTS) for share in shares)
    assert sum(map(len, shares)) == len(set().union(*shares))  # no port in two shares


def test_a_client_reset_at_a_fake_service_leaves_nothing_on_stderr(capfd):
    """The auth hook's service (and the admin console tests' page) saw clients reset: the
    server under test giving up on a slow hook. socketserver printed a line of dashes and
    a traceback to stderr, between the run's results."""
    service = AuthService().start()
    try:
        with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
            sock.sendall(b"POST /auth HTTP/1.1\r\nHost: x\r\n")  # its header not ended
            wait_until(lambda: service._server.handling, what="the connection accepted")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until(lambda: not service._server.handling, what="the connection's thread done")
    finally:
        service.stop()
    assert capfd.readouterr().err == ""


def test_stopping_a_daemon_kills_no_process_that_took_its_old_pid(emulator, tmp_path):
    # A master's pid read before it stopped may be another process's a minute later (the
    # kernel's pid_max is often 32768, and the suite starts hundreds of processes a second)
    stranger = subprocess.Popen([sys.executable, "-c", "print(input(), flush=True)"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ServerProcess(str(tmp_path), emulator.port, []).ensure_stopped(stranger.pid)
        stranger.stdin.write("still here\n")
        stranger.stdin.flush()
        assert stranger.stdout.readline() == "still here\n"
    finally:
        stranger.kill()
        stranger.communicate()
