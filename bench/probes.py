"""The probes of issue 20: a heavy user or an attacker against a real server, measured.

Each probe starts its own emulator and a server with ``--workers`` workers and the
defaults of a fresh install (part size, passive range, limits), does one thing many times
or from many sessions at once, and prints what the server answered and what it held
(descriptors, threads and RSS of each worker, sampled every 0.2 s) as JSON::

    .venv/bin/python bench/probes.py pasv      # PASV without transfers
    .venv/bin/python bench/probes.py appe      # APPE onto a big file by many sessions
    .venv/bin/python bench/probes.py appe-abor # APPE + ABOR before a byte, looped
    .venv/bin/python bench/probes.py rename    # directory renames by several users at once
    .venv/bin/python bench/probes.py listing   # wildcard listings of a big directory
    .venv/bin/python bench/probes.py drip      # uploads that drip one byte a second

The figures are in docs/reliability.md, "Probes (issue 20)".
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cosftp_prefork.cos.checksum import crc64, crc64_combine  # noqa: E402
from tests.emulator_proc import EmulatorProcess, all_keys  # noqa: E402
from tests.server_proc import Account, ServerProcess, wait_until  # noqa: E402

MIB, GIB = 1024 ** 2, 1024 ** 3
BUCKET = "probe-1250000000"
USERS = ("alice", "bob", "carol", "dave")
# What ServerProcess writes that a fresh install would not: put the defaults back.
DEFAULTS = {"min_part_size": str(2 * MIB), "upload_thread_num": "8", "log_level": "INFO"}
FILE_DEFAULTS = {"single_file_max_size": str(200 * GIB)}
NETWORK_DEFAULTS = {"passive_port": "60000,65535"}
NETWORK_OPTIONS = ("passive_port",)  # what a probe may set in [NETWORK]


class Watch:
    """Samples every worker's descriptors, threads and RSS while a probe runs; keeps the
    highest of each and the last."""

    def __init__(self, server: ServerProcess, interval: float = 0.2) -> None:
        self._master = psutil.Process(server.proc.pid)
        self._interval = interval
        self.peak: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def workers(self) -> list[psutil.Process]:
        return [child for child in self._master.children()
                if "worker" in " ".join(child.cmdline())]

    def now(self) -> dict:
        """Each worker's descriptors, threads and RSS (MiB) at this moment, summed."""
        found: Counter = Counter()
        for worker in self.workers():
            with contextlib.suppress(psutil.Error):
                found["fds"] += worker.num_fds()
                found["threads"] += worker.num_threads()
                found["rss_mib"] += round(worker.memory_info().rss / MIB)
                found["max_worker_fds"] = max(found["max_worker_fds"], worker.num_fds())
                found["max_worker_rss_mib"] = max(found["max_worker_rss_mib"],
                                                  round(worker.memory_info().rss / MIB))
        return dict(found)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for name, value in self.now().items():
                self.peak[name] = max(self.peak[name], value)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Rig:
    """An emulator and a server with the defaults, ``USERS`` on one bucket."""

    def __init__(self, args: argparse.Namespace, **optional: str) -> None:
        self.emulator = EmulatorProcess([BUCKET]).start()
        self.cos = self.emulator.client()
        accounts = [Account(user, f"{user}-pw", BUCKET) for user in USERS]
        network = {**NETWORK_DEFAULTS,
                   **{name: optional.pop(name) for name in NETWORK_OPTIONS if name in optional}}
        self.server = ServerProcess(
            tempfile.mkdtemp(prefix="cosftp-probe-"), self.emulator.port, accounts,
            optional={"worker_processes": str(args.workers), **DEFAULTS, **optional},
            file_option=dict(FILE_DEFAULTS), network=network)
        try:
            self.server.start()
        except BaseException:
            self.close()
            raise
        # Below the per-address cap on connections not logged in yet (16 by default).
        self._logins = threading.Semaphore(8)

    def login(self, user: str = "alice", source: str = "127.0.0.1",
              timeout: float = 120) -> ftplib.FTP:
        ftp = ftplib.FTP(encoding="utf-8")
        with self._logins:
            ftp.connect(self.server.host, self.server.port, timeout=timeout,
                        source_address=(source, 0))
            ftp.login(user, f"{user}-pw")
        return ftp

    def close(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):  # then it was killed
            self.server.stop(timeout=120)  # sessions in a COS call finish it first
        try:
            self.emulator.stop()
        except subprocess.TimeoutExpired:  # busy freeing a large bucket
            self.emulator.proc.kill()
            self.emulator.proc.wait()


