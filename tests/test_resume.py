"""Upload resume: a broken STOR is parked in COS and REST + STOR continues it
(test_parked_uploads.py: parks across restarts and reloads, and the janitor)."""

from __future__ import annotations

import ftplib
import io
import json
import os
import signal
import subprocess
import time
from email.utils import parsedate_to_datetime

import pytest
from fastcrc import crc64
from qcloud_cos.cos_exception import CosServiceError

from .conftest import ALPHA
from .server_proc import Account, ServerProcess, wait_until
from .test_clients import lftp_command, require, run
from .test_commands import get, put
from .test_transfers import (
    abort_transfer,
    abort_waiting,
    copies,
    pending_uploads,
    release_copy,
)

MIB = 1024 * 1024
RECORDS = ".cosftp/parked/"


def parts_of(cos, key: str) -> list[int]:
    """Part numbers of the one pending upload of ``key`` ([] if there is none)."""
    uploads = pending_uploads(cos, key)
    if not uploads:
        return []
    assert len(uploads) == 1, uploads
    listing = cos.list_parts(Bucket=ALPHA, Key=key, UploadId=uploads[0]["UploadId"])
    return [int(part["PartNumber"]) for part in listing.get("Part", [])]


def park_records(cos, key: str) -> list[dict]:
    """The park records of ``key`` (what the server wrote when it parked an upload)."""
    listing = cos.list_objects(Bucket=ALPHA, Prefix=f"{RECORDS}{key}/")
    records = []
    for item in listing.get("Contents", []):
        try:
            body = cos.get_object(Bucket=ALPHA, Key=item["Key"])["Body"].get_raw_stream().read()
        except CosServiceError as exc:
            if exc.get_error_code() != "NoSuchKey":
                raise
            continue  # deleted since the listing (by the janitor, or a resume)
        records.append(json.loads(body))
    return records


def is_parked(cos, key: str) -> bool:
    return bool(park_records(cos, key))


def break_upload(ftp: ftplib.FTP, cos, key: str, data: bytes, parts: int) -> None:
    """Send ``data`` in a STOR until COS holds ``parts`` parts, then drop both connections
    the way a killed client does (control first, then data) and wait for the park."""
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"STOR {key}")
    conn.sendall(data)
    wait_until(lambda: len(parts_of(cos, key)) >= parts, what=f"{parts} parts in COS")
    ftp.sock.close()
    ftp.close()
    conn.close()
    wait_until(lambda: is_parked(cos, key), what="the upload to be parked")


def after_stored_second(cos, key: str) -> None:
    """Wait for the clock to pass the second COS stored ``key`` in (COS times have whole
    seconds), so what happens next is newer."""
    headers = {name.lower(): value for name, value in
               cos.head_object(Bucket=ALPHA, Key=key).items()}
    stored = parsedate_to_datetime(headers["last-modified"])
    wait_until(lambda: time.time() >= stored.timestamp() + 1, what="the next second")


def rest_stor(ftp: ftplib.FTP, key: str, offset: int, data: bytes) -> str:
    return ftp.storbinary(f"STOR {key}", io.BytesIO(data), rest=offset)


@pytest.fixture(scope="module")
def resumable(emulator, tmp_path_factory):
    """One server for the tests of a file, started once rather than once per test (34 here).
    The tests run one after another on it, each on keys of its own (``area``), each waiting
    for the parks it made and putting back the emulator's faults it set; one that reads the
    log looks for its own keys there, or at what was logged since it began."""
    accounts = [Account("alice", "alice-pw", ALPHA), Account("carol", "carol-pw", ALPHA)]
    with ServerProcess(str(tmp_path_factory.mktemp("resumable")), emulator.port,
                       accounts) as srv:
        yield srv


