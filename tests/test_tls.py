"""FTPS: explicit (AUTH TLS) and implicit TLS with real clients, per-account tls_required,
certificate validation at check, start and reload. The certificates are made by
``tls_clients.write_certificate``."""

from __future__ import annotations

import contextlib
import ftplib
import os
import pathlib
import re
import signal
import socket
import ssl
import struct
import subprocess
import uuid
from typing import Callable, Optional

import pytest

from cosftp_prefork.config.settings import parse_config
from cosftp_prefork.errors import ConfigError

from .conftest import ALPHA, _close
from .server_proc import (
    FREE_PORT,
    ROOT,
    Account,
    ServerProcess,
    closed_port,
    connection_refused,
    release_port,
    wait_until,
)
from .test_clients import require, run
from .test_commands import get, put
from .test_master import live_children, master_of, sessions_by_pid, state_of
from .test_resume import is_parked
from .test_transfers import abort_transfer, curl_put, pending_uploads, start_upload
from .tls_clients import (
    AssumingImplicitFTP_TLS,
    ImplicitFTP_TLS,
    client_context,
    client_hello,
    write_certificate,
)

MIB = 1024 * 1024

PLAIN = Account("plainuser", "plain-pw", ALPHA)
SECURE = Account("secureuser", "secure-pw", ALPHA, extra="tls_required = true")


# --- certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> tuple[str, str]:
    return write_certificate(tmp_path_factory.mktemp("certs"))


def tls_network(cert: str, key: str, implicit: bool = False) -> dict[str, str]:
    """[NETWORK] options for FTPS with ``cert`` and ``key``; with ``implicit``, an implicit
    FTPS port too (ServerProcess.start chooses it: FREE_PORT)."""
    network = {"tls_certfile": cert, "tls_keyfile": key}
    if implicit:
        network["implicit_tls_port"] = FREE_PORT
    return network


@pytest.fixture(scope="module")
def tls_server(emulator, tmp_path_factory, certs):
    proc = ServerProcess(str(tmp_path_factory.mktemp("tls")), emulator.port, [PLAIN, SECURE],
                         network=tls_network(*certs, implicit=True))
    with proc:
        yield proc


def implicit_port(server: ServerProcess) -> int:
    return int(server.network["implicit_tls_port"])


# --- clients


def tls_login(server: ServerProcess, account: Account, prot_p: bool = True) -> ftplib.FTP_TLS:
    """Log in with AUTH TLS on the FTP port; PROT P unless ``prot_p`` is False."""
    ftp = ftplib.FTP_TLS(context=client_context(), encoding="utf-8")
    ftp.connect("127.0.0.1", server.port, timeout=30)
    ftp.login(account.user, account.password)
    if prot_p:
        ftp.prot_p()
    return ftp


def implicit_login(server: ServerProcess, account: Account) -> ftplib.FTP_TLS:
    ftp = ImplicitFTP_TLS(context=client_context(), encoding="utf-8")
    ftp.connect("127.0.0.1", implicit_port(server))
    ftp.login(account.user, account.password)
    ftp.prot_p()
    return ftp


def curl(server: ServerProcess, url_path: str, *args: str, scheme: str = "ftp",
         port: Optional[int] = None) -> str:
    """Run curl as SECURE over TLS (``ftp``: AUTH TLS, required; ``ftps``: implicit)."""
    url = f"{scheme}://127.0.0.1:{port or server.port}/{url_path}"
    return run([require("curl"), "--user", f"{SECURE.user}:{SECURE.password}", "--silent",
                "--show-error", "--ssl-reqd", "--insecure", "--ftp-pasv", *args, url])


def test_curl_over_tls_crossing_a_quota_reads_the_552(emulator, tmp_path, certs, cos):
    """An encrypted upload stopped at its quota while curl still sends is drained after the
    552 as a clear one is (``ftp.drain``: the TLS records are discarded unread): curl reads
    the refusal (70), not a reset (55); nothing is stored."""
    home = f"tlsquota-{uuid.uuid4().hex[:8]}/"
    account = Account("tlsquota", "tlsquota-pw", ALPHA,
                      extra=f"tls_required = true\ncos_prefix = {home}\nquota_size = 1M")
    big = tmp_path / "big.bin"
    big.write_bytes(b"q" * (8 * MIB))
    with ServerProcess(str(tmp_path / "srv"), emulator.port, [account],
                       network=tls_network(*certs)) as server:
        done = curl_put(server.port, "tlsquota", "tlsquota-pw", big, "big.bin", "--ssl-reqd",
                        "--insecure")
    assert done.returncode == 70, done.stderr[-2000:]
    assert "< 552 Quota exceeded" in done.stderr, done.stderr[-2000:]
    assert not cos.list_objects(Bucket=ALPHA, Prefix=home).get("Contents")


# --- explicit TLS (AUTH TLS) with three clients


def test_ftplib_explicit_round_trip(tls_server, area):
    ftp = tls_login(tls_server, SECURE)
    assert "AUTH TLS" in ftp.sendcmd("FEAT")
    data = os.urandom(2 * MIB + MIB // 2 + 3)  # multipart, and not a whole number of parts
    ftp.mkd(area)
    assert put(ftp, f"{area}/a.bin", data).startswith("226")
    assert put(ftp, f"{area}/empty", b"").startswith("226")
    assert get(ftp, f"{area}/a.bin") == data
    assert get(ftp, f"{area}/empty") == b""
    assert sorted(ftp.nlst(area)) == ["a.bin", "empty"]
    lines: list[str] = []
    ftp.retrlines(f"LIST {area}", lines.append)
    assert any(line.split()[4] == str(len(data)) for line in lines)
    _close(ftp)


REUSE_REFUSAL = "refused a TLS data connection"


@pytest.fixture(params=["tls_server", "reuse_server"])
def ftps_server(request):
    """Both TLS servers: curl (OpenSSL) and lftp (GnuTLS) resume the control connection's
    session on data connections, so ``require_ssl_reuse`` must change nothing for them."""
    server = request.getfixturevalue(request.param)
    refusals = server.log_text().count(REUSE_REFUSAL)
    yield server
    assert server.log_text().count(REUSE_REFUSAL) == refusals


def test_curl_explicit_upload_download(ftps_server, tmp_path, area):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(MIB + 77))
    curl(ftps_server, f"{area}/up.bin", "--ftp-create-dirs", "-T", str(src))
    out = tmp_path / "down.bin"
    curl(ftps_server, f"{area}/up.bin", "-o", str(out))
    assert out.read_bytes() == src.read_bytes()
    assert curl(ftps_server, f"{area}/", "--list-only").split() == ["up.bin"]


