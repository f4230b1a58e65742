"""Load: many concurrent sessions doing mixed LIST/STOR/RETR/DELE, checking every byte.

Starts its own emulator and a server with ``--workers`` workers, FTPS (``AUTH TLS`` and an
implicit FTPS port, a self-signed test certificate) and accounts whose passwords are scrypt
hashes (``cosftpctl hash-password``'s: every login costs a real check), runs ``--sessions``
client sessions for ``--seconds``, and prints sessions/s, bytes/s, errors, p99 command and
login latency, each worker's peak RSS (the kernel's VmHWM) beside the bound of
docs/operations.md ("Memory and scheduling"), and each worker's descriptors and threads when
idle and after the run. Half the sessions use plain FTP, a quarter ``AUTH TLS`` and a quarter
the implicit port, both with ``PROT P``. Exits 1 if any command failed, any download
differed from what was uploaded, or a worker's RSS passed the bound. The test suite runs a
small version; the full one is run by hand.

``--hostile`` runs the workload twice on the same server: once alone, then with attackers
beside it (``bench/attackers.py``, in a process of its own), each from loopback addresses of
its own: ``--flood`` idle sockets that never log in, a password guesser and slow-drip clients
on the FTP port; ``--stalls`` stalled TLS handshakes, a crowd guessing passwords over TLS
from several addresses and clients sending garbage to the implicit port. It prints both runs
and how fast each attacker was cut off; it exits 1 also if an attacker ever logged in, or if
the workers' descriptors and threads did not come back to what they held after the first
run.

``--webhook`` also runs the workload on a second server, with an emulator of its own (one
that served a run answers the next more slowly), that sends every event to an HTTP receiver
(``tests/hook_receiver.py``, a process of its own); with it, both runs have a metrics port, so
that they differ by the events alone. It prints for that run what the sessions waited for the
spool (``cosftp_event_spool_write_seconds``: the only part of the hook on the reply's path),
STOR's median and p99 in both runs, the CPU seconds of the events process and of the
receiver, whether every operation a client was told succeeded reached the receiver
(``events_missing``: the run fails unless 0), the events sent twice, and how long after the
last command the last one came.

The legitimate sessions all come from 127.0.0.1 and log in at most ``LOGINS_AT_ONCE`` at a
time, below the server's per-address limit on connections not logged in yet (in the field
they come from many addresses); the server allows one address all of them logged in.
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import hashlib
import io
import json
import os
import pathlib
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Union

import psutil
from prometheus_client.parser import text_string_to_metric_families

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cosftp_prefork.config.model import part_size_for  # noqa: E402
from cosftp_prefork.config.passwords import hash_password  # noqa: E402
from cosftp_prefork.config.settings import parse_config  # noqa: E402
from tests.crowds import peak_rss, reset_peak_rss, workers_of  # noqa: E402
from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.hook_receiver import Receiver  # noqa: E402
from tests.server_proc import FREE_PORT, Account, ServerProcess  # noqa: E402
from tests.tls_clients import ImplicitFTP_TLS, client_context, write_certificate  # noqa: E402

BUCKET = "load-1250000000"
# The hostile run works in a bucket of its own: moto gets slower as a bucket fills up, and
# the second run would pay for the first one's files.
HOSTILE_BUCKET = "hostile-1250000000"
HOOKED_BUCKET = "hooked-1250000000"  # the --webhook run's, on an emulator of its own
HOOK_SECRET = "bench-secret"
LOGINS_AT_ONCE = 8
# Each attacker's source address(es): ``bench/attackers.py --<name>-from``.
ATTACKERS_FROM = {"flood": "127.0.0.2", "guess": "127.0.0.3", "drip": "127.0.0.4",
                  "stall": "127.0.0.5", "garbage": "127.0.0.6",
                  "tls-guess": "127.0.0.7,127.0.0.8,127.0.0.9,127.0.0.10"}
# How session n connects: KINDS[n % 4]; "explicit" (AUTH TLS) and "implicit" use PROT P.
KINDS = ("ftp", "explicit", "ftp", "implicit")
# The upload budget of each worker, MiB: the floor of its default (which depends on the
# machine's memory), so that the RSS bound printed does not.
UPLOAD_MEMORY_MIB = 64
MIB = 2 ** 20
# How long the workers may take to close what the attackers left, after the run.
SETTLE_SECONDS = 120.0


@dataclass
class Tally:
    """What all client threads observed; guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)
    logins: list[float] = field(default_factory=list)  # connect, TLS and login, seconds
    sessions: Counter = field(default_factory=Counter)  # logged in, by kind
    bytes_moved: int = 0
    errors: list[str] = field(default_factory=list)
    mismatches: int = 0
    stors: list[float] = field(default_factory=list)  # STOR to 226, seconds
    acked: list[tuple[str, str]] = field(default_factory=list)  # (event, path) told done

    def command(self, seconds: float, nbytes: int = 0) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.bytes_moved += nbytes