def test_broken_upload_is_parked_and_rest_stor_resumes_it(resumable, area, cos):
    data = os.urandom(6 * MIB + 12345)
    break_upload(resumable.login("alice", "alice-pw"), cos, area, data[:3 * MIB + 5], 2)
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False  # nothing visible meanwhile
    ftp = resumable.login("alice", "alice-pw")
    offset = ftp.size(area)
    assert offset in (2 * MIB, 3 * MIB)  # whole parts only; the rest is sent again
    assert rest_stor(ftp, area, offset, data[offset:]).startswith("226")
    assert get(ftp, area) == data
    assert pending_uploads(cos, area) == []
    assert ftp.size(area) == len(data)
    ftp.quit()
    assert f"path=/{area}: resuming parked upload" in resumable.log_text()


def test_allo_before_rest_stor_announces_the_whole_file(resumable, area, cos):
    """lftp (``ftp:use-allo``) announces the whole file's size before REST + STOR: the
    bytes after the offset complete it, and are no upload cut short."""
    data = os.urandom(3 * MIB + 7)
    break_upload(resumable.login("alice", "alice-pw"), cos, area, data[:2 * MIB + 5], 1)
    ftp = resumable.login("alice", "alice-pw")
    offset = ftp.size(area)
    ftp.voidcmd(f"ALLO {len(data)}")
    assert rest_stor(ftp, area, offset, data[offset:]).startswith("226")
    assert get(ftp, area) == data
    ftp.quit()


def test_rest_at_another_offset_is_refused_and_keeps_the_parked_upload(resumable, area, cos):
    data = os.urandom(4 * MIB)
    break_upload(resumable.login("alice", "alice-pw"), cos, area, data[:3 * MIB], 2)
    ftp = resumable.login("alice", "alice-pw")
    offset = ftp.size(area)
    for wrong in (offset - 1, MIB):
        with pytest.raises(ftplib.error_perm, match=f"554 Cannot resume at byte {wrong}: .* "
                                                    f"ends at byte {offset}"):
            rest_stor(ftp, area, wrong, data[wrong:])
    with pytest.raises(ftplib.error_perm, match="554"):
        rest_stor(ftp, area, offset + 1, data[offset + 1:])
    assert is_parked(cos, area)
    assert rest_stor(ftp, area, offset, data[offset:]).startswith("226")
    assert get(ftp, area) == data
    ftp.quit()


def test_a_new_stor_wins_over_a_parked_upload_and_discards_it(resumable, area, cos):
    break_upload(resumable.login("alice", "alice-pw"), cos, area, os.urandom(3 * MIB), 2)
    ftp = resumable.login("alice", "alice-pw")
    assert put(ftp, area, b"fresh").startswith("226")
    wait_until(lambda: ftp.size(area) == 5, what="SIZE to see the newer object")
    assert not is_parked(cos, area) and pending_uploads(cos, area) == []
    with pytest.raises(ftplib.error_perm, match="554"):
        rest_stor(ftp, area, 2 * MIB, b"x")
    ftp.quit()


def test_the_time_mfmt_sets_does_not_make_a_parked_upload_look_newer(resumable, area, cos):
    break_upload(resumable.login("alice", "alice-pw"), cos, area, os.urandom(3 * MIB), 2)
    ftp = resumable.login("alice", "alice-pw")
    assert put(ftp, area, b"complete").startswith("226")
    assert ftp.sendcmd(f"MFMT 20010203040506 {area}").startswith("213")
    ftp.retrlines("LIST")  # the listing shows (and caches) the 2001 time
    wait_until(lambda: ftp.size(area) == 8, what="SIZE to see the newer object")
    ftp.quit()


def test_appe_after_size_continues_the_parked_upload(resumable, area, cos):
    """What ``curl -C - -T`` does: SIZE, then APPE of the bytes after that."""
    data = os.urandom(4 * MIB + 77)
    put(resumable.login("alice", "alice-pw"), area, b"an older version")
    after_stored_second(cos, area)
    break_upload(resumable.login("alice", "alice-pw"), cos, area, data[:3 * MIB], 2)
    ftp = resumable.login("alice", "alice-pw")
    offset = ftp.size(area)
    assert offset >= 2 * MIB
    assert ftp.storbinary(f"APPE {area}", io.BytesIO(data[offset:])).startswith("226")
    assert get(ftp, area) == data
    assert pending_uploads(cos, area) == [] and not is_parked(cos, area)
    ftp.quit()


