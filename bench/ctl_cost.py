"""What ``cosftpctl stop``, ``status``, ``sessions``, ``bans`` and ``unban`` cost with
thousands of accounts.

A configuration of ``--accounts`` accounts (``tests/server_proc.py`` ``many_accounts``) is
written; ``stop`` is run while no server runs (exit 3: what it reads of the file and its look
for a server, without the wait for one to end), then a server is started and ``status``,
``sessions``, ``bans`` and ``unban 192.0.2.7`` (an address not banned: the command still
changes the ban table, waits for the master to save it and writes its audit line) are run
against it; no ``[CLUSTER]``. Each command is its own process, run from ``/``; what it
costs is its CPU (user + sys, from ``wait4``: steadier than wall time on a loaded machine)
and its wall time. With ``--before TREE`` (a source tree of another version, e.g.
``git archive <commit> | tar -x -C TREE``), each run of a command under that tree's package
(``PYTHONPATH``) takes turns with one under this checkout's, against the same server, so that
the machine's load weighs on both alike. Prints one JSON object: medians and ranges per
command and version, and the load average before and after.

    .venv/bin/python bench/ctl_cost.py --accounts 5000 --runs 5 --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.server_proc import ServerProcess, many_accounts  # noqa: E402

BUCKET, SHARED = "tenants-1250000000", "shared-1250000000"


def run(config: str, command: list[str], tree: Optional[str]) -> dict[str, float]:
    """One ``cosftpctl -c config COMMAND...`` (under ``tree``'s package if given): its wall
    seconds, CPU seconds and exit status."""
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cosftp_prefork", "-c", config, *command],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            cwd="/")
    _, status, usage = os.wait4(proc.pid, 0)
    return {"wall_s": time.perf_counter() - started,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "exit": os.waitstatus_to_exitcode(status)}


def summary(found: list[dict[str, float]]) -> dict[str, object]:
    """Medians and ranges of ``found`` runs, and their exit statuses."""
    return {**{f"{key}_median": round(statistics.median(r[key] for r in found), 3)
               for key in ("cpu_s", "wall_s")},
            "cpu_s_range": [round(min(r["cpu_s"] for r in found), 3),
                            round(max(r["cpu_s"] for r in found), 3)],
            "exits": sorted({int(r["exit"]) for r in found})}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5, help="runs of each command")
    parser.add_argument("--before", help="a source tree of the version to compare with")
    args = parser.parse_args(argv)
    trees = {"this": None, **({"before": args.before} if args.before else {})}
    load = os.getloadavg()[0]
    runs: dict[str, dict[str, list]] = {}

    def measure(config: str, command: list[str], label: str) -> None:
        for _ in range(args.runs):
            for name, tree in trees.items():
                runs.setdefault(label, {}).setdefault(name, []).append(
                    run(config, command, tree))

    with EmulatorProcess([BUCKET, SHARED]) as emulator, tempfile.TemporaryDirectory() as tmp:
        # Two workers, as the figures in docs/performance.md were measured (status and
        # sessions read every worker's slots).
        server = ServerProcess(tmp, emulator.port,
                               many_accounts(args.accounts, BUCKET, "t/", SHARED),
                               optional={"worker_processes": "2"})
        server.write_config()
        measure(server.config_path, ["stop"], "stop, none running")
        started = server.start_daemon()
        if started.returncode:
            print(started.stderr, file=sys.stderr)
            return 1
        try:
            measure(server.config_path, ["status"], "status")
            measure(server.config_path, ["sessions"], "sessions")
            measure(server.config_path, ["bans"], "bans")
            measure(server.config_path, ["unban", "192.0.2.7"], "unban, not banned")
        finally:
            server.ctl("stop")
    print(json.dumps({"accounts": args.accounts, "runs": args.runs,
                      "load_average_1m": [load, os.getloadavg()[0]],
                      "results": {label: {name: summary(found) for name, found in by.items()}
                                  for label, by in runs.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
