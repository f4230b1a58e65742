"""Hostile clients for ``bench/load.py --hostile``: what one address can throw at the server.

Each attacker uses loopback source addresses of its own (127.0.0.0/8 is all loopback on
Linux), so the per-address limits can tell it from the legitimate sessions on 127.0.0.1 and
from the other attackers, and each reports how fast the server cut it off.

On the FTP port:

* ``IdleFlood``: opens ``count`` sockets at once and never sends a byte.
* ``Guesser``: parallel connections, each guessing passwords until cut off.
* ``SlowDrip``: connections that send one byte of an endless command line, or a ``NOOP``,
  every few seconds, so that no idle timeout a command resets would ever fire.

With ``--implicit-port`` (the server's implicit FTPS port), also:

* ``TLSStall``: opens ``--stalls`` sockets at once on the implicit port; half send nothing,
  half the first half of a ClientHello, and then nothing.
* a second ``Guesser`` over TLS from several addresses: half its connections on the implicit
  port, half with ``AUTH TLS`` on the FTP port.
* ``Garbage``: connections to the implicit port that send what is no TLS (random bytes, FTP
  commands in clear, an HTTP request, a PROXY line, a TLS record header with junk after it)
  and wait to be closed, again and again.

Run as a script (``bench/load.py --hostile`` does), it attacks a server for ``--seconds`` in a
process of its own (not sharing the legitimate clients' interpreter lock) and prints what
each attacker saw as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import itertools
import json
import os
import resource
import select
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.tls_clients import ImplicitFTP_TLS, client_context, client_hello  # noqa: E402

# How long after its connect a server's close counts as "at once" (a refusal), not as the
# end of a login deadline.
AT_ONCE = 5.0


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[int(share * (len(ordered) - 1))]


def _in_threads(target, arguments: list[tuple]) -> None:
    """Run ``target(*args)`` for each of ``arguments`` in its own thread; wait for all."""
    threads = [threading.Thread(target=target, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@dataclass
class _Conn:
    sock: socket.socket
    opened: float
    payload: bytes = b""  # sent once connected
    first_reply: str = ""
    replied: float = 0.0
    closed: float = 0.0
    buffer: bytes = b""


@dataclass
class Flood:
    """``count`` sockets that connect at once, send their payload (``payloads`` in turn; may
    be empty) and then stay silent; records each one's fate."""

    port: int
    source: str
    count: int
    payloads: tuple[bytes, ...] = (b"",)
    conns: list[_Conn] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        for _, payload in zip(range(self.count), itertools.cycle(self.payloads)):
            sock = socket.socket()
            sock.bind((self.source, 0))
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", self.port))
            conn = _Conn(sock, time.monotonic(), payload)
            self.conns.append(conn)
            selector.register(sock, selectors.EVENT_WRITE if payload else selectors.EVENT_READ,
                              conn)
        while not self.stop.is_set() and selector.get_map():
            for key, events in selector.select(0.5):
                if events & selectors.EVENT_WRITE:
                    self._send(selector, key.data)
                else:
                    self._read(selector, key.data)
        for conn in self.conns:
            conn.sock.close()

    @staticmethod
    def _send(selector: selectors.BaseSelector, conn: _Conn) -> None:
        """Connected: send the payload (small: one send), then wait for the server."""
        try:
            conn.sock.send(conn.payload)
        except OSError:  # refused or reset before it could send
            conn.closed = time.monotonic()
            selector.unregister(conn.sock)
            return
        selector.modify(conn.sock, selectors.EVENT_READ, conn)

    @staticmethod
    def _read(selector: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        now = time.monotonic()
        if data:
            conn.buffer += data
            if not conn.first_reply and b"\r\n" in conn.buffer:
                conn.first_reply = conn.buffer.split(b"\r\n", 1)[0].decode(errors="replace")
                conn.replied = now
            return
        conn.closed = now
        selector.unregister(conn.sock)


class IdleFlood(Flood):
    """Sockets on the FTP port that never send a byte."""

    def report(self) -> dict:
        refused = [c for c in self.conns if c.first_reply.startswith("421")]
        greeted = [c for c in self.conns if c.first_reply.startswith("220")]
        return {
            "sockets": len(self.conns),
            "refused_at_connect": len(refused),
            "refused_reply_p50_ms": round(_percentile([c.replied - c.opened for c in refused],
                                                      0.5) * 1000, 1),
            "refused_reply_max_ms": round(max((c.replied - c.opened for c in refused),
                                              default=0) * 1000, 1),
            "greeted": len(greeted),
            "greeted_closed_by_server": sum(1 for c in greeted if c.closed),
            "greeted_closed_after_s": round(max((c.closed - c.opened for c in greeted
                                                 if c.closed), default=0), 1),
            "never_answered": sum(1 for c in self.conns if not c.first_reply),
        }


class TLSStall(Flood):
    """Sockets on the implicit FTPS port that send nothing, or a part of a ClientHello, and
    then wait: nothing can be said to them in clear text, so all they see is the close."""

    def report(self) -> dict:
        groups = {"nothing": [c for c in self.conns if not c.payload],
                  "partial_client_hello": [c for c in self.conns if c.payload]}
        return {name: _closes(conns) for name, conns in groups.items()}


def _closes(conns: list[_Conn]) -> dict:
    """When the server closed ``conns``: at once (within ``AT_ONCE``), later, or never."""
    after = [c.closed - c.opened for c in conns if c.closed]
    soon = [s for s in after if s <= AT_ONCE]
    late = [s for s in after if s > AT_ONCE]
    return {"sockets": len(conns),
            "closed_at_once": len(soon),
            "closed_at_once_max_ms": round(max(soon, default=0) * 1000, 1),
            "closed_later": len(late),
            "closed_later_after_s": [round(min(late, default=0), 1),
                                     round(max(late, default=0), 1)],
            "open_at_end": len(conns) - len(after),
            "sent_bytes": sum(1 for c in conns if c.buffer)}


def plain(port: int) -> tuple[int, Callable[[], ftplib.FTP]]:
    """Connect in clear text to ``port``."""
    return port, ftplib.FTP


def explicit_tls(port: int) -> tuple[int, Callable[[], ftplib.FTP]]:
    """``AUTH TLS`` on the FTP ``port`` (ftplib sends it at login)."""
    return port, lambda: ftplib.FTP_TLS(context=client_context())


def implicit_tls(port: int) -> tuple[int, Callable[[], ftplib.FTP]]:
    """TLS from the first byte on the implicit FTPS ``port``."""
    return port, lambda: ImplicitFTP_TLS(context=client_context())


@dataclass
class Guesser:
    """``connections`` parallel connections from each of ``sources`` guessing the password of
    ``user`` until the server stops them; connection ``n`` goes the ``n``-th of ``ways`` (a
    port and a client class) in turn."""

    ways: tuple[tuple[int, Callable[[], ftplib.FTP]], ...]
    sources: tuple[str, ...]
    user: str
    connections: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    guesses: int = 0  # answered 530
    logins: int = 0  # answered 230: must stay 0
    # seconds from the start to each refusal (421, or closed before its greeting), by source
    refusals: dict[str, list[float]] = field(default_factory=dict)
    started: float = 0.0

    def run(self) -> None:
        self.started = time.monotonic()
        self.refusals = {source: [] for source in self.sources}
        _in_threads(self._one, [(source, n) for source in self.sources
                                for n in range(self.connections)])

    def _one(self, source: str, number: int) -> None:
        port, client = self.ways[number % len(self.ways)]
        attempt = 0
        while not self.stop.is_set():
            ftp = client()
            connected = False
            try:
                ftp.connect("127.0.0.1", port, timeout=60, source_address=(source, 0))
                connected = True
                while not self.stop.is_set():
                    attempt += 1
                    self._guess(ftp, f"guess-{number}-{attempt}")
            except (OSError, EOFError, ftplib.Error) as exc:
                if isinstance(exc, ftplib.error_temp) or not connected:
                    with self.lock:
                        self.refusals[source].append(time.monotonic() - self.started)
                    self.stop.wait(1.0)  # a determined attacker comes back
                # else: dropped after 3 failures: connect again
            finally:
                ftp.close()

    def _guess(self, ftp: ftplib.FTP, password: str) -> None:
        try:
            ftp.login(self.user, password)
        except ftplib.error_perm:
            with self.lock:
                self.guesses += 1
            return
        with self.lock:
            self.logins += 1

    def report(self) -> dict:
        firsts = [times[0] for times in self.refusals.values() if times]
        return {"sources": len(self.sources), "connections": self.connections * len(self.sources),
                "guesses_answered_530": self.guesses, "logins_230": self.logins,
                "refused": sum(len(times) for times in self.refusals.values()),
                "sources_refused": len(firsts),
                "first_refusal_after_s": [round(min(firsts), 1), round(max(firsts), 1)]
                if firsts else None}


@dataclass
class SlowDrip:
    """Half the connections drip an endless command line one byte at a time, the other half
    send a ``NOOP`` every ``interval`` seconds; none ever logs in."""

    port: int
    source: str
    connections: int
    interval: float = 2.0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cut_after: list[float] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)

    def run(self) -> None:
        _in_threads(self._one, [(n % 2 == 0,) for n in range(self.connections)])

    def _one(self, drip_bytes: bool) -> None:
        started = time.monotonic()
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=60,
                                            source_address=(self.source, 0))
        except OSError:
            return
        with sock:
            reader = sock.makefile("rb")
            last = b""
            with contextlib.suppress(OSError):
                last = reader.readline()  # 220
            while not self.stop.is_set():
                try:
                    sock.sendall(b"U" if drip_bytes else b"NOOP\r\n")
                    line = reader.readline() if not drip_bytes else self._poll(sock)
                except socket.timeout:  # TimeoutError from Python 3.10 on
                    continue
                except OSError:
                    line = b""
                if line and not line.startswith(b"421"):
                    last = line
                    if not drip_bytes:
                        self.stop.wait(self.interval)
                    continue
                with self.lock:
                    self.cut_after.append(time.monotonic() - started)
                    self.replies.append((line or last).decode(errors="replace").strip())
                return

    def _poll(self, sock: socket.socket) -> bytes:
        """Wait ``interval`` for the server to say anything; b"" when it closed. (poll, not
        select: beside the other attackers' sockets, this one's number is over 1024.)"""
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return sock.recv(4096) if poller.poll(self.interval * 1000) else b"(nothing)"

    def report(self) -> dict:
        return {"connections": self.connections,
                "cut_off": len(self.cut_after),
                "cut_off_after_s_min": round(min(self.cut_after, default=0), 1),
                "cut_off_after_s_max": round(max(self.cut_after, default=0), 1),
                "last_replies": sorted(set(self.replies))}


