"""``require_ssl_reuse`` over TLS 1.3 and 1.2: a data connection is served only if its
handshake resumed the TLS session of its own control connection (``ftp/tls.py``,
``ftp/tlsresume.py``). curl (OpenSSL) and lftp (GnuTLS) resume and are served in both
versions; a fresh session, another control connection's session, and a session got from a
refused data connection are refused with ``522`` and logged."""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import socket
import ssl
import subprocess
from typing import Optional

import pytest

from .conftest import ALPHA, REUSE_PLAIN, _close
from .ftps import assert_fresh_sessions_refused
from .server_proc import ServerProcess, wait_until
from .test_clients import require
from .tls_clients import client_context

MIB = 1024 * 1024
PLAIN = REUSE_PLAIN
REFUSAL_LOGGED = "refused a TLS data connection that does not resume"
REFUSAL_REPLY = r"522 .*require_ssl_reuse"


class ResumingFTP_TLS(ftplib.FTP_TLS):
    """ftplib opening each data connection with ``session`` (by default the control
    connection's, as curl and lftp do); ftplib alone starts every one with a fresh session."""

    session: Optional[ssl.SSLSession] = None

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                        session=self.session or self.sock.session)
        return conn, size


def login(server: ServerProcess, cls: type = ftplib.FTP_TLS,
          version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ftplib.FTP_TLS:
    """Log in over AUTH TLS limited to ``version``, PROT P, TYPE I."""
    context = client_context()
    context.minimum_version = context.maximum_version = version
    ftp = cls(context=context, encoding="utf-8")
    ftp.connect("127.0.0.1", server.port, timeout=30)
    ftp.login(PLAIN.user, PLAIN.password)
    ftp.prot_p()
    ftp.voidcmd("TYPE I")
    return ftp


def refusals(server: ServerProcess) -> int:
    return server.log_text().count(REFUSAL_LOGGED)


def lftp(server: ServerProcess, settings: str, commands: str) -> subprocess.CompletedProcess:
    """Run lftp with ``-d`` (its stderr: every command and reply) over AUTH TLS, PROT P."""
    return subprocess.run(
        [require("lftp"), "-d", "-u", f"{PLAIN.user},{PLAIN.password}", "-p",
         str(server.port), "-e",
         "set cmd:fail-exit true; set net:max-retries 1; set net:timeout 20; "
         "set ssl:verify-certificate no; set ftp:ssl-force true; "
         f"set ftp:ssl-protect-data true; {settings} {commands}; bye", "127.0.0.1"],
        capture_output=True, text=True, timeout=120)


def curl(server: ServerProcess, version: str, url_path: str,
         *args: str) -> subprocess.CompletedProcess:
    """Run curl -v over AUTH TLS (required, PROT P) with ``version`` (its TLS options)."""
    return subprocess.run(
        [require("curl"), "-v", "--user", f"{PLAIN.user}:{PLAIN.password}", "--silent",
         "--show-error", "--ssl-reqd", "--insecure", "--ftp-pasv", *version.split(), *args,
         f"ftp://127.0.0.1:{server.port}/{url_path}"],
        capture_output=True, text=True, timeout=120)


# (curl's options, the version it then negotiates)
CURL_VERSIONS = [("--tlsv1.3", "TLSv1.3"), ("--tlsv1.2 --tls-max 1.2", "TLSv1.2")]


def test_curl_resumes_and_is_served_in_tls_1_3_and_1_2(reuse_one_worker, tmp_path, area):
    """curl resumes the control connection's session on its data connections: in each
    version an upload, a listing and a download go through, byte-exact, nothing refused."""
    before = refusals(reuse_one_worker)
    src, back = tmp_path / "src.bin", tmp_path / "back.bin"
    src.write_bytes(os.urandom(3 * MIB + 5))
    for version, negotiated in CURL_VERSIONS:
        done = curl(reuse_one_worker, version, f"{area}/{negotiated}/a.bin", "--ftp-create-dirs",
                    "-T", str(src))
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"SSL connection using {negotiated}" in done.stderr, done.stderr[-3000:]
        done = curl(reuse_one_worker, version, f"{area}/{negotiated}/", "--list-only")
        assert done.returncode == 0 and done.stdout.split() == ["a.bin"], done.stderr[-3000:]
        done = curl(reuse_one_worker, version, f"{area}/{negotiated}/a.bin", "-o", str(back))
        assert done.returncode == 0, done.stderr[-3000:]
        assert back.read_bytes() == src.read_bytes()
    assert refusals(reuse_one_worker) == before


LFTP_VERSIONS = [
    "set ftp:ssl-auth SSL;",  # lftp's priority then drops every version below TLS 1.3
    "set ssl:priority NORMAL:-VERS-TLS1.3;",  # TLS 1.2 alone
]


def test_lftp_resumes_and_is_served_in_tls_1_3_and_1_2(reuse_one_worker, tmp_path, area):
    """lftp (GnuTLS) resumes the control connection's session on its data connections: in
    each version uploads, a listing and a download go through, byte-exact, nothing
    refused."""
    before = refusals(reuse_one_worker)
    src, back = tmp_path / "src.bin", tmp_path / "back.bin"
    src.write_bytes(os.urandom(3 * MIB + 1))
    for number, settings in enumerate(LFTP_VERSIONS):
        done = lftp(reuse_one_worker, settings,
                    f'mkdir -p {area}/{number}; cd {area}/{number}; put "{src}" -o a.bin; '
                    f'put "{src}" -o b.bin; ls; get b.bin -o "{back}"')
        assert done.returncode == 0, done.stderr[-3000:]
        assert back.read_bytes() == src.read_bytes()
        back.unlink()
    assert refusals(reuse_one_worker) == before


def test_fresh_tls_1_3_session_is_refused_and_logged(reuse_one_worker, area, cos):
    """ftplib opens each data connection with a fresh session: under TLS 1.3 (the control
    connection's version) a download and an upload are refused with 522 before a byte
    moves, each refusal logged; the session goes on."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}_r", Body=b"secret")
    ftp = login(reuse_one_worker)
    assert ftp.sock.version() == "TLSv1.3"
    before = refusals(reuse_one_worker)
    assert_fresh_sessions_refused(ftp, (f"RETR {area}_r", f"STOR {area}"))
    assert refusals(reuse_one_worker) == before + 2
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False
    assert ftp.voidcmd("NOOP").startswith("200")
    _close(ftp)


def hijack(victim: ftplib.FTP_TLS, context: ssl.SSLContext, area: str,
           session: Optional[ssl.SSLSession]) -> tuple[str, Optional[ssl.SSLSession]]:
    """Connect first to the victim's passive port after its STOR (an attacker on the
    victim's address, TLS ``session`` resumed if given) and send a few bytes; return the
    victim's reply and the session the attacker's connection got."""
    host, port = victim.makepasv()
    victim.putcmd(f"STOR {area}")
    assert victim.getline().startswith("150")
    got = None
    raw = socket.create_connection((host, port), timeout=10)
    with contextlib.suppress(OSError, ssl.SSLError), \
            context.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as conn:
        got = conn.session
        conn.sendall(b"EVIL")
        conn.recv(10)  # the server's end: its tickets, were any sent, come first
        got = conn.session
    raw.close()
    return victim.getline(), got


def test_another_control_connections_session_is_refused(reuse_one_worker, area, cos):
    """An attacker on the victim's address, in the same worker, connecting first to the
    victim's passive port with a session of its own control connection (which resumes
    there): refused, 522; and so is its next try with the session its refused connection
    got. In TLS 1.3 the refused connection got no ticket at all. In each version; the victim
    then transfers as usual."""
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        victim = login(reuse_one_worker, ResumingFTP_TLS, version)
        attacker = login(reuse_one_worker, ResumingFTP_TLS, version)
        assert attacker.sock.version() == victim.sock.version() == \
            version.name.replace("_", ".")
        before = refusals(reuse_one_worker)
        reply, got = hijack(victim, attacker.context, area, attacker.sock.session)
        assert reply.startswith("522"), reply
        reply, _ = hijack(victim, attacker.context, area, got)
        assert reply.startswith("522"), reply
        if version == ssl.TLSVersion.TLSv1_3:
            assert got is None or not got.has_ticket
        assert refusals(reuse_one_worker) == before + 2
        assert cos.object_exists(Bucket=ALPHA, Key=area) is False
        data = os.urandom(MIB + 3)
        assert victim.storbinary(f"STOR {area}", io.BytesIO(data)).startswith("226")
        assert cos.get_object(Bucket=ALPHA, Key=area)["Body"].get_raw_stream().read() == data
        cos.delete_object(Bucket=ALPHA, Key=area)
        for ftp in (victim, attacker):
            _close(ftp)


def test_client_without_tls_1_2_or_1_3_is_named_in_the_log(reuse_one_worker):
    """Control connections take TLS 1.2 and 1.3 under require_ssl_reuse too: a client
    offering TLS 1.1 at most fails the handshake after its 234, and the log names OpenSSL's
    reason and the versions taken (pyftpdlib logged only "SSL handshake failed.")."""
    context = client_context()
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # else this OpenSSL offers no TLS 1.1
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    ftp = ftplib.FTP_TLS(context=context)
    ftp.connect("127.0.0.1", reuse_one_worker.port, timeout=30)
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        ftp.auth()
    ftp.close()
    wait_until(lambda: "the TLS handshake of a control connection failed: unsupported "
                       "protocol: the client offers no TLS version control connections take "
                       "(TLS 1.2 and 1.3)" in reuse_one_worker.log_text(),
               what="the failed handshake logged")
