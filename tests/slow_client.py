"""A download client that reads slowly, like a client on a thin line: it reads ``burst`` bytes
at once, then at most ``rate`` bytes a second, through a small receive buffer (so that its
kernel holds little it has not read), and counts what it read. The server's figures are
checked against that count."""

from __future__ import annotations

import ftplib
import socket
import struct
import threading
import time
from typing import Callable, Optional

# The kernel doubles it; with a window that small, what the client's kernel acknowledged and
# what the client read differ by at most ~32 KiB.
RECEIVE_BUFFER = 16 * 1024
TICK = 0.05  # seconds between two reads of the rate-limited phase: the client's own pace


class SlowReader:
    """``RETR path`` on ``ftp`` (passive, binary), read in a thread of its own; ``wrap``
    turns the data connection into a TLS one."""

    def __init__(self, ftp: ftplib.FTP, path: str, rate: int, burst: int = 0,
                 wrap: Optional[Callable[[socket.socket], socket.socket]] = None) -> None:
        ftp.voidcmd("TYPE I")
        host, port = ftp.makepasv()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.sock.connect((host, port))
        ftp.sendcmd(f"RETR {path}")  # 125/150
        if wrap is not None:
            self.sock = wrap(self.sock)
        self._rate, self._burst = rate, burst
        self.count = 0  # bytes read so far
        self.history: list[tuple[float, int]] = []  # (time.monotonic(), count) per tick
        self.ended = threading.Event()  # the server closed the data connection
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self.count < self._burst and self._read(self._burst - self.count):
            pass
        quota = max(1, int(self._rate * TICK))
        while not self._stop.is_set():
            self.history.append((time.monotonic(), self.count))
            left = quota
            while left > 0 and not self.ended.is_set():
                left -= self._read(left)
            if self.ended.is_set():
                return
            time.sleep(TICK)  # the client's pace, not a synchronisation

    def _read(self, most: int) -> int:
        try:
            data = self.sock.recv(min(most, 65536))
        except OSError:
            data = b""
        if not data:
            self.ended.set()
        self.count += len(data)
        return len(data)

    def rate(self, seconds: float) -> float:
        """Bytes a second the client read over its last ``seconds`` (by its own clock)."""
        history = list(self.history)
        now, count = history[-1]
        then, before = next(((t, c) for t, c in history if t >= now - seconds), history[0])
        return (count - before) / (now - then)

    def finish(self) -> int:
        """Read the rest as fast as it comes; return the bytes read in all."""
        self._stop.set()
        self._thread.join()
        while not self.ended.is_set():
            self._read(1 << 20)
        self.sock.close()
        return self.count

    def cut(self) -> int:
        """Stop reading and reset the connection (what is not read yet is lost); return the
        bytes read."""
        self._stop.set()
        self._thread.join()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        return self.count