def test_appe_without_size_appends_to_the_file_and_leaves_the_parked_upload(resumable, area,
                                                                            cos):
    put(resumable.login("alice", "alice-pw"), area, b"line 1\n")
    after_stored_second(cos, area)
    break_upload(resumable.login("alice", "alice-pw"), cos, area, os.urandom(3 * MIB), 2)
    ftp = resumable.login("alice", "alice-pw")
    assert ftp.storbinary(f"APPE {area}", io.BytesIO(b"line 2\n")).startswith("226")
    assert get(ftp, area) == b"line 1\nline 2\n"
    assert is_parked(cos, area)
    ftp.quit()


def test_a_broken_appe_is_parked_with_its_copy_once_cos_made_it(resumable, emulator, area,
                                                                 cos):
    """An APPE's copy of the old bytes runs while the new ones arrive (it waited before the
    150): a client gone while COS still copies leaves the upload parked once the copy is
    made, with it as part 1 (a record naming a part COS had not made would resume into a
    failed completion), and REST + STOR completes the file."""
    old, data = os.urandom(2 * MIB + 7), os.urandom(3 * MIB + 5)
    ftp = resumable.login("alice", "alice-pw")
    put(ftp, area, old)  # the park continues it, in its second or later (its ETag)
    emulator.rendezvous(contains=area, kind="COPY", parties=2, timeout=15)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"APPE {area}")
    assert copies(emulator, area) == 0
    conn.sendall(data)
    wait_until(lambda: copies(emulator, area) == 1 and parts_of(cos, area) == [2, 3, 4],
               what="parts 2-4 in COS while the copy is held")
    ftp.sock.close()  # gone as a killed client goes: control first, then data
    ftp.close()
    conn.close()
    release_copy(emulator, cos, area)
    wait_until(lambda: is_parked(cos, area), what="the upload to be parked")
    [record] = park_records(cos, area)
    assert (record["parts"], record["size"]) == (4, len(old) + 3 * MIB)
    ftp = resumable.login("alice", "alice-pw")
    offset = ftp.size(area)
    assert offset == len(old) + 3 * MIB
    assert rest_stor(ftp, area, offset, data[3 * MIB:]).startswith("226")
    assert get(ftp, area) == old + data
    assert pending_uploads(cos, area) == [] and not is_parked(cos, area)
    ftp.quit()


def stored_second(cos, key: str) -> int:
    """The whole second COS gives as ``key``'s LastModified."""
    headers = {name.lower(): value for name, value in
               cos.head_object(Bucket=ALPHA, Key=key).items()}
    return int(parsedate_to_datetime(headers["last-modified"]).timestamp())


def break_appe(ftp: ftplib.FTP, cos, key: str, data: bytes) -> None:
    """Send ``data`` in an APPE of ``key`` until COS holds part 1, then drop both
    connections the way a killed client does and wait for the park."""
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"APPE {key}")
    conn.sendall(data)
    wait_until(lambda: parts_of(cos, key), what="part 1 in COS")
    ftp.sock.close()
    ftp.close()
    conn.close()
    wait_until(lambda: is_parked(cos, key), what="the APPE to be parked")


