"""Crowds of sessions with COS reached over HTTPS (the emulator behind haproxy terminating
TLS), as real deployments reach it: two workers, a couple of dozen sessions at once, each
session's thread and the workers' pools sharing the pooled TLS connections of
``cos.signed``. Small files and multipart uploads, whole and REST downloads, downloads the
client cuts off half-way (the half-read TLS connection must be dropped, never pooled),
uploads aborted or broken off (parked, then resumed), renames and listings, FTPS sessions
(their downloads read ahead by a thread), curl and lftp among them; then every byte is
compared with what was sent, nothing half-written is left in COS, and the workers are back
to the threads and descriptors they had, their COS connections bounded by the pool and
none half-read. The same crowd again under faults (503s, downloads cut half-way, latency)
loses nothing either.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import ftplib
import hashlib
import io
import os
import random
import socket
import struct
import subprocess
import traceback
import uuid
from collections.abc import Callable

import psutil
import pytest
import urllib3
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from requests import RequestException

from .conftest import ALPHA
from .crowds import workers_of
from .emulator_proc import all_keys
from .ftps import tls_login
from .server_proc import FREE_PORT, Account, ServerProcess, tls_network, wait_until
from .test_clients import lftp_command, require
from .test_cos_https import tls_front  # noqa: F401  (the fixture)
from .test_operating import scrape
from .test_reliability import faults  # noqa: F401  (the fixture)
from .test_resume import break_upload, park_records, parts_of, rest_stor
from .test_transfers import abort_transfer, abort_waiting
from .tls_clients import write_certificate
from .tls_front import environment

MIB = 1024 * 1024
SESSIONS = 24
TIMEOUT = 60  # a session that waits this long on a reply has hung: the test fails
BIG = 6 * MIB + 5  # the object the downloads read whole and from REST offsets
# The one they cut short: more than the socket buffers between the pump and the client hold
# (4 MiB to send, the client's, a chunk in the pump), so the server cannot have sent it all.
HUGE = 24 * MIB + 3
# An object whose GET's answer fits one TLS record (see the last test).
TINY = 12_000
POOL = 4 + 2 * 8 + 16  # server/services.py: upload threads + copy and look-up threads + 16
ACCOUNT = Account("alice", "alice-pw", ALPHA, protocol="https")  # cos_port: the TLS front's


@pytest.fixture(scope="module")
def crowd_server(tls_front, cos, tmp_path_factory):  # noqa: F811
    """Two workers on HTTPS COS, FTPS offered, no per-address caps (the crowd comes from
    one address),
    ``copy_thread_num`` fixed so the pool's bound is known; warmed up by a session of each
    kind first, so that what a worker starts once (pools, clients, metric files) is in the
    baseline."""
    account = dataclasses.replace(ACCOUNT, cos_port=tls_front.port)
    proc = ServerProcess(
        str(tmp_path_factory.mktemp("https-crowd")), 0, [account],
        network={"metrics_port": FREE_PORT,
                 **tls_network(*write_certificate(tmp_path_factory.mktemp("ftps")))},
        optional={"max_login_failures": "0", "max_connections_per_ip": "0",
                  "max_prelogin_connections_per_ip": "0", "copy_thread_num": "8",
                  "upload_thread_num": "4", "worker_processes": "2"},
        env=environment(tls_front.ca))
    with proc:
        wait_until(lambda: len(workers_of(proc.proc.pid)) == 2, what="both workers")
        Crowd(proc, cos, f"warm-up-{uuid.uuid4().hex[:6]}",
              tmp_path_factory.mktemp("warm-up")).run(len(Crowd.KINDS), seed=0)
        yield proc


class Crowd:
    """What one crowd stores: ``expected`` key -> SHA-256 of its bytes, filled by the
    sessions as they confirm each upload, and the ``resumed`` keys (parked uploads
    continued)."""

    def __init__(self, server: ServerProcess, cos, area: str, tmp_path) -> None:
        self.server, self.cos, self.area, self.tmp_path = server, cos, area, tmp_path
        self.expected: dict[str, str] = {}
        self.resumed: list[str] = []
        self.big = os.urandom(BIG)
        self.small = os.urandom(40_000)
        self.tiny = os.urandom(TINY)
        self.huge = os.urandom(HUGE)
        for name, data in (("big", self.big), ("small", self.small), ("huge", self.huge),
                           ("tiny", self.tiny)):
            cos.put_object(Bucket=ALPHA, Key=f"{area}/{name}", Body=data)
            self._stored(f"{area}/{name}", data)

    def _stored(self, key: str, data: bytes) -> None:
        self.expected[key] = hashlib.sha256(data).hexdigest()

    def login(self) -> ftplib.FTP:
        ftp = self.server.login("alice", "alice-pw", timeout=TIMEOUT)
        ftp.voidcmd("TYPE I")
        return ftp

    def put(self, ftp: ftplib.FTP, key: str, data: bytes, rest: int = 0) -> None:
        reply = ftp.storbinary(f"STOR {key}", io.BytesIO(data[rest:]), rest=rest or None)
        assert reply.startswith("226"), (key, reply)
        self._stored(key, data)

    def mkd(self, ftp: ftplib.FTP, folder: str) -> None:
        ftp.mkd(folder)
        self._stored(folder + "/", b"")  # the folder's marker

    @staticmethod
    def get(ftp: ftplib.FTP, key: str, rest: int = 0) -> bytes:
        received = bytearray()
        ftp.retrbinary(f"RETR {key}", received.extend, rest=rest or None)
        return bytes(received)

    # --- what the sessions do (``index`` makes names and sizes of their own)

    def small_files(self, index: int, rng: random.Random) -> None:
        ftp = self.login()
        folder = f"{self.area}/small{index}"
        self.mkd(ftp, folder)
        files = {f"{folder}/f{n}": os.urandom(size) for n, size in enumerate(
            [0, 1, 4095, 64 * 1024, 64 * 1024 + 1, rng.randrange(100_000, 300_000)])}
        for key, data in files.items():
            self.put(ftp, key, data)
        for key, data in files.items():
            assert self.get(ftp, key) == data, key
        assert sorted(ftp.nlst(folder)) == sorted(name.rpartition("/")[2] for name in files)
        ftp.quit()

    def multipart(self, index: int, rng: random.Random) -> None:
        ftp = self.login()
        key = f"{self.area}/multi{index}"
        data = os.urandom(3 * MIB + rng.randrange(1, MIB))
        self.put(ftp, key, data)
        assert ftp.size(key) == len(data)
        assert self.get(ftp, key) == data
        offset = MIB + rng.randrange(1, MIB)
        assert self.get(ftp, key, rest=offset) == data[offset:]
        ftp.quit()

    def cut_download(self, index: int, rng: random.Random) -> None:
        """The client closes (or resets) the data connection after some of a big file: 426,
        and the session's next downloads, of the same file and another, are whole."""
        ftp = self.login()
        for reset in (False, True):
            conn = _cut_later(ftp.transfercmd(f"RETR {self.area}/huge"))
            wanted, received = rng.randrange(64 * 1024, 2 * MIB), bytearray()
            while len(received) < wanted:
                chunk = conn.recv(256 * 1024)
                assert chunk, "the download ended early"
                received += chunk
            if reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            assert self.huge.startswith(bytes(received))
            with pytest.raises(ftplib.error_temp, match=r"^426"):
                ftp.voidresp()
            assert self.get(ftp, f"{self.area}/small") == self.small
        assert self.get(ftp, f"{self.area}/big") == self.big
        ftp.quit()

    def abor_download(self, index: int, rng: random.Random) -> None:
        """ABOR during a download, and of one whose data connection never came: the
        session's next listing and download are theirs."""
        ftp = self.login()
        conn = _cut_later(ftp.transfercmd(f"RETR {self.area}/huge"))
        assert conn.recv(256 * 1024)
        replies = abort_transfer(ftp, conn)
        assert replies[0].startswith("426") and replies[-1].startswith("226"), replies
        ftp.makepasv()
        assert ftp.sendcmd(f"RETR {self.area}/tiny").startswith("150")
        abort_waiting(ftp)
        assert "tiny" in ftp.nlst(self.area)
        offset = rng.randrange(1, BIG)
        assert self.get(ftp, f"{self.area}/big", rest=offset) == self.big[offset:]
        ftp.quit()

    def ftps(self, index: int, rng: random.Random) -> None:
        """AUTH TLS and PROT P: a download goes through pyftpdlib's TLS path, COS read by a
        read-ahead thread of its own, which a cut (the client's close, or ABOR) stops
        while it may be reading the COS connection; a multipart upload over TLS both ways."""
        ftp = tls_login(self.server, ACCOUNT)
        ftp.voidcmd("TYPE I")
        conn = _cut_later(ftp.transfercmd(f"RETR {self.area}/huge"))
        received = bytearray()
        while len(received) < rng.randrange(64 * 1024, MIB):
            chunk = conn.recv(256 * 1024)
            assert chunk, "the download ended early"
            received += chunk
        conn.close()
        assert self.huge.startswith(bytes(received))
        with pytest.raises(ftplib.error_temp, match=r"^426"):
            ftp.voidresp()
        conn = _cut_later(ftp.transfercmd(f"RETR {self.area}/huge"))
        assert conn.recv(64 * 1024)
        replies = abort_transfer(ftp, conn)
        assert replies[0].startswith("426") and replies[-1].startswith("226"), replies
        key = f"{self.area}/ftps{index}"
        data = os.urandom(2 * MIB + rng.randrange(MIB))
        self.put(ftp, key, data)
        assert self.get(ftp, key) == data
        assert self.get(ftp, f"{self.area}/big") == self.big
        ftp.quit()

    def aborted_upload(self, index: int, rng: random.Random) -> None:
        """ABOR during a multipart upload: nothing stored, no upload left open."""
        ftp = self.login()
        key = f"{self.area}/aborted{index}"
        conn = ftp.transfercmd(f"STOR {key}")
        conn.sendall(os.urandom(2 * MIB + rng.randrange(MIB)))
        wait_until(lambda: _quietly(lambda: parts_of(self.cos, key)), timeout=TIMEOUT,
                   what="a part in COS")
        abort_transfer(ftp, conn)
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.size(key)
        ftp.quit()

    def parked_upload(self, index: int, rng: random.Random) -> None:
        """A killed client's upload is parked; a new session resumes it from SIZE."""
        ftp = self.login()
        key = f"{self.area}/parked{index}"
        data = os.urandom(4 * MIB + rng.randrange(MIB))
        conn = ftp.transfercmd(f"STOR {key}")
        conn.sendall(data[:2 * MIB + rng.randrange(1, MIB)])
        wait_until(lambda: _quietly(lambda: len(parts_of(self.cos, key)) >= 2),
                   timeout=TIMEOUT, what="2 parts in COS")
        ftp.sock.close()
        ftp.close()
        conn.close()
        wait_until(lambda: _quietly(lambda: park_records(self.cos, key)), timeout=TIMEOUT,
                   what="the park")
        ftp = self.login()
        offset = ftp.size(key)
        assert offset == 2 * MIB, offset
        self.put(ftp, key, data, rest=offset)
        self.resumed.append(key)
        assert self.get(ftp, key) == data
        ftp.quit()

    def renames(self, index: int, rng: random.Random) -> None:
        ftp = self.login()
        folder = f"{self.area}/ren{index}"
        self.mkd(ftp, folder)
        self.mkd(ftp, f"{folder}/sub")
        small, multi = os.urandom(rng.randrange(1, 50_000)), os.urandom(MIB + 7)
        self.put(ftp, f"{folder}/a", small)
        self.put(ftp, f"{folder}/b", multi)
        ftp.rename(f"{folder}/a", f"{folder}/a2")
        ftp.rename(f"{folder}/b", f"{folder}/sub/b2")
        for gone in ("a", "b"):
            del self.expected[f"{folder}/{gone}"]
        self._stored(f"{folder}/a2", small)
        self._stored(f"{folder}/sub/b2", multi)
        assert sorted(ftp.nlst(folder)) == ["a2", "sub"]
        assert [name for name, _ in ftp.mlsd(f"{folder}/sub")
                if name not in (".", "..")] == ["b2"]
        assert self.get(ftp, f"{folder}/a2") == small
        assert self.get(ftp, f"{folder}/sub/b2") == multi
        ftp.quit()

    def curl(self, index: int, rng: random.Random) -> None:
        """curl uploads a multipart file, then resumes a download of it (REST)."""
        curl = require("curl")
        data = os.urandom(2 * MIB + rng.randrange(MIB))
        source = self.tmp_path / f"curl{index}.up"
        source.write_bytes(data)
        key = f"{self.area}/curl{index}"
        url = f"ftp://alice:alice-pw@127.0.0.1:{self.server.port}/{key}"
        _ran([curl, "-sS", "-T", str(source), url])
        self._stored(key, data)
        target = self.tmp_path / f"curl{index}.down"
        target.write_bytes(data[:rng.randrange(1, len(data))])
        _ran([curl, "-sS", "-C", "-", "-o", str(target), url])
        assert target.read_bytes() == data

    def lftp_pget(self, index: int, rng: random.Random) -> None:
        """lftp's segmented download: each segment a REST download that lftp gives up at
        the next segment's start (over AUTH TLS, which lftp uses where offered), and a
        segment its first connection reached first is aborted (ABOR), maybe before its
        data connection's TLS handshake is done."""
        target = self.tmp_path / f"pget{index}"
        _ran(lftp_command(self.server, "set ssl:verify-certificate no; "
                          f"pget -n 4 {self.area}/big -o {target}"))
        assert target.read_bytes() == self.big

    KINDS = ("small_files", "multipart", "cut_download", "abor_download", "aborted_upload",
             "parked_upload", "renames", "curl", "lftp_pget", "ftps")

    def run(self, sessions: int, seed: int) -> None:
        """``sessions`` sessions at once, of each kind in turn; fail with every session's
        failure if any failed."""
        jobs: list[tuple[str, Callable[[], None]]] = []
        for index in range(sessions):
            kind = self.KINDS[index % len(self.KINDS)]
            rng = random.Random(seed * 1000 + index)
            jobs.append((f"{kind}#{index}", lambda k=kind, i=index, r=rng:
                         getattr(self, k)(i, r)))
        failures = []
        with concurrent.futures.ThreadPoolExecutor(sessions) as pool:
            futures = {pool.submit(job): name for name, job in jobs}
            for future in concurrent.futures.as_completed(futures):
                if future.exception() is not None:
                    failures.append(f"{futures[future]}: " + "".join(
                        traceback.format_exception(future.exception())))
        assert not failures, "\n".join(failures)

    def check_cos(self) -> None:
        """COS holds exactly what the sessions stored, byte for byte; no multipart upload
        is left open under the area, no park record of a resumed upload stays."""
        assert all_keys(self.cos, ALPHA, self.area + "/") == sorted(
            key for key in self.expected)
        for key, digest in self.expected.items():
            body = self.cos.get_object(Bucket=ALPHA, Key=key)["Body"].get_raw_stream().read()
            assert hashlib.sha256(body).hexdigest() == digest, key
        uploads = self.cos.list_multipart_uploads(Bucket=ALPHA, Prefix=self.area + "/")
        assert uploads.get("Upload", []) == [], uploads
        for key in self.resumed:
            assert park_records(self.cos, key) == [], key


