"""The master's listening sockets: bound at start, kept across reloads where the address
and port stay the same (the workers of both generations accept on the same socket, so no
connection is refused during a reload), bound anew where they change.

Only the master binds; workers inherit the sockets through fork and never bind.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Optional

from ..config.model import Config, NetworkConfig
from .scoreboard import LISTEN_BACKLOG


def bind_listener(address: str, port: int, backlog: int = LISTEN_BACKLOG,
                  v6only: bool = False) -> socket.socket:
    """Return a listening TCP socket on ``address:port`` (IPv4 or IPv6; an IPv6 one also
    takes IPv4 connections unless ``v6only``, whatever the system default)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    try:
        sock.bind((address, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Listeners:
    """The listening sockets of one configuration, one per ``listen_address``: the FTP
    port (plain, and AUTH TLS when TLS is configured) and the implicit FTPS port."""

    ftp: tuple[socket.socket, ...]
    implicit_tls: tuple[socket.socket, ...] = ()

    def sockets(self) -> list[socket.socket]:
        return [*self.ftp, *self.implicit_tls]

    def close(self, keep: Optional[Listeners] = None) -> None:
        """Close every socket that ``keep`` does not also use."""
        kept = keep.sockets() if keep is not None else []
        for sock in self.sockets():
            if not any(sock is other for other in kept):
                sock.close()

    def ports(self) -> tuple[int, int]:
        """Return the FTP port and the implicit FTPS port (0: none)."""
        implicit = self.implicit_tls[0].getsockname()[1] if self.implicit_tls else 0
        return self.ftp[0].getsockname()[1], implicit

    def describe(self) -> str:
        """``address:port`` of each listener, the implicit FTPS ones marked."""
        parts = [_address(sock) for sock in self.ftp]
        parts += [f"{_address(sock)} (implicit FTPS)" for sock in self.implicit_tls]
        return ", ".join(parts)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_listeners(network: NetworkConfig, current: Optional[Listeners] = None) -> Listeners:
    """Return the listeners ``network`` asks for, reusing those of ``current`` that already
    listen where wanted. Raises ``OSError`` (having closed what it bound) if one cannot bind:
    its message says where (``cannot listen on 127.0.0.1 port 21: [Errno 98] ...``)."""
    # "::" listed with IPv4 addresses must leave IPv4 to them.
    v6only = any(":" not in address for address in network.listen_addresses)
    kept = current.sockets() if current else []
    bound: list[socket.socket] = []
    try:
        ftp = _bind_all(network.listen_addresses, network.listen_port,
                        current.ftp if current else (), v6only, bound)
        implicit = _bind_all(network.listen_addresses, network.implicit_tls_port,
                             current.implicit_tls if current else (), v6only, bound) \
            if network.implicit_tls_port else ()
    except OSError as exc:
        for sock in bound:
            if not any(sock is other for other in kept):
                sock.close()
        raise ListenError(network, exc) from None
    return Listeners(ftp, implicit)


class ListenError(OSError):
    """A listener of ``network`` that cannot be bound: the errno of the cause, a message
    that says where (``cannot listen on 127.0.0.1 port 21: [Errno 98] ...``)."""

    def __init__(self, network: NetworkConfig, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        implicit = f" or {network.implicit_tls_port}" if network.implicit_tls_port else ""
        self.message = (f"cannot listen on {', '.join(network.listen_addresses)} port "
                        f"{network.listen_port}{implicit}: {cause}")

    def __str__(self) -> str:
        return self.message


def _bind_all(addresses: tuple[str, ...], port: int, current: tuple[socket.socket, ...],
              v6only: bool, bound: list[socket.socket]) -> tuple[socket.socket, ...]:
    """One listener per address on ``port`` (0: the port the first one gets), appended to
    ``bound`` as they are made."""
    for address in addresses:
        sock = _reuse_or_bind(address, port, current, v6only)
        bound.append(sock)
        port = port or sock.getsockname()[1]
    return tuple(bound[-len(addresses):])


def _reuse_or_bind(address: str, port: int, current: tuple[socket.socket, ...],
                   v6only: bool) -> socket.socket:
    """Return the socket of ``current`` that listens on ``address:port`` (port 0: any),
    else a new listener."""
    for sock in current:
        host, actual = sock.getsockname()[:2]
        if host == address and port in (0, actual):
            return sock
    return bind_listener(address, port, v6only=v6only)



def tls_summary(config: Config) -> str:
    """One line on FTPS for the log: off, or the certificate and who must use TLS."""
    network = config.network
    if network.tls is None:
        return "TLS: off (no [NETWORK] tls_certfile)"
    implicit = (f"implicit FTPS on port {network.implicit_tls_port}"
                if network.implicit_tls_port else "no implicit FTPS port")
    required = [a.user for a in config.accounts if a.tls_required]
    return (f"TLS: AUTH TLS on port {network.listen_port}, {implicit}; certificate "
            f"{network.tls.certfile} ({network.tls.subject}); TLS required for: "
            f"{', '.join(required) or 'nobody'}")
