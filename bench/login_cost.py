"""Login cost: what a crowd of password checks does to the workers' memory and CPU.

Starts its own emulator and a server (``--workers`` workers, the default governance settings)
with one account whose password is an scrypt hash of ``cosftpctl hash-password``'s parameters
(16 MiB per check), then:

* ``--attack wrong``: ``--per-source`` connections from each of ``--sources`` loopback
  addresses send a wrong password at the same moment;
* ``--attack relogin``: as many sessions log in first, then all of them send ``USER`` and
  ``PASS`` again (the right password) at the same moment, ``--rounds`` times.

As soon as the attack is sent, a legitimate client logs in from 127.0.0.1. Prints as JSON each
worker's peak RSS during the attack (the kernel's VmHWM, reset just before), the CPU seconds
the workers used, the seconds until every attacker had its replies, the replies by code, and
the legitimate login's reply. ``--option name=value`` sets more ``[OPTIONAL]`` settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cosftp_prefork.config.passwords import hash_password  # noqa: E402
from tests.crowds import (  # noqa: E402
    Crowd,
    legitimate_login,
    peak_rss,
    reset_peak_rss,
    sources,
    workers_of,
)
from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.server_proc import Account, ServerProcess  # noqa: E402

BUCKET = "logins-1250000000"
MIB = 2 ** 20


def workers_cpu(workers: list[psutil.Process]) -> float:
    total = 0.0
    for worker in workers:
        with contextlib.suppress(psutil.Error):
            times = worker.cpu_times()
            total += times.user + times.system
    return total


def attack(server: ServerProcess, args: argparse.Namespace) -> dict:
    relogin = args.attack == "relogin"
    crowd = Crowd(server.port, sources(args.sources), args.per_source,
                  login=("victim", "victim-pw") if relogin else None)
    try:
        if relogin:
            lines = ["USER victim", "PASS victim-pw"] * args.rounds
        else:
            lines = ["USER victim", "PASS a-wrong-guess"]
        workers = workers_of(server.proc.pid)
        idle = {w.pid: w.memory_info().rss for w in workers}
        for worker in workers:
            reset_peak_rss(worker.pid)
        cpu, started = workers_cpu(workers), time.monotonic()
        replies, legit = crowd.send_all(
            lines, lambda: legitimate_login(server.port, "legit", "legit-pw"))
        seconds = time.monotonic() - started
        cpu = workers_cpu(workers) - cpu
        peaks = {}
        for worker in workers:
            with contextlib.suppress(OSError):
                peaks[worker.pid] = peak_rss(worker.pid)
    finally:
        crowd.close()
    return {
        "attack": args.attack, "sessions": len(crowd.members), "rounds": args.rounds,
        "replies": dict(Counter(replies).most_common()), "legitimate_login": legit,
        "seconds_until_all_answered": round(seconds, 1), "workers_cpu_s": round(cpu, 1),
        "worker_idle_rss_mib": {pid: round(rss / MIB) for pid, rss in idle.items()},
        "worker_peak_rss_mib": {pid: round(rss / MIB) for pid, rss in peaks.items()},
        "workers_alive_after": sum(w.is_running() for w in workers),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--attack", choices=("wrong", "relogin"), default="wrong")
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--per-source", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=1, help="re-logins per session")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    emulator = EmulatorProcess([BUCKET]).start()
    accounts = [Account("victim", hash_password("victim-pw"), BUCKET),
                Account("legit", hash_password("legit-pw"), BUCKET)]
    optional = {"worker_processes": str(args.workers), "log_level": "WARNING",
                **dict(option.split("=", 1) for option in args.option)}
    server = ServerProcess(tempfile.mkdtemp(prefix="cosftp-logins-"), emulator.port, accounts,
                           optional=optional)
    try:
        server.start()
        result = attack(server, args)
    finally:
        server.stop()
        emulator.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
