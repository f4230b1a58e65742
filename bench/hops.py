"""Where a mirrored file's time goes: the hops around ``lftp mirror``'s round trips.

Run by hand: ``.venv/bin/python bench/hops.py`` does per file what ``lftp mirror -R
--no-perms`` does (``PASV``, ``STOR`` of 4 KiB once the ``150`` came, ``MFMT``) in 4 sessions
at ``--latency-ms`` per COS request, times each step on this side of the control connection
and matches it with the emulator's request log (``GET /__emulator__/log``, on the
``time.monotonic()`` clock every process shares): how long after ``STOR`` its first look-up
reached the emulator, how long after the last byte the PUT did, how long each request took
past the emulator's latency, how long after the last answer the reply came. ``--download``
does what ``lftp mirror`` (download) does instead: one ``MLSD`` of the session's directory,
then per file ``PASV``, the data connection, ``RETR`` (``125``), the bytes and the ``226``.
Prints the median and quartiles of each hop (docs/performance.md, "The hops around a
mirrored file's two round trips" and "... a downloaded file's round trip").
``--server-tree DIR`` runs the server from another checkout, for a before/after.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.emulator_proc import EmulatorProcess, request_log  # noqa: E402
from tests.server_proc import Account, ServerProcess  # noqa: E402

BUCKET = "hops-1250000000"
SESSIONS = 4
STAMP = "20200101000000"
clock = time.monotonic


class Control:
    """A control connection read and written directly, so that each reply is timed when
    its line arrives."""

    def __init__(self, port: int, directory: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lines = self.sock.makefile("rb")
        self.reply()
        for command in ("USER bench", "PASS bench-pw", "TYPE I", f"MKD {directory}",
                        f"CWD {directory}"):
            self.command(command)

    def reply(self) -> str:
        line = self.lines.readline().decode()
        if line[3:4] == "-":  # a multi-line reply ends with its code and a space
            while not self.lines.readline().decode().startswith(line[:3] + " "):
                pass
        return line

    def command(self, text: str, expect: tuple[str, ...] = ()) -> str:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.expect(expect)

    def expect(self, codes: tuple[str, ...]) -> str:
        line = self.reply()
        if codes and line[:3] not in codes:
            raise RuntimeError(f"unexpected reply: {line.strip()}")
        return line

    def close(self) -> None:
        self.command("QUIT")
        self.sock.close()


def passive(control: Control) -> tuple[dict[str, float], socket.socket]:
    """``PASV`` and the data connection its ``227`` announced; when ``PASV`` began and the
    ``227`` came."""
    times = {"pasv": clock()}
    answer = control.command("PASV", ("227",))
    times["227"] = clock()
    numbers = answer[answer.index("(") + 1:answer.index(")")].split(",")
    port = int(numbers[4]) * 256 + int(numbers[5])
    return times, socket.create_connection(("127.0.0.1", port))


def one_file(control: Control, name: str, payload: bytes) -> dict[str, float]:
    """``PASV``, ``STOR`` and ``MFMT`` of one file, as lftp sends them; when each step
    began and ended."""
    times, data = passive(control)
    times["stor"] = clock()
    control.command(f"STOR {name}", ("125", "150"))
    times["150"] = clock()
    data.sendall(payload)
    data.close()
    times["last"] = clock()
    control.expect(("226",))
    times["226"] = clock()
    times["mfmt"] = clock()
    control.command(f"MFMT {STAMP} {name}", ("213",))
    times["213"] = clock()
    return times


def received(control: Control, command: str, step: str) -> dict[str, float]:
    """``PASV``, the data connection, then ``command`` (``MLSD``, ``RETR name``) read to its
    ``226``, as ``lftp mirror`` (download) sends them; when each step began and ended
    (``step``: when ``command`` was sent; ``first`` and ``last``: the data's bytes)."""
    times, data = passive(control)
    times[step] = clock()
    control.command(command, ("125", "150"))
    times["150"] = clock()
    while True:
        chunk = data.recv(65536)
        times.setdefault("first", clock())
        if not chunk:
            break
    times["last"] = clock()
    data.close()
    control.expect(("226",))
    times["226"] = clock()
    return times


class Hops(dict):
    """Hop name -> the seconds each file spent in it."""

    def note(self, hop: str, seconds: float) -> None:
        self.setdefault(hop, []).append(seconds)


def download_hops(files: list[dict[str, float]], log: list[dict], latency: float) -> Hops:
    """Each hop of each downloaded file of one session, and of its listing (the first of
    ``files``), in seconds."""
    found = Hops()
    first, files = files[0], files[1:]
    requests = [entry for entry in log if first["list"] <= entry["start"] < first["226"]]
    if requests:
        found.note("MLSD to 226 (its requests: " + ", ".join(
            entry["kind"] for entry in requests) + ")", first["226"] - first["list"])
        found.note("MLSD to its first request at the emulator",
                   min(entry["start"] for entry in requests) - first["list"])
        found.note("MLSD's last answer to 226",
                   first["226"] - max(entry["end"] for entry in requests))
    for number, times in enumerate(files):
        gets = [entry for entry in log if times["retr"] <= entry["start"] < times["226"]]
        if len(gets) != 1 or gets[0]["kind"] != "GET":
            continue
        get = gets[0]
        found.note("PASV to 227", times["227"] - times["pasv"])
        found.note("227 to the data connection made", times["retr"] - times["227"])
        found.note("RETR to its GET at the emulator", get["start"] - times["retr"])
        found.note("the GET past the latency", get["end"] - get["start"] - latency)
        found.note("the GET's answer to 125", times["150"] - get["end"])
        found.note("125 to the last byte", times["last"] - times["150"])
        found.note("the last byte to 226", times["226"] - times["last"])
        found.note("RETR to 226", times["226"] - times["retr"])
        if number + 1 < len(files):
            found.note("a file (PASV to the next PASV)", files[number + 1]["pasv"] - times["pasv"])
    return found


def hops(files: list[dict[str, float]], log: list[dict], latency: float) -> Hops:
    """Each hop of each file of one session (``log``: the emulator's requests naming that
    session's directory), in seconds."""
    found = Hops()
    note = found.note

    for number, times in enumerate(files):
        stor = [entry for entry in log if times["stor"] <= entry["start"] < times["226"]]
        mfmt = [entry for entry in log if times["mfmt"] <= entry["start"] < times["213"]]
        puts = [entry["start"] for entry in stor if entry["kind"] == "PUT"]
        if len(stor) < 3 or len(mfmt) < 2 or not puts:
            continue  # not the common case (a look-up that walked up, say)
        note("PASV to 227", times["227"] - times["pasv"])
        note("STOR to its first look-up at the emulator",
             min(entry["start"] for entry in stor) - times["stor"])
        note("STOR to 150", times["150"] - times["stor"])
        note("last byte to the PUT at the emulator", min(puts) - times["last"])
        note("STOR's requests past the latency",
             statistics.mean(entry["end"] - entry["start"] - latency for entry in stor))
        note("the last answer to 226", times["226"] - max(entry["end"] for entry in stor))
        note("MFMT to its first request at the emulator",
             min(entry["start"] for entry in mfmt) - times["mfmt"])
        note("MFMT's requests past the latency",
             statistics.mean(entry["end"] - entry["start"] - latency for entry in mfmt))
        note("the last answer to 213", times["213"] - max(entry["end"] for entry in mfmt))
        if number + 1 < len(files):
            note("a file (PASV to the next PASV)", files[number + 1]["pasv"] - times["pasv"])
    return found


def measure(server: ServerProcess, emulator: EmulatorProcess, count: int,
            latency: float, downloads: bool = False) -> dict[str, list[float]]:
    tag = f"hops{os.getpid()}"
    controls = []
    # Two on each worker, as lftp's land: the workers share them even while the second
    # still sets up (BalancedFTPServer.rebalance).
    for number in range(SESSIONS):
        controls.append(Control(server.port, f"{tag}-s{number}"))
    if downloads:
        cos = emulator.client()
        for index in range(count):
            cos.put_object(Bucket=BUCKET, Key=f"{tag}-s{index % SESSIONS}/f{index:05d}",
                           Body=os.urandom(4096))
    start, timed = threading.Event(), [[] for _ in controls]

    def run(number: int) -> None:
        start.wait()
        payload = os.urandom(4096)
        if downloads:
            timed[number].append(received(controls[number], "MLSD", "list"))
        for index in range(number, count, SESSIONS):
            name = f"f{index:05d}"
            timed[number].append(received(controls[number], f"RETR {name}", "retr")
                                 if downloads else one_file(controls[number], name, payload))
    threads = [threading.Thread(target=run, args=(number,)) for number in range(SESSIONS)]
    for thread in threads:
        thread.start()
    began = clock()
    start.set()
    for thread in threads:
        thread.join()
    print(f"{count} files in {clock() - began:.2f} s, {SESSIONS} sessions")
    for control in controls:
        control.close()
    found: dict[str, list[float]] = {}
    for number, files in enumerate(timed):
        log = request_log(emulator.port, f"{tag}-s{number}")
        for hop, seconds in (download_hops if downloads else hops)(files, log,
                                                                     latency).items():
            found.setdefault(hop, []).extend(seconds)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--server-tree", help="run the server from this checkout")
    parser.add_argument("--download", action="store_true",
                        help="lftp mirror's download (MLSD, then PASV and RETR per file)")
    args = parser.parse_args(argv)
    if args.server_tree:
        os.environ["PYTHONPATH"] = os.path.abspath(args.server_tree)
    emulator = EmulatorProcess([BUCKET], extra_args=["--latency-ms", str(args.latency_ms)])
    emulator.start()
    try:
        with tempfile.TemporaryDirectory() as workdir, ServerProcess(
                workdir, emulator.port, [Account("bench", "bench-pw", BUCKET)],
                optional={"worker_processes": str(args.workers),
                          "log_level": "WARNING"}) as server:
            found = measure(server, emulator, args.files, args.latency_ms / 1000,
                            args.download)
    finally:
        emulator.stop()
    print("| hop | median ms | p25 | p75 |\n|---|---|---|---|")
    for hop, seconds in found.items():
        quartiles = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else seconds * 3
        print(f"| {hop} | {statistics.median(seconds) * 1000:.2f} | "
              f"{quartiles[0] * 1000:.2f} | {quartiles[2] * 1000:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
