"""PROXY protocol (``[NETWORK] proxy_protocol``, ``proxy_allowed``): a balancer's header
gives the session the client's address (logs, bans, data connections, xferlog); a header
from anyone else, a malformed one, or none where required closes the connection."""

from __future__ import annotations

import ftplib
import io
import ipaddress
import os
import random
import socket
import struct
from contextlib import suppress

import psutil
import pytest

from cosftp_prefork.ftp.proxy import Origin, ProxyHeaderError, read_header

from .conftest import ALPHA
from .ftps import implicit_port
from .server_proc import Account, ServerProcess, tls_network, wait_until
from .test_master import no_sessions_left, state_of
from .tls_clients import client_context, write_certificate

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
    address = ftp.makepasv()
    assert stor_through_balancer(ftp, address, "127.0.0.25", f"{area}.bin",
                                 b"via the balancer").startswith("226")
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


def stor_through_balancer(ftp: ftplib.FTP, address: tuple[str, int], client: str, name: str,
                          data: bytes) -> str:
    """STOR ``data`` as ``name`` over a passive data connection to ``address`` that comes
    from the balancer with a header naming ``client``; return the final reply."""
    with socket.create_connection(address, timeout=15, source_address=(BALANCER, 0)) as conn:
        conn.sendall(v2_header(client, port=40001))
        assert ftp.sendcmd(f"STOR {name}").startswith(("125", "150"))
        conn.sendall(data)
    return ftp.voidresp()


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
                         network={**tls_network(cert, key, implicit=True),
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


# --- the parser, fuzzed: read_header over a socket pair

def v2_block(command: int, family: int, body: bytes) -> bytes:
    """A v2 header: signature, version/command and family bytes, length, then ``body``."""
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body)) + body


def valid_headers() -> list[bytes]:
    """Well-formed headers of every kind a balancer may send."""
    ipv6 = ipaddress.IPv6Address("2001:db8::7").packed
    noop_tlv = bytes([0x04]) + struct.pack("!H", 3) + b"abc"
    return [
        v1_header("192.0.2.7"),
        b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 21\r\n",
        b"PROXY UNKNOWN\r\n",
        v2_header("192.0.2.7"),
        v2_block(0x21, 0x11, v2_header("192.0.2.7")[16:] + noop_tlv),
        v2_block(0x21, 0x21, ipv6 + ipv6 + struct.pack("!HH", 40000, 21)),
        v2_block(0x21, 0x31, b"/run/client".ljust(108, b"\0") + b"/run/ftp".ljust(108, b"\0")),
        v2_block(0x20, 0x00, b""),  # LOCAL: the balancer's own health check
    ]


def mutated(header: bytes, rng) -> bytes:
    """``header`` damaged in one of the ways a broken or hostile balancer could."""
    data = bytearray(header)
    kind = rng.randrange(6)
    if kind == 0:  # a few bytes changed
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1 and data.startswith(V2_SIGNATURE):  # another declared length
        length = rng.choice([rng.randrange(12), rng.randrange(len(data)), rng.randrange(65536)])
        data[14:16] = struct.pack("!H", length)
        del data[16 + length:]
    elif kind == 2:  # cut short
        del data[rng.randrange(len(data)):]
    elif kind == 3:  # bytes inserted
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randint(1, 16))
    elif kind == 4:  # the signature, then anything
        prefix = V2_SIGNATURE if data.startswith(V2_SIGNATURE) else b"PROXY "
        data = bytearray(prefix + rng.randbytes(rng.randrange(120)))
    else:
        data = bytearray(rng.randbytes(rng.randrange(1, 64)))
    return bytes(data)


def read_from_pair(data: bytes, rest: bytes = b"") -> tuple[object, bytes]:
    """``read_header`` on a socket that received ``data + rest`` and then end of file:
    its outcome (an ``Origin`` or the exception), and what it left in the socket."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data + rest)
        theirs.shutdown(socket.SHUT_WR)
        try:
            outcome: object = read_header(ours, ("192.0.2.1", 50000), timeout=2)
        except Exception as exc:
            outcome = exc
        ours.setblocking(False)
        left = b""
        with suppress(BlockingIOError, OSError):
            while chunk := ours.recv(4096):
                left += chunk
    return outcome, left


def test_valid_headers_are_read_exactly():
    """Every kind of valid header gives its origin and leaves what follows unread."""
    for header in valid_headers():
        outcome, left = read_from_pair(header, b"USER alice\r\n")
        assert isinstance(outcome, Origin), (header, outcome)
        assert left == b"USER alice\r\n", header
    assert read_from_pair(v2_header("192.0.2.7"))[0] == Origin("192.0.2.7", 40000, True)


def test_short_v2_address_block_is_a_clean_refusal():
    """Before: struct.error escaped read_header (the session thread died, its socket open)."""
    for family, needs in ((0x11, 12), (0x21, 36), (0x31, 216)):
        for length in (0, 1, needs - 1):
            outcome, _ = read_from_pair(v2_block(0x21, family, bytes(length)))
            assert isinstance(outcome, ProxyHeaderError), (family, length, outcome)
            assert outcome.reason == "malformed PROXY header"


def test_fuzzed_headers_are_read_or_refused_cleanly():
    """Thousands of random and damaged headers: each one is read or refused with a
    ProxyHeaderError (no other exception), and a refusal's reason is one of a few fixed
    texts (the burst log groups by it). Before: 1 in 10 escaped as struct.error."""
    rng = random.Random(20)
    seeds = valid_headers()
    outcomes = []
    for _ in range(4000):
        data = mutated(rng.choice(seeds), rng)
        outcomes.append((data, read_from_pair(data)[0]))
    escaped = [(data, repr(outcome)) for data, outcome in outcomes
               if not isinstance(outcome, (Origin, ProxyHeaderError))]
    assert not escaped, f"{len(escaped)} of {len(outcomes)} escaped, e.g. {escaped[:3]}"
    read = sum(isinstance(outcome, Origin) for _, outcome in outcomes)
    assert read > 100  # the damage left some headers valid: both outcomes were exercised
    reasons = {outcome.reason for _, outcome in outcomes if isinstance(outcome, ProxyHeaderError)}
    assert len(reasons) <= 6, reasons


# --- malformed headers end to end: nothing left behind

# Headers the parser refuses, the short address blocks among them (struct.error before).
MALFORMED = [v2_block(0x21, 0x11, bytes(8)), v2_block(0x21, 0x11, b""),
             v2_block(0x21, 0x21, bytes(20)), v2_block(0x21, 0x31, bytes(100)),
             V2_SIGNATURE + b"\x99\x11\x00\x0c" + bytes(12), b"PROXY TCP4 1.2.3 x\r\n"]


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed or reset ``sock`` (what it sent before is read and
    dropped); never blocks."""
    sock.setblocking(False)
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def send_malformed(port: int, count: int, batch: int = 50) -> None:
    """Send ``count`` malformed headers from the balancer to ``port``, ``batch`` connections
    at a time, and wait until the server has closed every one."""
    for start in range(0, count, batch):
        socks = [socket.create_connection(("127.0.0.1", port), timeout=15,
                                          source_address=(BALANCER, 0))
                 for _ in range(min(batch, count - start))]
        try:
            for i, sock in enumerate(socks):
                sock.sendall(MALFORMED[(start + i) % len(MALFORMED)])
            wait_until(lambda socks=socks: all(map(closed_by_server, socks)),
                       what="every connection with a malformed header closed")
        finally:
            for sock in socks:
                sock.close()


