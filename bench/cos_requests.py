"""COS requests per FTP command sequence, counted at the emulator.

Run by hand: ``.venv/bin/python bench/cos_requests.py`` counts what this tree's server sends;
``--server-tree DIR`` runs the server from another checkout (say, ``git archive`` of an
older commit) against this tree's emulator, for a before/after table.
"""

from __future__ import annotations

import argparse
import ftplib
import io
import os
import sys
import tempfile
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.server_proc import Account, ServerProcess  # noqa: E402

BUCKET = "requests-1250000000"


def _put(ftp: ftplib.FTP, path: str, data: bytes = b"x" * 1000) -> None:
    ftp.storbinary(f"STOR {path}", io.BytesIO(data))


def _retr(ftp: ftplib.FTP, path: str) -> None:
    ftp.retrbinary(f"RETR {path}", lambda data: None)


# name -> (set-up, the sequence measured); both get the session and a fresh directory name.
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
    "STOR + MFMT over an existing file": (
        lambda ftp, d: _put(ftp, f"{d}/f"),
        lambda ftp, d: (_put(ftp, f"{d}/f"), ftp.sendcmd(f"MFMT 20200102030405 {d}/f"))),
    "DELE": (lambda ftp, d: (_put(ftp, f"{d}/a"), _put(ftp, f"{d}/b")),
             lambda ftp, d: ftp.delete(f"{d}/a")),
    "MKD": (lambda ftp, d: ftp.mkd(d), lambda ftp, d: ftp.mkd(f"{d}/sub")),
    "CWD": (lambda ftp, d: ftp.mkd(d), lambda ftp, d: ftp.cwd(f"/{d}")),
    "LIST of 20 files": (
        lambda ftp, d: [_put(ftp, f"{d}/{i}") for i in range(20)],
        lambda ftp, d: ftp.retrlines(f"LIST {d}", lambda line: None)),
    "RNFR + RNTO of a file": (
        lambda ftp, d: (_put(ftp, f"{d}/a"), _put(ftp, f"{d}/b")),
        lambda ftp, d: ftp.rename(f"{d}/a", f"{d}/c")),
}


def _total(counts: dict) -> str:
    parts = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
    return f"{sum(counts.values())} ({parts})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-tree", help="run the server from this checkout")
    args = parser.parse_args(argv)
    emulator = EmulatorProcess(buckets=[BUCKET]).start()
    if args.server_tree:
        os.environ["PYTHONPATH"] = os.path.abspath(args.server_tree)
    try:
        with tempfile.TemporaryDirectory() as workdir, ServerProcess(
                workdir, emulator.port, [Account("bench", "bench-pw", BUCKET)],
                optional={"worker_processes": "1", "log_level": "WARNING"}) as server:
            ftp = server.login("bench", "bench-pw")
            print("| sequence | COS requests |\n|---|---|")
            for number, (name, (setup, measured)) in enumerate(SEQUENCES.items()):
                directory = f"seq{number}"
                setup(ftp, directory)
                emulator.requests(reset=True)
                measured(ftp, directory)
                print(f"| {name} | {_total(emulator.requests(contains=directory))} |")
            ftp.quit()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