def parked_in_the_second_of_its_file(server, cos, area: str, old: bytes, data: bytes,
                                     command: str = "APPE") -> str:
    """Store ``old``, then send ``data`` in an APPE to it (or a STOR over it) and break
    that once COS holds a part, in one second of COS's clock (tried again on new keys
    until it is); return the key."""
    for attempt in range(10):
        key = f"{area}-{attempt}"
        ftp = server.login("alice", "alice-pw")
        # Start early in a second, so the three steps fit in it.
        wait_until(lambda: time.time() % 1 < 0.2, what="a new second")
        put(ftp, key, old)
        if command == "APPE":
            break_appe(ftp, cos, key, data)
        else:
            break_upload(ftp, cos, key, data, 1)
        [record] = cos.list_objects(Bucket=ALPHA, Prefix=f"{RECORDS}{key}/")["Contents"]
        if stored_second(cos, record["Key"]) == stored_second(cos, key):
            return key
    pytest.fail("no park in the second of its file in 10 tries")


def resume_with(client: str, server, key: str, data: bytes, tmp_path) -> None:
    """Upload ``data`` to ``key`` again the way ``client`` resumes: ftplib asks SIZE and
    sends REST + STOR of what follows; ``curl -C -`` SIZE, then APPE; ``lftp put -c``
    SIZE, then REST + STOR."""
    if client == "ftplib":
        ftp = server.login("alice", "alice-pw")
        offset = ftp.size(key)
        assert offset in (MIB, 2 * MIB)  # whole parts of the new file: its first bytes kept
        assert rest_stor(ftp, key, offset, data[offset:]).startswith("226")
        ftp.quit()
        return
    src = tmp_path / "whole.bin"
    src.write_bytes(data)
    if client == "curl -C -":
        run([require("curl"), "--user", "alice:alice-pw", "--silent", "--show-error",
             "-C", "-", "-T", str(src), f"ftp://127.0.0.1:{server.port}/{key}"])
    else:
        run(lftp_command(server, f"put -c {src} -o {key}"))


@pytest.mark.parametrize("client", ["ftplib", "curl -C -", "lftp put -c"])
def test_an_appe_parked_in_the_second_its_file_was_stored_is_resumed(resumable, area, cos,
                                                                     tmp_path, client):
    """A client stores a file, appends to it, loses the connection and asks SIZE to resume,
    all in one second: the park is what the file became, not older than it. COS times have
    whole seconds, and the park was taken for older than a file stored in its second
    ("the file wins"): it was discarded and SIZE said the file's size, so the client sent
    the appended bytes again. The file is still the version the APPE started from (its
    ETag): the park continues it (ftplib and lftp: REST + STOR; curl: APPE)."""
    old, data = os.urandom(1000), os.urandom(2 * MIB + 3)
    key = parked_in_the_second_of_its_file(resumable, cos, area, old, data)
    resume_with(client, resumable, key, old + data, tmp_path)
    assert f"path=/{key}: resuming parked upload" in resumable.log_text()
    ftp = resumable.login("alice", "alice-pw")
    assert get(ftp, key) == old + data
    assert pending_uploads(cos, key) == [] and not is_parked(cos, key)
    ftp.quit()


def test_a_file_stored_after_an_appe_was_parked_wins_over_it(resumable, area, cos):
    """Another session's STOR after the park replaces the version the APPE continued: the
    file wins, whatever the seconds say, and the park is discarded."""
    ftp = resumable.login("alice", "alice-pw")
    put(ftp, area, b"old")
    break_appe(ftp, cos, area, os.urandom(2 * MIB))
    other = resumable.login("carol", "carol-pw")
    assert put(other, area, b"newer").startswith("226")
    other.quit()
    ftp = resumable.login("alice", "alice-pw")
    assert ftp.size(area) == 5
    assert not is_parked(cos, area) and pending_uploads(cos, area) == []
    ftp.quit()


def test_an_appe_whose_file_was_replaced_before_it_broke_is_not_resumed(resumable, area,
                                                                        cos):
    """Another session's STOR while the APPE ran, in a second before the park: the park,
    newer than the file, was offered, and REST + STOR wrote the old version and the
    appended bytes over that STOR's file. The park continues a version the file no longer
    is (its ETag): the file wins, and the park is discarded."""
    the_file_stored_meanwhile_wins(resumable, cos, area, "APPE", b"old")


