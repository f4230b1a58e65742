"""Benchmark: the gateway against the direct SDK, side by side, on the same emulator.

Run by hand (``.venv/bin/python bench/run.py``); the test suite only smoke-runs it with tiny
sizes. Every row measures the gateway and its baseline in the same run, repeats ``--runs``
times and reports medians; the verdict compares the ratio with the target.
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.server_proc import Account, ServerProcess  # noqa: E402

MIB = 1024 * 1024
BUCKET = "bench-1250000000"


@dataclass
class Row:
    work: str
    unit: str
    gateway: float
    baseline: float
    target: float
    higher_is_better: bool

    @property
    def ratio(self) -> float:
        return self.gateway / self.baseline if self.baseline else float("nan")

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        return (f"| {self.work} | {self.gateway:.2f} {self.unit} | {self.baseline:.2f} "
                f"{self.unit} | {self.ratio:.2f} | {sign} {self.target:.2f} | "
                f"{'pass' if self.passed else 'FAIL'} |")


def paired(runs: int, gateway: Callable[[], float],
           baseline: Callable[[], float]) -> tuple[float, float]:
    """Median seconds of each, runs interleaved so both see the same emulator conditions,
    and taking turns to go first (the emulator frees the previous run's object meanwhile)."""
    times: tuple[list[float], list[float]] = ([], [])
    for number in range(runs):
        if number % 2:
            times[1].append(baseline())
            times[0].append(gateway())
        else:
            times[0].append(gateway())
            times[1].append(baseline())
    return statistics.median(times[0]), statistics.median(times[1])


def rate_row(work: str, unit: str, amount: float, seconds: tuple[float, float],
             target: float) -> Row:
    return Row(work, unit, amount / seconds[0], amount / seconds[1], target, True)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


class Bench:
    """One emulator, one server, one SDK client, and the measurements between them."""

    def __init__(self, args: argparse.Namespace, workdir: str, latency_ms: float = 0,
                 **options: str) -> None:
        self.args = args
        extra = ["--latency-ms", str(latency_ms)] if latency_ms else []
        self.emulator = EmulatorProcess([BUCKET], extra_args=extra).start()
        self.cos = self.emulator.client()
        optional = {"min_part_size": str(args.part_mib * MIB),
                    "upload_thread_num": str(args.threads), "log_level": "WARNING",
                    "worker_processes": str(args.workers), **options}
        self.server = ServerProcess(workdir, self.emulator.port,
                                    [Account("bench", "bench-pw", BUCKET)], optional=optional,
                                    file_option={"single_file_max_size": str(8 * 1024 ** 3)})
        self.server.start()
        self.data = os.urandom(args.size_mib * MIB)

    def close(self) -> None:
        self.server.stop()
        self.emulator.stop()

    def ftp(self) -> ftplib.FTP:
        ftp = self.server.login("bench", "bench-pw", timeout=600)
        ftp.voidcmd("TYPE I")
        return ftp

    # --- rows

    def stor(self) -> Row:
        def gateway() -> float:
            with self.ftp() as ftp:
                return timed(lambda: ftp.storbinary("STOR big.bin", io.BytesIO(self.data),
                                                    blocksize=MIB))

        def baseline() -> float:
            return timed(lambda: self.sdk_multipart("big-sdk.bin", self.data))

        mib = len(self.data) / MIB
        return rate_row(f"STOR {mib:.0f} MiB", "MiB/s", mib,
                        paired(self.args.runs, gateway, baseline), 0.90)

    def sdk_multipart(self, key: str, data: bytes) -> None:
        part = self.args.part_mib * MIB
        upload_id = self.cos.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]

        def send(number: int) -> dict:
            chunk = data[(number - 1) * part: number * part]
            etag = self.cos.upload_part(Bucket=BUCKET, Key=key, Body=chunk, PartNumber=number,
                                        UploadId=upload_id, EnableMD5=True)["ETag"]
            return {"PartNumber": number, "ETag": etag}

        with ThreadPoolExecutor(self.args.threads) as pool:
            parts = list(pool.map(send, range(1, -(-len(data) // part) + 1)))
        self.cos.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id,
                                           MultipartUpload={"Part": parts})

    def retr(self) -> Row:
        self.cos.put_object(Bucket=BUCKET, Key="big.bin", Body=self.data)

        def gateway() -> float:
            with self.ftp() as ftp:
                return timed(lambda: ftp.retrbinary("RETR big.bin", lambda _b: None,
                                                    blocksize=MIB))

        def baseline() -> float:
            def read() -> None:
                stream = self.cos.get_object(Bucket=BUCKET, Key="big.bin")["Body"]
                raw = stream.get_raw_stream()
                while raw.read(MIB):
                    pass
            return timed(read)

        mib = len(self.data) / MIB
        return rate_row(f"RETR {mib:.0f} MiB", "MiB/s", mib,
                        paired(self.args.runs, gateway, baseline), 0.80)

    def small_files(self, count: int, size: int, target: float, label: str) -> Row:
        payload = os.urandom(size)
        names = [f"small/{label}-{i:05d}" for i in range(count)]

        def gateway() -> float:
            def session(chunk: list[str]) -> None:
                with self.ftp() as ftp:
                    for name in chunk:
                        ftp.storbinary(f"STOR {name}", io.BytesIO(payload))
            chunks = [names[i::4] for i in range(4)]
            return timed(lambda: list(ThreadPoolExecutor(4).map(session, chunks)))

        def baseline() -> float:
            def put(name: str) -> None:
                self.cos.put_object(Bucket=BUCKET, Key=name + ".sdk", Body=payload)
            return timed(lambda: list(ThreadPoolExecutor(4).map(put, names)))

        return rate_row(f"{count} files x {size // 1024} KiB up, 4 sessions", "files/s", count,
                        paired(self.args.runs, gateway, baseline), target)

    def listing(self) -> Row:
        keys = [f"list/k{i:06d}" for i in range(self.args.keys)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: self.cos.put_object(Bucket=BUCKET, Key=k, Body=b""), keys))

        def gateway() -> float:
            with self.ftp() as ftp:
                lines: list[str] = []
                seconds = timed(lambda: ftp.retrlines("LIST list", lines.append))
                assert len(lines) == len(keys), len(lines)
                return seconds

        def baseline() -> float:
            def walk() -> None:
                marker, seen = "", 0
                while True:
                    page = self.cos.list_objects(Bucket=BUCKET, Prefix="list/", Delimiter="/",
                                                 Marker=marker, MaxKeys=1000)
                    contents = page.get("Contents", [])
                    seen += len(contents)
                    if page.get("IsTruncated") != "true":
                        break
                    marker = page.get("NextMarker") or contents[-1]["Key"]
                assert seen == len(keys), seen
            return timed(walk)

        return Row(f"LIST {len(keys)} keys", "s", *paired(self.args.runs, gateway, baseline),
                   1.3, False)

    def peak_rss(self) -> Row:
        """Peak worker RSS during 4 concurrent STORs against the documented bound."""
        master = psutil.Process(self.server.proc.pid)
        workers = master.children()
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for proc in workers:
                    with contextlib.suppress(psutil.Error):
                        peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.05)

        def upload(i: int) -> None:
            with self.ftp() as ftp:
                ftp.storbinary(f"STOR rss-{i}.bin", io.BytesIO(self.data), blocksize=MIB)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(upload, range(4)))
        done.set()
        sampler.join()
        bound = (self.args.threads + 1) * self.args.part_mib * 4 + 60
        return Row("peak worker RSS, 4 concurrent STORs", "MiB", peak[0] / MIB, bound, 1.0,
                   False)

    def sessions(self, count: int) -> Row:
        """``count`` sessions uploading at once, against as many direct SDK multipart
        uploads at once (each with ``--threads`` part threads)."""
        data = self.data[:self.args.engine_mib * MIB]

        def gateway() -> float:
            def upload(i: int) -> None:
                with self.ftp() as ftp:
                    ftp.storbinary(f"STOR s{count}-{i}.bin", io.BytesIO(data), blocksize=MIB)
            return timed(lambda: list(ThreadPoolExecutor(count).map(upload, range(count))))

        def baseline() -> float:
            return timed(lambda: list(ThreadPoolExecutor(count).map(
                lambda i: self.sdk_multipart(f"s{count}-{i}.sdk", data), range(count))))

        mib = count * len(data) / MIB
        return rate_row(f"STOR {count} x {len(data) // MIB} MiB at once", "MiB/s", mib,
                        paired(self.args.runs, gateway, baseline), 0.80)

    def budget_rss(self, sessions: int = 16) -> Row:
        """Peak RSS of the one worker while ``sessions`` uploads go to slow COS, against
        the README's bound: RSS_idle + upload_memory_limit + largest part + 2 MiB per
        transfer + 16 MiB per login being checked (RSS_idle measured after one upload; the
        sessions log in one by one before the uploads start)."""
        data = self.data[:self.args.engine_mib * MIB]
        with self.ftp() as ftp:
            ftp.storbinary("STOR warm.bin", io.BytesIO(data), blocksize=MIB)
        (worker,) = psutil.Process(self.server.proc.pid).children()
        idle = worker.memory_info().rss
        ftps = [self.ftp() for _ in range(sessions)]
        peak, done = [idle], threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                with contextlib.suppress(psutil.Error):
                    peak[0] = max(peak[0], worker.memory_info().rss)

        def upload(i: int) -> None:
            with ftps[i] as ftp:
                ftp.storbinary(f"STOR budget-{i}.bin", io.BytesIO(data), blocksize=MIB)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            list(ThreadPoolExecutor(sessions).map(upload, range(sessions)))
        finally:
            done.set()
            sampler.join()
        bound = idle / MIB + self.args.budget_mib + self.args.part_mib + 2 * sessions + 16
        return Row(f"peak RSS, 1 worker, {sessions} STORs at {self.args.budget_latency_ms:.0f} "
                   f"ms COS latency, vs the README bound ({self.args.budget_mib} MiB budget)",
                   "MiB", peak[0] / MIB, bound, 1.0, False)


