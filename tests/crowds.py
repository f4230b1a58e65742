"""Crowds of control connections that send their logins at the same moment, for the login-cost
tests and ``bench/login_cost.py``; and a worker's peak RSS, read from the kernel.

Each crowd member connects from one of several loopback addresses (127.0.0.0/8 is all
loopback on Linux), so that the per-address limits see several attackers, and the legitimate
client on 127.0.0.1 is none of them.
"""

from __future__ import annotations

import contextlib
import ftplib
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Optional

import psutil

from .server_proc import wait_until

REPLY_TIMEOUT = 120.0


def reset_peak_rss(pid: int) -> None:
    """Set the kernel's high-water mark of ``pid``'s RSS (VmHWM) to its RSS now
    (``clear_refs``, proc(5)): the next :func:`peak_rss` is the peak from here on."""
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


def peak_rss(pid: int) -> int:
    """The most RSS ``pid`` held (VmHWM), in bytes: every moment counts, none is sampled."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def workers_of(master_pid: int) -> list[psutil.Process]:
    """The worker processes of a server (not its metrics exporter), by their titles."""
    found = []
    for child in psutil.Process(master_pid).children():
        with contextlib.suppress(psutil.Error):
            if " ".join(child.cmdline()).startswith("cosftp: worker"):
                found.append(child)
    return found


def kill_the_worker(master_pid: int) -> None:
    """SIGKILL the one worker of a server (no settle, no clean-up: as the OOM killer does)
    and wait until the master started its replacement."""
    [victim] = workers_of(master_pid)
    victim.kill()
    victim.wait(timeout=10)
    wait_until(lambda: len(workers_of(master_pid)) == 1, what="the new worker")


def sources(count: int, first: int = 20) -> list[str]:
    """``count`` loopback addresses other than 127.0.0.1."""
    return [f"127.0.0.{first + n}" for n in range(count)]


def legitimate_login(port: int, user: str, password: str) -> str:
    """Log in from 127.0.0.1 (no crowd's address): the reply, or the error."""
    try:
        with ftplib.FTP() as ftp:
            ftp.connect("127.0.0.1", port, timeout=REPLY_TIMEOUT)
            return ftp.login(user, password)
    except (ftplib.Error, OSError, EOFError) as exc:
        return f"{type(exc).__name__}: {exc}"


class Member:
    """One control connection of a crowd, read line by line."""

    def __init__(self, port: int, source: str) -> None:
        self.source = source
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT,
                                             source_address=(source, 0))
        self._buffer = b""
        self.closed = False

    def reply(self) -> str:
        """The next whole reply (its last line), or '' if the server closed the connection."""
        while True:
            line = self._line()
            if line is None:
                self.closed = True
                return ""
            if len(line) >= 4 and line[:3].isdigit() and line[3] == " ":
                return line

    def _line(self) -> Optional[str]:
        while b"\r\n" not in self._buffer:
            try:
                data = self.sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                return None
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def send(self, *lines: str) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall("".join(f"{line}\r\n" for line in lines).encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def in_threads(function: Callable, arguments: Iterable[tuple]) -> list:
    """``function(*args)`` for each of ``arguments``, each in its own thread; the results."""
    arguments = list(arguments)
    results: list = [None] * len(arguments)

    def run(index: int, args: tuple) -> None:
        results[index] = function(*args)

    threads = [threading.Thread(target=run, args=(i, args)) for i, args in enumerate(arguments)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


class Crowd:
    """Control connections, ``per_source`` from each of ``addresses``: greeted, or (with
    ``login``, a user and password) logged in, ``at_once`` per address at a time (below the
    per-address cap on connections not logged in yet)."""

    def __init__(self, port: int, addresses: list[str], per_source: int,
                 login: Optional[tuple[str, str]] = None, at_once: int = 8) -> None:
        self.members: list[Member] = []
        batch = per_source if login is None else at_once
        for opened in in_threads(self._open, [(port, source, per_source, batch, login)
                                              for source in addresses]):
            self.members += opened

    @staticmethod
    def _open(port: int, source: str, count: int, batch: int,
              login: Optional[tuple[str, str]]) -> list[Member]:
        members: list[Member] = []
        for start in range(0, count, batch):
            opened = [Member(port, source) for _ in range(min(batch, count - start))]
            members += opened
            replies = in_threads(Member.reply, [(m,) for m in opened])
            assert all(r.startswith("220") for r in replies), replies
            if login is not None:
                for member in opened:
                    member.send(f"USER {login[0]}", f"PASS {login[1]}")
                replies = in_threads(lambda m: (m.reply(), m.reply())[1],
                                     [(m,) for m in opened])
                assert all(r.startswith("230") for r in replies), replies
        return members

    def send_all(self, lines: list[str], meanwhile: Optional[Callable] = None
                 ) -> tuple[Counter, object]:
        """Every member sends ``lines`` at the same moment; return the replies they got, by
        code ('' for a connection the server closed), and what ``meanwhile()`` returned, run
        in this thread as soon as the members were let go."""
        ready = threading.Barrier(len(self.members) + 1)

        def one(member: Member) -> list[str]:
            ready.wait()
            if member.closed:
                return [""]
            member.send(*lines)
            replies = []
            for _ in lines:
                reply = member.reply()
                replies.append(reply[:3])
                if not reply or reply.startswith("421"):
                    break
            return replies

        collected: list[list[str]] = []
        thread = threading.Thread(target=lambda: collected.extend(
            in_threads(one, [(m,) for m in self.members])))
        thread.start()
        ready.wait()
        outcome = meanwhile() if meanwhile is not None else None
        thread.join()
        return Counter(code for replies in collected for code in replies), outcome

    def close(self) -> None:
        for member in self.members:
            member.close()


def unread_session(port: int, source: str, login: bool = False) -> socket.socket:
    """A control connection from ``source`` with a small receive buffer, logged in as ops
    if ``login``."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    replies = sock.makefile("rb")
    assert replies.readline().startswith(b"220")
    if login:
        sock.sendall(b"USER ops\r\nPASS ops-pw\r\n")
        assert replies.readline().startswith(b"331")
        assert replies.readline().startswith(b"230")
    return sock


def tcp_queues(server_port: int, client_port: int) -> tuple[int, int]:
    """The server's end of its connection from ``client_port``: the bytes it wrote that the
    client has not acknowledged (tx_queue) and the bytes it received and has not read yet
    (rx_queue), from /proc/net/tcp; (0, 0) once it is closed."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) == server_port and \
                    int(remote.split(":")[1], 16) == client_port:
                unsent, unread = queues.split(":")
                return int(unsent, 16), int(unread, 16)
    return 0, 0