def in_threads(count: int, work: Callable[[int], object], threads: int = 0) -> list:
    """``work(n)`` for n in range(count) on ``threads`` threads (default: one each);
    each result, or the exception it raised."""
    def guarded(number: int) -> object:
        try:
            return work(number)
        except Exception as exc:  # a reply or a broken connection is the finding
            return exc
    with ThreadPoolExecutor(threads or count) as pool:
        return list(pool.map(guarded, range(count)))


def reply_of(outcome: object) -> str:
    """The reply code (or the exception's kind) an outcome stands for."""
    if isinstance(outcome, ftplib.Error):
        return str(outcome)[:3]
    if isinstance(outcome, BaseException):
        return type(outcome).__name__
    return str(outcome)[:3]


def put_many(cos, keys: list[str], body: bytes = b"", threads: int = 32) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda key: cos.put_object(Bucket=BUCKET, Key=key, Body=body), keys))


def listeners_in(watch: Watch, ports: range) -> int:
    """TCP sockets the workers listen on in ``ports`` (the passive range)."""
    count = 0
    for worker in watch.workers():
        with contextlib.suppress(psutil.Error):
            count += sum(1 for conn in worker.net_connections("tcp")
                         if conn.status == psutil.CONN_LISTEN and conn.laddr.port in ports)
    return count


# --- PASV without transfers


def probe_pasv(args: argparse.Namespace) -> dict:
    """One session sends PASV ``--repeat`` times; then ``--sessions`` sessions (from
    several addresses: 64 connections per address by default) send ``--each`` each and
    keep their last port; a legitimate session then lists."""
    rig = Rig(args, passive_port=args.passive)
    low, high = (int(port) for port in args.passive.split(","))
    ports = range(low, high + 1)
    result: dict = {}
    try:
        with Watch(rig.server) as watch:
            result["idle"] = {**watch.now(), "listeners": listeners_in(watch, ports)}
            ftp = rig.login()
            replies = Counter(ftp.sendcmd("PASV")[:3] for _ in range(args.repeat))
            result["one_session"] = {"pasv": args.repeat, "replies": dict(replies),
                                     **watch.now(), "listeners": listeners_in(watch, ports)}
            ftp.quit()
            sessions = _pasv_crowd(rig, args)
            result["crowd"] = {"sessions": len(sessions), "pasv_each": args.each,
                               **watch.now(), "listeners": listeners_in(watch, ports),
                               "legitimate_list": _legitimate_list(rig)}
            for ftp in sessions:
                with contextlib.suppress(OSError, EOFError, ftplib.Error):
                    ftp.quit()
            wait_until(lambda: listeners_in(watch, ports) == 0, timeout=60,
                       what="the crowd's listeners closed")
            result["after"] = {**watch.now(), "listeners": listeners_in(watch, ports)}
        result["peak"] = dict(watch.peak)
    finally:
        rig.close()
    return result


def _pasv_crowd(rig: Rig, args: argparse.Namespace) -> list[ftplib.FTP]:
    def one(number: int) -> ftplib.FTP:
        ftp = rig.login(USERS[number % len(USERS)], source=f"127.0.1.{number // 60 + 1}")
        for _ in range(args.each):
            ftp.sendcmd("PASV")
        return ftp
    outcomes = in_threads(args.sessions, one, threads=16)
    failed = Counter(reply_of(o) for o in outcomes if not isinstance(o, ftplib.FTP))
    if failed:
        print(f"crowd sessions that failed: {dict(failed)}", file=sys.stderr)
    return [o for o in outcomes if isinstance(o, ftplib.FTP)]


