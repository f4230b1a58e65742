"""Rate limits: do paced transfers keep up to the rate they are allowed?

The test suite (``tests/test_limits.py``) checks that transfers never go faster than their
account's ``max_download_rate``/``max_upload_rate`` or the session's ``local_max_rate``:
a bound load cannot break. How close to the rate they come is a speed goal, measured here:
each row is the rate the transfers moved (their bytes less the one-second burst their
bucket starts with, over the time the client saw them take) against the configured one,
target 0.85. Every run uses accounts of its own, so each starts with a full bucket.

Starts its own emulator and a one-worker server (an unlimited session keeps that worker
busy downloading, as a neighbour would) with TLS.
"""

from __future__ import annotations

import argparse
import ftplib
import io
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import Row  # noqa: E402
from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.server_proc import Account, ServerProcess  # noqa: E402
from tests.tls_clients import client_context, write_certificate  # noqa: E402

BUCKET = "rates-1250000000"
KIB = 1024
Transfer = Callable[[ftplib.FTP, str, bytes], object]


def _retr(ftp: ftplib.FTP, key: str, _data: bytes) -> object:
    return ftp.retrbinary(f"RETR {key}", lambda _chunk: None)


def _stor(ftp: ftplib.FTP, key: str, data: bytes) -> object:
    return ftp.storbinary(f"STOR {key}.up", io.BytesIO(data))


def _retr_ascii(ftp: ftplib.FTP, key: str, _data: bytes) -> object:
    return ftp.retrlines(f"RETR {key}", lambda _line: None)


# Each row: the account's rate option, whether its sessions log in with TLS, how many
# sessions, and what each does with (ftp, key, data) -- all of a row's sessions at once.
ROWS: dict[str, tuple[str, bool, int, Transfer]] = {
    "RETR, 3 sessions of an account (max_download_rate)": ("max_download_rate", False, 3, _retr),
    "STOR, 3 sessions of an account (max_upload_rate)": ("max_upload_rate", False, 3, _stor),
    "RETR over TLS (max_download_rate)": ("max_download_rate", True, 1, _retr),
    "STOR over TLS (max_upload_rate)": ("max_upload_rate", True, 1, _stor),
    "RETR in ASCII mode (max_download_rate)": ("max_download_rate", False, 1, _retr_ascii),
    "RETR, 2 sessions each at its local_max_rate": ("local_max_rate", False, 2, _retr),
}


def _user(row: int, run: int) -> str:
    return f"r{row}run{run}"


def _login(server: ServerProcess, user: str, tls: bool) -> ftplib.FTP:
    if not tls:
        return server.login(user, f"{user}-pw", timeout=600)
    ftp = ftplib.FTP_TLS(context=client_context())
    ftp.connect("127.0.0.1", server.port, timeout=600)
    ftp.login(user, f"{user}-pw")
    ftp.prot_p()
    return ftp


def _together(jobs: list[Callable[[], object]]) -> float:
    """Run the jobs at once; the seconds from the first start to the last end."""
    threads = [threading.Thread(target=job) for job in jobs]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def measure(server: ServerProcess, data: bytes, rate: int, runs: int) -> list[Row]:
    rows = []
    for index, (work, (option, tls, sessions, transfer)) in enumerate(ROWS.items()):
        measured = []
        for run in range(runs):
            ftps = [_login(server, _user(index, run), tls) for _ in range(sessions)]
            seconds = _together([lambda ftp=ftp, n=n, go=transfer: go(ftp, f"data/{n}", data)
                                 for n, ftp in enumerate(ftps)])
            for ftp in ftps:
                ftp.quit()
            # local_max_rate: a bucket (and a burst) per session, the rate per session.
            per_bucket = sessions if option == "local_max_rate" else 1
            measured.append((sessions * len(data) - per_bucket * rate) / seconds / per_bucket)
        rows.append(Row(work, "KiB/s", [m / KIB for m in measured],
                        [rate / KIB] * runs, 0.85, True))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate-kib", type=int, default=512, help="the configured rates")
    parser.add_argument("--size-kib", type=int, default=4096,
                        help="bytes each session moves (several seconds at the rate)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    rate = args.rate_kib * KIB
    workdir = Path(tempfile.mkdtemp(prefix="cosftp-rates-"))
    cert, key = write_certificate(workdir)
    accounts = [Account("busy", "busy-pw", BUCKET)] + [
        Account(_user(index, run), f"{_user(index, run)}-pw", BUCKET,
                extra=f"{option} = {rate}")
        for index, (option, *_) in enumerate(ROWS.values()) for run in range(args.runs)]
    emulator = EmulatorProcess([BUCKET]).start()
    server = ServerProcess(str(workdir / "server"), emulator.port, accounts,
                           optional={"worker_processes": "1", "log_level": "WARNING"},
                           network={"tls_certfile": cert, "tls_keyfile": key})
    stop = threading.Event()
    try:
        server.start()
        # Lines of 18 bytes: the ASCII row's file is text.
        data = b"".join(b"%07d paced line\r\n" % n for n in range(args.size_kib * KIB // 18))
        cos = emulator.client()
        for n in range(max(sessions for _, _, sessions, _ in ROWS.values())):
            cos.put_object(Bucket=BUCKET, Key=f"data/{n}", Body=data)
        cos.put_object(Bucket=BUCKET, Key="busy", Body=os.urandom(16 * 1024 * KIB))
        busy = server.login("busy", "busy-pw", timeout=600)

        def keep_busy() -> None:
            while not stop.is_set():
                busy.retrbinary("RETR busy", lambda _data: None)
        neighbour = threading.Thread(target=keep_busy, daemon=True)
        neighbour.start()
        rows = measure(server, data, rate, args.runs)
        stop.set()
        neighbour.join()
        busy.quit()
    finally:
        stop.set()
        server.stop()
        emulator.stop()
    print("| work | gateway | configured | ratio | target | verdict |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
