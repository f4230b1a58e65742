"""What the FTPS test files (test_tls*.py) and others share: logins over AUTH TLS, on the
implicit port and resuming the control connection's TLS session, and curl and lftp over
TLS. The servers are conftest.py's ``tls_server`` and ``reuse_server``, their accounts its
``PLAIN`` and ``SECURE``."""

from __future__ import annotations

import contextlib
import ftplib
import ssl
import subprocess
from typing import Optional

import pytest

from .conftest import SECURE
from .server_proc import Account, ServerProcess
from .test_clients import require, run
from .tls_clients import ImplicitFTP_TLS, client_context

MIB = 1024 * 1024


def implicit_port(server: ServerProcess) -> int:
    return int(server.network["implicit_tls_port"])


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



class ReusingFTP_TLS(ftplib.FTP_TLS):
    """ftplib starts every data connection with a fresh TLS session; curl, lftp and
    FileZilla resume the control connection's session, as this subclass does."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


def reuse_login(server: ServerProcess, account: Account = SECURE,
                cls: type = ReusingFTP_TLS) -> ftplib.FTP_TLS:
    ftp = cls(context=client_context(), encoding="utf-8")
    ftp.connect("127.0.0.1", server.port, timeout=30)
    ftp.login(account.user, account.password)
    ftp.prot_p()
    return ftp


def unhandled(server: ServerProcess) -> int:
    """How many errors pyftpdlib logged as unhandled (with a traceback) so far."""
    return server.log_text().count("unhandled exception")


def assert_fresh_sessions_refused(ftp: ftplib.FTP_TLS, commands) -> None:
    """Under require_ssl_reuse, send each transfer command of ``commands`` on ``ftp``, whose
    data connections (ftplib's) start fresh TLS sessions: nothing may come on them (an
    upload sends a few bytes), and each command is answered 522."""
    for command in commands:
        received = b""
        with contextlib.suppress(OSError, ssl.SSLError), ftp.transfercmd(command) as conn:
            if command.startswith("STOR"):
                conn.sendall(b"fresh session")
            while chunk := conn.recv(65536):
                received += chunk
        assert received == b"", command
        with pytest.raises(ftplib.error_perm, match=r"^522 .*require_ssl_reuse"):
            ftp.voidresp()