def _legitimate_list(rig: Rig) -> str:
    try:
        ftp = rig.login("alice", source="127.0.0.1")
        ftp.nlst("/")
        ftp.quit()
        return "ok"
    except (OSError, EOFError, ftplib.Error) as exc:
        return str(exc)


# --- APPE onto a big file by many sessions at once


def probe_appe(args: argparse.Namespace) -> dict:
    """``--appenders`` sessions APPE ``--tail`` bytes each (a letter of their own) onto one
    file of ``--size`` bytes at once; with ``--retry`` each tries again after a refusal
    (450) until its APPE is done. What COS ends with must be the file plus the bytes of
    every APPE that got 226, each once, whole; each APPE's wait for its 150 is shown."""
    rig = Rig(args)
    try:
        original = _big_object(rig, "big.bin", args.size)
        waits: list[float] = []  # list.append is atomic: the appenders share it
        with Watch(rig.server) as watch:
            started = time.monotonic()
            outcomes = in_threads(args.appenders, lambda n: _append(rig, n, args, waits))
            seconds = time.monotonic() - started
        size = int(rig.cos.head_object(Bucket=BUCKET, Key="big.bin")["Content-Length"])
        added = rig.cos.get_object(Bucket=BUCKET, Key="big.bin", Range=f"bytes={args.size}-"
                                   )["Body"].get_raw_stream().read() if size > args.size else b""
        blocks = [added[first:first + args.tail] for first in range(0, len(added), args.tail)]
        return {"size": args.size, "appenders": args.appenders, "tail": args.tail,
                "replies": dict(Counter(reply for outcome in outcomes
                                        for reply in outcome)),
                "seconds": round(seconds, 1),
                "seconds_to_150": sorted(round(wait, 2) for wait in waits),
                "appended_blocks": ["".join(sorted(set(block.decode()))) if len(block) ==
                                    args.tail else f"partial {len(block)}" for block in blocks],
                "file_starts_as_before": _starts_as(rig, args.size, original),
                "emulator_rss_mib": round(psutil.Process(rig.emulator.proc.pid)
                                          .memory_info().rss / MIB),
                "peak": dict(watch.peak)}
    finally:
        rig.close()


def probe_appe_abor(args: argparse.Namespace) -> dict:
    """One session sends ``--repeat`` times APPE onto a file of ``--size`` bytes and ABOR
    before a byte: the seconds, and the COS requests naming the file per loop once every
    upload it started is aborted and its live marker gone (no worker figures: the loop
    asks nothing of the worker's memory or threads)."""
    rig = Rig(args)
    try:
        _big_object(rig, "big.bin", args.size)
        ftp = rig.login()
        ftp.voidcmd("TYPE I")
        rig.emulator.requests(reset=True)
        started = time.monotonic()
        for _ in range(args.repeat):
            conn = ftp.transfercmd("APPE big.bin")
            ftp.sock.sendall(b"ABOR\r\n")
            while not ftp.getline().startswith(("225", "226")):
                pass
            conn.close()
        seconds = time.monotonic() - started
        ftp.quit()
        while rig.cos.list_multipart_uploads(Bucket=BUCKET).get("Upload") or \
                rig.cos.list_objects(Bucket=BUCKET, Prefix=".cosftp/live/").get("Contents"):
            time.sleep(0.1)  # the last aborts, sent after their replies
        counts = rig.emulator.requests(contains="big.bin")
        return {"size": args.size, "loops": args.repeat, "seconds": round(seconds, 2),
                "requests_per_loop": {kind: round(count / args.repeat, 2)
                                      for kind, count in sorted(counts.items())}}
    finally:
        rig.close()


