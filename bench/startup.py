"""What starting the server costs: the CPU of its master and of each worker until every
worker serves, and the wall time until a first login is accepted.

Starts its own emulator, then ``--runs`` times for each variant (``plain``: no TLS; ``tls``:
a certificate and key in ``[NETWORK]``; ``--variants`` chooses) a server of ``--workers``
workers with one account and nothing else (no ``[CLUSTER]``, metrics, admin API or events:
what most deployments and the test suite's servers are), as ``cosftpctl run`` in the
foreground. From the spawn, a client logs in again and again until one login is accepted
(its wall time, "to login"); once every worker has logged that it serves, the CPU
(user + sys) of the master and of each worker is read with psutil, and the server is stopped.
A worker's counters start at its fork: what the master spent before it (interpreter,
imports, configuration, sockets) is the master's, what the worker spent after it (its own
imports, clients, threads, the first login's few milliseconds) its own. The account's
password is an scrypt hash of the cheapest parameters, so that the login's check (and the
dummy check a plain-text password costs) weighs nothing beside the start.

With ``--before TREE`` (a source tree of another version, e.g. ``git archive <commit> | tar
-x -C TREE``), each run of a variant under that tree's package (``PYTHONPATH``) takes turns
with one under this checkout's, so that the machine's load weighs on both alike. Prints a
table: medians and ranges per variant and version, and the load average before and after.

    .venv/bin/python bench/startup.py --runs 7 --before /tmp/before
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ftplib
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.server_proc import Account, ServerProcess, tls_network  # noqa: E402
from tests.tls_clients import write_certificate  # noqa: E402

BUCKET = "startup-1250000000"
USER, PASSWORD = "starter", "starter-pw"
SERVING = " serving on "  # the line each worker logs once it accepts sessions
START_TIMEOUT = 120.0


def cheapest_hash(password: str) -> str:
    """The ``scrypt$`` form of ``password`` with the cheapest parameters the server takes
    (2 ms of a core per check, where ``hash-password``'s take ~45 ms)."""
    salt = b"startup-salt-16b"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2 ** 10, r=1, p=1, dklen=32)
    return "scrypt$1024$1$1${}${}".format(*(base64.b64encode(part).decode()
                                            for part in (salt, digest)))


def cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def serving_workers(server: ServerProcess) -> int:
    """How many workers have logged that they serve."""
    try:
        return server.log_text().count(SERVING)
    except OSError:
        return 0


def first_login(port: int, started: float, until: float) -> Optional[float]:
    """Log in to ``port`` until a login is accepted; its wall seconds since ``started``
    (None if none was by ``until``)."""
    while time.perf_counter() < until:
        with contextlib.suppress(OSError, EOFError, ftplib.Error), ftplib.FTP() as ftp:
            ftp.connect("127.0.0.1", port, timeout=10)
            ftp.login(USER, PASSWORD)
            return time.perf_counter() - started
        time.sleep(0.01)
    return None


def one_start(emulator: EmulatorProcess, workers: int, network: dict[str, str],
              tree: Optional[str]) -> dict[str, float]:
    """Start a server (under ``tree``'s package if given), measure it, stop it."""
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree
    with tempfile.TemporaryDirectory(prefix="startup-") as workdir:
        server = ServerProcess(workdir, emulator.port,
                               [Account(USER, cheapest_hash(PASSWORD), BUCKET)],
                               optional={"worker_processes": str(workers),
                                         "log_level": "INFO"},
                               network=dict(network), env=env)
        started = time.perf_counter()
        server.launch()
        until = started + START_TIMEOUT
        login: list[Optional[float]] = []
        client = threading.Thread(target=lambda: login.append(
            first_login(server.port, started, until)))
        client.start()
        try:
            master = psutil.Process(server.proc.pid)
            while serving_workers(server) < workers:
                if server.proc.poll() is not None or time.perf_counter() > until:
                    raise RuntimeError(f"the server did not start: {server.output()}")
                time.sleep(0.01)
            client.join()
            children = master.children()
            found = {"master_cpu_s": cpu(master),
                     "worker_cpu_s": statistics.mean(cpu(child) for child in children),
                     "total_cpu_s": cpu(master) + sum(cpu(child) for child in children),
                     "serving_wall_s": time.perf_counter() - started}
        finally:
            server.stop()
            client.join()
        if not login or login[0] is None:
            raise RuntimeError("no login accepted")
        found["login_wall_s"] = login[0]
        return found


COLUMNS = (("master_cpu_s", "master CPU s"), ("worker_cpu_s", "CPU per worker s"),
           ("total_cpu_s", "total CPU s"), ("login_wall_s", "to login s"),
           ("serving_wall_s", "all serving s"))


def figure(found: list[dict[str, float]], key: str) -> str:
    """The median of ``key`` over ``found`` runs, and their spread."""
    values = [run[key] for run in found]
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="starts of each variant")
    parser.add_argument("--workers", type=int, default=2, help="worker_processes")
    parser.add_argument("--variants", nargs="+", choices=("plain", "tls"),
                        default=["plain", "tls"])
    parser.add_argument("--before", help="a source tree of the version to compare with")
    args = parser.parse_args(argv)
    trees = {"this": None, **({"before": args.before} if args.before else {})}
    load = os.getloadavg()[0]
    runs: dict[str, dict[str, list]] = {}
    with EmulatorProcess([BUCKET]) as emulator, tempfile.TemporaryDirectory() as certs:
        networks = {"plain": {}, "tls": tls_network(*write_certificate(Path(certs)))}
        for number in range(args.runs):
            for variant in args.variants:
                names = list(trees)
                if number % 2:  # each version goes first in every other round
                    names.reverse()
                for name in names:
                    runs.setdefault(variant, {}).setdefault(name, []).append(
                        one_start(emulator, args.workers, networks[variant], trees[name]))
    print(f"{args.workers} workers, medians of {args.runs} starts (min-max); bytecode "
          f"{'written' if not sys.flags.dont_write_bytecode else 'not written'} "
          f"(PYTHONDONTWRITEBYTECODE); load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print("| variant | version | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for variant, by in runs.items():
        for name, found in by.items():
            print(f"| {variant} | {name} | " +
                  " | ".join(figure(found, key) for key, _ in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