def log_in(server: ServerProcess, user: str, kind: str) -> ftplib.FTP:
    """A session of ``user`` (password ``<user>-pw``) logged in the ``kind`` way (one of
    ``KINDS``)."""
    if kind == "implicit":
        ftp: ftplib.FTP = ImplicitFTP_TLS(context=client_context(), encoding="utf-8")
        port = int(server.network["implicit_tls_port"])
    elif kind == "explicit":
        ftp, port = ftplib.FTP_TLS(context=client_context(), encoding="utf-8"), server.port
    else:
        ftp, port = ftplib.FTP(encoding="utf-8"), server.port
    try:
        ftp.connect(server.host, port, timeout=120)
        ftp.login(user, f"{user}-pw")
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
    except BaseException:
        ftp.close()
        raise
    return ftp


class Client:
    """One session's loop: its own directory, its own record of what it stored."""

    def __init__(self, server: ServerProcess, number: int, tally: Tally, deadline: float,
                 max_size: int, user: str, logins: threading.Semaphore) -> None:
        self.server, self.tally, self.deadline = server, tally, deadline
        self.user = user
        self.logins = logins
        self.kind = KINDS[number % len(KINDS)]
        self.dir = f"c{number:04d}"
        self.rng = random.Random(number)
        self.max_size = max_size
        self.stored: dict[str, str] = {}
        self.doing = "login"  # what an error interrupted

    def run(self) -> None:
        try:
            with self.logins:
                start = time.perf_counter()
                ftp = log_in(self.server, self.user, self.kind)
        except (OSError, EOFError, ftplib.Error) as exc:
            self._error(exc)
            return
        with self.tally.lock:
            self.tally.logins.append(time.perf_counter() - start)
            self.tally.sessions[self.kind] += 1
        try:
            ftp.voidcmd("TYPE I")
            self._timed(ftp.mkd, self.dir)
            self._acked("mkdir", "")
            while time.monotonic() < self.deadline:
                self._one_operation(ftp)
        except (OSError, EOFError, ftplib.Error) as exc:
            self._error(exc)
        finally:
            with contextlib.suppress(OSError, EOFError, ftplib.Error):
                ftp.quit()
            ftp.close()

    def _one_operation(self, ftp: ftplib.FTP) -> None:
        choice = self.rng.random()
        if choice < 0.35 or not self.stored:
            self._stor(ftp)
        elif choice < 0.7:
            self._retr(ftp)
        elif choice < 0.85:
            names = self._timed(ftp.nlst, self.dir)
            if not {f"{n}" for n in self.stored} <= {n.rsplit("/", 1)[-1] for n in names}:
                self._error("LIST is missing stored files")
        else:
            name = self.rng.choice(list(self.stored))
            self._timed(ftp.delete, f"{self.dir}/{name}")
            self._acked("delete", name)
            del self.stored[name]

    def _stor(self, ftp: ftplib.FTP) -> None:
        data = os.urandom(self.rng.randrange(0, self.max_size))
        name = f"f{self.rng.randrange(10**9)}"
        start = time.perf_counter()
        self._timed(ftp.storbinary, f"STOR {self.dir}/{name}", io.BytesIO(data),
                    nbytes=len(data))
        with self.tally.lock:
            self.tally.stors.append(time.perf_counter() - start)
        self._acked("upload", name)
        self.stored[name] = hashlib.sha256(data).hexdigest()

    def _retr(self, ftp: ftplib.FTP) -> None:
        name = self.rng.choice(list(self.stored))
        out = bytearray()
        self._timed(ftp.retrbinary, f"RETR {self.dir}/{name}", out.extend)
        self.tally.command(0, len(out))
        self._acked("download", name)
        if hashlib.sha256(out).hexdigest() != self.stored[name]:
            with self.tally.lock:
                self.tally.mismatches += 1

    def _timed(self, func, *args, nbytes: int = 0):
        self.doing = " ".join([func.__name__, *(a for a in args if isinstance(a, str))])
        start = time.perf_counter()
        result = func(*args)
        self.tally.command(time.perf_counter() - start, nbytes)
        return result

    def _acked(self, event: str, name: str) -> None:
        """The server said ``event`` on ``name`` (in this session's directory) succeeded."""
        with self.tally.lock:
            self.tally.acked.append((event, f"/{self.dir}/{name}".rstrip("/")))

    def _error(self, error: Union[str, BaseException]) -> None:
        """Count ``error``: a text, or an exception (named with its type, as an EOFError's
        text is empty, and with the command it interrupted)."""
        text = error if isinstance(error, str) else \
            f"{type(error).__name__} in {self.doing}: {error}"
        with self.tally.lock:
            self.tally.errors.append(f"{self.dir} ({self.kind}): {text}")


