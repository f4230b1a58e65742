"""One session that behaves as an attacker would, spoken over a raw socket: what it makes the
worker hold stays bounded, and a second session of the same client beside it keeps working.

The worker serves both sessions (``worker_processes = 1``), so its descriptors, threads and
peak RSS, read from the kernel, are what the hostile session costs. Nothing here waits by
sleeping: replies are read, and the rest is polled (``wait_until``).
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import socket
import threading
from collections.abc import Iterator

import psutil
import pytest

from cosftp_prefork.ftp.backpressure import MAX_QUEUED_REPLIES, PLAIN_READ_SIZE
from cosftp_prefork.ftp.dialect import MAX_LINE

from .conftest import ALPHA
from .crowds import peak_rss, reset_peak_rss, workers_of
from .server_proc import Account, ServerProcess, passive_ports, wait_until

MIB = 1024 * 1024
# Commands of one kind a hostile session repeats (the audit's count).
REPEATS = 1500
# Commands written before their replies are read: a batch's replies fit in the sockets'
# buffers, so writing it never waits for the worker to send.
BATCH = 100
# Every this many PASV or EPSV, the client connects to the last one's port.
HOLD_EVERY = 25
# What the worker may open or start beside the hostile session's one data socket while it
# runs: a pooled COS connection, a thread of its COS pools.
SPARE_FDS = 4
SPARE_THREADS = 2
# What the worker's RSS may grow by, on top of what the configuration lets a session hold
# (a command line, a read, the replies it queues): Python's allocator, a few replies, the
# COS client's buffers. A session that kept what it was sent would grow by 100 MiB.
ALLOWANCE = 8 * MIB
LONG_LINE = 100 * MIB

HOSTILE = Account("hostile", "hostile-pw", ALPHA)


@pytest.fixture(scope="module")
def server(emulator, tmp_path_factory) -> Iterator[ServerProcess]:
    proc = ServerProcess(str(tmp_path_factory.mktemp("hostile")), emulator.port, [HOSTILE],
                         optional={"worker_processes": "1", "log_level": "INFO",
                                   "max_login_failures": "0",
                                   "max_connections_per_ip": "0"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def worker(server) -> psutil.Process:
    [one] = workers_of(server.proc.pid)
    return one


class Raw:
    """A logged-in control connection spoken byte by byte, replies read one at a time."""

    def __init__(self, server: ServerProcess, rcvbuf: int = 0) -> None:
        self.sock = socket.socket()
        if rcvbuf:  # before connect: the window the server sees is set by then
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(60)
        self.sock.connect(("127.0.0.1", server.port))
        self.replies = self.sock.makefile("rb")
        assert self.reply().startswith("220")
        assert self.command("USER hostile").startswith("331")
        assert self.command("PASS hostile-pw").startswith("230")

    def reply(self) -> str:
        """The next whole reply (a multi-line one ends with its code and a space); '' at
        EOF."""
        first = self.replies.readline().decode("utf-8", "replace")
        if first[3:4] != "-":
            return first.rstrip("\r\n")
        lines = [first]
        while not (lines[-1][:3] == first[:3] and lines[-1][3:4] == " "):
            line = self.replies.readline().decode("utf-8", "replace")
            if not line:
                break
            lines.append(line)
        return "".join(lines).rstrip("\r\n")

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def pipelined(self, lines: list[str]) -> list[str]:
        """Write ``lines`` ``BATCH`` at a time, each batch at once, then read its replies;
        returns every reply in order."""
        replies = []
        for start in range(0, len(lines), BATCH):
            batch = lines[start:start + BATCH]
            self.sock.sendall(b"".join(line.encode() + b"\r\n" for line in batch))
            replies += [self.reply() for _ in batch]
        return replies

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@pytest.fixture
def hostile(server) -> Iterator[Raw]:
    session = Raw(server)
    yield session
    session.close()


def round_trip(server: ServerProcess, name: str) -> None:
    """A second session of the same client (127.0.0.1) stores a file and reads it back."""
    data = os.urandom(64 * 1024)
    with server.login("hostile", "hostile-pw") as ftp:
        assert ftp.storbinary(f"STOR {name}", io.BytesIO(data)).startswith("226")
        out = bytearray()
        assert ftp.retrbinary(f"RETR {name}", out.extend).startswith("226")
        assert bytes(out) == data
        ftp.delete(name)


def passive_listeners(worker: psutil.Process) -> list[int]:
    """The ports of the passive range the worker listens on."""
    low, high = passive_ports()
    return [conn.laddr.port for conn in worker.net_connections("tcp")
            if conn.status == psutil.CONN_LISTEN and low <= conn.laddr.port <= high]


def footprint(worker: psutil.Process) -> tuple[int, int]:
    """The worker's open descriptors and threads."""
    return worker.num_fds(), worker.num_threads()


def port_argument(address: tuple[str, int]) -> str:
    host, port = address
    return ",".join([*host.split("."), str(port >> 8), str(port & 255)])


def announced_port(reply: str) -> int:
    """The port a 227 or 229 reply announces."""
    if reply.startswith("229"):
        return int(reply.split("|")[3])
    return ftplib.parse227(reply)[1]


