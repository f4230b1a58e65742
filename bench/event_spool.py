"""What writing an event to the spool costs a session: the time ``EventSink.emit`` takes
(JSON, signature, group commit: write, fsync, rename, fsync of the directory), with 1 to
``--threads`` sessions of one worker emitting at once, and how many events each batch (each
pair of fsyncs) carried.

    .venv/bin/python bench/event_spool.py [--dir /var/lib/cosftp/events] [--events 2000]

The spool directory decides the figures (its disk and file system): give the one the server
will use. Nothing is delivered; the spool is emptied afterwards.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cosftp_prefork.config.hooks import HTTP, HooksConfig, HookTarget, ScopeHooks  # noqa: E402
from cosftp_prefork.events.body import make_event  # noqa: E402
from cosftp_prefork.events.sink import EventSink  # noqa: E402


def run(directory: str, sessions: int, events: int) -> dict:
    target = HookTarget(HTTP, "http://127.0.0.1:9/hook", "secret")
    sink = EventSink(HooksConfig(ScopeHooks((target,)), spool_dir=directory), "bench")
    per_session = events // sessions
    latencies: list[float] = []
    lock = threading.Lock()

    def session(number: int) -> None:
        mine = []
        for i in range(per_session):
            event = make_event("upload", "bench", "192.0.2.1", f"/s{number}/f{i}",
                               bucket="bench-1250000000", key=f"s{number}/f{i}", size=4096,
                               etag="d41d8cd98f00b204e9800998ecf8427e", crc64="0")
            start = time.perf_counter()
            sink.emit(event, [target], [f"bench-1250000000/s{number}/f{i}"], admitted=True)
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=session, args=(n,)) for n in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    sink.close()
    batches = glob.glob(os.path.join(directory, "*.batch"))
    for name in batches:
        os.unlink(name)
    latencies.sort()
    return {"sessions": sessions, "events": len(latencies),
            "events_per_s": round(len(latencies) / elapsed),
            "median_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2),
            "events_per_batch": round(len(latencies) / max(1, len(batches)), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="spool directory (default: a new one under /var/tmp)")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=64)
    args = parser.parse_args(argv)
    directory = args.dir or tempfile.mkdtemp(prefix="cosftp-spool-", dir="/var/tmp")
    try:
        rows = [run(directory, sessions, args.events)
                for sessions in sorted({1, 4, 16, args.threads})]
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
