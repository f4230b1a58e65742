"""Parked uploads beyond one session: across a server restart and a reload, a part still
waiting for the pool when the upload breaks, resume_ttl, and the janitor that aborts what
is parked too long or left behind by a crash, and leaves other tools' uploads alone (split
from test_resume.py, whose helpers it shares, so that the two run on two xdist workers)."""

from __future__ import annotations

import fcntl
import os
import struct
import termios

import psutil

from cosftp_prefork.cos.registry import BucketRegistry
from cosftp_prefork.cos.resume import Janitor, live_key

from .conftest import ALPHA
from .emulator_proc import emulator_account, request_log
from .server_proc import Account, ServerProcess, wait_until
from .test_commands import get
from .test_resume import (
    MIB,
    break_upload,
    is_parked,
    park_records,
    parts_of,
    rest_stor,
    resumable,  # noqa: F401 (the fixture)
)
from .test_transfers import pending_uploads


def test_parked_upload_survives_a_server_restart(emulator, tmp_path, resumable,  # noqa: F811
                                                 area, cos):
    """Parked by a server that then stops, resumed through another: the file's shared
    server, with the same account (a server started again has nothing more of it than
    what COS holds)."""
    data = os.urandom(5 * MIB + 1)
    account = [Account("alice", "alice-pw", ALPHA)]
    with ServerProcess(str(tmp_path / "first"), emulator.port, account) as first:
        break_upload(first.login("alice", "alice-pw"), cos, area, data[:3 * MIB], 2)
    ftp = resumable.login("alice", "alice-pw")
    offset = ftp.size(area)
    assert rest_stor(ftp, area, offset, data[offset:]).startswith("226")
    assert get(ftp, area) == data
    ftp.quit()


def test_parked_upload_survives_a_reload(resumable, area, cos):  # noqa: F811
    data = os.urandom(4 * MIB + 3)
    break_upload(resumable.login("alice", "alice-pw"), cos, area, data[:3 * MIB], 2)
    done = resumable.ctl("reload")
    assert done.returncode == 0, done.stderr
    ftp = resumable.login("alice", "alice-pw")  # served by the new generation's workers
    offset = ftp.size(area)
    assert rest_stor(ftp, area, offset, data[offset:]).startswith("226")
    assert get(ftp, area) == data
    ftp.quit()

# The ttl of the janitors the tests run themselves (with orphan_idle 0: their idle limit
# too). COS's times have whole seconds, so an upload is idle for this long 0 to 1 s after
# its last part or marker: each sweep is a handful of requests, polled until then (2 s
# took up to 2 s of polling per test).
EAGER_TTL = 0.5


def _unread(conn) -> int:
    """The bytes sent on the data connection ``conn`` that the server has not read: those in
    the client's send queue and in the server's receive queue (``/proc/net/tcp``)."""
    unsent = struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    server, client = conn.getpeername()[1], conn.getsockname()[1]
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if (int(fields[1].rpartition(":")[2], 16), int(fields[2].rpartition(":")[2], 16)) \
                    == (server, client):
                return unsent + int(fields[4].partition(":")[2], 16)
    raise AssertionError(f"no connection from port {client} to {server}")


def test_a_part_waiting_for_the_part_pool_is_stored_when_the_upload_breaks(emulator, tmp_path,
                                                                           area, cos):
    """A part handed to the worker's part pool is stored before the upload is parked, even
    when the pool has not started it yet: the park cancelled it, and an upload whose only
    part waited behind other uploads' parts (a busy worker; under load, the moment between
    handing a part over and a pool thread taking it) was aborted and its bytes lost."""
    busy, broken = f"{area}-busy", f"{area}-broken"
    one_thread = {"worker_processes": "1", "upload_thread_num": "1"}
    with ServerProcess(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                       optional=one_thread) as srv:
        # COS holds the busy upload's first part (the pool's one thread) for 3 s.
        emulator.rendezvous(contains=busy, exact=True, kind="PUT", parties=2, timeout=3)
        first = srv.login("alice", "alice-pw")
        first.voidcmd("TYPE I")
        holding = first.transfercmd(f"STOR {busy}")
        holding.sendall(os.urandom(MIB + 1))
        wait_until(lambda: any(entry["target"] == busy and entry["end"] is None
                               for entry in request_log(emulator.port, busy)),
                   what="the busy upload's part held by COS")
        second = srv.login("alice", "alice-pw")
        second.voidcmd("TYPE I")
        conn = second.transfercmd(f"STOR {broken}")
        conn.sendall(os.urandom(2 * MIB + 1))
        # Part 2's bytes are read once part 1 is handed to the pool (the busy one's thread).
        wait_until(lambda: _unread(conn) < MIB, what="the server to read part 2")
        second.sock.close()
        second.close()
        conn.close()
        wait_until(lambda: is_parked(cos, broken), what="the upload to be parked")
        assert park_records(cos, broken)[0]["size"] == MIB
        holding.close()
        assert first.voidresp().startswith("226")
        assert cos.head_object(Bucket=ALPHA, Key=busy)["Content-Length"] == str(MIB + 1)
        first.quit()


def test_resume_ttl_zero_aborts_at_once(emulator, tmp_path, area, cos):
    with ServerProcess(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                       optional={"resume_ttl": "0"}) as srv:
        ftp = srv.login("alice", "alice-pw")
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd(f"STOR {area}")
        conn.sendall(os.urandom(3 * MIB))
        wait_until(lambda: len(parts_of(cos, area)) >= 2, what="parts in COS")
        ftp.sock.close()
        ftp.close()
        conn.close()
        wait_until(lambda: not pending_uploads(cos, area), what="the upload to be aborted")
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False