def _p50_ms(values: list[float]) -> float:
    ordered = sorted(values) or [0.0]
    return round(ordered[len(ordered) // 2] * 1000, 1)


def _p99_ms(values: list[float]) -> float:
    ordered = sorted(values) or [0.0]
    return round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1)


# --- the workers: what they hold


def held(server: ServerProcess) -> dict[int, dict]:
    """Each worker's descriptors, threads and RSS (MiB) now, by pid; its sockets by what
    they are (``sockets``)."""
    found = {}
    for worker in workers_of(server.proc.pid):
        with contextlib.suppress(psutil.Error):
            found[worker.pid] = {"fds": worker.num_fds(), "threads": worker.num_threads(),
                                 "rss_mib": round(worker.memory_info().rss / MIB, 1),
                                 "sockets": sockets(server, worker)}
    return found


def sockets(server: ServerProcess, worker: psutil.Process) -> dict[str, int]:
    """``worker``'s TCP sockets by role and state: listeners, connections to COS (the
    emulator), control connections by client address, others."""
    ports = {server.port: "ftp", int(server.network["implicit_tls_port"]): "ftps"}
    found: Counter = Counter()
    for conn in worker.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN:
            role = "listen"
        elif conn.raddr and conn.raddr.port == server.cos_port:
            role = "cos"
        elif conn.laddr.port in ports:
            role = f"{ports[conn.laddr.port]} from {conn.raddr.ip if conn.raddr else '?'}"
        else:
            role = "data or other"
        found[f"{role} {conn.status}"] += 1
    return dict(sorted(found.items()))


def settle(server: ServerProcess, workers: int,
           baseline: Optional[dict[int, dict]] = None) -> dict:
    """Wait (up to ``SETTLE_SECONDS``) until all ``workers`` run and each holds no more
    threads, and no more descriptors other than its kept-alive connections to COS (as many
    as its pool allows, whoever used them), than in ``baseline`` (without one: the same for
    a second); what they hold then, and how long that took."""
    started, before = time.monotonic(), None
    while True:
        now = held(server)
        reference = before if baseline is None else baseline
        back = len(now) == workers and reference is not None and \
            now.keys() == reference.keys() and all(
                _not_cos(now[pid]) <= _not_cos(reference[pid]) and
                now[pid]["threads"] <= reference[pid]["threads"] for pid in now)
        waited = time.monotonic() - started
        if back or waited > SETTLE_SECONDS:
            return {"workers": now, "settled": back, "after_s": round(waited, 1)}
        before = now
        time.sleep(1.0)


def _not_cos(worker: dict) -> int:
    """A worker's descriptors other than its connections to COS."""
    return worker["fds"] - sum(count for name, count in worker["sockets"].items()
                               if name.startswith("cos "))


def rss_bound_mib(server: ServerProcess, idle: dict[int, dict], sessions: int) -> float:
    """docs/operations.md, "Memory and scheduling": RSS_idle + upload_memory_limit + largest
    part + 2 MiB x concurrent transfers + 16 MiB x max_password_checks, for the worker idlest
    at start being the largest (every session's transfer counted in one worker)."""
    with open(server.config_path, encoding="utf-8") as handle:
        config = parse_config(handle.read(), server.config_path)
    transfer = config.transfer
    part = min(transfer.max_part_size,
               part_size_for(transfer.min_part_size, transfer.single_file_max_size))
    rss_idle = max(worker["rss_mib"] for worker in idle.values())
    return round(rss_idle + (transfer.memory_limit + part) / MIB + 2 * sessions +
                 16 * config.server.max_password_checks, 1)


def cpu_of(server: ServerProcess, emulator: EmulatorProcess) -> dict[str, float]:
    """CPU seconds used so far by the workers (those running now), the emulator and this
    process (the legitimate clients)."""
    groups = {"workers": workers_of(server.proc.pid),
              "emulator": [psutil.Process(emulator.proc.pid)], "clients": [psutil.Process()]}
    used: dict[str, float] = {}
    for name, processes in groups.items():
        used[name] = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                used[name] += times.user + times.system
    return used


def cpu_since(before: dict[str, float], server: ServerProcess,
              emulator: EmulatorProcess) -> tuple[dict[str, float], dict[str, float]]:
    """The CPU seconds each group of ``cpu_of`` used since ``before``, and the new totals."""
    now = cpu_of(server, emulator)
    return {name: round(now[name] - before[name], 1) for name in now}, now


# --- the runs


def run(args: argparse.Namespace) -> dict:
    emulator = EmulatorProcess([BUCKET, HOSTILE_BUCKET]).start()
    workdir = tempfile.mkdtemp(prefix="cosftp-load-")
    cert, key = write_certificate(pathlib.Path(workdir))
    accounts = [Account("load", hash_password("load-pw"), BUCKET),
                Account("hostile", hash_password("hostile-pw"), HOSTILE_BUCKET)]
    server = _server(workdir, emulator, args, accounts, (cert, key))
    try:
        server.start()
        idle = settle(server, args.workers)["workers"]
        result: dict = {"rss_bound_mib": rss_bound_mib(server, idle, args.sessions),
                        "workers_idle": idle}
        cpu = cpu_of(server, emulator)
        result["quiet"] = workload(server, args, "load")
        result["quiet"]["cpu_s"], cpu = cpu_since(cpu, server, emulator)
        after_quiet = settle(server, args.workers)
        result["workers_after"] = after_quiet
        if args.webhook:
            result["webhook"] = hooked(args, os.path.join(workdir, "hooked"), (cert, key))
        if not args.hostile:
            return result
        attackers = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "bench", "attackers.py"),
             "--port", str(server.port), "--implicit-port",
             server.network["implicit_tls_port"], "--user", "hostile",
             "--seconds", str(args.seconds), "--flood", str(args.flood),
             "--guessers", str(args.guessers), "--drippers", str(args.drippers),
             "--stalls", str(args.stalls), "--tls-guessers", str(args.tls_guessers),
             "--garbage", str(args.garbage),
             *(f"--{name}-from={source}" for name, source in ATTACKERS_FROM.items())],
            stdout=subprocess.PIPE, text=True)
        result["hostile"] = workload(server, args, "hostile")
        result["hostile"]["cpu_s"], _ = cpu_since(cpu, server, emulator)
        out, _ = attackers.communicate(timeout=args.seconds + 300)
        result["attackers"] = json.loads(out)
        result["hostile"]["cpu_s"]["attackers"] = result["attackers"].pop("attackers_cpu_s")
        # back to what they held once the quiet run's sessions had gone
        result["workers_after_hostile"] = settle(server, args.workers, after_quiet["workers"])
        return result
    finally:
        server.stop()
        emulator.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _server(workdir: str, emulator: EmulatorProcess, args: argparse.Namespace,
            accounts: list[Account], tls: tuple[str, str],
            hooks: Optional[dict] = None) -> ServerProcess:
    network = {"tls_certfile": tls[0], "tls_keyfile": tls[1],
               "implicit_tls_port": FREE_PORT}
    if args.webhook:  # the spool's wait is read from the metrics: both runs pay for them
        network["metrics_port"] = FREE_PORT
    return ServerProcess(workdir, emulator.port, accounts,
                         optional={"worker_processes": str(args.workers),
                                   "max_connection_num": "0",
                                   "max_connections_per_ip": str(args.sessions + 16),
                                   "upload_memory_limit": str(UPLOAD_MEMORY_MIB),
                                   "log_level": "WARNING"},
                         network=network, hooks=hooks or {})