def _starts_as(rig: Rig, size: int, crc: int) -> bool:
    """Whether the first ``size`` bytes of big.bin still have the CRC64 ``crc``."""
    stream = rig.cos.get_object(Bucket=BUCKET, Key="big.bin", Range=f"bytes=0-{size - 1}"
                                )["Body"].get_raw_stream()
    value = 0
    while True:
        chunk = stream.read(16 * MIB)
        if not chunk:
            return value == crc
        value = crc64_combine(value, crc64(chunk), len(chunk))


def _big_object(rig: Rig, key: str, size: int) -> int:
    """Upload ``size`` bytes to ``key`` with the SDK (multipart, 64 MiB parts); return its
    CRC64 as COS reports it."""
    block = os.urandom(MIB)
    part_size = 64 * MIB
    upload = rig.cos.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    for number, first in enumerate(range(0, size, part_size), start=1):
        length = min(part_size, size - first)
        body = block * (length // MIB) + block[:length % MIB]
        etag = rig.cos.upload_part(Bucket=BUCKET, Key=key, Body=body, PartNumber=number,
                                   UploadId=upload)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    rig.cos.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                      MultipartUpload={"Part": parts})
    return int(rig.cos.head_object(Bucket=BUCKET, Key=key)["x-cos-hash-crc64ecma"])


def _append(rig: Rig, number: int, args: argparse.Namespace,
            waits: list[float]) -> list[str]:
    """One appender's replies: its APPE's, and with ``--retry`` those of its tries again;
    the seconds each APPE answered 150 after, added to ``waits``."""
    tail = bytes([65 + number % 26]) * args.tail
    replies: list[str] = []
    ftp = rig.login(USERS[number % len(USERS)])
    try:
        ftp.voidcmd("TYPE I")
        while True:
            try:
                asked = time.monotonic()
                with ftp.transfercmd("APPE big.bin") as conn:
                    waits.append(time.monotonic() - asked)
                    conn.sendall(tail)
                replies.append(ftp.voidresp()[:3])
                return replies
            except ftplib.error_temp as exc:
                replies.append(reply_of(exc))
                if not args.retry or not str(exc).startswith("450"):
                    return replies
            time.sleep(1)  # the client's pause before it tries again
    except (OSError, EOFError, ftplib.Error) as exc:
        return [*replies, reply_of(exc)]
    finally:
        with contextlib.suppress(OSError, EOFError, ftplib.Error):
            ftp.quit()


# --- directory renames by several users at once


def probe_rename(args: argparse.Namespace) -> dict:
    """``--renamers`` users rename one directory of ``--keys`` keys at once (each to a
    name of its own); then each renames a directory of its own. Every key must end up in
    exactly one place."""
    rig = Rig(args)
    try:
        names = [f"f{n:05d}" for n in range(args.keys)]
        put_many(rig.cos, ["same/"] + [f"same/{name}" for name in names], b"x")
        with Watch(rig.server) as watch:
            same = in_threads(args.renamers,
                              lambda n: _rename(rig, n, "same", f"same-to-{n}"))
        result = {"keys": args.keys, "renamers": args.renamers,
                  "same_directory": {"replies": [reply_of(o) for o in same],
                                     **_where_keys_went(rig, names, "same"),
                                     "peak": dict(watch.peak)}}
        put_many(rig.cos, [f"own{n}/{name}" for n in range(args.renamers) for name in names],
                 b"x")
        with Watch(rig.server) as watch:
            started = time.monotonic()
            own = in_threads(args.renamers, lambda n: _rename(rig, n, f"own{n}", f"moved{n}"))
            result["own_directories"] = {
                "replies": [reply_of(o) for o in own], "seconds": round(time.monotonic()
                                                                        - started, 1),
                "keys_in_moved": [len(all_keys(rig.cos, BUCKET, f"moved{n}/"))
                                  for n in range(args.renamers)],
                "keys_left": sum(len(all_keys(rig.cos, BUCKET, f"own{n}/"))
                                 for n in range(args.renamers)),
                "peak": dict(watch.peak)}
        return result
    finally:
        rig.close()