@pytest.mark.parametrize("client", ["ftplib", "curl -C -", "lftp put -c"])
def test_a_stor_parked_in_the_second_of_the_file_it_replaces_is_resumed(resumable, area, cos,
                                                                        tmp_path, client):
    """A client stores a file, overwrites it with a bigger one at once, loses the
    connection and asks SIZE to resume, all in one second: COS times have whole seconds,
    and the park was taken for older than the file it was to replace ("the file wins"). It
    was discarded and SIZE said the old file's size: ftplib's REST + STOR was refused,
    curl's APPE and lftp's REST + STOR wrote the old file and the rest of the new one. The
    name still holds the file the STOR started over (its ETag, which the park records):
    the park is resumed."""
    old, data = os.urandom(1000), os.urandom(3 * MIB + 3)
    key = parked_in_the_second_of_its_file(resumable, cos, area, old, data[:2 * MIB + 5],
                                           "STOR")
    resume_with(client, resumable, key, data, tmp_path)
    ftp = resumable.login("alice", "alice-pw")
    stored = get(ftp, key)
    ftp.quit()
    assert stored[:len(old)] != old and stored == data
    assert f"path=/{key}: resuming parked upload" in resumable.log_text()
    assert pending_uploads(cos, key) == [] and not is_parked(cos, key)


def test_a_park_record_without_what_its_stor_replaces_goes_by_the_times(resumable, area, cos):
    """Records written before they named the file their STOR replaces are read as then: the
    park is kept only while it is newer than the file. The same bytes stored again after
    the record (the same ETag, for which a record naming it keeps the park) win over it."""
    old = os.urandom(1000)
    ftp = resumable.login("alice", "alice-pw")
    put(ftp, area, old)
    break_upload(ftp, cos, area, os.urandom(2 * MIB + 5), 1)
    [listed] = cos.list_objects(Bucket=ALPHA, Prefix=f"{RECORDS}{area}/")["Contents"]
    [record] = park_records(cos, area)
    record.pop("replaces", None)  # as written before it was kept
    cos.put_object(Bucket=ALPHA, Key=listed["Key"], Body=json.dumps(record).encode())
    cos.put_object(Bucket=ALPHA, Key=area, Body=old)  # not older than the record
    ftp = resumable.login("alice", "alice-pw")
    assert ftp.size(area) == len(old)
    assert not is_parked(cos, area) and pending_uploads(cos, area) == []
    ftp.quit()


@pytest.mark.parametrize("before", [b"", b"old"], ids=["a new name", "over a file"])
def test_a_stor_whose_name_another_session_stored_before_it_broke_is_not_resumed(
        resumable, area, cos, tmp_path, before):
    """Another session's STOR of the name while this STOR ran, in a second before the
    park: the park, newer than that file, was offered, and its resume wrote over the other
    session's file. The name no longer holds what the STOR started over (no file, or the
    old one's ETag): the file wins, and the park is discarded."""
    the_file_stored_meanwhile_wins(resumable, cos, area, "STOR", before)


def the_file_stored_meanwhile_wins(resumable, cos, area: str, command: str,
                                   before: bytes) -> None:
    """``command`` (APPE or STOR) of ``area``, holding ``before`` if not empty, broken
    once another session stored ``b"replaced"`` there, in a second before the park: SIZE
    says that file's size, the park is discarded and the file is that session's."""
    ftp = resumable.login("alice", "alice-pw")
    if before:
        put(ftp, area, before)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"{command} {area}")
    conn.sendall(os.urandom(2 * MIB))
    wait_until(lambda: parts_of(cos, area), what="part 1 in COS")
    other = resumable.login("carol", "carol-pw")
    assert put(other, area, b"replaced").startswith("226")
    other.quit()
    after_stored_second(cos, area)
    ftp.sock.close()
    ftp.close()
    conn.close()
    wait_until(lambda: is_parked(cos, area), what=f"the {command} to be parked")
    ftp = resumable.login("alice", "alice-pw")
    assert ftp.size(area) == len(b"replaced")
    assert not is_parked(cos, area) and pending_uploads(cos, area) == []
    assert get(ftp, area) == b"replaced"
    ftp.quit()


