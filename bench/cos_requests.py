"""COS requests per FTP command sequence, counted at the emulator, and the COS round trips
the client waits for.

Run by hand: ``.venv/bin/python bench/cos_requests.py`` counts what this tree's server sends;
``--server-tree DIR`` runs the server from another checkout (say, ``git archive`` of an
older commit) against this tree's emulator, for a before/after table.

The emulator delays every request by ``--latency-ms`` (200 by default): the time the client
waits for the measured commands, divided by that latency, is the number of COS round trips
it waited for in sequence (requests sent at the same time count once; a request the server
sends after its reply, such as a rename's delete of its source, not at all); the least of
``--repeat`` runs, as the machine's own delays only ever add to it.
"""

from __future__ import annotations

import argparse
import ftplib
import io
import os
import sys
import tempfile
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.server_proc import Account, ServerProcess, wait_until  # noqa: E402

BUCKET = "requests-1250000000"


def _put(ftp: ftplib.FTP, path: str, data: bytes = b"x" * 1000) -> None:
    ftp.storbinary(f"STOR {path}", io.BytesIO(data))


def _retr(ftp: ftplib.FTP, path: str) -> None:
    ftp.retrbinary(f"RETR {path}", lambda data: None)


STAMP = "20200102030405"


def _rclone(ftp: ftplib.FTP, directory: str, temporary: bool) -> None:
    """What ``rclone sync`` (v1.75) sends per file, in its order (one session here; rclone
    may spread one file's commands over its connections): MLST of the directory (making
    sure it exists), STOR, MFMT, MLST of the file; with its defaults, under a temporary
    name, then MLST of the directory again (before the move), RNFR/RNTO into place and MLST
    of the file's final name."""
    name = f"{directory}/f"
    upload = f"{name}.1a2b3c4d.partial" if temporary else name
    ftp.sendcmd(f"MLST {directory}")
    _put(ftp, upload)
    ftp.sendcmd(f"MFMT {STAMP} {upload}")
    ftp.sendcmd(f"MLST {upload}")
    if temporary:
        ftp.sendcmd(f"MLST {directory}")
        ftp.sendcmd(f"RNFR {upload}")
        ftp.sendcmd(f"RNTO {name}")
        ftp.sendcmd(f"MLST {name}")


def _previous_file(ftp: ftplib.FTP, directory: str) -> None:
    """The end of rclone's previous file in ``directory``: its MLST."""
    _put(ftp, f"{directory}/e")
    ftp.sendcmd(f"MLST {directory}/e")