def _rename(rig: Rig, number: int, source: str, target: str) -> str:
    ftp = rig.login(USERS[number % len(USERS)])
    try:
        ftp.sendcmd(f"RNFR {source}")
        return ftp.sendcmd(f"RNTO {target}")
    finally:
        with contextlib.suppress(OSError, EOFError, ftplib.Error):
            ftp.quit()


def _where_keys_went(rig: Rig, names: list[str], source: str) -> dict:
    found: Counter = Counter()
    places: Counter = Counter()
    for key in all_keys(rig.cos, BUCKET, ""):
        directory, _, name = key.partition("/")
        if name in set(names) and directory.startswith(source):
            found[name] += 1
            places[directory] += 1
    return {"keys_nowhere": sum(1 for name in names if not found[name]),
            "keys_twice_or_more": sum(1 for name in names if found[name] > 1),
            "keys_by_directory": dict(places)}


# --- wildcard listings of a big directory


def probe_listing(args: argparse.Namespace) -> dict:
    """``--keys`` keys in one directory (half ``.log``, then half ``.txt``); ``NLST *.txt``,
    ``LIST *``, ``MLSD`` and ``NLST`` by ``--listers`` sessions at once (logged in before,
    so that the RSS is the listings'): each command's lines, seconds and COS requests."""
    rig = Rig(args)
    try:
        half = args.keys // 2
        put_many(rig.cos, [f"big/a{n:06d}.log" for n in range(half)] +
                 [f"big/b{n:06d}.txt" for n in range(args.keys - half)])
        sessions = [rig.login() for _ in range(args.listers)]
        result: dict = {"keys": args.keys, "max_list_file": 10000}
        for command in ("NLST /big/*.txt", "LIST /big/*", "MLSD /big", "NLST /big"):
            rig.emulator.requests(reset=True)
            with Watch(rig.server) as watch:
                before = watch.now()["rss_mib"]
                started = time.monotonic()
                outcomes = in_threads(args.listers,
                                      lambda n, c=command: _list(sessions[n], c))
                seconds = time.monotonic() - started
            requests = rig.emulator.requests()
            result[command] = {
                "lines": sorted({o if isinstance(o, int) else reply_of(o) for o in outcomes},
                                key=str),
                "seconds": round(seconds, 1),
                "cos_requests": sum(requests.values()),
                "workers_rss_growth_mib": watch.peak["rss_mib"] - before,
                "peak": dict(watch.peak)}
        return result
    finally:
        rig.close()


def _list(ftp: ftplib.FTP, command: str) -> int:
    lines: list[str] = []
    ftp.retrlines(command, lines.append)
    return len(lines)


# --- uploads that drip


def probe_drip(args: argparse.Namespace) -> dict:
    """``--drippers`` sessions each start a STOR (after ``ALLO --allo``, if given: an
    announced size makes the parts larger), send ``--head`` bytes and then one byte a
    second; meanwhile ``--uploads`` legitimate sessions each STOR ``--size`` bytes, and
    the drippers go on for ``--linger`` seconds after them."""
    budget = {"upload_memory_limit": str(args.budget)} if args.budget else {}
    rig = Rig(args, data_connection_timeout=str(args.timeout), **budget)
    stop = threading.Event()
    fates: list[str] = []
    try:
        with Watch(rig.server) as watch:
            drippers = [threading.Thread(target=lambda n=n: fates.append(_drip(rig, n, args,
                                                                               stop)))
                        for n in range(args.drippers)]
            for thread in drippers:
                thread.start()
            time.sleep(args.settle)  # the drippers take their buffers
            held = watch.now()
            started = time.monotonic()
            outcomes = in_threads(args.uploads, lambda n: _upload(rig, n, args))
            seconds = time.monotonic() - started
            time.sleep(args.linger)  # the drippers go on
            stop.set()
            for thread in drippers:
                thread.join()
        return {"budget_mib": args.budget, "data_connection_timeout": args.timeout,
                "drippers": args.drippers, "allo": args.allo, "head": args.head,
                "uploads": args.uploads, "size": args.size, "held_by_drippers": held,
                "replies": dict(Counter(reply_of(o) for o in outcomes)),
                "dripper_fates": dict(Counter(fates)),
                "seconds": round(seconds, 1), "peak": dict(watch.peak)}
    finally:
        stop.set()
        rig.close()


