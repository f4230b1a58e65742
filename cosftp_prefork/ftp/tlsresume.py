"""Whether a TLS handshake resumed a session: OpenSSL's ``SSL_session_reused``, through
the private cffi binding pyOpenSSL itself runs on (``OpenSSL._util.lib``).

pyOpenSSL has no ``Connection.session_reused()`` (26.4). The binding is bound when this
module is imported, in each worker as it starts, so that a cryptography release without it
fails the start of the server rather than a data connection (``tests/test_tls_reuse.py``
calls it on real connections).
"""

from __future__ import annotations

from OpenSSL import SSL
from OpenSSL._util import lib as _lib

_SSL_session_reused = _lib.SSL_session_reused


def session_reused(connection: SSL.Connection) -> bool:
    """Return True if the handshake of ``connection`` (done) resumed a session, from a
    TLS 1.2 session ID or ticket or a TLS 1.3 ticket, that its context could decrypt or
    find in its cache; False after a full handshake."""
    return bool(_SSL_session_reused(connection._ssl))
