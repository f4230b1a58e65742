"""FTPS for the tests and the benchmarks: a self-signed test certificate, a client context
that accepts it, ftplib for implicit FTPS, and the start of a ClientHello to stall with.

Kept apart from ``ftps.py`` and the test_tls*.py files so that ``bench/load.py`` can use
them without importing a test module (and, through it, pytest and half the suite).
"""

from __future__ import annotations

import contextlib
import datetime
import ftplib
import ipaddress
import socket
import ssl
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DAY = datetime.timedelta(days=1)


def write_certificate(directory, name: str = "server", valid_from: int = -1,
                      valid_days: int = 30, encrypt: bool = False) -> tuple[str, str]:
    """Write a self-signed certificate for 127.0.0.1 and its key; return both paths.

    ``directory`` is a ``pathlib.Path``; ``valid_from`` and ``valid_days`` are in days
    relative to now.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    start = datetime.datetime.now(datetime.timezone.utc) + valid_from * DAY
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + valid_days * DAY)
            .add_extension(x509.SubjectAlternativeName(  # HTTPS clients check it, not the CN
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = str(directory / f"{name}.crt"), str(directory / f"{name}.key")
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    encryption = (serialization.BestAvailableEncryption(b"secret") if encrypt
                  else serialization.NoEncryption())
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8, encryption))
    return cert_path, key_path


def client_context() -> ssl.SSLContext:
    """The test certificate is self-signed: encrypt, but do not verify."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class ImplicitFTP_TLS(ftplib.FTP_TLS):
    """ftplib speaks explicit FTPS only: wrap the socket in TLS before reading the greeting."""

    def connect(self, host: str = "", port: int = 0, timeout: float = 30,
                source_address: Optional[tuple[str, int]] = None) -> str:
        self.host, self.port, self.timeout = host, port, timeout
        sock = socket.create_connection((host, port), timeout, source_address=source_address)
        self.af = sock.family
        try:
            self.sock = self.context.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()  # a refused handshake must not leave the socket to the collector
            raise
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


class AssumingImplicitFTP_TLS(ImplicitFTP_TLS):
    """An implicit FTPS client as MS-FTPS (3.2.4.1) has it: it sends no PBSZ or PROT and
    encrypts its data connections from the start (FileZilla's and lftp's
    ``ftps:initial-prot P`` do the same)."""

    def connect(self, *args, **kwargs) -> str:
        welcome = super().connect(*args, **kwargs)
        self._prot_p = True  # ftplib's own flag of PROT P, which prot_p() would set
        return welcome


def client_hello() -> bytes:
    """The bytes a TLS client sends first (its ClientHello record), as ``client_context``
    makes them; a part of it is what a stalled handshake leaves the server waiting on."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


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
