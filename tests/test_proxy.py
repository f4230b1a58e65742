"""PROXY protocol (``[NETWORK] proxy_protocol``, ``proxy_allowed``): a balancer's header
gives the session the client's address (logs, bans, data connections, xferlog); a header
from anyone else, a malformed one, or none where required closes the connection."""

from __future__ import annotations

import ftplib
import io
import ipaddress
import os
import socket
import struct

import pytest

from .conftest import ALPHA
from .server_proc import Account, ServerProcess, free_port, wait_until
from .test_tls import client_context, implicit_port, tls_network, write_certificate

BALANCER = "127.0.0.5"  # the address the test's "load balancer" connects from
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1_header(client: str, port: int = 40000, server: str = "127.0.0.1") -> bytes:
    return f"PROXY TCP4 {client} {server} {port} 21\r\n".encode()


def v2_header(client: str, port: int = 40000, server: str = "127.0.0.1") -> bytes:
    """A v2 PROXY/TCP4 header as HAProxy's send-proxy-v2 writes it."""
    addresses = (ipaddress.IPv4Address(client).packed + ipaddress.IPv4Address(server).packed
                 + struct.pack("!HH", port, 21))
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def raw_connect(server: ServerProcess, source: str, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=15,
                                    source_address=(source, 0))
    if first:
        sock.sendall(first)
    return sock


def proxied_ftp(server: ServerProcess, header: bytes, client: str,
                source: str = BALANCER) -> ftplib.FTP:
    """An ftplib session that arrives through the "balancer" with ``header``; its data
    connections come straight from ``client`` (the layout where each node advertises its
    own passive address)."""
    ftp = ftplib.FTP(encoding="utf-8", source_address=(client, 0))
    ftp.host, ftp.port, ftp.timeout = server.host, server.port, 15
    ftp.sock = raw_connect(server, source, header)
    ftp.af = ftp.sock.family
    ftp.file = ftp.sock.makefile("r", encoding="utf-8")
    ftp.welcome = ftp.getmultiline()  # a 421 refusal too
    return ftp


def closed_without_greeting(sock: socket.socket) -> bool:
    """True if the server closes ``sock`` without sending anything."""
    with sock:
        try:
            return sock.recv(1024) == b""
        except ConnectionResetError:
            return True


def closed_after_replies(sock: socket.socket) -> bool:
    """True if the server closes ``sock`` (after what replies it sent)."""
    with sock:
        try:
            while sock.recv(1024):
                pass
        except ConnectionResetError:
            pass
        return True


@pytest.fixture(scope="module")
def proxied(emulator, tmp_path_factory):
    proc = ServerProcess(str(tmp_path_factory.mktemp("proxied")), emulator.port,
                         [Account("alice", "alice-pw", ALPHA)],
                         network={"proxy_protocol": "optional",
                                  "proxy_allowed": f"{BALANCER}, 10.0.0.0/8"},
                         optional={"max_login_failures": "2", "xferlog_enable": "true",
                                   "max_connections_per_ip": "3"})
    proc.start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("make_header", [v1_header, v2_header], ids=["v1", "v2"])
def test_header_gives_the_client_address(proxied, make_header, area):
    """Logs, the passive source check and xferlog all use the carried address: the data
    connection from the client's own address is accepted, one from the balancer's is not."""
    client = "127.0.0.21" if make_header is v1_header else "127.0.0.22"
    ftp = proxied_ftp(proxied, make_header(client), client)
    assert ftp.welcome.startswith("220")
    ftp.login("alice", "alice-pw")
    ftp.storbinary(f"STOR {area}.txt", io.BytesIO(b"through the balancer"))
    ftp.quit()
    text = proxied.log_text()
    assert f"user=alice ip={client}" in text
    with open(os.path.join(proxied.log_dir, "xferlog"), encoding="utf-8") as handle:
        assert any(f" {client} " in line and area in line for line in handle)