def test_curl_continue_resumes_a_broken_upload(resumable, tmp_path, area, cos):
    curl = require("curl")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(5 * MIB + 9))
    break_upload(resumable.login("alice", "alice-pw"), cos, area, src.read_bytes()[:3 * MIB], 2)
    run([curl, "--user", "alice:alice-pw", "--silent", "--show-error", "-C", "-", "-T",
         str(src), f"ftp://127.0.0.1:{resumable.port}/{area}"])
    ftp = resumable.login("alice", "alice-pw")
    assert get(ftp, area) == src.read_bytes()
    ftp.quit()
    assert f"path=/{area}: resuming parked upload" in resumable.log_text()


def test_rest_retr_reads_the_stored_file_while_a_smaller_upload_is_parked(resumable, area,
                                                                         cos):
    stored = os.urandom(5 * MIB)
    put(resumable.login("alice", "alice-pw"), area, stored)
    after_stored_second(cos, area)
    break_upload(resumable.login("alice", "alice-pw"), cos, area, os.urandom(3 * MIB), 2)
    ftp = resumable.login("alice", "alice-pw")
    assert ftp.size(area) < 4 * MIB  # SIZE is what an upload continues from
    ftp.voidcmd("TYPE I")
    tail = bytearray()
    ftp.retrbinary(f"RETR {area}", tail.extend, rest=4 * MIB)
    assert bytes(tail) == stored[4 * MIB:]
    ftp.quit()


def test_a_resume_given_up_before_its_data_connection_stays_parked(resumable, area, cos):
    data = os.urandom(4 * MIB + 5)
    break_upload(resumable.login("alice", "alice-pw"), cos, area, data[:3 * MIB], 2)
    ftp = resumable.login("alice", "alice-pw")
    offset = ftp.size(area)
    ftp.voidcmd("TYPE I")
    for give_up in ("ABOR", "PASV", "REIN"):
        ftp.sendcmd("PASV")
        ftp.sendcmd(f"REST {offset}")
        assert ftp.sendcmd(f"STOR {area}").startswith("150")  # waits for a connection
        if give_up == "ABOR":
            abort_waiting(ftp)
        else:  # the STOR's final reply first (test_command_orders, test_replies)
            with pytest.raises(ftplib.error_temp, match="425"):
                ftp.sendcmd(give_up)
            assert ftp.getresp().startswith("227" if give_up == "PASV" else "220")
        if give_up == "REIN":
            ftp.login("alice", "alice-pw")
            ftp.voidcmd("TYPE I")
        wait_until(lambda: is_parked(cos, area), what=f"the upload to be parked after {give_up}")
        assert len(pending_uploads(cos, area)) == 1
    assert rest_stor(ftp, area, offset, data[offset:]).startswith("226")
    assert get(ftp, area) == data
    ftp.quit()


@pytest.mark.parametrize("give_up", ["ABOR", "QUIT", "disconnect"])
def test_an_appe_given_up_before_its_data_connection_leaves_no_upload(resumable, area, cos,
                                                                      emulator, give_up):
    """Its multipart upload and copy would start with its first bytes: none are."""
    old = os.urandom(2 * MIB)
    put(resumable.login("alice", "alice-pw"), area, old)
    before = emulator.requests(contains=area)
    ftp = resumable.login("alice", "alice-pw")
    ftp.voidcmd("TYPE I")
    ftp.sendcmd("PASV")
    assert ftp.sendcmd(f"APPE {area}").startswith("150")
    assert pending_uploads(cos, area) == []
    if give_up == "disconnect":
        ftp.close()
    elif give_up == "ABOR":
        abort_waiting(ftp)
    else:  # QUIT: the APPE's final reply first (test_waiting_transfers), then 221
        with pytest.raises(ftplib.error_temp, match="425"):
            ftp.sendcmd(give_up)
        assert ftp.getresp().startswith("221")
    after = emulator.requests(contains=area)
    assert (after.get("POST", 0), after.get("COPY", 0)) == \
        (before.get("POST", 0), before.get("COPY", 0))
    assert pending_uploads(cos, area) == []
    assert not is_parked(cos, area)
    ftp.close()
    assert get(resumable.login("alice", "alice-pw"), area) == old


