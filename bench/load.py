"""Load: many concurrent sessions doing mixed LIST/STOR/RETR/DELE, checking every byte.

Starts its own emulator and a server with ``--workers`` workers, runs ``--sessions`` client
sessions for ``--seconds``, and prints sessions/s, bytes/s, errors, p99 command latency and
the largest worker RSS. Exits 1 if any command failed or any download differed from what was
uploaded. The test suite runs a small version; the full one is run by hand.

``--hostile`` runs the workload twice on the same server: once alone, then with attackers
beside it (``bench/attackers.py``, in a process of its own): ``--flood`` idle sockets that
never log in, a password guesser and slow-drip clients, each from its own loopback address.
It prints both runs and how fast each attacker was cut off; it exits 1 also if an attacker
ever logged in.

The legitimate sessions all come from 127.0.0.1 and log in at most ``LOGINS_AT_ONCE`` at a
time, below the server's per-address limit on connections not logged in yet (in the field
they come from many addresses); the server allows one address all of them logged in.
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import hashlib
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.server_proc import Account, ServerProcess  # noqa: E402

BUCKET = "load-1250000000"
# The hostile run works in a bucket of its own: moto gets slower as a bucket fills up, and
# the second run would pay for the first one's files.
HOSTILE_BUCKET = "hostile-1250000000"
LOGINS_AT_ONCE = 8
# the idle flood's, the password guesser's and the slow-drip clients' source addresses
ATTACKERS_FROM = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@dataclass
class Tally:
    """What all client threads observed; guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)
    sessions: int = 0
    bytes_moved: int = 0
    errors: list[str] = field(default_factory=list)
    mismatches: int = 0

    def command(self, seconds: float, nbytes: int = 0) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.bytes_moved += nbytes


class Client:
    """One session's loop: its own directory, its own record of what it stored."""

    def __init__(self, server: ServerProcess, number: int, tally: Tally, deadline: float,
                 max_size: int, user: str, logins: threading.Semaphore) -> None:
        self.server, self.tally, self.deadline = server, tally, deadline
        self.user = user
        self.logins = logins
        self.dir = f"c{number:04d}"
        self.rng = random.Random(number)
        self.max_size = max_size
        self.stored: dict[str, str] = {}

    def run(self) -> None:
        try:
            with self.logins:
                ftp = self.server.login(self.user, f"{self.user}-pw", timeout=120)
        except (OSError, EOFError, ftplib.Error) as exc:
            self._error(f"login: {exc}")
            return
        with self.tally.lock:
            self.tally.sessions += 1
        try:
            ftp.voidcmd("TYPE I")
            self._timed(ftp.mkd, self.dir)
            while time.monotonic() < self.deadline:
                self._one_operation(ftp)
        except (OSError, EOFError, ftplib.Error) as exc:
            self._error(str(exc))
        finally:
            with contextlib.suppress(OSError, EOFError, ftplib.Error):
                ftp.quit()

    def _one_operation(self, ftp: ftplib.FTP) -> None:
        choice = self.rng.random()
        if choice < 0.35 or not self.stored:
            self._stor(ftp)
        elif choice < 0.7:
            self._retr(ftp)
        elif choice < 0.85:
            names = self._timed(ftp.nlst, self.dir)
            if not {f"{n}" for n in self.stored} <= {n.rsplit("/", 1)[-1] for n in names}:
                self._error("LIST is missing stored files")
        else:
            name = self.rng.choice(list(self.stored))
            self._timed(ftp.delete, f"{self.dir}/{name}")
            del self.stored[name]

    def _stor(self, ftp: ftplib.FTP) -> None:
        data = os.urandom(self.rng.randrange(0, self.max_size))
        name = f"f{self.rng.randrange(10**9)}"
        self._timed(ftp.storbinary, f"STOR {self.dir}/{name}", io.BytesIO(data),
                    nbytes=len(data))
        self.stored[name] = hashlib.sha256(data).hexdigest()

    def _retr(self, ftp: ftplib.FTP) -> None:
        name = self.rng.choice(list(self.stored))
        out = bytearray()
        self._timed(ftp.retrbinary, f"RETR {self.dir}/{name}", out.extend)
        self.tally.command(0, len(out))
        if hashlib.sha256(out).hexdigest() != self.stored[name]:
            with self.tally.lock:
                self.tally.mismatches += 1

    def _timed(self, func, *args, nbytes: int = 0):
        start = time.perf_counter()
        result = func(*args)
        self.tally.command(time.perf_counter() - start, nbytes)
        return result

    def _error(self, text: str) -> None:
        with self.tally.lock:
            self.tally.errors.append(f"{self.dir}: {text}")


