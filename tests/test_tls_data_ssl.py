"""FTPS: force_local_data_ssl (vsftpd's option, PROT P for every login but anonymous ones),
and a tls_required account's clear transfers refused as that option's are."""

from __future__ import annotations

import contextlib
import ftplib
import os
import socket
import subprocess

import pytest

from .conftest import ALPHA, PLAIN, SECURE, _close
from .ftps import MIB, tls_login
from .server_proc import Account, ServerProcess, connection_refused, tls_network
from .test_clients import require, run
from .test_commands import get, put
from .test_transfers import pending_uploads

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