def _cut_later(conn: socket.socket) -> socket.socket:
    """A data connection whose receive buffer stays small: the server cannot have sent the
    file before the client cuts the download (Linux grows it to 32 MiB otherwise)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    return conn


def _quietly(check: Callable[[], object]) -> object:
    """``check()``, False where the test's own SDK client met an injected fault."""
    try:
        return check()
    except (CosClientError, CosServiceError, RequestException, urllib3.exceptions.HTTPError):
        return False


def _ran(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}: {done.stderr}"


def _cos_connections(worker: psutil.Process, port: int) -> tuple[int, int]:
    """How many TCP connections ``worker`` holds to COS (the TLS front's ``port``), and
    the bytes COS sent on them that the worker has not read (the kernel's receive queues,
    ``/proc/PID/net/tcp``): a connection kept after its answer was read whole has none."""
    inodes = set()
    for fd in os.listdir(f"/proc/{worker.pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{worker.pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = unread = 0
    with open(f"/proc/{worker.pid}/net/tcp", encoding="ascii") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].rpartition(":")[2], 16) == port:
                count += 1
                unread += int(fields[4].partition(":")[2], 16)
    return count, unread


class Footprint:
    """The workers' threads, descriptors and COS connections now."""

    def __init__(self, server: ServerProcess, port: int) -> None:
        self.port = port
        self.workers = workers_of(server.proc.pid)
        assert len(self.workers) == 2, self.workers
        self.threads = [worker.num_threads() for worker in self.workers]
        self.fds = [worker.num_fds() for worker in self.workers]
        self.cos = [_cos_connections(worker, port)[0] for worker in self.workers]

    def settled_to(self, baseline: Footprint) -> str:
        """'' once each worker is back to the baseline's threads, holds at most the pool's
        COS connections, none of them with bytes unread (half-read), and no descriptor more
        than those COS connections explain; else what is not."""
        wrong = []
        for n, worker in enumerate(baseline.workers):
            threads, fds = worker.num_threads(), worker.num_fds()
            cos, unread = _cos_connections(worker, self.port)
            if threads > baseline.threads[n] or cos > POOL or unread or \
                    fds > baseline.fds[n] + max(0, cos - baseline.cos[n]):
                wrong.append(f"worker {worker.pid}: threads {threads} (was "
                             f"{baseline.threads[n]}), descriptors {fds} (was "
                             f"{baseline.fds[n]}), COS connections {cos} (was "
                             f"{baseline.cos[n]}, pool {POOL}) with {unread} bytes unread")
        return "; ".join(wrong)


