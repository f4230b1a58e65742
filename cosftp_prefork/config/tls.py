"""The server's certificate and key for FTPS, from ``[NETWORK] tls_certfile`` / ``tls_keyfile``.

Configuration validation loads and checks them, so ``cosftpctl check``, start and reload all
refuse an unusable certificate with a message naming the option; the workers build their
OpenSSL contexts from the very objects that were checked (``ftps.server_contexts``): a
certificate renewed on disk takes effect at the next reload, and a broken one never reaches a
worker. This module knows nothing of FTP and does not load OpenSSL (pyOpenSSL): the master
process never does.

The files are read here and parsed with ``cryptography`` rather than handed to OpenSSL by
name: OpenSSL reports a missing file as "system lib" and would prompt on the terminal for
the passphrase of an encrypted key. ``cryptography`` is imported by ``load_server_tls``, the
one place that parses, not with this module: its x509 package costs ~35 ms of CPU to import,
which every ``cosftpctl`` command and master without a certificate would pay for nothing
(the configuration model imports this module for ``ServerTLS``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


class TLSFileError(Exception):
    """A certificate or key file is unusable; ``option`` names the setting to fix."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(problem)
        self.option = option
        self.problem = problem


@dataclass(frozen=True)
class ServerTLS:
    """A loaded certificate chain and its private key, and what to log about them.

    ``require_reuse``: data connections must resume the control connection's TLS session
    (``[NETWORK] require_ssl_reuse``). ``force_logins``: every login needs TLS on the
    control connection (``[NETWORK] force_local_logins_ssl``). ``force_data``: every login's
    data connections need TLS (``[NETWORK] force_local_data_ssl``). Anonymous logins are
    spared by both.
    """

    certfile: str
    chain: tuple[x509.Certificate, ...] = field(compare=False)
    key: PrivateKeyTypes = field(compare=False, repr=False)
    require_reuse: bool = False
    force_logins: bool = False
    force_data: bool = False

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    def validity_warning(self, now: Optional[datetime.datetime] = None) -> Optional[str]:
        """Return a warning if the certificate is expired or not yet valid, else None."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        cert = self.certificate
        if now > cert.not_valid_after_utc:
            return (f"the certificate in {self.certfile} expired on "
                    f"{cert.not_valid_after_utc:%Y-%m-%d}")
        if now < cert.not_valid_before_utc:
            return (f"the certificate in {self.certfile} is not valid before "
                    f"{cert.not_valid_before_utc:%Y-%m-%d}")
        return None


def load_server_tls(certfile: str, keyfile: Optional[str] = None,
                    require_reuse: bool = False) -> ServerTLS:
    """Return the certificate chain in ``certfile`` and the private key in ``keyfile``
    (default: ``certfile``, which may hold both); see ``ServerTLS`` for ``require_reuse``.

    Raises ``TLSFileError`` if a file cannot be read, holds no PEM certificate or unencrypted
    PEM key, or the key does not belong to the certificate.
    """
    # Here, not at the top: see the module's docstring.
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    key_option = "tls_keyfile" if keyfile else "tls_certfile"
    keypath = keyfile or certfile
    try:
        chain = x509.load_pem_x509_certificates(_read(certfile, "tls_certfile"))
    except ValueError:
        raise TLSFileError("tls_certfile",
                           f"{certfile} holds no valid PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(_read(keypath, key_option), password=None)
    except TypeError:
        raise TLSFileError(key_option, f"the private key in {keypath} is encrypted; store it "
                           "without a passphrase (and readable by the server only)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSFileError(key_option, f"{keypath} holds no valid PEM private key") from None
    public_der = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*public_der) != \
            chain[0].public_key().public_bytes(*public_der):
        raise TLSFileError(key_option, f"the private key in {keypath} does not "
                           f"belong to the certificate in {certfile}")
    return ServerTLS(certfile, tuple(chain), key, require_reuse)


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TLSFileError(option, f"cannot read {path}: {exc.strerror or exc}") from None