def log_lines(server: ServerProcess, text: str) -> list[str]:
    return [line for line in server.log_text().splitlines() if text in line]


def test_malformed_headers_leave_nothing_behind(emulator, tmp_path, cos, area):
    """300 malformed headers on the control port, then 300 on a session's passive port:
    each connection is closed, the worker's descriptors, threads and session rows come back
    to what they were, the log has a line per burst (not per header), and the session whose
    passive port was hit still transfers. Before: a short v2 address block raised
    struct.error out of read_header; the session thread ended with its socket open and
    nothing logged (200 headers left ~100 descriptors per worker for good)."""
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                         network={"proxy_protocol": "optional", "proxy_allowed": BALANCER},
                         optional={"worker_processes": "1", "log_level": "INFO"})
    with proc:
        no_sessions_left(proc)
        worker = psutil.Process(proc.proc.pid).children()[0]
        threads, fds = worker.num_threads(), worker.num_fds()
        send_malformed(proc.port, 300)
        wait_until(lambda: worker.num_threads() <= threads, what=f"threads back to {threads}")
        wait_until(lambda: worker.num_fds() <= fds, what=f"descriptors back to {fds}")
        no_sessions_left(proc)
        assert 1 <= len(log_lines(proc, f"{BALANCER}: connection closed: malformed PROXY "
                                        "header")) <= 4  # a line and a count per burst

        ftp = proxied_ftp(proc, v2_header("127.0.0.25"), "127.0.0.25")
        ftp.login("alice", "alice-pw")
        ftp.storbinary(f"STOR {area}.warm", io.BytesIO(b"warm"))  # the COS pools exist now
        threads, fds = worker.num_threads(), worker.num_fds()
        ftp.voidcmd("TYPE I")
        address = ftp.makepasv()
        send_malformed(address[1], 300)
        assert stor_through_balancer(ftp, address, "127.0.0.25", f"{area}.bin",
                                     b"after the garbage").startswith("226")
        assert cos.get_object(Bucket=ALPHA, Key=f"{area}.bin")["Body"].get_raw_stream() \
            .read() == b"after the garbage"
        wait_until(lambda: worker.num_threads() <= threads, what=f"threads back to {threads}")
        # the upload may have opened one more pooled connection to COS
        wait_until(lambda: worker.num_fds() <= fds + 1, what=f"descriptors back to {fds}")
        assert 1 <= len(log_lines(proc, f"{BALANCER}: data connection closed: malformed "
                                        "PROXY header")) <= 4
        ftp.quit()


def test_balancer_connections_are_counted_before_their_header(emulator, tmp_path):
    """A balancer's connection takes a place among those not logged in from accept, not
    once its header came: over max_prelogin_connections it is answered 421 at once.
    Before: every one held a session thread, uncounted, until its header or 5 s."""
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                         network={"proxy_protocol": "optional", "proxy_allowed": BALANCER},
                         optional={"worker_processes": "1", "log_level": "INFO",
                                   "max_prelogin_connections": "4"})
    with proc:
        no_sessions_left(proc)
        waiting = [raw_connect(proc, BALANCER) for _ in range(4)]
        try:
            for _ in range(3):
                with raw_connect(proc, BALANCER) as over:
                    assert over.makefile("rb").readline() == \
                        b"421 Too many connections waiting to log in; try again later.\r\n"
            for i, sock in enumerate(waiting):  # their headers come: each is the client's now
                sock.sendall(v1_header(f"127.0.0.{60 + i}"))
                assert sock.makefile("rb").readline().startswith(b"220")
            wait_until(lambda: sorted(s.client for s in state_of(proc).session_details()) ==
                       [f"127.0.0.{60 + i}" for i in range(4)],
                       what="the sessions counted under the clients' addresses")
        finally:
            for sock in waiting:
                sock.close()
        assert f"{BALANCER}: connection refused: Too many connections waiting to log in" \
            in proc.log_text()