def test_repeated_pasv_epsv_and_port_keep_one_data_socket(server, worker, hostile, area):
    """Each PASV or EPSV closes the listener (and a connection it holds) of the one before,
    each PORT the data connection of the one before: 1,500 of each keep one socket."""
    client_side = socket.create_server(("127.0.0.1", 0), backlog=2 * BATCH)
    client_side.settimeout(60)
    try:
        # Once of each first: the worker's pools and the session's state exist.
        for command in ("PASV", "EPSV", f"PORT {port_argument(client_side.getsockname())}"):
            assert hostile.command(command)[:3] in ("227", "229", "200")
        drain_accepted(client_side)
        fds, threads = footprint(worker)
        for command in ("PASV", "EPSV"):
            for _ in range(0, REPEATS, HOLD_EVERY):
                replies = hostile.pipelined([command] * HOLD_EVERY)
                assert all(reply[:3] in ("227", "229") for reply in replies), replies
                # Connected to, the last listener holds a connection, which the next PASV
                # or EPSV must close too.
                held = socket.create_connection(("127.0.0.1", announced_port(replies[-1])))
                held.close()
            assert passive_listeners(worker) == [announced_port(replies[-1])]
            assert worker.num_fds() <= fds + SPARE_FDS, f"after {REPEATS} {command}"
        port = f"PORT {port_argument(client_side.getsockname())}"
        for _ in range(0, REPEATS, BATCH):
            replies = hostile.pipelined([port] * BATCH)
            assert all(reply.startswith("200") for reply in replies), replies
            drain_accepted(client_side)
        assert passive_listeners(worker) == []
        assert worker.num_fds() <= fds + SPARE_FDS, f"after {REPEATS} PORT"
        assert worker.num_threads() <= threads + SPARE_THREADS
        # and a PORT after them all gives the session its data connection
        assert hostile.command(port).startswith("200")
        hostile.sock.sendall(b"NLST\r\n")
        data, _ = client_side.accept()
        assert hostile.reply()[:3] in ("125", "150")
        data.close()
        assert hostile.reply()[:3] in ("226", "426", "450")
    finally:
        client_side.close()
    round_trip(server, f"{area}/beside")


def drain_accepted(listener: socket.socket) -> None:
    """Accept and close the data connections the worker made to ``listener`` so far."""
    listener.setblocking(False)
    try:
        while True:
            conn, _ = listener.accept()
            conn.close()
    except BlockingIOError:
        pass
    finally:
        listener.settimeout(60)


def test_repeated_rest_rnfr_allo_and_mlst_keep_one_pending_state(server, worker, hostile,
                                                                  area, cos):
    """REST, RNFR and ALLO each leave one pending value, the last; MLST leaves nothing:
    1,500 of each hold no more descriptors or threads than one, and the transfer and the
    rename that follow use the last value only."""
    data = os.urandom(REPEATS + 100)
    for name in ("first", "second"):
        cos.put_object(Bucket=ALPHA, Key=f"{area}/{name}", Body=data)
    assert hostile.command("TYPE I").startswith("200")
    assert hostile.command(f"MLST {area}/first").startswith("250")
    fds, threads = footprint(worker)
    replies = hostile.pipelined([f"REST {offset}" for offset in range(1, REPEATS + 1)])
    assert all(reply.startswith("350") for reply in replies), set(replies)
    replies = hostile.pipelined([f"ALLO {size}" for size in range(1, REPEATS + 1)])
    assert all(reply[:3] in ("200", "202") for reply in replies), set(replies)
    replies = hostile.pipelined([f"MLST {area}/first"] * REPEATS)
    assert all(reply.startswith("250") for reply in replies), set(replies)
    # RNFR last: any other command in between would drop the pending rename
    sources = [f"{area}/{('first', 'second')[i % 2]}" for i in range(REPEATS)]
    replies = hostile.pipelined([f"RNFR {source}" for source in sources])
    assert all(reply.startswith("350") for reply in replies), set(replies)
    assert worker.num_fds() <= fds + SPARE_FDS
    assert worker.num_threads() <= threads + SPARE_THREADS
    assert hostile.command(f"RNTO {area}/renamed").startswith("250")

    def names() -> set[str]:
        return {item["Key"] for item in
                cos.list_objects(Bucket=ALPHA, Prefix=f"{area}/").get("Contents", [])}
    # the last RNFR named "second"; its old name's DELETE is sent after the 250
    wait_until(lambda: names() == {f"{area}/first", f"{area}/renamed"},
               what="only the last RNFR's file renamed")
    # RNFR dropped no REST: every command but RNTO keeps the offset (RFC 959), and the
    # last REST's is the one RETR starts at
    reply = hostile.command("PASV")
    with socket.create_connection(("127.0.0.1", announced_port(reply)), timeout=60) as conn:
        assert hostile.command(f"RETR {area}/first")[:3] in ("125", "150")
        received = drain(conn)
    assert hostile.reply().startswith("226")
    assert received == data[REPEATS:]
    round_trip(server, f"{area}/beside")