def test_passive_source_check_uses_the_client_address(proxied):
    """A data connection from another address than the proxied client's is closed."""
    ftp = proxied_ftp(proxied, v2_header("127.0.0.23"), "127.0.0.23")
    ftp.login("alice", "alice-pw")
    host, port = ftp.makepasv()
    assert closed_without_greeting(socket.create_connection((host, port), timeout=15,
                                                            source_address=("127.0.0.24", 0)))
    wait_until(lambda: "closed a data connection from the foreign address 127.0.0.24"
               in proxied.log_text(), what="the refused data connection in the log")
    ftp.close()


def test_data_connection_through_the_balancer_carries_a_header(proxied, cos, area):
    """The layout where the balancer also forwards the passive range (send-proxy-v2 there
    too): the data connection is matched by the address in its header."""
    ftp = proxied_ftp(proxied, v2_header("127.0.0.25"), "127.0.0.25")
    ftp.login("alice", "alice-pw")
    ftp.voidcmd("TYPE I")
    host, port = ftp.makepasv()
    with socket.create_connection((host, port), timeout=15,
                                  source_address=(BALANCER, 0)) as data:
        data.sendall(v2_header("127.0.0.25", port=40001))
        assert ftp.sendcmd(f"STOR {area}.bin").startswith(("125", "150"))
        data.sendall(b"via the balancer")
    assert ftp.voidresp().startswith("226")
    ftp.quit()
    assert cos.get_object(Bucket=ALPHA, Key=f"{area}.bin")["Body"].get_raw_stream() \
        .read() == b"via the balancer"
    # Another client's header on the balancer's data connection is a foreign address.
    ftp = proxied_ftp(proxied, v2_header("127.0.0.26"), "127.0.0.26")
    ftp.login("alice", "alice-pw")
    host, port = ftp.makepasv()
    with socket.create_connection((host, port), timeout=15,
                                  source_address=(BALANCER, 0)) as data:
        data.sendall(v2_header("127.0.0.27"))
        assert data.recv(1) == b""
    ftp.close()


def test_port_check_uses_the_client_address(proxied):
    """PORT may name the proxied client's address, not the balancer's (the real peer)."""
    ftp = proxied_ftp(proxied, v2_header("127.0.0.29"), "127.0.0.29")
    ftp.login("alice", "alice-pw")
    with socket.create_server(("127.0.0.29", 0)) as listener:
        assert ftp.sendport("127.0.0.29", listener.getsockname()[1]).startswith("200")
        assert ftp.sendcmd("LIST")[:3] in ("125", "150")  # the server connected to the client
        conn, _ = listener.accept()
        with conn:
            while conn.recv(4096):
                pass
        assert ftp.voidresp().startswith("226")
    with pytest.raises(ftplib.error_perm, match="501"):
        ftp.sendport(BALANCER, 40000)
    ftp.quit()


def test_bans_and_per_ip_limit_use_the_client_address(proxied):
    """Two failed logins ban the proxied client, not the balancer: another client through
    the same balancer still logs in. The per-IP limit counts the client, not the balancer."""
    for _ in range(2):
        ftp = proxied_ftp(proxied, v2_header("127.0.0.31"), "127.0.0.31")
        with pytest.raises(ftplib.error_perm):
            ftp.login("alice", "wrong")
        ftp.close()
    banned = proxied_ftp(proxied, v2_header("127.0.0.31"), "127.0.0.31")
    assert banned.welcome.startswith("421")
    banned.close()
    other = [proxied_ftp(proxied, v2_header("127.0.0.32"), "127.0.0.32") for _ in range(3)]
    other[0].login("alice", "alice-pw")
    fourth = proxied_ftp(proxied, v2_header("127.0.0.32"), "127.0.0.32")
    assert fourth.welcome.startswith("421") and "same IP" in fourth.welcome
    fifth = proxied_ftp(proxied, v2_header("127.0.0.33"), "127.0.0.33")
    assert fifth.welcome.startswith("220")
    for ftp in [*other, fourth, fifth]:
        ftp.close()


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.0\r\n\r\n", b"PROXY TCP4 1.2.3 x\r\n",
                                     V2_SIGNATURE + b"\x99\x11\x00\x0c" + bytes(12),
                                     b"PROXY " + b"9" * 200],
                         ids=["http", "bad-v1", "bad-v2-version", "v1-too-long"])
