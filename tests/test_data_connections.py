"""Data connections: passive ports cannot be stolen, and IPv6 / dual-stack listeners serve
transfers (EPSV, EPRT, PASV and PORT) over real sockets."""

from __future__ import annotations

import contextlib
import ftplib
import re
import socket
import subprocess

import pytest

from .conftest import ALPHA
from .server_proc import Account, ServerProcess, wait_until
from .test_commands import get, put

# The scanner below must only ever reach this test server's ports: it listens on an address
# of its own (passive ports are bound to the address the client reached), in a range
# outside the kernel's ephemeral ports and the other tests' passive range (30000-32767).
HOST = "127.0.0.3"
SCAN_LOW, SCAN_HIGH = 61000, 61127
EVIL, GOOD = b"EVIL bytes from the attacker", b"the victim's own upload"
ACCOUNT = Account("victim", "victim-pw", ALPHA)


@pytest.fixture(scope="module")
def scanned(emulator, tmp_path_factory):
    proc = ServerProcess(str(tmp_path_factory.mktemp("scanned")), emulator.port, [ACCOUNT],
                         optional={"worker_processes": "1", "max_login_failures": "0"},
                         network={"passive_port": f"{SCAN_LOW},{SCAN_HIGH}",
                                  "listen_address": HOST})
    with proc:
        yield proc


def _pasv_port(reply: str) -> int:
    high, low = re.search(r",(\d+),(\d+)\)", reply).groups()
    return int(high) * 256 + int(low)


def scan(source: str = "") -> list[socket.socket]:
    """Connect to every port of the passive range, as a port scanner does; return the
    connections that were accepted."""
    found = []
    for port in range(SCAN_LOW, SCAN_HIGH + 1):
        sock = socket.socket()
        if source:
            sock.bind((source, 0))
        try:
            sock.connect((HOST, port))
        except OSError:
            sock.close()
            continue
        found.append(sock)
    return found


def try_connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection((HOST, port), timeout=10)
    except OSError:
        return None


def stored(cos, key: str) -> bytes | None:
    try:
        return cos.get_object(Bucket=ALPHA, Key=key)["Body"].get_raw_stream().read()
    except Exception:
        return None


def final_reply(ftp: ftplib.FTP) -> str:
    """The reply that ends a transfer command (after its 1xx, if any)."""
    reply = ftp.getline()
    while reply[:1] == "1" or not re.match(r"\d{3} ", reply):
        reply = ftp.getline()
    return reply


def victim_stor(ftp: ftplib.FTP, key: str, data_sock: socket.socket | None) -> str:
    """Send STOR as a client that already connected (or tried to) to the passive port."""
    ftp.putcmd(f"STOR {key}")
    first = ftp.getline()
    if first.startswith("1") and data_sock is not None:
        with contextlib.suppress(OSError):
            data_sock.sendall(GOOD)
    if data_sock is not None:
        data_sock.close()
    return first if not first.startswith("1") else final_reply(ftp)


@pytest.mark.parametrize("attacker_first", [True, False])
def test_scanner_on_the_same_address_cannot_inject_into_stor(scanned, cos, area,
                                                             attacker_first):
    """A scanner on the victim's address connects to its passive port and sends bytes;
    the STOR either stores the victim's bytes or fails cleanly, never the attacker's."""
    key = area
    victim = scanned.login("victim", "victim-pw")
    victim.voidcmd("TYPE I")
    port = _pasv_port(victim.sendcmd("PASV"))
    data = None if attacker_first else try_connect(port)
    stolen = scan()
    if attacker_first:  # else the victim's connection may have closed the port already
        assert [s.getpeername()[1] for s in stolen] == [port]  # the scan found it
    for sock in stolen:
        with contextlib.suppress(OSError):
            sock.sendall(EVIL)
    if attacker_first:
        data = try_connect(port)
    # The attacker closes once the victim's STOR is under way (its bytes wait in the
    # server's receive buffer until then).
    reply = victim_stor_after(victim, key, data, stolen)
    content = stored(cos, key)
    assert content != EVIL, f"the attacker's bytes were stored (reply {reply!r})"
    if reply.startswith("226"):
        assert content == GOOD
    else:
        assert reply.startswith("425") and content is None
    assert victim.voidcmd("NOOP").startswith("200")  # the session is still in step
    assert put(victim, area, b"next upload").startswith("226")
    victim.quit()