def test_a_second_upload_while_a_first_waits_is_refused(resumable, area, cos):
    """The second APPE is refused (test_command_orders: pyftpdlib queued it in place of the
    first, whose 150 then never got its final reply); the first still waits, and closing
    the session aborts it."""
    put(resumable.login("alice", "alice-pw"), area, os.urandom(2 * MIB))
    ftp = resumable.login("alice", "alice-pw")
    ftp.voidcmd("TYPE I")
    ftp.sendcmd("PASV")
    assert ftp.sendcmd(f"APPE {area}").startswith("150")  # holds the file's intent
    with pytest.raises(ftplib.error_temp, match="450"):
        ftp.sendcmd(f"APPE {area}")
    ftp.close()
    # Closing the session gave the first up: the file may be appended to again.
    other = resumable.login("alice", "alice-pw")

    def appended() -> bool:
        try:
            return other.storbinary(f"APPE {area}", io.BytesIO(b"t")).startswith("226")
        except ftplib.error_temp as exc:
            assert str(exc).startswith("450"), exc
            return False
    wait_until(appended, what="an APPE once the waiting one is given up")
    other.quit()
    assert pending_uploads(cos, area) == []
    assert not is_parked(cos, area)


def test_a_resume_that_cannot_mark_its_upload_leaves_it_parked(resumable, emulator, area,
                                                                cos):
    """Without its live marker a claimed upload would be out of the janitor's sight."""
    data = os.urandom(3 * MIB + 5)
    break_upload(resumable.login("alice", "alice-pw"), cos, area, data[:2 * MIB + 9], 2)
    ftp = resumable.login("alice", "alice-pw")
    offset = ftp.size(area)
    emulator.set_faults(deny_prefix=".cosftp/live/")
    try:
        with pytest.raises(ftplib.error_perm, match="550"):
            rest_stor(ftp, area, offset, data[offset:])
    finally:
        emulator.set_faults(deny_prefix="")
    assert is_parked(cos, area)
    assert rest_stor(ftp, area, offset, data[offset:]).startswith("226")
    assert get(ftp, area) == data
    ftp.quit()


def test_without_access_to_cosftp_files_still_list_and_upload(resumable, emulator, area,
                                                                cos):
    """Credentials limited to some prefixes may not read .cosftp/: no parking, no MFMT
    times, no intents guarding APPE and directory renames, but everything else works."""
    data = os.urandom(3 * MIB)
    log_size = len(resumable.log_text())
    emulator.set_faults(deny_prefix=".cosftp/")
    try:
        ftp = resumable.login("alice", "alice-pw")
        assert put(ftp, area, data).startswith("226")
        assert ftp.nlst() and area in ftp.nlst()
        assert ftp.size(area) == len(data)
        assert get(ftp, area) == data
        assert ftp.storbinary(f"APPE {area}", io.BytesIO(b"tail")).startswith("226")
        assert get(ftp, area) == data + b"tail"
        ftp.mkd(f"{area}-d")
        put(ftp, f"{area}-d/f", b"x")
        assert ftp.rename(f"{area}-d", f"{area}-e").startswith("250")
        assert get(ftp, f"{area}-e/f") == b"x"
        ftp.quit()
        logged = resumable.log_text()[log_size:]
        assert f"key={area}: cannot mark upload" in logged
        assert "goes ahead unguarded" in logged
    finally:
        emulator.set_faults(deny_prefix="")
    assert pending_uploads(cos, area) == []