def garbage_payloads() -> tuple[bytes, ...]:
    """What a confused or hostile client sends to a TLS port instead of a ClientHello."""
    return (os.urandom(512), b"USER anonymous\r\nPASS guest\r\n",
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"PROXY TCP4 203.0.113.9 127.0.0.1 4242 990\r\n",
            b"\x16\x03\x01\x00\x40" + os.urandom(64))  # a handshake record of junk


@dataclass
class Garbage:
    """``connections`` loops, each connecting to the implicit FTPS port, sending one of
    ``garbage_payloads`` and waiting for the server to close, then connecting again."""

    port: int
    source: str
    connections: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed_after: list[float] = field(default_factory=list)  # from the send to the close
    answered: int = 0  # connections the server wrote anything to (a TLS alert)
    held: int = 0  # still open when the attack ended
    refused: int = 0  # connect or send failed

    def run(self) -> None:
        _in_threads(self._one, [(n,) for n in range(self.connections)])

    def _one(self, number: int) -> None:
        payloads = garbage_payloads()
        for attempt in itertools.count(number):
            if self.stop.is_set():
                return
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=10,
                                                source_address=(self.source, 0))
                sock.sendall(payloads[attempt % len(payloads)])
            except OSError:
                with self.lock:
                    self.refused += 1
                self.stop.wait(0.1)
                continue
            with sock:
                self._until_closed(sock)

    def _until_closed(self, sock: socket.socket) -> None:
        sent, answered = time.monotonic(), False
        sock.settimeout(0.5)
        while not self.stop.is_set():
            try:
                data = sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if data:
                answered = True
                continue
            with self.lock:
                self.closed_after.append(time.monotonic() - sent)
                self.answered += answered
            return
        with self.lock:
            self.held += 1

    def report(self) -> dict:
        return {"connections_at_once": self.connections,
                "connections_made": len(self.closed_after) + self.held,
                "closed_by_server": len(self.closed_after),
                "closed_after_ms_p50": round(_percentile(self.closed_after, 0.5) * 1000, 1),
                "closed_after_ms_max": round(max(self.closed_after, default=0) * 1000, 1),
                "answered_before_close": self.answered, "open_at_end": self.held,
                "connects_failed": self.refused}


