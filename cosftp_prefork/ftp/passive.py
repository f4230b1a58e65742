"""The passive data listener (PASV/EPSV): a port of ``passive_port`` that hands exactly one
connection from the client's own address to the transfer command, or none.

pyftpdlib's listener hands over the first connection from the client's address as soon as
it arrives, closes, and answers a foreign one with an unsolicited 425. On a shared address
(same host, same NAT) whoever connects first then owns the victim's next STOR or RETR, and a
scanner from elsewhere desynchronises the victim's replies. Here a connection that arrives
before the transfer command is only *held*: the listener keeps listening, and a second
connection from the client's address before the transfer starts makes both untrusted (the
transfer is refused with 425, nothing is read or sent). Connections from other addresses are
closed quietly. Once the transfer takes its connection the port is closed.

What remains: a client that sends the transfer command before connecting gives an attacker
on its own address the window between the 150 reply and its connect (``require_ssl_reuse``
closes it for TLS data connections, see ``ftps``).
"""

from __future__ import annotations

import enum
import errno
import logging
import random
import socket
from collections.abc import Iterator
from typing import Optional

from pyftpdlib.ioloop import Acceptor

from . import compat
from .proxy import ProxyHeaderError, read_header

log = logging.getLogger(__name__)

# Random picks before a sweep: a nearly full range is swept from a random start.
RANDOM_PICKS = 32
_RANDOM = random.SystemRandom()  # the next port must not be predictable from the last ones
CONTESTED_REPLY = ("425 Data connection refused: more than one connection reached this "
                   "session's passive port from your address; send PASV or EPSV again.")


class PassiveRangeExhausted(OSError):
    """Every port of passive_port is taken."""


class Passive(enum.Enum):
    """Where one passive listener is in its life."""

    LISTENING = "waiting for the client's data connection and its transfer command"
    HOLDING = "holding the client's data connection until the transfer command"
    AWAITING = "transfer command received; the next connection from the client is its own"
    CONTESTED = "two connections came from the client's address; nothing is trusted"
    CLOSED = "closed"


def pick_port(bind, ports: range) -> int:
    """Bind through ``bind(port)`` to a port of ``ports`` chosen at random; return it.

    Raises ``PassiveRangeExhausted`` if every port is in use (or not ours to bind).
    """
    for port in _candidates(ports):
        try:
            bind(port)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EPERM):
                raise
            continue
        return port
    raise PassiveRangeExhausted(errno.EADDRINUSE, "no free passive port")


def _candidates(ports: range) -> Iterator[int]:
    for _ in range(min(RANDOM_PICKS, len(ports))):
        yield _RANDOM.choice(ports)
    start = _RANDOM.randrange(len(ports))
    for i in range(len(ports)):
        yield ports[(start + i) % len(ports)]


