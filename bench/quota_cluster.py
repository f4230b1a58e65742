"""Small uploads into one home with a quota on a cluster node ([CLUSTER], a real Redis):
what the node's reservations cost (``server.quotashare``): each upload's Redis calls, and
worker 1's rewrite of the node's reservations, which must get its turn between the
changes of a steady crowd (``server.usagegate``).

``--files`` new 1 KiB files in ``--sessions`` ftplib sessions on ``--workers`` workers, the
sessions' home under a quota they never reach, COS (the emulator) answering at once;
``--redis-delay-ms`` puts that much in front of every command Redis gets (a Redis across a
network: ``tests/redis6.py``'s delay). Prints each run's files per second, interleaved with
the same uploads by an account without a quota (no quota call at all) on the same node.

    .venv/bin/python bench/quota_cluster.py --runs 5 --redis-delay-ms 0 1
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ftplib
import hashlib
import io
import itertools
import os
import pathlib
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cosftp_prefork.server.cluster.scripts import LIBRARY  # noqa: E402
from cosftp_prefork.server.quotashare import SCRIPTS  # noqa: E402
from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.redis6 import Redis6Proxy  # noqa: E402
from tests.server_proc import Account  # noqa: E402
from tests.test_cluster import LoneNode, start_redis  # noqa: E402

BUCKET = "bench-1250000000"
ACCOUNTS = [Account("quota", "quota-pw", BUCKET, extra="cos_prefix = quota/\nquota_size = 1T"),
            Account("free", "free-pw", BUCKET, extra="cos_prefix = free/")]


def uploads(node: LoneNode, user: str, names: list[str], sessions: int) -> float:
    """Seconds ``sessions`` sessions of ``user`` take to store ``names`` (logged in first)."""
    payload = os.urandom(1024)
    with ThreadPoolExecutor(sessions) as pool:
        ftps = list(pool.map(lambda _: node.login(user, f"{user}-pw"), range(sessions)))

    def session(ftp: ftplib.FTP, chunk: list[str]) -> None:
        with ftp:
            ftp.voidcmd("TYPE I")
            for name in chunk:
                ftp.storbinary(f"STOR {name}", io.BytesIO(payload))
    start = time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(session, ftps, [names[i::sessions] for i in range(sessions)]))
    return time.perf_counter() - start


def measure(args: argparse.Namespace, delay_ms: float, workdir: str) -> None:
    with contextlib.ExitStack() as stack:
        emulator = EmulatorProcess([BUCKET]).start()
        stack.callback(emulator.stop)
        redis = start_redis(pathlib.Path(workdir))
        stack.callback(redis.stop)
        proxy = Redis6Proxy(redis.port)
        stack.callback(proxy.stop)
        node = LoneNode(os.path.join(workdir, "node"), emulator.port, ACCOUNTS,
                        optional={"worker_processes": str(args.workers),
                                  "log_level": "WARNING"})
        node.redis_port, node.name = proxy.port, "bench"
        stack.callback(node.stop)
        node.start()
        try:
            rows(args, node, proxy, delay_ms)
        except (OSError, EOFError, ftplib.Error):
            print(node.log_text()[-4000:], file=sys.stderr)  # why the node failed an upload
            raise


def rows(args: argparse.Namespace, node: LoneNode, proxy: Redis6Proxy,
         delay_ms: float) -> None:
    """Each run's uploads with and without a quota, one after the other."""
    runs = itertools.count()
    proxy.delay = delay_ms / 1000  # after the start: the workers' set-up is not measured
    rates: dict[str, list[float]] = {"quota": [], "free": []}
    shas = {name: hashlib.sha1((LIBRARY + body).encode()).hexdigest()
            for name, body in SCRIPTS.items()}
    calls: collections.Counter[str] = collections.Counter()  # quota scripts run, by name
    for _ in range(args.runs):
        for user, found in rates.items():
            names = [f"{user}-{next(runs)}-{i:05d}" for i in range(args.files)]
            before = {name: proxy.runs[sha] for name, sha in shas.items()}
            found.append(args.files / uploads(node, user, names, args.sessions))
            if user == "quota":
                calls.update({name: proxy.runs[sha] - before[name]
                              for name, sha in shas.items()})
    rewrites = calls.pop("quota-holding", 0)
    for user, found in rates.items():
        print(f"redis delay {delay_ms:g} ms, {user:5}: {statistics.median(found):7.1f} "
              f"files/s median ({', '.join(f'{rate:.1f}' for rate in found)})")
    # Worker 1's rewrite skips its turn while a change is under way: how often it ran
    # while the quota's uploads went on (once a second when none is).
    seconds = sum(args.files / rate for rate in rates["quota"])
    print(f"redis delay {delay_ms:g} ms: {rewrites} rewrites of the node's reservations "
          f"in the {seconds:.0f} s of uploads into the home with a quota")
    # The quota's Redis calls an upload makes (the rewrites and the sessions' logins
    # included, a few in thousands).
    uploaded = args.runs * args.files
    print(f"redis delay {delay_ms:g} ms: {sum(calls.values()) / uploaded:.2f} quota calls "
          f"per upload (" + ", ".join(f"{name} {count / uploaded:.2f}"
                                      for name, count in sorted(calls.items()) if count) + ")")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis-delay-ms", type=float, nargs="+", default=[0.0])
    args = parser.parse_args()
    for delay_ms in args.redis_delay_ms:
        with tempfile.TemporaryDirectory(prefix="quota-bench-") as workdir:
            measure(args, delay_ms, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
