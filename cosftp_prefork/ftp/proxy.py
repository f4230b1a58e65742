"""Reading the PROXY protocol header (HAProxy's v1 text line or v2 binary block) that a
load balancer sends first on a connection, to learn the client's real address.

The parsing is the ``proxy-protocol`` package's; this module reads exactly the header's
bytes from the socket (nothing of what follows), within a deadline and a size bound, so a
balancer that stalls or sends garbage costs one session thread a few seconds at most.
Whatever the parser raises on the bytes it was given makes a ``ProxyHeaderError``: it lets
``struct.error`` out of a v2 address block shorter than its family needs (one random header
in ten did, tests/test_proxy.py fuzzes it).
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass

from proxyprotocol import ProxyProtocolIncompleteError
from proxyprotocol.detect import ProxyProtocolDetect
from proxyprotocol.result import is_ipv4, is_ipv6

HEADER_TIMEOUT = 5.0  # HAProxy sends the header with its first packet
V1_MAX = 107  # the longest v1 line (doc/proxy-protocol.txt, 2.1)
MAX_HEADER = 16 + 1024  # a v2 header with addresses and a few TLVs; more is refused
_PARSER = ProxyProtocolDetect()


class ProxyHeaderError(Exception):
    """The connection did not start with a valid PROXY header: ``reason`` says why in
    words that do not depend on the bytes (refusals are logged once per burst and reason),
    ``detail`` what exactly was wrong."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Origin:
    """Where the connection really comes from."""

    ip: str
    port: int
    proxied: bool  # False for a LOCAL (v2) or UNKNOWN (v1) header: the peer itself


def read_header(sock: socket.socket, peer: tuple[str, int],
                timeout: float = HEADER_TIMEOUT) -> Origin:
    """Read the PROXY header at the start of ``sock`` (from ``peer``); return the origin it
    carries. Raises ``ProxyHeaderError``."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        try:
            result = _PARSER.unpack(data)
        except ProxyProtocolIncompleteError as exc:
            want = exc.want_read
        except Exception as exc:  # whatever the parser fails with, on these bytes: malformed
            raise ProxyHeaderError("malformed PROXY header", _describe(exc)) from None
        else:
            break
        if want.want_line:
            data += _read_line(sock, V1_MAX - len(data), deadline)
        else:
            if len(data) + want.want_bytes > MAX_HEADER:
                raise ProxyHeaderError(f"PROXY header longer than {MAX_HEADER} bytes")
            data += _read_exactly(sock, want.want_bytes, deadline)
    if is_ipv4(result) or is_ipv6(result):
        address, port = result.source
        ip = str(address.ipv4_mapped or address) if is_ipv6(result) else str(address)
        return Origin(ip, port, True)
    return Origin(peer[0], peer[1], False)


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _wait(sock: socket.socket, deadline: float) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    left = deadline - time.monotonic()
    if left <= 0 or not poller.poll(left * 1000):
        raise ProxyHeaderError(f"no complete PROXY header within {HEADER_TIMEOUT:.0f}s")


def _recv(sock: socket.socket, size: int, deadline: float, flags: int = 0) -> bytes:
    while True:
        _wait(sock, deadline)
        try:
            chunk = sock.recv(size, flags | socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise ProxyHeaderError("connection failed before its PROXY header", str(exc)) from None
        if not chunk:
            raise ProxyHeaderError("connection closed before its PROXY header ended")
        return chunk


def _read_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        data += _recv(sock, size - len(data), deadline)
    return data


def _read_line(sock: socket.socket, limit: int, deadline: float) -> bytes:
    """Read up to and with the next ``\\n``, at most ``limit`` bytes (peeking first, so that
    what the client sends after the header stays in the socket)."""
    while True:
        peeked = _recv(sock, max(limit, 1), deadline, socket.MSG_PEEK)
        end = peeked.find(b"\n")
        if end >= 0:
            return _read_exactly(sock, end + 1, deadline)
        if len(peeked) >= limit:
            raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX} bytes")
        _wait_for_more(sock, len(peeked), deadline)


def _wait_for_more(sock: socket.socket, have: int, deadline: float) -> None:
    """Wait until more than ``have`` bytes are buffered (a peek sees the same ones again).
    A peer that closed its side sends no more: the header is cut short, not late."""
    while time.monotonic() < deadline:
        ended = _peer_ended(sock)  # before the peek: all it sent is buffered then
        if len(_recv(sock, have + 1, deadline, socket.MSG_PEEK)) > have:
            return
        if ended:
            raise ProxyHeaderError("connection closed before its PROXY header ended")
        time.sleep(0.01)
    raise ProxyHeaderError(f"no complete PROXY header within {HEADER_TIMEOUT:.0f}s")


def _peer_ended(sock: socket.socket) -> bool:
    """True once the peer closed (or reset) its side of the connection."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP)
    return bool(poller.poll(0))
