"""Quotas per account (``quota_size``, ``quota_files``; issue 23): refused before the bytes
where the size is known, stopped and undone when the running total crosses the limit, one
winner when two sessions race for the last bytes, usage kept as the server writes and caught
up by scans (``quota_scan_interval``, ``cosftpctl quota-scan``), shown by ``SITE QUOTA`` and
``cosftpctl quota``."""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import posixpath
import re
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import pytest

from cosftp_prefork.server.scoreboard import state_path
from cosftp_prefork.server.usage import usage_path

from .admin_client import RO_TOKEN, AdminClient, hash_token
from .conftest import ALPHA, TWO_WORKERS
from .crowds import kill_the_worker
from .server_proc import FREE_PORT, Account, ServerProcess, wait_until
from .test_cluster import LoneNode, start_redis
from .test_commands import get, put
from .test_prefixes import parts_of
from .test_transfers import curl_put

MIB = 1024 * 1024
ROOT = f"quotas-{uuid.uuid4().hex[:8]}/"


def quota_account(user: str, size: str = "", files: int = 0, prefix: str = "") -> Account:
    lines = [f"cos_prefix = {ROOT}{prefix or user}/"]
    if size:
        lines.append(f"quota_size = {size}")
    if files:
        lines.append(f"quota_files = {files}")
    return Account(user, f"{user}-pw", ALPHA, extra="\n".join(lines))


def keys_under(cos, prefix: str) -> list[str]:
    page = cos.list_objects(Bucket=ALPHA, Prefix=prefix, MaxKeys=1000)
    return [item["Key"] for item in page.get("Contents", [])]


def pending_uploads(cos, prefix: str) -> list[str]:
    return [u["Key"] for u in
            cos.list_multipart_uploads(Bucket=ALPHA, Prefix=prefix).get("Upload", [])]


def stopped(ftp: ftplib.FTP, path: str, data: bytes) -> str:
    """STOR ``data`` to ``path`` expecting the server to stop it (it then drains the data
    connection for a while, see ``ftp.drain``); return its reply."""
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"STOR {path}")
    with contextlib.suppress(OSError):
        conn.sendall(data)
    conn.close()
    with pytest.raises(ftplib.error_perm) as refused:
        ftp.voidresp()
    return str(refused.value)


def park(ftp: ftplib.FTP, cos, path: str, key: str, sent: bytes) -> None:
    """Send ``sent`` to ``path`` (``key`` of ALPHA) and vanish once COS holds two parts of
    it: the server parks the upload (in ``.cosftp/parked/`` beside it)."""
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"STOR {path}")
    conn.sendall(sent)
    wait_until(lambda: parts_of(cos, key) >= 2, what="2 parts in COS")
    ftp.sock.close()
    ftp.close()
    conn.close()
    home, name = posixpath.split(key)
    wait_until(lambda: keys_under(cos, f"{home}/.cosftp/parked/{name}/"),
               what="the upload to be parked")


def used(ftp: ftplib.FTP) -> tuple[int, int]:
    """Bytes and files SITE QUOTA says the account's home holds."""
    reply = ftp.sendcmd("SITE QUOTA")
    size = re.search(r"size: (\d+) bytes used", reply)
    files = re.search(r"files: (\d+) used", reply)
    assert size and files, reply
    return int(size.group(1)), int(files.group(1))


@pytest.fixture(scope="module")
def quotas(emulator, tmp_path_factory):
    accounts = [quota_account("qsize", "3M"), quota_account("qfiles", files=2),
                quota_account("qrace", "2M"), quota_account("qresume", "4m"),
                quota_account("qcurl", "1536K"), quota_account("qfree"),
                quota_account("qdrain", "1M"), quota_account("qcrowd", "1M"),
                quota_account("qbeside")]
    with ServerProcess(str(tmp_path_factory.mktemp("quotas")), emulator.port, accounts,
                       # the crowd of test_a_crowd_crossing_the_quota_at_once... logs in at once;
                       # two workers: the racing sessions' reservations meet in the usage
                       # table the workers share, not in one worker's memory
                       optional={"quota_scan_interval": "0",
                                 "max_prelogin_connections_per_ip": "0", **TWO_WORKERS}) as proc:
        yield proc


def login(server: ServerProcess, user: str) -> ftplib.FTP:
    return server.login(user, f"{user}-pw")