def sample_rss(master: psutil.Process, stop: threading.Event, peak: list[int]) -> None:
    while not stop.wait(0.2):
        for child in master.children():
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], child.memory_info().rss)


def run(args: argparse.Namespace) -> dict:
    emulator = EmulatorProcess([BUCKET, HOSTILE_BUCKET]).start()
    workdir = tempfile.mkdtemp(prefix="cosftp-load-")
    accounts = [Account("load", "load-pw", BUCKET), Account("hostile", "hostile-pw",
                                                             HOSTILE_BUCKET)]
    server = ServerProcess(workdir, emulator.port, accounts,
                           optional={"worker_processes": str(args.workers),
                                     "max_connection_num": "0",
                                     "max_connections_per_ip": str(args.sessions + 16),
                                     "log_level": "WARNING"})
    try:
        server.start()
        quiet = workload(server, args, "load")
        if not args.hostile:
            return quiet
        attackers = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "bench", "attackers.py"), "--port",
             str(server.port), "--seconds", str(args.seconds), "--flood", str(args.flood),
             "--guessers", str(args.guessers), "--drippers", str(args.drippers),
             "--sources", ",".join(ATTACKERS_FROM)], stdout=subprocess.PIPE, text=True)
        hostile = workload(server, args, "hostile")
        out, _ = attackers.communicate(timeout=args.seconds + 300)
        return {"quiet": quiet, "hostile": hostile, **json.loads(out)}
    finally:
        server.stop()
        emulator.stop()


def workload(server: ServerProcess, args: argparse.Namespace, user: str) -> dict:
    """Run ``args.sessions`` sessions of ``user`` for ``args.seconds`` against ``server``."""
    tally, peak, stop = Tally(), [0], threading.Event()
    sampler = threading.Thread(target=sample_rss,
                               args=(psutil.Process(server.proc.pid), stop, peak))
    sampler.start()
    started = time.monotonic()
    deadline = started + args.seconds
    logins = threading.Semaphore(LOGINS_AT_ONCE)
    clients = [threading.Thread(target=Client(server, n, tally, deadline, args.max_size,
                                              user, logins).run)
               for n in range(args.sessions)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    elapsed = time.monotonic() - started
    stop.set()
    sampler.join()
    latencies = sorted(tally.latencies) or [0.0]
    return {
        "sessions": tally.sessions, "seconds": round(elapsed, 1),
        "sessions_per_s": round(tally.sessions / elapsed, 1),
        "commands": len(tally.latencies),
        "mib_per_s": round(tally.bytes_moved / elapsed / 2**20, 1),
        "errors": len(tally.errors), "mismatches": tally.mismatches,
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1),
        "max_worker_rss_mib": round(peak[0] / 2**20, 1), "first_errors": tally.errors[:5],
    }


def _raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def _passed(result: dict) -> bool:
    runs = [result["quiet"], result["hostile"]] if "quiet" in result else [result]
    clean = all(run["errors"] == 0 and run["mismatches"] == 0 for run in runs)
    return clean and result.get("guesser", {}).get("logins_230", 0) == 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-size", type=int, default=512 * 1024)
    parser.add_argument("--hostile", action="store_true",
                        help="run again with attackers beside the sessions")
    parser.add_argument("--flood", type=int, default=1000, help="idle attacker sockets")
    parser.add_argument("--guessers", type=int, default=10,
                        help="password-guessing connections")
    parser.add_argument("--drippers", type=int, default=10, help="slow-drip connections")
    args = parser.parse_args(argv)
    _raise_open_files(4 * (args.sessions + args.flood + args.guessers + args.drippers) + 256)
    result = run(args)
    print(json.dumps(result, indent=2))
    return 0 if _passed(result) else 1


if __name__ == "__main__":
    sys.exit(main())
