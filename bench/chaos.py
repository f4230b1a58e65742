"""Chaos soak: the storage guarantees under reloads, killed workers and COS faults.

Real clients work side by side on a 2-worker server — ``lftp mirror -R`` (times kept),
``rclone sync`` with its defaults (``.partial`` names, then a rename) and ``lftp mirror``
downloads — while the server is reloaded, a worker is SIGKILLed (as the OOM killer does) and
the emulator answers errors (``SlowDown``) and resets connections. Clients may fail during
the chaos; what must hold:

- at every moment, every object under an upload's tree is one of the files sent, whole
  (a checker reads them all again and again): nothing half-written, ever;
- every download that exits 0 is byte-exact;
- after a clean pass (no faults) every client exits 0 and each tree in COS holds exactly its
  source's files at their sizes (uploads a killed worker parked stay until ``resume_ttl``).

A client that does not exit within ``--client-timeout`` seconds broke one too: it is killed
and reported with its command line, its state and CPU time then, its last output (lftp's and
rclone's debug logs, kept per run under the work directory's ``debug/``) and the server's log
lines of its sessions (each client thread logs in as a user of its own, ``chaos-up0``...).
Except one: an lftp whose debug log shows it waiting, asleep, for the reply to a file's
``MFMT`` on a connection the server closed (a killed worker) has met lftp's own bug
(docs/clients.md); it is reported as a known client bug, not as a broken guarantee (its
tree is still checked by the clean pass). ``--lftp-no-times`` avoids that bug instead: lftp
uploads then send no time command (``ftp:use-feat no``, ``ftp:use-site-utime(2) no``).

Other modes: ``--tls`` (FTPS: ``AUTH TLS``, data connections ``PROT P``, for every client),
``--implicit-tls`` (FTPS from the first byte, on the server's ``implicit_tls_port``: lftp
``ftps://``, rclone ``--ftp-tls``, curl ``ftps://``), ``--latency-ms`` (COS answers that
much later while faults are on), ``--curl`` (the third uploader is curl, ``-T`` per
directory), ``--tnftp`` (the third uploader is the classic ``ftp``, tnftp, scripted on its
stdin: plain FTP, it has no TLS), ``--cos-faults`` (besides SlowDown, while faults are on:
InitiateMultipartUpload, CompleteMultipartUpload, UploadPart, PutObject, PUT Object - Copy
and UploadPartCopy answered 500 InternalError or 503 ServiceUnavailable, carried out and
their answer lost (a reset in mid-answer), or lost on the way before COS saw them (a reset
before any answer); parts damaged on the way, which COS's CRC64 tells), ``--stall-ms`` (a lost
answer is held that long first: past lftp's ``net:timeout`` of 20 s, the client gives up
on the reply while the server still waits for COS), ``--seed`` (the emulator's faults)
and ``--cut-mfmt N`` (the lftp uploads connect through ``tests/control_cutter.py``'s relay,
which loses the control connection at the first N ``MFMT`` commands: lftp's hang above,
placed on purpose inside the chaos; plain FTP only, the relay reads the commands).

Run by hand: ``.venv/bin/python bench/chaos.py [--rounds 8] [--fault-rate 0.15]``; exit status
0 when every guarantee held. A client that fails the clean pass gets a second try, for
rclone's own race: a ``.partial`` a killed sync left behind has the name its next sync
uploads under and renames away before deleting the leftover (``Couldn't delete: object not
found``, exit 1).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.client_runs import ClientRun, hang_report, lftp_lost_mfmt, run_client  # noqa: E402
from tests.control_cutter import ControlCutter  # noqa: E402
from tests.crowds import workers_of  # noqa: E402
from tests.emulator_proc import EmulatorProcess  # noqa: E402
from tests.server_proc import FREE_PORT, Account, ServerProcess  # noqa: E402
from tests.tls_clients import write_certificate  # noqa: E402

BUCKET = "chaos-1250000000"
# Empty, one byte, small, one part, a part and a bit (multipart at 1 MiB parts), three parts.
SIZES = (0, 1, 4096, 65536, 1 << 20, (1 << 20) + 17, 3 * (1 << 20) + 5)
RCLONE = shutil.which("rclone", path=os.path.dirname(sys.executable)) or "rclone"
PASSWORD = "chaos-pw"
# What lftp needs for FTPS against the self-signed certificate, and to leave out every
# command that sets a file's time (lftp's MFMT hang, docs/clients.md).
LFTP_TLS = ("set ftp:ssl-force true; set ftp:ssl-protect-data true; "
            "set ssl:verify-certificate no")
LFTP_NO_TIMES = "set ftp:use-feat no; set ftp:use-site-utime no; set ftp:use-site-utime2 no"
# The COS operations --cos-faults fails (500 InternalError, 503 ServiceUnavailable),
# carries out and loses the answer of, or loses on the way before COS sees them (the
# emulator's fail_ops, lose_ops and drop_ops).
FAULTY_OPS = ("InitiateMultipartUpload,CompleteMultipartUpload,UploadPart,PutObject,"
              "CopyObject,UploadPartCopy")
# What tnftp prints for a put the server refused or cut (its replies, with -v): an upload
# that failed, which tnftp does not tell by its exit status.
MKD_EXISTS = re.compile(r"^550 File exists")  # a mkdir of a directory there: no failure
TNFTP_FAILED = re.compile(r"^(?:[45]\d\d .*|.*[Ll]ost connection.*|ftp: .*)$", re.MULTILINE)
# Who logs in: a user per client thread, so that the server log tells its sessions apart.
USERS = ("seed", "up0", "up1", "up2", "rc0", "rc1", "dl0", "dl1")


def make_tree(path: str, count: int, rng: random.Random) -> dict[str, tuple[str, int]]:
    """Write ``count`` files of mixed sizes under ``path``; return their MD5s and sizes by
    path."""
    files = {}
    for i in range(count):
        rel = f"d{i % 4}/f{i}.bin"
        data = rng.randbytes(rng.choice(SIZES))
        os.makedirs(os.path.dirname(os.path.join(path, rel)), exist_ok=True)
        with open(os.path.join(path, rel), "wb") as handle:
            handle.write(data)
        files[rel] = (hashlib.md5(data).hexdigest(), len(data))
    return files


def open_bytes(path: str) -> bytes:
    """The contents of the file at ``path``."""
    with open(path, "rb") as handle:
        return handle.read()


class Soak:
    """One server, its emulator and the clients' work; ``failures`` collects what broke a
    guarantee (a client that hung included), ``known`` the hangs that are lftp's MFMT bug,
    ``runs`` every client run, ``figures`` what was done and checked."""

    def __init__(self, workdir: str, rounds: int, files: int, fault_rate: float,
                 log_level: str, lftp_allo: bool = True,
                 client_timeout: float = 600, lftp_times: bool = True, tls: bool = False,
                 latency_ms: float = 0.0, curl_uploads: bool = False,
                 implicit: bool = False, tnftp_uploads: bool = False, cos_faults: bool = False,
                 stall_ms: float = 0.0, seed: Optional[int] = None, cut_mfmt: int = 0) -> None:
        self.workdir, self.rounds, self.fault_rate = workdir, rounds, fault_rate
        self.lftp_allo, self.client_timeout = lftp_allo, client_timeout
        self.lftp_times, self.tls, self.latency_ms = lftp_times, tls, latency_ms
        self.curl_uploads, self.implicit, self.tnftp_uploads = curl_uploads, implicit, tnftp_uploads
        self.cos_faults, self.stall_ms = cos_faults, stall_ms
        rng = random.Random(7)
        self.sources = {name: make_tree(os.path.join(workdir, "src", name), files, rng)
                        for name in ("up0", "up1", "up2", "rc0", "rc1", "seed")}
        os.makedirs(os.path.join(workdir, "debug"))
        self.failures: list[str] = []
        self.known: list[str] = []
        self.runs: list[ClientRun] = []
        self.figures = dict.fromkeys(("kills", "reloads", "objects read whole",
                                      "downloads byte-exact", "trees exact"), 0)
        self.done = threading.Event()
        seeded = ["--seed", str(seed)] if seed is not None else []
        self.emulator = EmulatorProcess(buckets=[BUCKET], extra_args=seeded).start()
        self.cos = self.emulator.client()
        network = {}
        if tls:
            cert, key = write_certificate(pathlib.Path(workdir))
            network = {"tls_certfile": cert, "tls_keyfile": key}
            if implicit:
                network["implicit_tls_port"] = FREE_PORT
        self.server = ServerProcess(
            os.path.join(workdir, "server"), self.emulator.port,
            [Account(f"chaos-{user}", PASSWORD, BUCKET, "RW") for user in USERS],
            # Two workers: one is killed while the other serves.
            optional={"max_login_failures": "0", "max_connections_per_ip": "0",
                      "log_level": log_level, "worker_processes": "2"},
            network=network).start()
        obscured = subprocess.run([RCLONE, "obscure", PASSWORD], capture_output=True,
                                  text=True, check=True).stdout.strip()
        # Flags, not RCLONE_* variables: rclone logs the settings it takes from its
        # environment to stderr before it opens its log file, which would hide its errors.
        self.rclone_flags = ["--config", os.path.join(workdir, "none.conf"),
                             "--ftp-host", "127.0.0.1", "--ftp-port", str(self.port()),
                             "--ftp-pass", obscured]
        if tls:
            self.rclone_flags += ["--ftp-tls" if implicit else "--ftp-explicit-tls",
                                  "--ftp-no-check-certificate"]
        self.cutter = ControlCutter(self.server.port, "MFMT", cuts=cut_mfmt) \
            if cut_mfmt and not tls else None

    def port(self) -> int:
        """The port the TLS-capable clients connect to: the implicit FTPS one with
        --implicit-tls, else the server's FTP port."""
        if self.implicit:
            return int(self.server.network["implicit_tls_port"])
        return self.server.port

    def close(self) -> None:
        if self.cutter is not None:
            self.cutter.close()
        self.server.stop()
        self.emulator.stop()

    def lftp(self, name: str, user: str, command: str, uploads: bool = False) -> ClientRun:
        """Run ``command`` in lftp as ``chaos-<user>``; the run is called ``name``;
        ``uploads``: it stores files (which --lftp-no-times concerns)."""
        # ftp:use-allo as docs/clients.md advises, unless --lftp-defaults: lftp 4.9.2's retry
        # of an upload refused after its last byte sends 192 KiB of it, which the server
        # tells by ALLO's size, or without it by the bytes (ftp.retries).
        debug = self.debug_log(name)
        settings = (f"debug -t -o {debug} 9; "
                    "set net:max-retries 2; set net:reconnect-interval-base 1; "
                    "set net:timeout 20; set cmd:fail-exit yes; "
                    f"set ftp:use-allo {'yes' if self.lftp_allo else 'no'}")
        if self.tls:
            settings += f"; {LFTP_TLS}"
        if uploads and not self.lftp_times:
            settings += f"; {LFTP_NO_TIMES}"
        port = self.cutter.port if uploads and self.cutter is not None and \
            user != "seed" else self.server.port
        where = [f"ftps://127.0.0.1:{self.port()}"] if self.implicit else \
            ["-p", str(port), "127.0.0.1"]
        return self.client(name, user, [
            "lftp", "-u", f"chaos-{user},{PASSWORD}", "-e", f"{settings}; {command}; exit",
            *where], debug_log=debug)

    def debug_log(self, name: str) -> str:
        """A new file for run ``name``'s client debug log."""
        stem = os.path.join(self.workdir, "debug", name.replace(" ", "-").replace("/", "_"))
        path, again = f"{stem}.log", 1
        while os.path.exists(path):  # the clean pass runs each upload again
            again += 1
            path = f"{stem}.{again}.log"
        open(path, "w").close()
        return path

    def client(self, name: str, user: str, command: list[str], env: Optional[dict] = None,
               debug_log: Optional[str] = None) -> ClientRun:
        """Run a client to its end and keep its run; one that hung broke a guarantee and is
        reported with what it was doing, unless it met lftp's MFMT bug (then it is listed
        as known, with the same report)."""
        run = run_client(name, f"chaos-{user}", command, self.client_timeout, env, debug_log)
        self.runs.append(run)
        if run.hang is not None:
            keep = os.path.join(self.workdir, f"hung-{len(self.runs)}.txt")
            report = hang_report(run, os.path.join(self.server.log_dir, "cosftp.log"), keep)
            lost = lftp_lost_mfmt(run)
            if lost is None:
                self.failures.append(report)
            else:
                self.known.append(f"{run.name}: lftp's MFMT hang (docs/clients.md), its "
                                  f"debug log: {lost!r}, then a lost connection; all in {keep}")
        return run

    def upload(self, kind: str, name: str, target: str) -> ClientRun:
        source = os.path.join(self.workdir, "src", name)
        if kind == "lftp":
            return self.lftp(f"lftp {target}", name,
                             f"mirror -R --parallel=2 {source} /{target}", uploads=True)
        if kind == "curl":
            return self.curl(name, source, target)
        if kind == "tnftp":
            return self.tnftp(name, source, target)
        debug = self.debug_log(f"rclone {target}")
        return self.client(f"rclone {target}", name, [
            RCLONE, "sync", source, f":ftp:/{target}", "--retries", "1",
            "--low-level-retries", "2", "--log-level", "DEBUG", "--log-file", debug,
            *self.rclone_flags, "--ftp-user", f"chaos-{name}"], debug_log=debug)

    def curl(self, name: str, source: str, target: str) -> ClientRun:
        """Upload the tree at ``source`` to ``target`` with one curl: a ``-T {files}`` and
        URL per directory, ``--ftp-create-dirs`` (curl has no retry of its own for FTP)."""
        debug = self.debug_log(f"curl {target}")
        uploads: list[str] = []
        scheme = "ftps" if self.implicit else "ftp"
        for folder in sorted({rel.split("/")[0] for rel in self.sources[name]}):
            files = sorted(rel.split("/")[1] for rel in self.sources[name]
                           if rel.startswith(f"{folder}/"))
            uploads += ["-T", os.path.join(source, folder, "{" + ",".join(files) + "}"),
                        f"{scheme}://127.0.0.1:{self.port()}/{target}/{folder}/"]
        tls = ["--ssl-reqd", "--insecure"] if self.tls else []
        return self.client(f"curl {target}", name, [
            "curl", "-sS", "--ftp-create-dirs", "--user", f"chaos-{name}:{PASSWORD}",
            "--trace-time", "--trace-ascii", debug, *tls, *uploads], debug_log=debug)

    def tnftp(self, name: str, source: str, target: str) -> ClientRun:
        """Upload the tree at ``source`` to ``target`` with one tnftp session, its script on
        stdin (``mkdir``, ``cd``, ``put`` per file; plain FTP: tnftp has no TLS). tnftp exits
        0 when a ``put`` failed: a run whose output holds a failure reply, or a lost
        connection, is given exit status 1."""
        lines = [f"user chaos-{name} {PASSWORD}", "binary", f"mkdir /{target}"]
        for folder in sorted({rel.split("/")[0] for rel in self.sources[name]}):
            lines += [f"mkdir /{target}/{folder}", f"cd /{target}/{folder}"]
            lines += [f"put {os.path.join(source, rel)} {rel.split('/')[1]}"
                      for rel in sorted(self.sources[name]) if rel.startswith(f"{folder}/")]
        script = os.path.join(self.workdir, "debug", f"tnftp-{target}.script")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write("\n".join([*lines, "bye"]) + "\n")
        run = self.client(f"tnftp {target}", name, [
            "sh", "-c", f'exec tnftp -n -v -p 127.0.0.1 {self.server.port} < "$0"', script])
        failed = [line for line in TNFTP_FAILED.findall(run.stdout + run.stderr)
                  if not MKD_EXISTS.search(line)]
        if failed and run.returncode == 0:
            run.returncode = 1
            run.stderr += "\n".join(["", *failed])
        return run

    def targets(self) -> Iterator[tuple[str, str, str]]:
        """(client, source, target) of every upload: one new tree per client and round."""
        for k in range(self.rounds):
            for name in ("up0", "up1", "up2", "rc0", "rc1"):
                kind = "rclone" if name.startswith("rc") else "lftp"
                if name == "up2" and self.curl_uploads:
                    kind = "curl"
                elif name == "up2" and self.tnftp_uploads:
                    kind = "tnftp"
                yield kind, name, f"{name}r{k}"

    def uploads(self, name: str) -> None:
        for kind, source, target in self.targets():
            if source == name:
                self.upload(kind, source, target)

    def downloads(self, index: int) -> None:
        for k in range(self.rounds):
            dest = os.path.join(self.workdir, f"down{index}-{k}")
            done = self.lftp(f"lftp download {index}-{k}", f"dl{index}",
                             f"mirror --parallel=3 /seed {dest}")
            if done.returncode == 0:
                differ = [rel for rel, (md5, _) in self.sources["seed"].items()
                          if md5 != hashlib.md5(open_bytes(os.path.join(dest, rel))).hexdigest()]
                self.failures += [f"download {dest}/{rel} differs" for rel in differ]
                self.figures["downloads byte-exact"] += not differ

    def listing(self, prefix: str) -> dict[str, int]:
        """The data objects under ``prefix`` (no directory markers nor the server's own
        ``.cosftp`` keys), by path below it, with their sizes."""
        found, marker = {}, ""
        while True:
            page = self.cos.list_objects(Bucket=BUCKET, Prefix=prefix, Marker=marker)
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if rel and not rel.endswith("/"):
                    found[rel] = int(obj["Size"])
            if page.get("IsTruncated") != "true":
                return found
            marker = page.get("NextMarker") or page["Contents"][-1]["Key"]

    def read(self, key: str) -> bytes:
        return self.cos.get_object(Bucket=BUCKET, Key=key)["Body"].get_raw_stream().read()

    def check_whole(self) -> None:
        """Read every object of every upload tree until the clients are done: each must be
        one of the source's files, whole (a rename's ``.partial`` source included)."""
        while not self.done.is_set():
            for _, source, target in self.targets():
                files = self.sources[source]
                try:
                    listed = self.listing(f"{target}/")
                except Exception:  # an injected fault: the next sweep reads it
                    continue
                for rel in listed:
                    name = rel.rsplit(".", 2)[0] if rel.endswith(".partial") else rel
                    if name not in files:
                        self.failures.append(f"unexpected object {target}/{rel}")
                        continue
                    try:
                        body = self.read(f"{target}/{rel}")
                    except Exception:  # gone meanwhile, an injected fault or a reset
                        continue
                    if hashlib.md5(body).hexdigest() != files[name][0]:
                        self.failures.append(f"{time.strftime('%T')} {target}/{rel}: "
                                             f"{len(body)} bytes, not whole")
                    else:
                        self.figures["objects read whole"] += 1

    def chaos(self, every: float) -> None:
        """Faults on and off, a reload every fourth beat, a killed worker every seventh."""
        beat = 0
        while not self.done.wait(every):
            beat += 1
            rate = self.fault_rate if beat % 2 else 0.0
            self.emulator.set_faults(error_rate=rate, reset_rate=rate / 2,
                                     latency_ms=self.latency_ms if beat % 2 else 0.0)
            if self.cos_faults:
                self.emulator.set_faults(fail_ops=FAULTY_OPS, fail_rate=rate / 2,
                                         lose_ops=FAULTY_OPS, lose_rate=rate / 4,
                                         drop_ops=FAULTY_OPS, drop_rate=rate / 4,
                                         stall_ms=self.stall_ms, corrupt_part_rate=rate / 4)
            if beat % 4 == 0:
                done = self.server.ctl("reload")
                self.figures["reloads"] += 1
                print(time.strftime("%T"), "reload:", done.returncode, flush=True)
            if beat % 7 == 0:
                victim = workers_of(self.server.proc.pid)[0]
                print(time.strftime("%T"), "SIGKILL worker", victim.pid, flush=True)
                victim.kill()
                self.figures["kills"] += 1

    def run(self, every: float) -> None:
        seeded = self.lftp("lftp seed", "seed",
                           f"mirror -R {os.path.join(self.workdir, 'src', 'seed')} /seed",
                           uploads=True)
        if seeded.returncode:
            raise SystemExit(f"could not seed the download tree: {seeded.stderr}")
        self.runs.remove(seeded)  # set-up, not a run of the chaos
        clients = [threading.Thread(target=self.uploads, args=(name,))
                   for name in ("up0", "up1", "up2", "rc0", "rc1")]
        clients += [threading.Thread(target=self.downloads, args=(i,)) for i in range(2)]
        helpers = [threading.Thread(target=self.check_whole),
                   threading.Thread(target=self.chaos, args=(every,))]
        for thread in clients + helpers:
            thread.start()
        for thread in clients:
            thread.join()
        self.done.set()
        for thread in helpers:
            thread.join()
        self.emulator.set_faults(error_rate=0.0, reset_rate=0.0, latency_ms=0.0, fail_rate=0.0,
                                 lose_rate=0.0, drop_rate=0.0, corrupt_part_rate=0.0)

    def clean_pass(self) -> None:
        """Every upload again without faults: each exits 0 (at its second try: see rclone's
        race above) and leaves its tree exact."""
        for kind, source, target in self.targets():
            done = self.upload(kind, source, target)
            if done.returncode:
                print(f"clean pass: {kind} {target} exited {done.returncode}, again: "
                      f"{done.tail()}")
                done = self.upload(kind, source, target)
            if done.returncode:
                self.failures.append(f"clean pass: {kind} {target} exited "
                                     f"{done.returncode}: {done.tail(4)}")
            stored = self.listing(f"{target}/")
            wanted = {rel: size for rel, (_, size) in self.sources[source].items()}
            if stored != wanted:
                wrong = sorted(set(stored.items()) ^ set(wanted.items()))[:6]
                self.failures.append(f"{target}: objects and sizes differ from the source's: "
                                     f"{wrong}")
            else:
                self.figures["trees exact"] += 1
        # Parked, not lost: the uploads a killed worker left are kept for REST + STOR until
        # resume_ttl, then the janitor aborts them.
        left = self.cos.list_multipart_uploads(Bucket=BUCKET).get("Upload", [])
        print(f"clean pass done; {len(left)} parked multipart uploads")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="trees per client (8)")
    parser.add_argument("--files", type=int, default=24, help="files per tree (24)")
    parser.add_argument("--fault-rate", type=float, default=0.15,
                        help="share of COS requests answered SlowDown while faults are on; "
                             "half as many are reset (0.15)")
    parser.add_argument("--beat", type=float, default=2.5,
                        help="seconds between chaos steps (2.5)")
    parser.add_argument("--log-level", default="INFO", help="the server's (INFO)")
    parser.add_argument("--lftp-defaults", action="store_true",
                        help="lftp without ftp:use-allo (its default)")
    parser.add_argument("--client-timeout", type=float, default=600,
                        help="seconds after which a client that has not exited hung: it is "
                             "killed and reported (600; stretched by the load)")
    parser.add_argument("--lftp-no-times", action="store_true",
                        help="lftp uploads send no MFMT nor SITE UTIME (ftp:use-feat no, "
                             "ftp:use-site-utime(2) no): lftp's MFMT hang cannot happen")
    parser.add_argument("--tls", action="store_true",
                        help="FTPS: lftp and rclone use AUTH TLS and protected data "
                             "connections")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="COS answers every request this much later while faults are on "
                             "(0)")
    parser.add_argument("--curl", action="store_true",
                        help="the third uploader is curl (-T, --ftp-create-dirs), not lftp")
    parser.add_argument("--implicit-tls", action="store_true",
                        help="implicit FTPS (implies --tls): lftp ftps://, rclone --ftp-tls and "
                             "curl ftps:// on the server's implicit_tls_port")
    parser.add_argument("--tnftp", action="store_true",
                        help="the third uploader is tnftp (put per file, plain FTP), not lftp")
    parser.add_argument("--cos-faults", action="store_true",
                        help="while faults are on, also: InitiateMultipartUpload, "
                             "CompleteMultipartUpload, UploadPart, PutObject and copies "
                             "answered 500/503 (half the fault rate), carried out with their "
                             "answer lost (a quarter), lost before COS saw them (a quarter), "
                             "parts damaged (a quarter)")
    parser.add_argument("--stall-ms", type=float, default=0.0,
                        help="with --cos-faults, a lost answer is held this long first (0)")
    parser.add_argument("--seed", type=int, help="the emulator's fault seed (random)")
    parser.add_argument("--cut-mfmt", type=int, default=0,
                        help="lftp uploads go through a relay that loses the control "
                             "connection at the first N MFMTs (plain FTP only; 0)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (the server log, each client's debug "
                             "log) also when every guarantee held")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="cosftp-chaos-")
    print(f"work directory {workdir}; arguments: {' '.join(argv) or '(none)'}", flush=True)
    soak = Soak(workdir, args.rounds, args.files, args.fault_rate, args.log_level,
                lftp_allo=not args.lftp_defaults, client_timeout=args.client_timeout,
                lftp_times=not args.lftp_no_times, tls=args.tls or args.implicit_tls,
                latency_ms=args.latency_ms, curl_uploads=args.curl,
                implicit=args.implicit_tls, tnftp_uploads=args.tnftp,
                cos_faults=args.cos_faults, stall_ms=args.stall_ms, seed=args.seed,
                cut_mfmt=args.cut_mfmt)
    started = time.monotonic()
    try:
        soak.run(args.beat)
        chaos_runs = len(soak.runs)
        failed = [run for run in soak.runs if run.returncode]
        print(f"chaos: {chaos_runs} client runs in {time.monotonic() - started:.0f} s, "
              f"{len(failed)} failed while faults, reloads and kills went on")
        for run in failed:
            print(f"  {run.name}: exit {run.returncode}: {run.tail(2)}")
        soak.clean_pass()
    finally:
        soak.close()
    hung = sum(run.hang is not None for run in soak.runs)
    if soak.cutter is not None:
        print(f"the relay lost {soak.cutter.cut} control connections at MFMT")
    print(f"figures: {chaos_runs} client runs in the chaos, {len(soak.runs) - chaos_runs} in "
          f"the clean pass, {hung} hung ({len(soak.known)} of them lftp's MFMT hang); " +
          ", ".join(f"{count} {what}" for what, count in soak.figures.items()))
    for known in soak.known:
        print("KNOWN CLIENT BUG:", known)
    for failure in soak.failures:
        print("BROKEN:", failure)
    print("every guarantee held" if not soak.failures else f"{len(soak.failures)} broken")
    if not soak.failures and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if soak.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