# name -> (set-up, the sequence measured); both get the session and a fresh directory's
# absolute path.
SEQUENCES: dict[str, tuple[Callable[[ftplib.FTP, str], None],
                           Callable[[ftplib.FTP, str], None]]] = {
    "SIZE + MDTM + RETR of a file": (
        lambda ftp, d: _put(ftp, f"{d}/f"),
        lambda ftp, d: (ftp.size(f"{d}/f"), ftp.sendcmd(f"MDTM {d}/f"), _retr(ftp, f"{d}/f"))),
    "STOR of a new small file": (
        lambda ftp, d: ftp.mkd(d), lambda ftp, d: _put(ftp, f"{d}/new")),
    "STOR over an existing small file": (
        lambda ftp, d: _put(ftp, f"{d}/old"), lambda ftp, d: _put(ftp, f"{d}/old")),
    "MFMT of a file (not the session's last STOR)": (
        lambda ftp, d: (_put(ftp, f"{d}/f"), _put(ftp, f"{d}/g")),
        lambda ftp, d: ftp.sendcmd(f"MFMT 20200102030405 {d}/f")),
    "STOR + MFMT of a new file (lftp mirror -R)": (
        lambda ftp, d: ftp.mkd(d),
        lambda ftp, d: (_put(ftp, f"{d}/f"), ftp.sendcmd(f"MFMT 20200102030405 {d}/f"))),
    "RETR of a file": (lambda ftp, d: _put(ftp, f"{d}/f"), lambda ftp, d: _retr(ftp, f"{d}/f")),
    "STOR x.partial + RNFR/RNTO x (rclone, WinSCP)": (
        lambda ftp, d: ftp.mkd(d),
        lambda ftp, d: (_put(ftp, f"{d}/x.partial"), ftp.rename(f"{d}/x.partial", f"{d}/x"))),
    "rclone sync, one file, --inplace: MLST dir, STOR, MFMT, MLST": (
        _previous_file, lambda ftp, d: _rclone(ftp, d, temporary=False)),
    "rclone sync, one file, defaults: + MLST dir, RNFR/RNTO, MLST": (
        _previous_file, lambda ftp, d: _rclone(ftp, d, temporary=True)),
    "STOR + MFMT over an existing file": (
        lambda ftp, d: _put(ftp, f"{d}/f"),
        lambda ftp, d: (_put(ftp, f"{d}/f"), ftp.sendcmd(f"MFMT 20200102030405 {d}/f"))),
    "DELE": (lambda ftp, d: (_put(ftp, f"{d}/a"), _put(ftp, f"{d}/b")),
             lambda ftp, d: ftp.delete(f"{d}/a")),
    "DELE in a directory MKD made (its marker)": (
        lambda ftp, d: (ftp.mkd(d), _put(ftp, f"{d}/a"), _put(ftp, f"{d}/b")),
        lambda ftp, d: ftp.delete(f"{d}/a")),
    "MKD": (lambda ftp, d: ftp.mkd(d), lambda ftp, d: ftp.mkd(f"{d}/sub")),
    "CWD": (lambda ftp, d: ftp.mkd(d), lambda ftp, d: ftp.cwd(d)),
    "LIST of 20 files": (
        lambda ftp, d: [_put(ftp, f"{d}/{i}") for i in range(20)],
        lambda ftp, d: ftp.retrlines(f"LIST {d}", lambda line: None)),
    "RNFR + RNTO of a file": (
        lambda ftp, d: (_put(ftp, f"{d}/a"), _put(ftp, f"{d}/b")),
        lambda ftp, d: ftp.rename(f"{d}/a", f"{d}/c")),
    "RNFR + RNTO of a file into another directory": (
        lambda ftp, d: (_put(ftp, f"{d}/sub/a"), _put(ftp, f"{d}/sub/b")),
        lambda ftp, d: ftp.rename(f"{d}/sub/a", f"{d}/a")),
    "STOR sub/x.partial + RNFR/RNTO x (rclone moving its upload up)": (
        lambda ftp, d: ftp.mkd(d),
        lambda ftp, d: (_put(ftp, f"{d}/sub/x.partial"),
                        ftp.rename(f"{d}/sub/x.partial", f"{d}/x"))),
}


def _total(counts: dict) -> str:
    parts = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
    return f"{sum(counts.values())} ({parts})"


def _settled(emulator: EmulatorProcess, directory: str) -> dict:
    """The counts of ``directory`` once no request more arrives (a rename's delete follows
    its reply)."""
    seen: list[dict] = [{}]

    def still() -> bool:
        now = emulator.requests(contains=directory)
        same, seen[0] = now == seen[0], now
        return same
    wait_until(still, timeout=30, interval=0.5, what="the requests to settle")
    return seen[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-tree", help="run the server from this checkout")
    parser.add_argument("--latency-ms", type=float, default=200.0,
                        help="emulator latency per request, to count round trips by")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each sequence (the least time counts)")
    parser.add_argument("--only", default="",
                        help="only the sequences whose name holds this text")
    args = parser.parse_args(argv)
    emulator = EmulatorProcess(buckets=[BUCKET]).start()
    if args.server_tree:
        os.environ["PYTHONPATH"] = os.path.abspath(args.server_tree)
    try:
        with tempfile.TemporaryDirectory() as workdir, ServerProcess(
                workdir, emulator.port, [Account("bench", "bench-pw", BUCKET)],
                optional={"worker_processes": "1", "log_level": "WARNING"}) as server:
            ftp = server.login("bench", "bench-pw")
            _put(ftp, "warm-up")  # the worker asks the bucket's versioning status once
            print("| sequence | COS requests | round trips waited for |\n|---|---|---|")
            for number, (name, (setup, measured)) in enumerate(SEQUENCES.items()):
                if args.only not in name:
                    continue
                waited = []
                for run in range(args.repeat):
                    directory = f"/seq{number}-{run}"
                    setup(ftp, directory)
                    emulator.set_faults(latency_ms=args.latency_ms)
                    emulator.requests(reset=True)
                    started = time.monotonic()
                    measured(ftp, directory)
                    waited.append((time.monotonic() - started) / (args.latency_ms / 1000))
                    emulator.set_faults(latency_ms=0)
                    counts = _settled(emulator, directory.lstrip("/"))
                print(f"| {name} | {_total(counts)} | {min(waited):.1f} |")
            ftp.quit()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
