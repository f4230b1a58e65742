"""FTPS: explicit (AUTH TLS) and implicit TLS with real clients, per-account tls_required
(test_tls_data_ssl.py: force_local_data_ssl; test_tls_sessions.py: a session's security
state and its broken connections; test_tls_config.py: certificates at check, start and
reload; test_tls_reuse.py: require_ssl_reuse; test_tls_close_notify.py: streams ended
without close_notify). The certificates are made by ``tls_clients.write_certificate``, the
servers by conftest.py's ``tls_server`` and ``reuse_server``."""

from __future__ import annotations

import contextlib
import ftplib
import os
import socket
import ssl
import struct
import subprocess
import uuid

import pytest

from .conftest import ALPHA, PLAIN, SECURE, _close
from .ftps import MIB, ReusingFTP_TLS, curl, implicit_login, implicit_port, tls_login, unhandled
from .server_proc import Account, ServerProcess, tls_network, wait_until
from .test_clients import require, run
from .test_commands import get, put
from .test_master import master_of, sessions_by_pid, state_of
from .test_transfers import curl_put
from .tls_clients import AssumingImplicitFTP_TLS, client_context, client_hello, handshake_over


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


def test_curl_explicit_upload_download(ftps_server, tmp_path, area):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(MIB + 77))
    curl(ftps_server, f"{area}/up.bin", "--ftp-create-dirs", "-T", str(src))
    out = tmp_path / "down.bin"
    curl(ftps_server, f"{area}/up.bin", "-o", str(out))
    assert out.read_bytes() == src.read_bytes()
    assert curl(ftps_server, f"{area}/", "--list-only").split() == ["up.bin"]


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


def test_upload_whose_client_awaits_the_servers_closing_alert(tls_server, area, cos):
    """A client that sends its file and closing alert at once, then waits for the server's
    alert before it closes (Python's ``unwrap``, which ftplib calls after a STOR): the
    server's reads bring many records at once (``ftp.heldtickets``), and the alert that came
    behind the last bytes waits in memory, where no readiness event announces it; the data
    channel reads it anyway, answers with its own alert, and the 226 comes. Were it left
    there, the client would wait out its timeout."""
    data = os.urandom(MIB + 5)
    ftp = tls_login(tls_server, PLAIN)
    ftp.voidcmd("TYPE I")
    raw, _ = ftplib.FTP.ntransfercmd(ftp, f"STOR {area}")  # the TLS layer is the test's
    with raw:
        tls, incoming, outgoing = handshake_over(raw)
        tls.write(data)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.unwrap()  # the client's alert, behind the data in ``outgoing``
        raw.sendall(outgoing.read())
        closed = False
        while not closed and (chunk := raw.recv(65536)):  # a 30 s timeout fails the test
            incoming.write(chunk)
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()
                closed = True
        assert closed  # the server's closing alert came before it closed the connection
    assert ftp.voidresp().startswith("226")
    assert cos.get_object(Bucket=ALPHA, Key=area)["Body"].get_raw_stream().read() == data
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