class CosPassiveDTP(compat.PassiveDTP):
    """A passive listener in ``passive_port``, of the control connection's address family
    (IPv4, IPv6 or IPv4-mapped IPv6), with the life described by ``Passive``."""

    state = Passive.CLOSED
    port = 0
    foreign = 0  # connections from other addresses, closed (logged once per listener)

    def __init__(self, cmd_channel, extmode: bool = False) -> None:
        # pyftpdlib's constructor binds port 0 to learn the family on an IPv6 listener and
        # falls back to a kernel-chosen port outside the range: neither may happen here.
        self.cmd_channel = cmd_channel
        self.log, self.log_exception = cmd_channel.log, cmd_channel.log_exception
        self._held: Optional[socket.socket] = None
        Acceptor.__init__(self, ioloop=cmd_channel.ioloop)
        local_ip = cmd_channel.socket.getsockname()[0]
        self.create_socket(cmd_channel.socket.family, socket.SOCK_STREAM)
        self.set_reuse_addr()
        try:
            self.port = pick_port(lambda p: self.bind((local_ip, p)),
                                  cmd_channel.passive_ports)
        except OSError:
            self.close()
            raise
        self.listen(self.backlog or cmd_channel.server.backlog)
        self.state = Passive.LISTENING
        cmd_channel.respond(self._reply(extmode, local_ip, self.port))
        if self.timeout:
            self.call_later(self.timeout, self.handle_timeout)

    def _reply(self, extmode: bool, local_ip: str, port: int) -> str:
        if extmode:
            return f"229 Entering extended passive mode (|||{port}|)."
        ip = self.cmd_channel.masquerade_address or local_ip
        ip = ip[len("::ffff:"):] if ip.startswith("::ffff:") else ip
        return f"227 Entering passive mode ({ip.replace('.', ',')},{port >> 8},{port & 255})."

    def handle_accepted(self, sock: socket.socket, addr) -> None:
        """Refuse a foreign address quietly, hold or hand over the client's connection,
        and distrust everything once a second one comes from the client's address."""
        source = self._source(sock, addr)
        if source is None:
            sock.close()
        elif not self.cmd_channel.connected:
            sock.close()
            self.close()
        elif source != self.cmd_channel.remote_ip:
            sock.close()
            self.foreign += 1
            if self.foreign == 1:
                self._warn("closed a data connection from the foreign address %s", addr[0])
        elif self.state is Passive.HOLDING:
            sock.close()
            self._contest()
        elif self.state is Passive.AWAITING:
            self._hand_over(sock)
        else:
            self._held, self.state = sock, Passive.HOLDING

    def _source(self, sock: socket.socket, addr) -> Optional[str]:
        """The client address of a data connection: a balancer forwarding the passive range
        (proxy_protocol) says it in a PROXY header; None if its header is bad, or reading it
        failed in any way (logged once per burst; the caller closes the connection)."""
        if not self.cmd_channel.config.network.proxy.expects_header(addr[0]):
            return addr[0]
        try:
            return read_header(sock, addr).ip
        except ProxyHeaderError as exc:
            reason, detail = exc.reason, exc.detail
        except Exception as exc:
            log.debug("reading the PROXY header failed", exc_info=True)
            reason, detail = "error reading its PROXY header", f"{type(exc).__name__}: {exc}"
        self.cmd_channel.stats.gate.refusals.note(addr[0], f"data connection closed: {reason}",
                                                  detail)
        return None

    def _contest(self) -> None:
        self._warn("a second data connection came from the client's address (another "
                   "program scanning for passive ports?); the transfer will be refused")
        self.close()
        self.state = Passive.CONTESTED

    def claim(self) -> Optional[str]:
        """Called by a transfer command: return the reply refusing it, or None once the
        held connection is the session's data channel (or the next one will be)."""
        self._accept_pending()
        log.debug("port=%d: transfer command while %s", self.port, self.state.name)
        if self.state is Passive.CONTESTED:
            return CONTESTED_REPLY
        if self.state is Passive.HOLDING:
            sock, self._held = self._held, None
            self._hand_over(sock)
        elif self.state is Passive.LISTENING:
            self.state = Passive.AWAITING
        return None

    def _accept_pending(self) -> None:
        """Accept what already waits in the backlog, so that a rival connected before the
        transfer command is seen even if the IO loop has not reported it yet."""
        while self.state in (Passive.LISTENING, Passive.HOLDING):
            accepted = self.accept()
            if accepted is None:
                return
            self.handle_accepted(*accepted)

    def _hand_over(self, sock: socket.socket) -> None:
        """Make ``sock`` the session's data channel and stop listening."""
        channel = self.cmd_channel
        self.close()
        handler = channel.dtp_handler(sock, channel)
        if handler.connected:
            channel.data_channel = handler
            channel.data_connection_opened()

    def handle_timeout(self) -> None:
        """``accept_timeout`` after PASV/EPSV: a held connection waits for its transfer
        command as long as the session lives (the session's idle timeout ends both).
        Otherwise the port closes and the session forgets it; a transfer command waiting
        for it gets 425 (pyftpdlib answered ``421 Passive data channel timed out.``, kept the
        command waiting, and said 421 unasked when none waited: read by the client as the
        reply to its next command)."""
        if self.state is Passive.HOLDING:
            return
        channel = self.cmd_channel
        self.close()
        if compat.passive_listener(channel) is self:
            compat.forget_passive_listener(channel)
        channel.data_connection_missed(
            f"425 No data connection came within {self.timeout} s; the transfer was given up.")

    def close(self) -> None:
        if self.foreign > 1:
            self._warn("closed %d data connections from foreign addresses in all",
                       self.foreign)
        self.foreign = 0
        if self._held is not None:
            self._held.close()
            self._held = None
        self.state = Passive.CLOSED
        super().close()

    def _warn(self, message: str, *args) -> None:
        log.warning("port=%d: " + message, self.port,
                    *args)
