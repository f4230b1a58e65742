"""FTPS require_ssl_reuse with ftplib on the shared TLS server: a data connection must resume
the control connection's TLS session (the implicit port's and curl's, lftp's and wget's
under it: test_tls.py; TLS 1.3 and 1.2, and sessions of other connections, with curl and
lftp: test_tls_reuse.py)."""

from __future__ import annotations

import contextlib
import ftplib
import os
import socket
import ssl

from .conftest import ALPHA, _close
from .ftps import MIB, assert_fresh_sessions_refused, reuse_login
from .test_commands import get, put


def test_reuse_required_refuses_a_fresh_tls_session(reuse_server, area, cos):
    """Python's ftplib starts each data connection with a fresh session: refused with 522,
    and nothing is stored, sent or listed."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}_r", Body=b"secret")
    ftp = reuse_login(reuse_server, cls=ftplib.FTP_TLS)
    ftp.voidcmd("TYPE I")
    assert_fresh_sessions_refused(ftp, (f"STOR {area}", f"RETR {area}_r", "NLST"))
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