def _errors(server: ServerProcess) -> dict[str, float]:
    """COS request attempts that got no answer (``unanswered``: the connection failed, or
    what came was no answer, as the rest of an old body is), that got a 5xx, and retries,
    summed over operations. (The crowd under 503s comes last: its retries may go on in the
    background for a while.)"""
    totals = {"unanswered": 0.0, "5xx": 0.0, "retries": 0.0}
    for (name, labels), count in scrape(server).items():
        status = dict(labels).get("status", "")
        if name == "cosftp_cos_requests_total" and status == "error":
            totals["unanswered"] += count
        elif name == "cosftp_cos_requests_total" and status.startswith("5"):
            totals["5xx"] += count
        elif name == "cosftp_cos_retries_total":
            totals["retries"] += count
    return totals


def _crowd(server: ServerProcess, cos, area: str, tmp_path, port: int, seed: int,
           set_faults: Callable[..., object] = lambda **_: None, **injected: float) -> Crowd:
    """Run the crowd (with the ``injected`` faults meanwhile), and check COS and the
    workers after it; the crowd."""
    baseline = Footprint(server, port)
    crowd = Crowd(server, cos, area, tmp_path)
    set_faults(**injected)
    try:
        crowd.run(SESSIONS, seed)
    finally:
        set_faults(**dict.fromkeys(injected, 0))
    crowd.check_cos()
    last = ""

    def settled() -> bool:
        nonlocal last
        last = Footprint(server, port).settled_to(baseline)
        return not last

    try:
        wait_until(settled, timeout=30)
    except AssertionError:
        raise AssertionError(f"the workers did not settle: {last}") from None
    return crowd


