"""Auth hook timing: seconds from ``PASS`` to its reply for each way a login through the auth
hook ends (docs/reliability.md, "External authentication").

Starts its own emulator, the test auth service (``tests/auth_service.py``) and a server with
one worker, one file account and ``auth_hook_timeout = --timeout-ms``; logs in ``--rounds``
times per row and prints one line per row: the reply's code and the seconds of each login.
"""

from __future__ import annotations

import argparse
import ftplib
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.auth_service import ERROR, NORMAL, NOT_JSON, SLOW, AuthService  # noqa: E402
from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.server_proc import Account, ServerProcess  # noqa: E402

BUCKET = "alpha-1250000000"
# label, the service's mode, user, password
ROWS = [("the hook says yes (asked)", NORMAL, "hooky", "pw"),
        ("the hook's yes, cached", NORMAL, "hooky", "pw"),
        ("the hook says no (wrong password)", NORMAL, "hooky", "bad"),
        ("unknown user (the hook says no)", NORMAL, "nobody", "x"),
        ("a file account, wrong password", NORMAL, "filer", "bad"),
        ("the hook answers what is not JSON", NOT_JSON, "other", "x"),
        ("the hook answers 503", ERROR, "other", "x"),
        ("the hook does not answer (slow)", SLOW, "other", "x")]


def pass_seconds(server: ServerProcess, user: str, password: str) -> tuple[str, float]:
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", server.port, timeout=60)
        ftp.sendcmd(f"USER {user}")
        started = time.monotonic()
        try:
            reply = ftp.sendcmd(f"PASS {password}")
        except ftplib.Error as exc:
            reply = str(exc)
        return reply[:3], time.monotonic() - started


def measure(server: ServerProcess, user: str, password: str, rounds: int) -> str:
    runs = [pass_seconds(server, user, password) for _ in range(rounds)]
    return f"{runs[0][0]}  " + ", ".join(f"{seconds:.3f}" for _, seconds in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout-ms", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    emulator, service = EmulatorProcess(buckets=[BUCKET]), AuthService()
    emulator.start()
    service.start()
    service.users["hooky"] = ("pw", {
        "cos_bucket": BUCKET, "cos_region": "ap-guangzhou", "cos_protocol": "http",
        "cos_ip": "127.0.0.1", "cos_port": emulator.port, "cos_secretid": "id",
        "cos_secretkey": "key", "authority": "RW"})
    server = ServerProcess(tempfile.mkdtemp(prefix="auth-hook-bench-"), emulator.port,
                           [Account("filer", "filer-pw", BUCKET)],
                           optional={"auth_hook_url": service.url, "worker_processes": "1",
                                     "auth_hook_timeout": str(args.timeout_ms),
                                     "max_login_failures": "0"})
    try:
        server.start()
        for label, mode, user, password in ROWS:
            service.mode = mode
            print(f"{label:40s} {measure(server, user, password, args.rounds)}", flush=True)
            service.release.set()
            service.release.clear()
        service.stop()
        print(f"{'the hook is down':40s} {measure(server, 'other', 'x', args.rounds)}")
    finally:
        server.stop()
        service.stop()
        emulator.stop()


if __name__ == "__main__":
    main()