def victim_stor_after(ftp: ftplib.FTP, key: str, data: socket.socket | None,
                      attackers: list[socket.socket]) -> str:
    ftp.putcmd(f"STOR {key}")
    first = ftp.getline()
    if first.startswith("1"):
        if data is not None:
            with contextlib.suppress(OSError):
                data.sendall(GOOD)
                data.close()
        for sock in attackers:
            sock.close()
        return final_reply(ftp)
    for sock in [*attackers, *([data] if data else [])]:
        sock.close()
    return first


def test_scanner_on_the_same_address_cannot_read_retr(scanned, cos, area):
    key = area
    secret = b"the victim's secret document " * 100
    cos.put_object(Bucket=ALPHA, Key=key, Body=secret)
    victim = scanned.login("victim", "victim-pw")
    victim.voidcmd("TYPE I")
    port = _pasv_port(victim.sendcmd("PASV"))
    stolen = scan()
    assert len(stolen) == 1
    data = try_connect(port)
    victim.putcmd(f"RETR {area}")
    first = victim.getline()
    stolen[0].settimeout(10)
    received = b""
    with contextlib.suppress(OSError):
        while chunk := stolen[0].recv(65536):
            received += chunk
    stolen[0].close()
    reply = final_reply(victim) if first.startswith("1") else first
    if data is not None:
        data.close()
    assert secret not in received and received == b"", "the attacker received the file"
    assert reply.startswith("425"), reply
    assert get(victim, area) == secret  # a fresh PASV works
    victim.quit()


def test_foreign_scanner_neither_steals_nor_breaks_the_transfer(scanned, cos, area):
    """A connection from another address is closed quietly: pyftpdlib answered it with an
    unsolicited 425 on the victim's control connection, which the victim then read as the
    reply to its STOR."""
    key = area
    victim = scanned.login("victim", "victim-pw")
    victim.voidcmd("TYPE I")
    port = _pasv_port(victim.sendcmd("PASV"))
    foreign = scan(source="127.0.0.2")
    assert foreign, "the scanner from 127.0.0.2 could not connect"
    for _ in range(5):  # and again: the log says so once
        foreign += scan(source="127.0.0.2")
    wait_until(lambda: "foreign address" in scanned.log_text(), what="the foreign connection")
    data = try_connect(port)
    assert data is not None
    reply = victim_stor(victim, key, data)
    for sock in foreign:
        sock.close()
    assert reply.startswith("226"), reply
    assert stored(cos, key) == GOOD
    lines = [line for line in scanned.log_text().splitlines()
             if f"port={port}: closed a data connection from the foreign" in line]
    assert len(lines) == 1, lines
    victim.quit()


def test_transfer_command_before_connecting_still_works(scanned, cos, area):
    """Clients that send STOR before connecting get their first connection handed over."""
    key = area
    victim = scanned.login("victim", "victim-pw")
    victim.voidcmd("TYPE I")
    port = _pasv_port(victim.sendcmd("PASV"))
    victim.putcmd(f"STOR {area}")
    assert victim.getline().startswith("150")
    data = try_connect(port)
    data.sendall(GOOD)
    data.close()
    assert final_reply(victim).startswith("226")
    assert stored(cos, key) == GOOD
    assert try_connect(port) is None  # the port closed once the transfer had it
    victim.quit()


