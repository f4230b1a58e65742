"""Uploads and downloads byte for byte; aborted uploads leave nothing behind."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import random
import socket
import struct
import subprocess

import pytest

from .conftest import ALPHA
from .emulator_proc import request_log
from .server_proc import Account, ServerProcess, wait_until
from .test_clients import lftp_command, require
from .test_commands import get, put

MIB = 1024 * 1024
PART = MIB  # the test server's min_part_size


def pending_uploads(cos, key: str) -> list:
    result = cos.list_multipart_uploads(Bucket=ALPHA, Prefix=key)
    return [u for u in result.get("Upload", []) if u["Key"] == key]


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, PART + 1, 3 * PART + PART // 2])
def test_round_trip_exact_sizes(alice, area, cos, size):
    data = os.urandom(size)
    assert put(alice, area, data).startswith("226")
    assert get(alice, area) == data
    head = {k.lower(): v for k, v in cos.head_object(Bucket=ALPHA, Key=area).items()}
    assert int(head["content-length"]) == size
    parts = -(-size // PART)
    multipart_suffix = f'-{parts}"'
    assert head["etag"].endswith(multipart_suffix) == (size > PART)
    assert pending_uploads(cos, area) == []


def test_round_trip_random_size(alice, area):
    size = random.randrange(1, 5 * PART)
    data = os.urandom(size)
    put(alice, area, data)
    assert hashlib.sha256(get(alice, area)).digest() == hashlib.sha256(data).digest()


def test_overwrite_replaces_content(alice, area):
    put(alice, area, b"first version")
    put(alice, area, b"second")
    assert get(alice, area) == b"second"
    assert alice.size(area) == 6


def test_rest_resumes_download(alice, area):
    data = os.urandom(2 * PART + 123)
    put(alice, area, data)
    offset = PART + 17
    assert get(alice, area, rest=offset) == data[offset:]
    assert get(alice, area, rest=len(data)) == b""


def test_rest_past_end_is_refused(alice, area):
    put(alice, area, b"short")
    with pytest.raises(ftplib.error_perm, match="554"):
        get(alice, area, rest=100)


def test_rest_then_stor_of_a_missing_file_is_refused(alice, area):
    alice.sendcmd("TYPE I")
    alice.sendcmd("REST 10")
    with pytest.raises(ftplib.error_perm, match="554 Cannot resume at byte 10"):
        alice.storbinary(f"STOR {area}", io.BytesIO(b"x"))


def start_upload(ftp: ftplib.FTP, cos, path: str, nbytes: int):
    """Start a STOR, send ``nbytes`` and return once COS holds a multipart upload for it."""
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"STOR {path}")
    conn.sendall(os.urandom(nbytes))
    wait_until(lambda: pending_uploads(cos, path), what="multipart upload to start")
    return conn


def abort_transfer(ftp: ftplib.FTP, conn) -> list[str]:
    """Send ABOR while data flows, read the replies up to the final 225/226, close the data
    connection only then (closing it first would be an end of file, i.e. a commit)."""
    ftp.sock.sendall(b"ABOR\r\n")
    replies = [ftp.getline()]
    while not replies[-1].startswith(("225", "226")):
        replies.append(ftp.getline())
    conn.close()
    return replies


def abort_waiting(ftp: ftplib.FTP) -> None:
    """ABOR a transfer answered 150 whose data connection never came: 426 is that
    command's final reply, then 225/226 ABOR's own."""
    ftp.sock.sendall(b"ABOR\r\n")
    first = ftp.getline()
    assert first.startswith("426"), first
    assert ftp.getline()[:3] in ("225", "226")


def test_abor_mid_upload_leaves_no_object(alice, area, cos):
    conn = start_upload(alice, cos, area, 3 * PART)
    replies = abort_transfer(alice, conn)
    assert any(r.startswith("426") for r in replies) or replies[-1].startswith("225")
    wait_until(lambda: not pending_uploads(cos, area), what="multipart upload aborted")
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False
    assert alice.voidcmd("NOOP").startswith("200")


def test_reset_data_connection_is_not_a_complete_upload(alice, area, cos):
    """A reset is no end of file: the kernel drops what it received and nobody read yet."""
    conn = start_upload(alice, cos, area, 3 * PART)  # the server is reading: it has begun
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # linger 0: the kernel sends RST, not FIN
    with pytest.raises(ftplib.error_temp, match="426"):
        alice.voidresp()
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False
    assert alice.voidcmd("NOOP").startswith("200")


@pytest.mark.parametrize("size", [1000, 2 * PART + 7])
def test_data_ending_short_of_its_allo_size_is_no_complete_upload(alice, area, cos, size):
    """A client that announced the file's size (ALLO) and closed its data connection
    before sending it all was cut short (lftp 4.9.2's retry after a 451 sends 192 KiB of
    its file, then closes): 426, nothing stored; the whole file then stores."""
    data = os.urandom(size)
    alice.voidcmd("TYPE I")
    alice.voidcmd(f"ALLO {size}")
    conn = alice.transfercmd(f"STOR {area}")
    conn.sendall(data[:-1])
    conn.close()
    with pytest.raises(ftplib.error_temp, match=f"426 .*{size - 1} of the {size} bytes"):
        alice.voidresp()
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False
    alice.voidcmd(f"ALLO {size}")
    assert put(alice, area, data).startswith("226")
    assert get(alice, area) == data


@pytest.mark.parametrize("use_allo", ["yes", "no"])
def test_lftp_retrying_a_refused_upload_stores_the_whole_file(server, alice, tmp_path, area,
                                                              emulator, use_allo):
    """lftp 4.9.2 retries a STOR refused (451) after it had sent all of a file by sending
    its first 192 KiB and closing ("copy: put rolled back to 0"), then waits for ever.
    With ``ftp:use-allo`` the server knows the size; without (lftp's default) it knows the
    bytes of the upload that failed: either way that retry gets 426, lftp reconnects and
    sends it all; exit 0 and the object whole, never the 192 KiB. (The 451: COS reports
    another CRC64 than the bytes sent, found at the commit, after the last byte.)"""
    data = os.urandom(PART - 48_576)  # one PUT; more than lftp's retry sends before it closes
    (tmp_path / "f.bin").write_bytes(data)
    start = len(server.log_text())
    alice.mkd(area)
    emulator.set_faults(corrupt_crc_next=1)  # the STOR's PUT: COS's answer, not its retry's
    command = lftp_command(server, f"set ftp:use-allo {use_allo}; set net:max-retries 3; "
                                   f"set net:reconnect-interval-base 1; "
                                   f"put {tmp_path / 'f.bin'} -o {area}/f.bin")
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        _, errors = client.communicate(timeout=60)
    finally:
        emulator.set_faults(corrupt_crc_next=0)
        client.kill()
        client.wait()
    replies = [line for line in server.log_text()[start:].splitlines() if area in line]
    assert any("-> 451 integrity check failed" in line for line in replies)
    assert client.returncode == 0, errors
    assert get(alice, f"{area}/f.bin") == data


@pytest.mark.parametrize("first", [True, False], ids=["its-first-bytes", "other-bytes"])
def test_a_stor_sending_the_start_of_the_one_that_failed_before_it_is_cut_short(
        alice, area, cos, emulator, first):
    """The STOR after one that failed once all its bytes had arrived (a 451 at the commit),
    to the same name, with only that file's first 192 KiB, is lftp's retry cut short (see
    test_lftp_retrying_a_refused_upload_stores_the_whole_file): 426, nothing stored. Sent
    again, or another file of that size (a camera's latest.jpg after a failure), it stores."""
    data = os.urandom(300_000)
    again = data[:192 * 1024] if first else os.urandom(192 * 1024)
    emulator.set_faults(corrupt_crc_next=1)
    try:
        with pytest.raises(ftplib.error_temp, match="451 integrity check failed"):
            put(alice, area, data)
    finally:
        emulator.set_faults(corrupt_crc_next=0)
    if first:
        with pytest.raises(ftplib.error_temp,
                           match=r"426 .* the first 196608 of the 300000 bytes of the upload"):
            put(alice, area, again)
        assert cos.object_exists(Bucket=ALPHA, Key=area) is False
    assert put(alice, area, again).startswith("226")
    assert get(alice, area) == again


def test_failed_upload_keeps_previous_version(alice, area, cos):
    put(alice, area, b"precious")
    conn = start_upload(alice, cos, area, 2 * PART + 5)
    abort_transfer(alice, conn)
    wait_until(lambda: not pending_uploads(cos, area), what="multipart upload aborted")
    assert get(alice, area) == b"precious"


def curl_put(port: int, user: str, password: str, source, path: str,
             *options: str) -> subprocess.CompletedProcess:
    """``curl -v -T source`` to ``path``, its verbose log (the replies) in ``stderr``."""
    return subprocess.run([require("curl"), "-v", "-sS", *options, "-u", f"{user}:{password}",
                           "-T", str(source), f"ftp://127.0.0.1:{port}/{path}"],
                          capture_output=True, text=True, timeout=120)


def test_file_over_single_file_max_size_is_refused(emulator, tmp_path, cos):
    """552 once the bytes pass the limit; curl, still sending 10 MiB more then, reads it
    (70: the 552 after its data; its data connection is drained, not reset: 55)."""
    limit = 2 * PART
    account = Account("small", "small-pw", ALPHA)
    with ServerProcess(str(tmp_path), emulator.port, [account],
                       file_option={"single_file_max_size": str(limit)}) as srv:
        ftp = srv.login("small", "small-pw")
        key = f"too_big_{os.getpid()}"
        with pytest.raises(ftplib.error_perm, match="552"):
            put(ftp, key, os.urandom(limit + 1))
        put(ftp, "fits", os.urandom(limit))
        ftp.quit()
        big = tmp_path / "big.bin"
        big.write_bytes(b"b" * (limit + 10 * MIB))
        done = curl_put(srv.port, "small", "small-pw", big, key)
        assert done.returncode == 70, done.stderr[-2000:]
        assert "< 552 upload exceeds single_file_max_size" in done.stderr, done.stderr[-2000:]
    assert cos.object_exists(Bucket=ALPHA, Key=key) is False
    assert pending_uploads(cos, key) == []


def appe(ftp: ftplib.FTP, path: str, data: bytes) -> str:
    return ftp.storbinary(f"APPE {path}", io.BytesIO(data))


@pytest.mark.parametrize("old_size", [0, 10, PART, 2 * PART + 7])
def test_appe_appends(alice, area, old_size):
    old, tail = os.urandom(old_size), os.urandom(PART + 3)
    put(alice, area, old)
    assert appe(alice, area, tail).startswith("226")
    assert get(alice, area) == old + tail
    assert alice.size(area) == old_size + len(tail)


def test_a_second_appe_of_a_file_gets_450_until_the_first_is_done(server, alice, area, cos):
    """Two APPEs of one file at once: the one finishing second replaced the first's result
    with the old file plus its own bytes, and both got 226 (found: 4 APPEs onto one 1 GiB
    file, three answered 226, the file kept one). Now the second is refused at once."""
    old, mine, theirs = os.urandom(2 * PART + 7), os.urandom(PART + 3), os.urandom(PART + 5)
    put(alice, area, old)
    alice.voidcmd("TYPE I")
    conn = alice.transfercmd(f"APPE {area}")
    conn.sendall(mine[:100])
    other = server.login("alice", "alice-pw")
    try:
        with pytest.raises(ftplib.error_temp, match=r"^450 .* is being appended to by another"):
            appe(other, area, theirs)
        conn.sendall(mine[100:])
        conn.close()
        assert alice.voidresp().startswith("226")
        assert appe(other, area, theirs).startswith("226")
    finally:
        other.quit()
    assert get(alice, area) == old + mine + theirs
    assert pending_uploads(cos, area) == []


@pytest.mark.parametrize("old_size", [10, 2 * PART + 7])  # bytes sent again, copied parts
def test_an_appe_does_not_commit_over_a_file_replaced_since_it_began(server, alice, area, cos,
                                                                      emulator, old_size):
    """A STOR replacing the file while an APPE ran was lost: the APPE completed the old
    bytes plus its own over it, with 226. It gets 451 instead, and the file is the STOR's."""
    old, mine, theirs = os.urandom(old_size), os.urandom(PART + 3), os.urandom(PART + 5)
    put(alice, area, old)
    alice.voidcmd("TYPE I")
    conn = alice.transfercmd(f"APPE {area}")  # a small file's old bytes are read now
    # A big one's are copied from the first bytes the server reads (pacing reads none
    # before a part's first 32 KiB are there).
    conn.sendall(mine[:64 * 1024])
    if old_size >= PART:
        wait_until(lambda: copy_ended(emulator, area), what="the old bytes' copy")
    other = server.login("alice", "alice-pw")
    try:
        assert put(other, area, theirs).startswith("226")
    finally:
        other.quit()
    conn.sendall(mine[64 * 1024:])
    conn.close()
    with pytest.raises(ftplib.error_temp, match=r"^451 .*changed by another session"):
        alice.voidresp()
    assert get(alice, area) == theirs
    assert pending_uploads(cos, area) == []


def test_an_appe_whose_file_is_replaced_before_its_copy_says_so(server, alice, area, cos):
    """The old bytes of a big file are copied once the APPE's first bytes arrive, pinned to
    the version the APPE found: a STOR replacing the file between the 150 and them makes the
    copy fail, 451 says why, and the file is the STOR's."""
    old, mine, theirs = os.urandom(2 * PART + 7), os.urandom(PART + 3), os.urandom(PART + 5)
    put(alice, area, old)
    alice.voidcmd("TYPE I")
    conn = alice.transfercmd(f"APPE {area}")
    other = server.login("alice", "alice-pw")
    try:
        assert put(other, area, theirs).startswith("226")
    finally:
        other.quit()
    conn.sendall(mine)
    conn.close()
    with pytest.raises(ftplib.error_temp, match=r"^451 .* was replaced while it was being "
                                                r"copied; nothing was changed, try again"):
        alice.voidresp()
    assert get(alice, area) == theirs
    assert pending_uploads(cos, area) == []


def test_appe_to_missing_file_is_stor(alice, area):
    appe(alice, area, b"fresh")
    assert get(alice, area) == b"fresh"


def test_aborted_appe_leaves_the_original(alice, area, cos):
    old = os.urandom(2 * PART)
    put(alice, area, old)
    alice.voidcmd("TYPE I")
    conn = alice.transfercmd(f"APPE {area}")
    conn.sendall(os.urandom(2 * PART + 1))
    wait_until(lambda: pending_uploads(cos, area), what="append upload to start")
    abort_transfer(alice, conn)
    wait_until(lambda: not pending_uploads(cos, area), what="append aborted")
    assert get(alice, area) == old


def copies(emulator, key: str) -> int:
    """The copies naming ``key`` (or a key holding it) that reached COS so far."""
    return emulator.requests(contains=key).get("COPY", 0)


def part_uploads(emulator, key: str) -> int:
    """The PUTs naming ``key`` itself (its parts and single PUTs) that reached COS so far."""
    return sum(1 for entry in request_log(emulator.port, contains=key)
               if entry["kind"] == "PUT" and entry["target"] == key)


def copy_ended(emulator, key: str) -> bool:
    """Whether COS has answered a copy into ``key``."""
    return any(entry["kind"] == "COPY" and entry["target"] == key and entry["end"]
               for entry in request_log(emulator.port, contains=key))


def release_copy(emulator, cos, key: str) -> None:
    """Let go of the server's copy held at the rendezvous armed for copies naming ``key``:
    a copy of ``key`` of the test's own meets it (both go on)."""
    cos.copy_object(Bucket=ALPHA, Key=f"{key}.release",
                    CopySource={"Bucket": ALPHA, "Key": key, "Region": emulator.region})
    cos.delete_object(Bucket=ALPHA, Key=f"{key}.release")


def test_an_appe_is_answered_before_the_old_bytes_are_copied(alice, area, cos, emulator):
    """APPE onto a file of 1 MiB or more copied the old bytes inside COS and waited for the
    copy before its 150: a client appending to a file of many GiB waited minutes for its
    first reply. Now the copy goes out with the first bytes and runs while the others
    arrive: held in COS, it keeps only the 226 waiting, and the parts after it go on."""
    old, tail = os.urandom(2 * PART + 7), os.urandom(2 * PART + 3)
    put(alice, area, old)
    parts_before = part_uploads(emulator, area)
    # Held for at most 15 s (the client waits 30 for a reply): before, the 150 came then.
    emulator.rendezvous(contains=area, kind="COPY", parties=2, timeout=15)
    alice.voidcmd("TYPE I")
    conn = alice.transfercmd(f"APPE {area}")
    assert copies(emulator, area) == 0
    conn.sendall(tail)
    conn.close()
    wait_until(lambda: copies(emulator, area) == 1, what="the copy to reach COS")
    wait_until(lambda: part_uploads(emulator, area) == parts_before + 3,
               what="the 3 parts after the copy to reach COS while it is held")
    release_copy(emulator, cos, area)
    assert alice.voidresp().startswith("226")
    assert emulator.rendezvous() == {"armed": False, "passed": 2, "broken": 0}
    assert get(alice, area) == old + tail
    assert pending_uploads(cos, area) == []


def test_an_appe_aborted_while_cos_copies_is_aborted_after_the_copy(alice, area, cos,
                                                                      emulator):
    """ABOR of an APPE whose copy of the old bytes COS is still making: the multipart
    upload is aborted only once the copy is answered (a copy landing after the abort
    would leave a part behind), and the file stays as it was."""
    old = os.urandom(2 * PART + 7)
    put(alice, area, old)
    emulator.rendezvous(contains=area, kind="COPY", parties=2, timeout=15)
    alice.voidcmd("TYPE I")
    conn = alice.transfercmd(f"APPE {area}")
    assert copies(emulator, area) == 0
    conn.sendall(os.urandom(PART // 2))
    wait_until(lambda: copies(emulator, area) == 1, what="the copy to reach COS")
    alice.sock.sendall(b"ABOR\r\n")
    release_copy(emulator, cos, area)
    replies = [alice.getline()]
    while not replies[-1].startswith(("225", "226")):
        replies.append(alice.getline())
    conn.close()
    wait_until(lambda: not pending_uploads(cos, area), what="the APPE's upload aborted")
    log = [entry for entry in request_log(emulator.port, contains=area)
           if entry["target"] == area]
    [copy] = [entry for entry in log if entry["kind"] == "COPY"]
    [abort] = [entry for entry in log if entry["kind"] == "DELETE"]
    assert copy["end"] <= abort["start"]
    assert get(alice, area) == old


def test_an_appe_aborted_before_a_byte_copies_nothing(alice, area, cos, emulator):
    """APPE + ABOR with no byte sent made COS copy the whole old object each time, and
    started and aborted a multipart upload: a client looping so kept COS copying for
    nothing. Now nothing is copied or started, and the file stays as it was; an APPE of
    no byte that ends cleanly sends its copy at its end."""
    old = os.urandom(2 * PART + 7)
    put(alice, area, old)
    before = emulator.requests(contains=area)
    alice.voidcmd("TYPE I")
    conn = alice.transfercmd(f"APPE {area}")
    abort_transfer(alice, conn)
    after = emulator.requests(contains=area)
    assert after.get("COPY", 0) == before.get("COPY", 0)
    assert after.get("POST", 0) == before.get("POST", 0)  # no multipart upload started
    assert pending_uploads(cos, area) == []
    assert get(alice, area) == old
    assert appe(alice, area, b"").startswith("226")
    assert copies(emulator, area) == 1
    assert get(alice, area) == old
    assert pending_uploads(cos, area) == []


@pytest.mark.parametrize("name", ["ünïcødé 大.bin", "per%41cent%25.bin"])
def test_multipart_upload_with_unusual_name_passes_crc_check(alice, area, name):
    data = os.urandom(2 * PART + 1)
    alice.mkd(area)
    assert put(alice, f"{area}/{name}", data).startswith("226")
    assert get(alice, f"{area}/{name}") == data