def test_malformed_header_from_the_balancer_is_closed_and_logged(proxied, garbage):
    assert closed_without_greeting(raw_connect(proxied, BALANCER, garbage))
    wait_until(lambda: f"{BALANCER}: connection closed: " in proxied.log_text(),
               what="the log line about the bad header")


def test_header_from_a_direct_client_is_refused(proxied):
    """Outside proxy_allowed nobody may claim another address: the connection closes."""
    for header in (v1_header("127.0.0.99"), v2_header("127.0.0.99")):
        sock = raw_connect(proxied, "127.0.0.41")
        assert sock.makefile("rb").readline().startswith(b"220")
        sock.sendall(header)
        assert closed_after_replies(sock)
    assert "127.0.0.41: connection closed: PROXY header from an address not in " \
           "proxy_allowed" in proxied.log_text()
    assert "127.0.0.99" not in proxied.log_text()


def test_direct_client_is_served_when_optional(proxied):
    ftp = proxied.login("alice", "alice-pw", host="127.0.0.1")
    assert ftp.pwd() == "/"
    ftp.quit()


@pytest.fixture(scope="module")
def required(emulator, tmp_path_factory):
    proc = RequiredProxyServer(str(tmp_path_factory.mktemp("required")), emulator.port,
                               [Account("alice", "alice-pw", ALPHA)],
                               network={"proxy_protocol": "required",
                                        "proxy_allowed": BALANCER})
    proc.start()
    yield proc
    proc.stop()


class RequiredProxyServer(ServerProcess):
    """Reachable only through the balancer: the readiness probe sends a header too."""

    def _serving(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"server exited early: {self.output()}")
        try:
            proxied_ftp(self, v1_header("127.0.0.1"), "127.0.0.1").close()
            return True
        except (OSError, EOFError, ftplib.Error):
            return False


def test_required_refuses_direct_and_headerless_connections(required):
    assert closed_without_greeting(raw_connect(required, "127.0.0.42"))
    wait_until(lambda: "127.0.0.42: connection refused: not from proxy_allowed"
               in required.log_text(), what="the refusal in the log")
    # From the balancer, but no header before the deadline.
    assert closed_without_greeting(raw_connect(required, BALANCER))
    wait_until(lambda: f"{BALANCER}: connection closed: no complete PROXY header"
               in required.log_text(), what="the missing header in the log")
    ftp = proxied_ftp(required, v2_header("127.0.0.21"), "127.0.0.21")
    ftp.login("alice", "alice-pw")
    ftp.quit()


def test_proxy_protocol_needs_proxy_allowed(emulator, tmp_path):
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("alice", "pw", ALPHA)],
                         network={"proxy_protocol": "required"})
    proc.write_config()
    result = proc.ctl("check")
    assert result.returncode != 0
    assert "[NETWORK] proxy_protocol" in result.stderr + result.stdout
    assert "proxy_allowed" in result.stderr + result.stdout


def test_implicit_tls_port_reads_the_header_before_the_handshake(emulator, tmp_path):
    """On the implicit-FTPS port the header comes before the TLS ClientHello."""
    cert, key = write_certificate(tmp_path)
    proc = ServerProcess(str(tmp_path / "srv"), emulator.port, [Account("alice", "pw", ALPHA)],
                         network={**tls_network(cert, key, implicit_port=free_port()),
                                  "proxy_protocol": "optional", "proxy_allowed": BALANCER})
    with proc:
        sock = socket.create_connection((proc.host, implicit_port(proc)), timeout=15,
                                        source_address=(BALANCER, 0))
        sock.sendall(v2_header("127.0.0.28"))
        with client_context().wrap_socket(sock) as tls:
            reader = tls.makefile("rb")
            assert reader.readline().startswith(b"220")
            tls.sendall(b"USER alice\r\nPASS pw\r\n")
            assert reader.readline().startswith(b"331")
            assert reader.readline().startswith(b"230")
        wait_until(lambda: "user=alice ip=127.0.0.28" in proc.log_text() or
                   "127.0.0.28:40000-[alice]" in proc.log_text(),
                   what="the proxied address in the log")
