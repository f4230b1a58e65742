"""HTTPS for the admin API with the server's own certificate (``[NETWORK] tls_certfile``).

The configuration holds the certificate chain and key as ``cryptography`` objects, checked
when the file was loaded (``config.tls``); the standard library's ``ssl`` takes them only
from a file. They are written to a memfd (memory, never a file on disk, closed at once) and
loaded from there, so the key is not read again from a path that may have changed since.
"""

from __future__ import annotations

import os
import ssl

from cryptography.hazmat.primitives import serialization

from ..config.tls import ServerTLS


def server_context(tls: ServerTLS) -> ssl.SSLContext:
    """A server-side context (TLS 1.2 or later) with ``tls``'s chain and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    pem = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in tls.chain)
    pem += tls.key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    fd = os.memfd_create("cosftp-admin-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context