def hooked(args: argparse.Namespace, workdir: str, tls: tuple[str, str]) -> dict:
    """The workload on a server (and emulator) of its own that sends every event to a
    receiver; then wait until the receiver has the event of every operation a client was
    told succeeded."""
    emulator = EmulatorProcess([HOOKED_BUCKET]).start()
    receiver = Receiver(os.path.join(os.path.dirname(workdir), "received.jsonl"),
                        HOOK_SECRET).start()
    server = _server(workdir, emulator, args,
                     [Account("hooked", hash_password("hooked-pw"), HOOKED_BUCKET)], tls,
                     {"event_hook_url": receiver.url, "event_hook_secret": HOOK_SECRET})
    tally = Tally()
    try:
        server.start()
        settle(server, args.workers)
        cpu = cpu_of(server, emulator)
        helpers = [psutil.Process(receiver.proc.pid), events_process(server)]
        helpers_before = [p.cpu_times() for p in helpers]
        result = workload(server, args, "hooked", tally)
        result["cpu_s"], _ = cpu_since(cpu, server, emulator)
        for name, process, before in zip(("receiver", "events_process"), helpers,
                                         helpers_before):
            after = process.cpu_times()
            result["cpu_s"][name] = round(after.user + after.system - before.user -
                                          before.system, 1)
        result.update(spool_waits(server))
        ended = time.monotonic()
        missing = set(tally.acked)
        while missing and time.monotonic() < ended + 300:
            time.sleep(1.0)
            missing -= {(event["event"], event["path"]) for event in receiver.accepted()}
        ids = [event["event_id"] for event in receiver.accepted()]
        result.update(events_expected=len(set(tally.acked)), events_missing=len(missing),
                      events_received=len(set(ids)), events_sent_twice=len(ids) - len(set(ids)),
                      events_all_in_after_s=round(time.monotonic() - ended, 1),
                      signatures_ok=all(e["verified"] for e in receiver.entries()))
        return result
    finally:
        server.stop()
        receiver.kill()
        emulator.stop()