def test_size_quota_refuses_before_the_bytes_and_stops_an_upload_that_crosses_it(
        quotas, cos):
    home = f"{ROOT}qsize/"
    cos.put_object(Bucket=ALPHA, Key=f"{home}by-another-tool.bin", Body=b"o" * MIB)
    ftp = login(quotas, "qsize")
    assert used(ftp) == (MIB, 1)  # the first scan counted what another tool wrote
    with pytest.raises(ftplib.error_perm, match=r"^552 Quota exceeded: this account's home"):
        ftp.sendcmd(f"ALLO {3 * MIB}")
    ftp.sendcmd(f"ALLO {2 * MIB}")
    ftp.sendcmd(f"ALLO {3 * MIB // 2}")  # the file's size: fewer bytes would be a cut upload
    assert put(ftp, "fits.bin", b"f" * (3 * MIB // 2)).startswith("226")
    assert used(ftp) == (5 * MIB // 2, 2)

    # 2.5 + 2 MiB: stopped in the transfer
    assert stopped(ftp, "crosses.bin", b"c" * (2 * MIB)).startswith("552 Quota exceeded")
    assert ftp.sendcmd("NOOP").startswith("200")
    assert f"{home}crosses.bin" not in keys_under(cos, home)
    assert not pending_uploads(cos, f"{home}crosses.bin")
    assert not keys_under(cos, f"{home}.cosftp/parked/")  # undone, not parked
    assert used(ftp) == (5 * MIB // 2, 2)  # its reservation given back

    ftp.delete("fits.bin")
    assert used(ftp) == (MIB, 1)
    assert put(ftp, "after-delete.bin", b"a" * (2 * MIB)).startswith("226")
    assert used(ftp) == (3 * MIB, 2)
    ftp.quit()


def test_file_quota_refuses_a_new_file_but_not_an_overwrite(quotas, cos):
    ftp = login(quotas, "qfiles")
    put(ftp, "one.txt", b"1")
    put(ftp, "two.txt", b"2")
    with pytest.raises(ftplib.error_perm, match=r"^552 .*2 of its 2 files \(quota_files\)"):
        put(ftp, "three.txt", b"3")
    assert put(ftp, "two.txt", b"two again").startswith("226")  # replaces: no file more
    assert get(ftp, "two.txt") == b"two again"
    ftp.mkd("dir")  # a directory is no file
    assert sorted(keys_under(cos, f"{ROOT}qfiles/")) == [
        f"{ROOT}qfiles/dir/", f"{ROOT}qfiles/one.txt", f"{ROOT}qfiles/two.txt"]
    ftp.sendcmd("RNFR one.txt")
    ftp.sendcmd("RNTO dir/one.txt")  # a rename within the home counts no file more
    assert used(ftp) == (len(b"two again") + 1, 2)
    ftp.quit()


def test_two_sessions_racing_for_the_last_bytes_cannot_both_win(quotas, cos):
    """Both announce 1.5 MiB of the 2 MiB free; both ALLOs pass (nothing is stored yet),
    only one STOR gets the room. Then both stream 1.5 MiB without ALLO: at most one wins."""
    first, second = login(quotas, "qrace"), login(quotas, "qrace")
    announced_race((first, "a.bin"), (second, "b.bin"), 3 * MIB // 2, "Quota exceeded")
    assert used(first) == (3 * MIB // 2, 1)
    first.delete("a.bin")

    wins = race([(first, "c.bin"), (second, "d.bin")], 3 * MIB // 2)
    assert len(keys_under(cos, f"{ROOT}qrace/")) == wins
    size, _ = used(first)
    assert size <= 2 * MIB
    for ftp in (first, second):
        ftp.quit()


def announced_race(first: tuple[ftplib.FTP, str], second: tuple[ftplib.FTP, str], size: int,
                   refusal: str) -> None:
    """Both sessions announce ``size`` bytes (``ALLO``: both pass, nothing is reserved yet);
    the first's STOR to its path gets the room, the second's is refused before its 150 with
    ``552 <refusal>``; the first's then stores its bytes."""
    for ftp, _ in (first, second):
        ftp.sendcmd(f"ALLO {size}")
        ftp.voidcmd("TYPE I")
    winner = first[0].transfercmd(f"STOR {first[1]}")
    with pytest.raises(ftplib.error_perm, match=rf"^552 {refusal}"):
        second[0].transfercmd(f"STOR {second[1]}")
    winner.sendall(b"a" * size)
    winner.close()
    first[0].voidresp()


def race(uploads: list[tuple[ftplib.FTP, str]], size: int) -> int:
    """STOR ``size`` bytes to each (session, path) of ``uploads`` at once, half of them to
    each in turn, then the other half (each holds some of the quota when the other asks);
    check that at most one won and the others got 552. Returns the number of winners."""
    connections = [ftp.transfercmd(f"STOR {path}") for ftp, path in uploads]
    for _ in range(2):
        for conn in connections:
            with contextlib.suppress(OSError):  # stopped: the server closed the connection
                conn.sendall(b"r" * (size // 2))
    outcomes = []
    for (ftp, _), conn in zip(uploads, connections):
        conn.close()
        try:
            outcomes.append(ftp.voidresp())
        except ftplib.error_perm as exc:
            outcomes.append(str(exc))
    wins = sum(reply.startswith("226") for reply in outcomes)
    assert wins <= 1 and all(reply.startswith(("226", "552")) for reply in outcomes), outcomes
    return wins


def test_a_resume_is_refused_before_its_bytes_and_the_parked_upload_kept(quotas, cos):
    ftp = login(quotas, "qresume")
    home = f"{ROOT}qresume/"
    data = b"p" * (3 * MIB)
    park(ftp, cos, "parked.bin", f"{home}parked.bin", data[:2 * MIB + 10])
    ftp = login(quotas, "qresume")
    assert used(ftp) == (0, 0)  # parked parts are no file yet
    resume_past_a_full_quota(ftp, "parked.bin", "other.bin", data, "Quota exceeded")
    assert used(ftp) == (3 * MIB, 1)
    ftp.quit()


def resume_past_a_full_quota(ftp: ftplib.FTP, parked: str, other: str, data: bytes,
                             refusal: str) -> None:
    """Store 3 MiB as ``other``: the resume of ``data`` at ``parked`` is then refused
    before its bytes (``552 <refusal>``) and stays resumable; with ``other`` deleted, it
    completes."""
    put(ftp, other, b"o" * (3 * MIB))
    offset = ftp.size(parked)
    with pytest.raises(ftplib.error_perm, match=rf"^552 {refusal}"):
        ftp.storbinary(f"STOR {parked}", io.BytesIO(data[offset:]), rest=offset)
    assert ftp.size(parked) == offset  # still parked, still resumable
    ftp.delete(other)
    ftp.storbinary(f"STOR {parked}", io.BytesIO(data[offset:]), rest=offset)
    assert get(ftp, parked) == data


def test_curl_and_lftp_get_552_and_nothing_is_stored(quotas, cos, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"b" * (2 * MIB))
    url = f"ftp://127.0.0.1:{quotas.port}/big.bin"
    done = subprocess.run(["curl", "-sS", "-u", "qcurl:qcurl-pw", "-T", str(big), url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 70, done.stderr  # CURLE_REMOTE_DISK_FULL: the 552
    done = subprocess.run(["lftp", "-u", "qcurl,qcurl-pw", "-p", str(quotas.port),
                           "-e", f"set net:max-retries 1; put {big} -o lftp.bin; bye",
                           "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "552" in done.stderr + done.stdout, done
    assert keys_under(cos, f"{ROOT}qcurl/") == []
    small = tmp_path / "small.bin"
    small.write_bytes(b"s" * MIB)
    done = subprocess.run(["curl", "-sS", "-u", "qcurl:qcurl-pw", "-T", str(small), url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert keys_under(cos, f"{ROOT}qcurl/") == [f"{ROOT}qcurl/big.bin"]


def test_curl_still_sending_when_the_quota_stops_it_reads_the_552(quotas, cos, tmp_path):
    """A 16 MiB file into 1 MiB of room: stopped at the quota while curl still sends (its
    socket buffers cannot hold the rest), the data connection is drained after the 552
    instead of reset, so curl finishes sending and reads the refusal (70, Exceeded storage
    allocation: curl's code for a 552 after the data) rather than failing with 55 (Send
    failure: the reset); nothing stored, usage unchanged, the drain logged once."""
    home = f"{ROOT}qdrain/"
    big = tmp_path / "big.bin"
    big.write_bytes(b"d" * (16 * MIB))
    done = curl_put(quotas.port, "qdrain", "qdrain-pw", big, "crossing.bin")
    assert done.returncode == 70, done.stderr[-2000:]
    assert "< 552 Quota exceeded: this account's home" in done.stderr, done.stderr[-2000:]
    assert keys_under(cos, home) == [] and not pending_uploads(cos, home)
    ftp = login(quotas, "qdrain")
    assert used(ftp) == (0, 0)
    ftp.quit()
    lines = drain_lines(quotas, "/crossing.bin")
    assert len(lines) == 1 and "user=qdrain" in lines[0], lines


def drain_lines(server: ServerProcess, path: str) -> list[str]:
    """The log lines saying how the drain of the refused upload of ``path`` ended (once one
    was written)."""
    marker = f"path={path}: the refused upload's data connection"
    wait_until(lambda: marker in server.log_text(), what="the drain's log line")
    return [line for line in server.log_text().splitlines() if marker in line]


TICK = 0.05  # seconds between two sends of a client trickling bytes: its own pace


def test_a_client_that_keeps_sending_after_the_refusal_is_cut_off(quotas, cos):
    """A client that crosses the quota and then trickles bytes forever reads the 552 while
    its data connection is still open (the drain reads what it sends), and the server
    closes that connection at the drain's bound: the client's sends fail in the end. What
    it sent is stored nowhere and counted nowhere."""
    home = f"{ROOT}qdrain/"
    ftp = login(quotas, "qdrain")
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR trickle.bin")
    with contextlib.suppress(OSError):
        conn.sendall(b"t" * (2 * MIB))
    with pytest.raises(ftplib.error_perm, match=r"^552 Quota exceeded"):
        ftp.getresp()
    conn.setblocking(False)
    with pytest.raises(BlockingIOError):  # neither closed (b"") nor reset: drained
        conn.recv(1, socket.MSG_PEEK)
    conn.setblocking(True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            conn.send(b"t" * 1024)
            time.sleep(TICK)
    except OSError:
        pass  # the server closed the data connection
    finally:
        conn.close()
    assert time.monotonic() < deadline, "the data connection was never closed"
    assert ftp.sendcmd("NOOP").startswith("200")
    assert used(ftp) == (0, 0)
    assert keys_under(cos, home) == [] and not pending_uploads(cos, home)
    ftp.quit()
    [line] = drain_lines(quotas, "/trickle.bin")
    assert "(the drain's time bound)" in line, line


def test_a_crowd_crossing_the_quota_at_once_all_read_552_and_others_go_on(quotas, cos,
                                                                          tmp_path):
    """20 curl sessions send 8 MiB each into 1 MiB of room at once: each reads its 552
    (70), none stores anything, usage stays 0; meanwhile another account's session keeps
    storing and reading files."""
    home = f"{ROOT}qcrowd/"
    big = tmp_path / "big.bin"
    big.write_bytes(b"c" * (8 * MIB))
    other = login(quotas, "qbeside")
    with ThreadPoolExecutor(20) as pool:
        crowd = [pool.submit(curl_put, quotas.port, "qcrowd", "qcrowd-pw", big, f"c{i}.bin")
                 for i in range(20)]
        rounds = 0
        while not all(job.done() for job in crowd) or rounds < 3:
            data = uuid.uuid4().bytes * 1000
            assert put(other, "beside.bin", data).startswith("226")
            assert get(other, "beside.bin") == data
            rounds += 1
        outcomes = [job.result() for job in crowd]
    for done in outcomes:
        assert done.returncode == 70 and "< 552 Quota exceeded" in done.stderr, \
            done.stderr[-2000:]
    assert keys_under(cos, home) == [] and not pending_uploads(cos, home)
    crowded = login(quotas, "qcrowd")
    assert used(crowded) == (0, 0)
    for ftp in (crowded, other):
        ftp.quit()


def test_site_quota_and_cosftpctl_quota_and_quota_scan(quotas, cos):
    home = f"{ROOT}qfree/"
    ftp = login(quotas, "qfree")
    assert "No quota counts this account's files" in ftp.sendcmd("SITE QUOTA")
    ftp.quit()
    ftp = login(quotas, "qsize")
    before = used(ftp)
    cos.put_object(Bucket=ALPHA, Key=f"{ROOT}qsize/sneaked-in.bin", Body=b"s" * 1000)
    assert used(ftp) == before  # quota_scan_interval = 0: not scanned again by itself
    done = quotas.ctl("quota-scan", "qsize")
    assert done.returncode == 0, done.stderr
    assert used(ftp) == (before[0] + 1000, before[1] + 1)
    shown = quotas.ctl("quota")
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("qsize "))
    assert f"{before[0] + 1000}" in row and "3 MiB" in row, shown.stdout
    assert re.search(r"^qfree\s.*no quota", shown.stdout, re.MULTILINE), shown.stdout
    assert not keys_under(cos, home)
    ftp.quit()


def test_a_master_of_another_version_keeps_its_usage_table_from_quota_and_quota_scan(
        emulator, tmp_path):
    """After an upgrade, the master still running was started by the version before, whose
    usage table has another layout: ``quota`` must not read it with this one's offsets, nor
    ``quota-scan`` write into it, and both say which process runs and what to do."""
    server = ServerProcess(str(tmp_path), emulator.port,
                           [quota_account("qlayout", "1M", prefix="layout")],
                           optional={"quota_scan_interval": "0"})
    with server:
        ftp = login(server, "qlayout")
        assert used(ftp) == (0, 0)  # its home scanned: its row written, then left alone
        ftp.quit()
        pid_file = os.path.join(server.log_dir, "cosftp.pid")
        path = usage_path(state_path(pid_file))
        with open(path, "r+b") as handle:
            # What the versions before the layout word kept there: the rows in use.
            os.pwrite(handle.fileno(), struct.pack("<I", 1), 4)
            rows = os.pread(handle.fileno(), 2 * MIB, 64)  # the rows (1.7 MiB), and on
        with open(pid_file, encoding="ascii") as handle:
            pid = int(handle.read())
        for command in (("quota",), ("quota-scan", "qlayout")):
            out = server.ctl(*command)
            assert out.returncode == 4, (command, out.stdout, out.stderr)
            assert f"pid {pid} runs another version of cosftp-prefork: its quota usage " \
                   f"table {path}" in out.stderr, (command, out.stderr)
        with open(path, "rb") as handle:  # quota-scan asked for no scan in it
            assert os.pread(handle.fileno(), 2 * MIB, 64) == rows
        assert server.ctl("stop").returncode == 0  # stop needs only the pid file


def test_an_admin_quota_above_the_tenants_counts_their_files_and_names_no_key(emulator,
                                                                              tmp_path):
    """Homes nest: an admin's quota at <root>nest/ counts what tenant t1 (rooted below,
    without a quota of its own) writes, refuses t1's upload once full, and the refusal
    tells t1 nothing of the key above its home."""
    accounts = [quota_account("nadmin", "1M", prefix="nest"),
                quota_account("t1", prefix="nest/t1")]
    with ServerProcess(str(tmp_path), emulator.port, accounts) as server:
        tenant, admin = login(server, "t1"), login(server, "nadmin")
        put(tenant, "a.bin", b"a" * (MIB // 2))
        assert used(admin) == (MIB // 2, 1)
        reply = stopped(tenant, "b.bin", b"b" * MIB)
        assert reply.startswith("552 Quota exceeded: a home that contains this account's")
        assert ROOT.rstrip("/") not in reply and "nest" not in reply
        assert "A home that contains this account's" in tenant.sendcmd("SITE QUOTA")
        admin.sendcmd("RNFR t1/a.bin")
        admin.sendcmd("RNTO a.bin")  # out of t1's home, still in the admin's: no change
        assert used(admin) == (MIB // 2, 1)
        for ftp in (tenant, admin):
            ftp.quit()


def test_quotas_follow_a_reload_and_the_interval_rescans(emulator, tmp_path, cos):
    """quota_size changed by a reload holds for new sessions; quota_scan_interval = 1
    catches up a file another tool wrote without anyone asking."""
    home = f"{ROOT}reload/"
    server = ServerProcess(str(tmp_path), emulator.port,
                           [quota_account("qreload", "1M", prefix="reload")],
                           optional={"quota_scan_interval": "1"})
    with server:
        ftp = login(server, "qreload")
        assert stopped(ftp, "big.bin", b"x" * (3 * MIB // 2)).startswith("552")
        server.accounts = [quota_account("qreload", "2M", prefix="reload")]
        server.write_config()
        assert server.ctl("reload").returncode == 0
        again = login(server, "qreload")
        assert put(again, "big.bin", b"x" * (3 * MIB // 2)).startswith("226")
        cos.put_object(Bucket=ALPHA, Key=f"{home}other-tool.bin", Body=b"o" * 100)
        wait_until(lambda: used(again) == (3 * MIB // 2 + 100, 2),
                   what="the periodic scan to count the other tool's file")
        for session in (ftp, again):
            session.quit()


def reserved(ftp: ftplib.FTP) -> int:
    """Bytes SITE QUOTA says uploads under way hold in the account's home."""
    reply = ftp.sendcmd("SITE QUOTA")
    found = re.search(r"(\d+) reserved by uploads under way", reply)
    assert found, reply
    return int(found.group(1))


def test_a_killed_workers_reservation_is_given_back_when_it_is_reaped(emulator, tmp_path,
                                                                       cos):
    """A worker killed (SIGKILL: no settle, no abort) while an upload holds 2 MiB of a
    3 MiB quota: the master drops what the dead worker held when it reaps it, so that an
    upload needing that room passes at once (not only after the master's restart), and
    SITE QUOTA and cosftpctl quota show nothing reserved."""
    server = ServerProcess(str(tmp_path), emulator.port,
                           [quota_account("qkill", "3M", prefix="kill")],
                           optional={"worker_processes": "1"})
    with server:
        kill_while_holding(server, "qkill", cos, f"{ROOT}kill/")


def test_a_killed_workers_reservation_is_given_back_on_a_cluster_node(emulator, tmp_path,
                                                                      cos):
    """The same on a node of a cluster ([CLUSTER]): the node's reservations in Redis, which
    every node's quota counts, lose the dead worker's 2 MiB as its own table does, so that
    the upload needing that room passes at once and cosftpctl quota (Redis's figures) shows
    nothing reserved."""
    redis = start_redis(tmp_path)
    node = LoneNode(str(tmp_path / "node"), emulator.port,
                    [quota_account("qkilled", "3M", prefix="killed")],
                    optional={"worker_processes": "1"})
    node.redis_port, node.name = redis.port, "killed"
    try:
        node.start()
        kill_while_holding(node, "qkilled", cos, f"{ROOT}killed/")
    finally:
        node.stop()
        redis.stop()


def kill_while_holding(server: ServerProcess, user: str, cos, home: str,
                       hook_home: str = "") -> None:
    """Kill the one worker of ``server`` while an upload of ``user`` (password
    ``<user>-pw``, 3 MiB quota, ``home`` its keys) holds 2 MiB; then nothing is reserved and
    2.5 MiB fit at once. ``hook_home``: the ``bucket/prefix`` naming the home in cosftpctl
    quota (its figures on the next line), when an auth hook's answer gave the quota."""
    ftp = login(server, user)
    ftp.sendcmd(f"ALLO {2 * MIB}")
    ftp.voidcmd("TYPE I")
    held = ftp.transfercmd("STOR held.bin")  # its 2 MiB are reserved before the 150
    held.sendall(b"h" * 1000)
    assert reserved(login(server, user)) == 2 * MIB
    kill_the_worker(server.proc.pid)
    held.close()
    again = login(server, user)
    assert reserved(again) == 0
    lines = server.ctl("quota").stdout.splitlines()
    named = next(at for at, line in enumerate(lines)
                 if line.startswith(hook_home or f"{user} "))
    row = lines[named + 1 if hook_home else named]
    assert re.search(r" 0\s+\d+s ago( \d+s ago)?$", row), row  # the reserved column
    again.sendcmd(f"ALLO {5 * MIB // 2}")
    assert put(again, "fits.bin", b"f" * (5 * MIB // 2)).startswith("226")
    assert used(again) == (5 * MIB // 2, 1)
    assert f"{home}held.bin" not in keys_under(cos, home)
    again.quit()


@pytest.mark.parametrize(("option", "value", "problem"), [
    ("quota_size", "10X", "such as 500M or 10G"), ("quota_size", "-1", "such as 500M"),
    ("quota_files", "many", "must be an integer")])
def test_check_names_a_bad_quota(emulator, tmp_path, option, value, problem):
    account = Account("bad", "bad-pw", ALPHA, extra=f"{option} = {value}")
    server = ServerProcess(str(tmp_path), emulator.port, [account])
    server.write_config()
    done = server.ctl("check")
    assert done.returncode == 2 and f"[COS_ACCOUNT_0] {option}" in done.stderr, done.stderr
    assert problem in done.stderr, done.stderr


def test_sizes_are_1024_based():
    from cosftp_prefork.config.sizes import parse_size
    assert [parse_size(raw) for raw in ("0", "512", "1K", "10m", "2G", "1T", "5MiB", "3KB")] \
        == [0, 512, 1024, 10 * MIB, 2 * 1024 * MIB, 1024 ** 4, 5 * MIB, 3072]


@contextlib.contextmanager
def two_nodes(emulator, tmp_path, account: Account,
              second: Optional[dict] = None) -> Iterator[list[LoneNode]]:
    """Nodes qa and qb sharing a Redis ([CLUSTER]), both serving ``account``; qb with the
    ``ServerProcess`` options ``second``."""
    redis = start_redis(tmp_path)
    nodes = []
    try:
        for name, options in (("qa", {}), ("qb", second or {})):
            proc = LoneNode(str(tmp_path / name), emulator.port, [account], **options)
            proc.redis_port, proc.name = redis.port, name
            nodes.append(proc.start())
        yield nodes
    finally:
        for proc in nodes:
            proc.stop()
        redis.stop()


def test_a_quota_holds_across_the_nodes_of_a_cluster(emulator, tmp_path):
    """Two nodes sharing a Redis ([CLUSTER]) and a home with a 2 MiB quota: what one stores
    counts on the other, and a reservation on one leaves no room for the other."""
    with two_nodes(emulator, tmp_path, quota_account("qcluster", "2M", prefix="cluster")) \
            as nodes:
        first, second = (login(proc, "qcluster") for proc in nodes)
        put(first, "a.bin", b"a" * (3 * MIB // 2))
        assert used(second) == (3 * MIB // 2, 1)  # the other node's write counts here
        assert stopped(second, "b.bin", b"b" * MIB).startswith("552 Quota exceeded")
        for ftp in (first, second):
            ftp.sendcmd(f"ALLO {2 * MIB // 5}")  # both fit: 0.4 of the 0.5 MiB left
            ftp.voidcmd("TYPE I")
        holding = first.transfercmd("STOR c.bin")  # reserves 0.4 MiB on node qa
        with pytest.raises(ftplib.error_perm, match=r"^552 Quota exceeded"):
            second.transfercmd("STOR d.bin")  # node qb sees qa's reservation
        holding.sendall(b"c" * (2 * MIB // 5))
        holding.close()
        first.voidresp()
        assert used(second) == (3 * MIB // 2 + 2 * MIB // 5, 2)
        for ftp in (first, second):
            ftp.quit()


def test_cosftpctl_quota_and_the_admin_api_show_the_clusters_usage(emulator, tmp_path):
    """Two nodes sharing a Redis: what node qa stored and what an upload holds there show in
    cosftpctl quota and GET /api/v1/quotas of node qb, whose own table never saw them (the
    figures its quota enforcement uses)."""
    admin = {"network": {"admin_port": FREE_PORT},
             "sections": f"\n[ADMIN]\ntokens = viewer:{hash_token(RO_TOKEN)}:ro\n"}
    with two_nodes(emulator, tmp_path, quota_account("qshown", "2M", prefix="shown"),
                   admin) as nodes:
        first, second = (login(proc, "qshown") for proc in nodes)
        assert used(second) == (0, 0)  # qb scanned the home: its table holds 0 bytes
        put(first, "a.bin", b"a" * (3 * MIB // 2))
        first.sendcmd(f"ALLO {2 * MIB // 5}")
        first.voidcmd("TYPE I")
        holding = first.transfercmd("STOR c.bin")  # reserves 0.4 MiB on node qa
        shown = nodes[1].ctl("quota", "qshown")
        assert shown.returncode == 0, shown.stderr
        assert re.search(rf"^qshown +{3 * MIB // 2} +2 MiB +1 +- +{2 * MIB // 5} ",
                         shown.stdout, re.M), shown.stdout
        api = AdminClient(f"http://127.0.0.1:{nodes[1].admin_port}", token=RO_TOKEN)
        answer = api.get("/quotas")
        quota = next(q for q in answer["quotas"] if q["user"] == "qshown")
        assert (quota["size"]["used"], quota["files"]["used"], quota["reserved_bytes"]) == \
            (3 * MIB // 2, 1, 2 * MIB // 5)
        assert (answer["usage_from"], answer["cluster_error"]) == ("cluster", None)
        holding.sendall(b"c" * (2 * MIB // 5))
        holding.close()
        first.voidresp()
        for ftp in (first, second):
            ftp.quit()


def test_renames_between_homes_are_counted_and_refused_past_a_quota(emulator, tmp_path):
    """An admin above two tenants moves files between them: a file too big for mb's quota
    stays where it was (552), a small one moves and counts in mb, and so does a directory
    moved into mb."""
    accounts = [quota_account("madmin", prefix="moves"),
                quota_account("ma", prefix="moves/ma"),
                quota_account("mb", "1M", prefix="moves/mb")]
    with ServerProcess(str(tmp_path), emulator.port, accounts) as server:
        admin, tenant = login(server, "madmin"), login(server, "mb")
        admin.mkd("ma")
        admin.mkd("mb")
        put(admin, "ma/big.bin", b"b" * (3 * MIB // 2))
        put(admin, "ma/small.bin", b"s" * 100)
        admin.mkd("ma/dir")
        put(admin, "ma/dir/inner.bin", b"i" * 200)
        assert used(tenant) == (0, 0)
        admin.sendcmd("RNFR ma/big.bin")
        with pytest.raises(ftplib.error_perm, match=r"^552 Quota exceeded: /mb holds"):
            admin.sendcmd("RNTO mb/big.bin")
        assert admin.size("ma/big.bin") == 3 * MIB // 2
        admin.sendcmd("RNFR ma/small.bin")
        admin.sendcmd("RNTO mb/small.bin")
        assert used(tenant) == (100, 1)
        admin.sendcmd("RNFR ma/dir")
        admin.sendcmd("RNTO mb/dir")
        assert used(tenant) == (300, 2)
        tenant.delete("small.bin")
        assert used(tenant) == (200, 1)
        for ftp in (admin, tenant):
            ftp.quit()


@pytest.mark.parametrize("redis_down", ["open", "closed"])
def test_with_redis_gone_a_node_counts_alone_or_refuses(emulator, tmp_path, cos, redis_down):
    """Redis stops under a logged-in session: with redis_down = open the node reserves
    against its own table (the quota still holds there), with closed it answers 451 to an
    upload a quota counts and stores nothing."""
    redis = start_redis(tmp_path)
    home = f"{ROOT}gone-{redis_down}/"
    proc = LoneNode(str(tmp_path / "node"), emulator.port,
                    [quota_account("qgone", "1M", prefix=f"gone-{redis_down}")])
    proc.redis_port, proc.name, proc.redis_down = redis.port, "gone", redis_down
    try:
        proc.start()
        ftp = login(proc, "qgone")
        assert used(ftp) == (0, 0)
        redis.stop()
        if redis_down == "open":
            assert put(ftp, "fits.bin", b"f" * (MIB // 2)).startswith("226")
            assert stopped(ftp, "passes.bin", b"p" * MIB).startswith("552 Quota exceeded")
            assert keys_under(cos, home) == [f"{home}fits.bin"]
            # cosftpctl quota shows the table the node counts against, and says why
            shown = proc.ctl("quota", "qgone")
            assert "the cluster's usage cannot be read" in shown.stderr, shown.stderr
            assert re.search(rf"^qgone +{MIB // 2} ", shown.stdout, re.M), shown.stdout
        else:
            with pytest.raises(ftplib.error_temp, match=r"^451 .*QuotaUnavailable"):
                put(ftp, "refused.bin", b"r" * 10)
            assert keys_under(cos, home) == []
        ftp.quit()
    finally:
        proc.stop()
        redis.stop()


def home_used(ftp: ftplib.FTP) -> tuple[int, int]:
    """Bytes and files SITE QUOTA says the account's own home holds (not a home above)."""
    reply = ftp.sendcmd("SITE QUOTA")
    found = re.search(r"This account's home:.*?size: (\d+) bytes used.*?files: (\d+) used",
                      reply, re.DOTALL)
    assert found, reply
    return int(found.group(1)), int(found.group(2))


@pytest.fixture(scope="module")
def movers(emulator, tmp_path_factory):
    """An admin (quota 8 MiB) rooted above two tenants with quotas of their own; usage is
    never scanned again by itself (quota_scan_interval = 0), so what the tests see is what
    the server kept as it wrote. Two workers: the racing renames meet in the usage table
    the workers share."""
    accounts = [quota_account("cadmin", "8M", prefix="catch"),
                quota_account("ca", "2M", files=10, prefix="catch/ca"),
                quota_account("cb", "2M", files=10, prefix="catch/cb")]
    with ServerProcess(str(tmp_path_factory.mktemp("movers")), emulator.port, accounts,
                       optional={"quota_scan_interval": "0", **TWO_WORKERS}) as proc:
        yield proc


def test_a_directory_renamed_between_homes_is_counted_at_once(movers):
    """The admin moves ca/dir (three files, one in a subdirectory, and the directories'
    markers, which count for nothing) into cb: ca's usage drops and cb's rises by exactly
    that as the rename is answered, the admin's (above both) is unchanged."""
    admin, ca, cb = (login(movers, user) for user in ("cadmin", "ca", "cb"))
    put(ca, "stays.bin", b"s" * 50)
    ca.mkd("dir")
    ca.mkd("dir/sub")
    for name, size in (("dir/one.bin", 100), ("dir/two.bin", 200), ("dir/sub/three.bin", 400)):
        put(ca, name, b"x" * size)
    put(cb, "own.bin", b"o" * 1000)
    assert home_used(ca) == (750, 4) and home_used(cb) == (1000, 1)
    assert home_used(admin) == (1750, 5)
    admin.rename("ca/dir", "cb/dir")
    assert home_used(ca) == (50, 1)
    assert home_used(cb) == (1700, 4)
    assert home_used(admin) == (1750, 5)
    cb.rename("dir", "moved")  # within one home: no change
    assert home_used(cb) == (1700, 4)
    admin.rename("cb/moved", "ca/back")
    assert home_used(ca) == (750, 4) and home_used(cb) == (1000, 1)
    for ftp in (admin, ca, cb):
        ftp.quit()


def test_a_directory_renamed_into_a_full_home_is_refused_before_any_copy(movers, cos):
    """The admin moves a directory of ca into cb, which has room for one of its two files
    only: 552 naming cb's quota, nothing copied, nothing counted; with room made, the same
    rename goes through and is counted at once."""
    admin, ca, cb = (login(movers, user) for user in ("cadmin", "ca", "cb"))
    filler = 2 * MIB - home_used(cb)[0] - 100 * 1024  # cb keeps 100 KiB free
    put(cb, "filler.bin", b"f" * filler)
    ca.mkd("big")
    for name in ("big/one.bin", "big/two.bin"):
        put(ca, name, b"x" * (60 * 1024))
    before_a, before_b = home_used(ca), home_used(cb)
    with pytest.raises(ftplib.error_perm, match=r"^552 Quota exceeded"):
        admin.rename("ca/big", "cb/big")
    assert keys_under(cos, f"{ROOT}catch/cb/big") == []
    assert len(keys_under(cos, f"{ROOT}catch/ca/big/")) >= 2
    assert (home_used(ca), home_used(cb)) == (before_a, before_b)
    cb.delete("filler.bin")
    admin.rename("ca/big", "cb/big")
    assert home_used(ca) == (before_a[0] - 120 * 1024, before_a[1] - 2)
    assert home_used(cb) == (before_b[0] - filler + 120 * 1024, before_b[1] - 1 + 2)
    for name in ("big/one.bin", "big/two.bin"):
        cb.delete(name)
    cb.rmd("big")
    for ftp in (admin, ca, cb):
        ftp.quit()


def test_directory_renames_racing_into_a_home_with_room_for_one(movers, cos, emulator):
    """Three admin sessions move a directory of ca each (two files, 120 KiB) into cb, which
    has room for one: their listings of what to move meet in COS (the emulator's rendezvous),
    so each asks for the room while the others do. Exactly one wins (250), the others get
    552 naming cb's quota; usage right after counts the winner once in each home; the
    losers' directories are whole where they were, nothing of them in cb."""
    admin, ca, cb = (login(movers, user) for user in ("cadmin", "ca", "cb"))
    tag = uuid.uuid4().hex[:8]
    filler = 2 * MIB - home_used(cb)[0] - 150 * 1024  # cb keeps 150 KiB free
    put(cb, "filler.bin", b"f" * filler)
    names = [f"{tag}-{n}" for n in range(3)]
    for name in names:
        ca.mkd(name)
        for file in ("one.bin", "two.bin"):
            put(ca, f"{name}/{file}", b"x" * (60 * 1024))
    before_a, before_b = home_used(ca), home_used(cb)
    movers_ = [login(movers, "cadmin") for _ in names]
    for ftp, name in zip(movers_, names):
        assert ftp.sendcmd(f"RNFR ca/{name}").startswith("350")
    emulator.rendezvous(contains=f"/ca/{tag}-", kind="LIST", parties=len(names), timeout=10)

    def move(ftp: ftplib.FTP, name: str) -> str:
        try:
            return ftp.sendcmd(f"RNTO cb/{name}")
        except ftplib.error_perm as exc:
            return str(exc)

    with ThreadPoolExecutor(len(names)) as pool:
        replies = list(pool.map(move, movers_, names))
    assert emulator.rendezvous()["passed"] == len(names), "the renames did not overlap"
    assert sorted(reply[:4] for reply in replies) == ["250 ", "552 ", "552 "], replies
    assert all("Quota exceeded" in reply for reply in replies if reply.startswith("552"))
    assert home_used(ca) == (before_a[0] - 120 * 1024, before_a[1] - 2)
    assert home_used(cb) == (before_b[0] + 120 * 1024, before_b[1] + 2)
    won = names[[reply[:3] for reply in replies].index("250")]
    for name in names:
        there, here = f"{ROOT}catch/cb/{name}/", f"{ROOT}catch/ca/{name}/"
        files = [f"{there if name == won else here}{file}" for file in ("one.bin", "two.bin")]
        assert [key for key in keys_under(cos, there) + keys_under(cos, here)
                if not key.endswith("/")] == files
    for ftp, name in [(cb, won)] + [(ca, name) for name in names if name != won]:
        for file in ("one.bin", "two.bin"):
            ftp.delete(f"{name}/{file}")
        ftp.rmd(name)
    cb.delete("filler.bin")
    for ftp in (admin, ca, cb, *movers_):
        ftp.quit()


def test_a_rename_onto_an_existing_file_stops_counting_it(movers):
    """The file a rename writes over goes: its bytes and its file stop counting, within a
    home and across homes."""
    admin, ca, cb = (login(movers, user) for user in ("cadmin", "ca", "cb"))
    before_a, before_b = home_used(ca), home_used(cb)
    put(ca, "over-a.bin", b"a" * 100)
    put(ca, "over-b.bin", b"b" * 300)
    ca.rename("over-a.bin", "over-b.bin")
    assert home_used(ca) == (before_a[0] + 100, before_a[1] + 1)
    put(cb, "target.bin", b"t" * 500)
    admin.rename("ca/over-b.bin", "cb/target.bin")
    assert home_used(ca) == before_a
    assert home_used(cb) == (before_b[0] + 100, before_b[1] + 1)
    assert get(cb, "target.bin") == b"a" * 100
    cb.delete("target.bin")
    assert home_used(cb) == before_b
    for ftp in (admin, ca, cb):
        ftp.quit()


def test_a_file_renamed_from_a_folder_over_one_in_the_home_stops_counting_it(emulator,
                                                                               tmp_path):
    """A rename across folders (a copy, ftp.mounts) onto an existing file: the quota of the
    home counts the new file and no longer the one it replaced."""
    pool = f"\n[FOLDER_cpool]\ncos_prefix = {ROOT}cpool\nauthority = RW\n"
    account = quota_account("cfold", "1M", files=5, prefix="cfold")
    account.extra += "\nvirtual_folders = /pool=cpool"
    with ServerProcess(str(tmp_path), emulator.port, [account], sections=pool) as server:
        ftp = login(server, "cfold")
        put(ftp, "target.bin", b"t" * 500)
        put(ftp, "/pool/new.bin", b"n" * 100)
        assert home_used(ftp) == (500, 1)
        ftp.rename("/pool/new.bin", "/target.bin")
        assert home_used(ftp) == (100, 1)
        assert get(ftp, "/target.bin") == b"n" * 100
        ftp.quit()
