"""The worker's transfer engine end to end: fair pools, the memory budget and part sizes,
seen through a real server, real FTP clients and the emulator."""

from __future__ import annotations

import ftplib
import io
import os
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from .conftest import ALPHA, BETA, TWO_WORKERS
from .emulator_proc import EmulatorProcess
from .server_proc import Account, ServerProcess, wait_until
from .test_commands import get, put

MIB = 1024 * 1024
ACCOUNTS = [Account("alice", "alice-pw", ALPHA), Account("bob", "bob-pw", BETA)]


@pytest.fixture
def slow_emulator():
    """An emulator of its own: latency applies to every request it serves."""
    emu = EmulatorProcess(buckets=[ALPHA, BETA])
    emu.start()
    yield emu
    emu.stop()


def stored(server: ServerProcess, user: str, path: str, data: bytes) -> None:
    ftp = server.login(user, f"{user}-pw")
    try:
        assert put(ftp, path, data).startswith("226")
    finally:
        ftp.quit()


def test_a_directory_rename_does_not_starve_another_users_upload(slow_emulator, tmp_path,
                                                                 area):
    """Another user's upload that starts while a rename of 600 keys copies is stored before
    the rename ends: its parts do not queue behind the rename's copies (at 100 ms a request
    the copies take seconds, the upload's few parts a fraction of that)."""
    cos = slow_emulator.client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: cos.put_object(Bucket=ALPHA, Key=f"{area}/d/{n:04}", Body=b"k"),
                      range(600)))
    data = os.urandom(3 * MIB)
    with ServerProcess(str(tmp_path), slow_emulator.port, ACCOUNTS,
                       optional={"copy_thread_num": "32"}) as server:
        slow_emulator.set_faults(latency_ms=100)
        renamer = server.login("alice", "alice-pw", timeout=300)
        replies: list[str] = []
        rename = threading.Thread(
            target=lambda: replies.append(renamer.rename(f"{area}/d", f"{area}/e")))
        rename.start()
        wait_until(lambda: slow_emulator.requests(contains=f"{area}/").get("COPY", 0) > 20,
                   timeout=60, what="the rename copying")
        stored(server, "bob", f"{area}-during", data)
        still_copying = rename.is_alive()
        rename.join(timeout=300)
        renamer.quit()
        slow_emulator.set_faults(latency_ms=0)
    assert replies and replies[0].startswith("250")
    assert still_copying, "the upload waited for the whole rename"
    keys = cos.list_objects(Bucket=ALPHA, Prefix=f"{area}/e/", MaxKeys=1000).get("Contents", [])
    assert len(keys) == 600


def worker_rss(server: ServerProcess) -> int:
    master = psutil.Process(server.proc.pid)
    return sum(child.memory_info().rss for child in master.children())


def settled_rss(server: ServerProcess) -> int:
    """The workers' RSS once it stops falling (each worker trims malloc once a second)."""
    lowest, since = worker_rss(server), time.monotonic()
    deadline = since + 15
    while time.monotonic() < deadline and time.monotonic() - since < 2.5:
        time.sleep(0.2)  # sampling, not synchronisation
        now = worker_rss(server)
        if now < lowest - MIB:
            lowest, since = now, time.monotonic()
    return min(lowest, worker_rss(server))


def test_sixteen_uploads_to_slow_cos_stay_inside_the_budget(slow_emulator, tmp_path, area):
    """16 uploads of 16 MiB in 2 MiB parts at 400 ms per request: without a budget each
    upload holds (upload_thread_num + 1) parts, 160 MiB over the two workers. With 8 MiB per
    worker, the README's bound holds. The sessions log in one by one first: each login's
    scrypt check takes 16 MiB for a moment, which glibc may keep."""
    optional = {"upload_memory_limit": "8", "min_part_size": str(2 * MIB),
                "upload_thread_num": "4", "log_level": "INFO", **TWO_WORKERS}
    with ServerProcess(str(tmp_path), slow_emulator.port, ACCOUNTS, optional=optional) as server:
        for n in range(2):  # one upload per worker first: what every process allocates once
            assert _put_as(server, "alice", f"{area}/warm-{n}", os.urandom(5 * MIB))[:3] == "226"
        idle = settled_rss(server)
        sessions = [server.login("alice", "alice-pw", timeout=120) for _ in range(16)]
        settled_rss(server)  # the logins' scrypt memory is given back (or kept) first
        slow_emulator.set_faults(latency_ms=400)
        data = os.urandom(16 * MIB)
        peak, done = [idle], threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], worker_rss(server))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(16) as pool:
                replies = list(pool.map(lambda n: put(sessions[n], f"{area}/{n}", data),
                                        range(16)))
        finally:
            done.set()
            sampler.join()
            slow_emulator.set_faults(latency_ms=0)
        assert all(reply.startswith("226") for reply in replies), replies
        assert get(sessions[7], f"{area}/7") == data
        for ftp in sessions:
            ftp.quit()
    # Per worker: budget, one part, the 16 MiB of one login's scrypt; 2 MiB per transfer.
    growth, bound = (peak[0] - idle) / MIB, 2 * (8 + 2 + 16) + 16 * 2
    assert growth < bound, f"workers grew by {growth:.0f} MiB for 16 uploads (bound {bound})"


