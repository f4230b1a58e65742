"""Hostile clients for ``bench/load.py --hostile``: what one address can throw at the server.

Each attacker uses its own loopback source address (127.0.0.0/8 is all loopback on Linux), so
the per-address limits can tell it from the legitimate sessions on 127.0.0.1 and from the
other attackers, and each reports how fast the server cut it off.

* ``IdleFlood``: opens ``count`` sockets at once and never sends a byte.
* ``Guesser``: ``connections`` parallel connections, each guessing passwords until cut off.
* ``SlowDrip``: connections that send one byte of an endless command line, or a ``NOOP``,
  every few seconds, so that no idle timeout a command resets would ever fire.

Run as a script (``bench/load.py --hostile`` does), it attacks a server for ``--seconds`` in a
process of its own (not sharing the legitimate clients' interpreter lock) and prints what
each attacker saw as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import json
import select
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass, field


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
    first_reply: str = ""
    replied: float = 0.0
    closed: float = 0.0
    buffer: bytes = b""


@dataclass
class IdleFlood:
    """``count`` sockets that connect and stay silent; records each one's fate."""

    port: int
    source: str
    count: int
    conns: list[_Conn] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        for _ in range(self.count):
            sock = socket.socket()
            sock.bind((self.source, 0))
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", self.port))
            conn = _Conn(sock, time.monotonic())
            self.conns.append(conn)
            selector.register(sock, selectors.EVENT_READ, conn)
        while not self.stop.is_set() and selector.get_map():
            for key, _ in selector.select(0.5):
                self._read(selector, key.data)
        for conn in self.conns:
            conn.sock.close()

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


@dataclass
class Guesser:
    """Parallel connections guessing the password of ``user`` until the server stops them."""

    port: int
    source: str
    user: str
    connections: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    guesses: int = 0  # answered 530
    logins: int = 0  # answered 230: must stay 0
    refusals: list[float] = field(default_factory=list)  # seconds from start to each 421
    started: float = 0.0

    def run(self) -> None:
        self.started = time.monotonic()
        _in_threads(self._one, [(n,) for n in range(self.connections)])

    def _one(self, number: int) -> None:
        attempt = 0
        while not self.stop.is_set():
            ftp = ftplib.FTP()
            try:
                ftp.connect("127.0.0.1", self.port, timeout=60,
                            source_address=(self.source, 0))
                while not self.stop.is_set():
                    attempt += 1
                    self._guess(ftp, f"guess-{number}-{attempt}")
            except ftplib.error_temp:
                with self.lock:
                    self.refusals.append(time.monotonic() - self.started)
                self.stop.wait(1.0)  # a determined attacker comes back
            except (OSError, EOFError, ftplib.Error):
                pass  # dropped after 3 failures: connect again
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
        refusals = sorted(self.refusals)
        return {"connections": self.connections, "guesses_answered_530": self.guesses,
                "logins_230": self.logins, "refused_421": len(refusals),
                "first_421_after_s": round(refusals[0], 1) if refusals else None}


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
        """Wait ``interval`` for the server to say anything; b"" when it closed."""
        readable, _, _ = select.select([sock], [], [], self.interval)
        return sock.recv(4096) if readable else b"(nothing)"

    def report(self) -> dict:
        return {"connections": self.connections,
                "cut_off": len(self.cut_after),
                "cut_off_after_s_min": round(min(self.cut_after, default=0), 1),
                "cut_off_after_s_max": round(max(self.cut_after, default=0), 1),
                "last_replies": sorted(set(self.replies))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--user", default="load", help="the login the guesser attacks")
    parser.add_argument("--flood", type=int, default=1000)
    parser.add_argument("--guessers", type=int, default=10)
    parser.add_argument("--drippers", type=int, default=10)
    parser.add_argument("--sources", default="127.0.0.2,127.0.0.3,127.0.0.4",
                        help="source addresses of the flood, the guesser, the drippers")
    args = parser.parse_args(argv)
    flood_from, guesser_from, drip_from = args.sources.split(",")
    attackers = {"idle_flood": IdleFlood(args.port, flood_from, args.flood),
                 "guesser": Guesser(args.port, guesser_from, args.user, args.guessers),
                 "slow_drip": SlowDrip(args.port, drip_from, args.drippers)}
    threads = [threading.Thread(target=attacker.run) for attacker in attackers.values()]
    for thread in threads:
        thread.start()
    time.sleep(args.seconds)
    for attacker in attackers.values():
        attacker.stop.set()
    for thread in threads:
        thread.join()
    print(json.dumps({name: attacker.report() for name, attacker in attackers.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
