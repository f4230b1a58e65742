"""Under ``require_ssl_reuse`` a control connection's TLS session stays resumable for as long
as the connection may live (``ftp/tls.py``: ``SESSION_LIFETIME``), not OpenSSL's default
7200 s, after which a client resuming only its control connection's TLS 1.2 session had every
data connection refused (522).

No clock is moved: the lifetime is read from the context (pyOpenSSL's ``get_timeout``) and
from what a real server tells a real client in its session ticket (the ticket's lifetime
hint, OpenSSL's session timeout; TLS 1.3 caps it at 7 days, RFC 8446 4.6.1), and a data
connection of that session is served only if it resumed it.
"""

from __future__ import annotations

import ssl

import pytest

from cosftp_prefork.config.tls import load_server_tls
from cosftp_prefork.ftp.tls import session_context

from .conftest import _close
from .test_tls_reuse import ResumingFTP_TLS, login
from .tls_clients import write_certificate

# Days a TLS 1.3 ticket may be used at most (RFC 8446 4.6.1): OpenSSL's hint stops there.
TLS13_TICKET_DAYS = 7
# A control connection may send a command each idle_session_timeout (86400 s at most) for
# ever: years is what "no end" can be checked as.
YEARS = 10 * 365 * 86400


def test_a_control_connections_context_keeps_its_sessions_for_years(tmp_path):
    """Before: ``get_timeout()`` was OpenSSL's 7200."""
    tls = load_server_tls(*write_certificate(tmp_path), require_reuse=True)
    assert session_context(tls).get_timeout() >= YEARS


@pytest.mark.parametrize("version, lifetime", [
    (ssl.TLSVersion.TLSv1_2, YEARS),
    (ssl.TLSVersion.TLSv1_3, TLS13_TICKET_DAYS * 86400),
], ids=["tls1.2", "tls1.3"])
def test_the_control_connections_session_outlives_two_hours(reuse_one_worker, version, lifetime):
    """The server's ticket says how long the session may be resumed, and a data connection
    resuming it is served (a TLS 1.2 hint: years, ``SESSION_LIFETIME``; TLS 1.3's: 7 days,
    OpenSSL's cap). Before: the hint was 7200 in both versions."""
    ftp = login(reuse_one_worker, ResumingFTP_TLS, version)
    try:
        assert ftp.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                      ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        assert ftp.sock.session.ticket_lifetime_hint >= lifetime
        with ftp.transfercmd("NLST") as conn:
            assert conn.session_reused
            while conn.recv(65536):
                pass
        assert ftp.voidresp().startswith("226")
    finally:
        _close(ftp)
