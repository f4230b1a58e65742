"""The spliced RETR's system calls alone: what loopback TCP costs the relaying process.

Run by hand: ``.venv/bin/python bench/splice_relay.py --cc bbr cubic reno`` forks a sender
and a receiver and relays ``--gib`` GiB from one loopback connection to the other as the
download pump does (``splice(2)`` from the source socket into a 1 MiB pipe, from the pipe
into the destination socket), rounds of the given congestion controls in turns (the
destination socket's ``TCP_CONGESTION``; empty: the host's). Prints the relay's user and
system CPU per GiB (docs/performance.md, "Where the spliced RETR's CPU goes").
"""

from __future__ import annotations

import argparse
import fcntl
import os
import resource
import socket
import threading

CHUNK = 1024 * 1024


def _sender(port: int, total: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        block = memoryview(os.urandom(CHUNK))
        while total:
            total -= sock.send(block[:min(CHUNK, total)])


def _receiver(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        while sock.recv(CHUNK):
            pass


def relay(total: int, cc: str, pipe_size: int) -> tuple[float, float]:
    """User and system CPU seconds of this process relaying ``total`` bytes."""
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    ports = [listener.getsockname()[1] for listener in listeners]
    child = os.fork()
    if child == 0:
        sending = threading.Thread(target=_sender, args=(ports[0], total))
        sending.start()
        _receiver(ports[1])
        sending.join()
        os._exit(0)
    source, _ = listeners[0].accept()
    target, _ = listeners[1].accept()
    if cc:
        target.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    reader, writer = os.pipe2(os.O_CLOEXEC)
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, pipe_size)
    room = fcntl.fcntl(writer, fcntl.F_GETPIPE_SZ)
    before = resource.getrusage(resource.RUSAGE_SELF)
    left = total
    while left:
        moved = os.splice(source.fileno(), writer, min(room, left), flags=os.SPLICE_F_MOVE)
        if not moved:
            break
        left -= moved
        while moved:
            moved -= os.splice(reader, target.fileno(), moved, flags=os.SPLICE_F_MOVE)
    after = resource.getrusage(resource.RUSAGE_SELF)
    for closing in (target, source, *listeners):
        closing.close()
    os.close(reader)
    os.close(writer)
    os.waitpid(child, 0)
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pipe-size", type=int, default=CHUNK)
    parser.add_argument("--cc", nargs="+", default=[""],
                        help="congestion controls of the outgoing socket, in turns")
    args = parser.parse_args(argv)
    total = int(args.gib * 1024 ** 3)
    for round_number in range(1, args.rounds + 1):
        for cc in args.cc:
            user, system = relay(total, cc, args.pipe_size)
            print(f"round {round_number} {cc or 'host default'}: user {user / args.gib:.3f} "
                  f"system {system / args.gib:.3f} total {(user + system) / args.gib:.3f} s/GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
