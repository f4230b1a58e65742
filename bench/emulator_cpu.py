"""What each kind of COS request costs the emulator in CPU, measured from outside it.

Run by hand: ``.venv/bin/python bench/emulator_cpu.py`` starts the emulator as its own
process (``tests.emulator_proc``; with ``PYTHONPATH`` naming another checkout, that
checkout's emulator), and sends it, from one tight loop of the gateway's own ``Bucket``
(the requests the gateway writes, on one kept-alive connection), ``--count`` requests of
each kind a mirrored file makes, then the rest: a new name's look-up (``prefix=<key>``,
max-keys 2, as ``cos.listing`` asks), a 4 KiB PUT with ``Content-MD5`` and
``x-cos-forbid-overwrite``, MFMT's self-copy (``x-cos-copy-source-If-Match``, metadata
``Replaced``), its empty marker PUT, a HEAD, a 4 KiB GET, DELETE Object and DELETE
Multiple Objects of one key. The emulator process's CPU (psutil: user + system) around
each kind, per 1,000 requests, is printed for each of ``--rounds`` rounds (the kinds in a
new order each round), and the median and least over the rounds
(docs/performance.md, "The emulator as an instrument"). ``--latency-ms`` sets the
emulator's latency per request (0 by default: the CPU of the answer alone).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Callable

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cosftp_prefork.cos.bucket import Bucket, make_bucket, new_session  # noqa: E402
from cosftp_prefork.cos.objects import ObjectInfo  # noqa: E402
from tests.emulator_proc import EmulatorProcess, emulator_account  # noqa: E402

BUCKET = "emucpu-1250000000"
BODY = os.urandom(4096)
KINDS = ("LIST", "PUT", "COPY", "MARKER", "HEAD", "GET", "DELETE", "DELETEMANY")


class Loop:
    """The requests of one kind, ``count`` of them, each on its own key of round ``tag``."""

    def __init__(self, bucket: Bucket, count: int) -> None:
        self.bucket, self.count = bucket, count
        self._infos: dict[tuple[str, int], ObjectInfo] = {}

    def prepare(self, tag: str) -> None:
        """The objects the HEADs, GETs, copies and deletes of round ``tag`` name."""
        for i in range(self.count):
            self.bucket.put(f"{tag}/have/{i}", BODY)

    def run(self, kind: str, tag: str) -> None:
        """``count`` requests of ``kind`` (one of ``KINDS``) on round ``tag``'s keys."""
        request: Callable[[int], object] = {
            "LIST": lambda i: self.bucket.list_page(f"{tag}/new/{i}", max_keys=2, delimiter=""),
            "PUT": lambda i: self.bucket.put(f"{tag}/new/{i}", BODY, if_absent=True),
            "COPY": lambda i: self.bucket.copy(self._infos[(tag, i)], f"{tag}/have/{i}",
                                               client_mtime=1_600_000_000.0 + i, pinned=True),
            "MARKER": lambda i: self.bucket.put(f"{tag}/marker/{i}", b""),
            "HEAD": lambda i: self.bucket.head(f"{tag}/have/{i}"),
            "GET": lambda i: self.bucket.read_small(f"{tag}/have/{i}", len(BODY)),
            "DELETE": lambda i: self.bucket.delete(f"{tag}/marker/{i}"),
            "DELETEMANY": lambda i: self.bucket.delete_many([f"{tag}/new/{i}"]),
        }[kind]
        for i in range(self.count):
            request(i)

    def heads(self, tag: str) -> None:
        """The copies' sources, looked up before the clock starts."""
        for i in range(self.count):
            self._infos[(tag, i)] = self.bucket.head(f"{tag}/have/{i}")


def _cpu(process: psutil.Process) -> tuple[float, float]:
    """The process's user and system CPU seconds so far."""
    times = process.cpu_times()
    return times.user, times.system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="requests of a kind per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    args = parser.parse_args()
    extra = ["--latency-ms", str(args.latency_ms)] if args.latency_ms else []
    figures: dict[str, list[float]] = {kind: [] for kind in args.kinds}
    system: dict[str, list[float]] = {kind: [] for kind in args.kinds}
    with EmulatorProcess([BUCKET], extra_args=extra) as emulator:
        process = psutil.Process(emulator.proc.pid)
        bucket = make_bucket(emulator_account(emulator, BUCKET), new_session(4), 30)
        loop = Loop(bucket, args.count)
        for number in range(args.rounds):
            tag = f"r{number}"
            loop.prepare(tag)
            loop.heads(tag)
            # DELETEMANY removes the PUTs' keys and DELETE the markers': after them
            kinds = [kind for kind in args.kinds if not kind.startswith("DELETE")]
            random.shuffle(kinds)
            kinds += [kind for kind in args.kinds if kind.startswith("DELETE")]
            for kind in kinds:
                before, started = _cpu(process), time.monotonic()
                loop.run(kind, tag)
                after = _cpu(process)
                per_request = 1e6 / args.count
                figures[kind].append((sum(after) - sum(before)) * per_request)
                system[kind].append((after[1] - before[1]) * per_request)
                print(f"round {number} {kind:10} {figures[kind][-1]:7.0f} µs per request, "
                      f"{system[kind][-1]:.0f} of it system ({time.monotonic() - started:.1f} s)",
                      flush=True)
    print(f"\nemulator CPU per request, µs, {args.rounds} rounds of {args.count}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for kind in args.kinds:
        values = figures[kind]
        print(f"{kind:10} median {statistics.median(values):6.0f}  least {min(values):6.0f}  "
              f"all {' '.join(f'{v:.0f}' for v in values)}  system median "
              f"{statistics.median(system[kind]):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