def handshake_over(raw: socket.socket) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """Do a client TLS handshake over ``raw`` through memory BIOs, so the test sees every
    record the server sends and when it reads it; return the TLS object and its incoming and
    outgoing BIOs."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            incoming.write(raw.recv(65536))
    raw.sendall(outgoing.read())
    return tls, incoming, outgoing


def test_tls_1_3_upload_gets_no_session_ticket_before_it_ends(tls_server, area, cos):
    """Data connections take TLS 1.3, and no session ticket reaches an upload's client
    while it sends: a TLS 1.3 server sends its tickets after the handshake, and a client that
    only writes (lftp) closes its socket with them unread; its kernel then resets the
    connection and drops the part of the upload it had not sent yet (``ftp.heldtickets``).
    The client here writes the file, ends its side, reads the 226, and only then every
    record the server sent: no ticket among them. A download reads its tickets first, then
    the file."""
    data = os.urandom(3 * MIB + 5)
    ftp = tls_login(tls_server, PLAIN)
    assert ftp.sock.version() == "TLSv1.3"
    ftp.voidcmd("TYPE I")
    raw, _ = ftplib.FTP.ntransfercmd(ftp, f"STOR {area}")  # the TLS layer is the test's
    with raw:
        tls, incoming, outgoing = handshake_over(raw)
        assert tls.version() == "TLSv1.3"
        for start in range(0, len(data), 65536):
            tls.write(data[start:start + 65536])
            raw.sendall(outgoing.read())
        raw.shutdown(socket.SHUT_WR)  # as a client closing with nothing read
        assert ftp.voidresp().startswith("226")
        while chunk := raw.recv(65536):
            incoming.write(chunk)
        incoming.write_eof()
        with contextlib.suppress(ssl.SSLZeroReturnError, ssl.SSLEOFError):
            while tls.read(65536):
                pass
        assert tls.session is None or not tls.session.has_ticket
    assert cos.get_object(Bucket=ALPHA, Key=area)["Body"].get_raw_stream().read() == data
    with ftp.transfercmd(f"RETR {area}") as conn:
        assert conn.version() == "TLSv1.3"
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        assert conn.session.has_ticket  # the tickets came before the file
    assert ftp.voidresp().startswith("226")
    assert received == data
    _close(ftp)


def test_lftp_ssl_force_put_get(ftps_server, tmp_path, area):
    lftp = require("lftp")
    src = tmp_path / "lftp src.bin"
    src.write_bytes(os.urandom(3 * MIB + 1))
    back = tmp_path / "back.bin"
    settings = ("set cmd:fail-exit true; set net:max-retries 1; set ftp:passive-mode true; "
                "set ftp:ssl-force true; set ftp:ssl-protect-data true; "
                "set ssl:verify-certificate no;")
    run([lftp, "-u", f"{SECURE.user},{SECURE.password}", "-p", str(ftps_server.port), "-e",
         f'{settings} mkdir {area}; cd {area}; put "{src}" -o l.bin; get l.bin -o "{back}"; '
         "ls; bye", "127.0.0.1"])
    assert back.read_bytes() == src.read_bytes()


def test_wget_explicit_download(ftps_server, tmp_path, area, cos):
    """wget resumes the control session on data connections (``--ftps-resume-ssl``, on
    by default)."""
    data = os.urandom(MIB + 3)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/w.bin", Body=data)
    out = tmp_path / "w.bin"
    run([require("wget"), "-q", "--no-check-certificate", "-O", str(out),
         f"ftps://{SECURE.user}:{SECURE.password}@127.0.0.1:{ftps_server.port}/{area}/w.bin"])
    assert out.read_bytes() == data


# --- implicit TLS


def test_ftplib_implicit_round_trip(tls_server, area):
    ftp = implicit_login(tls_server, SECURE)
    assert ftp.welcome.startswith("220")
    data = os.urandom(MIB + 5)
    assert put(ftp, area, data).startswith("226")
    assert get(ftp, area) == data
    _close(ftp)


def test_curl_implicit_ftps(ftps_server, tmp_path, area):
    src = tmp_path / "implicit.bin"
    src.write_bytes(os.urandom(MIB // 2 + 11))
    port = implicit_port(ftps_server)
    curl(ftps_server, f"{area}/i.bin", "--ftp-create-dirs", "-T", str(src), scheme="ftps",
         port=port)
    out = tmp_path / "out.bin"
    curl(ftps_server, f"{area}/i.bin", "-o", str(out), scheme="ftps", port=port)
    assert out.read_bytes() == src.read_bytes()


def test_reuse_required_on_the_implicit_port(reuse_server, area, cos):
    """Under require_ssl_reuse the implicit port's data connections, encrypted from the
    start, must resume the control connection's session too: a client that does gets its
    bytes, ftplib's fresh session gets 522 and nothing."""
    data = os.urandom(MIB + 7)
    cos.put_object(Bucket=ALPHA, Key=area, Body=data)

    class Resuming(AssumingImplicitFTP_TLS, ReusingFTP_TLS):
        pass

    for cls, resumes in ((Resuming, True), (AssumingImplicitFTP_TLS, False)):
        ftp = cls(context=client_context(), encoding="utf-8")
        ftp.connect("127.0.0.1", implicit_port(reuse_server), timeout=30)
        ftp.login(PLAIN.user, PLAIN.password)
        if resumes:
            assert get(ftp, area) == data
        else:
            ftp.voidcmd("TYPE I")
            with contextlib.suppress(OSError, ssl.SSLError), \
                    ftp.transfercmd(f"RETR {area}") as conn:
                assert conn.recv(65536) == b""
            with pytest.raises(ftplib.error_perm, match=r"522 .*require_ssl_reuse"):
                ftp.voidresp()
        _close(ftp)


def lftp_implicit(server: ServerProcess, account: Account, settings: str,
                  commands: str) -> subprocess.CompletedProcess:
    """Run lftp on the implicit port (``ftps://``) as ``account`` with ``-d``: its debug log,
    every command and reply, is its stderr."""
    return subprocess.run(
        [require("lftp"), "-d", "-u", f"{account.user},{account.password}", "-e",
         "set cmd:fail-exit true; set net:max-retries 1; set net:timeout 20; "
         f"set ssl:verify-certificate no; {settings} {commands}; bye", f"ftps://127.0.0.1:{implicit_port(server)}"],
        capture_output=True, text=True, timeout=120)


def test_implicit_session_starts_with_protected_data(tls_server, tmp_path, area, cos):
    """A session on the implicit port starts as if the client had sent PBSZ 0 and PROT P
    (MS-FTPS 3.2.5.1, proftpd's UseImplicitSSL). lftp with ``ftps:initial-prot P`` (what
    MS-FTPS asks of a client) sends no PROT and encrypts its data connections at once; at
    PROT C it failed ("gnutls_handshake: An unexpected TLS packet was received", exit 1)
    while the server's 226 said the download was complete."""
    data = os.urandom(MIB + 17)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/i.bin", Body=data)
    back, src = tmp_path / "back.bin", tmp_path / "src.bin"
    src.write_bytes(os.urandom(MIB + 5))
    done = lftp_implicit(tls_server, PLAIN, "set ftps:initial-prot P;",
                         f'cd {area}; get i.bin -o "{back}"; put "{src}" -o up.bin; cls -1')
    assert done.returncode == 0, done.stderr[-3000:]
    assert back.read_bytes() == data
    assert cos.get_object(Bucket=ALPHA, Key=f"{area}/up.bin")["Body"].get_raw_stream().read() \
        == src.read_bytes()
    assert sorted(done.stdout.split()) == ["i.bin", "up.bin"]
    assert "---> PROT" not in done.stderr  # it sends PBSZ 0 all the same


def test_implicit_ftplib_that_assumes_prot_p(tls_server, area, cos):
    """An ftplib client that encrypts data without sending PBSZ or PROT, as MS-FTPS has
    implicit clients do: a tls_required account transfers at once (it got 522 at PROT C),
    after REIN too (a new connection's state is PROT P on this port), and PROT C needs no
    PBSZ (it is implied as well)."""
    data = os.urandom(MIB + 3)
    ftp = AssumingImplicitFTP_TLS(context=client_context(), encoding="utf-8")
    ftp.connect("127.0.0.1", implicit_port(tls_server), timeout=30)
    ftp.login(SECURE.user, SECURE.password)
    assert put(ftp, area, data).startswith("226")
    assert get(ftp, area) == data
    assert ftp.sendcmd("REIN").startswith("220 ")
    ftp.login(SECURE.user, SECURE.password)
    assert get(ftp, area) == data
    ftp.login(PLAIN.user, PLAIN.password)
    ftp.prot_c()  # PROT C alone: ftplib sends no PBSZ with it
    assert get(ftp, area) == data
    _close(ftp)