def events_process(server: ServerProcess) -> psutil.Process:
    return next(p for p in psutil.Process(server.proc.pid).children()
                if "cosftp: events" in " ".join(p.cmdline()))


def spool_waits(server: ServerProcess) -> dict:
    """What the sessions waited for their events to reach the spool's disk: mean and the
    bucket bounds of the median and p99 (``cosftp_event_spool_write_seconds``)."""
    url = f"http://127.0.0.1:{server.network['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=30) as answer:
        text = answer.read().decode()
    samples = {(s.name, s.labels.get("le")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples
               if s.name.startswith("cosftp_event_spool_write_seconds")}
    count = samples[("cosftp_event_spool_write_seconds_count", None)]
    buckets = sorted((float(le), n) for (name, le), n in samples.items()
                     if name.endswith("_bucket"))

    def bound(share: float) -> str:
        return next(f"<= {le * 1000:g} ms" for le, n in buckets if n >= share * count)
    return {"spool_writes": int(count),
            "spool_wait_mean_ms": round(samples[("cosftp_event_spool_write_seconds_sum",
                                                 None)] / max(1, count) * 1000, 2),
            "spool_wait_p50": bound(0.5), "spool_wait_p99": bound(0.99)}


def workload(server: ServerProcess, args: argparse.Namespace, user: str,
             tally: Optional[Tally] = None) -> dict:
    """Run ``args.sessions`` sessions of ``user`` for ``args.seconds`` against ``server``."""
    tally = tally or Tally()
    workers = workers_of(server.proc.pid)
    for worker in workers:
        reset_peak_rss(worker.pid)
    load_before = os.getloadavg()
    started = time.monotonic()
    deadline = started + args.seconds
    logins = threading.Semaphore(LOGINS_AT_ONCE)
    clients = [threading.Thread(target=Client(server, n, tally, deadline, args.max_size,
                                              user, logins).run)
               for n in range(args.sessions)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    elapsed = time.monotonic() - started
    peaks = {}
    for worker in workers:
        with contextlib.suppress(OSError):
            peaks[worker.pid] = round(peak_rss(worker.pid) / MIB, 1)
    return {
        "sessions": sum(tally.sessions.values()), "sessions_by_kind": dict(tally.sessions),
        "seconds": round(elapsed, 1),
        "sessions_per_s": round(sum(tally.sessions.values()) / elapsed, 1),
        "commands": len(tally.latencies),
        "mib_per_s": round(tally.bytes_moved / elapsed / MIB, 1),
        "errors": len(tally.errors), "mismatches": tally.mismatches,
        "p99_ms": _p99_ms(tally.latencies), "login_p99_ms": _p99_ms(tally.logins),
        "stors": len(tally.stors), "stor_p50_ms": _p50_ms(tally.stors),
        "stor_p99_ms": _p99_ms(tally.stors),
        "worker_peak_rss_mib": peaks, "max_worker_rss_mib": max(peaks.values(), default=0),
        "load_average": [round(x, 1) for x in (*load_before, *os.getloadavg())],
        "first_errors": tally.errors[:5],
        "server_log_of_errors": _log_of(server, tally.errors) if tally.errors else [],
    }


def _log_of(server: ServerProcess, errors: list[str]) -> list[str]:
    """The server log's lines that may explain ``errors``: those of the erring clients'
    directories, errors and tracebacks, and the output of the master (last 60)."""
    dirs = {error.split(" ", 1)[0] for error in errors}
    lines = [line for line in server.log_text().splitlines()
             if any(f"/{name}" in line for name in dirs) or
             any(word in line for word in ("ERROR", "CRITICAL", "Traceback", "master"))]
    return lines[-60:] + server.output().splitlines()[-20:]


def _raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def failures(result: dict) -> list[str]:
    """What makes the run fail: errors, corruption, RSS past the bound, an attacker logged
    in, workers not back to what they held."""
    found = []
    for name in ("quiet", "hostile", "webhook"):
        run_ = result.get(name)
        if run_ is None:
            continue
        if run_["errors"] or run_["mismatches"]:
            found.append(f"{name}: {run_['errors']} errors, {run_['mismatches']} mismatches")
        if run_["max_worker_rss_mib"] > result["rss_bound_mib"]:
            found.append(f"{name}: a worker's RSS {run_['max_worker_rss_mib']} MiB passed "
                         f"the bound {result['rss_bound_mib']} MiB")
    for name, report in result.get("attackers", {}).items():
        if report.get("logins_230"):
            found.append(f"{name}: {report['logins_230']} logins")
    webhook = result.get("webhook", {})
    if webhook.get("events_missing") or not webhook.get("signatures_ok", True):
        found.append(f"webhook: {webhook['events_missing']} events never reached the "
                     f"receiver; signatures valid: {webhook['signatures_ok']}")
    settled = result.get("workers_after_hostile")
    if settled is not None and not settled["settled"]:
        found.append("the workers did not come back to their descriptors and threads")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-size", type=int, default=512 * 1024)
    parser.add_argument("--hostile", action="store_true",
                        help="run again with attackers beside the sessions")
    parser.add_argument("--flood", type=int, default=1000, help="idle attacker sockets")
    parser.add_argument("--guessers", type=int, default=10,
                        help="password-guessing connections")
    parser.add_argument("--drippers", type=int, default=10, help="slow-drip connections")
    parser.add_argument("--stalls", type=int, default=400,
                        help="stalled TLS handshakes on the implicit port")
    parser.add_argument("--tls-guessers", type=int, default=8,
                        help="password-guessing TLS connections from each of 4 addresses")
    parser.add_argument("--garbage", type=int, default=4,
                        help="connections sending garbage to the implicit port at once")
    parser.add_argument("--webhook", action="store_true",
                        help="run again on a server sending every event to a receiver")
    args = parser.parse_args(argv)
    _raise_open_files(4 * (args.sessions + args.flood + args.stalls + args.guessers +
                           args.drippers) + 256)
    result = run(args)
    result["failures"] = failures(result)
    print(json.dumps(result, indent=2))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