def test_abor_discards_instead_of_parking(resumable, area, cos):
    ftp = resumable.login("alice", "alice-pw")
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"STOR {area}")
    conn.sendall(os.urandom(3 * MIB))
    wait_until(lambda: len(parts_of(cos, area)) >= 2, what="parts in COS")
    abort_transfer(ftp, conn)
    wait_until(lambda: not pending_uploads(cos, area), what="the upload to be aborted")
    with pytest.raises(ftplib.error_perm, match="550"):
        ftp.size(area)
    ftp.quit()


def test_rest_stor_at_the_end_of_a_stored_file_appends(resumable, area):
    data = os.urandom(2 * MIB + 3)
    ftp = resumable.login("alice", "alice-pw")
    for cut in (100, MIB + 1):  # re-sent bytes, then a copied part
        put(ftp, area, data[:cut])
        assert rest_stor(ftp, area, cut, data[cut:]).startswith("226")
        assert get(ftp, area) == data
    ftp.quit()


def test_lftp_put_continue_resumes_a_killed_upload(resumable, tmp_path, area, cos):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(8 * MIB + 321))
    args = lftp_command(resumable, f"set net:limit-rate 1M; put {src} -o {area}")
    killed = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(parts_of(cos, area)) >= 2, timeout=30, what="parts in COS")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    wait_until(lambda: is_parked(cos, area), what="the upload to be parked")
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False  # the kill was not an EOF
    done = subprocess.run(lftp_command(resumable, f"put -c {src} -o {area}"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    back = tmp_path / "back.bin"
    subprocess.run(lftp_command(resumable, f"get {area} -o {back}"), check=True, timeout=60)
    assert back.read_bytes() == src.read_bytes()
    assert f"path=/{area}: resuming parked upload" in resumable.log_text()


def test_the_park_record_names_user_path_bytes_their_crc_and_what_it_replaces(resumable, area,
                                                                             cos):
    data = os.urandom(3 * MIB)
    break_upload(resumable.login("alice", "alice-pw"), cos, area, data, 2)
    [record] = park_records(cos, area)
    ftp = resumable.login("alice", "alice-pw")
    assert ftp.size(area) == record["size"]
    ftp.quit()
    assert (record["user"], record["path"], record["key"]) == ("alice", f"/{area}", area)
    assert record["size"] == record["parts"] * MIB
    assert record["crc64"] == crc64.xz(data[:record["size"]])
    assert record["replaces"] == ""  # the name held no file: the park is kept while it holds none


def test_only_the_user_who_parked_an_upload_can_resume_it(resumable, area, cos):
    data = os.urandom(3 * MIB)
    break_upload(resumable.login("alice", "alice-pw"), cos, area, data, 2)
    carol = resumable.login("carol", "carol-pw")
    with pytest.raises(ftplib.error_perm, match="550"):
        carol.size(area)
    with pytest.raises(ftplib.error_perm, match="554"):
        rest_stor(carol, area, 2 * MIB, data[2 * MIB:])
    carol.quit()
    assert is_parked(cos, area)


def test_a_resumed_upload_is_checked_end_to_end(resumable, emulator, area, cos):
    data = os.urandom(3 * MIB + 1)
    break_upload(resumable.login("alice", "alice-pw"), cos, area, data[:3 * MIB], 2)
    ftp = resumable.login("alice", "alice-pw")
    offset = ftp.size(area)
    emulator.set_faults(corrupt_crc=True)
    try:
        with pytest.raises(ftplib.error_temp, match=r"451 .*integrity"):
            rest_stor(ftp, area, offset, data[offset:])
    finally:
        emulator.set_faults(corrupt_crc=False)
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False
    ftp.quit()