def test_curl_ftps_with_clear_data_sends_prot_c(tls_server, tmp_path, area, cos):
    """curl ``ftps://`` with ``--ftp-ssl-control`` sends PBSZ 0 and PROT C and gets clear
    data, as before protected data became the implicit port's start (a guard: it passes
    at PROT C too)."""
    data = os.urandom(MIB + 1)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/c.bin", Body=data)
    out = tmp_path / "c.bin"
    done = subprocess.run(
        [require("curl"), "-v", "--user", f"{PLAIN.user}:{PLAIN.password}", "--insecure",
         "--ftp-ssl-control", "-o", str(out),
         f"ftps://127.0.0.1:{implicit_port(tls_server)}/{area}/c.bin"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "> PROT C" in done.stderr and "< 200 Protection set to Clear" in done.stderr
    assert out.read_bytes() == data


def worker_fds(server: ServerProcess) -> int:
    """Descriptors open in the server's workers together."""
    return sum(worker.num_fds() for worker in master_of(server).children())


def leave_during_handshake(server: ServerProcess, implicit: bool, hello: bytes,
                           reset: bool) -> None:
    """Connect, start a TLS handshake with ``hello`` (on the FTP port after AUTH TLS) and
    go: a FIN, or with ``reset`` a RST, once the server's first flight came (if any)."""
    sock = socket.create_connection(
        ("127.0.0.1", implicit_port(server) if implicit else server.port), timeout=10)
    with sock:
        if not implicit:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"220")
            sock.sendall(b"AUTH TLS\r\n")
            assert reader.readline().startswith(b"234")
        sock.sendall(hello)
        if len(hello) > 100:  # a whole ClientHello: wait for the ServerHello
            assert sock.recv(100)
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_client_leaving_during_the_tls_handshake(tls_server):
    """A client that closes or resets its control connection in the middle of the TLS
    handshake, on either port: no traceback and no ERROR in the log, its place in the limits
    given back once (every worker's session count back to 0, not below), its descriptor
    closed. A guard: it holds before this change too."""
    wait_until(lambda: not sessions_by_pid(tls_server), what="earlier sessions gone")
    fds, log_size = worker_fds(tls_server), len(tls_server.log_text())
    hello = client_hello()
    for implicit in (True, False):
        for part, reset in ((hello[:20], False), (hello, False), (hello, True)):
            leave_during_handshake(tls_server, implicit, part, reset)
    wait_until(lambda: not sessions_by_pid(tls_server), what="the sessions released")
    wait_until(lambda: all(worker.sessions == 0 for worker in state_of(tls_server).workers()),
               what="every worker's session count back to 0")
    wait_until(lambda: worker_fds(tls_server) <= fds, what=f"descriptors back to {fds}")
    added = tls_server.log_text()[log_size:]
    assert "Traceback" not in added and " ERROR " not in added, added[-3000:]
    assert unhandled(tls_server) == 0


def test_plain_ftp_on_implicit_port_is_dropped(tls_server):
    received = b""
    with socket.create_connection(("127.0.0.1", implicit_port(tls_server)), timeout=10) as sock:
        sock.sendall(b"USER plainuser\r\n")  # not a TLS ClientHello: the handshake fails
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                received += chunk
    assert b"220" not in received and b"331" not in received
    wait_until(lambda: not sessions_by_pid(tls_server), what="session released")


# --- tls_required


def clear_user_replies(server: ServerProcess, *names: str) -> list[str]:
    """The reply to ``USER name`` of each name on a clear control connection of its own,
    checking that a PASS after a refusal is out of sequence (the password never counts)."""
    replies = []
    for name in names:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", server.port, timeout=30)
        try:
            replies.append(ftp.sendcmd(f"USER {name}"))
        except ftplib.error_perm as refused:
            replies.append(str(refused))
            with pytest.raises(ftplib.error_perm, match=r"^503 "):
                ftp.sendcmd("PASS whatever")
        _close(ftp)
    return replies


def test_tls_required_account_refused_on_plain_control(tls_server):
    """The USER of a tls_required account is refused before its password can follow in
    clear text; other names, existing or not, get 331. The price: the 530 tells a scanner
    that the name exists (force_local_logins_ssl answers every name alike)."""
    refused, plain, unknown = clear_user_replies(tls_server, SECURE.user, PLAIN.user,
                                                 "nosuchuser")
    assert refused == "530 TLS is required: send AUTH TLS before USER."
    assert plain.startswith("331 ") and unknown.startswith("331 ")


def test_force_local_logins_ssl_answers_every_clear_user_alike(emulator, tmp_path, certs,
                                                                area):
    """[NETWORK] force_local_logins_ssl (vsftpd's name): every USER without TLS, of a
    tls_required account, of another account or of no account, gets the same 530, so the
    replies tell no name from another and no password is sent in clear text; over AUTH TLS
    every account logs in (its data connections as its own tls_required says). As with
    vsftpd's option, an anonymous account, whose password is no secret, still logs in."""
    network = {**tls_network(*certs), "force_local_logins_ssl": "true"}
    anonymous = Account("anonymous", "unused", ALPHA, authority="R",
                        extra="anonymous_enable = true")
    with ServerProcess(str(tmp_path), emulator.port, [PLAIN, SECURE, anonymous],
                       network=network) as proc:
        replies = clear_user_replies(proc, SECURE.user, PLAIN.user, "nosuchuser")
        assert replies == ["530 TLS is required: send AUTH TLS before USER."] * 3
        guest = proc.login("anonymous", "guest@example.com")
        assert guest.sendcmd("PWD").startswith("257")
        _close(guest)
        url = f"ftp://127.0.0.1:{proc.port}/"
        done = subprocess.run([require("curl"), "--user", f"{PLAIN.user}:{PLAIN.password}",
                               "--silent", "--show-error", url],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 67 and "530" in done.stderr  # curl: login denied
        ftp = tls_login(proc, PLAIN, prot_p=False)
        assert put(ftp, area, b"clear data after a TLS login").startswith("226")
        _close(ftp)
        listing = run([require("curl"), "--user", f"{PLAIN.user}:{PLAIN.password}",
                       "--silent", "--show-error", "--ssl-reqd", "--insecure", "--list-only",
                       url])
        assert area in listing.split()


def test_tls_required_account_needs_prot_p(tls_server, area):
    ftp = tls_login(tls_server, SECURE, prot_p=False)
    with pytest.raises(ftplib.error_perm, match="522"):
        ftp.nlst()
    with pytest.raises(ftplib.error_perm, match="522"):
        put(ftp, area, b"clear")
    ftp.sendcmd("PBSZ 0")
    with pytest.raises(ftplib.error_perm, match="534"):
        ftp.sendcmd("PROT C")
    ftp.prot_p()
    assert put(ftp, area, b"protected").startswith("226")
    assert get(ftp, area) == b"protected"
    _close(ftp)


# --- force_local_data_ssl: vsftpd's option, PROT P for every login but anonymous ones

CLEAR_DATA_REFUSED = "522 Data connections must be encrypted"
GUEST = Account("anonymous", "unused", ALPHA, authority="R", extra="anonymous_enable = true")


@pytest.fixture(scope="module")
def data_ssl_server(emulator, tmp_path_factory, certs):
    network = {**tls_network(*certs), "force_local_data_ssl": "true"}
    with ServerProcess(str(tmp_path_factory.mktemp("datassl")), emulator.port,
                       [PLAIN, GUEST], network=network) as proc:
        yield proc


def refused_on_open_data_connection(ftp: ftplib.FTP, command: str, active: bool) -> bytes:
    """Open the data connection first (PASV and connect, as curl and lftp do; or PORT, which
    the server connects at once), send ``command`` and expect the 522; return what came on
    the data connection, which the server must have closed, listener and all."""
    if active:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            ftp.sendport("127.0.0.1", listener.getsockname()[1])
            conn, _ = listener.accept()
    else:
        host, port = ftp.makepasv()
        conn = socket.create_connection((host, port), timeout=30)
    with conn:
        with pytest.raises(ftplib.error_perm, match=rf"^{CLEAR_DATA_REFUSED}"):
            ftp.sendcmd(command)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                received += chunk
    if not active:
        assert connection_refused(port)  # the passive port is closed, nothing is held
    return received


@pytest.mark.parametrize("tls", [True, False], ids=["tls-control", "clear-control"])
@pytest.mark.parametrize("active", [False, True], ids=["passive", "active"])
def test_force_local_data_ssl_refuses_clear_transfers_before_anything_opens(
        data_ssl_server, area, cos, tls, active):
    """A login without PROT P (PROT C, or no TLS at all) gets vsftpd's 522 for every
    transfer and listing, before COS is asked anything: the data connection it already
    opened is closed unread, the passive port closed, no object or upload is left. Then
    PROT P makes the same session work."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/secret", Body=b"not for clear text")
    ftp = tls_login(data_ssl_server, PLAIN, prot_p=False) if tls else \
        data_ssl_server.login(PLAIN.user, PLAIN.password)
    ftp.voidcmd("TYPE I")
    if tls:
        assert ftp.sendcmd("PBSZ 0").startswith("200")
        assert ftp.sendcmd("PROT C").startswith("200")  # as vsftpd: refused at the transfer
    for command in (f"STOR {area}/up", f"APPE {area}/up", f"RETR {area}/secret",
                    f"LIST {area}", f"NLST {area}", f"MLSD {area}"):
        assert refused_on_open_data_connection(ftp, command, active) == b"", command
    assert ftp.voidcmd("NOOP").startswith("200")
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/up") is False
    assert pending_uploads(cos, f"{area}/up") == []
    if tls:
        ftp.prot_p()
        assert put(ftp, f"{area}/up", b"protected").startswith("226")
        assert get(ftp, f"{area}/secret") == b"not for clear text"
    _close(ftp)
    assert "Traceback" not in data_ssl_server.log_text()


def test_force_local_data_ssl_spares_anonymous(data_ssl_server, area, cos):
    """As vsftpd's option: an anonymous_enable account transfers over clear FTP."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/pub", Body=b"public")
    guest = data_ssl_server.login("anonymous", "guest@example.com")
    assert get(guest, f"{area}/pub") == b"public"
    assert guest.nlst(area) == ["pub"]
    _close(guest)
    out = run([require("curl"), "--silent", "--show-error",
               f"ftp://127.0.0.1:{data_ssl_server.port}/{area}/pub"])
    assert out == "public"


def curl_as(server: ServerProcess, account: Account, url_path: str, *args: str):
    """curl as ``account`` on the FTP port; its CompletedProcess (stderr: -v's dialogue)."""
    url = f"ftp://127.0.0.1:{server.port}/{url_path}"
    return subprocess.run([require("curl"), "-v", "--user", f"{account.user}:{account.password}",
                           "--insecure", "--ftp-pasv", *args, url],
                          capture_output=True, text=True, timeout=60)


def test_force_local_data_ssl_with_curl(data_ssl_server, tmp_path, area, cos):
    """curl --ssl and --ssl-reqd send PROT P and transfer; --ftp-ssl-control (TLS login,
    clear data) and plain FTP are refused with the 522, which curl reports as a failed
    RETR (19) or upload (25), and nothing is stored."""
    data = os.urandom(MIB + 13)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/d.bin", Body=data)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(MIB // 2 + 7))
    for flags in (["--ssl"], ["--ssl-reqd"]):
        out = tmp_path / f"out{len(flags[0])}"
        done = curl_as(data_ssl_server, PLAIN, f"{area}/d.bin", *flags, "-o", str(out))
        assert done.returncode == 0, done.stderr[-2000:]
        assert "> PROT P" in done.stderr and out.read_bytes() == data
    done = curl_as(data_ssl_server, PLAIN, f"{area}/up.bin", "--ssl-reqd", "-T", str(src))
    assert done.returncode == 0, done.stderr[-2000:]
    stored = cos.get_object(Bucket=ALPHA, Key=f"{area}/up.bin")["Body"].get_raw_stream()
    assert stored.read() == src.read_bytes()
    for flags in (["--ftp-ssl-control"], []):
        done = curl_as(data_ssl_server, PLAIN, f"{area}/d.bin", *flags,
                       "-o", str(tmp_path / "clear"))
        assert done.returncode == 19, done.stderr[-2000:]  # CURLE_FTP_COULDNT_RETR_FILE
        assert f"< {CLEAR_DATA_REFUSED}" in done.stderr
        assert not (tmp_path / "clear").exists()
        done = curl_as(data_ssl_server, PLAIN, f"{area}/clear.bin", *flags, "-T", str(src))
        assert done.returncode == 25, done.stderr[-2000:]  # CURLE_UPLOAD_FAILED
        assert f"< {CLEAR_DATA_REFUSED}" in done.stderr
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/clear.bin") is False
    assert pending_uploads(cos, f"{area}/clear.bin") == []


def lftp_round_trip(server, account, tmp_path, area: str, protect: str) -> str:
    """lftp over AUTH TLS with ``ftp:ssl-protect-data`` and ``-list`` set to ``protect``:
    put, get and list a file; assert it exits 0 with the same bytes; return its debug log."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(2 * MIB + 5))
    back = tmp_path / "back.bin"
    settings = ("set cmd:fail-exit true; set net:max-retries 3; set net:reconnect-interval-base 1; "
                "set ftp:passive-mode true; set ftp:ssl-force true; set ssl:verify-certificate no; "
                f"set ftp:ssl-protect-data {protect}; set ftp:ssl-protect-list {protect};")
    done = subprocess.run(
        [require("lftp"), "-d", "-u", f"{account.user},{account.password}", "-p",
         str(server.port), "-e",
         f'{settings} mkdir {area}; cd {area}; put "{src}" -o l.bin; get l.bin -o "{back}"; '
         "cls -1; bye", "127.0.0.1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert back.read_bytes() == src.read_bytes()
    assert done.stdout.split() == ["l.bin"]
    return done.stderr


@pytest.mark.parametrize("protect", ["yes", "no"])
def test_force_local_data_ssl_with_lftp(data_ssl_server, tmp_path, area, protect):
    """lftp with ftp:ssl-protect-data and -list yes transfers at once; with no, it reads the
    522 of its clear RETR, STOR or LIST (vsftpd's refusal, at the transfer command), sets
    them to yes and tries again with PROT P: both exit 0 with the same bytes."""
    log = lftp_round_trip(data_ssl_server, PLAIN, tmp_path, area, protect)
    refused = log.count(f"<--- {CLEAR_DATA_REFUSED}")
    if protect == "yes":
        assert refused == 0, log[-3000:]
    else:  # the upload's and the listing's first tries (the download inherits PROT P)
        assert refused == 2 and "---> PROT P" in log, log[-3000:]


def test_tls_required_account_with_lftp_not_protecting_data(tls_server, tmp_path, area):
    """A tls_required account's clear transfer is refused at the transfer command, as
    force_local_data_ssl's: lftp with ftp:ssl-protect-data no then sends PROT P and tries
    again, and exits 0 (refused at PASV, it gave up: exit 1)."""
    log = lftp_round_trip(tls_server, SECURE, tmp_path, area, "no")
    # Its PROT C gets 534 (ignored), its clear STOR 522; then PROT P for the rest.
    assert "<--- 522 This account requires protected data connections" in log, log[-3000:]
    assert "---> PROT P" in log, log[-3000:]


def test_rein_keeps_the_control_connection_encrypted_and_resets_pbsz_and_prot(tls_server,
                                                                              area):
    """REIN resets the parameters (RFC 959 4.1.1), PBSZ and PROT among them (RFC 2228), but
    the control connection stays TLS: going back to clear text would put the next USER and
    PASS on the wire. The next login negotiates protection again."""
    ftp = tls_login(tls_server, SECURE)
    assert ftp.sendcmd("REIN").startswith("220 ")
    ftp.login(SECURE.user, SECURE.password)  # over the same TLS session: no AUTH again
    with pytest.raises(ftplib.error_perm, match=r"^522 "):
        ftp.nlst()
    with pytest.raises(ftplib.error_perm, match=r"^503 "):
        ftp.sendcmd("PROT P")  # PBSZ first, as after AUTH
    ftp.prot_p()
    assert put(ftp, area, b"after rein").startswith("226")
    _close(ftp)


def test_a_new_user_keeps_type_pbsz_and_prot(tls_server, area, cos):
    """A USER in a logged-in session starts a new login and nothing else: RFC 959 4.1.1,
    "All transfer parameters are unchanged" (TYPE), and the security state is the
    connection's (RFC 2228: AUTH resets it and then asks for USER again; a login does
    not reset it, and some clients send PBSZ and PROT before USER). The new
    login, of a tls_required account, transfers at once under the PROT P and TYPE I its
    predecessor set; only REIN resets them (the test above)."""
    data = b"two\nlines\r\n\x00"  # TYPE A would send \r\n for the \n
    cos.put_object(Bucket=ALPHA, Key=area, Body=data)
    ftp = tls_login(tls_server, PLAIN)
    ftp.voidcmd("TYPE I")
    ftp.login(SECURE.user, SECURE.password)  # USER and PASS on the same TLS session
    received = b""
    with ftp.transfercmd(f"RETR {area}") as conn:  # no TYPE, PBSZ or PROT again
        while chunk := conn.recv(65536):
            received += chunk
        conn.unwrap()
    assert ftp.voidresp().startswith("226")
    assert received == data
    _close(ftp)


def test_curl_logs_in_anew_and_keeps_its_protection(tls_server, tmp_path, area, cos):
    """curl -Q sends USER and PASS of a tls_required account after its own login, PBSZ
    and PROT P: the download then runs as that account under the same PROT P (before,
    PROT was reset and the tls_required account's EPSV and PASV got 522)."""
    data = os.urandom(MIB + 3)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/q.bin", Body=data)
    out = tmp_path / "q.bin"
    done = subprocess.run(
        [require("curl"), "-v", "--user", f"{PLAIN.user}:{PLAIN.password}", "--ssl-reqd",
         "--insecure", "-Q", f"USER {SECURE.user}", "-Q", f"PASS {SECURE.password}",
         "-o", str(out), f"ftp://127.0.0.1:{tls_server.port}/{area}/q.bin"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("> PROT P") == 1 and "< 230" in done.stderr
    assert out.read_bytes() == data


def test_security_replies_are_those_rfc_2228_lists(tls_server):
    """AUTH of a mechanism the server does not know: 504; PROT of a level TLS has not (S,
    E): 536; of no level at all: 504 (pyftpdlib answered 502, 521 and 502: 502 means the
    command is not implemented, and 521 is no PROT reply). Kept as pyftpdlib has them:
    PBSZ and PROT before AUTH, PROT before PBSZ and a second AUTH are 503, PBSZ of another
    size is 200 "PBSZ=0" (RFC 4217: the server says 0). CCC is refused, as policy: 533 on a
    clear control connection (there is nothing to clear), 534 on a TLS one (it stays
    encrypted), the codes proftpd gives; it was 500 "not understood"."""
    ftp = ftplib.FTP_TLS(context=client_context(), encoding="utf-8")
    ftp.connect("127.0.0.1", tls_server.port, timeout=30)
    with pytest.raises(ftplib.error_perm, match=r"^504 "):
        ftp.sendcmd("AUTH KERBEROS_V4")
    for command in ("PBSZ 0", "PROT P"):  # RFC 2228: 503 before a security exchange
        with pytest.raises(ftplib.error_perm, match=r"^503 "):
            ftp.sendcmd(command)
    with pytest.raises(ftplib.error_perm, match=r"^533 "):
        ftp.sendcmd("CCC")
    ftp.auth()
    with pytest.raises(ftplib.error_perm, match=r"^534 .*stays encrypted"):  # before login too
        ftp.sendcmd("CCC")
    with pytest.raises(ftplib.error_perm, match=r"^503 "):  # RFC 4217: PBSZ before PROT
        ftp.sendcmd("PROT P")
    ftp.login(PLAIN.user, PLAIN.password)
    assert ftp.sendcmd("PBSZ 1024").startswith("200 PBSZ=0")  # RFC 4217: 0 for TLS
    for level in ("S", "E"):
        with pytest.raises(ftplib.error_perm, match=r"^536 "):
            ftp.sendcmd(f"PROT {level}")
    with pytest.raises(ftplib.error_perm, match=r"^504 "):
        ftp.sendcmd("PROT X")
    for mechanism in ("TLS", "SSL"):  # TLS is on already
        with pytest.raises(ftplib.error_perm, match=r"^503 "):
            ftp.sendcmd(f"AUTH {mechanism}")
    with pytest.raises(ftplib.error_perm, match=r"^534 .*stays encrypted"):
        ftp.sendcmd("CCC")
    assert ftp.sendcmd("PROT P").startswith("200")  # and the session goes on over TLS
    _close(ftp)


def test_feat_and_help_name_what_ftps_supports(tls_server):
    """FEAT lists the FTPS features a client may use (AUTH TLS and SSL, PBSZ, PROT) and not
    CCC, which is refused; HELP lists CCC among the commands it recognises, and HELP CCC
    says it is refused (it was "501 Unrecognized command.")."""
    ftp = ftplib.FTP_TLS(context=client_context(), encoding="utf-8")
    ftp.connect("127.0.0.1", tls_server.port, timeout=30)
    features = [line.strip() for line in ftp.sendcmd("FEAT").splitlines()[1:-1]]
    assert {"AUTH TLS", "AUTH SSL", "PBSZ", "PROT"} <= set(features)
    assert not [feature for feature in features if feature.startswith("CCC")]
    assert "CCC" in ftp.sendcmd("HELP").split()
    assert re.match(r"214 Syntax: CCC \(refused", ftp.sendcmd("HELP CCC"))
    _close(ftp)


def test_commands_sent_in_clear_with_auth_tls_are_dropped(tls_server):
    """AUTH TLS and USER in one clear-text packet, then PASS over TLS: the USER, which
    anything on the path could have added, is dropped (logged); over TLS the session is as a
    new connection is, and the PASS gets 503 (USER first). Before: the USER ran inside the
    TLS session, its 331 sent over TLS, and the PASS logged in (plain-text command
    injection: CVE-2011-0411 in Postfix, CVE-2011-1575 in Pure-FTPd)."""
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=30) as plain:
        replies = plain.makefile("rb")
        assert replies.readline().startswith(b"220")
        plain.sendall(f"AUTH TLS\r\nUSER {PLAIN.user}\r\n".encode())
        assert replies.readline().startswith(b"234")
        with client_context().wrap_socket(plain, server_hostname="127.0.0.1") as secure:
            secure.sendall(f"PASS {PLAIN.password}\r\n".encode())
            assert secure.makefile("rb").readline().startswith(b"503")
    assert "sent in clear text with AUTH TLS, dropped" in tls_server.log_text()


def test_clients_asking_for_ccc_go_on_over_tls(tls_server, tmp_path, area, cos):
    """curl --ftp-ssl-ccc and lftp with ftp:ssl-use-ccc yes send CCC after the login; the
    534 leaves the control connection encrypted and both go on to download (curl clears
    TLS only on a reply below 500, lftp only on a 2xx)."""
    data = os.urandom(50_001)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/c.bin", Body=data)
    out = tmp_path / "curl.bin"
    done = subprocess.run(
        [require("curl"), "-v", "--user", f"{PLAIN.user}:{PLAIN.password}", "--ssl-reqd",
         "--insecure", "--ftp-ssl-ccc", "-o", str(out),
         f"ftp://127.0.0.1:{tls_server.port}/{area}/c.bin"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "> CCC" in done.stderr and "< 534 " in done.stderr, done.stderr[-2000:]
    assert out.read_bytes() == data
    back = tmp_path / "lftp.bin"
    done = lftp_explicit(tls_server, PLAIN, "set ftp:ssl-use-ccc yes;",
                         f'get {area}/c.bin -o "{back}"')
    assert done.returncode == 0, done.stderr[-3000:]
    assert "---> CCC" in done.stderr and "<--- 534 " in done.stderr, done.stderr[-3000:]
    assert back.read_bytes() == data


class LegacyAuthFTP_TLS(ftplib.FTP_TLS):
    """A client of the drafts before RFC 4217: ``AUTH SSL`` (or ``TLS-P``) protects the
    data connections too, so it sends no PBSZ or PROT."""

    mechanism = "SSL"

    def auth(self) -> str:
        reply = self.voidcmd(f"AUTH {self.mechanism}")
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)
        self.file = self.sock.makefile(mode="r", encoding=self.encoding)
        self._prot_p = True  # ftplib's flag of PROT P
        return reply


@pytest.mark.parametrize("mechanism", ["SSL", "TLS-P"])
def test_auth_ssl_and_tls_p_protect_data_connections(tls_server, area, cos, mechanism):
    """AUTH SSL and AUTH TLS-P imply PBSZ 0 and PROT P, as in vsftpd and proftpd (and the
    drafts before RFC 4217, where TLS-P meant a protected data channel); AUTH TLS and TLS-C
    leave data clear until PROT P (RFC 4217). REIN goes back to what the AUTH gave. Clients
    that send PROT anyway are served as they ask (curl, which sends AUTH SSL first, sends
    PBSZ and PROT after it)."""
    data = os.urandom(MIB + 11)
    cos.put_object(Bucket=ALPHA, Key=area, Body=data)
    ftp = LegacyAuthFTP_TLS(context=client_context(), encoding="utf-8")
    ftp.mechanism = mechanism
    ftp.connect("127.0.0.1", tls_server.port, timeout=30)
    ftp.login(SECURE.user, SECURE.password)
    assert get(ftp, area) == data
    assert ftp.sendcmd("REIN").startswith("220 ")
    ftp.login(SECURE.user, SECURE.password)
    assert get(ftp, area) == data
    _close(ftp)


def test_other_accounts_keep_plain_ftp_on_the_same_port(tls_server, area):
    ftp = tls_server.login(PLAIN.user, PLAIN.password)
    assert put(ftp, area, b"in the clear").startswith("226")
    _close(ftp)
    secured = tls_login(tls_server, PLAIN, prot_p=False)  # TLS control, clear data: allowed
    assert get(secured, area) == b"in the clear"
    _close(secured)


def test_aborted_tls_upload_leaves_no_object(tls_server, area, cos):
    ftp = tls_login(tls_server, SECURE)
    conn = start_upload(ftp, cos, area, 3 * MIB)
    replies = abort_transfer(ftp, conn)
    assert replies[-1].startswith(("225", "226"))
    wait_until(lambda: not pending_uploads(cos, area), what="multipart upload aborted")
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False
    assert ftp.voidcmd("NOOP").startswith("200")
    _close(ftp)


def test_abor_before_the_data_handshake_answers_the_download_then_itself(tls_server, area,
                                                                         cos):
    """ABOR of a RETR answered 125 whose data connection has not done its TLS handshake (no
    byte sent yet): 426 is the RETR's final reply, then 226 the ABOR's. Only 225 came before,
    and lftp's ``pget``, aborting a segment so under load, waited for the RETR's reply until
    its ``net:timeout``."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=os.urandom(100_000))
    ftp = tls_login(tls_server, PLAIN)
    ftp.voidcmd("TYPE I")
    with socket.create_connection(ftp.makepasv()):  # never starts its TLS handshake
        assert ftp.sendcmd(f"RETR {area}/f")[:3] in ("125", "150")
        ftp.sock.sendall(b"ABOR\r\n")
        first = ftp.getline()
        assert first.startswith("426"), first
        assert ftp.getline().startswith("226")
    assert ftp.voidcmd("NOOP").startswith("200")  # no reply left over
    _close(ftp)


@pytest.mark.parametrize("command", ["RETR", "STOR"])
def test_failed_data_handshake_gets_one_522(tls_server, area, cos, command):
    """A data connection whose TLS handshake fails (here: bytes that are no ClientHello)
    gets one final reply, RFC 4217's 522, and the log says why. pyftpdlib sent its 522 on
    the control connection and then closed the data connection, which found its handshake
    pending with no reply set and sent a 426 too: two final replies to one command (lftp:
    "extra server response"), the second read as the next command's."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=b"data")
    ftp = tls_login(tls_server, PLAIN)
    ftp.voidcmd("TYPE I")
    with socket.create_connection(ftp.makepasv(), timeout=10) as conn:
        assert ftp.sendcmd(f"{command} {area}/f")[:3] in ("125", "150")
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not a TLS record: the handshake fails
        reply = ftp.getline()
        assert reply.startswith("522 "), reply
    assert ftp.sendcmd("NOOP").startswith("200"), "a second reply was left over"
    assert "the TLS handshake of a data connection failed: " in tls_server.log_text()
    assert cos.get_object(Bucket=ALPHA, Key=f"{area}/f")["Body"].get_raw_stream().read() \
        == b"data"  # the STOR stored nothing over it
    _close(ftp)


def lftp_explicit(server: ServerProcess, account: Account, settings: str,
                  commands: str) -> subprocess.CompletedProcess:
    """Run lftp with ``-d`` over AUTH on the FTP port as ``account``: its stderr is its debug
    log, every command and reply."""
    return subprocess.run(
        [require("lftp"), "-d", "-u", f"{account.user},{account.password}", "-p",
         str(server.port), "-e",
         "set cmd:fail-exit true; set net:max-retries 1; set net:timeout 20; "
         f"set ssl:verify-certificate no; {settings} {commands}; bye", "127.0.0.1"],
        capture_output=True, text=True, timeout=120)


def test_lftp_with_ssl_auth_ssl_transfers_over_tls_1_3(tls_server, tmp_path, area, cos):
    """lftp (GnuTLS) with ``ftp:ssl-auth SSL`` sets the priority
    ``NORMAL:+VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1:-VERS-TLS1.2`` on every connection (its
    "hack for some ftp servers" meant SSL 3.0, which GnuTLS no longer builds): its ClientHello
    offers TLS 1.3 alone. Data connections took TLS 1.2 only, and every transfer got
    ``522 Data connections take TLS 1.2, which the client did not offer``; with TLS 1.3
    data connections whose tickets went out after the handshake, lftp's uploads lost their
    end to a reset (0 of 12 byte-exact, measured). Now three uploads, a listing and a
    download go through, byte-exact."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * MIB + 1))
    back = tmp_path / "back.bin"
    done = lftp_explicit(tls_server, PLAIN, "set ftp:ssl-auth SSL;",
                         f'mkdir {area}; cd {area}; put "{src}" -o a.bin; put "{src}" -o b.bin; '
                         f'put "{src}" -o c.bin; ls; get b.bin -o "{back}"')
    assert done.returncode == 0, done.stderr[-3000:]
    assert "---> AUTH SSL" in done.stderr
    assert back.read_bytes() == src.read_bytes()
    for name in ("a.bin", "c.bin"):
        assert cos.get_object(Bucket=ALPHA, Key=f"{area}/{name}")["Body"] \
            .get_raw_stream().read() == src.read_bytes()


def test_curl_with_tls_1_3_uploads_and_downloads(tls_server, tmp_path, area):
    """``curl --tlsv1.3`` (TLS 1.3 or later on every connection) got ``Bad PASV/EPSV
    response: 125`` (exit 13) at each transfer while data connections took TLS 1.2 only."""
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(3 * MIB + 7))
    curl(tls_server, f"{area}/up.bin", "--tlsv1.3", "--ftp-create-dirs", "-T", str(src))
    out = tmp_path / "down.bin"
    curl(tls_server, f"{area}/up.bin", "--tlsv1.3", "-o", str(out))
    assert out.read_bytes() == src.read_bytes()


def test_download_waiting_for_its_data_handshake_does_not_spin(tls_server, area, cos):
    """A RETR's data connection whose client has not sent its ClientHello yet (lftp connects
    first and starts TLS once the 150 came: a round trip) is watched for reading only.
    pyftpdlib kept the write interest the download had asked for and added reading: the
    socket, always writable, woke the session's IO loop again and again, each turn a
    handshake attempt that wanted to read (and a DEBUG line): a core spun until the client
    spoke (0.67 s of CPU in a 2 s wait, 36,602 lines, 13 MiB of log). Counted here: the
    attempts made while the client does 100 NOOP round trips: 539 in 200 of them (0.11 s)
    before, at most 2 now."""
    data = os.urandom(100_000)
    cos.put_object(Bucket=ALPHA, Key=area, Body=data)
    ftp = tls_login(tls_server, PLAIN)
    ftp.voidcmd("TYPE I")
    with socket.create_connection(ftp.makepasv(), timeout=10) as raw:
        assert ftp.sendcmd(f"RETR {area}")[:3] in ("125", "150")
        log_size = len(tls_server.log_text())
        for _ in range(100):
            assert ftp.sendcmd("NOOP").startswith("200")
        attempts = [line for line in tls_server.log_text()[log_size:].splitlines()
                    if "_do_ssl_handshake, err: ssl-want-read" in line
                    and "TLSDTPHandler" in line]
        assert len(attempts) <= 2, f"{len(attempts)} handshake attempts while waiting"
        with client_context().wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
    assert ftp.voidresp().startswith("226")
    assert received == data
    _close(ftp)


def inject_garbage(tls_sock: ssl.SSLSocket) -> None:
    """Write bytes that are no TLS record under the TLS layer: the server's next read fails."""
    with socket.socket(fileno=os.dup(tls_sock.fileno())) as raw:
        raw.sendall(b"\x17\x03\x03\x00\x10" + b"not a tls record")


def unhandled(server: ServerProcess) -> int:
    """How many errors pyftpdlib logged as unhandled (with a traceback) so far."""
    return server.log_text().count("unhandled exception")


def test_broken_tls_control_connection_releases_the_session(tls_server):
    """A TLS record that does not decrypt is the client's (or the network's) doing: one
    warning line, not an "unhandled exception" and its traceback."""
    ftp = tls_login(tls_server, PLAIN)
    wait_until(lambda: sessions_by_pid(tls_server), what="session counted")
    errors = unhandled(tls_server)
    inject_garbage(ftp.sock)
    wait_until(lambda: not sessions_by_pid(tls_server), what="session released")
    ftp.close()
    assert "the TLS control connection broke: decryption failed or bad record mac" in \
        tls_server.log_text()
    assert unhandled(tls_server) == errors


def test_broken_tls_upload_is_answered_and_parked(tls_server, area, cos):
    """The reply and the log say what broke (pyftpdlib's was "426 Internal error" and an
    "unhandled exception" with its traceback)."""
    ftp = tls_login(tls_server, SECURE)
    conn = start_upload(ftp, cos, area, 2 * MIB)
    errors = unhandled(tls_server)
    inject_garbage(conn)
    with pytest.raises(ftplib.error_temp, match="426 The TLS data connection broke"):
        ftp.voidresp()
    conn.close()
    # A broken connection is not a cancel: the part that arrived is kept for REST + STOR.
    wait_until(lambda: is_parked(cos, area), what="the upload to be parked")
    assert f"path=/{area}: the TLS data connection broke: decryption failed or bad record " \
        "mac" in tls_server.log_text()
    assert unhandled(tls_server) == errors
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False
    assert ftp.voidcmd("NOOP").startswith("200")
    _close(ftp)


def test_status_and_log_name_the_tls_listeners(tls_server):
    out = tls_server.ctl("status")
    assert out.returncode == 0, out.stderr
    assert f"port {tls_server.port} (AUTH TLS)" in out.stdout
    assert f"implicit FTPS port {implicit_port(tls_server)}" in out.stdout
    log = tls_server.log_text()
    assert f"implicit FTPS on port {implicit_port(tls_server)}" in log
    assert f"TLS required for: {SECURE.user}" in log


# --- configuration


def config_text(network: str = "", account: str = "") -> str:
    return f"""
[COS_ACCOUNT_0]
cos_secretid = id
cos_secretkey = key
cos_bucket = alpha-1250000000
cos_region = ap-guangzhou
home_dir = /
ftp_login_user_name = user
ftp_login_user_password = pw
authority = RW
{account}

[NETWORK]
listen_port = 2121
{network}
"""


def config_error(network: str = "", account: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(config_text(network, account), "test.conf")
    return str(info.value)


def test_tls_is_off_by_default():
    config = parse_config(config_text(), "test.conf")
    assert config.network.tls is None and config.network.implicit_tls_port == 0
    assert config.accounts[0].tls_required is False


def test_tls_settings_load(certs):
    cert, key = certs
    config = parse_config(config_text(f"tls_certfile = {cert}\ntls_keyfile = {key}\n"
                                      "implicit_tls_port = 990", "tls_required = yes"))
    assert config.network.tls.certfile == cert and config.network.implicit_tls_port == 990
    assert config.network.tls.subject == "CN=127.0.0.1"
    assert config.accounts[0].tls_required is True
    assert config.warnings == ()
    assert not config.network.tls.force_data  # force_local_data_ssl: off unless set


def test_force_local_data_ssl_loads(certs):
    config = parse_config(config_text(f"tls_certfile = {certs[0]}\ntls_keyfile = {certs[1]}\n"
                                      "force_local_data_ssl = YES"))
    assert config.network.tls.force_data and not config.network.tls.force_logins
    assert config.warnings == ()


def test_relative_certificate_paths_follow_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "etc" / "certs").mkdir(parents=True)
    cert, _ = write_certificate(tmp_path / "etc" / "certs")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    text = config_text("tls_certfile = certs/server.crt\ntls_keyfile = certs/server.key")
    tls = parse_config(text, str(tmp_path / "etc" / "vsftpd.conf")).network.tls
    assert tls.certfile == cert  # and certs/server.key was read, or parsing would have failed


def test_one_file_may_hold_certificate_and_key(certs, tmp_path):
    both = tmp_path / "both.pem"
    both.write_bytes(pathlib.Path(certs[0]).read_bytes() + pathlib.Path(certs[1]).read_bytes())
    assert parse_config(config_text(f"tls_certfile = {both}")).network.tls is not None


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cannot read .*: No such file or directory"),
    (b"not a certificate", "holds no valid PEM certificate"),
])
def test_unusable_certificate_file_is_refused(tmp_path, certs, content, problem):
    path = tmp_path / "cert.pem"
    if content is not None:
        path.write_bytes(content)
    message = config_error(f"tls_certfile = {path}\ntls_keyfile = {certs[1]}")
    assert message.startswith("test.conf [NETWORK] tls_certfile: ")
    assert re.search(problem, message), message


def test_unreadable_certificate_path_is_refused(tmp_path):
    message = config_error(f"tls_certfile = {tmp_path}")  # a directory cannot be read
    assert "[NETWORK] tls_certfile: cannot read" in message


def test_key_of_another_certificate_is_refused(tmp_path, certs):
    _, other_key = write_certificate(tmp_path, "other")
    message = config_error(f"tls_certfile = {certs[0]}\ntls_keyfile = {other_key}")
    assert "[NETWORK] tls_keyfile: the private key in" in message
    assert f"does not belong to the certificate in {certs[0]}" in message


def test_encrypted_key_is_refused(tmp_path):
    cert, key = write_certificate(tmp_path, "locked", encrypt=True)
    message = config_error(f"tls_certfile = {cert}\ntls_keyfile = {key}")
    assert "[NETWORK] tls_keyfile: the private key in" in message and "encrypted" in message


def test_file_without_key_is_refused(certs):
    message = config_error(f"tls_certfile = {certs[0]}")  # no tls_keyfile: key expected here
    assert "[NETWORK] tls_certfile: " in message and "no valid PEM private key" in message


@pytest.mark.parametrize(("network", "account", "where"), [
    ("", "tls_required = true", "[COS_ACCOUNT_0] tls_required: needs [NETWORK] tls_certfile"),
    ("implicit_tls_port = 990", "", "[NETWORK] implicit_tls_port: needs tls_certfile"),
    ("tls_keyfile = /k.pem", "", "[NETWORK] tls_keyfile: needs tls_certfile"),
    ("require_ssl_reuse = true", "", "[NETWORK] require_ssl_reuse: needs tls_certfile"),
    ("force_local_logins_ssl = true", "",
     "[NETWORK] force_local_logins_ssl: needs tls_certfile"),
    ("force_local_data_ssl = true", "", "[NETWORK] force_local_data_ssl: needs tls_certfile"),
])
def test_tls_options_need_a_certificate(network, account, where):
    assert where in config_error(network, account)


def test_implicit_port_must_differ_from_listen_port(certs):
    message = config_error(f"tls_certfile = {certs[0]}\ntls_keyfile = {certs[1]}\n"
                           "implicit_tls_port = 2121")
    assert "[NETWORK] implicit_tls_port: 2121 is already listen_port" in message


@pytest.mark.parametrize(("valid_from", "expected"), [(-40, "expired on"),
                                                      (2, "is not valid before")])
def test_out_of_date_certificate_is_a_warning(tmp_path, valid_from, expected):
    cert, key = write_certificate(tmp_path, valid_from=valid_from)
    config = parse_config(config_text(f"tls_certfile = {cert}\ntls_keyfile = {key}"))
    assert config.network.tls is not None
    assert len(config.warnings) == 1 and expected in config.warnings[0]


def test_tls_lines_of_the_shipped_example_load(certs, monkeypatch):
    """Uncommented, with real files, the example's FTPS lines make a valid configuration."""
    monkeypatch.chdir(ROOT)
    with open("conf/vsftpd.conf.example", encoding="utf-8") as handle:
        text = handle.read()
    values = {"tls_certfile": certs[0], "tls_keyfile": certs[1], "tls_required": "true",
              "force_local_data_ssl": "true"}
    for option, value in values.items():
        text, count = re.subn(rf"(?m)^# {option} = \S+", f"{option} = {value}", text)
        assert count == 1, option
    text = re.sub(r"(?m)^# (implicit_tls_port = )", r"\1", text)
    config = parse_config(text, "example", {})
    assert config.network.tls is not None and config.network.implicit_tls_port == 990
    assert config.network.tls.force_data
    assert config.accounts[0].tls_required and not config.accounts[1].tls_required


def test_cosftpctl_check_names_the_bad_certificate(emulator, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    proc = ServerProcess(str(tmp_path), emulator.port, [SECURE],
                         network={"tls_certfile": str(garbage)})
    proc.write_config()
    done = proc.ctl("check")
    assert done.returncode == 2
    assert f"[NETWORK] tls_certfile: {garbage} holds no valid PEM certificate" in done.stderr


def test_cosftpctl_check_reports_tls(emulator, tmp_path, certs):
    proc = ServerProcess(str(tmp_path), emulator.port, [SECURE], network=tls_network(*certs))
    proc.write_config()
    done = proc.ctl("check")
    assert done.returncode == 0, done.stderr
    assert f"FTPS with {certs[0]}" in done.stdout


# --- reload


def test_reload_with_broken_certificate_keeps_serving_tls(emulator, tmp_path, area):
    cert, key = write_certificate(tmp_path, "renewed")
    with ServerProcess(str(tmp_path), emulator.port, [SECURE],
                       network=tls_network(cert, key)) as proc:
        with open(cert, "w", encoding="ascii") as handle:
            handle.write("truncated by a botched renewal\n")
        done = proc.ctl("reload")
        assert done.returncode != 0 and "[NETWORK] tls_certfile" in done.stderr
        os.kill(master_of(proc).pid, signal.SIGHUP)  # straight to the master, too
        wait_until(lambda: "reload failed" in proc.log_text(), what="reload failure logged")
        assert "holds no valid PEM certificate" in proc.log_text()
        assert state_of(proc).master().generation == 1
        ftp = tls_login(proc, SECURE)  # the certificate loaded at start still serves
        assert put(ftp, area, b"still secure").startswith("226")
        _close(ftp)


def test_reload_moves_the_implicit_port(emulator, tmp_path, certs):
    with ServerProcess(str(tmp_path), emulator.port, [SECURE],
                       network=tls_network(*certs, implicit=True)) as proc:
        _close(implicit_login(proc, SECURE))
        old_port, new_port = implicit_port(proc), closed_port()
        proc.network["implicit_tls_port"] = str(new_port)
        proc.write_config()
        release_port(new_port)  # held until now: no other test file's server takes it
        done = proc.ctl("reload")
        assert done.returncode == 0, done.stderr
        _close(implicit_login(proc, SECURE))
        wait_until(lambda: connection_refused(old_port), what="old implicit port closed")
        assert f"implicit FTPS port {new_port}" in proc.ctl("status").stdout



# --- require_ssl_reuse: a data connection must resume the control connection's session


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """ftplib starts every data connection with a fresh TLS session; curl, lftp and
    FileZilla resume the control connection's session, as this subclass does."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


@pytest.fixture(scope="module")
def reuse_server(emulator, tmp_path_factory, certs):
    proc = ServerProcess(str(tmp_path_factory.mktemp("reuse")), emulator.port, [PLAIN, SECURE],
                         network={**tls_network(*certs, implicit=True),
                                  "require_ssl_reuse": "true"})
    with proc:
        yield proc


def reuse_login(server: ServerProcess, account: Account = SECURE,
                cls: type = ReusingFTP_TLS) -> ftplib.FTP_TLS:
    ftp = cls(context=client_context(), encoding="utf-8")
    ftp.connect("127.0.0.1", server.port, timeout=30)
    ftp.login(account.user, account.password)
    ftp.prot_p()
    return ftp


def test_reuse_required_refuses_a_fresh_tls_session(reuse_server, area, cos):
    """Python's ftplib starts each data connection with a fresh session: refused with 522,
    and nothing is stored, sent or listed."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}_r", Body=b"secret")
    ftp = reuse_login(reuse_server, cls=ftplib.FTP_TLS)
    ftp.voidcmd("TYPE I")
    for command in (f"STOR {area}", f"RETR {area}_r", "NLST"):
        received = b""
        with contextlib.suppress(OSError, ssl.SSLError), ftp.transfercmd(command) as conn:
            if command.startswith("STOR"):
                conn.sendall(b"fresh session")
            while chunk := conn.recv(65536):
                received += chunk
        assert received == b""
        with pytest.raises(ftplib.error_perm, match=r"522 .*require_ssl_reuse"):
            ftp.voidresp()
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False
    assert ftp.voidcmd("NOOP").startswith("200")
    _close(ftp)


def test_reuse_required_serves_a_client_that_resumes(reuse_server, area):
    ftp = reuse_login(reuse_server)
    assert ftp.sock.version() == "TLSv1.3"
    data = os.urandom(MIB + 9)
    assert put(ftp, area, data).startswith("226")
    assert get(ftp, area) == data
    assert area in ftp.nlst()
    _close(ftp)


def test_reuse_required_refuses_another_sessions_tls_session(reuse_server, area, cos):
    """An attacker on the victim's address who connects first to the victim's passive
    port (the victim sent STOR before connecting) brings its own TLS session: refused."""
    victim = reuse_login(reuse_server)
    attacker = reuse_login(reuse_server)
    victim.voidcmd("TYPE I")
    host, port = victim.makepasv()
    victim.putcmd(f"STOR {area}")
    assert victim.getline().startswith("150")
    raw = socket.create_connection((host, port), timeout=10)
    with contextlib.suppress(OSError, ssl.SSLError):
        conn = attacker.context.wrap_socket(raw, server_hostname="127.0.0.1",
                                            session=attacker.sock.session)
        conn.sendall(b"EVIL")
        conn.close()
    reply = victim.getline()
    assert reply.startswith("522"), reply
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False
    assert victim.voidcmd("NOOP").startswith("200")
    for ftp in (victim, attacker):
        _close(ftp)


# --- TLS streams that end without the client's closing alert (close_notify)


def worker_cpu(server: ServerProcess) -> float:
    """CPU seconds (user and system) the server's workers used so far."""
    return sum(sum(worker.cpu_times()[:2]) for worker in live_children(master_of(server)))


def end_without_close_notify(tls_sock: ssl.SSLSocket, how: str) -> Optional[socket.socket]:
    """End the TCP connection under ``tls_sock`` without TLS's closing alert: ``fin`` closes
    it, ``rst`` resets it (SO_LINGER 0), ``half`` shuts its sending side only and returns
    the socket, still open (the caller closes it)."""
    raw = socket.socket(fileno=tls_sock.detach())
    if how == "half":
        raw.shutdown(socket.SHUT_WR)
        return raw
    if how == "rst":
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    return None


def session_address(ftp: ftplib.FTP) -> str:
    """The client's address as pyftpdlib's log lines of its session name it."""
    host, port = ftp.sock.getsockname()[:2]
    return f"{host}:{port}"


SHUTDOWN_ATTEMPT = "_do_ssl_shutdown"  # pyftpdlib's DEBUG line at each TLS shutdown attempt
# At most one per connection ended (the control connection's, the data connection's).
ATTEMPTS = 2


def effort_until_quiet(server: ServerProcess, clock: ftplib.FTP, end: Callable[[], None],
                       handled: Optional[str]) -> tuple[float, int]:
    """Run ``end`` (a connection ending without close_notify), wait for the log line
    ``handled`` (the server handled that end), then let ``clock``'s session make 100 NOOP
    round trips; return the CPU seconds the workers spent from ``end`` on and the TLS
    shutdown attempts they logged meanwhile.

    A worker that spins on a refused shutdown logs an attempt at each turn of its IO loop
    and burns a core until something closes the connection (pyftpdlib's data timeout, 300
    s, before the transfer's reply): the wait ends as soon as the attempts exceed
    ``ATTEMPTS``."""
    log_size = len(server.log_text())
    spent = worker_cpu(server)
    end()
    if handled is not None:
        wait_until(lambda: handled in server.log_text()[log_size:] or
                   server.log_text()[log_size:].count(SHUTDOWN_ATTEMPT) > ATTEMPTS,
                   what=f"the log line {handled!r}")
    for _ in range(100):
        clock.voidcmd("NOOP")
    attempts = server.log_text()[log_size:].count(SHUTDOWN_ATTEMPT)
    return worker_cpu(server) - spent, attempts


# Seconds of worker CPU for one connection's end and the 100 round trips after it: about
# 0.1 here. A spin that logs is caught by its attempts first; one that does not holds the
# reply back until the data timeout (300 s), and ``wait_until`` gives up first.
QUIET_CPU = 2.0


# (a reset and the end right after QUIT's 221 were measured quiet too, by hand: the
# session closes its socket whatever the shutdown gave; kept out to spare the suite)
@pytest.mark.parametrize("moment", ["idle", "during upload"])
@pytest.mark.parametrize("how", ["fin", "half"])
def test_control_connection_ended_without_close_notify_goes_quiet(ftps_server, cos, area,
                                                                  moment, how):
    """A control connection the client ends without close_notify (a close, a half-close keeping
    the socket open) in the middle of a session or while an upload runs: the session closes
    after at most one TLS shutdown attempt and the worker goes quiet. When the socket still
    takes writes (the client half-closed it) OpenSSL refuses that shutdown with an empty
    ``SSL.Error``, as on data connections, but pyftpdlib's control channel closes its socket
    after the attempt whatever came of it (``TLS_FTPHandler.close``)."""
    server = ftps_server
    clock = reuse_login(server, PLAIN)
    ftp = reuse_login(server, PLAIN)
    address = session_address(ftp)
    kept: list[socket.socket] = []

    def end() -> None:
        if moment == "during upload":
            kept.append(start_upload(ftp, cos, area, 2 * MIB))
        raw = end_without_close_notify(ftp.sock, how)
        if raw is not None:
            kept.append(raw)

    try:
        cpu, attempts = effort_until_quiet(server, clock, end,
                                           f"{address}-[{PLAIN.user}] FTP session closed")
    finally:
        for sock in kept:
            sock.close()
    assert attempts <= ATTEMPTS, f"{attempts} TLS shutdown attempts ({cpu:.2f} s of CPU)"
    assert cpu < QUIET_CPU
    _close(clock)


DATA_ENDS = [
    # (command, the client reads or sends everything first, how it ends, the reply)
    ("STOR", True, "fin", "226"),  # stream mode: the end of the connection is the file's
    ("STOR", True, "half", "226"),
    ("STOR", False, "rst", "426"),
    ("RETR", False, "fin", "426"),
    ("RETR", False, "rst", "426"),
    ("RETR", False, "half", None),  # the client reads no more: the download waits
    ("LIST", True, "fin", "226"),
    ("LIST", True, "rst", "226"),
]


@pytest.mark.parametrize("command, whole, how, reply", DATA_ENDS)
def test_data_connection_ended_without_close_notify_goes_quiet(ftps_server, cos, area,
                                                               command, whole, how, reply):
    """A PROT P upload, download or listing whose data connection the client ends without
    close_notify: the transfer's reply comes at once and the worker goes quiet, on TLS 1.3
    data connections and on TLS 1.2 ones resuming the control connection's session
    (``require_ssl_reuse``). OpenSSL refuses to shut down a stream that ended so (an empty
    ``SSL.Error`` at each call), and pyftpdlib's data channel tried again at each turn of
    its IO loop until its timeout (30 s of a core and of DEBUG lines, then the 226)."""
    server = ftps_server
    cos.put_object(Bucket=ALPHA, Key=f"{area}_big", Body=os.urandom(8 * MIB))
    clock = reuse_login(server, PLAIN)
    ftp = reuse_login(server, PLAIN)
    ftp.voidcmd("TYPE I")
    address = session_address(ftp)
    kept: list[socket.socket] = []

    def end() -> None:
        target = {"STOR": area, "RETR": f"{area}_big", "LIST": ""}[command]
        conn = ftp.transfercmd(f"{command} {target}".strip())
        if command == "STOR":
            conn.sendall(os.urandom(MIB if whole else 64 * 1024))
        elif whole:
            while conn.recv(65536):
                pass
        else:
            conn.recv(1000)
        raw = end_without_close_notify(conn, how)
        if raw is not None:
            kept.append(raw)

    handled = None if reply is None else f"{address}-[{PLAIN.user}] -> {reply}"
    try:
        cpu, attempts = effort_until_quiet(server, clock, end, handled)
        assert attempts <= ATTEMPTS, f"{attempts} TLS shutdown attempts ({cpu:.2f} s of CPU)"
        assert cpu < QUIET_CPU
        if reply is not None:
            assert ftp.getline().startswith(reply)
    finally:
        # Its session closes its data connection: a spinning one would go on into the
        # next test of the module's server.
        for sock in kept:
            sock.close()
        ftp.close()
    _close(clock)