def test_janitor_aborts_parked_uploads_past_the_ttl(emulator, tmp_path, area, cos):
    orphan = f"{area}-orphan"  # a marker but no record: maybe still in flight, kept an hour
    leave_behind(cos, orphan)
    with ServerProcess(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                       optional={"resume_ttl": "2"}) as srv:
        break_upload(srv.login("alice", "alice-pw"), cos, area, os.urandom(3 * MIB), 2)
        wait_until(lambda: not pending_uploads(cos, area) and not park_records(cos, area)
                   and "janitor: aborted multipart upload" in srv.log_text(), timeout=30,
                   what="the janitor to abort the parked upload and delete its record")
    assert pending_uploads(cos, orphan)


def leave_behind(cos, key: str) -> str:
    """What a crashed worker leaves: an upload with its live marker and no activity."""
    upload_id = cos.create_multipart_upload(Bucket=ALPHA, Key=key)["UploadId"]
    cos.put_object(Bucket=ALPHA, Key=live_key(key, upload_id), Body=b"{}")
    return upload_id


def test_janitor_aborts_left_behind_uploads_only_after_their_idle_time(emulator, area, cos):
    orphan = f"{area}-orphan"
    upload_id = leave_behind(cos, orphan)
    bucket = BucketRegistry().bucket(emulator_account(emulator, ALPHA))
    Janitor([bucket], ttl=EAGER_TTL).sweep(bucket)  # the default: an hour without a part
    assert pending_uploads(cos, orphan)
    eager = Janitor([bucket], ttl=EAGER_TTL, orphan_idle=0)
    wait_until(lambda: eager.sweep(bucket) and not pending_uploads(cos, orphan),
               what="the orphan to be aborted")
    assert cos.object_exists(Bucket=ALPHA, Key=live_key(orphan, upload_id)) is False


def test_a_big_rename_cut_short_by_a_crash_is_cleaned_up_by_the_janitor(emulator, tmp_path,
                                                                        area, cos):
    """A multipart copy has a live marker, like an upload: what a crash in the middle of
    one leaves behind, the janitor knows as its own and aborts.

    COS holds the copy of part 1 (a rendezvous of two, the test's own copy of that part
    the second) until the server is killed, so the copy cannot complete first. Before,
    every COS request took a second and the kill came once the marker was seen: at load
    ~30 the test saw it late, the completion was already in flight, the upload completed
    after the test had listed it, and no sweep had anything to abort (45 s waited out)."""
    source, target = f"{area}/big.bin", f"{area}/moved.bin"
    cos.put_object(Bucket=ALPHA, Key=source, Body=os.urandom(3 * MIB))

    def markers() -> list:
        return cos.list_objects(Bucket=ALPHA, Prefix=f".cosftp/live/{target}/").get(
            "Contents", [])

    def held() -> bool:
        return any(entry["kind"] == "COPY" and entry["end"] is None
                   for entry in request_log(emulator.port, target) if entry["target"] == target)

    # The timeout is a hang guard: the test's own copy of part 1 lets the held one go.
    emulator.rendezvous(contains=target, exact=True, kind="COPY", part=1, parties=2,
                        timeout=120)
    with ServerProcess(str(tmp_path), emulator.port, [Account("mover", "mover-pw", ALPHA)],
                       optional={"multipart_copy_threshold": str(MIB)}) as srv:
        ftp = srv.login("mover", "mover-pw")
        ftp.sendcmd(f"RNFR {source}")
        ftp.putcmd(f"RNTO {target}")
        wait_until(held, timeout=30, what="the copy of part 1 held by COS")
        master = psutil.Process(srv.proc.pid)
        for process in [*master.children(), master]:  # a crash, not a graceful stop
            process.kill()
        srv.proc.wait()
        ftp.close()
    [upload] = pending_uploads(cos, target)
    assert [item["Key"] for item in markers()] == [live_key(target, upload["UploadId"])]
    cos.upload_part_copy(Bucket=ALPHA, Key=target, PartNumber=1, UploadId=upload["UploadId"],
                         CopySource={"Bucket": ALPHA, "Key": source, "Region": emulator.region},
                         CopySourceRange=f"bytes=0-{MIB - 1}")
    assert emulator.rendezvous()["passed"] == 2
    bucket = BucketRegistry().bucket(emulator_account(emulator, ALPHA))
    eager = Janitor([bucket], ttl=EAGER_TTL, orphan_idle=0)
    wait_until(lambda: eager.sweep(bucket) and not pending_uploads(cos, target),
               what="the janitor to abort the copy")
    assert markers() == []
    assert cos.object_exists(Bucket=ALPHA, Key=source)


def test_janitor_leaves_other_tools_uploads_alone(emulator, area, cos):
    foreign = f"{area}-foreign"  # say, a paused coscli upload: no marker of ours
    cos.create_multipart_upload(Bucket=ALPHA, Key=foreign)
    bucket = BucketRegistry().bucket(emulator_account(emulator, ALPHA))
    leave_behind(cos, f"{area}-ours")
    eager = Janitor([bucket], ttl=EAGER_TTL, orphan_idle=0)
    wait_until(lambda: eager.sweep(bucket) and not pending_uploads(cos, f"{area}-ours"),
               what="our own orphan to be aborted")
    assert pending_uploads(cos, foreign)