def _put_as(server: ServerProcess, user: str, path: str, data: bytes) -> str:
    ftp = server.login(user, f"{user}-pw", timeout=120)
    try:
        return put(ftp, path, data)
    finally:
        ftp.quit()


def test_parts_start_at_min_part_size_whatever_the_largest_file(emulator, tmp_path, area):
    """With the default single_file_max_size of 200 GiB, a 3.5 MiB file goes up in 1 MiB
    parts, not as one PUT of a part sized for 200 GiB."""
    cos = emulator.client()
    with ServerProcess(str(tmp_path), emulator.port, ACCOUNTS,
                       file_option={"single_file_max_size": str(200 * 1024 ** 3)}) as server:
        ftp = server.login("alice", "alice-pw")
        emulator.requests(reset=True, contains=area)
        assert put(ftp, f"{area}/f", os.urandom(3 * MIB + MIB // 2)).startswith("226")
        ftp.quit()
    # Initiate and complete (UploadPart is counted with the PUTs, and so is a live marker).
    assert emulator.requests(contains=area).get("POST", 0) == 2
    head = cos.head_object(Bucket=ALPHA, Key=f"{area}/f")
    assert head["ETag"].endswith('-4"')


def test_allo_announces_the_size_and_refuses_what_cannot_be_stored(server, area):
    ftp = server.login("alice", "alice-pw")
    try:
        limit = 1024 ** 3  # the test server's single_file_max_size
        with pytest.raises(ftplib.error_perm, match=r"^552"):
            ftp.sendcmd(f"ALLO {limit + 1}")
        with pytest.raises(ftplib.error_perm, match=r"^501"):
            ftp.sendcmd("ALLO lots")
        data = os.urandom(2 * MIB + 3)
        assert ftp.sendcmd(f"ALLO {len(data)}").startswith("200")
        assert ftp.storbinary(f"STOR {area}", io.BytesIO(data)).startswith("226")
        assert get(ftp, area) == data
    finally:
        ftp.quit()


class Dripper:
    """An upload that sends ``head`` bytes, then one byte every 0.2 s until it is cut off
    or ``stop`` is called (then it resets its data connection: nothing may be stored); what
    the server answered."""

    def __init__(self, server: ServerProcess, path: str, head: int) -> None:
        self.ftp = server.login("alice", "alice-pw", timeout=120)
        self.ftp.voidcmd("TYPE I")
        self.conn = self.ftp.transfercmd(f"STOR {path}")
        self.conn.sendall(b"d" * head)
        self.reply = ""
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._drip)
        self.thread.start()

    def _drip(self) -> None:
        try:
            while not self._stop.wait(0.2):  # the dripping itself
                self.conn.sendall(b"d")
        except OSError:
            pass
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()
        try:
            self.reply = self.ftp.getresp()
        except (OSError, EOFError, ftplib.Error) as exc:
            self.reply = str(exc)
        self.ftp.close()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()


@pytest.mark.parametrize("head", [100, 64 * 1024], ids=["a few bytes", "64 KiB"])
def test_dripping_uploads_do_not_starve_the_others(emulator, cos, tmp_path, area, head):
    """Uploads that send a little, then one byte at a time, each held a part buffer from
    the worker's budget: 64 of them kept two 64 MiB budgets, and every other upload waited
    until data_connection_timeout cut it off. Now a few bytes claim no buffer (and, never
    read, are cut off as stalled), and a buffer held unfilled for data_connection_timeout
    while others wait is taken back with 426."""
    optional = {"worker_processes": "1", "upload_memory_limit": "4",
                "data_connection_timeout": "2"}
    with ServerProcess(str(tmp_path), emulator.port, ACCOUNTS, optional=optional) as server:
        drippers = [Dripper(server, f"{area}/drip{n}", head) for n in range(8)]
        data = os.urandom(3 * MIB)
        try:
            assert _put_as(server, "alice", f"{area}/legit", data)[:3] == "226"
            if head < 32 * 1024:  # never read: all cut off as stalled transfers
                wait_until(lambda: not any(d.thread.is_alive() for d in drippers), timeout=60,
                           what="the drippers cut off")
        finally:
            for dripper in drippers:
                dripper.stop()
        log = server.log_text()
    replies = [dripper.reply[:3] for dripper in drippers]
    if head < 32 * 1024:
        assert replies == ["421"] * 8
    else:  # four held the four buffers while the legitimate upload waited
        assert replies.count("426") >= 4, replies
        assert "part buffer was not filled in 2s while other uploads waited" in log
    assert cos.get_object(Bucket=ALPHA, Key=f"{area}/legit")["Body"].get_raw_stream().read() \
        == data
    assert not any(cos.object_exists(Bucket=ALPHA, Key=f"{area}/drip{n}") for n in range(8))
