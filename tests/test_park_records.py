"""Park records shared by workers of two versions, and a resumed STOR whose name another
session wrote meanwhile (test_resume.py: parking and resuming as such)."""

from __future__ import annotations

import ftplib
import json
import os
import subprocess

import pytest

from .conftest import ALPHA
from .server_proc import Account, ServerProcess, wait_until
from .test_clients import require
from .test_commands import get, put
from .test_resume import MIB, RECORDS, break_upload, is_parked, park_records, rest_stor
from .test_transfers import pending_uploads


@pytest.fixture
def parking(emulator, tmp_path):
    accounts = [Account("alice", "alice-pw", ALPHA), Account("carol", "carol-pw", ALPHA)]
    with ServerProcess(str(tmp_path), emulator.port, accounts) as srv:
        yield srv


def rewrite_record(cos, key: str, **changes) -> None:
    """Put the one park record of ``key`` back with ``changes``, as another version of the
    server would have written it."""
    [listed] = cos.list_objects(Bucket=ALPHA, Prefix=f"{RECORDS}{key}/")["Contents"]
    [record] = park_records(cos, key)
    cos.put_object(Bucket=ALPHA, Key=listed["Key"],
                   Body=json.dumps({**record, **changes}).encode())


def test_a_park_record_with_a_field_this_version_does_not_know_is_resumed(parking, area, cos):
    """A newer worker sharing the parks (a rolling upgrade) writes records with fields this
    one does not know: it resumes them all the same (found: such a record was refused, the
    upload offered to nobody on this worker)."""
    data = os.urandom(3 * MIB + 5)
    break_upload(parking.login("alice", "alice-pw"), cos, area, data[:2 * MIB + 5], 1)
    rewrite_record(cos, area, written_by="a later version", checks={"sha256": "…"})
    ftp = parking.login("alice", "alice-pw")
    offset = ftp.size(area)
    assert offset in (MIB, 2 * MIB)
    assert rest_stor(ftp, area, offset, data[offset:]).startswith("226")
    assert get(ftp, area) == data
    ftp.quit()
    assert pending_uploads(cos, area) == [] and not is_parked(cos, area)


def test_a_park_record_of_a_later_version_is_left_to_the_workers_that_read_it(parking, area,
                                                                             cos):
    """A record whose ``version`` is above this worker's changed in a way it must not ignore:
    it offers no resume of it, and leaves it parked for the workers that read it."""
    data = os.urandom(2 * MIB + 5)
    break_upload(parking.login("alice", "alice-pw"), cos, area, data, 1)
    [written] = park_records(cos, area)
    assert "version" not in written  # version 1: readable by the workers before it too
    rewrite_record(cos, area, version=2)
    ftp = parking.login("alice", "alice-pw")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.size(area)
    with pytest.raises(ftplib.error_perm, match=r"^554"):
        rest_stor(ftp, area, MIB, data[MIB:])
    ftp.quit()
    assert is_parked(cos, area) and pending_uploads(cos, area)
    assert "record version 2" in parking.log_text()


@pytest.mark.parametrize("before", [b"", b"old"], ids=["a new name", "over a file"])
def test_a_resume_does_not_overwrite_what_another_session_stored_while_it_ran(
        parking, area, cos, before):
    """A resumed STOR is the upload that began before the other session's STOR: it commits
    only while the name holds what it started over, as its park was kept only then. Found:
    it completed over the other session's file, which was lost. Now that file stays, the
    resume ends with 550 and its upload is discarded (a park the name outdates is never
    offered again)."""
    data = os.urandom(3 * MIB + 5)
    ftp = parking.login("alice", "alice-pw")
    if before:
        put(ftp, area, before)
    break_upload(ftp, cos, area, data[:2 * MIB + 5], 1)
    ftp = parking.login("alice", "alice-pw")
    offset = ftp.size(area)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"STOR {area}", rest=offset)  # the park is claimed: the resume runs
    other = parking.login("carol", "carol-pw")
    assert put(other, area, b"replaced").startswith("226")
    other.quit()
    conn.sendall(data[offset:])
    conn.close()
    with pytest.raises(ftplib.error_perm,
                       match=r"^550 .*written by another session since this upload was "
                             r"interrupted"):
        ftp.voidresp()
    assert get(ftp, area) == b"replaced"
    assert ftp.size(area) == len(b"replaced")
    ftp.quit()
    assert pending_uploads(cos, area) == [] and not is_parked(cos, area)


def test_lftp_put_continue_gives_up_when_its_resume_finds_another_sessions_file(
        parking, emulator, area, cos, tmp_path):
    """``lftp put -c`` whose resume finds, before it completes, the file another session
    stored meanwhile: lftp stops with the reply and that file stays. Found with 451: lftp
    retried at once the way put -c does (SIZE: the other file's 8 bytes, REST 8, STOR), and
    the server appended the rest of lftp's file (its first 192 KiB: lftp's cut retry) to the
    other session's file, 226. The resume's HEAD (is the name still what the upload began
    with) is held by the rendezvous until the other session's file is stored and the test's
    own HEAD of it meets it."""
    src = tmp_path / "big.bin"
    data = os.urandom(3 * MIB + 5)
    src.write_bytes(data)
    break_upload(parking.login("alice", "alice-pw"), cos, area, data[:MIB + 5], 1)
    emulator.requests(reset=True)
    emulator.rendezvous(contains=area, exact=True, kind="HEAD", parties=2, timeout=60)
    settings = ("set cmd:fail-exit true; set ftp:passive-mode true; set net:max-retries 3; "
                "set net:reconnect-interval-base 1; set net:reconnect-interval-multiplier 1;")
    lftp = subprocess.Popen(
        [require("lftp"), "-u", "alice,alice-pw", "-p", str(parking.port), "-e",
         f"{settings} put -c {src} -o {area}; bye", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: emulator.requests(contains=area).get("HEAD"), timeout=60,
                   what="the resume's HEAD before its completion")
        other = parking.login("carol", "carol-pw")
        assert put(other, area, b"replaced").startswith("226")
        other.quit()
        cos.head_object(Bucket=ALPHA, Key=area)  # meets the resume's HEAD: both go on
        out, err = lftp.communicate(timeout=60)
    finally:
        if lftp.poll() is None:
            lftp.kill()
            lftp.wait()
    assert emulator.rendezvous() == {"armed": False, "passed": 2, "broken": 0}
    assert lftp.returncode == 1, (out, err)
    assert "written by another session since this upload was interrupted" in err
    assert cos.get_object(Bucket=ALPHA, Key=area)["Body"].get_raw_stream().read() == \
        b"replaced"
    assert pending_uploads(cos, area) == [] and not is_parked(cos, area)