def _drip(rig: Rig, number: int, args: argparse.Namespace, stop: threading.Event) -> str:
    """One dripping upload; what became of it: cut off (with the reply) or still going."""
    try:
        ftp = rig.login(USERS[number % len(USERS)], source=f"127.0.2.{number // 60 + 1}",
                        timeout=3 * args.timeout)
        if args.allo:
            ftp.sendcmd(f"ALLO {args.allo}")
        ftp.voidcmd("TYPE I")
        data = ftp.transfercmd(f"STOR drip{number}")
    except (OSError, EOFError, ftplib.Error) as exc:
        return f"never started: {reply_of(exc)}"
    try:
        data.sendall(b"d" * args.head)
        while not stop.wait(1.0):
            data.sendall(b"d")
    except OSError:
        try:
            return f"cut off: {ftp.getresp()[:3]}"
        except (OSError, EOFError, ftplib.Error) as exc:
            return f"cut off: {reply_of(exc)}"
    finally:
        data.close()
        ftp.close()
    return "held until the end"


def _upload(rig: Rig, number: int, args: argparse.Namespace) -> str:
    ftp = rig.login(USERS[number % len(USERS)], timeout=3 * args.timeout)
    try:
        return ftp.storbinary(f"STOR legit{number}", io.BytesIO(os.urandom(args.size)))
    finally:
        with contextlib.suppress(OSError, EOFError, ftplib.Error):
            ftp.quit()


PROBES = {"pasv": probe_pasv, "appe": probe_appe, "appe-abor": probe_appe_abor,
          "rename": probe_rename,
          "listing": probe_listing, "drip": probe_drip}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=sorted(PROBES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1000,
                        help="pasv: PASV of one session; appe-abor: APPE + ABOR")
    parser.add_argument("--sessions", type=int, default=400, help="pasv: sessions")
    parser.add_argument("--each", type=int, default=3, help="pasv: PASV per session")
    parser.add_argument("--passive", default="60000,65535", help="pasv: passive_port")
    parser.add_argument("--size", type=int, default=GIB,
                        help="appe, appe-abor: the file; drip: uploads")
    parser.add_argument("--appenders", type=int, default=4, help="appe: sessions")
    parser.add_argument("--tail", type=int, default=3 * MIB, help="appe: bytes each appends")
    parser.add_argument("--retry", action="store_true", help="appe: try again after 450")
    parser.add_argument("--keys", type=int, default=3000, help="rename, listing: keys")
    parser.add_argument("--renamers", type=int, default=3, help="rename: users at once")
    parser.add_argument("--listers", type=int, default=4, help="listing: sessions at once")
    parser.add_argument("--budget", type=int, default=64,
                        help="drip: upload_memory_limit MiB (0: the default)")
    parser.add_argument("--drippers", type=int, default=40, help="drip: dripping sessions")
    parser.add_argument("--head", type=int, default=1, help="drip: bytes sent at once first")
    parser.add_argument("--uploads", type=int, default=4, help="drip: legitimate uploads")
    parser.add_argument("--settle", type=float, default=5, help="drip: seconds before uploads")
    parser.add_argument("--timeout", type=int, default=300, help="drip: data_connection_timeout")
    parser.add_argument("--allo", type=int, default=0, help="drip: ALLO before each STOR")
    parser.add_argument("--linger", type=float, default=0,
                        help="drip: seconds the drippers go on after the uploads")
    args = parser.parse_args(argv)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(PROBES[args.probe](args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
