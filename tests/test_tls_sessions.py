"""FTPS: a session's security state (REIN, a new USER, PBSZ and PROT, CCC, AUTH SSL and
TLS-P, RFC 2228's replies) and what becomes of it when a transfer or a connection breaks
(ABOR, failed handshakes, records that do not decrypt); lftp and curl on TLS 1.3."""

from __future__ import annotations

import ftplib
import os
import re
import socket
import ssl
import subprocess

import pytest

from .conftest import ALPHA, PLAIN, SECURE, _close
from .ftps import MIB, curl, implicit_port, lftp_explicit, tls_login, unhandled
from .server_proc import wait_until
from .test_clients import require
from .test_commands import get, put
from .test_master import sessions_by_pid
from .test_resume import is_parked
from .test_transfers import abort_transfer, pending_uploads, start_upload
from .tls_clients import client_context


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
