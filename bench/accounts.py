"""Account table scale (issue 23): what a configuration of thousands of accounts costs.

For each ``--accounts`` count, a configuration of that many accounts is generated as a
shared-bucket service has them (``tests/server_proc.py`` ``many_accounts``: a third rooted at
prefixes of one bucket, a third at the root of another, a third each in a bucket of its own;
plain-text passwords, so that a login's time is the account table's and not scrypt's, which
``bench/login_cost.py`` measures), a server with ``--workers`` workers runs it against its own
emulator, and this prints as JSON:

* ``check_s``: ``cosftpctl check`` (its own process: imports, parse, validation);
* ``start_s``: ``cosftpctl start`` until it returns (every worker serves);
* ``master_rss_mib``, ``worker_rss_mib``: each process's RSS once serving, idle, and
  ``worker_uss_mib`` what each worker holds alone (the rest it shares with the master);
* ``login_ms``: median and 90th percentile of connect + USER + PASS + PWD + QUIT, over
  ``--logins`` logins of accounts picked at random; the servers of every count run at once
  and take their logins in turns, so that whatever else the machine does slows them alike;
* ``homes``: the workers' RSS growth after ``--homes`` distinct accounts (of the three kinds)
  each logged in once and listed their home (a bucket or prefix area, with its COS client, is
  made on first use), per home; measured after a warm-up of a few accounts, whose first
  listing in a worker makes what every listing shares (thread pools, HTTP session);
* ``reload_s``: ``cosftpctl reload`` with a session open, and whether the session still
  answers afterwards.

``--folders 0 5`` measures each count twice: as above, and with every fifth account mounting
one virtual folder (``/common``, a prefix of the first bucket: ``folders_every``).
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import json
import os
import random
import statistics
import sys
import tempfile
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.crowds import workers_of  # noqa: E402
from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.server_proc import ServerProcess, many_accounts, mounting  # noqa: E402

BUCKET, SHARED = "tenants-1250000000", "shared-1250000000"
COMMON_FOLDER = (f"\n[FOLDER_common]\ncos_bucket = {BUCKET}\ncos_region = ap-guangzhou\n"
                 "cos_prefix = common/\nauthority = RW\n")
WARM_UP = 12  # accounts whose logins and listings come before the homes are measured
MIB = 2 ** 20


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def workers_rss(server: ServerProcess) -> list[int]:
    return [worker.memory_info().rss for worker in workers_of(server.daemon_pid())]


def workers_uss(server: ServerProcess) -> list[int]:
    """What each worker holds alone (not shared with the master or the other workers)."""
    return [worker.memory_full_info().uss for worker in workers_of(server.daemon_pid())]


def log_in(server: ServerProcess, user: str, listing: bool = False) -> None:
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", server.port, timeout=60)
        ftp.login(user, f"{user}-pw")
        ftp.pwd()
        if listing:
            with contextlib.suppress(ftplib.error_perm):  # own<i>-...: no such bucket
                ftp.nlst()
        ftp.quit()


class Measured:
    """One configuration's server, started, and what was measured of it."""

    def __init__(self, emulator: EmulatorProcess, count: int, workers: int,
                 folders_every: int = 0) -> None:
        self.accounts = mounting(many_accounts(count, BUCKET, "t/", SHARED), folders_every,
                                 "/common=common")
        self.server = ServerProcess(tempfile.mkdtemp(prefix="cosftp-accounts-"), emulator.port,
                                    self.accounts, optional={"worker_processes": str(workers),
                                                             "log_level": "WARNING"},
                                    sections=COMMON_FOLDER if folders_every else "")
        self.server.write_config()
        check_s, checked = timed(lambda: self.server.ctl("check"))
        assert checked.returncode == 0, checked.stderr
        start_s, started = timed(lambda: self.server.ctl("start"))
        assert started.returncode == 0, started.stderr
        master = psutil.Process(self.server.daemon_pid())
        self.result: dict = {
            "accounts": count, "folders_every": folders_every, "check_s": round(check_s, 2),
            "start_s": round(start_s, 2),
            "master_rss_mib": round(master.memory_info().rss / MIB, 1),
            "worker_rss_mib": [round(rss / MIB, 1) for rss in workers_rss(self.server)],
            "worker_uss_mib": [round(uss / MIB, 1) for uss in workers_uss(self.server)]}
        self.latencies: list[float] = []

    def log_in_once(self) -> None:
        user = random.choice(self.accounts).user
        self.latencies.append(timed(lambda: log_in(self.server, user))[0])

    def homes(self, count: int) -> None:
        """The workers' growth over ``count`` accounts' first logins and listings."""
        for account in self.accounts[:WARM_UP]:  # a worker's first listing makes its pools
            log_in(self.server, account.user, listing=True)
        before = sum(workers_rss(self.server))
        homes = self.accounts[WARM_UP:WARM_UP + count]
        for account in homes:
            log_in(self.server, account.user, listing=True)
        grown = sum(workers_rss(self.server)) - before
        self.result["homes"] = {"count": len(homes),
                                "workers_rss_growth_mib": round(grown / MIB, 1),
                                "per_home_kib": round(grown / len(homes) / 1024, 1)
                                if homes else None}

    def reload(self) -> None:
        """``cosftpctl reload`` with a session open; whether the session answers after."""
        user = self.accounts[0].user
        with ftplib.FTP() as session:
            session.connect("127.0.0.1", self.server.port, timeout=60)
            session.login(user, f"{user}-pw")
            reload_s, reloaded = timed(lambda: self.server.ctl("reload"))
            self.result.update(reload_s=round(reload_s, 2), reload_ok=reloaded.returncode == 0,
                               session_survived_reload=session.voidcmd("NOOP").startswith("200"))
            session.quit()

    def report(self) -> dict:
        ordered = sorted(self.latencies)
        self.result["login_ms"] = {
            "median": round(statistics.median(ordered) * 1000, 1),
            "p90": round(ordered[int(len(ordered) * 0.9)] * 1000, 1)}
        return self.result

    def stop(self) -> None:
        self.server.ctl("stop")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, nargs="+", default=[2, 5000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--homes", type=int, default=1000)
    parser.add_argument("--folders", type=int, nargs="+", default=[0],
                        help="every N-th account mounts a folder; 0: none")
    args = parser.parse_args(argv)
    with EmulatorProcess([BUCKET, SHARED]) as emulator, contextlib.ExitStack() as running:
        measured = []
        for count in args.accounts:
            for every in args.folders:
                measured.append(Measured(emulator, count, args.workers, every))
                running.callback(measured[-1].stop)
        load = os.getloadavg()[0]
        for _ in range(args.logins):  # in turns: what else runs slows every server alike
            for each in measured:
                each.log_in_once()
        for each in measured:
            each.homes(args.homes)
            each.reload()
        results = [each.report() for each in measured]
    print(json.dumps({"load_average_1m": [load, os.getloadavg()[0]], "results": results},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
