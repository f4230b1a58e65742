"""The worker's FTP server: it leaves new connections to a less busy peer, serves each
session in a thread of its own, and waits for those threads until one stop deadline."""

from __future__ import annotations

import os
import time

from pyftpdlib.servers import ThreadedFTPServer

from .. import logcontext
from ..ftp import compat
from ..ftp.admission import Arrival
from .scoreboard import SharedState

# How long after a peer's start (its fork, then the start of its set-up) the workers leave it
# its share of new connections: a worker's set-up takes 1-2 s on a loaded machine; one that
# hangs in it must not hold new connections in the backlog for long (worker_boot_timeout
# kills it only after a minute by default).
STARTING_PEER_WAIT = 10.0


class BalancedFTPServer(ThreadedFTPServer):
    """Stops polling the shared listener while this worker is clearly busier than a peer.

    Every worker waits on the same socket and the kernel tends to wake the same one, so
    without this one worker would take every session. A worker holding more than one
    session above its least busy serving peer steps aside until that changes; it looks
    before and after each accept, and at each tick of its loop.
    """

    state: SharedState
    kind = "FTP"  # what the listener serves, for the log
    paused = False  # True while this worker leaves new connections to its peers
    # When (``time.monotonic()``) the worker stops waiting for its session threads; set
    # before ``close_all``.
    stop_deadline = 0.0

    @property
    def join_timeout(self) -> float:
        """How long ``close_all`` waits for the next session thread: what is left until the
        stop's deadline. One deadline for them all: a timeout per thread (pyftpdlib's)
        added up past the master's allowance when several sessions waited on COS, and the
        master aborted the worker with their uploads unparked."""
        return max(0.0, self.stop_deadline - time.monotonic())

    def describe(self) -> str:
        """``address:port (kind)``, for the log."""
        host, port = self.address[:2]
        return f"[{host}]:{port} ({self.kind})" if ":" in host else f"{host}:{port} ({self.kind})"

    def handle_accept(self) -> None:
        """Accept a waiting connection unless a peer is now clearly less busy. Between
        accepts this worker looks only once a second: a peer that started serving, or whose
        sessions ended, since then would otherwise lose this connection for its whole life."""
        self.rebalance()
        if not self.paused:
            super().handle_accept()

    def handle_accepted(self, sock, addr):
        handler = super().handle_accepted(sock, addr)
        self.rebalance()
        return handler

    def _loop(self, handler) -> None:
        """Serve one session in its thread; one refused at accept (closed, after a 421 where
        one can be sent) has nothing left to serve, and pyftpdlib would fail registering its
        closed socket. A connection from a balancer has its PROXY header read here, off the
        accept loop (it was counted at accept: such threads are bounded by the limits).

        The thread is the session's alone, its data channel's events included: every line
        it writes, and those of the pool tasks it submits, names the session."""
        logcontext.bind(handler.log_label)
        if handler.arrival is Arrival.AWAITING_HEADER and not handler.read_proxy_header():
            return
        if not compat.is_closed(handler):
            super()._loop(handler)

    def rebalance(self) -> None:
        """Pause or resume accepting, depending on the load of the other workers.

        A peer still setting up (``starting``, for at most ``STARTING_PEER_WAIT``) counts
        as one holding no session: a burst that comes while it boots (the server's start,
        a reload, the replacement of a dead worker, whose clients all reconnect at once)
        waits in the listen backlog for it past this worker's share, instead of all landing
        here for the sessions' whole life (a 2-worker server's fresh start: 4 sessions at
        once went 4/0 in 2 starts of 5)."""
        if compat.listen_fileno(self) is None:
            return
        me, mine, peers, now = os.getpid(), 0, [], time.time()
        for worker in self.state.workers():
            if worker.pid == me:
                mine = worker.sessions
            elif worker.state == "serving" or (
                    worker.state == "starting" and
                    0 <= now - worker.started < STARTING_PEER_WAIT):
                peers.append(worker.sessions)
        busy = bool(peers) and mine > min(peers) + 1
        if busy and not self.paused:
            self.ioloop.unregister(compat.listen_fileno(self))
        elif self.paused and not busy:
            self.ioloop.register(compat.listen_fileno(self), self, self.ioloop.READ)
        self.paused = busy