def drain(conn: socket.socket) -> bytes:
    """Everything the server sends on ``conn`` until it closes it."""
    out = bytearray()
    while chunk := conn.recv(MIB):
        out += chunk
    return bytes(out)


def test_a_100_mib_line_is_refused_once_and_never_held(server, worker, hostile, area):
    """A line without its end is answered 500 once its first MAX_LINE bytes have come; the
    rest is read and dropped up to the end of the line, and the commands after it are
    answered. The worker holds no more of it than a command line and a read."""
    round_trip(server, f"{area}/beside")  # what a transfer costs the worker, before
    reset_peak_rss(worker.pid)
    before = peak_rss(worker.pid)
    chunk = b"A" * MIB
    for sent in range(LONG_LINE // MIB):
        hostile.sock.sendall(chunk)
        if sent == LONG_LINE // MIB // 2:
            round_trip(server, f"{area}/beside")  # while the worker reads the line
    hostile.sock.sendall(b"\r\nNOOP\r\n")
    replies = [hostile.reply(), hostile.reply()]
    grown = peak_rss(worker.pid) - before
    assert grown < MAX_LINE + PLAIN_READ_SIZE + ALLOWANCE, f"{grown / MIB:.1f} MiB"
    assert replies[0] == "500 Command too long."
    assert replies[1].startswith("200")



# What the worker logs when it stops reading a session (ftp.backpressure).
PAUSED = "the client reads no replies"


def kernel_send_buffer_max() -> int:
    """The most a TCP socket's send buffer grows to here (``tcp_wmem``'s maximum, tcp(7)):
    what the worker's kernel takes of replies before the worker must queue them."""
    with open("/proc/sys/net/ipv4/tcp_wmem", encoding="ascii") as handle:
        return int(handle.read().split()[2])


def test_pipelined_noops_unread_stop_being_read_and_are_all_answered(server, worker, area):
    """A client that writes NOOPs without reading a reply, more than the kernel's buffers
    take of their replies: once MAX_QUEUED_REPLIES replies wait in the worker it stops
    reading them, so what the worker holds is bounded; once the client reads again every
    NOOP it sent is answered, in order, once."""
    round_trip(server, f"{area}/beside")  # what a transfer costs the worker, before
    hostile = Raw(server, rcvbuf=4096)
    reply = hostile.command("NOOP")
    assert reply.startswith("200")
    # More replies than the kernels take (the worker's send buffer, the client's receive
    # buffer: neither holds more bytes than its size) and the worker queues before it
    # pauses: they must pause the session.
    unread = hostile.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    count = (kernel_send_buffer_max() + unread) // (len(reply) + 2) + 2 * MAX_QUEUED_REPLIES
    paused = server.log_text().count(PAUSED)
    sender = threading.Thread(target=hostile.sock.sendall, args=(b"NOOP\r\n" * count,),
                              daemon=True)
    reset_peak_rss(worker.pid)
    before = peak_rss(worker.pid)
    sender.start()
    try:
        wait_until(lambda: server.log_text().count(PAUSED) > paused, timeout=30,
                   what="the worker to stop reading the NOOPs")
        round_trip(server, f"{area}/beside")  # beside the paused session
        grown = peak_rss(worker.pid) - before
        assert grown < MAX_QUEUED_REPLIES * PLAIN_READ_SIZE + ALLOWANCE, \
            f"{grown / MIB:.1f} MiB"
        replies = [hostile.reply() for _ in range(count)]
    finally:
        sender.join(timeout=60)
    assert replies == [reply] * count
    assert hostile.command("PWD").startswith("257")
    hostile.close()


def test_a_line_that_never_ends_does_not_keep_its_session(emulator, tmp_path):
    """The bytes of a line past MAX_LINE are read and dropped, and they are no command:
    they do not reset the idle timer, so a client streaming one endless line is closed at
    idle_session_timeout like any silent one."""
    with ServerProcess(str(tmp_path), emulator.port, [HOSTILE],
                       optional={"worker_processes": "1", "idle_session_timeout": "2",
                                 "log_level": "INFO"}) as server:
        [worker] = workers_of(server.proc.pid)
        hostile = Raw(server)
        port = hostile.sock.getsockname()[1]
        ended = []

        def endless() -> None:
            chunk = b"A" * 65536
            try:
                while True:
                    hostile.sock.sendall(chunk)
            except OSError as exc:  # the worker closed the connection
                ended.append(exc)

        sender = threading.Thread(target=endless, daemon=True)
        sender.start()
        try:
            wait_until(lambda: not any(conn.raddr and conn.raddr.port == port
                                       for conn in worker.net_connections("tcp")),
                       timeout=30, what="the worker to close the endless line's session")
            sender.join(timeout=60)
            assert ended, "the client could still send"
        finally:
            with contextlib.suppress(OSError):  # ends the sender if the worker did not
                hostile.sock.shutdown(socket.SHUT_RDWR)
            hostile.close()
        assert "Command too long." in server.log_text()
        assert "Control connection timed out." in server.log_text()