def test_a_crowd_over_https_loses_nothing_and_leaves_nothing(crowd_server, tls_front,  # noqa: F811
                                                             cos, area, tmp_path):
    """No COS request fails or is retried on a quiet emulator: a pooled TLS connection
    handed back half-read would answer the next request with the rest of a body."""
    before = _errors(crowd_server)
    _crowd(crowd_server, cos, area, tmp_path, tls_front.port, seed=1)
    assert _errors(crowd_server) == before


def test_downloads_cos_cuts_over_tls_are_reopened_and_their_connections_dropped(
        crowd_server, cos, area, faults):  # noqa: F811
    """COS (haproxy's TLS) cuts a download half-way, twice, whole and from a REST offset:
    the download is reopened and whole, and the cut connections are not pooled: the
    requests after them (the session's and the next downloads') all succeed at the first
    attempt."""
    data = os.urandom(3 * MIB + 17)
    cos.put_object(Bucket=ALPHA, Key=area, Body=data)
    ftp = crowd_server.login("alice", "alice-pw")
    before = _errors(crowd_server)
    for rest in (0, MIB + 1, 0):
        faults(reset_next=2)
        assert Crowd.get(ftp, area, rest=rest) == data[rest:]
        assert faults()["reset_next"] == 0
        assert ftp.size(area) == len(data) and ftp.nlst(area) == [area]
    ftp.quit()
    assert _errors(crowd_server) == before
    assert crowd_server.log_text().count(f"/{area}: COS stream broke") == 6