@pytest.mark.parametrize("give_up", ["PASV", "ABOR"])
def test_held_connection_is_closed_when_the_client_moves_on(scanned, area, give_up):
    victim = scanned.login("victim", "victim-pw")
    port = _pasv_port(victim.sendcmd("PASV"))
    held = try_connect(port)
    victim.sendcmd(give_up)
    held.settimeout(10)
    # Closed by the server, never used (reset if it was still in the backlog).
    with contextlib.suppress(ConnectionResetError):
        assert held.recv(1) == b""
    held.close()
    assert put(victim, area, GOOD).startswith("226")
    victim.quit()


def test_passive_ports_are_spread_over_the_whole_range(scanned):
    ftp = scanned.login("victim", "victim-pw")
    ports = [_pasv_port(ftp.sendcmd("PASV")) for _ in range(200)]
    ftp.quit()
    assert all(SCAN_LOW <= p <= SCAN_HIGH for p in ports)
    span = SCAN_HIGH - SCAN_LOW
    assert min(ports) < SCAN_LOW + span // 4 and max(ports) > SCAN_HIGH - span // 4
    assert len(set(ports)) > 60  # 128 ports, 200 picks: a fixed or sequential pick fails


def test_transfer_without_data_connection_is_refused(scanned):
    ftp = scanned.login("victim", "victim-pw")
    with pytest.raises(ftplib.error_temp, match="425 Use PASV"):
        ftp.sendcmd("RETR anything")
    ftp.quit()


# --- IPv6 and dual stack


def _have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _have_ipv6(), reason="no IPv6 loopback")


def _round_trips(ftp: ftplib.FTP, area: str, passive: bool) -> None:
    ftp.set_pasv(passive)
    name = f"{area}_{'pasv' if passive else 'active'}"
    data = f"over {ftp.sock.family.name} {name}".encode()
    assert put(ftp, name, data).startswith("226")
    assert get(ftp, name) == data
    assert name in ftp.nlst()


@needs_ipv6
@pytest.mark.parametrize("listen", ["::1", "::", "127.0.0.1, ::1", "0.0.0.0, ::"])
def test_ipv6_and_dual_stack_listeners_serve_transfers(emulator, tmp_path, area, listen):
    proc = ServerProcess(str(tmp_path), emulator.port, [ACCOUNT],
                         optional={"worker_processes": "1"},
                         network={"listen_address": listen})
    with proc:
        v6 = proc.login("victim", "victim-pw", host="::1")
        for passive in (True, False):  # EPSV, then EPRT
            _round_trips(v6, area + "6", passive)
        with pytest.raises(ftplib.error_temp, match="425 PASV can only announce"):
            v6.sendcmd("PASV")
        v6.quit()
        if listen != "::1":  # IPv4 clients: native, or mapped on "::"
            v4 = proc.login("victim", "victim-pw", host="127.0.0.1")
            for passive in (True, False):  # PASV, then PORT
                _round_trips(v4, area + "4", passive)
            v4.quit()
        assert "Traceback" not in proc.log_text()


@needs_ipv6
def test_curl_and_lftp_over_ipv6(emulator, tmp_path, area):
    proc = ServerProcess(str(tmp_path), emulator.port, [ACCOUNT],
                         optional={"worker_processes": "1"}, network={"listen_address": "::1"})
    source = tmp_path / "up.bin"
    source.write_bytes(b"curl over IPv6\n" * 1000)
    with proc:
        url = f"ftp://victim:victim-pw@[::1]:{proc.port}/{area}.bin"
        up = subprocess.run(["curl", "-sS", "-g", "-T", str(source), url],
                            capture_output=True, timeout=60)
        assert up.returncode == 0, up.stderr
        down = subprocess.run(["curl", "-sS", "-g", url], capture_output=True, timeout=60)
        assert down.returncode == 0 and down.stdout == source.read_bytes(), down.stderr
        script = (f"set cmd:fail-exit true; set net:max-retries 1; "
                  f"open -u victim,victim-pw ftp://[::1]:{proc.port}; cat {area}.bin")
        lftp = subprocess.run(["lftp", "-c", script], capture_output=True, timeout=60)
        assert lftp.returncode == 0 and lftp.stdout == source.read_bytes(), lftp.stderr