def attackers(args: argparse.Namespace) -> dict:
    """The attackers ``args`` ask for, by name."""
    found = {"idle_flood": IdleFlood(args.port, args.flood_from, args.flood),
             "guesser": Guesser((plain(args.port),), (args.guess_from,), args.user,
                                args.guessers),
             "slow_drip": SlowDrip(args.port, args.drip_from, args.drippers)}
    if args.implicit_port:
        hello = client_hello()
        found["tls_stall"] = TLSStall(args.implicit_port, args.stall_from, args.stalls,
                                      (b"", hello[:len(hello) // 2]))
        found["tls_guessers"] = Guesser(
            (implicit_tls(args.implicit_port), explicit_tls(args.port)),
            tuple(args.tls_guess_from.split(",")), args.user, args.tls_guessers)
        found["tls_garbage"] = Garbage(args.implicit_port, args.garbage_from, args.garbage)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--implicit-port", type=int, default=0,
                        help="the implicit FTPS port: 0 leaves out the TLS attackers")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--user", default="load", help="the login the guessers attack")
    parser.add_argument("--flood", type=int, default=1000)
    parser.add_argument("--guessers", type=int, default=10)
    parser.add_argument("--drippers", type=int, default=10)
    parser.add_argument("--stalls", type=int, default=400)
    parser.add_argument("--tls-guessers", type=int, default=8,
                        help="TLS guessing connections per address")
    parser.add_argument("--garbage", type=int, default=4,
                        help="connections sending garbage to the implicit port at once")
    for name, default in (("flood", "127.0.0.2"), ("guess", "127.0.0.3"),
                          ("drip", "127.0.0.4"), ("stall", "127.0.0.5"),
                          ("garbage", "127.0.0.6"),
                          ("tls-guess", "127.0.0.7,127.0.0.8,127.0.0.9,127.0.0.10")):
        parser.add_argument(f"--{name}-from", default=default, metavar="ADDRESS")
    args = parser.parse_args(argv)
    found = attackers(args)
    threads = [threading.Thread(target=attacker.run) for attacker in found.values()]
    for thread in threads:
        thread.start()
    time.sleep(args.seconds)
    for attacker in found.values():
        attacker.stop.set()
    for thread in threads:
        thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({**{name: attacker.report() for name, attacker in found.items()},
                      "attackers_cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