@pytest.mark.parametrize("cuts", [1, 2])
def test_a_resume_whose_park_record_is_cut_short_goes_on(crowd_server, cos, area, cuts,
                                                         faults):  # noqa: F811
    """The GET of a parked upload's record is cut half-way (a reset over TLS), once or
    twice: it is read again, and the resume goes on (before: 451 StreamError, first seen
    in the crowd under faults)."""
    data = os.urandom(3 * MIB + 11)
    break_upload(crowd_server.login("alice", "alice-pw"), cos, area, data[:2 * MIB + 5], 2)
    ftp = crowd_server.login("alice", "alice-pw")
    ftp.voidcmd("TYPE I")
    faults(reset_next=cuts)
    assert ftp.size(area) == 2 * MIB
    assert rest_stor(ftp, area, 2 * MIB, data[2 * MIB:]).startswith("226")
    assert faults()["reset_next"] == 0  # the cuts were spent on the record
    assert Crowd.get(ftp, area) == data
    ftp.quit()


def test_a_download_aborted_before_its_data_connection_is_given_up(crowd_server, cos, area):
    """PASV, RETR (its GET answered, the body unread on a pooled TLS connection), then ABOR
    before connecting: the download is closed there, not left queued for the session's
    next data connection (before: the next listing's data connection got the file first),
    and its half-read connection is not reused: no COS request fails.

    Why TLS: an answer of ~12 KB comes in one TLS record, of which reading the head (8 KiB
    at a time) decrypts it all; the body's tail then waits in the TLS layer, where a poll of
    the socket (urllib3's check of a pooled connection) sees nothing. A half-read connection
    put back in the pool is then taken for the next request, which reads the old body's
    tail as its answer (the LIST after each ABOR failed so, when ``StreamedBody`` pooled
    it on purpose)."""
    data = os.urandom(TINY)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/file", Body=data)
    ftp = crowd_server.login("alice", "alice-pw")
    ftp.voidcmd("TYPE I")
    before = _errors(crowd_server)
    for _ in range(5):
        ftp.makepasv()
        assert ftp.sendcmd(f"RETR {area}/file").startswith("150")
        abort_waiting(ftp)
        assert ftp.nlst(area) == ["file"]
        assert ftp.size(f"{area}/file") == len(data)
    assert Crowd.get(ftp, f"{area}/file") == data
    ftp.quit()
    assert _errors(crowd_server) == before


