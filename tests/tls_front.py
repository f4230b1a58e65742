"""A TLS front for a plain-HTTP test service: haproxy terminating TLS with a self-signed
test certificate for 127.0.0.1, passing the bytes to ``backend_port`` (TCP mode, so the
service's keep-alive is the client's). The services people run (COS, receivers of events, an
auth service) answer over HTTPS; the emulator and the tests' services speak HTTP only."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

from .server_proc import wait_until
from .test_clients import require
from .test_cluster import Daemon
from .tls_clients import write_certificate

CONFIG = """global
    maxconn 512
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend tls
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend plain
backend plain
    server plain 127.0.0.1:{backend_port}
"""


def _handshakes(port: int, ca: str) -> bool:
    context = ssl.create_default_context(cafile=ca)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
                context.wrap_socket(sock, server_hostname="127.0.0.1"):
            return True
    except OSError:
        return False


class TlsFront:
    """``with TlsFront(directory, backend_port) as front``: ``front.port`` takes TLS,
    ``front.ca`` is the certificate a client must trust (self-signed: it is its own CA)."""

    def __init__(self, directory: Path, backend_port: int) -> None:
        self.directory, self.backend_port = directory, backend_port
        self.port = 0  # chosen when it starts
        self.ca = ""
        self._daemon: Daemon | None = None

    def __enter__(self) -> TlsFront:
        haproxy = require("haproxy")
        cert, key = write_certificate(self.directory, "front")
        pem = self.directory / "front.pem"
        pem.write_text(Path(cert).read_text() + Path(key).read_text())
        config = self.directory / "haproxy.cfg"

        def command(port: int) -> list[str]:
            config.write_text(CONFIG.format(port=port, pem=pem, backend_port=self.backend_port))
            return [haproxy, "-db", "-f", str(config)]
        self.ca = cert
        self._daemon = Daemon(command, str(self.directory / "haproxy.log"), "haproxy").start()
        self.port = self._daemon.port
        try:
            wait_until(lambda: _handshakes(self.port, cert),
                       what=f"haproxy ({self._daemon.output()})")
        except BaseException:
            self._daemon.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._daemon is not None:
            self._daemon.stop()


def environment(trusted_ca: str = "") -> dict[str, str]:
    """This process's environment without any CA override, plus ``trusted_ca`` for both
    ``requests`` (the COS SDK) and OpenSSL's default store (urllib3 in the hooks)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE",
                          "SSL_CERT_DIR")}
    if trusted_ca:
        env["REQUESTS_CA_BUNDLE"] = env["SSL_CERT_FILE"] = trusted_ca
    return env
