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
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.server_proc import Account, ServerProcess, free_port, wait_until  # noqa: E402

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


class CpuMeter:
    """CPU seconds of the server's workers and of this process (the SDK client) around
    each measured run; medians of the gateway's and the baseline's runs."""

    def __init__(self, server: ServerProcess) -> None:
        self._workers = psutil.Process(server.proc.pid).children()
        self.worker: list[float] = []
        self.client: list[float] = []

    def _worker_cpu(self) -> float:
        return sum(sum(proc.cpu_times()[:2]) for proc in self._workers)

    def gateway(self, action: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            before = self._worker_cpu()
            seconds = action()
            self.worker.append(self._worker_cpu() - before)
            return seconds
        return run

    def baseline(self, action: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            before = time.process_time()
            seconds = action()
            self.client.append(time.process_time() - before)
            return seconds
        return run

    def row(self, work: str, gib: float, target: float) -> Row:
        """Worker CPU per GiB against the SDK client's (lower is better)."""
        return Row(work, "s/GiB", statistics.median(self.worker) / gib,
                   statistics.median(self.client) / gib, target, False)


class ProcessCpu:
    """CPU seconds per file of every process taking part in a small-file row: the emulator,
    the server's master and each worker, and this process (the bench client), measured
    around the gateway's and the baseline's runs (medians)."""

    def __init__(self, bench: Bench) -> None:
        master = psutil.Process(bench.server.proc.pid)
        self._procs = {"emulator": [psutil.Process(bench.emulator.proc.pid)],
                       "master": [master], "workers": master.children(),
                       "client": [psutil.Process()]}
        self.runs: dict[str, list[dict[str, float]]] = {"gateway": [], "baseline": []}

    def _cpu(self) -> dict[str, float]:
        return {name: sum(sum(proc.cpu_times()[:2]) for proc in procs)
                for name, procs in self._procs.items()}

    def around(self, side: str, action: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            before = self._cpu()
            seconds = action()
            after = self._cpu()
            self.runs[side].append({name: after[name] - before[name] for name in after})
            return seconds
        return run

    def summary(self, work: str, files: int) -> str:
        """One line: milliseconds of CPU per file by process, gateway then baseline."""
        parts = []
        for side, runs in self.runs.items():
            each = ", ".join(
                f"{name} {statistics.median(run[name] for run in runs) * 1000 / files:.2f}"
                for name in self._procs)
            parts.append(f"{side}: {each}")
        return f"{work}: CPU ms per file: " + "; ".join(parts)


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
        self.notes: list[str] = []  # printed after the table

    def close(self) -> None:
        self.server.stop()
        self.emulator.stop()

    def ftp(self) -> ftplib.FTP:
        ftp = self.server.login("bench", "bench-pw", timeout=600)
        ftp.voidcmd("TYPE I")
        return ftp

    # --- rows

    def stor(self) -> list[Row]:
        meter = CpuMeter(self.server)

        def gateway() -> float:
            with self.ftp() as ftp:
                return timed(lambda: ftp.storbinary("STOR big.bin", io.BytesIO(self.data),
                                                    blocksize=MIB))

        def baseline() -> float:
            return timed(lambda: self.sdk_multipart("big-sdk.bin", self.data))

        mib = len(self.data) / MIB
        seconds = paired(self.args.runs, meter.gateway(gateway), meter.baseline(baseline))
        return [rate_row(f"STOR {mib:.0f} MiB", "MiB/s", mib, seconds, 0.95),
                meter.row(f"STOR {mib:.0f} MiB: worker CPU vs SDK client CPU (with MD5)",
                          mib / 1024, 1.0)]

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

    def retr(self) -> list[Row]:
        self.cos.put_object(Bucket=BUCKET, Key="big.bin", Body=self.data)
        meter = CpuMeter(self.server)

        def gateway() -> float:
            # CPU around the RETR alone: the login (~40 ms of scrypt) is paid per session,
            # not per GiB, and the SDK baseline has none.
            with self.ftp() as ftp:
                return meter.gateway(lambda: timed(lambda: ftp.retrbinary(
                    "RETR big.bin", lambda _b: None, blocksize=MIB)))()

        def baseline() -> float:
            def read() -> None:
                stream = self.cos.get_object(Bucket=BUCKET, Key="big.bin")["Body"]
                raw = stream.get_raw_stream()
                while raw.read(MIB):
                    pass
            return timed(read)

        mib = len(self.data) / MIB
        seconds = paired(self.args.runs, gateway, meter.baseline(baseline))
        return [rate_row(f"RETR {mib:.0f} MiB", "MiB/s", mib, seconds, 0.90),
                meter.row(f"RETR {mib:.0f} MiB: worker CPU vs SDK client CPU", mib / 1024,
                          2.0)]

    def small_files(self, count: int, size: int, target: float, label: str,
                    sessions: int = 4) -> Row:
        payload = os.urandom(size)
        names = [f"small/{label}-{i:05d}" for i in range(count)]

        def gateway() -> float:
            def session(chunk: list[str]) -> None:
                with self.ftp() as ftp:
                    for name in chunk:
                        ftp.storbinary(f"STOR {name}", io.BytesIO(payload))
            chunks = [names[i::sessions] for i in range(sessions)]
            return timed(lambda: list(ThreadPoolExecutor(sessions).map(session, chunks)))

        def baseline() -> float:
            def put(name: str) -> None:
                self.cos.put_object(Bucket=BUCKET, Key=name + ".sdk", Body=payload)
            return timed(lambda: list(ThreadPoolExecutor(sessions).map(put, names)))

        size_text = f"{size // 1024} KiB" if size < MIB else f"{size // MIB} MiB"
        work = f"{count} files x {size_text} up, {sessions} sessions"
        cpu = ProcessCpu(self)
        seconds = paired(self.args.runs, cpu.around("gateway", gateway),
                         cpu.around("baseline", baseline))
        self.notes.append(cpu.summary(work, count))
        return rate_row(work, "files/s", count, seconds, target)

    def mirror(self, count: int) -> list[Row]:
        """``lftp mirror -R`` of small files with their times kept (STOR, MFMT, SITE CHMOD
        per file, 4 in parallel) against an ftplib STOR loop of the same files (4 sessions)
        and against lftp on ``rclone serve ftp`` of the same emulator."""
        source = tempfile.mkdtemp(prefix="cosftp-mirror-")
        for i in range(count):
            path = os.path.join(source, f"m{i:05d}")
            with open(path, "wb") as handle:
                handle.write(os.urandom(4096))
            os.utime(path, (1_600_000_000 + i, 1_600_000_000 + i))
        runs = iter(range(10 ** 6))

        def mirror(port: int, user: str) -> float:
            return timed(lambda: lftp_mirror(port, user, source, f"mirror/r{next(runs)}"))

        def loop() -> float:
            names = sorted(os.listdir(source))
            target = f"mirror/loop{next(runs)}"
            with self.ftp() as ftp:
                ftp.mkd(target)

            def session(chunk: list[str]) -> None:
                with self.ftp() as ftp:
                    for name in chunk:
                        with open(os.path.join(source, name), "rb") as handle:
                            ftp.storbinary(f"STOR {target}/{name}", handle)
            return timed(lambda: list(ThreadPoolExecutor(4).map(
                session, [names[i::4] for i in range(4)])))

        work = f"lftp mirror -R of {count} x 4 KiB, times kept, 4 parallel"
        gateway = (self.server.port, "bench,bench-pw")
        with RcloneFtp(self.emulator.port, BUCKET) as rclone:
            ours, theirs = paired(self.args.runs, lambda: mirror(*gateway),
                                  lambda: mirror(rclone.port, "u,p"))
        ours_again, plain = paired(self.args.runs, lambda: mirror(*gateway), loop)
        return [rate_row(f"{work} (vs ftplib STOR loop)", "files/s", count, (ours_again, plain),
                         0.80),
                rate_row(f"{work} (vs rclone serve ftp)", "files/s", count, (ours, theirs),
                         1.00)]

    def listing(self) -> list[Row]:
        """LIST of a directory of ``--keys`` keys: time to the first line against the direct
        first page, the whole listing against the direct walk, worker memory growth."""
        keys = [f"list/k{i:06d}" for i in range(self.args.keys)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: self.cos.put_object(Bucket=BUCKET, Key=k, Body=b""), keys))
        first: list[float] = []
        direct_first: list[float] = []
        workers = psutil.Process(self.server.proc.pid).children()
        growth = [0.0]

        def gateway() -> float:
            with self.ftp() as ftp, RssPeak(workers) as rss:
                ftp.voidcmd("TYPE A")
                start = time.perf_counter()
                with ftp.transfercmd("LIST list") as data, data.makefile("rb") as lines:
                    assert lines.readline()
                    first.append(time.perf_counter() - start)
                    count = 1 + sum(1 for _line in lines)
                ftp.voidresp()
                seconds = time.perf_counter() - start
            assert count == len(keys), count
            growth[0] = max(growth[0], rss.growth / MIB)
            return seconds

        def baseline() -> float:
            marker, seen, start = "", 0, time.perf_counter()
            while True:
                page = self.cos.list_objects(Bucket=BUCKET, Prefix="list/", Delimiter="/",
                                             Marker=marker, MaxKeys=1000)
                if not marker:
                    direct_first.append(time.perf_counter() - start)
                contents = page.get("Contents", [])
                seen += len(contents)
                if page.get("IsTruncated") != "true":
                    break
                marker = page.get("NextMarker") or contents[-1]["Key"]
            assert seen == len(keys), seen
            return time.perf_counter() - start

        total = paired(self.args.runs, gateway, baseline)
        work = f"LIST {len(keys)} keys"
        return [Row(f"{work}: first line (vs direct first page)", "s",
                    statistics.median(first), statistics.median(direct_first), 2.0, False),
                Row(f"{work}: whole listing", "s", *total, 1.1, False),
                Row(f"{work}: worker RSS growth (vs a 64 MiB bound)", "MiB", growth[0], 64,
                    1.0, False)]

    def peak_rss(self) -> Row:
        """Peak worker RSS during 4 concurrent STORs against the documented bound."""
        workers = psutil.Process(self.server.proc.pid).children()

        def upload(i: int) -> None:
            with self.ftp() as ftp:
                ftp.storbinary(f"STOR rss-{i}.bin", io.BytesIO(self.data), blocksize=MIB)

        with RssPeak(workers) as rss, ThreadPoolExecutor(4) as pool:
            list(pool.map(upload, range(4)))
        bound = (self.args.threads + 1) * self.args.part_mib * 4 + 60
        return Row("peak worker RSS, 4 concurrent STORs", "MiB", rss.peak / MIB, bound, 1.0,
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



class RssPeak:
    """The peak RSS of the workers, and the peak growth of one, while the block runs."""

    def __init__(self, workers: list[psutil.Process]) -> None:
        self._workers = workers
        self._done = threading.Event()
        self._start = {proc.pid: proc.memory_info().rss for proc in workers}
        self.growth = self.peak = 0
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._done.is_set():
            for proc in self._workers:
                with contextlib.suppress(psutil.Error):
                    rss = proc.memory_info().rss
                    self.peak = max(self.peak, rss)
                    self.growth = max(self.growth, rss - self._start[proc.pid])
            time.sleep(0.05)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def lftp_mirror(port: int, user: str, source: str, target: str) -> None:
    """Run ``lftp mirror -R`` as its users do; raise unless it exits 0."""
    script = (f"set cmd:fail-exit true; set net:max-retries 1; "
              f"mirror -R --parallel=4 --no-perms {source} {target}; bye")
    subprocess.run(["lftp", "-u", user, "-p", str(port), "-e", script, "127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, timeout=600)


class RcloneFtp:
    """``rclone serve ftp`` of one bucket of the emulator (user ``u``, password ``p``)."""

    def __init__(self, cos_port: int, bucket: str) -> None:
        self.port = free_port()
        rclone = os.path.join(os.path.dirname(sys.executable), "rclone")
        first = 30000 + self.port % 20000
        self.proc = subprocess.Popen(
            [rclone, "serve", "ftp", f":s3:{bucket}", "--s3-provider", "Other",
             "--s3-endpoint", f"http://127.0.0.1:{cos_port}", "--s3-access-key-id", "x",
             "--s3-secret-access-key", "y", "--addr", f"127.0.0.1:{self.port}",
             "--user", "u", "--pass", "p", "--passive-port", f"{first}-{first + 200}"],
            env={**os.environ, "RCLONE_CONFIG": os.devnull},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> RcloneFtp:
        def answers() -> bool:
            with contextlib.suppress(OSError), ftplib.FTP() as ftp:
                ftp.connect("127.0.0.1", self.port, timeout=2)
                return True
            return False
        wait_until(answers, timeout=30, what="rclone serve ftp")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


ROWS = ("stor", "retr", "small", "rss", "many", "mirror", "sessions", "list", "latency",
        "budget")


def run(args: argparse.Namespace, notes: list[str]) -> list[Row]:
    """The rows asked for; lines that have no verdict (CPU per file) go to ``notes``."""
    rows: list[Row] = []
    wanted = set(args.only or ROWS)
    with tempfile.TemporaryDirectory(prefix="cosftp-bench-") as workdir:
        bench = Bench(args, os.path.join(workdir, "plain"))
        measures = {"stor": bench.stor, "retr": bench.retr,
                    "small": lambda: bench.small_files(args.files, 4096, 0.70, "small"),
                    "rss": bench.peak_rss,
                    "many": lambda: bench.small_files(args.many_files, 1024, 0.95, "many",
                                                      sessions=8),
                    "mirror": lambda: bench.mirror(args.files)}
        with _closing(bench, notes):
            for name, measure in measures.items():
                if name in wanted:
                    found = measure()
                    rows += found if isinstance(found, list) else [found]
            if "sessions" in wanted:
                rows += [bench.sessions(count) for count in (1, 4, 16)]
        if "list" in wanted:
            # A bucket of its own: the other rows' keys stay out of its listing.
            with _closing(Bench(args, os.path.join(workdir, "list"),
                                max_list_file=str(args.keys))) as big:
                rows += big.listing()
        if "latency" in wanted:
            with _closing(Bench(args, os.path.join(workdir, "latency"),
                                latency_ms=args.latency_ms), notes) as slow:
                rows.append(slow.small_files(args.latency_files, MIB, 0.80,
                                             f"latency{args.latency_ms:.0f}ms"))
                rows[-1].work += f" at {args.latency_ms:.0f} ms COS latency"
        if "budget" in wanted:
            with _closing(Bench(args, os.path.join(workdir, "budget"),
                                latency_ms=args.budget_latency_ms, worker_processes="1",
                                upload_memory_limit=str(args.budget_mib))) as slow:
                rows.append(slow.budget_rss())
    return rows


@contextlib.contextmanager
def _closing(bench: Bench, notes: Optional[list[str]] = None):
    try:
        yield bench
    finally:
        bench.close()
        if notes is not None:
            notes += bench.notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--many-files", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--latency-files", type=int, default=32)
    parser.add_argument("--engine-mib", type=int, default=32,
                        help="file size of the sessions and budget rows")
    parser.add_argument("--budget-mib", type=int, default=64,
                        help="upload_memory_limit of the budget row")
    parser.add_argument("--budget-latency-ms", type=float, default=200)
    parser.add_argument("--only", nargs="*", choices=ROWS, help="run only these rows")
    args = parser.parse_args(argv)
    notes: list[str] = []
    rows = run(args, notes)
    print("| work | gateway | baseline | ratio | target | verdict |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    for note in notes:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