def test_a_tls_data_connection_closed_in_its_handshake_gets_its_transfer_a_reply(
        crowd_server, cos, area):
    """PROT P, a data connection that closes before its TLS handshake is done, after the
    RETR on it was answered 125: 426, and the session goes on (before: no reply at all,
    and the client waited for one until it gave up; seen as lftp's ``pget`` hanging in the
    crowd: it had dropped one of its segments' connections that early)."""
    cos.put_object(Bucket=ALPHA, Key=area, Body=b"x" * 100_000)
    ftp = tls_login(crowd_server, ACCOUNT)
    ftp.voidcmd("TYPE I")
    host, port = ftp.makepasv()
    with socket.create_connection((host, port), timeout=TIMEOUT):  # no TLS handshake
        assert ftp.sendcmd(f"RETR {area}").startswith("125")
    with pytest.raises(ftplib.error_temp, match=r"^426 The data connection closed before"):
        ftp.getresp()
    assert ftp.voidcmd("NOOP").startswith("200")
    assert Crowd.get(ftp, area) == b"x" * 100_000
    ftp.quit()


def test_a_crowd_over_https_under_faults_loses_nothing(crowd_server, tls_front, cos,  # noqa: F811
                                                       area, tmp_path, faults):  # noqa: F811
    """503s, downloads cut half-way (the first two GETs, then one in a hundred) and
    latency over TLS: retried, reopened, and still every byte is right and nothing is left
    behind. (Three cuts of one download would fail it with 451: a client's to retry.)"""
    before = _errors(crowd_server)
    _crowd(crowd_server, cos, area, tmp_path, tls_front.port, seed=2, set_faults=faults,
           error_rate=0.03, reset_next=2, reset_rate=0.01, latency_ms=10)
    after = _errors(crowd_server)
    assert after["retries"] > before["retries"], (before, after)  # the 503s reached it
    # The two cuts were spent (on whichever downloads came first: some of those are cut by
    # their clients before the half-way point anyway; test_downloads_cos_cuts_... cuts for
    # sure).
    assert faults()["reset_next"] == 0