ROWS = ("stor", "retr", "small", "list", "rss", "sessions", "latency", "budget")


def run(args: argparse.Namespace) -> list[Row]:
    rows = []
    wanted = set(args.only or ROWS)
    with tempfile.TemporaryDirectory(prefix="cosftp-bench-") as workdir:
        bench = Bench(args, os.path.join(workdir, "plain"))
        measures = {"stor": bench.stor, "retr": bench.retr,
                    "small": lambda: bench.small_files(args.files, 4096, 0.70, "small"),
                    "list": bench.listing, "rss": bench.peak_rss}
        try:
            rows += [measure() for name, measure in measures.items() if name in wanted]
            if "sessions" in wanted:
                rows += [bench.sessions(count) for count in (1, 4, 16)]
        finally:
            bench.close()
        if "latency" in wanted:
            rows.append(_latency_row(args, os.path.join(workdir, "latency")))
        if "budget" in wanted:
            slow = Bench(args, os.path.join(workdir, "budget"),
                         latency_ms=args.budget_latency_ms, worker_processes="1",
                         upload_memory_limit=str(args.budget_mib))
            try:
                rows.append(slow.budget_rss())
            finally:
                slow.close()
    return rows


def _latency_row(args: argparse.Namespace, workdir: str) -> Row:
    slow = Bench(args, workdir, latency_ms=args.latency_ms)
    try:
        row = slow.small_files(args.latency_files, MIB, 0.80, f"latency{args.latency_ms:.0f}ms")
    finally:
        slow.close()
    row.work += f" at {args.latency_ms:.0f} ms COS latency"
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--latency-files", type=int, default=32)
    parser.add_argument("--engine-mib", type=int, default=32,
                        help="file size of the sessions and budget rows")
    parser.add_argument("--budget-mib", type=int, default=64,
                        help="upload_memory_limit of the budget row")
    parser.add_argument("--budget-latency-ms", type=float, default=200)
    parser.add_argument("--only", nargs="*", choices=ROWS, help="run only these rows")
    args = parser.parse_args(argv)
    rows = run(args)
    print("| work | gateway | baseline (direct SDK) | ratio | target | verdict |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
