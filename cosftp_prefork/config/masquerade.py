"""The PASV address (``masquerade_address``) resolved to an IP: ``resolve_masquerade``.

Kept apart from reading the file because it asks DNS: workers call it as they start, and
``cosftpctl check`` does, never the master while it parses (a reload must not wait on DNS).
"""

from __future__ import annotations

import socket
from typing import Optional

from ..errors import ConfigError
from .model import Config


def resolve_masquerade(config: Config) -> Optional[str]:
    """Return the PASV address as an IP (None if unset). Raises ``ConfigError``.

    Called by each worker as it starts and by ``cosftpctl check``, never while parsing:
    a reload must not make the master wait on DNS.
    """
    name = config.network.masquerade_address
    if name is None:
        return None
    try:
        return socket.gethostbyname(name)
    except OSError as exc:
        raise ConfigError(f"{name!r} does not resolve: {exc}", config.path, "NETWORK",
                          "masquerade_address") from exc
