"""Admission of a control connection, from accept to its greeting, and its login deadline.

Every TCP connection is counted against the bans and limits (``server.gate``) the moment it
is accepted, and its ``login_timeout`` runs from then: before anything is read from it or
sent to it, a PROXY header or a TLS handshake included. A connection that may not stay is
closed at once. Counting only once a connection could be answered made an implicit-FTPS
connection over the caps wait for its TLS handshake to say ``421``: 400 stalled ClientHellos
from one address kept 384 refused connections (810 descriptors, 415 threads in one worker)
for pyftpdlib's 300 s idle timeout (docs/reliability.md). Where nothing can be said in
clear text (the implicit port) a refused connection is closed without a reply; the gate logs
it once per burst.

A connection from a balancer (``proxy_protocol``) is counted twice: at accept under the
balancer's address, against the server-wide limits only (that address is every client's),
then, once its header named the client, under the client's address against all of them
(bans, per-address caps), keeping the deadline it got at accept.

With a cluster (``[CLUSTER]``), every connection is counted twice too: at accept by this
node's bans and limits, then in its session's thread, before its greeting, by the cluster's
(Redis). Asked in the accept loop, a Redis slow to answer (up to redis_timeout) held every new
connection of the worker behind the one before, and the worker's heartbeat with them.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import socket
import time
from collections.abc import Iterator
from typing import Optional

from .. import logcontext
from . import compat
from .proxy import ProxyHeaderError, read_header

log = logging.getLogger(__name__)

# What a kicked session reads of its client's input before it closes (see ``close``).
KICK_DISCARD_BYTES = 1024 * 1024


class Arrival(enum.Enum):
    """Where a control connection is between accept and its greeting."""

    ACCEPTED = "accepted: not counted yet"
    AWAITING_HEADER = ("from a balancer: counted server-wide; its PROXY header is read in the "
                       "session thread")
    HEADER_READ = "header read: counted under the client's address once the session thread runs it"
    COUNTED_HERE = ("counted by this node's bans and limits; the cluster's are asked in the "
                    "session thread")
    ADMITTED = "counted under the client's address; greeted (after the TLS handshake if implicit)"
    REFUSED = "refused or closed before it was admitted"


# Counted again (``Admission._recounted``) once the session thread registers the connection.
RECOUNTED = (Arrival.HEADER_READ, Arrival.COUNTED_HERE)


@contextlib.contextmanager
def raw_socket(sock) -> Iterator[socket.socket]:
    """The kernel socket under ``sock`` (which may be a TLS connection), borrowed for socket
    options and peeking: it is not closed afterwards."""
    raw = socket.socket(fileno=sock.fileno())
    try:
        yield raw
    finally:
        raw.detach()


class Admission:
    """The part of the control handler that admits a connection and polices its login
    deadline. Mixed in before pyftpdlib's ``FTPHandler``, whose ``handle`` sends the 220.

    ``greet`` and ``refuse`` are what the implicit-FTPS handler changes (``ftp.tls``).
    """

    arrival = Arrival.ACCEPTED
    _ticket = None  # our place in the server-wide limits (gate.Ticket), while counted
    # Who the gate counts us as (gate.Client), from our greeting on: what USER and PASS ask
    # it about; kept after close, which a password check on another thread may outlive.
    gate_client = None
    _kicked: Optional[str] = None  # why the worker's main thread told us to go
    _kick_obeyed = False  # its 421 is queued

    def handle(self) -> None:
        """Count the connection: called by pyftpdlib at accept (in the server's thread),
        and by ``add_channel`` once a balancer's header was read, or to ask the cluster (in
        the session's)."""
        with logcontext.bound(self.log_label):
            if self.arrival is Arrival.ACCEPTED:
                self._accepted()
            elif self.arrival in RECOUNTED:
                self._recounted()

    def _accepted(self) -> None:
        self._last_active = time.time()  # what cosftpctl sessions shows as idle until a command
        proxy = self.config.network.proxy
        if proxy.expects_header(self.remote_ip):
            if self._count(per_address=False):
                self.arrival = Arrival.AWAITING_HEADER
            return
        if proxy.refuses_direct():
            self.arrival = Arrival.REFUSED
            self.stats.gate.refusals.note(self.remote_ip, "connection refused: not from "
                                          "proxy_allowed (proxy_protocol = required)")
            self.close()
            return
        if not self._count():
            return
        if self.stats.gate.shared:
            self.arrival = Arrival.COUNTED_HERE
        else:
            self._admitted()

    def _recounted(self) -> None:
        """The header named the client, or the cluster is to be asked: count the
        connection under the client's address (instead of the balancer's) by every ban and
        limit, the cluster's included (it keeps its place server-wide and its deadline)."""
        reason = self.stats.recount(self._ticket, self.remote_ip)
        if reason is None:
            self._admitted()
        else:
            self._refused(reason)

    def _count(self, per_address: bool = True) -> bool:
        """Take a place in the limits; False if refused (then the connection is closing)."""
        self._ticket, reason = self.stats.admit(self.remote_ip, self._kick, self,
                                                per_address=per_address)
        if reason is not None:
            self._refused(reason)
        return reason is None

    def _refused(self, reason: str) -> None:
        self.arrival = Arrival.REFUSED
        self.refuse(reason)

    def _admitted(self) -> None:
        self.arrival = Arrival.ADMITTED
        self.gate_client = self._ticket.client
        self.greet()

    def greet(self) -> None:
        """Send the 220 greeting (pyftpdlib's ``handle``)."""
        super().handle()

    def refuse(self, reason: str) -> None:
        """Tell a connection the gate refused why (421), then close it."""
        self.respond(f"421 {reason}")
        self.close_when_done()

    def read_proxy_header(self) -> bool:
        """Read the balancer's PROXY header (blocking this session's thread only): the
        session is then the client's, under the client's address. False if there was no
        valid header: the connection is closed and the reason logged (once per burst).

        Any failure closes: the thread ends after this, and a connection it left open
        would hold its descriptor and place in the limits for good.
        """
        peer = (self.remote_ip, self.remote_port)
        try:
            origin = read_header(self.socket, peer)
        except ProxyHeaderError as exc:
            self._header_refused(exc.reason, exc.detail)
            return False
        except Exception as exc:
            log.debug("reading the PROXY header failed", exc_info=True)
            self._header_refused("error reading its PROXY header",
                                 f"{type(exc).__name__}: {exc}")
            return False
        with contextlib.suppress(ValueError):
            self.server.ip_map.remove(self.remote_ip)  # close() removes the new one
        self.server.ip_map.append(origin.ip)
        log.debug("PROXY header from %s:%s: client %s:%s", *peer, origin.ip, origin.port)
        self.remote_ip, self.remote_port = origin.ip, origin.port
        self.arrival = Arrival.HEADER_READ
        return True

    def _header_refused(self, reason: str, detail: str) -> None:
        self.arrival = Arrival.REFUSED
        self.stats.gate.refusals.note(self.remote_ip, f"connection closed: {reason}", detail)
        self.close()

    def add_channel(self, *args, **kwargs) -> None:
        """The session thread registers the connection: count and greet one whose PROXY
        header was read, or which the cluster is to admit (pyftpdlib greets in ``handle``,
        run at accept). A connection closed while it was off the loop is not registered
        (its socket: EBADF): a failed login's delayed answer puts it back, and its idle
        timeout, say, may have closed it meanwhile."""
        if compat.is_closed(self):
            return
        super().add_channel(*args, **kwargs)
        if self.arrival in RECOUNTED:
            try:
                self.handle()
            except Exception:
                self.handle_error()

    def refused_proxy_header(self, line: str, cmd: str) -> bool:
        """Close a direct connection (not from proxy_allowed) that sends a PROXY header:
        the v1 line, or the NUL line inside the v2 signature, before login."""
        if self.authenticated or self.config.network.proxy.mode == "off" or \
                (cmd != "PROXY" and line != "\0"):
            return False
        self.stats.gate.refusals.note(self.remote_ip, "connection closed: PROXY header "
                                      "from an address not in proxy_allowed")
        self.close()
        return True

    def _kick(self, reason: str) -> None:
        """Called by the gate from the worker's main thread: wake this session's thread
        (its socket reads end of file) and have it reply 421 and close there. A TLS
        handshake under way fails on that end of file and closes without a reply. A
        session whose failed login's answer waits reads nothing: ``kick_arrived``
        (``ftp.loginwait``) wakes it."""
        self._kicked = reason
        with contextlib.suppress(OSError), raw_socket(self.socket) as raw:
            raw.shutdown(socket.SHUT_RD)
        self.kick_arrived()

    @property
    def kicked(self) -> bool:
        """True once the gate told this session to go (``_kick``)."""
        return self._kicked is not None

    def obey_kick(self) -> bool:
        """If the gate told this session to go (``_kick``), or the shared state says it is
        to go and the worker's main thread did not tell it yet (``WorkerStats.kick_due``):
        reply its 421 and close, in the session's thread, and return True; else False.
        Called before each command and each read of either connection: a kick is in force
        from the moment it was asked for.

        The replies the client has not begun to receive go unsent: the 421 is the last word
        it gets. A client that reads no replies had up to ``MAX_QUEUED_REPLIES`` waiting
        (``ftp.backpressure``), and a kick obeyed while it began to read sent them first,
        as much as the socket took in one go (found: 528,357 bytes after the kick). The one
        it has begun to receive is finished first (``ftp.replyqueue``): the 421 then
        starts a line of its own. If the socket cannot take them now (a client that reads
        no replies), they go as the client takes them, the session reading nothing more
        and its transfer ended, and it closes once they went (``CLOSE_GRACE`` at most:
        ``ftp.backpressure``); else it closes at once."""
        if compat.is_closed(self):
            return False
        if self._kicked is None and self._ticket is not None:
            self.stats.kick_due(self._ticket)  # asked for, the worker's thread not there yet
        if self._kicked is None:
            return False
        if self._kick_obeyed:  # the 421 waits for the rest of a reply: nothing is read
            compat.stop_reading(self)
            return True
        self._kick_obeyed = True
        self.drop_unsent_replies()
        self.respond(f"421 {self._kicked}")
        if self.producer_fifo:  # not all in the socket yet
            # its transfer ends with the kick, as ``close`` would end it (an upload parked)
            self.end_transfers(stopping=False)
            if self.data_channel is not None:
                self.data_channel.close()
            compat.stop_reading(self)
            self.close_when_done()
        else:
            self.close()
        return True

    def handle_read(self) -> None:
        if not self.obey_kick():
            super().handle_read()

    def close(self) -> None:
        """Free the connection's place in the limits before its socket closes: no kick
        comes after this. A kicked session first reads what its client sent and nothing
        read (``KICK_DISCARD_BYTES`` at most): closed with input unread, its socket would
        be reset and the replies its kernel still holds, its 421 last, lost."""
        if self._kicked is not None and not compat.is_closed(self):
            with contextlib.suppress(OSError), raw_socket(self.socket) as raw:
                left = KICK_DISCARD_BYTES
                while left > 0 and (chunk := raw.recv(min(left, 65536), socket.MSG_DONTWAIT)):
                    left -= len(chunk)
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            self.stats.release(ticket)
        super().close()
